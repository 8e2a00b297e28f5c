"""Several engines behind one gateway: which upstream may serve a request, and which are alive.

The pool keeps one ``Upstream`` per configured engine: its settings, whether it is healthy, and
how many requests it is serving (the scheduler counts them; the pool only reads the count to
prefer the least loaded). A background task probes every upstream every ``health_interval``
seconds (Ollama: ``GET /api/version``; OpenAI-compatible: ``GET /v1/models``); any answer
below 500 means the engine is up. A refused connection on a real request marks the upstream
down at once, without waiting for the next probe. A down upstream gets no requests while another
one serving the model is up, until a probe succeeds again; when every upstream serving a model
is down, requests are still tried on them, so the client gets the real connection error and a
restarted engine serves again without waiting for its probe.

On a hot reload the pool is rebuilt from the new settings, keeping the state (health, requests
in flight) of the upstreams whose URL did not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import httpx
from gatewayctl.proxy.config import ServerSettings, UpstreamSettings
from gatewayctl.proxy.errors import NotFound
from gatewayctl.proxy.models import LIST_KEYS, canonical, entry_name, matches_any
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

log = logging.getLogger("gatewayctl.upstreams")
_PROBES: Mapping[str, str] = MappingProxyType({"ollama": "/api/version", "openai": "/v1/models"})
PROBE_USER_AGENT = "gatewayctl-health"  # tells probes apart in the engine's logs


def not_served(model: str | None) -> NotFound:
    return NotFound(f"model '{model}' not found", code="model_not_found")


def redact_url(url: str) -> str:
    """``http://user:secret@host:port/base`` -> ``http://host:port/base``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


class Upstream:
    __slots__ = ("cap", "checked", "error", "healthy", "in_flight", "settings")

    def __init__(self, settings: UpstreamSettings, default_cap: int | None) -> None:
        self.settings = settings
        self.cap = settings.max_in_flight or default_cap
        self.healthy = True  # until a probe or a request says otherwise
        self.checked = False  # a probe has answered at least once
        self.error: str | None = None
        self.in_flight = 0

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def label(self) -> str:
        """The URL as logs, metrics and the dashboard show it: without credentials."""
        return redact_url(self.settings.url)

    def serves(self, model: str | None, native: bool) -> bool:
        """``native``: an Ollama /api route, which only an Ollama upstream understands."""
        if native and self.settings.kind != "ollama":
            return False
        models = self.settings.models
        return model is None or not models or matches_any(models, model)

    @property
    def has_room(self) -> bool:
        return self.cap is None or self.in_flight < self.cap


