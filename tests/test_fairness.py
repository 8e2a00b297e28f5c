"""Concurrency and fairness: per-user caps, per-upstream caps, the round-robin queue.

The scheduler is first driven directly (its order and its bookkeeping are exact there), then
through a real gateway in front of the fake Ollama: a flooding user against a light one, queue
timeout and queue full answered 429 in both dialects, the per-user cap from the CLI, a client
leaving the queue, and every admission slot given back whatever happened to its request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import openai
import pytest
from gatewayctl.cli.main import app as cli_app
from gatewayctl.proxy.asgi import ClientGone, Message
from gatewayctl.proxy.config import ServerSettings, UpstreamSettings, User
from gatewayctl.proxy.errors import ConcurrencyLimited, ServerBusy
from gatewayctl.proxy.metrics import Metrics
from gatewayctl.proxy.scheduler import Scheduler, Slot
from gatewayctl.proxy.upstreams import UpstreamPool
from typer.testing import CliRunner

from tests.conftest import Running, StartGateway, key_of
from tests.fakes import FakeOllama
from tests.proxy_helpers import chat_body, openai_error, wait_for_rows, wait_until
from tests.servers import serve_in_thread

# --------------------------------------------------------------------------- the scheduler alone


class _Client:
    """The ``receive`` of a client whose body was read: it only ever says it disconnected."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def _scheduler(
    urls: tuple[str, ...] = ("http://a",), **server: Any
) -> tuple[Scheduler, UpstreamPool]:
    settings = ServerSettings(**{"max_in_flight": 1, **server})
    pool = UpstreamPool([UpstreamSettings(url=u) for u in urls], settings)
    return Scheduler(pool, Metrics(), settings), pool


async def _hold(scheduler: Scheduler, name: str, client: _Client | None = None) -> Slot:
    slot = scheduler.enter(User(name))
    await scheduler.assign(slot, "m", False, (client or _Client()).receive)
    return slot


def _idle(scheduler: Scheduler, pool: UpstreamPool, *users: str) -> None:
    assert scheduler.queued == 0
    assert all(u.in_flight == 0 for u in pool.upstreams)
    assert all(scheduler.in_flight(user) == 0 for user in users)


async def test_waiters_are_served_round_robin_by_user() -> None:
    scheduler, pool = _scheduler()
    holder = await _hold(scheduler, "x")
    order: list[str] = []

    async def request(name: str) -> None:
        slot = await _hold(scheduler, name)
        order.append(name)
        await asyncio.sleep(0)
        slot.release()

    tasks = [asyncio.create_task(request("a")) for _ in range(5)]
    await asyncio.sleep(0)  # a's five are queued first
    tasks += [asyncio.create_task(request("b")) for _ in range(2)]
    await asyncio.sleep(0)
    assert scheduler.queued == 7
    holder.release()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "a", "b", "a", "a", "a"]
    _idle(scheduler, pool, "a", "b", "x")


async def test_least_loaded_upstream_first_and_caps_per_upstream() -> None:
    scheduler, pool = _scheduler(("http://a", "http://b"), max_in_flight=2)
    slots = [await _hold(scheduler, "u") for _ in range(4)]
    assert [s.upstream.url for s in slots if s.upstream] == [
        "http://a",
        "http://b",
        "http://a",
        "http://b",
    ]
    fifth = asyncio.create_task(_hold(scheduler, "u"))
    await asyncio.sleep(0)
    assert scheduler.queued == 1 and not fifth.done()
    slots[1].release()  # b has room again
    slot = await fifth
    assert slot.upstream is pool.upstreams[1]
    for s in [*slots, slot]:
        s.release()
    _idle(scheduler, pool, "u")


