"""Tests of the test infrastructure: the uvicorn-in-thread harness and the fake Ollama upstream.

Everything goes over a real socket. One fake server is shared by the module (starting and
stopping uvicorn costs ~0.2 s); the ``fake`` fixture resets it before every test.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.fakes import REPLY_TEXT, REPLY_TOKENS, FakeOllama
from tests.servers import free_port, serve_in_thread

PROMPT: Final = "Say hello to me"
CHAT_PROMPT_TOKENS: Final = 14  # 4 words + 10 for the one message
WAIT: Final = 5.0


def chat_body(**extra: Any) -> dict[str, Any]:
    """A fresh chat request body (llama3.2, one user message) updated with ``extra``."""
    return {"model": "llama3.2", "messages": [{"role": "user", "content": PROMPT}], **extra}


def oai_messages() -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": PROMPT}]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeOllama, str]]:
    fake = FakeOllama()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(served: tuple[FakeOllama, str]) -> FakeOllama:
    served[0].reset()
    return served[0]


@pytest.fixture
def url(served: tuple[FakeOllama, str], fake: FakeOllama) -> str:
    return served[1]


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=WAIT) as client:
        yield client


@pytest.fixture
def oai(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="ignored", max_retries=0) as client:
        yield client


@pytest.fixture
def oll(url: str) -> Iterator[ollama.Client]:
    client = ollama.Client(host=url, timeout=WAIT)
    yield client
    client.close()


def sse_payloads(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking the framing on the way."""
    assert text.endswith("\n\n"), text[-80:]
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events), events
    return [e.removeprefix("data: ") for e in events]


def ndjson(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def is_compact(payload: str) -> bool:
    return json.dumps(json.loads(payload), separators=(",", ":")) == payload


# --------------------------------------------------------------------------- harness


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_serve_in_thread_serves_then_stops() -> None:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", hello)])
    with serve_in_thread(app) as base:
        assert base.startswith("http://127.0.0.1:")
        assert httpx.get(base).text == "hi"
    with pytest.raises(httpx.ConnectError):
        httpx.get(base, timeout=1)


def test_serve_in_thread_raises_when_startup_fails() -> None:
    @asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield  # pragma: no cover

    with (
        pytest.raises(RuntimeError, match="failed to start"),
        serve_in_thread(Starlette(lifespan=broken)),
    ):
        pytest.fail("the body must not run")


# --------------------------------------------------------------------------- basics


def test_reply_is_long_and_tokenised_by_word() -> None:
    assert len(REPLY_TOKENS) >= 40
    assert "".join(REPLY_TOKENS) == REPLY_TEXT
    assert all(t.startswith(" ") for t in REPLY_TOKENS[1:])


def test_prompt_tokens_formula() -> None:
    fake = FakeOllama()
    chat = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "a b c"},
        ]
    }
    assert fake.prompt_tokens_for(chat) == (2 + 10) + (3 + 10)
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "one two"}]}]}
    assert fake.prompt_tokens_for(parts) == 12
    assert fake.prompt_tokens_for({"prompt": "x y z", "system": "s"}) == 3 + 1 + 10
    assert fake.prompt_tokens_for({"input": ["a b", "c"]}) == 3
    assert fake.prompt_tokens_for({"input": "a b"}) == 2
    assert fake.prompt_tokens_for(None) == 0


def test_completion_tokens_limits() -> None:
    fake = FakeOllama()
    full = len(REPLY_TOKENS)
    assert fake.completion_tokens_for({"max_tokens": 5}) == 5
    assert fake.completion_tokens_for({"max_tokens": 10_000}) == full
    assert fake.completion_tokens_for({"max_completion_tokens": 5}) == full
    assert fake.completion_tokens_for({"options": {"num_predict": 7}}, native=True) == 7
    assert fake.completion_tokens_for({"options": {"num_predict": -1}}, native=True) == full
    assert fake.completion_tokens_for({"options": {"num_predict": -2}}, native=True) == full
    assert fake.completion_tokens_for({"max_tokens": 5}, native=True) == full


def test_root_and_unknown_route(http: httpx.Client) -> None:
    assert http.get("/").text == "Ollama is running"
    r = http.get("/nope")
    assert r.status_code == 404
    assert r.text == "404 page not found"


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:11434", "127.0.0.1", "127.0.0.1:8080", "[::1]:11434", "::1"]
)
def test_local_hosts_are_allowed(http: httpx.Client, host: str) -> None:
    assert http.get("/api/version", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["example.com", "evil.example:11434", "10.0.0.5", "[2001:db8::1]"])
