"""Who runs now and who waits: per-user concurrency, per-upstream capacity, a fair queue.

Every generating request holds a ``Slot`` from the moment it is let in until it has settled:

1. ``enter`` counts it against its user's ``concurrency`` (queued requests count too, so one
   user can never hold more than that many places in the queue). Over the cap: 429 at once,
   ``concurrency_limit_exceeded``; it does not queue, because waiting behind one's own
   requests is what the client itself can do better.
2. ``assign`` gives it an upstream: the least loaded healthy one that serves its model and has
   room under its ``max_in_flight``. When none has room the request waits in a queue kept per
   user, and users take turns (round-robin): each time a place frees up it goes to the first
   user in line with a request that can use it, who then moves to the back of the line. So a
   user with 50 queued requests cannot starve a user with 1. A request that finds
   ``max_queue`` requests already waiting, or waits longer than ``queue_timeout``, gets 429
   ``server_busy`` with Retry-After. A client that disconnects while queued leaves the queue.
3. ``release`` gives everything back, exactly once whatever happened (idempotent), and hands
   the freed place to the next waiter.

Everything here runs on the event loop without awaiting between a check and its update, so
counts cannot race.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from gatewayctl.proxy.asgi import ClientGone, Receive
from gatewayctl.proxy.config import ServerSettings, User
from gatewayctl.proxy.errors import ConcurrencyLimited, ServerBusy
from gatewayctl.proxy.metrics import Metrics
from gatewayctl.proxy.upstreams import Upstream, UpstreamPool, not_served
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

_CONCURRENCY_RETRY = 1  # seconds: one of the user's own requests is likely done by then
_BUSY_RETRY = 2


class Slot:
    """One request's place: counted for its user, and on ``upstream`` once assigned."""

    __slots__ = (
        "_released",
        "_scheduler",
        "model",
        "native",
        "tried",
        "upstream",
        "user",
        "waited",
    )

    def __init__(self, scheduler: Scheduler, user: str) -> None:
        self._scheduler = scheduler
        self._released = False
        self.user = user
        self.model = ""
        self.native = False
        self.upstream: Upstream | None = None
        self.tried: set[Upstream] = set()  # upstreams that refused the connection
        self.waited: float | None = None  # seconds queued, if it was

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self)


@dataclass(eq=False, slots=True)
class _Waiter:
    slot: Slot
    granted: asyncio.Future[Upstream]
    since: float = field(default_factory=time.perf_counter)


async def _disconnected(receive: Receive) -> None:
    # The request body has been read, so the next message is the disconnect. A server that
    # fails the call has lost the client just the same.
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass


