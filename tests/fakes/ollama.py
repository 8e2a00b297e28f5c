"""A fake Ollama server speaking Ollama's real wire format, for tests.

``FakeOllama().app`` is a Starlette app; serve it with :func:`tests.servers.serve_in_thread`.
It answers the OpenAI-compatible routes (``/v1/...``, SSE streams) and the native routes
(``/api/...``, NDJSON streams) the way Ollama v0.33 does (see
``/work/shared/reference/ollama-wire.md``), records every request it receives, and counts
streams started / finished / cancelled so tests can check what a proxy in front of it did.

Deterministic by design:

* the reply is always (a prefix of) :data:`REPLY_TEXT`, one token per word, see
  :data:`REPLY_TOKENS` and :meth:`FakeOllama.completion_tokens_for`;
* prompt token counts follow :meth:`FakeOllama.prompt_tokens_for`;
* durations in ``/api`` done lines are computed from the token counts, not measured.

Knobs (all settable while the server runs): ``token_delay``, ``header_delay``, ``mode``,
``reply_text``.
Call :meth:`FakeOllama.reset` between tests that share one server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import itertools
import json
import math
import struct
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_MODELS",
    "MODES",
    "REPLY_TEXT",
    "REPLY_TOKENS",
    "FakeOllama",
    "Mode",
    "Recorded",
    "tokens_of",
]

Mode = Literal["ollama", "llamacpp", "drop", "error_midstream"]
MODES: Final[tuple[str, ...]] = get_args(Mode)

DEFAULT_MODELS: Final[tuple[str, ...]] = ("llama3.2", "qwen2.5:0.5b", "nomic-embed-text")

REPLY_TEXT: Final[str] = (
    "The quick brown fox jumps over the lazy dog while the gateway counts every token it "
    "forwards, checks each quota twice, streams each word the moment it arrives, and never "
    "buffers a reply that a patient user is waiting to read on the other side of the wire."
)
"""The full reply of every chat/completion/generate request (48 words)."""


def tokens_of(text: str) -> tuple[str, ...]:
    """One token per space-separated word; every token but the first carries its leading space,
    so the tokens joined give back ``text`` exactly."""
    return tuple(word if i == 0 else " " + word for i, word in enumerate(text.split(" ")))


REPLY_TOKENS: Final[tuple[str, ...]] = tokens_of(REPLY_TEXT)
"""One token per word; every token but the first carries its leading space."""

VERSION: Final[str] = "0.33.0"
MID_STREAM_ERROR: Final[str] = "an error was encountered while running the model: unexpected EOF"
TOKENS_BEFORE_FAILURE: Final[int] = 3
MESSAGE_OVERHEAD: Final[int] = 10
EMBEDDING_DIM: Final[int] = 8
MODIFIED_AT: Final[str] = "2025-06-01T12:00:00.000000000Z"
MODIFIED_AT_UNIX: Final[int] = 1748779200
LOAD_DURATION: Final[int] = 1_334_875
PROMPT_EVAL_NS_PER_TOKEN: Final[int] = 250_000
EVAL_NS_PER_TOKEN: Final[int] = 15_000_000
OVERHEAD_NS: Final[int] = 2_000_000
NDJSON: Final[str] = "application/x-ndjson"
SSE: Final[str] = "text/event-stream"
JSON_CT: Final[str] = "application/json; charset=utf-8"

Flavor = Literal["v1", "api"]


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Lower-cased names; repeated headers joined with ", "."""
    body: Any
    """Parsed JSON, or None when the body is empty or not valid JSON."""
    raw: bytes = b""
    query: str = ""


class _DroppedConnection(Exception):
    """Raised inside a response body generator to abort the connection mid-body."""


# --------------------------------------------------------------------------- helpers


def _dumps_compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _dumps_python(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _words(value: Any) -> int:
    """Whitespace-separated words in a string, or in the text parts of an OpenAI content list."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, str):
                total += len(part.split())
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"].split())
        return total
    return 0


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _canonical(name: str) -> str:
    """Ollama's name normalisation: a name without a tag means ``:latest``."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


def _namespace(name: str) -> str:
    parts = name.split(":", 1)[0].split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def _digest(name: str) -> str:
    return hashlib.sha256(_canonical(name).encode()).hexdigest()


def _now_rfc3339() -> str:
    ns = time.time_ns()
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ns % 1_000_000_000:09d}Z"


def _host_allowed(host: str | None) -> bool:
    """Ollama's check when it listens on loopback: the Host must be a local name.

    Accepted: no Host at all, ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``,
    bracketed or bare), each with or without a port. Stricter than real Ollama, which also lets
    private/unspecified IPs and ``*.localhost`` / ``*.local`` / ``*.internal`` names through.
    """
    if not host:
        return True
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end < 0:
            return False
        hostname = h[1:end]
    elif h.count(":") == 1:
        hostname = h.split(":", 1)[0]
    else:
        hostname = h
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _embedding(text: str, dimensions: int | None = None) -> list[float]:
    """A deterministic, L2-normalised vector derived from the text's SHA-256."""
    digest = hashlib.sha256(text.encode()).digest()
    size = dimensions if dimensions is not None and dimensions < EMBEDDING_DIM else EMBEDDING_DIM
    values = [(b - 127.5) / 127.5 for b in digest[:size]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 7) for v in values]


