"""A fast fake OpenAI-compatible engine: raw asyncio + httptools, for load tests only.

The test fake (tests/fakes/ollama.py) is a Starlette app that records everything, so it would be
the bottleneck of a benchmark. This one answers ``POST /v1/chat/completions`` from a cache of
prebuilt bodies, with HTTP/1.1 keep-alive, in a few microseconds.

The request picks the answer:

* ``max_tokens`` (default 20): how many content chunks a stream has, and the completion tokens
  reported in ``usage``. A gateway caps it, so a lowered cap is visible in the answer.
* ``model``: ``...@50ms`` paces a stream at one chunk every 50 ms; anything else streams at once.
* ``stream``: SSE (chunked, like Ollama) or one JSON body.

Run: ``python -m bench.upstream --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
from typing import Any

import httptools

_PACE = re.compile(r"@(\d+(?:\.\d+)?)ms$")
_MODELS = b'{"object":"list","data":[{"id":"bench","object":"model","created":1,"owned_by":"x"}]}'
_NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error"}}'


def _head(status: bytes, content_type: bytes, length: int | None) -> bytes:
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\n" + framing + b"\r\n"
        b"date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n"
    )


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}


def whole_body(tokens: int) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1767225600,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok " * min(tokens, 64)},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(tokens),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk_event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1767225600}
    return _event({**base, "model": "bench", "choices": choices, **extra})


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    return _chunk_event([{"index": 0, "delta": delta, "finish_reason": finish}])


TOKEN_EVENT = _chunk({"content": " tok"}, None)


def stream_tail(tokens: int) -> bytes:
    """The events after the content: finish, usage (choices empty), [DONE]."""
    usage = _chunk_event([], usage=_usage(tokens))
    return _chunk({}, "stop") + usage + b"data: [DONE]\n\n"


class Answers:
    """Prebuilt responses by token count (the bench uses a handful of counts)."""

    def __init__(self) -> None:
        self._whole: dict[int, bytes] = {}
        self._stream: dict[int, bytes] = {}

    def whole(self, tokens: int) -> bytes:
        answer = self._whole.get(tokens)
        if answer is None:
            body = whole_body(tokens)
            answer = self._whole[tokens] = _head(b"200 OK", b"application/json", len(body)) + body
        return answer

    def stream(self, tokens: int) -> bytes:
        answer = self._stream.get(tokens)
        if answer is None:
            events = TOKEN_EVENT * tokens + stream_tail(tokens)
            answer = _head(b"200 OK", b"text/event-stream", None) + _chunked(events) + b"0\r\n\r\n"
            self._stream[tokens] = answer
        return answer


class _Connection(asyncio.Protocol):
    def __init__(self, answers: Answers) -> None:
        self._answers = answers
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._busy: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._busy is not None:
            self._busy.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        method = self._parser.get_method()
        if method == b"GET" and self._url.startswith(b"/v1/models"):
            transport.write(_head(b"200 OK", b"application/json", len(_MODELS)) + _MODELS)
            return
        if method != b"POST" or not self._url.startswith(b"/v1/chat/completions"):
            transport.write(_head(b"404 Not Found", b"application/json", len(_NOT_FOUND)))
            transport.write(_NOT_FOUND)
            return
        request = json.loads(b"".join(self._body))
        tokens = int(request.get("max_tokens") or 20)
        if not request.get("stream"):
            transport.write(self._answers.whole(tokens))
            return
        pace = _PACE.search(str(request.get("model", "")))
        if pace is None:
            transport.write(self._answers.stream(tokens))
        else:
            delay = float(pace.group(1)) / 1000
            self._busy = asyncio.ensure_future(self._paced(transport, tokens, delay))

    async def _paced(self, transport: Any, tokens: int, delay: float) -> None:
        transport.write(_head(b"200 OK", b"text/event-stream", None))
        chunk = _chunked(TOKEN_EVENT)
        for _ in range(tokens):
            await asyncio.sleep(delay)
            if transport.is_closing():
                return
            transport.write(chunk)
        transport.write(_chunked(stream_tail(tokens)) + b"0\r\n\r\n")
        self._busy = None


async def serve(port: int, host: str = "127.0.0.1") -> None:
    answers = Answers()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(answers), host, port, backlog=4096, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
