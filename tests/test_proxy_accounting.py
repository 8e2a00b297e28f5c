"""Usage accounting over real sockets: what each kind of request is charged, as committed to the
SQLite ledger, and that the totals (and the quotas they feed) survive a gateway restart."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from gatewayctl.proxy.usage import estimate_prompt_tokens
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import Running, Served, StartGateway
from tests.fakes import REPLY_TOKENS, FakeOllama
from tests.proxy_helpers import (
    EMBED_MODEL,
    MODEL,
    chat_body,
    openai_error,
    stream_chunks,
    wait_for_request,
    wait_for_rows,
)
from tests.servers import serve_in_thread


def _row_usage(row: dict[str, Any]) -> tuple[int, int, int]:
    return row["prompt_tokens"], row["completion_tokens"], row["estimated"]


def test_non_streaming_chat_is_charged_the_engine_numbers(served: Served) -> None:
    upstream, gw = served
    body = chat_body("What is the capital of France?", max_tokens=9)
    with gw.client() as client:
        response = client.post(
            "/v1/chat/completions", json=body, headers={"x-request-id": "accounting-1"}
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "accounting-1"
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == upstream.prompt_tokens_for(body)
    assert usage["completion_tokens"] == 9
    row = wait_for_request(gw, "accounting-1")
    assert _row_usage(row) == (usage["prompt_tokens"], 9, 0)
    assert (row["user"], row["model"], row["endpoint"], row["status"], row["outcome"]) == (
        "alice",
        MODEL,
        "chat.completions",
        200,
        "ok",
    )
    assert row["latency_ms"] > 0
    [sent] = upstream.requests_to("/v1/chat/completions")
    assert sent.headers["x-request-id"] == "accounting-1"


def test_streaming_chat_is_charged_from_the_usage_chunk(served: Served) -> None:
    upstream, gw = served
    body = chat_body("Count to three", stream=True)
    with gw.client() as client:
        streamed = stream_chunks(client, "/v1/chat/completions", body)
    row = wait_for_request(gw, streamed.request_id)
    assert _row_usage(row) == (upstream.prompt_tokens_for(body), len(REPLY_TOKENS), 0)
    assert row["outcome"] == "ok"
    assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["latency_ms"]


@pytest.mark.parametrize("stream", [True, False])
def test_llamacpp_stream_without_usage_is_counted_and_marked_estimated(
    served: Served, stream: bool
) -> None:
    upstream, gw = served
    upstream.mode = "llamacpp"
    body = chat_body("Tell me something", stream=stream, max_tokens=11)
    with gw.client() as client:
        if stream:
            streamed = stream_chunks(client, "/v1/chat/completions", body)
            assert all("usage" not in c for c in streamed.chunks if c != "[DONE]")
            request_id = streamed.request_id
        else:
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
    row = wait_for_request(gw, request_id)
    if stream:
        # The role-only first chunk llama.cpp sends is not a token.
        assert _row_usage(row) == (estimate_prompt_tokens(body), 11, 1)
    else:
        assert _row_usage(row) == (upstream.prompt_tokens_for(body), 11, 0)


@pytest.mark.parametrize("include_usage", [True, False])
def test_completions_stream_charges_the_final_usage_not_the_zeroed_ones(
    served: Served, include_usage: bool
) -> None:
    upstream, gw = served
    body: dict[str, Any] = {"model": MODEL, "prompt": "Once upon a time", "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    with gw.client() as client:
        streamed = stream_chunks(client, "/v1/completions", body)
    events = [c for c in streamed.chunks if c != "[DONE]"]
    if include_usage:
        # Ollama's zeroed per-chunk usage reaches the client as sent, plus the real last one.
        assert events[-1]["choices"] == []
        assert events[-1]["usage"]["completion_tokens"] == len(REPLY_TOKENS)
    else:
        # Not even the zeroed usage the gateway's include_usage made the engine add.
        assert all(e["choices"] and "usage" not in e for e in events), events[:2]
    row = wait_for_request(gw, streamed.request_id)
    assert _row_usage(row) == (upstream.prompt_tokens_for(body), len(REPLY_TOKENS), 0)
    assert row["endpoint"] == "completions"


def test_embeddings_are_charged_their_prompt_tokens(served: Served) -> None:
    upstream, gw = served
    body = {"model": EMBED_MODEL, "input": ["the first text", "and a second, longer one"]}
    with gw.client() as client:
        response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2
    row = wait_for_request(gw, response.headers["x-request-id"])
    assert _row_usage(row) == (response.json()["usage"]["prompt_tokens"], 0, 0)
    assert row["prompt_tokens"] == upstream.prompt_tokens_for(body) == 8
    assert row["endpoint"] == "embeddings"


def test_model_lists_are_not_charged(gw: Running) -> None:
    with gw.client() as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get(f"/v1/models/{MODEL}").status_code == 200
        # A charged request after them: once it is committed, anything before it would be too.
        assert client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": "x"}).is_success
    [row] = wait_for_rows(gw, "alice", 1)
    assert row["endpoint"] == "embeddings"


def test_each_user_is_charged_separately(gw: Running, fake: tuple[FakeOllama, str]) -> None:
    with gw.client("alice") as alice, gw.client("root") as root:
        assert alice.post("/v1/chat/completions", json=chat_body(max_tokens=2)).is_success
        assert root.post("/v1/chat/completions", json=chat_body(max_tokens=4)).is_success
        assert alice.post("/v1/chat/completions", json=chat_body(max_tokens=3)).is_success
    prompt = fake[0].prompt_tokens_for(chat_body())
    assert gw.wait_for_totals("alice", 2) == (2, 2 * prompt, 5)
    assert gw.wait_for_totals("root", 1) == (1, prompt, 4)


def test_totals_and_quota_survive_a_restart(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    users: dict[str, dict[str, Any]] = {"alice": {"quota": 100}, "bob": {}}
    body = chat_body(max_tokens=30)
    prompt = fake[0].prompt_tokens_for(body)
    with start_gateway(fake[1], users=users) as first:
        with first.client("alice") as alice, first.client("bob") as bob:
            assert alice.post("/v1/chat/completions", json=body).status_code == 200
            assert bob.post("/v1/chat/completions", json=body).status_code == 200
            assert bob.post(
                "/v1/embeddings", json={"model": EMBED_MODEL, "input": "a b"}
            ).is_success
        ledger = first.gateway.ledger.path
    # A second gateway process on the same users.toml and ledger file.
    with start_gateway(fake[1], users=users) as second:
        assert second.gateway.ledger.path == ledger
        assert second.totals("alice") == (1, prompt, 30)
        assert second.totals("bob") == (2, prompt + 2, 30)
        totals = second.gateway.ledger.totals("alice")
        assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (1, prompt, 30)
        with second.client("alice") as alice:
            # 100 - (prompt + 30) tokens left: too few for this prompt estimate plus an answer.
            refused = alice.post("/v1/chat/completions", json=chat_body("word " * 300))
            clamped = alice.post("/v1/chat/completions", json=chat_body())
        assert openai_error(refused, 403)["code"] == "insufficient_quota"
        assert clamped.status_code == 200
        left = 100 - prompt - 30 - estimate_prompt_tokens(chat_body())
        assert clamped.json()["usage"]["completion_tokens"] == left
        rows = wait_for_rows(second, "alice", 2)
        assert rows[1]["completion_tokens"] == left
        assert second.gateway.ledger.recovered == 0


def test_a_ledger_that_cannot_take_the_reservation_refuses_with_503(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    with start_gateway(fake[1], {"alice": {"quota": 1000}}) as gw:
        conn = sqlite3.connect(gw.gateway.ledger.path)
        conn.execute("DROP TABLE reservations")  # what a full or broken disk looks like
        conn.commit()
        conn.close()
        with gw.client("alice") as client:
            response = client.post(
                "/v1/chat/completions",
                json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
            )
    error = openai_error(response, 503)
    assert error["code"] == "ledger_unavailable"
    assert fake[0].requests_to("/v1/chat/completions") == []


def test_negative_usage_from_an_engine_is_never_a_credit(start_gateway: StartGateway) -> None:
    async def chat(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                "usage": {"prompt_tokens": -1_000_000, "completion_tokens": -5},
            }
        )

    engine = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with serve_in_thread(engine) as upstream, start_gateway(upstream) as gw:
        with gw.client("alice") as client:
            response = client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200
        assert gw.wait_for_totals("alice", 1) == (1, 0, 0)