class Scheduler:
    def __init__(self, pool: UpstreamPool, metrics: Metrics, server: ServerSettings) -> None:
        self._pool = pool
        self._metrics = metrics
        self._max_queue = server.max_queue
        self._timeout = server.queue_timeout
        self._users: dict[str, int] = {}  # slots held per user, queued ones included
        # User -> their waiting requests, in the order users are to be served.
        self._queues: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        self._queued = 0
        pool.on_recovery = self.dispatch

    def configure(self, server: ServerSettings) -> None:
        self._max_queue = server.max_queue
        self._timeout = server.queue_timeout
        self.dispatch()  # caps may have grown

    @property
    def queued(self) -> int:
        return self._queued

    def in_flight(self, user: str) -> int:
        return self._users.get(user, 0)

    def enter(self, user: User) -> Slot:
        held = self._users.get(user.name, 0)
        if user.concurrency is not None and held >= user.concurrency:
            self._metrics.rejected(user.name, "concurrency")
            raise ConcurrencyLimited(
                f"Too many requests in flight for {user.name}: at most {user.concurrency} at "
                "once. Wait for one to finish.",
                headers={
                    "retry-after": str(_CONCURRENCY_RETRY),
                    "retry-after-ms": str(_CONCURRENCY_RETRY * 1000),
                },
            )
        self._users[user.name] = held + 1
        return Slot(self, user.name)

    async def assign(self, slot: Slot, model: str, native: bool, receive: Receive) -> None:
        """Give the slot an upstream for ``model``, waiting in the queue if all are busy."""
        slot.model, slot.native = model, native
        slot.upstream = await self._upstream_for(slot, receive)

    async def failover(self, slot: Slot, receive: Receive) -> bool:
        """The slot's upstream refused the connection: move to another one, if any serves the
        model (False when none is left to try)."""
        failed = slot.upstream
        assert failed is not None
        slot.upstream = None
        slot.tried.add(failed)
        self._leave(failed)
        if not self._pool.routable(slot.model, slot.native, slot.tried):
            return False
        slot.upstream = await self._upstream_for(slot, receive)
        return True

    async def _upstream_for(self, slot: Slot, receive: Receive) -> Upstream:
        # Waiters only ever wait for upstreams without room (every release dispatches), so
        # taking a free place at once never jumps the queue.
        upstream = self._pool.free(slot.model, slot.native, slot.tried)
        if upstream is not None:
            upstream.in_flight += 1
            return upstream
        if not self._pool.routable(slot.model, slot.native, slot.tried):
            raise not_served(slot.model)
        if self._queued >= self._max_queue:
            raise self._busy(
                slot, "queue_full", f"The gateway is busy: {self._queued} requests are waiting."
            )
        return await self._wait(slot, receive)

    async def _wait(self, slot: Slot, receive: Receive) -> Upstream:
        waiter = _Waiter(slot, asyncio.get_running_loop().create_future())
        queue = self._queues.get(slot.user)
        if queue is None:
            queue = self._queues[slot.user] = deque()
        queue.append(waiter)
        self._queued += 1
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait(
                (waiter.granted, gone), timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:  # cancelled while waiting
            self._abandon(waiter)
            raise
        finally:
            gone.cancel()
        if gone in done:
            self._abandon(waiter)
            raise ClientGone()
        if not waiter.granted.done():
            self._abandon(waiter)
            raise self._busy(
                slot,
                "queue_timeout",
                f"The gateway is busy: no upstream was free within {self._timeout:g}s.",
            )
        slot.waited = time.perf_counter() - waiter.since
        self._metrics.queue_wait.observe(slot.waited)
        return waiter.granted.result()

    def _busy(self, slot: Slot, reason: str, message: str) -> ServerBusy:
        self._metrics.rejected(slot.user, reason)
        return ServerBusy(
            message + " Try again shortly.",
            headers={"retry-after": str(_BUSY_RETRY), "retry-after-ms": str(_BUSY_RETRY * 1000)},
        )

    def _abandon(self, waiter: _Waiter) -> None:
        """Take a waiter out of the queue; if it was granted a place meanwhile, give it back."""
        if waiter.granted.done() and not waiter.granted.cancelled():
            self._leave(waiter.granted.result())
            return
        waiter.granted.cancel()
        queue = self._queues.get(waiter.slot.user)
        if queue is not None:
            queue.remove(waiter)
            self._queued -= 1
            if not queue:
                del self._queues[waiter.slot.user]

    def _leave(self, upstream: Upstream) -> None:
        upstream.in_flight -= 1
        self.dispatch()

    def _release(self, slot: Slot) -> None:
        held = self._users.get(slot.user, 0) - 1
        if held > 0:
            self._users[slot.user] = held
        else:
            self._users.pop(slot.user, None)
        upstream, slot.upstream = slot.upstream, None
        if upstream is not None:
            self._leave(upstream)

    def dispatch(self) -> None:
        """Hand free places to waiters, one user at a time in round-robin order."""
        while self._queued and self._pool.any_room() and self._grant_one():
            pass

    def _grant_one(self) -> bool:
        for user, queue in self._queues.items():
            for waiter in queue:
                slot = waiter.slot
                upstream = self._pool.free(slot.model, slot.native, slot.tried)
                if upstream is None:
                    continue
                queue.remove(waiter)
                self._queued -= 1
                if queue:
                    self._queues.move_to_end(user)  # served: back of the line
                else:
                    del self._queues[user]
                upstream.in_flight += 1
                waiter.granted.set_result(upstream)
                return True
        return False

    def gauges(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("gatewayctl_queue_depth", "Requests waiting for an upstream.")
        depth.add_metric([], self._queued)
        by_user = GaugeMetricFamily(
            "gatewayctl_queued_requests", "Requests waiting, by user.", labels=["user"]
        )
        for user, queue in self._queues.items():
            by_user.add_metric([user], len(queue))
        in_flight = GaugeMetricFamily(
            "gatewayctl_in_flight_requests",
            "Generating requests let in and not finished (queued ones included), by user.",
            labels=["user"],
        )
        for user, held in self._users.items():
            in_flight.add_metric([user], held)
        yield depth
        yield by_user
        yield in_flight