def test_foreign_host_gets_403(http: httpx.Client, fake: FakeOllama, host: str) -> None:
    r = http.post("/api/chat", json=chat_body(), headers={"Host": host})
    assert r.status_code == 403
    assert r.content == b""
    assert fake.streams_started == 0
    assert fake.requests[-1].headers["host"] == host


def test_requests_are_recorded(http: httpx.Client, fake: FakeOllama) -> None:
    http.post("/v1/chat/completions?x=1", json=chat_body(), headers={"X-Test": "yes"})
    http.post("/api/chat", content=b"{broken")
    first, second = fake.requests
    assert (first.method, first.path, first.query) == ("POST", "/v1/chat/completions", "x=1")
    assert first.headers["x-test"] == "yes"
    assert first.body == chat_body()
    assert second.body is None
    assert second.raw == b"{broken"
    assert fake.requests_to("/api/chat") == [second]


def test_recording_is_thread_safe(url: str, fake: FakeOllama) -> None:
    def hit() -> None:
        with httpx.Client(base_url=url) as client:
            for _ in range(5):
                client.get("/api/version")

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(fake.requests_to("/api/version")) == 40


def test_header_delay_triggers_client_timeout(http: httpx.Client, fake: FakeOllama) -> None:
    fake.header_delay = 0.5
    with pytest.raises(httpx.ReadTimeout):
        http.get("/api/version", timeout=httpx.Timeout(WAIT, read=0.1))


# --------------------------------------------------------------------------- /v1 chat


def test_v1_chat_non_streaming_openai(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="llama3.2", messages=oai_messages())
    assert completion.object == "chat.completion"
    assert completion.system_fingerprint == "fp_ollama"
    assert completion.choices[0].message.content == REPLY_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == CHAT_PROMPT_TOKENS
    assert completion.usage.completion_tokens == len(REPLY_TOKENS)
    assert completion.usage.total_tokens == CHAT_PROMPT_TOKENS + len(REPLY_TOKENS)


def test_v1_chat_max_tokens_cuts_but_max_completion_tokens_is_ignored(
    http: httpx.Client,
) -> None:
    cut = http.post("/v1/chat/completions", json=chat_body(max_tokens=5)).json()
    assert cut["choices"][0]["message"]["content"] == "".join(REPLY_TOKENS[:5])
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 5
    ignored = http.post("/v1/chat/completions", json=chat_body(max_completion_tokens=5)).json()
    assert ignored["usage"]["completion_tokens"] == len(REPLY_TOKENS)
    assert ignored["choices"][0]["finish_reason"] == "stop"


def test_v1_chat_stream_layout_without_usage(http: httpx.Client, fake: FakeOllama) -> None:
    r = http.post("/v1/chat/completions", json=chat_body(stream=True, max_tokens=4))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    payloads = sse_payloads(r.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(is_compact(p) for p in payloads[:-1])
    assert len(chunks) == 5
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "The"}
    assert [c["choices"][0]["delta"] for c in chunks[1:4]] == [
        {"content": t} for t in REPLY_TOKENS[1:4]
    ]
    assert chunks[4]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:4])
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert fake.streams_started == fake.streams_finished == 1
    assert fake.tokens_sent() == 4


