"""Ollama's native API (/api/...) through the gateway, driven by the official ``ollama`` client
over real sockets: generation streamed and not, embeddings, read-only routes, admin-only model
management, the num_predict cap, usage from the done line, and Ollama-shaped errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from gatewayctl.proxy.usage import estimate_prompt_tokens

from tests.conftest import Running, StartGateway, key_of
from tests.fakes import FakeOllama
from tests.fakes.ollama import MID_STREAM_ERROR, REPLY_TEXT, REPLY_TOKENS, VERSION
from tests.proxy_helpers import EMBED_MODEL, MODEL, WAIT, ledger_rows, proxied, wait_for_rows

MESSAGES = [{"role": "user", "content": "Say hello to me"}]


def client_for(running: Running, user: str = "alice", key: str | None = None) -> ollama.Client:
    """The official client, sending the key the way its docs show (a custom header)."""
    token = key if key is not None else key_of(user)
    return ollama.Client(host=running.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def ollama_error(response: httpx.Response, status: int) -> str:
    """Check the status and Ollama's error shape, ``{"error": "..."}``; return the message."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return str(body["error"])


@pytest.fixture
def upstream(fake: tuple[FakeOllama, str]) -> FakeOllama:
    return fake[0]


# --------------------------------------------------------------------------- generation


def test_chat_not_streaming_is_charged_its_done_line(gw: Running) -> None:
    reply = client_for(gw).chat(model=MODEL, messages=MESSAGES, stream=False)
    assert reply.message.content == REPLY_TEXT
    assert reply.done and reply.eval_count == len(REPLY_TOKENS)
    [row] = wait_for_rows(gw, "alice", 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        reply.prompt_eval_count,
        reply.eval_count,
    )
    assert (row["endpoint"], row["model"], row["status"], row["outcome"], row["estimated"]) == (
        "api.chat",
        MODEL,
        200,
        "ok",
        0,
    )


def test_chat_stream_relays_every_line_and_is_charged_the_final_counts(gw: Running) -> None:
    parts = list(client_for(gw).chat(model=MODEL, messages=MESSAGES, stream=True))
    assert "".join(p.message.content or "" for p in parts) == REPLY_TEXT
    assert len(parts) == len(REPLY_TOKENS) + 1
    final = parts[-1]
    assert final.done and final.done_reason == "stop"
    assert not any(p.done for p in parts[:-1])
    [row] = wait_for_rows(gw, "alice", 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        final.prompt_eval_count,
        final.eval_count,
    )
    assert row["outcome"] == "ok" and row["estimated"] == 0 and row["ttft_ms"] is not None


@pytest.mark.parametrize("stream", [True, False])
def test_generate_streamed_and_not(gw: Running, stream: bool) -> None:
    client = client_for(gw)
    if stream:
        parts = list(client.generate(model=MODEL, prompt="Tell me a story", stream=True))
        text, final = "".join(p.response for p in parts), parts[-1]
    else:
        final = client.generate(model=MODEL, prompt="Tell me a story", stream=False)
        text = final.response
    assert text == REPLY_TEXT
    assert final.done and final.context
    [row] = wait_for_rows(gw, "alice", 1)
    assert row["endpoint"] == "api.generate"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        final.prompt_eval_count,
        final.eval_count,
    )


def test_ndjson_lines_reach_the_client_while_the_engine_still_generates(
    gw: Running, upstream: FakeOllama
) -> None:
    upstream.token_delay = 0.2
    body = {"model": MODEL, "prompt": "Count", "options": {"num_predict": 8}}
    with gw.client() as client, client.stream("POST", "/api/generate", json=body) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = response.iter_lines()
        first = json.loads(next(lines))
        # The engine has 7 more tokens (1.4 s) to go: the line was not held back.
        assert not upstream.finished.is_set()
        assert first["response"] == REPLY_TOKENS[0] and first["done"] is False
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["done"] is True and rest[-1]["eval_count"] == 8