async def test_user_concurrency_counts_queued_requests_and_refuses_at_once() -> None:
    scheduler, pool = _scheduler()
    capped = User("c", concurrency=2)
    first = scheduler.enter(capped)
    await scheduler.assign(first, "m", False, _Client().receive)
    second = scheduler.enter(capped)
    queued = asyncio.create_task(scheduler.assign(second, "m", False, _Client().receive))
    await asyncio.sleep(0)
    assert scheduler.queued == 1
    with pytest.raises(ConcurrencyLimited) as refused:
        scheduler.enter(capped)
    assert refused.value.status == 429 and refused.value.headers["retry-after"] == "1"
    first.release()
    await queued
    second.release()
    _idle(scheduler, pool, "c")


async def test_queue_full_and_queue_timeout_are_server_busy() -> None:
    scheduler, pool = _scheduler(max_queue=1, queue_timeout=0.05)
    holder = await _hold(scheduler, "x")
    waiting = asyncio.create_task(_hold(scheduler, "y"))
    await asyncio.sleep(0)
    slot = scheduler.enter(User("z"))
    with pytest.raises(ServerBusy) as full:
        await scheduler.assign(slot, "m", False, _Client().receive)
    slot.release()
    assert "waiting" in full.value.message and full.value.headers["retry-after"]
    with pytest.raises(ServerBusy) as late:
        await waiting
    assert "within 0.05s" in late.value.message
    holder.release()
    # The timed-out request let go of its queue place but not of its user count: that is the
    # endpoint's release, which the request task never reached here.
    assert scheduler.queued == 0 and pool.upstreams[0].in_flight == 0


async def test_a_client_leaving_the_queue_leaves_it() -> None:
    scheduler, pool = _scheduler()
    holder = await _hold(scheduler, "x")
    client = _Client()
    slot = scheduler.enter(User("y"))
    waiting = asyncio.create_task(scheduler.assign(slot, "m", False, client.receive))
    await asyncio.sleep(0)
    assert scheduler.queued == 1
    client.gone.set()
    with pytest.raises(ClientGone):
        await waiting
    slot.release()
    assert scheduler.queued == 0
    holder.release()
    _idle(scheduler, pool, "x", "y")


async def test_a_place_granted_to_a_cancelled_waiter_is_given_back() -> None:
    scheduler, pool = _scheduler()
    holder = await _hold(scheduler, "x")
    slot = scheduler.enter(User("y"))
    waiting = asyncio.create_task(scheduler.assign(slot, "m", False, _Client().receive))
    await asyncio.sleep(0)
    holder.release()  # grants the place to the waiter...
    waiting.cancel()  # ...which is cancelled before it could take it
    with pytest.raises(asyncio.CancelledError):
        await waiting
    slot.release()
    _idle(scheduler, pool, "x", "y")
    again = await _hold(scheduler, "z")  # the place is really free
    again.release()


async def test_release_is_idempotent() -> None:
    scheduler, pool = _scheduler(("http://a",), max_in_flight=None)
    user = User("u", concurrency=1)
    slot = scheduler.enter(user)
    await scheduler.assign(slot, "m", False, _Client().receive)
    other = scheduler.enter(User("v"))
    await scheduler.assign(other, "m", False, _Client().receive)
    slot.release()
    slot.release()
    assert pool.upstreams[0].in_flight == 1  # not 0: the second release changed nothing
    held = scheduler.enter(user)  # the user's count went back to 0, not below
    with pytest.raises(ConcurrencyLimited):
        scheduler.enter(user)
    held.release()
    other.release()
    _idle(scheduler, pool, "u", "v")


async def test_failover_moves_the_slot_and_gives_up_when_none_is_left() -> None:
    scheduler, pool = _scheduler(("http://a", "http://b"), max_in_flight=None)
    slot = await _hold(scheduler, "u")
    first = slot.upstream
    assert first is pool.upstreams[0]
    assert await scheduler.failover(slot, _Client().receive)
    assert slot.upstream is pool.upstreams[1] and first is not None and first.in_flight == 0
    assert not await scheduler.failover(slot, _Client().receive)
    slot.release()
    _idle(scheduler, pool, "u")


