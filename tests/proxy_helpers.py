"""Helpers shared by the proxy behaviour tests: request bodies, SSE parsing, ledger rows, polls."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from tests.conftest import Running
from tests.fakes import FakeOllama, Recorded

T = TypeVar("T")

MODEL = "llama3.2"
EMBED_MODEL = "nomic-embed-text"
WAIT = 5.0
"""Upper bound for anything a test waits on (events, polls): generous on a loaded machine."""


def proxied(fake: FakeOllama) -> list[Recorded]:
    """The requests the gateway forwarded for its clients: everything but its own health checks
    (the gateway probes each upstream's /api/version on its own)."""
    return [r for r in fake.requests if r.path != "/api/version"]


def chat_body(content: str = "Say hello to me", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def sse_data(lines: Iterable[str]) -> list[Any]:
    """The decoded ``data:`` payloads of SSE lines, ``[DONE]`` kept as the string."""
    out: list[Any] = []
    for line in lines:
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def stream_chunks(client: httpx.Client, path: str, body: dict[str, Any]) -> Streamed:
    """POST a streaming request and return its decoded SSE payloads (status must be 200)."""
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        return Streamed(sse_data(response.iter_lines()), response.headers["x-request-id"])


@dataclass
class Streamed:
    chunks: list[Any]
    request_id: str


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check the status and the OpenAI error shape; return the inner ``error`` object."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def _requests_where(running: Running, column: str, value: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{running.gateway.ledger.path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(f"SELECT * FROM requests WHERE {column} = ? ORDER BY id", (value,))
        return [dict(row) for row in rows]
    finally:
        conn.close()


def ledger_rows(running: Running, user: str) -> list[dict[str, Any]]:
    """The committed rows of the ledger's ``requests`` table for ``user``, oldest first."""
    return _requests_where(running, "user", user)


def wait_for_rows(running: Running, user: str, count: int) -> list[dict[str, Any]]:
    """The ledger commits off the request path: poll (bounded) until ``count`` rows are there."""

    def rows() -> list[dict[str, Any]] | None:
        found = ledger_rows(running, user)
        return found if len(found) >= count else None

    found = wait_until(rows)
    assert len(found) == count, found
    return found


def wait_for_request(running: Running, request_id: str) -> dict[str, Any]:
    """The committed ledger row of one request (every response carries its x-request-id), for
    tests sharing a gateway whose ledger holds other tests' rows too."""

    def row() -> dict[str, Any] | None:
        rows = _requests_where(running, "request_id", request_id)
        assert len(rows) <= 1, rows
        return rows[0] if rows else None

    return wait_until(row)


def wait_until(predicate: Callable[[], T | None], timeout: float = WAIT) -> T:
    """Poll ``predicate`` until it returns something other than None or False; fail at the
    deadline. For conditions that have no event to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)