def test_client_disconnect_cancels_the_engine_and_charges_what_was_sent(
    gw: Running, upstream: FakeOllama
) -> None:
    upstream.token_delay = 0.05
    body = {"model": MODEL, "messages": MESSAGES}
    with gw.client() as client, client.stream("POST", "/api/chat", json=body) as response:
        next(response.iter_lines())
    assert upstream.cancelled.wait(WAIT)
    [row] = wait_for_rows(gw, "alice", 1)
    assert row["outcome"] == "client_disconnect" and row["estimated"] == 1
    assert 1 <= row["completion_tokens"] < len(REPLY_TOKENS)


def test_error_line_mid_stream_reaches_the_client_and_is_accounted(
    gw: Running, upstream: FakeOllama
) -> None:
    upstream.mode = "error_midstream"
    received: list[str] = []
    with pytest.raises(ollama.ResponseError) as raised:
        for part in client_for(gw).chat(model=MODEL, messages=MESSAGES, stream=True):
            received.append(part.message.content or "")
    assert raised.value.error == MID_STREAM_ERROR
    assert "".join(received) == "".join(REPLY_TOKENS[:3])
    [row] = wait_for_rows(gw, "alice", 1)
    assert (row["status"], row["outcome"], row["completion_tokens"], row["estimated"]) == (
        200,
        "upstream_error",
        3,
        1,
    )
    assert row["prompt_tokens"] == estimate_prompt_tokens({"messages": MESSAGES})


def test_cached_prompt_without_prompt_eval_count_is_charged_zero_prompt_tokens(
    gw: Running,
) -> None:
    options: Any = {"fake_cached_prompt": True}
    reply = client_for(gw).chat(model=MODEL, messages=MESSAGES, stream=False, options=options)
    assert reply.prompt_eval_count is None
    [row] = wait_for_rows(gw, "alice", 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (
        0,
        len(REPLY_TOKENS),
        0,
    )


# --------------------------------------------------------------------------- embeddings


def test_embed_is_charged_its_prompt_eval_count(gw: Running, upstream: FakeOllama) -> None:
    inputs = ["the first text to embed", "and a second one"]
    reply = client_for(gw).embed(model=EMBED_MODEL, input=inputs)
    assert len(reply.embeddings) == 2
    assert reply.prompt_eval_count == upstream.prompt_tokens_for({"input": inputs})
    [row] = wait_for_rows(gw, "alice", 1)
    assert (row["endpoint"], row["prompt_tokens"], row["completion_tokens"]) == (
        "api.embed",
        reply.prompt_eval_count,
        0,
    )
    assert row["estimated"] == 0


def test_legacy_embeddings_report_no_count_so_the_prompt_is_estimated(gw: Running) -> None:
    prompt = "a legacy embedding request with no token count in its answer"
    reply = client_for(gw).embeddings(model=EMBED_MODEL, prompt=prompt)
    assert len(reply.embedding) > 0
    [row] = wait_for_rows(gw, "alice", 1)
    assert row["endpoint"] == "api.embeddings"
    assert row["estimated"] == 1 and row["completion_tokens"] == 0
    assert row["prompt_tokens"] == estimate_prompt_tokens({"prompt": prompt}) > 0


# --------------------------------------------------------------------------- read-only routes


def test_list_show_ps_and_version(gw: Running, upstream: FakeOllama) -> None:
    client = client_for(gw)
    assert [m.model for m in client.list().models] == list(upstream.models)
    shown = client.show(MODEL)
    assert shown.details is not None and shown.details.family == "llama"
    assert client.ps().models == []
    client.generate(model=MODEL, prompt="warm up", stream=False)
    assert [m.model for m in client.ps().models] == [MODEL]
    with gw.client() as http:
        assert http.get("/api/version").json() == {"version": VERSION}
    with httpx.Client(base_url=gw.url) as anonymous:
        ollama_error(anonymous.get("/api/version"), 401)
    # Reading is not generating: only the warm-up is in the ledger.
    [row] = wait_for_rows(gw, "alice", 1)
    assert row["endpoint"] == "api.generate"


def test_unknown_model_is_the_engines_404(gw: Running) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client_for(gw).chat(model="no-such-model", messages=MESSAGES)
    assert raised.value.status_code == 404
    assert raised.value.error == "model 'no-such-model' not found"


# --------------------------------------------------------------------------- the output cap


CAPPED = {"alice": {"max_tokens": 5}, "root": {"role": "admin"}}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (None, 5),
        ({"num_predict": -1}, 5),
        ({"num_predict": -2}, 5),
        ({"num_predict": 0}, 5),
        ({"num_predict": 3}, 3),
        ({"num_predict": 100}, 5),
        ({"num_predict": 4.0, "temperature": 0}, 4),
    ],
)
def test_user_cap_clamps_num_predict(
    fake: tuple[FakeOllama, str],
    start_gateway: StartGateway,
    options: dict[str, Any] | None,
    expected: int,
) -> None:
    upstream, url = fake
    with start_gateway(url, users=CAPPED) as gw:
        reply = client_for(gw).chat(model=MODEL, messages=MESSAGES, options=options)
    sent = upstream.requests_to("/api/chat")[-1].body["options"]
    assert sent["num_predict"] == expected
    assert reply.eval_count == expected and reply.done_reason == "length"
    if options and "temperature" in options:
        assert sent["temperature"] == 0, "other options are kept"