# --------------------------------------------------------------------------- through a gateway

TOKENS = 8  # per stream: with the fake's token delay, a stream holds its place for a while
TOKEN_DELAY = 0.03


@pytest.fixture
def slow() -> Iterator[tuple[FakeOllama, str]]:
    fake = FakeOllama(token_delay=TOKEN_DELAY)
    with serve_in_thread(fake.app) as url:
        yield fake, url


def _stream_body(tag: str) -> dict[str, Any]:
    return chat_body(tag, stream=True, max_tokens=TOKENS)


async def _stream(client: httpx.AsyncClient, tag: str) -> float:
    """Run one streamed chat to its end; returns when it ended (monotonic)."""
    async with client.stream("POST", "/v1/chat/completions", json=_stream_body(tag)) as response:
        assert response.status_code == 200, await response.aread()
        async for _ in response.aiter_bytes():
            pass
    return time.monotonic()


def _rejections(gw: Running, user: str, reason: str) -> float | None:
    return gw.gateway.metrics.registry.get_sample_value(
        "gatewayctl_rejections_total", {"user": user, "reason": reason}
    )


def _async_client(gw: Running, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gw.url,
        headers={"authorization": f"Bearer {key_of(user)}"},
        timeout=60,
        limits=httpx.Limits(max_connections=None),
    )


async def _flood_then_light(gw: Running, fake: FakeOllama, flood: int) -> tuple[float, int]:
    """User a sends ``flood`` streams at once; when they are all in (2 running, the rest
    queued), user b sends 3. Returns b's latency and how many of a's requests reached the
    upstream between b's arrival and b's last request reaching it."""
    scheduler = gw.gateway.scheduler
    async with _async_client(gw, "a") as a, _async_client(gw, "b") as b:
        flooding = [asyncio.create_task(_stream(a, f"a{i}")) for i in range(flood)]
        await asyncio.to_thread(wait_until, lambda: scheduler.queued == flood - 2, 20.0)
        arrived_before = len(fake.requests)
        sent = time.monotonic()
        b_done = await asyncio.gather(*(_stream(b, f"b{i}") for i in range(3)))
        latency = max(b_done) - sent
        await asyncio.gather(*flooding)
    tags = [r.body["messages"][0]["content"] for r in fake.requests[arrived_before:]]
    last_b = max(i for i, tag in enumerate(tags) if tag.startswith("b"))
    a_between = sum(1 for tag in tags[:last_b] if tag.startswith("a"))
    return latency, a_between