def test_v1_chat_stream_usage_chunk_only_with_include_usage(http: httpx.Client) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    payloads = sse_payloads(http.post("/v1/chat/completions", json=body).text)
    assert payloads[-1] == "[DONE]"
    usage_chunk = json.loads(payloads[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": CHAT_PROMPT_TOKENS,
        "completion_tokens": len(REPLY_TOKENS),
        "total_tokens": CHAT_PROMPT_TOKENS + len(REPLY_TOKENS),
    }
    finish_chunk = json.loads(payloads[-3])
    assert finish_chunk["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in finish_chunk
    assert sum("usage" in json.loads(p) for p in payloads[:-1]) == 1


def test_v1_chat_stream_openai_client(oai: openai.OpenAI) -> None:
    with oai.chat.completions.create(
        model="llama3.2",
        messages=oai_messages(),
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY_TEXT
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(REPLY_TOKENS)


def test_first_token_arrives_before_stream_ends(http: httpx.Client, fake: FakeOllama) -> None:
    fake.token_delay = 0.2
    body = chat_body(stream=True, max_tokens=3)
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        first_at = time.monotonic()
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["content"] == "The"
        assert fake.first_token_sent.is_set()
        assert fake.streams_finished == 0
        rest = [line for line in lines if line]
        done_at = time.monotonic()
    assert rest[-1] == "data: [DONE]"
    # two more tokens, each preceded by a 0.2 s sleep, came after the first one
    assert done_at - first_at >= 0.3
    assert fake.finished.wait(WAIT)
    assert fake.streams_finished == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body(stream=True)),
        ("/api/chat", chat_body()),
        ("/api/generate", {"model": "llama3.2", "prompt": "hello"}),
    ],
)
def test_client_going_away_cancels_the_stream(
    http: httpx.Client, fake: FakeOllama, path: str, body: dict[str, Any]
) -> None:
    fake.token_delay = 0.05  # the whole reply would take ~2.4 s
    with http.stream("POST", path, json=body) as r:
        assert next(line for line in r.iter_lines() if line)
    assert fake.cancelled.wait(WAIT)
    assert fake.streams_cancelled == 1
    assert fake.streams_finished == 0
    assert 1 <= fake.tokens_sent() < len(REPLY_TOKENS)


# --------------------------------------------------------------------------- /v1 completions


def test_v1_completions_stream_zeroed_usage_on_every_chunk(http: httpx.Client) -> None:
    body = {
        "model": "llama3.2",
        "prompt": "Once upon a time",
        "stream": True,
        "max_tokens": 3,
        "stream_options": {"include_usage": True},
    }
    r = http.post("/v1/completions", json=body)
    payloads = sse_payloads(r.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert all(c["usage"] == zero for c in chunks[:-1])
    assert [c["choices"][0]["text"] for c in chunks[:3]] == list(REPLY_TOKENS[:3])
    assert chunks[3]["choices"][0] == {"text": "", "index": 0, "finish_reason": "length"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17}
    assert list(chunks[0]) == [
        "id",
        "object",
        "created",
        "choices",
        "model",
        "system_fingerprint",
        "usage",
    ]


def test_v1_completions_stream_without_usage(http: httpx.Client) -> None:
    body = {"model": "llama3.2", "prompt": "hi", "stream": True, "max_tokens": 2}
    payloads = sse_payloads(http.post("/v1/completions", json=body).text)
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in json.loads(p) for p in payloads[:-1])


def test_v1_completions_openai(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="qwen2.5:0.5b", prompt="Once upon", max_tokens=6)
    assert completion.choices[0].text == "".join(REPLY_TOKENS[:6])
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 12
    assert completion.usage.completion_tokens == 6


# --------------------------------------------------------------------------- /v1 others


def test_v1_embeddings_openai_default_base64(oai: openai.OpenAI, fake: FakeOllama) -> None:
    result = oai.embeddings.create(model="nomic-embed-text", input=["a b", "c"])
    assert fake.requests[-1].body["encoding_format"] == "base64"
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    assert result.usage.prompt_tokens == result.usage.total_tokens == 3


def test_v1_embeddings_float_shape(http: httpx.Client) -> None:
    body = http.post(
        "/v1/embeddings", json={"model": "nomic-embed-text", "input": "hello world"}
    ).json()
    assert body["object"] == "list"
    assert body["model"] == "nomic-embed-text"
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    (item,) = body["data"]
    assert item["object"] == "embedding"
    assert item["index"] == 0
    assert len(item["embedding"]) == 8
    assert all(isinstance(x, float) for x in item["embedding"])
    b64 = http.post(
        "/v1/embeddings",
        json={"model": "nomic-embed-text", "input": "hello world", "encoding_format": "base64"},
    ).json()
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(item["embedding"], abs=1e-6)


def test_v1_models_openai(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    assert ids == ["llama3.2", "qwen2.5:0.5b", "nomic-embed-text"]
    model = oai.models.retrieve("qwen2.5:0.5b")
    assert (model.id, model.object, model.owned_by) == ("qwen2.5:0.5b", "model", "library")
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4o")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", chat_body(model="nope")),
        ("POST", "/v1/completions", {"model": "nope", "prompt": "x"}),
        ("POST", "/v1/embeddings", {"model": "nope", "input": "x"}),
        ("GET", "/v1/models/nope", None),
    ],
)
def test_v1_unknown_model_404_shape(
    http: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> None:
    r = http.request(method, path, json=body)
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "model 'nope' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }


def test_v1_bad_requests_400_shape(http: httpx.Client, oai: openai.OpenAI) -> None:
    r = http.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="llama3.2", messages=[])