def test_cap_applies_to_generate_and_uncapped_users_are_left_alone(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    upstream, url = fake
    with start_gateway(url, users=CAPPED) as gw:
        client_for(gw).generate(model=MODEL, prompt="hi", options={"num_predict": -1})
        client_for(gw, "root").generate(model=MODEL, prompt="hi", options={"num_predict": -1})
        client_for(gw, "root").generate(model=MODEL, prompt="hi")
    alice, root_unbounded, root_absent = (r.body for r in upstream.requests_to("/api/generate"))
    assert alice["options"]["num_predict"] == 5
    assert root_unbounded["options"]["num_predict"] == -1
    assert "num_predict" not in (root_absent.get("options") or {})


def test_quota_clamps_num_predict_to_what_is_left(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    upstream, url = fake
    with start_gateway(url, users={"alice": {"quota": 40}}) as gw:
        reply = client_for(gw).chat(model=MODEL, messages=MESSAGES, options={"num_predict": -1})
        recorded = upstream.requests_to("/api/chat")[-1].body
        room = 40 - estimate_prompt_tokens(recorded)
        assert recorded["options"]["num_predict"] == room
        assert reply.eval_count == room
        [row] = wait_for_rows(gw, "alice", 1)
        used = row["prompt_tokens"] + row["completion_tokens"]
        assert used == reply.prompt_eval_count + room


def test_invalid_num_predict_is_an_ollama_shaped_400(gw: Running, upstream: FakeOllama) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "options": {"num_predict": "lots"}}
    with gw.client() as client:
        message = ollama_error(client.post("/api/chat", json=body), 400)
        assert "num_predict" in message
        ollama_error(client.post("/api/generate", content=b"{not json"), 400)
        ollama_error(client.post("/api/embed", json={"input": "no model"}), 400)
    assert proxied(upstream) == []


# --------------------------------------------------------------------------- refusals


def test_bad_or_missing_key_is_401(gw: Running) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client_for(gw, key="sk-wrong").chat(model=MODEL, messages=MESSAGES)
    assert raised.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=gw.url, timeout=10).list()
    assert raised.value.status_code == 401
    assert "API key" in raised.value.error


