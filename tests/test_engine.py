"""The gateway in front of a real engine: llama.cpp's server running SmolLM2-135M on the CPU,
driven by the official openai SDK.

What only a real engine shows: the usage numbers it reports are charged exactly; its streams
carry no usage at all (even when asked with ``stream_options.include_usage``), so the gateway
counts what it streamed and marks the record estimated; it honours the injected cap; and it
stops generating when the gateway hangs up on it.

The engine is started once for the module (about 1 s to load the model). A missing
llama-cpp-python or model package fails these tests; it never skips them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from gatewayctl.proxy.usage import estimate_prompt_tokens

from tests.conftest import Running, StartGateway, key_of
from tests.engine import MODEL_ALIAS, Engine, EngineMissing, llama_server

pytestmark = pytest.mark.engine

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about the sea."}]
# SmolLM2's end-of-sequence token (<|im_end|>, id 2) forbidden: generations run to their limit,
# so "length" and long streams do not depend on what the model feels like saying.
NO_EOS = {"2": -100}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    try:
        with llama_server(log_path) as running:
            yield running
    except EngineMissing as exc:
        pytest.fail(f"the real-engine tests need llama.cpp's server and SmolLM2: {exc}")


def sdk_options(running: Running, user: str = "alice") -> dict[str, Any]:
    return {
        "base_url": running.url + "/v1",
        "api_key": key_of(user),
        "max_retries": 0,
        "timeout": 60,
    }


def sdk(running: Running, user: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(**sdk_options(running, user))


def ledger_rows(running: Running, user: str, count: int = 1) -> list[dict[str, Any]]:
    """The committed ``requests`` rows of ``user``, once ``count`` of them are on disk."""
    assert running.wait_for_totals(user, count, timeout=10)[0] == count
    conn = sqlite3.connect(f"file:{running.gateway.ledger.path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM requests WHERE user = ? ORDER BY id", (user,))
        return [dict(row) for row in rows]
    finally:
        conn.close()


def test_models_are_listed_through_the_gateway(engine: Engine, start_gateway: StartGateway) -> None:
    with start_gateway(engine.url) as running, sdk(running) as client:
        models = client.models.list()
    assert [model.id for model in models.data] == [MODEL_ALIAS]


def test_non_streaming_usage_is_charged_exactly_as_the_engine_reports(
    engine: Engine, start_gateway: StartGateway
) -> None:
    with start_gateway(engine.url) as running, sdk(running) as client:
        reply = client.chat.completions.create(model=MODEL_ALIAS, messages=MESSAGES, max_tokens=16)
        (row,) = ledger_rows(running, "alice")
        totals = running.totals("alice")

    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 16
    assert reply.choices[0].message.content
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert row["estimated"] == 0
    assert (row["status"], row["outcome"], row["model"]) == (200, "ok", MODEL_ALIAS)
    assert row["endpoint"] == "chat.completions"
    assert totals == (1, reply.usage.prompt_tokens, reply.usage.completion_tokens)


async def test_streams_are_charged_the_counted_tokens_and_marked_estimated(
    engine: Engine, start_gateway: StartGateway
) -> None:
    with start_gateway(engine.url) as running:
        async with openai.AsyncOpenAI(**sdk_options(running)) as client:
            stream = await client.chat.completions.create(
                model=MODEL_ALIAS,
                messages=MESSAGES,
                max_tokens=16,
                logit_bias=NO_EOS,
                stream=True,
            )
            chunks = [chunk async for chunk in stream]
        (row,) = ledger_rows(running, "alice")

    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert 0 < len(content) <= 16
    # The gateway asked the engine for usage; llama.cpp sent none, and none reached the client.
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert row["completion_tokens"] == len(content)
    assert row["prompt_tokens"] == estimate_prompt_tokens({"messages": MESSAGES})
    assert row["estimated"] == 1
    assert (row["status"], row["outcome"]) == (200, "ok")


def test_the_users_cap_stops_the_engine(engine: Engine, start_gateway: StartGateway) -> None:
    users: dict[str, dict[str, Any]] = {"alice": {"max_tokens": 8}}
    with start_gateway(engine.url, users) as running, sdk(running) as client:
        reply = client.chat.completions.create(
            model=MODEL_ALIAS, messages=MESSAGES, max_tokens=200, logit_bias=NO_EOS
        )
        (row,) = ledger_rows(running, "alice")

    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens <= 8
    assert reply.choices[0].finish_reason == "length"
    assert row["completion_tokens"] == reply.usage.completion_tokens


def test_the_cap_is_injected_into_streams_that_set_no_limit(
    engine: Engine, start_gateway: StartGateway
) -> None:
    users: dict[str, dict[str, Any]] = {"alice": {"max_tokens": 8}}
    with start_gateway(engine.url, users) as running, sdk(running) as client:
        stream = client.chat.completions.create(
            model=MODEL_ALIAS, messages=MESSAGES, logit_bias=NO_EOS, stream=True
        )
        chunks = list(stream)
        (row,) = ledger_rows(running, "alice")

    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert 0 < len(content) <= 8
    assert chunks[-1].choices[0].finish_reason == "length"
    assert row["completion_tokens"] == len(content)


def test_a_client_disconnect_stops_the_engine_and_charges_what_was_streamed(
    engine: Engine, start_gateway: StartGateway
) -> None:
    limit = 1500  # about 25 s of generation here: far longer than the test if it is not stopped
    log_mark = len(engine.log())
    with start_gateway(engine.url) as running, sdk(running) as client:
        stream = client.chat.completions.create(
            model=MODEL_ALIAS,
            messages=MESSAGES,
            max_tokens=limit,
            logit_bias=NO_EOS,
            stream=True,
        )
        received = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
            if received == 3:
                break
        stream.close()  # hang up mid-stream
        (row,) = ledger_rows(running, "alice")

    # llama.cpp prints this when its client (the gateway) goes away mid-generation.
    assert engine.wait_for_log("Disconnected from client", since=log_mark)
    assert row["outcome"] == "client_disconnect"
    assert row["estimated"] == 1
    # What the gateway relayed: at least what the client read, far from the requested limit.
    assert received <= row["completion_tokens"] < limit // 2
