"""Unhappy paths of the /v1 proxy over real sockets: auth, bad requests, routes, upstream failures.

Every refusal must be OpenAI-shaped (so the openai SDK raises the right class) and never a 500.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Running, Served, StartGateway, key_of
from tests.fakes import FakeOllama
from tests.proxy_helpers import (
    MODEL,
    WAIT,
    chat_body,
    ledger_rows,
    openai_error,
    proxied,
    sse_data,
    wait_for_rows,
)
from tests.servers import free_port

# --------------------------------------------------------------------------- auth


def test_missing_key_is_401(served: Served) -> None:
    with httpx.Client(base_url=served[1].url, timeout=10) as anonymous:
        response = anonymous.post("/v1/chat/completions", json=chat_body())
    assert openai_error(response, 401)["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer sk-not-a-real-key", f"Basic {key_of('alice')}", "Bearer", "sk-test-alice"],
)
def test_unknown_or_malformed_key_is_401(served: Served, authorization: str) -> None:
    fake, gw = served
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        response = client.post(
            "/v1/chat/completions", json=chat_body(), headers={"authorization": authorization}
        )
    error = openai_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert proxied(fake) == [], "a refused request must not reach the engine"


def test_suspended_user_is_403(fake: tuple[FakeOllama, str], start_gateway: StartGateway) -> None:
    with (
        start_gateway(fake[1], users={"alice": {"suspended": True}}) as gw,
        gw.client("alice") as client,
    ):
        response = client.post("/v1/chat/completions", json=chat_body())
    assert openai_error(response, 403)["type"] == "permission_error"
    assert response.headers["x-should-retry"] == "false"
    assert proxied(fake[0]) == []


def test_models_list_requires_a_key(served: Served) -> None:
    with httpx.Client(base_url=served[1].url, timeout=10) as anonymous:
        assert openai_error(anonymous.get("/v1/models"), 401)["code"] == "invalid_api_key"


def test_client_key_never_reaches_upstream_and_upstream_gets_its_own_host(
    served: Served,
) -> None:
    upstream, gw = served
    foreign = {"host": "gateway.example.com", "cookie": "session=secret", "x-api-key": "sk-x"}
    with gw.client() as client:
        chat = client.post("/v1/chat/completions", json=chat_body(), headers=foreign)
        models = client.get("/v1/models", headers=foreign)
    # The fake answers 403 to a foreign Host, as Ollama does: 200 proves the Host was rewritten.
    assert chat.status_code == 200, chat.text
    assert models.status_code == 200, models.text
    assert len(proxied(upstream)) == 2
    upstream_host = gw.gateway.upstream.removeprefix("http://")
    for recorded in upstream.requests:  # health checks included: they carry no key either
        assert recorded.headers["host"] == upstream_host
        assert "authorization" not in recorded.headers
        assert "cookie" not in recorded.headers
        assert "x-api-key" not in recorded.headers
        assert key_of("alice") not in str(recorded.headers)


# --------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"model": "llama3.2", "messages": [', None),
        (b"\xff\xfe not utf-8", None),
        (b"", None),
        (b'["model", "llama3.2"]', None),
        (b"42", None),
        (b'{"model": "llama3.2", "messages": [], "max_tokens": "lots"}', "max_tokens"),
        (b'{"model": "llama3.2", "messages": [], "max_tokens": true}', "max_tokens"),
        (b'{"model": "llama3.2", "messages": [], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "llama3.2", "messages": [], "max_completion_tokens": 1.5}', None),
        (b'{"model": "llama3.2", "messages": [], "stream": "yes"}', "stream"),
        (b'{"model": "llama3.2", "messages": [], "n": -1}', "n"),
        (b'{"model": "llama3.2", "messages": [], "stream_options": []}', "stream_options"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 7, "messages": []}', "model"),
        (b'{"model": "llama3.2"}', "messages"),
        (b'{"model": "llama3.2", "messages": "hi"}', "messages"),
        # A lone surrogate is legal JSON but no name: it cannot even be stored in the ledger.
        (b'{"model": "llama\\ud800", "messages": []}', "model"),
        (b'{"model": "llama3.2", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
    ],
)
def test_bad_chat_request_is_400(served: Served, content: bytes, param: str | None) -> None:
    fake, gw = served
    with gw.client() as client:
        response = client.post(
            "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
        )
    error = openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert proxied(fake) == []


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": MODEL}, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": 3}, "prompt"),
        ("/v1/embeddings", {"model": MODEL}, "input"),
        ("/v1/embeddings", {"input": "hi"}, "model"),
        ("/v1/embeddings", {"model": MODEL, "input": {"text": "hi"}}, "input"),
    ],
)
def test_bad_completion_and_embedding_requests_are_400(
    served: Served, path: str, body: dict[str, Any], param: str
) -> None:
    with served[1].client() as client:
        response = client.post(path, json=body)
    assert openai_error(response, 400)["param"] == param


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/api/chat", b'{"model": "llama\\ud800"}'),
        ("POST", "/api/generate", b'{"model": "llama\\ud800", "prompt": "hi"}'),
        ("POST", "/api/embed", b'{"model": "llama\\ud800", "input": "hi"}'),
        ("POST", "/api/chat", b'{"model": "llama3.2", "messages": ' + DEEP + b"}"),
        ("POST", "/api/show", b'{"model": ' + DEEP + b"}"),
    ],
)
def test_unstorable_model_or_too_deep_json_is_400_on_api(
    served: Served, method: str, path: str, content: bytes
) -> None:
    with served[1].client() as client:
        response = client.request(method, path, content=content)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}


def test_unknown_route_is_404_json(served: Served) -> None:
    with served[1].client() as client:
        response = client.post("/v1/nope", json={})
    error = openai_error(response, 404)
    assert "/v1/nope" in error["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_wrong_method_is_405_json(served: Served, path: str) -> None:
    with served[1].client() as client:
        response = client.get(path)
    openai_error(response, 405)
    assert "POST" in response.headers["allow"]


def test_oversized_body_is_413(fake: tuple[FakeOllama, str], start_gateway: StartGateway) -> None:
    with start_gateway(fake[1], max_body_bytes=1000) as gw, gw.client() as client:
        response = client.post("/v1/chat/completions", json=chat_body("word " * 500))
    assert openai_error(response, 413)["code"] == "request_too_large"
    assert proxied(fake[0]) == []


# --------------------------------------------------------------------------- upstream failures


def test_upstream_down_is_502(start_gateway: StartGateway) -> None:
    nobody = f"http://ops:s3cret@127.0.0.1:{free_port()}"
    with start_gateway(nobody) as gw, gw.client() as client:
        chat = client.post("/v1/chat/completions", json=chat_body())
        streamed = client.post("/v1/chat/completions", json=chat_body(stream=True))
        models = client.get("/v1/models")
        rows = wait_for_rows(gw, "alice", 2)
    for response in (chat, streamed, models):
        error = openai_error(response, 502)
        assert error["code"] == "upstream_unavailable"
        assert "unreachable" in error["message"]
        # Clients learn nothing of the engine's address, let alone credentials in its URL.
        assert "127.0.0.1" not in error["message"] and "s3cret" not in error["message"]
    assert [u.label for u in gw.gateway.pool.upstreams] == [nobody.replace("ops:s3cret@", "")]
    assert all(row["completion_tokens"] == 0 and row["prompt_tokens"] == 0 for row in rows)
    assert {row["status"] for row in rows} == {502}


def test_upstream_slower_than_read_timeout_is_504(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    upstream, url = fake
    upstream.header_delay = 1.5
    with start_gateway(url, read_timeout=0.5) as gw, gw.client() as client:
        response = client.post("/v1/chat/completions", json=chat_body(stream=True))
        rows = wait_for_rows(gw, "alice", 1)
    assert openai_error(response, 504)["code"] == "upstream_timeout"
    assert rows[0]["status"] == 504
    assert rows[0]["prompt_tokens"] + rows[0]["completion_tokens"] == 0


def test_upstream_unknown_model_passes_through(gw: Running, fake: tuple[FakeOllama, str]) -> None:
    with gw.client() as client:
        chat = client.post("/v1/chat/completions", json=chat_body(model="no-such-model"))
        streamed = client.post(
            "/v1/chat/completions", json=chat_body(model="no-such-model", stream=True)
        )
        model = client.get("/v1/models/no-such-model")
    for response in (chat, streamed, model):
        error = openai_error(response, 404)
        assert error["message"] == "model 'no-such-model' not found"
    rows = wait_for_rows(gw, "alice", 2)
    assert [(r["status"], r["outcome"]) for r in rows] == [(404, "upstream_status")] * 2
    assert gw.totals("alice") == (2, 0, 0)


def test_upstream_drop_midstream_ends_stream_with_error_and_charges_counted(
    gw: Running, fake: tuple[FakeOllama, str]
) -> None:
    fake[0].mode = "drop"
    with (
        gw.client() as client,
        client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response,
    ):
        assert response.status_code == 200
        chunks = sse_data(response.iter_lines())
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
    assert len(contents) == 3 and all(contents)
    assert chunks[-1]["error"]["code"] == "upstream_unavailable"
    assert "[DONE]" not in chunks
    [row] = wait_for_rows(gw, "alice", 1)
    assert row["outcome"] == "upstream_error"
    assert row["completion_tokens"] == 3
    assert row["estimated"] == 1
    assert row["prompt_tokens"] > 0


def test_upstream_drop_on_non_streaming_is_502(gw: Running, fake: tuple[FakeOllama, str]) -> None:
    fake[0].mode = "drop"
    with gw.client() as client:
        response = client.post("/v1/chat/completions", json=chat_body())
    assert openai_error(response, 502)["code"] == "upstream_unavailable"
    [row] = wait_for_rows(gw, "alice", 1)
    assert row["status"] == 502


def test_upstream_stream_ending_early_is_charged_as_incomplete(
    gw: Running, fake: tuple[FakeOllama, str]
) -> None:
    fake[0].mode = "error_midstream"
    with gw.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as r:
            chunks = sse_data(r.iter_lines())
        failed = client.post("/v1/chat/completions", json=chat_body())
    assert len(chunks) == 3
    assert failed.status_code == 500
    rows = wait_for_rows(gw, "alice", 2)
    assert (rows[0]["outcome"], rows[0]["completion_tokens"], rows[0]["estimated"]) == (
        "incomplete",
        3,
        1,
    )
    assert (rows[1]["status"], rows[1]["outcome"], rows[1]["completion_tokens"]) == (
        500,
        "upstream_status",
        0,
    )
    assert ledger_rows(gw, "root") == []


def test_upstream_stalling_midstream_ends_stream_with_timeout_error(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    upstream, url = fake
    upstream.token_delay = 1.5  # the headers come at once, then silence longer than read_timeout
    with (
        start_gateway(url, read_timeout=0.5) as gw,
        gw.client() as client,
        client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response,
    ):
        assert response.status_code == 200
        chunks = sse_data(response.iter_lines())
        [row] = wait_for_rows(gw, "alice", 1)
    assert chunks[-1]["error"]["code"] == "upstream_timeout"
    assert row["outcome"] == "upstream_error"
    # The gateway gave up on the engine: it closed the connection, which stops the generation.
    assert upstream.cancelled.wait(WAIT)