def test_tag_suffix_is_optional(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=chat_body(model="llama3.2:latest"))
    assert r.status_code == 200
    assert r.json()["model"] == "llama3.2:latest"


# --------------------------------------------------------------------------- /api generation


def test_api_chat_ndjson_wire_format(http: httpx.Client, fake: FakeOllama) -> None:
    r = http.post("/api/chat", json=chat_body(options={"num_predict": 3}))
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(r.text)
    assert len(lines) == 4
    for line, token in zip(lines[:3], REPLY_TOKENS, strict=False):
        assert line["message"] == {"role": "assistant", "content": token}
        assert line["done"] is False
        assert set(line) == {"model", "created_at", "message", "done"}
    done = lines[-1]
    assert done["done"] is True
    assert done["done_reason"] == "length"
    assert done["message"]["content"] == ""
    assert done["prompt_eval_count"] == CHAT_PROMPT_TOKENS
    assert done["eval_count"] == 3
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(done[key], int)
        assert done[key] > 0
    assert fake.streams_finished == 1


def test_api_chat_cached_prompt_omits_prompt_eval_count(http: httpx.Client) -> None:
    body = chat_body(stream=False, options={"fake_cached_prompt": True})
    done = http.post("/api/chat", json=body).json()
    assert "prompt_eval_count" not in done
    assert done["eval_count"] == len(REPLY_TOKENS)


def test_api_chat_ollama_client(oll: ollama.Client) -> None:
    parts = list(oll.chat(model="llama3.2", messages=chat_body()["messages"], stream=True))
    assert "".join(p.message.content or "" for p in parts) == REPLY_TEXT
    assert parts[-1].done
    assert parts[-1].done_reason == "stop"
    assert parts[-1].eval_count == len(REPLY_TOKENS)
    whole = oll.chat(model="llama3.2", messages=chat_body()["messages"], options={"num_predict": 2})
    assert whole.message.content == "".join(REPLY_TOKENS[:2])
    assert whole.done_reason == "length"
    assert whole.prompt_eval_count == CHAT_PROMPT_TOKENS


def test_api_generate_ollama_client(oll: ollama.Client, http: httpx.Client) -> None:
    parts = list(oll.generate(model="llama3.2", prompt="Tell me", stream=True))
    assert "".join(p.response or "" for p in parts) == REPLY_TEXT
    assert parts[-1].prompt_eval_count == 12
    whole = oll.generate(model="llama3.2", prompt="Tell me", options={"num_predict": 4})
    assert whole.response == "".join(REPLY_TOKENS[:4])
    assert whole.done_reason == "length"
    assert whole.eval_count == 4
    raw = http.post("/api/generate", json={"model": "llama3.2", "prompt": "hi", "stream": False})
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.json()["response"] == REPLY_TEXT


def test_api_chat_without_messages_loads_the_model(http: httpx.Client) -> None:
    body = http.post("/api/chat", json={"model": "llama3.2", "messages": []}).json()
    assert body["done"] is True
    assert body["done_reason"] == "load"
    assert "eval_count" not in body


def test_api_errors(http: httpx.Client, oll: ollama.Client) -> None:
    r = http.post("/api/chat", json=chat_body(model="nope"))
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    r = http.post("/api/generate", content=b"[1,")
    assert r.status_code == 400
    assert isinstance(r.json()["error"], str)
    r = http.post("/api/chat", json={"messages": []})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    with pytest.raises(ollama.ResponseError) as info:
        oll.show("nope")
    assert info.value.status_code == 404


# --------------------------------------------------------------------------- /api others


def test_api_embed_and_legacy_embeddings(oll: ollama.Client, http: httpx.Client) -> None:
    result = oll.embed(model="nomic-embed-text", input=["one two three", "four"])
    assert len(result.embeddings) == 2
    assert all(len(e) == 8 for e in result.embeddings)
    assert result.prompt_eval_count == 4
    assert result.load_duration
    assert result.total_duration
    legacy = http.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "hi"})
    assert set(legacy.json()) == {"embedding"}
    assert len(legacy.json()["embedding"]) == 8


