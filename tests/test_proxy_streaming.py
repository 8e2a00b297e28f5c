"""Streaming through the gateway over real sockets: unbuffered relay, the injected usage chunk,
and client disconnects (upstream cancelled at once, tokens so far charged).

One fake and one gateway serve the whole module; each test finds its own ledger row by the
x-request-id of its response.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from gatewayctl.proxy.usage import estimate_prompt_tokens

from tests.conftest import Served, StartGateway, key_of
from tests.fakes import REPLY_TOKENS, FakeOllama
from tests.proxy_helpers import (
    WAIT,
    chat_body,
    sse_data,
    stream_chunks,
    wait_for_request,
    wait_for_rows,
)

SLOW = 0.15  # seconds per token: a 40-token reply takes 6 s to generate
LONG = 40
USERS: dict[str, dict[str, Any]] = {"alice": {}, "carol": {"quota": 1_000_000}}


def _content(chunk: Any) -> str | None:
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not choices:
        return None
    content: str | None = choices[0].get("delta", {}).get("content") or choices[0].get("text")
    return content


# --------------------------------------------------------------------------- unbuffered


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
    served: Served, path: str, body: dict[str, Any]
) -> None:
    upstream, gw = served
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


def test_openai_sdk_stream_is_unbuffered(served: Served) -> None:
    upstream, gw = served
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


# --------------------------------------------------------------------------- the usage chunk


def test_usage_chunk_is_hidden_from_a_client_that_did_not_ask(served: Served) -> None:
    upstream, gw = served
    with gw.client() as client:
        streamed = stream_chunks(
            client, "/v1/chat/completions", chat_body(stream=True, max_tokens=7)
        )
    chunks = streamed.chunks
    assert chunks[-1] == "[DONE]"
    assert all("usage" not in c for c in chunks[:-1]), chunks
    assert "".join(filter(None, map(_content, chunks))) == "".join(REPLY_TOKENS[:7])
    [sent] = upstream.requests_to("/v1/chat/completions")
    assert sent.body["stream_options"] == {"include_usage": True}
    # ... and the gateway still charged the engine's numbers from the chunk it hid.
    row = wait_for_request(gw, streamed.request_id)
    expected_prompt = upstream.prompt_tokens_for(sent.body)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (
        expected_prompt,
        7,
        0,
    )


def test_usage_chunk_is_shown_to_a_client_that_asked(served: Served) -> None:
    upstream, gw = served
    body = chat_body(stream=True, max_tokens=7, stream_options={"include_usage": True})
    with gw.client() as client:
        chunks = stream_chunks(client, "/v1/chat/completions", body).chunks
    assert chunks[-1] == "[DONE]"
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == []
    prompt = upstream.prompt_tokens_for(body)
    assert usage_chunk["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 7,
        "total_tokens": prompt + 7,
    }
    [sent] = upstream.requests_to("/v1/chat/completions")
    assert sent.body["stream_options"] == {"include_usage": True}


def test_include_usage_false_is_overridden_upstream_and_honoured_downstream(
    served: Served,
) -> None:
    upstream, gw = served
    body = chat_body(stream=True, max_tokens=3, stream_options={"include_usage": False})
    with gw.client() as client:
        chunks = stream_chunks(client, "/v1/chat/completions", body).chunks
    assert all("usage" not in c for c in chunks[:-1])
    [sent] = upstream.requests_to("/v1/chat/completions")
    assert sent.body["stream_options"] == {"include_usage": True}


# --------------------------------------------------------------------------- disconnects


def test_client_disconnect_cancels_upstream_and_charges_tokens_so_far(served: Served) -> None:
    upstream, gw = served
    upstream.token_delay = 0.05
    body = chat_body("Tell me a long story", stream=True)
    received = 0
    with (
        gw.client("carol") as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            received += sum(1 for c in sse_data([line]) if _content(c))
            if received == 3:
                break
    # Leaving the block closed the connection: the engine must stop generating at once.
    assert upstream.cancelled.wait(WAIT), "the upstream stream was not cancelled"
    assert not upstream.finished.is_set()
    row = wait_for_request(gw, request_id)
    assert row["outcome"] == "client_disconnect"
    assert row["estimated"] == 1
    assert row["status"] == 200
    assert row["prompt_tokens"] == estimate_prompt_tokens(body)
    assert received <= row["completion_tokens"] <= upstream.tokens_sent() < len(REPLY_TOKENS)
    # The quota reservation is released: nothing is left in flight for carol.
    assert gw.gateway.quotas.reserved("carol") == 0


def test_client_disconnect_before_first_token_cancels_upstream(served: Served) -> None:
    upstream, gw = served
    upstream.header_delay = 0.3
    upstream.token_delay = 0.5
    with (
        gw.client() as client,
        client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response,
    ):
        assert response.status_code == 200  # headers come as soon as the engine answers
        request_id = response.headers["x-request-id"]
    assert upstream.cancelled.wait(WAIT)
    row = wait_for_request(gw, request_id)
    assert row["outcome"] == "client_disconnect"
    assert row["completion_tokens"] <= 1


@pytest.mark.parametrize("stream", [True, False])
def test_client_gone_before_upstream_answers_is_settled_and_released(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway, stream: bool
) -> None:
    # Not on the shared fake: its delayed answer would land in the next test.
    fake[0].header_delay = 1.0
    with start_gateway(fake[1], users=USERS) as gw:
        with gw.client("carol") as client, pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=chat_body(stream=stream), timeout=0.3)
        [row] = wait_for_rows(gw, "carol", 1)
        assert row["outcome"] == "client_disconnect"
        assert (row["prompt_tokens"], row["completion_tokens"]) == (0, 0)
        assert gw.gateway.quotas.reserved("carol") == 0
