"""The HTTP/1.1 engine transport against scripted servers on real sockets: framing, keep-alive,
back pressure and broken answers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from gatewayctl.proxy.http1 import Http1Transport

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Scripted:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


@contextlib.asynccontextmanager
async def scripted(reply: Reply) -> AsyncIterator[Scripted]:
    """A server that answers every request on a connection with ``reply``."""
    state = Scripted("")
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        state.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                state.requests.append(request)
                await reply(request, writer)
                if writer.is_closing():
                    break
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield state
        # The client has closed its connections: let the handlers see the end and return.
        if handlers:
            await asyncio.wait(handlers, timeout=5)


def fixed(raw: bytes, *, close: bool = False) -> Reply:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            raw.split(b"\r\n\r\n")[0] + b"\r\n\r\n" if request.startswith(b"HEAD") else raw
        )
        await writer.drain()
        if close:
            writer.close()

    return reply


OK_JSON = (
    b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'
)
TIMEOUT = httpx.Timeout(5.0)


@contextlib.asynccontextmanager
async def engine() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=Http1Transport(), timeout=TIMEOUT) as client:
        yield client


async def test_keep_alive_reuses_one_connection() -> None:
    async with scripted(fixed(OK_JSON)) as server, engine() as client:
        for _ in range(5):
            response = await client.post(server.url + "/v1/x", content=b'{"a":1}')
            assert response.json() == {"ok": True}
    assert server.connections == 1
    assert len(server.requests) == 5
    assert server.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert server.requests[0].endswith(b'\r\n\r\n{"a":1}')


async def test_query_string_and_headers_are_sent_as_given() -> None:
    async with scripted(fixed(OK_JSON)) as server, engine() as client:
        await client.get(server.url + "/v1/models?x=1&y=%20", headers={"x-request-id": "r-1"})
    request = server.requests[0]
    assert request.startswith(b"GET /v1/models?x=1&y=%20 HTTP/1.1\r\n")
    assert b"\r\nx-request-id: r-1\r\n" in request
    assert b"\r\nHost: 127.0.0.1:" in request


async def test_chunked_body_arrives_decoded() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        b"7\r\ndata: a\r\n6\r\n\n\ndata\r\n5\r\n: b\n\n\r\n0\r\n\r\n"
    )
    async with scripted(fixed(raw)) as server, engine() as client:
        response = await client.post(server.url + "/s", content=b"{}")
        again = await client.post(server.url + "/s", content=b"{}")
    assert response.content == b"data: a\n\ndata: b\n\n"
    assert again.content == response.content
    assert server.connections == 1


async def test_connection_close_is_not_reused() -> None:
    raw = OK_JSON.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
    async with scripted(fixed(raw, close=True)) as server, engine() as client:
        for _ in range(3):
            assert (await client.post(server.url + "/x", content=b"{}")).status_code == 200
    assert server.connections == 3


async def test_body_delimited_by_the_end_of_the_connection() -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end"
    async with scripted(fixed(raw, close=True)) as server, engine() as client:
        response = await client.get(server.url + "/x")
        assert response.text == "until the end"
        assert (await client.get(server.url + "/x")).text == "until the end"
    assert server.connections == 2


async def test_head_and_no_content_answers_have_no_body() -> None:
    async with scripted(fixed(OK_JSON)) as server, engine() as client:
        head = await client.head(server.url + "/x")
        assert head.status_code == 200
        assert head.content == b""
        assert (await client.post(server.url + "/x", content=b"{}")).json() == {"ok": True}
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    async with scripted(fixed(no_content)) as server, engine() as client:
        for _ in range(2):
            assert (await client.delete(server.url + "/x")).status_code == 204
    assert server.connections == 1


async def test_informational_answer_is_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + OK_JSON
    async with scripted(fixed(raw)) as server, engine() as client:
        response = await client.post(server.url + "/x", content=b"{}")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


async def test_error_status_is_an_answer_not_an_exception() -> None:
    raw = b'HTTP/1.1 404 Not Found\r\ncontent-length: 19\r\n\r\n{"error":"no such"}'
    async with scripted(fixed(raw)) as server, engine() as client:
        response = await client.post(server.url + "/x", content=b"{}")
    assert response.status_code == 404
    assert response.reason_phrase == "Not Found"
    assert response.json() == {"error": "no such"}


async def test_garbage_is_a_protocol_error() -> None:
    async with scripted(fixed(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as server, engine() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url + "/x", content=b"{}")


async def test_short_content_length_body_is_a_protocol_error() -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"
    async with scripted(fixed(raw, close=True)) as server, engine() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url + "/x", content=b"{}")


async def test_a_big_body_is_read_whole_with_back_pressure() -> None:
    size = 8 << 20  # far above the transport's high-water mark
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size

    async def reply(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        for _ in range(size >> 16):
            writer.write(b"x" * (1 << 16))
            await writer.drain()

    async with scripted(reply) as server, engine() as client:
        async with client.stream("POST", server.url + "/x", content=b"{}") as response:
            total = 0
            async for chunk in response.aiter_raw():
                total += len(chunk)
                await asyncio.sleep(0)  # a slow reader
        assert total == size
        assert (await client.post(server.url + "/x", content=b"{}")).status_code == 200
    assert server.connections == 1


async def test_idle_connections_expire() -> None:
    async with scripted(fixed(OK_JSON)) as server:
        transport = Http1Transport(keepalive_expiry=0.05)
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
            await client.post(server.url + "/x", content=b"{}")
            await asyncio.sleep(0.1)
            await client.post(server.url + "/x", content=b"{}")
    assert server.connections == 2


async def test_closed_transport_refuses_requests() -> None:
    transport = Http1Transport()
    client = httpx.AsyncClient(transport=transport, timeout=TIMEOUT)
    await transport.aclose()
    with pytest.raises(RuntimeError):
        await client.get("http://127.0.0.1:9/x")
    await client.aclose()


async def test_header_injection_is_refused() -> None:
    async with scripted(fixed(OK_JSON)) as server, engine() as client:
        request = client.build_request("GET", server.url + "/x")
        request.headers["x-evil"] = "a\r\nx-injected: 1"
        with pytest.raises(httpx.LocalProtocolError):
            await client.send(request)
    assert server.requests == []


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            *subject,
            *files,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@contextlib.asynccontextmanager
async def tls_server(cert: Path, key: Path) -> AsyncIterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await _read_request(reader) is not None:
                writer.write(OK_JSON)
                await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass  # the client refused our certificate
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    async with server:
        yield f"https://localhost:{server.sockets[0].getsockname()[1]}"


async def test_https_engine_with_a_trusted_certificate(
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # how an operator trusts a private CA
    async with tls_server(cert, key) as url, engine() as client:
        for _ in range(2):
            assert (await client.post(url + "/x", content=b"{}")).json() == {"ok": True}


async def test_https_engine_with_an_untrusted_certificate_is_refused(
    self_signed: tuple[Path, Path],
) -> None:
    async with tls_server(*self_signed) as url, engine() as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.post(url + "/x", content=b"{}")
