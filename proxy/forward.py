"""Relaying one upstream exchange to one client, as it arrives.

The upstream response is opened with ``send(..., stream=True)`` and every whole event is
passed to the client as soon as it is read: nothing waits for the end of the generation.
While that runs, a watcher awaits the client's ``http.disconnect``; when it comes first, the
relay is cancelled, which closes the upstream connection at once (the engine stops generating
when its client goes away) and the tokens streamed so far are still reported for accounting.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
from gatewayctl.proxy.asgi import Headers, Receive, Send, send_response
from gatewayctl.proxy.dialect import Dialect
from gatewayctl.proxy.errors import (
    GatewayError,
    UpstreamConnectFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gatewayctl.proxy.http1 import READ_CHUNK, ReadChunk
from gatewayctl.proxy.usage import NdjsonScanner, SseScanner, Usage

_STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")


@dataclass(slots=True)
class Outcome:
    """What happened, for the ledger."""

    status: int = 0
    outcome: str = "ok"  # ok | incomplete | client_disconnect | upstream_error | upstream_status
    usage: Usage | None = None
    counted_tokens: int = 0
    ttft: float | None = None  # perf_counter() of the first body byte sent to the client
    scanner: SseScanner | NdjsonScanner | None = field(default=None, repr=False)


def upstream_error(exc: httpx.HTTPError) -> GatewayError:
    # Clients are not told which engine (its address, or credentials in its URL): admins find
    # it in the access log and the upstream health.
    # No connection means nothing reached the engine: the caller may try another upstream.
    unconnected = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    if isinstance(exc, httpx.TimeoutException) and not unconnected:
        return UpstreamTimeout("the upstream engine did not answer in time")
    kind = UpstreamConnectFailed if unconnected else UpstreamUnavailable
    return kind(f"the upstream engine is unreachable ({type(exc).__name__})")


def _chunk_reader(response: httpx.Response) -> ReadChunk:
    """The response body's next raw chunk (b"" at its end), straight from our transport when
    it is the one, else through httpx's ``aiter_raw``."""
    read: ReadChunk | None = response.extensions.get(READ_CHUNK)
    if read is not None:
        return read
    chunks = response.aiter_raw()
    return lambda: anext(chunks, b"")


async def _read_whole(response: httpx.Response) -> bytes:
    if "content-encoding" in response.headers:
        return await response.aread()  # httpx undoes the encoding, and the client gets it plain
    read = _chunk_reader(response)
    parts: list[bytes] = []
    while chunk := await read():
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Relay:
    """One upstream request relayed to one client; ``run`` raises GatewayError only before
    anything was sent to the client, so the caller can still answer with an error."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        request: httpx.Request,
        dialect: Dialect,
        *,
        hide_usage_chunk: bool,
        response_headers: Headers,
    ) -> None:
        self._client = client
        self._request = request
        self._dialect = dialect
        self._hide_usage_chunk = hide_usage_chunk
        self._headers = response_headers
        self._finishing = False
        self.result = Outcome()

    async def run(self, receive: Receive, send: Send) -> Outcome:
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch_disconnect() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not self._finishing:  # after our last byte, "disconnect" only means "done"
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(watch_disconnect())
        try:
            await self._exchange(send)
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            self.result.outcome = "client_disconnect"
        finally:
            watcher.cancel()
        scanner = self.result.scanner
        if scanner is not None:
            self.result.usage = scanner.usage
            self.result.counted_tokens = scanner.counted_tokens
        return self.result

    async def _exchange(self, send: Send) -> None:
        try:
            response = await self._client.send(self._request, stream=True)
        except httpx.HTTPError as exc:
            raise upstream_error(exc) from None
        try:
            self.result.status = response.status_code
            content_type = response.headers.get("content-type", "").encode()
            if response.status_code == 200 and content_type.startswith(_STREAM_TYPES):
                await self._stream(response, content_type, send)
            else:
                await self._whole(response, content_type, send)
        finally:
            await response.aclose()

    async def _whole(self, response: httpx.Response, content_type: bytes, send: Send) -> None:
        try:
            body = await _read_whole(response)
        except httpx.HTTPError as exc:
            raise upstream_error(exc) from None
        if response.status_code == 200:
            self.result.usage = self._dialect.usage_from_body(body)
        else:
            self.result.outcome = "upstream_status"
        self._finishing = True
        await send_response(
            send, response.status_code, body, self._headers, content_type or b"application/json"
        )
        self.result.ttft = time.perf_counter()

    async def _stream(self, response: httpx.Response, content_type: bytes, send: Send) -> None:
        scanner = self._dialect.new_scanner(self._hide_usage_chunk)
        self.result.scanner = scanner
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    *self._headers,
                ],
            }
        )
        read = _chunk_reader(response)
        try:
            while chunk := await read():
                out = scanner.feed(chunk)
                if out:
                    if self.result.ttft is None:
                        self.result.ttft = time.perf_counter()
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except httpx.HTTPError as exc:
            # Too late for a status code: tell the client inside the stream, as engines do.
            error = upstream_error(exc)
            tail = scanner.flush() + self._dialect.stream_error(error)
            self.result.outcome = "upstream_error"
        else:
            tail = scanner.flush()
            if scanner.error:
                self.result.outcome = "upstream_error"
            elif not scanner.done:
                self.result.outcome = "incomplete"
        self._finishing = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})