def test_api_tags_show_ps_version(oll: ollama.Client, http: httpx.Client) -> None:
    listed = oll.list()
    assert [m.model for m in listed.models] == ["llama3.2", "qwen2.5:0.5b", "nomic-embed-text"]
    raw = http.get("/api/tags").json()["models"][0]
    assert set(raw) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert raw["details"]["format"] == "gguf"
    shown = oll.show("llama3.2")
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.template
    assert shown.modelfile
    assert shown.capabilities == ["completion", "tools"]
    assert oll.ps().models == []
    oll.chat(model="qwen2.5:0.5b", messages=chat_body()["messages"])
    assert [m.model for m in oll.ps().models] == ["qwen2.5:0.5b"]
    assert http.get("/api/version").json() == {"version": "0.33.0"}


def test_api_pull_streams_status_lines(oll: ollama.Client, http: httpx.Client) -> None:
    statuses = [p.status for p in oll.pull("phi3:mini", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert any(s and s.startswith("pulling ") and s != "pulling manifest" for s in statuses)
    r = http.post("/api/pull", json={"model": "phi3:mini"})
    assert r.headers["content-type"] == "application/x-ndjson"
    progress = [line for line in ndjson(r.text) if "digest" in line]
    assert progress
    assert all({"status", "digest", "total", "completed"} <= set(line) for line in progress)
    assert http.post("/api/pull", json={"model": "x", "stream": False}).json() == {
        "status": "success"
    }
    assert "phi3:mini" in [m.model for m in oll.list().models]


def test_api_copy_delete_create(oll: ollama.Client, fake: FakeOllama, http: httpx.Client) -> None:
    assert oll.copy("llama3.2", "mine").status == "success"
    assert "mine" in fake.models
    r = http.request("DELETE", "/api/delete", json={"model": "mine"})
    assert (r.status_code, r.content) == (200, b"")
    assert "mine" not in fake.models
    r = http.request("DELETE", "/api/delete", json={"model": "mine"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'mine' not found"})
    statuses = [p.status for p in oll.create(model="custom", from_="llama3.2", stream=True)]
    assert statuses[-1] == "success"
    assert "custom" in fake.models


# --------------------------------------------------------------------------- failure modes


def test_llamacpp_mode(http: httpx.Client, fake: FakeOllama) -> None:
    fake.mode = "llamacpp"
    body = chat_body(stream=True, max_tokens=3, stream_options={"include_usage": True})
    payloads = sse_payloads(http.post("/v1/chat/completions", json=body).text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(json.dumps(c) == p for c, p in zip(chunks, payloads, strict=False))
    assert all(not is_compact(p) for p in payloads[:-1])
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)
    contents = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert contents == [None, *REPLY_TOKENS[:3], None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", chat_body(stream=True)), ("/api/chat", chat_body())],
)
def test_drop_mode_aborts_the_connection(
    http: httpx.Client, fake: FakeOllama, path: str, body: dict[str, Any]
) -> None:
    fake.mode = "drop"
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError, match="incomplete"),
        http.stream("POST", path, json=body) as r,
    ):
        assert r.status_code == 200
        received.extend(line for line in r.iter_lines() if line)
    assert len(received) == 3
    assert "[DONE]" not in received[-1]
    assert fake.streams_cancelled == 0
    assert fake.streams_finished == 0
    assert not fake.cancelled.is_set()


def test_drop_mode_non_streaming_is_cut(http: httpx.Client, fake: FakeOllama) -> None:
    fake.mode = "drop"
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/chat/completions", json=chat_body())


def test_error_midstream_mode(http: httpx.Client, fake: FakeOllama) -> None:
    fake.mode = "error_midstream"
    r = http.post("/api/chat", json=chat_body())
    assert r.status_code == 200
    lines = ndjson(r.text)
    assert len(lines) == 4
    assert set(lines[-1]) == {"error"}
    assert not any(line.get("done") for line in lines)
    sse = http.post("/v1/chat/completions", json=chat_body(stream=True))
    assert sse.status_code == 200
    payloads = sse_payloads(sse.text)
    assert len(payloads) == 3
    assert "[DONE]" not in payloads
    full = http.post("/v1/chat/completions", json=chat_body())
    assert full.status_code == 500
    assert full.json()["error"]["type"] == "api_error"