async def test_a_flooding_user_does_not_starve_a_light_one(
    slow: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    fake, url = slow
    users: dict[str, dict[str, Any]] = {"root": {"role": "admin"}, "a": {}, "b": {}}
    with start_gateway(url, users, max_in_flight=2, queue_timeout=120.0) as gw:
        light_load, _ = await _flood_then_light(gw, fake, 10)
        fake.reset()
        fake.token_delay = TOKEN_DELAY
        heavy_load, a_before_b_30 = await _flood_then_light(gw, fake, 30)
        assert gw.gateway.scheduler.queued == 0
        assert all(u.in_flight == 0 for u in gw.gateway.pool.upstreams)
    # Round-robin: one of a's requests goes up before each of b's, plus the few that went while
    # b's three were still on their way in; first come, first served would let 28 through.
    assert a_before_b_30 <= 10, a_before_b_30
    assert heavy_load < 2 * light_load + 0.5, (light_load, heavy_load)


def test_queue_timeout_is_429_with_retry_after_in_both_dialects(
    slow: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    fake, url = slow
    fake.token_delay = 0.5  # the first stream holds the only place for seconds
    with (
        start_gateway(url, max_in_flight=1, queue_timeout=0.2) as gw,
        gw.client() as client,
        client.stream("POST", "/v1/chat/completions", json=_stream_body("hold")) as holding,
    ):
        assert holding.status_code == 200
        late = client.post("/v1/chat/completions", json=chat_body("late"))
        error = openai_error(late, 429)
        assert error["code"] == "server_busy" and "0.2s" in error["message"]
        assert int(late.headers["retry-after"]) >= 1 and late.headers["x-request-id"]
        native = client.post("/api/chat", json=chat_body("late", stream=False))
        assert native.status_code == 429 and native.headers["retry-after"]
        assert set(native.json()) == {"error"} and "busy" in native.json()["error"]
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=key_of("alice"), max_retries=0)
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(
                model="llama3.2", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(ollama.ResponseError) as caught:
            ollama.Client(
                host=gw.url, headers={"Authorization": f"Bearer {key_of('alice')}"}, timeout=10
            ).chat(model="llama3.2", messages=[{"role": "user", "content": "x"}])
        assert caught.value.status_code == 429
    assert [r.body["messages"][0]["content"] for r in fake.requests] == ["hold"]
    assert _rejections(gw, "alice", "queue_timeout") == 4
    rows = wait_for_rows(gw, "alice", 5)
    assert [(r["status"], r["outcome"]) for r in rows[:-1]] == [(429, "server_busy")] * 4


def test_a_full_queue_refuses_at_once(
    slow: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    fake, url = slow
    fake.token_delay = 0.2
    with (
        start_gateway(url, max_in_flight=1, max_queue=1, queue_timeout=30.0) as gw,
        gw.client() as client,
        client.stream("POST", "/v1/chat/completions", json=_stream_body("hold")) as holding,
        gw.client() as other,
        ThreadPoolExecutor(1) as background,
    ):
        assert holding.status_code == 200
        queued = background.submit(other.post, "/v1/chat/completions", json=chat_body("queued"))
        wait_until(lambda: gw.gateway.scheduler.queued == 1)
        started = time.monotonic()
        refused = client.post("/v1/chat/completions", json=chat_body("refused"))
        assert time.monotonic() - started < 5  # not after a queue_timeout of 30 s
        error = openai_error(refused, 429)
        assert error["code"] == "server_busy" and "waiting" in error["message"]
        assert _rejections(gw, "alice", "queue_full") == 1
        holding.close()  # the queued one gets the place
        assert queued.result(timeout=10).status_code == 200
    assert [r.body["messages"][0]["content"] for r in fake.requests] == ["hold", "queued"]


def test_per_user_concurrency_from_the_cli_and_hot_reloaded(
    slow: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    fake, url = slow
    fake.token_delay = 0.2
    with start_gateway(url) as gw:
        runner = CliRunner()
        result = runner.invoke(
            cli_app, ["user", "set-limit", "alice", "--concurrency", "1", "-c", str(gw.config_path)]
        )
        assert result.exit_code == 0, result.output
        assert "concurrency=1" in result.output
        wait_until(lambda: gw.gateway.config.users["alice"].concurrency == 1)
        with (
            gw.client() as client,
            client.stream("POST", "/v1/chat/completions", json=_stream_body("one")) as one,
        ):
            assert one.status_code == 200
            second = client.post("/v1/chat/completions", json=chat_body("two"))
            error = openai_error(second, 429)
            assert error["code"] == "concurrency_limit_exceeded"
            assert second.headers["retry-after"] == "1"
            assert _rejections(gw, "alice", "concurrency") == 1
            with gw.client("root") as root:  # the cap is alice's own
                assert root.post("/v1/chat/completions", json=chat_body()).status_code == 200
            result = runner.invoke(
                cli_app,
                ["user", "set-limit", "alice", "--concurrency", "none", "-c", str(gw.config_path)],
            )
            assert result.exit_code == 0, result.output
            wait_until(lambda: gw.gateway.config.users["alice"].concurrency is None)
            assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_a_client_leaving_the_queue_never_reaches_the_upstream(
    slow: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    fake, url = slow
    fake.token_delay = 0.1
    with (
        start_gateway(url, max_in_flight=1, queue_timeout=30.0) as gw,
        gw.client() as client,
        client.stream("POST", "/v1/chat/completions", json=_stream_body("hold")) as holding,
    ):
        assert holding.status_code == 200
        with gw.client() as leaving, pytest.raises(httpx.ReadTimeout):
            leaving.post("/v1/chat/completions", json=chat_body("gone"), timeout=0.5)
        wait_until(lambda: gw.gateway.scheduler.queued == 0)
        holding.read()
    wait_until(lambda: gw.gateway.scheduler.in_flight("alice") == 0)
    assert [r.body["messages"][0]["content"] for r in fake.requests] == ["hold"]
    rows = wait_for_rows(gw, "alice", 2)
    assert {(r["status"], r["outcome"]) for r in rows} == {
        (200, "ok"),
        (499, "client_disconnect"),
    }


def test_every_path_gives_its_slots_back(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    """Success, streamed and not, a stream cut by the engine, a client leaving mid-stream, a
    queue timeout, quota and concurrency refusals, a bad request: afterwards nothing is held,
    and the cap of one still lets exactly one request in at a time."""
    upstream, url = fake
    users: dict[str, dict[str, Any]] = {"root": {"role": "admin"}, "alice": {"concurrency": 1}}
    with start_gateway(url, users, max_in_flight=1, queue_timeout=0.2) as gw:
        scheduler, pool = gw.gateway.scheduler, gw.gateway.pool
        with gw.client() as client:
            assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
            assert b"[DONE]" in client.post("/v1/chat/completions", json=_stream_body("s")).content
            assert client.post("/v1/chat/completions", json={"model": 1}).status_code == 400
            upstream.mode = "drop"
            assert client.post("/v1/chat/completions", json=chat_body()).status_code == 502
            upstream.mode = "ollama"
            upstream.token_delay = 0.2
            with client.stream("POST", "/v1/chat/completions", json=_stream_body("x")) as cut:
                next(cut.iter_bytes())  # then leave mid-stream
            wait_until(lambda: upstream.streams_cancelled == 1)
            with client.stream("POST", "/v1/chat/completions", json=_stream_body("y")) as held:
                assert held.status_code == 200
                refused = client.post("/v1/chat/completions", json=chat_body())
                assert openai_error(refused, 429)["code"] == "concurrency_limit_exceeded"
                with gw.client("root") as root:
                    late = root.post("/v1/chat/completions", json=chat_body())
                    assert openai_error(late, 429)["code"] == "server_busy"
        wait_until(lambda: scheduler.in_flight("alice") == 0 and scheduler.in_flight("root") == 0)
        assert scheduler.queued == 0 and [u.in_flight for u in pool.upstreams] == [0]
        upstream.token_delay = 0.1
        with (
            gw.client() as client,
            client.stream("POST", "/v1/chat/completions", json=_stream_body("z")) as one,
        ):
            assert one.status_code == 200
            again = client.post("/v1/chat/completions", json=chat_body())
            assert openai_error(again, 429)["code"] == "concurrency_limit_exceeded"


def test_quota_refusal_holds_no_slot(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    users: dict[str, dict[str, Any]] = {"root": {"role": "admin"}, "alice": {"quota": 0}}
    with start_gateway(fake[1], users, max_in_flight=1) as gw, gw.client() as client:
        for _ in range(3):
            refused = client.post("/v1/chat/completions", json=chat_body())
            assert openai_error(refused, 403)["code"] == "insufficient_quota"
        assert gw.gateway.scheduler.in_flight("alice") == 0
        with gw.client("root") as root:
            answer = root.post("/v1/chat/completions", json=chat_body())
            assert answer.status_code == 200
            assert json.loads(answer.content)["choices"]