def test_suspended_user_and_exhausted_quota_are_403(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    users: dict[str, dict[str, Any]] = {"alice": {"suspended": True}, "bob": {"quota": 0}}
    with start_gateway(fake[1], users=users) as gw:
        for user, words in (("alice", "suspended"), ("bob", "quota")):
            with pytest.raises(ollama.ResponseError) as raised:
                list(client_for(gw, user).chat(model=MODEL, messages=MESSAGES, stream=True))
            assert raised.value.status_code == 403
            assert words in raised.value.error
    assert proxied(fake[0]) == []


def test_rate_limit_is_429_with_retry_after(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    with start_gateway(fake[1], users={"alice": {"rps": 0.1, "burst": 1}}) as gw:
        client = client_for(gw)
        client.embed(model=EMBED_MODEL, input="first")
        with pytest.raises(ollama.ResponseError) as raised:
            client.embed(model=EMBED_MODEL, input="second")
        assert raised.value.status_code == 429
        with gw.client() as http:
            response = http.post("/api/embed", json={"model": EMBED_MODEL, "input": "third"})
    ollama_error(response, 429)
    assert int(response.headers["retry-after"]) >= 1
    assert len(fake[0].requests_to("/api/embed")) == 1


# --------------------------------------------------------------------------- model management


def test_admin_pull_streams_status_lines_and_is_not_accounted(
    gw: Running, upstream: FakeOllama
) -> None:
    root = client_for(gw, "root")
    statuses = [p.status for p in root.pull("tinyllama", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert len(statuses) > 3
    assert "tinyllama" in upstream.models
    assert "tinyllama" in [m.model for m in root.list().models]
    assert root.pull("phi3", stream=False).status == "success"
    # The chat that follows is root's only ledger row: pulls are not token-accounted.
    root.chat(model=MODEL, messages=MESSAGES)
    [row] = wait_for_rows(gw, "root", 1)
    assert row["endpoint"] == "api.chat"


def test_admin_create_copy_delete(gw: Running, upstream: FakeOllama) -> None:
    root = client_for(gw, "root")
    statuses = [p.status for p in root.create(model="mine", from_=MODEL, stream=True)]
    assert statuses[-1] == "success"
    assert root.copy("mine", "mine-too").status == "success"
    assert root.delete("mine").status == "success"
    assert "mine-too" in upstream.models and "mine" not in upstream.models


def test_admin_blob_upload_streams_past_the_body_limit(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway, tmp_path: Path
) -> None:
    upstream, url = fake
    blob = tmp_path / "weights.bin"
    blob.write_bytes(bytes(range(256)) * 1024)  # 256 KiB, the gateway's body limit is 4 KiB
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    with start_gateway(url, max_body_bytes=4096) as gw:
        with pytest.raises(ollama.ResponseError) as raised:
            client_for(gw, "root").create_blob(blob)
        # The fake has no blob store: its 404 proves the upload went all the way through.
        assert raised.value.status_code == 404
        with gw.client("root") as http:
            assert http.head(f"/api/blobs/{digest}").status_code == 404
    post, head = upstream.requests_to(f"/api/blobs/{digest}")
    assert (post.method, head.method) == ("POST", "HEAD")
    assert post.raw == blob.read_bytes()
    assert post.headers["content-length"] == str(blob.stat().st_size)


MANAGEMENT = [
    ("POST", "/api/pull", {"model": "tinyllama"}),
    ("POST", "/api/push", {"model": "llama3.2"}),
    ("POST", "/api/create", {"model": "mine", "from": "llama3.2"}),
    ("POST", "/api/copy", {"source": "llama3.2", "destination": "x"}),
    ("DELETE", "/api/delete", {"model": "llama3.2"}),
    ("POST", "/api/blobs/sha256:" + "0" * 64, None),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
]


@pytest.mark.parametrize(("method", "path", "body"), MANAGEMENT)
def test_model_management_is_403_for_users(
    gw: Running, upstream: FakeOllama, method: str, path: str, body: Any
) -> None:
    with gw.client() as client:
        response = client.request(method, path, json=body)
    assert response.status_code == 403
    if method != "HEAD":
        assert "admin" in ollama_error(response, 403)
    assert proxied(upstream) == []


def test_user_pull_with_the_client_raises_403(gw: Running, upstream: FakeOllama) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        list(client_for(gw).pull("tinyllama", stream=True))
    assert raised.value.status_code == 403
    with pytest.raises(ollama.ResponseError) as raised:
        client_for(gw).delete(MODEL)
    assert raised.value.status_code == 403
    assert proxied(upstream) == [] and "tinyllama" not in upstream.models
    assert ledger_rows(gw, "alice") == []