class UpstreamPool:
    def __init__(self, upstreams: Iterable[UpstreamSettings], server: ServerSettings) -> None:
        self.upstreams: list[Upstream] = []
        self.interval = server.health_interval
        # Called when an upstream comes back, so requests waiting for one can go.
        self.on_recovery: Callable[[], None] = lambda: None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.configure(upstreams, server)

    def configure(self, upstreams: Iterable[UpstreamSettings], server: ServerSettings) -> None:
        known = {u.url: u for u in self.upstreams}
        fresh: list[Upstream] = []
        for settings in upstreams:
            upstream = known.get(settings.url)
            if upstream is None:
                upstream = Upstream(settings, server.max_in_flight)
            else:
                # The same object: requests in flight release the count they took on it.
                upstream.settings = settings
                upstream.cap = settings.max_in_flight or server.max_in_flight
            fresh.append(upstream)
        self.upstreams = fresh
        self.interval = server.health_interval
        self._wake.set()  # probe new upstreams now, and sleep with the new interval

    # ------------------------------------------------------------------ choosing

    def routable(
        self, model: str | None, native: bool, exclude: Iterable[Upstream] = ()
    ) -> list[Upstream]:
        """The upstreams a request for ``model`` may go to, least loaded first: the healthy
        ones serving it; when none is healthy, the others serving it all the same (one may be
        back before its next probe, and the client then sees the real connection error)."""
        serving = [u for u in self.upstreams if u.serves(model, native) and u not in exclude]
        found = [u for u in serving if u.healthy] or serving
        found.sort(key=lambda u: u.in_flight)
        return found

    def free(self, model: str, native: bool, exclude: Iterable[Upstream]) -> Upstream | None:
        """The least loaded routable upstream with room for one more request."""
        for upstream in self.routable(model, native, exclude):
            if upstream.has_room:
                return upstream
        return None

    def any_room(self) -> bool:
        return any(u.has_room for u in self.upstreams)

    def pick(self, model: str | None, native: bool) -> list[Upstream]:
        """Upstreams to try in turn for a request that is not scheduled (reads, model lists)."""
        found = self.routable(model, native)
        if not found:
            raise not_served(model)
        return found

    def preferred(self, native: bool) -> Upstream:
        """Where a request naming no model goes (model management, /api/version)."""
        found = self.routable(None, native)
        return found[0] if found else self.upstreams[0]

    # ------------------------------------------------------------------ health

    def mark_down(self, upstream: Upstream, reason: str) -> None:
        self._set_health(upstream, False, reason)

    def _set_health(self, upstream: Upstream, healthy: bool, reason: str | None) -> None:
        was = upstream.healthy
        upstream.healthy, upstream.error = healthy, reason
        if was and not healthy:
            log.warning("upstream %s is down: %s", upstream.label, reason)
        elif healthy and not was:
            log.info("upstream %s is healthy again", upstream.label)
            self.on_recovery()

    @property
    def ready(self) -> bool:
        """At least one upstream answered its last probe."""
        return any(u.healthy and u.checked for u in self.upstreams)

    async def probe(self, client: httpx.AsyncClient, upstream: Upstream) -> None:
        path = _PROBES[upstream.settings.kind]
        reason: str | None
        try:
            response = await client.get(upstream.url + path)
        except httpx.HTTPError as exc:
            healthy, reason = False, f"{type(exc).__name__} on {path}"
        else:
            healthy = response.status_code < 500
            reason = None if healthy else f"status {response.status_code} on {path}"
        upstream.checked = True
        self._set_health(upstream, healthy, reason)

    async def check_all(self) -> None:
        assert self._client is not None
        await asyncio.gather(*(self.probe(self._client, u) for u in self.upstreams))

    async def start(self) -> None:
        # A client of its own without keep-alive: each probe opens a connection, which is
        # precisely what must still work.
        timeout = httpx.Timeout(max(1.0, min(self.interval, 10.0)))
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"user-agent": PROBE_USER_AGENT},
        )
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self.check_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    # ------------------------------------------------------------------ metrics

    def gauges(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "gatewayctl_upstream_healthy", "1 if the upstream is up, else 0.", labels=["upstream"]
        )
        in_flight = GaugeMetricFamily(
            "gatewayctl_upstream_in_flight_requests",
            "Requests being served by the upstream.",
            labels=["upstream"],
        )
        for u in self.upstreams:
            healthy.add_metric([u.label], 1 if u.healthy else 0)
            in_flight.add_metric([u.label], u.in_flight)
        yield healthy
        yield in_flight


# ---------------------------------------------------------------------- model lists


def served_entries(upstream: Upstream, payload: Any) -> Iterator[tuple[str, Any]]:
    """(canonical name, entry) of a parsed model list, keeping what the upstream serves."""
    if not isinstance(payload, Mapping):
        return
    for key in LIST_KEYS:
        entries = payload.get(key)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            name = entry_name(entry)
            if name is not None and upstream.serves(name, native=False):
                yield canonical(name), entry


def merge_model_lists(parts: list[tuple[Upstream, bytes]]) -> dict[str, Any] | None:
    """One model list (OpenAI or Ollama shape) out of several upstreams' answers; a model
    served by two upstreams is listed once. None when no answer is a list."""
    merged: dict[str, Any] | None = None
    seen: set[str] = set()
    for upstream, body in parts:
        try:
            payload = json.loads(body)
        except ValueError:
            continue
        if not isinstance(payload, dict):
            continue
        key = next((k for k in LIST_KEYS if isinstance(payload.get(k), list)), None)
        if key is None:
            continue
        if merged is None:
            merged = {**payload, key: []}
        for name, entry in served_entries(upstream, payload):
            if name not in seen:
                seen.add(name)
                merged.setdefault(key, []).append(entry)
    return merged
