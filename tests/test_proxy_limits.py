"""Admission over real sockets: the per-user token bucket (429), the per-request max_tokens cap,
and the hard token quota (403), including ten concurrent streams racing for the last tokens."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gatewayctl.proxy.accounts import set_limits
from gatewayctl.proxy.store import Store
from gatewayctl.proxy.usage import estimate_prompt_tokens

from tests.conftest import Running, StartGateway, fake_and_gateway
from tests.fakes import FakeOllama
from tests.proxy_helpers import (
    WAIT,
    chat_body,
    openai_error,
    proxied,
    sse_data,
    stream_chunks,
    wait_for_request,
    wait_for_rows,
    wait_until,
)

# --------------------------------------------------------------------------- rate limit


def test_third_immediate_request_is_429_with_openai_headers(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    with (
        start_gateway(fake[1], users={"alice": {"rps": 1, "burst": 2}}) as gw,
        gw.client() as client,
    ):
        first, second, third = (
            client.post("/v1/chat/completions", json=chat_body(max_tokens=1)) for _ in range(3)
        )
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    error = openai_error(third, 429)
    assert error["code"] == "rate_limit_exceeded"
    assert third.headers["retry-after"] == "1"
    assert 0 < int(third.headers["retry-after-ms"]) <= 1000
    assert third.headers["x-ratelimit-limit-requests"] == "2"
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
    assert len(proxied(fake[0])) == 2, "a rate-limited request must not reach the engine"


def test_rate_limiter_state_survives_a_config_reload(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    # A slow refill (one request per 20 s) so the bucket cannot refill during the reload.
    users: dict[str, dict[str, Any]] = {"alice": {"rps": 0.05, "burst": 2}, "bob": {}}
    with start_gateway(fake[1], users=users) as gw, gw.client() as client:
        for _ in range(2):
            assert client.post("/v1/embeddings", json=_embedding()).status_code == 200
        assert client.post("/v1/embeddings", json=_embedding()).status_code == 429
        reloads = gw.gateway.reloads
        Store(gw.config_path).update(lambda c: set_limits(c, "bob", {"rps": 3.0}))
        wait_until(lambda: gw.gateway.reloads > reloads)
        assert gw.gateway.config.users["bob"].rps == 3.0
        after = client.post("/v1/embeddings", json=_embedding())
    assert openai_error(after, 429)["code"] == "rate_limit_exceeded"
    assert int(after.headers["retry-after"]) >= 10


# --------------------------------------------------------------------------- per-request cap

Served = tuple[FakeOllama, Running]


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """alice has a per-request cap of 5 tokens, bob none."""
    users: dict[str, dict[str, Any]] = {"alice": {"max_tokens": 5}, "bob": {}}
    with fake_and_gateway(tmp_path_factory.mktemp("capped"), users) as pair:
        yield pair


@pytest.fixture
def served(capped: Served) -> Served:
    capped[0].reset()
    return capped


@pytest.mark.parametrize(
    ("asked", "forwarded"),
    [
        ({"max_tokens": 100}, 5),
        ({"max_completion_tokens": 100}, 5),
        ({}, 5),
        ({"max_tokens": 3}, 3),
        ({"max_completion_tokens": 4}, 4),
        ({"max_tokens": 100, "max_completion_tokens": 2}, 2),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_user_max_tokens_caps_what_the_engine_is_asked(
    served: Served, asked: dict[str, int], forwarded: int, stream: bool
) -> None:
    upstream, gw = served
    body = {**chat_body(stream=stream), **asked}
    with gw.client() as client:
        if stream:
            streamed = stream_chunks(client, "/v1/chat/completions", body)
            chunks = [c for c in streamed.chunks if c != "[DONE]" and c["choices"]]
            produced = sum(1 for c in chunks if c["choices"][0]["delta"].get("content"))
            request_id = streamed.request_id
        else:
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            produced = response.json()["usage"]["completion_tokens"]
            request_id = response.headers["x-request-id"]
    [sent] = upstream.requests_to("/v1/chat/completions")
    assert sent.body["max_tokens"] == forwarded
    assert "max_completion_tokens" not in sent.body
    assert produced == forwarded
    assert wait_for_request(gw, request_id)["completion_tokens"] == forwarded


def test_completions_and_users_without_cap(served: Served) -> None:
    upstream, gw = served
    with gw.client("alice") as alice:
        prompt = {"model": "llama3.2", "prompt": "Once upon a time", "max_tokens": 50}
        assert alice.post("/v1/completions", json=prompt).status_code == 200
    with gw.client("bob") as bob:
        assert bob.post("/v1/chat/completions", json=chat_body()).status_code == 200
    [completion] = upstream.requests_to("/v1/completions")
    assert completion.body["max_tokens"] == 5
    [chat] = upstream.requests_to("/v1/chat/completions")
    assert "max_tokens" not in chat.body, "no limit anywhere: nothing is injected"


def test_user_without_rps_is_not_limited_and_gets_no_rate_headers(served: Served) -> None:
    with served[1].client("bob") as client:
        responses = [client.post("/v1/embeddings", json=_embedding()) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert "x-ratelimit-limit-requests" not in responses[0].headers


# --------------------------------------------------------------------------- quota


def test_exhausted_quota_is_403_insufficient_quota(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    with start_gateway(fake[1], users={"alice": {"quota": 40}}) as gw, gw.client() as client:
        first = client.post("/v1/chat/completions", json=chat_body())
        assert first.status_code == 200, first.text
        usage = first.json()["usage"]
        wait_for_rows(gw, "alice", 1)
        refused = client.post("/v1/chat/completions", json=chat_body())
        embedding = client.post("/v1/embeddings", json=_embedding())
    # The first request was clamped to what the quota left after its estimated prompt.
    estimate = estimate_prompt_tokens(chat_body())
    assert usage["completion_tokens"] == 40 - estimate
    for response in (refused, embedding):
        error = openai_error(response, 403)
        assert error["code"] == "insufficient_quota"
        assert error["type"] == "insufficient_quota"
        assert response.headers["x-should-retry"] == "false"
    assert len(proxied(fake[0])) == 1


def test_zero_quota_refuses_everything(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    with start_gateway(fake[1], users={"alice": {"quota": 0}}) as gw, gw.client() as client:
        response = client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert openai_error(response, 403)["code"] == "insufficient_quota"
    assert proxied(fake[0]) == []


# A prompt whose estimate (by characters) is above the fake's count (words + 10), so that the
# estimate reserved at admission covers the prompt really charged.
LONG_WORDS = "Supercalifragilisticexpialidocious antidisestablishmentarianism"


def test_ten_concurrent_streams_never_exceed_the_quota(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    upstream = fake[0]
    upstream.token_delay = 0.02  # keep the admitted streams in flight while the others arrive
    body = chat_body(LONG_WORDS, stream=True)
    estimate = estimate_prompt_tokens(body)
    assert upstream.prompt_tokens_for(body) <= estimate
    quota = 100 + estimate
    users: dict[str, dict[str, Any]] = {"alice": {"quota": quota}}
    start = threading.Barrier(10)
    statuses: list[int] = []
    streamed: list[int] = []
    lock = threading.Lock()

    def one(gw: Running) -> None:
        with gw.client() as client:
            start.wait(WAIT)
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                tokens = 0
                if response.status_code == 200:
                    chunks = sse_data(response.iter_lines())
                    tokens = sum(
                        1 for c in chunks if c != "[DONE]" and c["choices"] and _has_content(c)
                    )
                else:
                    response.read()
                    assert openai_error(response, 403)["code"] == "insufficient_quota"
        with lock:
            statuses.append(response.status_code)
            streamed.append(tokens)

    with start_gateway(fake[1], users=users) as gw:
        threads = [threading.Thread(target=one, args=(gw,)) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        admitted = statuses.count(200)
        # Refusals at admission are not requests the engine served: only the admitted are rows.
        rows = wait_for_rows(gw, "alice", admitted)
        requests, prompt, completion = gw.totals("alice")
        assert gw.gateway.quotas.reserved("alice") == 0

    assert sorted(set(statuses)) == [200, 403], statuses
    assert 1 <= admitted < 10
    assert completion <= 100, "the streams together went past the quota"
    assert prompt + completion <= quota
    assert upstream.tokens_sent() == completion == sum(streamed)
    assert requests == admitted
    assert [r["status"] for r in rows] == [200] * admitted
    for sent in upstream.requests_to("/v1/chat/completions"):
        assert sent.body["max_tokens"] <= 100


def test_reservations_are_released_after_each_request(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    quota = 2000
    with start_gateway(fake[1], users={"alice": {"quota": quota}}) as gw, gw.client() as client:
        for stream in (False, True):
            body = chat_body(stream=stream, max_tokens=10)
            if stream:
                _stream(client, body)
            else:
                assert client.post("/v1/chat/completions", json=body).status_code == 200
        wait_for_rows(gw, "alice", 2)
        used = sum(gw.totals("alice")[1:])
        assert gw.gateway.quotas.reserved("alice") == 0
        assert gw.gateway.quotas.available(gw.gateway.config.users["alice"]) == quota - used
    assert used == 2 * (fake[0].prompt_tokens_for(chat_body()) + 10)


# --------------------------------------------------------------------------- helpers


def _embedding() -> dict[str, Any]:
    return {"model": "nomic-embed-text", "input": "hello"}


def _stream(client: httpx.Client, body: dict[str, Any]) -> list[Any]:
    return stream_chunks(client, "/v1/chat/completions", body).chunks


def _has_content(chunk: dict[str, Any]) -> bool:
    return bool(chunk["choices"][0]["delta"].get("content"))
