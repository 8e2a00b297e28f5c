"""Upstream health as the dashboard shows it.

Each configured engine is probed with a short GET (Ollama: ``/api/version``; OpenAI-compatible
servers: ``/v1/models``) at most every few seconds, however many dashboards are open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from gatewayctl.proxy.gateway import Gateway

PROBE_TIMEOUT = 2.0
MAX_AGE = 5.0


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    url: str
    healthy: bool
    detail: str
    latency_ms: float | None
    checked_at: float

    def view(self) -> dict[str, Any]:
        return asdict(self)


class UpstreamHealth:
    def __init__(
        self, gateway: Gateway, *, max_age: float = MAX_AGE, clock: Callable[[], float] = time.time
    ) -> None:
        self._gateway = gateway
        self._max_age = max_age
        self._clock = clock
        self._refresh: asyncio.Task[None] | None = None
        self._statuses: list[UpstreamStatus] = []
        self._checked_at = 0.0

    def _targets(self) -> list[tuple[str, str]]:
        """(url, probe path) of every engine the gateway forwards to."""
        config = self._gateway.config
        if not config.upstreams:
            return [(self._gateway.upstream, "/api/version")]
        return [
            (u.url, "/api/version" if u.kind == "ollama" else "/v1/models")
            for u in config.upstreams
        ]

    async def statuses(self) -> list[UpstreamStatus]:
        """The latest probe results; a stale answer is refreshed in the background, so a hung
        engine never holds up the dashboard (only the very first call waits)."""
        targets = self._targets()
        changed = [s.url for s in self._statuses] != [url for url, _ in targets]
        if changed and (self._refresh is None or self._refresh.done()):
            await self._probe_all(targets)
        elif self._clock() - self._checked_at >= self._max_age and (
            self._refresh is None or self._refresh.done()
        ):
            self._refresh = asyncio.create_task(self._probe_all(targets))
        return self._statuses

    async def _probe_all(self, targets: list[tuple[str, str]]) -> None:
        self._checked_at = self._clock()
        self._statuses = list(
            await asyncio.gather(*(self._probe(url, path) for url, path in targets))
        )

    async def _probe(self, url: str, path: str) -> UpstreamStatus:
        started = time.perf_counter()
        try:
            response = await self._gateway.client.get(url + path, timeout=PROBE_TIMEOUT)
        except httpx.TimeoutException:
            return UpstreamStatus(url, False, "no answer in time", None, self._clock())
        except httpx.HTTPError as exc:
            return UpstreamStatus(
                url, False, f"unreachable ({type(exc).__name__})", None, self._clock()
            )
        latency = (time.perf_counter() - started) * 1000
        healthy = response.status_code < 500
        detail = "ok" if healthy else f"answered HTTP {response.status_code}"
        return UpstreamStatus(url, healthy, detail, round(latency, 1), self._clock())