def _floats_to_base64(values: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def _json_error_message(raw: bytes, exc: json.JSONDecodeError) -> str:
    """Approximate Go's encoding/json message for a syntax error."""
    if not raw.strip():
        return "EOF"
    if exc.pos >= len(exc.doc):
        return "unexpected end of JSON input"
    return f"invalid character {exc.doc[exc.pos]!r} looking for beginning of value"


def _model_details(name: str) -> dict[str, Any]:
    lowered = name.lower()
    if "embed" in lowered:
        family, size, quant = "nomic-bert", "137M", "F16"
    elif lowered.startswith("qwen"):
        family, size, quant = "qwen2", "494.03M" if "0.5b" in lowered else "7.6B", "Q4_K_M"
    else:
        family, size, quant = "llama", "3.2B", "Q4_K_M"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": size,
        "quantization_level": quant,
    }


def _model_size(name: str) -> int:
    return 200_000_000 + int(_digest(name)[:6], 16) * 100


def _is_embedding_model(name: str) -> bool:
    return "embed" in name.lower()


class _ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always ``aclose()``s its generator once the response is over.

    Starlette leaves a generator suspended at ``yield`` when the client disconnects while a chunk
    is being sent; it would only be closed (GeneratorExit) when garbage-collected. Closing it
    here makes cancellation detection deterministic.
    """

    def __init__(
        self, content: AsyncGenerator[bytes, None], *, status_code: int = 200, media_type: str
    ) -> None:
        # Passing content-type as a header keeps Starlette from appending "; charset=utf-8":
        # Ollama sends exactly "text/event-stream" / "application/x-ndjson".
        super().__init__(content, status_code=status_code, headers={"content-type": media_type})
        self._generator = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except _DroppedConnection:
            # Return with the body unfinished: uvicorn logs one line ("ASGI callable returned
            # without completing response.") and closes the socket, with no chunked terminator.
            return
        finally:
            await self._generator.aclose()


class _GuardAndRecord:
    """ASGI middleware: read and record the request, enforce the Host check, delay headers."""

    def __init__(self, app: ASGIApp, fake: FakeOllama) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        headers = Headers(scope=scope)
        self.fake._record(
            Recorded(
                method=scope["method"],
                path=scope["path"],
                headers={k: ", ".join(headers.getlist(k)) for k in headers},
                body=_parse_or_none(raw),
                raw=raw,
                query=scope.get("query_string", b"").decode("latin-1"),
            )
        )
        if not _host_allowed(headers.get("host")):
            await Response(status_code=403)(scope, receive, send)
            return
        if self.fake.header_delay > 0:
            await asyncio.sleep(self.fake.header_delay)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _parse_or_none(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


async def _not_found(request: Request, exc: Exception) -> Response:
    return Response("404 page not found", status_code=404, media_type="text/plain")


# --------------------------------------------------------------------------- the fake


class FakeOllama:
    """A fake Ollama. ``app`` is the ASGI app; everything else is for the test to read or set.

    Attributes settable at run time:

    ``token_delay``
        seconds slept before each streamed content token (``asyncio.sleep``; 0 still yields).
    ``reply_text``
        the text every generation answers (default :data:`REPLY_TEXT`), split into tokens by
        :func:`tokens_of`.
    ``header_delay``
        seconds slept before *any* response is started (after the request has been recorded),
        to provoke header/read timeouts in a client.
    ``mode``
        ``"ollama"`` (default) - Ollama v0.33 behaviour.
        ``"llamacpp"`` - the ``/v1`` routes answer like llama-cpp-python: never a usage chunk in
        streams (``stream_options`` ignored), a role-only first chunk, then one token per chunk,
        ``"logprobs": null`` in choices, no ``system_fingerprint``, and JSON with Python's default
        ``", "`` / ``": "`` separators. ``/api`` routes are unaffected.
        ``"drop"`` - streaming generation responses (``/v1`` SSE and ``/api`` NDJSON) send 3
        tokens, then the connection is aborted mid-body (no chunked terminator, no ``[DONE]`` /
        done line); non-streaming generation responses are cut off half-way the same way.
        ``"error_midstream"`` - after 3 tokens, NDJSON streams get ``{"error": "..."}`` and end;
        SSE streams just end (status 200, no finish chunk, no usage, no ``[DONE]``);
        non-streaming generation requests get a 500 in the route's error shape.
        Drop and error modes only affect chat/completions/generate; streams shorter than 3 tokens
        complete normally.

    Observations (thread-safe):

    ``requests`` (every request, including 403/404 ones, but not the gateway's background
    health probes, recognised by their ``User-Agent: gatewayctl-health``: those only count in
    ``health_probes``), ``streams_started``,
    ``streams_finished`` (the generator sent everything it meant to, including a deliberate
    mid-stream error line), ``streams_cancelled`` (the client went away first), ``cancelled`` /
    ``first_token_sent`` / ``finished`` (``threading.Event``), :meth:`tokens_sent`.
    A stream aborted by ``mode="drop"`` counts as neither finished nor cancelled.

    Fake-only request knob: ``"options": {"fake_cached_prompt": true}`` (on ``/api/chat``,
    ``/api/generate``, and also accepted on ``/v1`` bodies) simulates a prompt served from the KV
    cache: ``prompt_eval_count`` is omitted from the done line (``/v1`` usage reports 0).

    Model names: listed exactly as given in ``models``; a request may name a model with or
    without ``:latest`` (``llama3.2`` == ``llama3.2:latest``), like Ollama. ``/api/pull``,
    ``/api/create``, ``/api/copy`` add models, ``/api/delete`` removes them.
    """

    def __init__(self, *, token_delay: float = 0.0, models: Sequence[str] = DEFAULT_MODELS) -> None:
        self._lock = threading.Lock()
        self._initial_models: tuple[str, ...] = tuple(models)
        self._initial_token_delay = token_delay
        self.token_delay: float = token_delay
        self.header_delay: float = 0.0
        self.mode: Mode = "ollama"
        self.reply_text: str = REPLY_TEXT
        self.requests: list[Recorded] = []
        self.cancelled = threading.Event()
        self.first_token_sent = threading.Event()
        self.finished = threading.Event()
        self._models: list[str] = list(models)
        self._loaded: dict[str, str] = {}
        self._streams_started = 0
        self._streams_finished = 0
        self._streams_cancelled = 0
        self._tokens_sent = 0
        self._health_probes = 0
        self._ids = itertools.count(1)
        self.app: Starlette = self._build_app()

    # ----------------------------------------------------------------- observations

    @property
    def streams_started(self) -> int:
        with self._lock:
            return self._streams_started

    @property
    def streams_finished(self) -> int:
        with self._lock:
            return self._streams_finished

    @property
    def streams_cancelled(self) -> int:
        with self._lock:
            return self._streams_cancelled

    @property
    def health_probes(self) -> int:
        """Health probes received from a gateway (not in ``requests``)."""
        with self._lock:
            return self._health_probes

    def tokens_sent(self) -> int:
        """Content tokens handed to the server so far, across all streams."""
        with self._lock:
            return self._tokens_sent

    @property
    def models(self) -> tuple[str, ...]:
        """The models currently installed (pull/create/copy/delete change them)."""
        with self._lock:
            return tuple(self._models)

    @property
    def reply_tokens(self) -> tuple[str, ...]:
        """The tokens of the current ``reply_text``."""
        return tokens_of(self.reply_text)

    def requests_to(self, path: str) -> list[Recorded]:
        """The recorded requests whose path equals ``path``."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def reset(self) -> None:
        """Forget requests, counters and events; restore knobs and models to their defaults."""
        with self._lock:
            self.requests.clear()
            self._streams_started = self._streams_finished = self._streams_cancelled = 0
            self._tokens_sent = 0
            self._models = list(self._initial_models)
            self._loaded.clear()
            self.token_delay = self._initial_token_delay
            self.header_delay = 0.0
            self.mode = "ollama"
            self.reply_text = REPLY_TEXT
        self.cancelled.clear()
        self.first_token_sent.clear()
        self.finished.clear()

    # ----------------------------------------------------------------- deterministic counts

    def prompt_tokens_for(self, body: Any) -> int:
        """The prompt token count the fake reports for a request body.

        Words are whitespace-separated (``str.split()``); for OpenAI list contents only the
        ``text`` parts count.

        * chat (body has ``messages``): sum over messages of ``words(content) + 10``;
        * embeddings (body has ``input``, a string or a list of strings):
          sum of ``words(item)``, no overhead;
        * completion / generate (body has ``prompt``): ``words(prompt) + words(system) + 10``;
        * anything else: 0.
        """
        if not isinstance(body, dict):
            return 0
        messages = body.get("messages")
        if isinstance(messages, list):
            return sum(
                _words(m.get("content")) + MESSAGE_OVERHEAD if isinstance(m, dict) else 0
                for m in messages
            )
        if "input" in body:
            items = body["input"]
            if isinstance(items, str):
                return _words(items)
            if isinstance(items, list):
                return sum(_words(i) for i in items if isinstance(i, str))
            return 0
        if "prompt" in body:
            return _words(body.get("prompt")) + _words(body.get("system")) + MESSAGE_OVERHEAD
        return 0

    def completion_tokens_for(self, body: Any, *, native: bool = False) -> int:
        """How many tokens of :attr:`reply_tokens` (default :data:`REPLY_TOKENS`) a request gets.

        ``/v1`` (``native=False``): ``min(len(REPLY_TOKENS), max_tokens)`` when ``max_tokens`` is
        a positive integer; ``max_completion_tokens`` is ignored, like real Ollama.
        ``/api`` (``native=True``): ``min(len(REPLY_TOKENS), options.num_predict)`` when
        ``num_predict`` is a positive integer (absent, -1, -2: the whole reply).
        ``finish_reason`` / ``done_reason`` is ``"length"`` exactly when this is less than
        ``len(REPLY_TOKENS)``.
        """
        whole = len(self.reply_tokens)
        if not isinstance(body, dict):
            return whole
        if native:
            options = body.get("options")
            limit = _positive_int(options.get("num_predict")) if isinstance(options, dict) else None
        else:
            limit = _positive_int(body.get("max_tokens"))
        return whole if limit is None else min(whole, limit)

    # ----------------------------------------------------------------- internals: state

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            # Background probes would otherwise show up in tests checking what reached the engine.
            if recorded.headers.get("user-agent", "").startswith("gatewayctl-health"):
                self._health_probes += 1
            else:
                self.requests.append(recorded)

    def _next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def _find_model(self, name: Any) -> str | None:
        if not isinstance(name, str) or not name:
            return None
        wanted = _canonical(name)
        with self._lock:
            for m in self._models:
                if _canonical(m) == wanted:
                    return m
        return None

    def _add_model(self, name: str) -> None:
        with self._lock:
            if all(_canonical(m) != _canonical(name) for m in self._models):
                self._models.append(name)

    def _remove_model(self, name: str) -> None:
        with self._lock:
            self._models = [m for m in self._models if _canonical(m) != _canonical(name)]
            self._loaded.pop(_canonical(name), None)

    def _touch(self, model: str) -> None:
        expires = datetime.now(tz=UTC) + timedelta(minutes=5)
        with self._lock:
            self._loaded[_canonical(model)] = expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _stream_started(self) -> None:
        with self._lock:
            self._streams_started += 1

    def _stream_finished(self) -> None:
        with self._lock:
            self._streams_finished += 1
        self.finished.set()

    def _stream_cancelled(self) -> None:
        with self._lock:
            self._streams_cancelled += 1
        self.cancelled.set()

    def _token_sent(self) -> None:
        with self._lock:
            self._tokens_sent += 1
        self.first_token_sent.set()

    # ----------------------------------------------------------------- internals: plumbing

    def _build_app(self) -> Starlette:
        routes = [
            Route("/", self._root, methods=["GET", "HEAD"]),
            Route("/v1/chat/completions", self._v1_chat, methods=["POST"]),
            Route("/v1/completions", self._v1_completions, methods=["POST"]),
            Route("/v1/embeddings", self._v1_embeddings, methods=["POST"]),
            Route("/v1/models", self._v1_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self._v1_model, methods=["GET"]),
            Route("/api/chat", self._api_chat, methods=["POST"]),
            Route("/api/generate", self._api_generate, methods=["POST"]),
            Route("/api/embed", self._api_embed, methods=["POST"]),
            Route("/api/embeddings", self._api_embeddings, methods=["POST"]),
            Route("/api/tags", self._api_tags, methods=["GET", "HEAD"]),
            Route("/api/ps", self._api_ps, methods=["GET"]),
            Route("/api/show", self._api_show, methods=["POST"]),
            Route("/api/version", self._api_version, methods=["GET", "HEAD"]),
            Route("/api/pull", self._api_pull, methods=["POST"]),
            Route("/api/create", self._api_create, methods=["POST"]),
            Route("/api/copy", self._api_copy, methods=["POST"]),
            Route("/api/delete", self._api_delete, methods=["DELETE"]),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(_GuardAndRecord, fake=self)],
            exception_handlers={404: _not_found, 405: _not_found},
        )

    def _json(self, obj: Any, flavor: Flavor, status: int = 200) -> Response:
        if flavor == "v1":
            # Go's json.Encoder (used by Ollama's OpenAI middleware) appends a newline.
            dumps = _dumps_python if self.mode == "llamacpp" else _dumps_compact
            return Response(
                dumps(obj) + "\n",
                status_code=status,
                headers={"content-type": "application/json"},
            )
        return Response(_dumps_compact(obj), status_code=status, headers={"content-type": JSON_CT})

    def _error(self, flavor: Flavor, status: int, message: str) -> Response:
        if flavor == "api":
            return self._json({"error": message}, "api", status)
        etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        body = {"error": {"message": message, "type": etype, "param": None, "code": None}}
        return self._json(body, "v1", status)

    def _not_found_model(self, flavor: Flavor, name: Any) -> Response:
        shown = name if isinstance(name, str) else ""
        return self._error(flavor, 404, f"model '{shown}' not found")

    async def _body(self, request: Request, flavor: Flavor) -> tuple[Any, Response | None]:
        """Parse a JSON object body, or produce the route's 400 error."""
        raw = await request.body()
        if flavor == "api" and not raw.strip():
            return None, self._error("api", 400, "missing request body")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            return None, self._error(flavor, 400, _json_error_message(raw, exc))
        except UnicodeDecodeError:
            return None, self._error(flavor, 400, "invalid character in request body")
        if not isinstance(body, dict):
            kind = type(body).__name__
            return None, self._error(flavor, 400, f"json: cannot unmarshal {kind} into Go value")
        return body, None

    def _stream(
        self,
        *,
        media_type: str,
        head: Sequence[bytes],
        tokens: Sequence[str],
        render: Callable[[int, str], bytes],
        tail: Callable[[], Sequence[bytes]],
        error_chunk: bytes | None,
    ) -> Response:
        """A tracked token stream: ``head`` chunks, one chunk per token, then ``tail()``."""
        mode = self.mode
        failing = mode in ("drop", "error_midstream")

        async def generate() -> AsyncGenerator[bytes, None]:
            self._stream_started()
            complete = False
            try:
                for chunk in head:
                    yield chunk
                for i, token in enumerate(tokens):
                    await asyncio.sleep(self.token_delay)
                    yield render(i, token)
                    self._token_sent()
                    if failing and i + 1 == TOKENS_BEFORE_FAILURE:
                        if mode == "drop":
                            raise _DroppedConnection("fake upstream dropped the connection")
                        if error_chunk is not None:
                            yield error_chunk
                        complete = True
                        return
                for chunk in tail():
                    yield chunk
                complete = True
            except (asyncio.CancelledError, GeneratorExit):
                self._stream_cancelled()
                raise
            finally:
                if complete:
                    self._stream_finished()

        return _ClosingStreamingResponse(generate(), media_type=media_type)

    def _full(self, payload: str, flavor: Flavor, *, error: str) -> Response:
        """A non-streaming generation reply, subject to the failure modes."""
        if self.mode == "error_midstream":
            return self._error(flavor, 500, error)
        if self.mode == "drop":
            half = payload.encode()[: len(payload) // 2]

            async def cut() -> AsyncGenerator[bytes, None]:
                yield half
                raise _DroppedConnection("fake upstream dropped the connection")

            ct = "application/json" if flavor == "v1" else JSON_CT
            return _ClosingStreamingResponse(cut(), media_type=ct)
        if flavor == "v1":
            payload += "\n"
        ct = "application/json" if flavor == "v1" else JSON_CT
        return Response(payload, headers={"content-type": ct})

    def _plan(self, body: dict[str, Any], *, native: bool) -> tuple[tuple[str, ...], str, int]:
        """(tokens, finish reason, prompt tokens) for a generation request."""
        n = self.completion_tokens_for(body, native=native)
        tokens = self.reply_tokens
        finish = "length" if n < len(tokens) else "stop"
        return tokens[:n], finish, self.prompt_tokens_for(body)

    @staticmethod
    def _cached(body: dict[str, Any]) -> bool:
        options = body.get("options")
        return isinstance(options, dict) and options.get("fake_cached_prompt") is True

    @staticmethod
    def _sse(data: str) -> bytes:
        return f"data: {data}\n\n".encode()

    # ----------------------------------------------------------------- root

    async def _root(self, request: Request) -> Response:
        return Response("Ollama is running", media_type="text/plain")

    # ----------------------------------------------------------------- /v1

    def _v1_generation(
        self, body: dict[str, Any]
    ) -> tuple[str, tuple[str, ...], str, dict[str, int]] | Response:
        """(model, tokens, finish reason, usage) of a /v1 generation, or the 404 to answer."""
        model = body.get("model")
        if self._find_model(model) is None:
            return self._not_found_model("v1", model)
        assert isinstance(model, str)
        self._touch(model)
        tokens, finish, prompt_tokens = self._plan(body, native=False)
        if self._cached(body):
            prompt_tokens = 0
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        return model, tokens, finish, usage

    async def _v1_chat(self, request: Request) -> Response:
        body, err = await self._body(request, "v1")
        if err is not None:
            return err
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error("v1", 400, "[] is too short - 'messages'")
        planned = self._v1_generation(body)
        if isinstance(planned, Response):
            return planned
        model, tokens, finish, usage = planned
        llamacpp = self.mode == "llamacpp"
        cid = f"chatcmpl-{self._next_id()}"
        created = int(time.time())
        base: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        if not llamacpp:
            base["system_fingerprint"] = "fp_ollama"
        dumps = _dumps_python if llamacpp else _dumps_compact

        def choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            if llamacpp:
                return {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            return {"index": 0, "delta": delta, "finish_reason": finish_reason}

        if body.get("stream") is not True:
            message = {"role": "assistant", "content": "".join(tokens)}
            full = {**base, "object": "chat.completion"}
            if llamacpp:
                full["choices"] = [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ]
            else:
                full["choices"] = [{"index": 0, "message": message, "finish_reason": finish}]
            full["usage"] = usage
            return self._full(dumps(full), "v1", error=MID_STREAM_ERROR)

        stream_options = body.get("stream_options")
        include_usage = (
            not llamacpp
            and isinstance(stream_options, dict)
            and stream_options.get("include_usage") is True
        )

        def render(i: int, token: str) -> bytes:
            if llamacpp or i > 0:
                delta: dict[str, Any] = {"content": token}
            else:
                delta = {"role": "assistant", "content": token}
            return self._sse(dumps({**base, "choices": [choice(delta, None)]}))

        def tail() -> list[bytes]:
            out = [self._sse(dumps({**base, "choices": [choice({}, finish)]}))]
            if include_usage:
                out.append(self._sse(dumps({**base, "choices": [], "usage": usage})))
            out.append(b"data: [DONE]\n\n")
            return out

        head: list[bytes] = []
        if llamacpp:
            head.append(
                self._sse(dumps({**base, "choices": [choice({"role": "assistant"}, None)]}))
            )
        return self._stream(
            media_type=SSE, head=head, tokens=tokens, render=render, tail=tail, error_chunk=None
        )

    async def _v1_completions(self, request: Request) -> Response:
        body, err = await self._body(request, "v1")
        if err is not None:
            return err
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            kind = "array" if isinstance(prompt, list) else type(prompt).__name__
            return self._error(
                "v1",
                400,
                f"json: cannot unmarshal {kind} into Go struct field "
                "CompletionRequest.prompt of type string",
            )
        planned = self._v1_generation(body)
        if isinstance(planned, Response):
            return planned
        model, tokens, finish, usage = planned
        zero_usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        llamacpp = self.mode == "llamacpp"
        dumps = _dumps_python if llamacpp else _dumps_compact
        cid = f"cmpl-{self._next_id()}"
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], chunk_usage: dict[str, int] | None) -> bytes:
            # Ollama's CompletionChunk puts "choices" before "model" (struct field order).
            if llamacpp:
                obj: dict[str, Any] = {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": choices,
                }
            else:
                obj = {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "choices": choices,
                    "model": model,
                    "system_fingerprint": "fp_ollama",
                }
            if chunk_usage is not None:
                obj["usage"] = chunk_usage
            return self._sse(dumps(obj))

        def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
            if llamacpp:
                return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
            return {"text": text, "index": 0, "finish_reason": finish_reason}

        if body.get("stream") is not True:
            full: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
            }
            if not llamacpp:
                full["system_fingerprint"] = "fp_ollama"
            full["choices"] = [choice("".join(tokens), finish)]
            full["usage"] = usage
            return self._full(dumps(full), "v1", error=MID_STREAM_ERROR)

        stream_options = body.get("stream_options")
        include_usage = (
            not llamacpp
            and isinstance(stream_options, dict)
            and stream_options.get("include_usage") is True
        )
        per_chunk_usage = zero_usage if include_usage else None

        def render(i: int, token: str) -> bytes:
            return chunk([choice(token, None)], per_chunk_usage)

        def tail() -> list[bytes]:
            out = [chunk([choice("", finish)], per_chunk_usage)]
            if include_usage:
                out.append(chunk([], usage))
            out.append(b"data: [DONE]\n\n")
            return out

        return self._stream(
            media_type=SSE, head=[], tokens=tokens, render=render, tail=tail, error_chunk=None
        )

    async def _v1_embeddings(self, request: Request) -> Response:
        body, err = await self._body(request, "v1")
        if err is not None:
            return err
        encoding = body.get("encoding_format") or ""
        if not isinstance(encoding, str) or encoding.lower() not in ("", "float", "base64"):
            return self._error(
                "v1",
                400,
                f"Invalid value for 'encoding_format' = {encoding}. "
                "Supported values: ['float', 'base64'].",
            )
        inputs = body.get("input")
        if inputs == "":
            inputs = [""]
        if inputs is None or (isinstance(inputs, list) and not inputs):
            return self._error("v1", 400, "invalid input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return self._error("v1", 400, "invalid input type")
        model = body.get("model")
        if self._find_model(model) is None:
            return self._not_found_model("v1", model)
        assert isinstance(model, str)
        self._touch(model)
        dims = _positive_int(body.get("dimensions"))
        data: list[dict[str, Any]] = []
        for i, text in enumerate(inputs):
            vector = _embedding(text, dims)
            embedding: Any = _floats_to_base64(vector) if encoding.lower() == "base64" else vector
            data.append({"object": "embedding", "embedding": embedding, "index": i})
        tokens = self.prompt_tokens_for({"input": inputs})
        return self._json(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            "v1",
        )

    def _v1_model_object(self, name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": MODIFIED_AT_UNIX,
            "owned_by": _namespace(name),
        }

    async def _v1_models(self, request: Request) -> Response:
        return self._json(
            {"object": "list", "data": [self._v1_model_object(m) for m in self.models]}, "v1"
        )

    async def _v1_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if self._find_model(name) is None:
            return self._not_found_model("v1", name)
        return self._json(self._v1_model_object(name), "v1")

    # ----------------------------------------------------------------- /api generation

    def _metrics(self, prompt_tokens: int, eval_count: int, *, cached: bool) -> dict[str, int]:
        """Ollama's done-line metrics; like Go's ``omitempty``, zero values are left out."""
        prompt_eval_duration = max(prompt_tokens, 1) * PROMPT_EVAL_NS_PER_TOKEN
        eval_duration = eval_count * EVAL_NS_PER_TOKEN
        metrics = {
            "total_duration": LOAD_DURATION + prompt_eval_duration + eval_duration + OVERHEAD_NS,
            "load_duration": LOAD_DURATION,
            "prompt_eval_count": 0 if cached else prompt_tokens,
            "prompt_eval_duration": prompt_eval_duration,
            "eval_count": eval_count,
            "eval_duration": eval_duration,
        }
        return {k: v for k, v in metrics.items() if v}

    async def _api_model_request(self, request: Request) -> tuple[dict[str, Any], str] | Response:
        """(body, model) of an /api request naming an installed model, or the error to answer."""
        body, err = await self._body(request, "api")
        if err is not None:
            return err
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error("api", 400, "model is required")
        if self._find_model(model) is None:
            return self._not_found_model("api", model)
        return body, model

    async def _api_chat(self, request: Request) -> Response:
        parsed = await self._api_model_request(request)
        if isinstance(parsed, Response):
            return parsed
        body, model = parsed
        messages = body.get("messages")
        if not messages:
            # Ollama answers a chat without messages by loading (or unloading) the model.
            return self._load_reply(body, model, {"message": {"role": "assistant", "content": ""}})
        self._touch(model)
        tokens, finish, prompt_tokens = self._plan(body, native=True)
        cached = self._cached(body)

        def line(content: str, **extra: Any) -> dict[str, Any]:
            return {
                "model": model,
                "created_at": _now_rfc3339(),
                "message": {"role": "assistant", "content": content},
                **extra,
            }

        def done(content: str) -> dict[str, Any]:
            metrics = self._metrics(prompt_tokens, len(tokens), cached=cached)
            return line(content, done=True, done_reason=finish, **metrics)

        return self._ndjson_reply(body, tokens, line, done)

    async def _api_generate(self, request: Request) -> Response:
        parsed = await self._api_model_request(request)
        if isinstance(parsed, Response):
            return parsed
        body, model = parsed
        if not body.get("prompt") and not body.get("images"):
            return self._load_reply(body, model, {"response": ""})
        self._touch(model)
        tokens, finish, prompt_tokens = self._plan(body, native=True)
        cached = self._cached(body)
        context = [(prompt_tokens * 7 + i * 13) % 128_000 for i in range(8)]

        def line(response: str, **extra: Any) -> dict[str, Any]:
            return {"model": model, "created_at": _now_rfc3339(), "response": response, **extra}

        def done(response: str) -> dict[str, Any]:
            metrics = self._metrics(prompt_tokens, len(tokens), cached=cached)
            return line(response, done=True, done_reason=finish, context=context, **metrics)

        return self._ndjson_reply(body, tokens, line, done)

    def _ndjson_reply(
        self,
        body: dict[str, Any],
        tokens: tuple[str, ...],
        line: Callable[..., dict[str, Any]],
        done: Callable[[str], dict[str, Any]],
    ) -> Response:
        """/api/chat and /api/generate: one object with ``"stream": false``, else NDJSON lines
        ending with the ``done`` line."""
        if body.get("stream") is False:
            return self._full(_dumps_compact(done("".join(tokens))), "api", error=MID_STREAM_ERROR)

        def render(i: int, token: str) -> bytes:
            return (_dumps_compact(line(token, done=False)) + "\n").encode()

        def tail() -> list[bytes]:
            return [(_dumps_compact(done("")) + "\n").encode()]

        return self._stream(
            media_type=NDJSON,
            head=[],
            tokens=tokens,
            render=render,
            tail=tail,
            error_chunk=(_dumps_compact({"error": MID_STREAM_ERROR}) + "\n").encode(),
        )

    def _load_reply(self, body: dict[str, Any], model: str, content: dict[str, Any]) -> Response:
        unload = body.get("keep_alive") in (0, "0", "0s")
        if unload:
            with self._lock:
                self._loaded.pop(_canonical(model), None)
        else:
            self._touch(model)
        reply = {
            "model": model,
            "created_at": _now_rfc3339(),
            **content,
            "done_reason": "unload" if unload else "load",
            "done": True,
        }
        return self._json(reply, "api")

    # ----------------------------------------------------------------- /api embeddings

    async def _api_embed(self, request: Request) -> Response:
        parsed = await self._api_model_request(request)
        if isinstance(parsed, Response):
            return parsed
        body, model = parsed
        inputs = body.get("input")
        if inputs is None:
            inputs = []
        elif isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return self._error("api", 400, "invalid input type")
        self._touch(model)
        dims = _positive_int(body.get("dimensions"))
        count = self.prompt_tokens_for({"input": inputs})
        reply: dict[str, Any] = {
            "model": model,
            "embeddings": [_embedding(t, dims) for t in inputs],
            "total_duration": LOAD_DURATION + count * PROMPT_EVAL_NS_PER_TOKEN + OVERHEAD_NS,
            "load_duration": LOAD_DURATION,
        }
        if count:
            reply["prompt_eval_count"] = count
        return self._json(reply, "api")

    async def _api_embeddings(self, request: Request) -> Response:
        parsed = await self._api_model_request(request)
        if isinstance(parsed, Response):
            return parsed
        body, model = parsed
        self._touch(model)
        prompt = body.get("prompt")
        vector = _embedding(prompt) if isinstance(prompt, str) and prompt else []
        return self._json({"embedding": vector}, "api")

    # ----------------------------------------------------------------- /api model management

    def _tag_entry(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": MODIFIED_AT,
            "size": _model_size(name),
            "digest": _digest(name),
            "details": _model_details(name),
        }

    async def _api_tags(self, request: Request) -> Response:
        return self._json({"models": [self._tag_entry(m) for m in self.models]}, "api")

    async def _api_ps(self, request: Request) -> Response:
        with self._lock:
            loaded = [
                (m, self._loaded[_canonical(m)])
                for m in self._models
                if _canonical(m) in self._loaded
            ]
        running = []
        for name, expires_at in loaded:
            size = _model_size(name)
            running.append(
                {
                    "name": name,
                    "model": name,
                    "size": size,
                    "digest": _digest(name),
                    "details": _model_details(name),
                    "expires_at": expires_at,
                    "size_vram": size,
                    "context_length": 4096,
                }
            )
        return self._json({"models": running}, "api")

    async def _api_show(self, request: Request) -> Response:
        body, err = await self._body(request, "api")
        if err is not None:
            return err
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return self._error("api", 400, "model is required")
        if self._find_model(name) is None:
            return self._not_found_model("api", name)
        details = _model_details(name)
        family = details["family"]
        embedding = _is_embedding_model(name)
        return self._json(
            {
                "license": "FAKE LICENSE",
                "modelfile": (
                    '# Modelfile generated by "ollama show"\n'
                    f"FROM /root/.ollama/models/blobs/sha256-{_digest(name)}\n"
                    'TEMPLATE """{{ .Prompt }}"""\n'
                ),
                "parameters": 'stop                           "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": details,
                "model_info": {
                    "general.architecture": family,
                    "general.parameter_count": _model_size(name) * 2,
                    f"{family}.context_length": 2048 if embedding else 131072,
                    f"{family}.embedding_length": 768 if embedding else 3072,
                },
                "capabilities": ["embedding"] if embedding else ["completion", "tools"],
                "modified_at": MODIFIED_AT,
            },
            "api",
        )

    async def _api_version(self, request: Request) -> Response:
        return self._json({"version": VERSION}, "api")

    def _status_stream(self, body: dict[str, Any], lines: Sequence[dict[str, Any]]) -> Response:
        if body.get("stream") is False:
            return self._json({"status": "success"}, "api")

        async def generate() -> AsyncGenerator[bytes, None]:
            for item in lines:
                await asyncio.sleep(0)
                yield (_dumps_compact(item) + "\n").encode()

        return _ClosingStreamingResponse(generate(), media_type=NDJSON)

    async def _api_pull(self, request: Request) -> Response:
        body, err = await self._body(request, "api")
        if err is not None:
            return err
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return self._error("api", 400, "model is required")
        digest = _digest(name)
        layers = [(f"sha256:{digest}", _model_size(name)), (f"sha256:{digest[::-1]}", 1_411)]
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        for layer, total in layers:
            short = layer.removeprefix("sha256:")[:12]
            for completed in (total // 2, total):
                lines.append(
                    {
                        "status": f"pulling {short}",
                        "digest": layer,
                        "total": total,
                        "completed": completed,
                    }
                )
        lines += [
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        self._add_model(name)
        return self._status_stream(body, lines)

    async def _api_create(self, request: Request) -> Response:
        body, err = await self._body(request, "api")
        if err is not None:
            return err
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return self._error("api", 400, "model is required")
        source = body.get("from")
        if source is not None and self._find_model(source) is None:
            return self._not_found_model("api", source)
        lines: list[dict[str, Any]] = [
            {"status": f"using existing layer sha256:{_digest(source or name)}"},
            {"status": f"creating new layer sha256:{_digest(name)[::-1]}"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        self._add_model(name)
        return self._status_stream(body, lines)

    async def _api_copy(self, request: Request) -> Response:
        body, err = await self._body(request, "api")
        if err is not None:
            return err
        source, destination = body.get("source"), body.get("destination")
        if not isinstance(destination, str) or not destination:
            return self._error("api", 400, "destination is required")
        if self._find_model(source) is None:
            return self._not_found_model("api", source)
        self._add_model(destination)
        return Response(status_code=200)

    async def _api_delete(self, request: Request) -> Response:
        body, err = await self._body(request, "api")
        if err is not None:
            return err
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return self._error("api", 400, "model is required")
        if self._find_model(name) is None:
            return self._not_found_model("api", name)
        self._remove_model(name)
        return Response(status_code=200)
