"""A small HTTP/1.1 client transport for httpx: asyncio protocols and the httptools parser.

The gateway talks to a handful of engines over keep-alive HTTP/1.1 and spends most of its CPU
doing so: per request, httpx's own transport costs about 1 ms here and httpx-aiohttp about
0.2 ms, while one write and one parse of a small exchange take a few tens of microseconds.
This transport does only what the relay needs:

* one write per request (head and body together), the response parsed in C by httptools;
* body chunks handed over as they arrive (a stream is never buffered), with back pressure;
* a pool of idle keep-alive connections per origin, unbounded (every held stream is one
  connection, and the engine's own queue is the limit), idle ones dropped after a few seconds;
* closing an unfinished response closes its connection at once: that is how an engine learns
  that its client went away and stops generating;
* httpx's exceptions: ConnectError / ConnectTimeout, ReadTimeout (silence longer than the read
  timeout before the head or between chunks), RemoteProtocolError (the engine hung up or sent
  something that is not HTTP), ReadError / WriteError (the socket failed).

Not supported, because engines don't need them: HTTP/2, proxies, upgrades, trailers.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httptools
import httpx

# Back pressure: stop reading from the engine while this much is waiting for the client.
_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 18
_NO_BODY_STATUS = (204, 304)

Origin = tuple[bytes, bytes, int]  # scheme, host, port
# A response's extension holding ``() -> next body chunk`` (b"" at the end), valid until the
# response is closed: a relay reads the body through it instead of through httpx's
# ``aiter_raw`` and its three nested async generators (0.7 -> 0.25 us a buffered chunk).
READ_CHUNK = "gatewayctl.read_chunk"
ReadChunk = Callable[[], Awaitable[bytes]]


def _timeout(extensions: dict[str, Any], name: str) -> float | None:
    value: float | None = extensions.get("timeout", {}).get(name)
    return value


class _Connection(asyncio.Protocol):
    """One connection, carrying one exchange at a time."""

    def __init__(self, origin: Origin, on_lost: Callable[[_Connection], None]) -> None:
        self.origin = origin
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.active = False  # an exchange is in progress (else the engine has no say)
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        # The read timeout: one timer per connection, re-armed only when it fires, instead of a
        # timer made and cancelled for every chunk of every stream.
        self._silence = 0.0
        self._heard = 0.0  # loop time of the last bytes from the engine, or of the last wait
        self._watchdog: asyncio.TimerHandle | None = None
        self._reset(head_only=False)

    def _reset(self, *, head_only: bool) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self._head_only = head_only
        self._until_eof = False  # the body ends when the engine closes the connection
        self._informational = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._error: httpx.TransportError | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._heard = self._loop.time()
        if not self.active:  # bytes nobody asked for: the connection is not HTTP any more
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response from the engine: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.head_done and not self.complete and self._until_eof and exc is None:
            self.complete = True  # a body delimited by the end of the connection
        elif not self.complete:
            if exc is not None:
                self._fail(httpx.ReadError(f"connection to the engine failed: {exc}"))
            elif self.head_done:
                self._fail(httpx.RemoteProtocolError("the engine closed the connection mid-body"))
            else:
                self._fail(httpx.RemoteProtocolError("the engine closed the connection"))
        self._wake()
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)
        self._on_lost(self)

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # httptools callbacks

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 100 Continue, 103 Early Hints: the real head follows
            return
        self.status = status
        self.head_done = True
        if self._head_only:
            self.complete = True  # the parser would wait for a body that a HEAD never gets
        elif status not in _NO_BODY_STATUS:
            framed = any(
                name.lower() in (b"content-length", b"transfer-encoding")
                for name, _ in self.headers
            )
            self._until_eof = not framed
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._head_only:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self.headers = []
            self.reason = b""
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    # the exchange

    def _fail(self, error: httpx.TransportError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, silence: float | None) -> None:
        waiter = self._waiter = self._loop.create_future()
        if silence is not None:
            self._silence = silence
            self._heard = now = self._loop.time()  # silence is counted from here at the latest
            watchdog = self._watchdog
            if watchdog is None or watchdog.when() > now + silence:  # none, or for a longer one
                if watchdog is not None:
                    watchdog.cancel()
                self._watchdog = self._loop.call_at(now + silence, self._check_silence)
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_silence(self) -> None:
        self._watchdog = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms it again
        deadline = self._heard + self._silence
        if self._loop.time() >= deadline:
            waiter.set_exception(
                httpx.ReadTimeout(f"the engine sent nothing for {self._silence:g} s")
            )
        else:
            self._watchdog = self._loop.call_at(deadline, self._check_silence)

    async def send_request(
        self, data: list[bytes], *, head_only: bool, write_timeout: float | None
    ) -> None:
        self._reset(head_only=head_only)
        self.active = True
        transport = self._transport
        if transport is None or self.closed:
            raise httpx.RemoteProtocolError("the engine closed the connection")
        transport.writelines(data)
        if self._writable is not None:  # a big body: wait until the kernel took it
            try:
                await asyncio.wait_for(asyncio.shield(self._writable), write_timeout)
            except TimeoutError:
                raise httpx.WriteTimeout("the engine did not read the request in time") from None

    async def receive_head(self, silence: float | None) -> None:
        while not self.head_done:
            if self._error is not None:
                raise self._error
            await self._wait(silence)

    async def receive(self, silence: float | None) -> bytes:
        """The next piece of the body; b"" at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _LOW_WATER and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
                return chunk
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(silence)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and not self._head_only

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()


