"""Streaming through the gateway over real sockets: unbuffered relay, the injected usage chunk,
and client disconnects (upstream cancelled at once, tokens so far charged)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from gatewayctl.proxy.usage import estimate_prompt_tokens

from tests.conftest import Running, key_of
from tests.fakes import REPLY_TOKENS, FakeOllama
from tests.proxy_helpers import WAIT, chat_body, sse_data, stream_chunks, wait_for_rows

SLOW = 0.15  # seconds per token: a 40-token reply takes 6 s to generate
LONG = 40


def _content(chunk: Any) -> str | None:
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not choices:
        return None
    content: str | None = choices[0].get("delta", {}).get("content") or choices[0].get("text")
    return content


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body(stream=True, max_tokens=LONG)),
        (
            "/v1/completions",
            {"model": "llama3.2", "prompt": "Hi", "stream": True, "max_tokens": LONG},
        ),
    ],
)
def test_stream_reaches_client_while_upstream_still_generates(
    gw: Running, fake: tuple[FakeOllama, str], path: str, body: dict[str, Any]
) -> None:
    upstream = fake[0]
    upstream.token_delay = SLOW
    with gw.client() as client, client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if any(_content(c) for c in sse_data([line])):
                break
        # Causal check: the first token is here while the engine has most of its reply to go.
        assert not upstream.finished.is_set()
        assert upstream.tokens_sent() < LONG // 2
    assert upstream.cancelled.wait(WAIT)


def test_openai_sdk_stream_is_unbuffered(gw: Running, fake: tuple[FakeOllama, str]) -> None:
    upstream = fake[0]
    upstream.token_delay = SLOW
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key_of("alice"), max_retries=0) as client:
        stream = client.chat.completions.create(
            model="llama3.2",
            messages=[{"role": "user", "content": "Say hello"}],
            max_tokens=LONG,
            stream=True,
        )
        with stream:
            first = next(c for c in stream if c.choices and c.choices[0].delta.content)
            assert first.choices[0].delta.content == REPLY_TOKENS[0]
            assert not upstream.finished.is_set()
            assert upstream.tokens_sent() < LONG // 2
    assert upstream.cancelled.wait(WAIT)


def test_usage_chunk_is_hidden_from_a_client_that_did_not_ask(
    gw: Running, fake: tuple[FakeOllama, str]
) -> None:
    with gw.client() as client:
        chunks = stream_chunks(client, "/v1/chat/completions", chat_body(stream=True, max_tokens=7))
    assert chunks[-1] == "[DONE]"
    assert all("usage" not in c for c in chunks[:-1]), chunks
    assert "".join(filter(None, map(_content, chunks))) == "".join(REPLY_TOKENS[:7])
    [sent] = fake[0].requests_to("/v1/chat/completions")
    assert sent.body["stream_options"] == {"include_usage": True}
    # ... and the gateway still charged the engine's numbers from the chunk it hid.
    [row] = wait_for_rows(gw, "alice", 1)
    expected_prompt = fake[0].prompt_tokens_for(sent.body)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (
        expected_prompt,
        7,
        0,
    )


def test_usage_chunk_is_shown_to_a_client_that_asked(
    gw: Running, fake: tuple[FakeOllama, str]
) -> None:
    body = chat_body(stream=True, max_tokens=7, stream_options={"include_usage": True})
    with gw.client() as client:
        chunks = stream_chunks(client, "/v1/chat/completions", body)
    assert chunks[-1] == "[DONE]"
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == []
    prompt = fake[0].prompt_tokens_for(body)
    assert usage_chunk["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 7,
        "total_tokens": prompt + 7,
    }
    [sent] = fake[0].requests_to("/v1/chat/completions")
    assert sent.body["stream_options"] == {"include_usage": True}


def test_include_usage_false_is_overridden_upstream_and_honoured_downstream(
    gw: Running, fake: tuple[FakeOllama, str]
) -> None:
    body = chat_body(stream=True, max_tokens=3, stream_options={"include_usage": False})
    with gw.client() as client:
        chunks = stream_chunks(client, "/v1/chat/completions", body)
    assert all("usage" not in c for c in chunks[:-1])
    [sent] = fake[0].requests_to("/v1/chat/completions")
    assert sent.body["stream_options"] == {"include_usage": True}


def test_client_disconnect_cancels_upstream_and_charges_tokens_so_far(
    gw: Running, fake: tuple[FakeOllama, str]
) -> None:
    upstream = fake[0]
    upstream.token_delay = 0.05
    body = chat_body("Tell me a long story", stream=True)
    received = 0
    with gw.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            received += sum(1 for c in sse_data([line]) if _content(c))
            if received == 3:
                break
    # Leaving the block closed the connection: the engine must stop generating at once.
    assert upstream.cancelled.wait(WAIT), "the upstream stream was not cancelled"
    assert not upstream.finished.is_set()
    [row] = wait_for_rows(gw, "alice", 1)
    assert row["outcome"] == "client_disconnect"
    assert row["estimated"] == 1
    assert row["status"] == 200
    assert row["prompt_tokens"] == estimate_prompt_tokens(body)
    assert received <= row["completion_tokens"] <= upstream.tokens_sent() < len(REPLY_TOKENS)
    assert gw.totals("alice") == (1, row["prompt_tokens"], row["completion_tokens"])
    # The reservation is released: nothing is left in flight for alice.
    assert gw.gateway.quotas.reserved("alice") == 0


def test_client_disconnect_before_first_token_cancels_upstream(
    gw: Running, fake: tuple[FakeOllama, str]
) -> None:
    upstream = fake[0]
    upstream.header_delay = 0.3
    upstream.token_delay = 0.5
    with (
        gw.client() as client,
        client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response,
    ):
        assert response.status_code == 200  # headers come as soon as the engine answers
    assert upstream.cancelled.wait(WAIT)
    [row] = wait_for_rows(gw, "alice", 1)
    assert row["outcome"] == "client_disconnect"
    assert row["completion_tokens"] <= 1
