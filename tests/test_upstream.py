"""The engine client (httpx over our HTTP/1.1 transport): streaming, disconnects and errors,
on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gatewayctl.proxy.config import ServerSettings
from gatewayctl.proxy.upstream import make_upstream_client

from tests.fakes.ollama import FakeOllama
from tests.servers import free_port

CHAT = "/v1/chat/completions"


def chat(url: str, *, stream: bool, max_tokens: int = 5) -> dict[str, Any]:
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        "max_tokens": max_tokens,
    }
    return {"method": "POST", "url": url + CHAT, "json": body}


def client(**server: Any) -> httpx.AsyncClient:
    return make_upstream_client(ServerSettings(**server))


async def wait_until(condition: Any, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_a_stream_is_passed_on_as_it_arrives(fake: tuple[FakeOllama, str]) -> None:
    upstream, url = fake
    upstream.token_delay = 0.05
    async with client() as engine:
        response = await engine.send(engine.build_request(**chat(url, stream=True)), stream=True)
        try:
            chunks = response.aiter_raw()
            first = await anext(chunks)
            assert b"data: " in first
            assert not upstream.finished.is_set()  # 5 tokens x 50 ms are still to come
            rest = b"".join([chunk async for chunk in chunks])
        finally:
            await response.aclose()
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_closing_a_stream_early_disconnects_the_engine(fake: tuple[FakeOllama, str]) -> None:
    upstream, url = fake
    upstream.token_delay = 0.5
    async with client() as engine:
        request = engine.build_request(**chat(url, stream=True, max_tokens=40))
        response = await engine.send(request, stream=True)
        await anext(response.aiter_raw())
        started = time.monotonic()
        await response.aclose()
        # The engine notices within one of its token steps, not at the end of the 20 s answer.
        assert await asyncio.to_thread(upstream.cancelled.wait, 5.0)
        assert time.monotonic() - started < 2.0
    assert upstream.streams_finished == 0


async def test_cancelling_the_reading_task_disconnects_the_engine(
    fake: tuple[FakeOllama, str],
) -> None:
    upstream, url = fake
    upstream.token_delay = 0.5
    got_first = asyncio.Event()

    async def relay(engine: httpx.AsyncClient) -> None:
        request = engine.build_request(**chat(url, stream=True, max_tokens=40))
        response = await engine.send(request, stream=True)
        try:
            async for _chunk in response.aiter_raw():
                got_first.set()
        finally:
            await response.aclose()

    async with client() as engine:
        task = asyncio.create_task(relay(engine))
        await asyncio.wait_for(got_first.wait(), 5.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(upstream.cancelled.wait, 5.0)


async def test_more_than_a_hundred_streams_are_held_at_once(fake: tuple[FakeOllama, str]) -> None:
    """aiohttp's default pool stops at 100 connections; held streams must not queue."""
    upstream, url = fake
    upstream.token_delay = 0.3
    count = 130
    async with client() as engine:

        async def one() -> int:
            async with engine.stream(**chat(url, stream=True, max_tokens=3)) as response:
                return len(await response.aread())

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        try:
            assert await wait_until(lambda: upstream.streams_started == count)
            assert upstream.streams_finished < count
        finally:
            sizes = await asyncio.gather(*tasks)
    assert all(sizes)


async def test_refused_connection_is_a_connect_error() -> None:
    async with client(connect_timeout=2.0) as engine:
        with pytest.raises(httpx.ConnectError):
            await engine.request(**chat(f"http://127.0.0.1:{free_port()}", stream=False))


async def test_silence_past_the_read_timeout_is_a_read_timeout(
    fake: tuple[FakeOllama, str],
) -> None:
    upstream, url = fake
    upstream.header_delay = 2.0
    async with client(read_timeout=0.2) as engine:
        with pytest.raises(httpx.ReadTimeout):
            await engine.request(**chat(url, stream=False))


async def test_silence_between_chunks_is_a_read_timeout(fake: tuple[FakeOllama, str]) -> None:
    upstream, url = fake
    upstream.token_delay = 2.0
    async with client(read_timeout=0.3) as engine:
        started = time.monotonic()
        async with engine.stream(**chat(url, stream=True)) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                async for _chunk in response.aiter_raw():
                    pass
        assert time.monotonic() - started < 1.5  # not the 2 s of the next token
    assert await asyncio.to_thread(upstream.cancelled.wait, 5.0)


@contextlib.contextmanager
def hang_up_server() -> Iterator[str]:
    """Accepts, reads the request, and closes without a word: an engine that crashed."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


async def test_engine_hanging_up_is_not_reported_as_a_timeout() -> None:
    with hang_up_server() as url:
        async with client() as engine:
            with pytest.raises(httpx.TransportError) as caught:
                await engine.request(**chat(url, stream=False))
    assert not isinstance(caught.value, httpx.TimeoutException)
    assert isinstance(caught.value, httpx.RemoteProtocolError)


async def test_a_stream_cut_midway_is_an_error_after_what_arrived(
    fake: tuple[FakeOllama, str],
) -> None:
    upstream, url = fake
    upstream.mode = "drop"
    received = b""
    async with (
        client() as engine,
        engine.stream(**chat(url, stream=True, max_tokens=10)) as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in response.aiter_raw():
                received += chunk
    assert received.count(b"data: ") == 3  # the fake drops after three tokens


async def test_closing_the_client_closes_its_connections(fake: tuple[FakeOllama, str]) -> None:
    upstream, url = fake
    upstream.token_delay = 0.5
    engine = client()
    response = await engine.send(
        engine.build_request(**chat(url, stream=True, max_tokens=40)), stream=True
    )
    await anext(response.aiter_raw())
    await engine.aclose()
    assert await asyncio.to_thread(upstream.cancelled.wait, 5.0)
    await response.aclose()


async def test_built_requests_carry_merged_headers_and_length() -> None:
    target = "http://127.0.0.1:1/v1/chat/completions?x=1"
    body = b'{"a":1}'
    async with client() as engine:
        request = engine.build_request(
            "POST",
            target,
            content=body,
            headers={"Content-Type": "application/json", "user-agent": "caf\xe9/1.0"},
        )
        timeout = engine.timeout.as_dict()
    async with httpx.AsyncClient() as stock:
        plain = stock.build_request("POST", target, content=body, headers={"user-agent": "x"})
    assert request.url == plain.url
    assert request.content == body
    assert request.headers["host"] == "127.0.0.1:1"
    assert request.headers["content-length"] == "7"
    assert request.headers["content-type"] == "application/json"
    # A client's non-ASCII header byte is passed on as it came (httpx's own encoder refuses it),
    # and replaces the client default instead of joining it.
    assert [v for k, v in request.headers.raw if k.lower() == b"user-agent"] == [b"caf\xe9/1.0"]
    assert {k.lower() for k, _ in request.headers.raw} == {
        k.lower() for k, _ in plain.headers.raw
    } | {b"content-type"}
    assert request.extensions["timeout"] == timeout


async def test_other_request_shapes_take_httpx_own_path(fake: tuple[FakeOllama, str]) -> None:
    upstream, url = fake
    async with client() as engine:
        response = await engine.post(
            url + CHAT,
            json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
            params={"trace": "1"},
        )
        empty = engine.build_request("POST", url + "/api/pull")
    assert response.status_code == 200
    assert upstream.requests[-1].query == "trace=1"
    assert empty.headers["content-length"] == "0"