class _Body(httpx.AsyncByteStream):
    def __init__(self, pool: Http1Transport, conn: _Connection, timeout: float | None) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while chunk := await conn.receive(self._timeout):
            yield chunk

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._pool.release(self._conn)  # closes it unless the body was read to the end


class Http1Transport(httpx.AsyncBaseTransport):
    """httpx transport over a keep-alive pool of HTTP/1.1 connections (see the module doc)."""

    def __init__(self, *, keepalive_expiry: float = 4.0) -> None:
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[Origin, collections.deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the engine client is closed")
        url = request.url
        origin: Origin = (url.raw_scheme, url.raw_host, url.port or _default_port(url))
        extensions = request.extensions
        if not isinstance(request.stream, httpx.ByteStream):
            await request.aread()
        conn = await self._acquire(origin, extensions)
        head_only = request.method == "HEAD"
        try:
            await conn.send_request(
                _serialize(request),
                head_only=head_only,
                write_timeout=_timeout(extensions, "write"),
            )
            read_timeout = _timeout(extensions, "read")
            await conn.receive_head(read_timeout)
        except BaseException:
            conn.close()  # cancelled or failed mid-exchange: the engine must see it go
            self._open.discard(conn)
            raise
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_Body(self, conn, read_timeout),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": conn.reason,
                READ_CHUNK: functools.partial(conn.receive, read_timeout),
            },
        )

    async def _acquire(self, origin: Origin, extensions: dict[str, Any]) -> _Connection:
        idle = self._idle.get(origin)
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()  # the most recently used: the least likely to be stale
                if not conn.closed and now - conn.idle_since < self._keepalive_expiry:
                    return conn
                conn.close()
        return await self._connect(origin, extensions)

    async def _connect(self, origin: Origin, extensions: dict[str, Any]) -> _Connection:
        scheme, host, port = origin
        context = None
        server_hostname = None
        if scheme == b"https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
            sni = extensions.get("sni_hostname")
            server_hostname = sni.decode() if isinstance(sni, bytes) else sni or host.decode()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_timeout(extensions, "connect")):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin, self._lost),
                    host.decode("ascii"),
                    port,
                    ssl=context,
                    server_hostname=server_hostname,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"could not connect to {host.decode()}:{port} in time"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(
                f"could not connect to {host.decode()}:{port}: {exc}"
            ) from None
        self._open.add(conn)
        return conn

    def release(self, conn: _Connection) -> None:
        if not conn.reusable:
            conn.close()
            self._open.discard(conn)
            return
        now = time.monotonic()
        conn.active = False
        conn.idle_since = now
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = collections.deque()
        # The oldest idle connections sit at the left: drop those past their time, so a burst
        # of streams does not leave a thousand idle connections open for good.
        while idle and now - idle[0].idle_since >= self._keepalive_expiry:
            idle.popleft().close()
        idle.append(conn)

    def _lost(self, conn: _Connection) -> None:
        self._open.discard(conn)

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()


def _default_port(url: httpx.URL) -> int:
    return 443 if url.raw_scheme == b"https" else 80


def _serialize(request: httpx.Request) -> list[bytes]:
    url = request.url
    lines = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
            raise httpx.LocalProtocolError(f"invalid header {name!r}")
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    head = b"".join(lines)
    body = request.content
    return [head, body] if body else [head]
