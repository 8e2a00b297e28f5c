"""The gateway's process state: current config, upstream client and pool, scheduler, ledger,
limiter, quotas, metrics.

One ``Gateway`` is made by the app factory and lives for the life of the app; nothing in the
proxy is module-level state. ``start`` and ``stop`` are run by the ASGI lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import httpx
from gatewayctl.proxy.config import (
    Config,
    ConfigError,
    UpstreamSettings,
    User,
    ledger_path,
    load_config,
)
from gatewayctl.proxy.ledger import Ledger
from gatewayctl.proxy.limits import QuotaBook, RateLimiter
from gatewayctl.proxy.metrics import Metrics
from gatewayctl.proxy.reload import watch_file
from gatewayctl.proxy.scheduler import Scheduler
from gatewayctl.proxy.upstream import make_upstream_client
from gatewayctl.proxy.upstreams import UpstreamPool

log = logging.getLogger("gatewayctl")


class Gateway:
    def __init__(self, config_path: Path, *, upstream: str | None = None) -> None:
        self.config_path = config_path
        self._applied_version = self._file_version()
        self.config: Config = load_config(config_path)  # refuse to start on a bad file
        self._upstream_override = upstream.rstrip("/") if upstream else None
        self.users_by_key: dict[str, User] = self.config.by_key_hash()
        # The reason the file on disk was rejected, while the last good config serves.
        self.config_error: str | None = None
        self.reloads = 0
        self.ledger = Ledger(ledger_path(self.config, config_path))
        self.limiter = RateLimiter()
        self.quotas = QuotaBook(self.ledger)
        self.metrics = Metrics()
        self.pool = UpstreamPool(self._upstreams(self.config), self.config.server)
        self.scheduler = Scheduler(self.pool, self.metrics, self.config.server)
        self.metrics.add_gauges(self.pool.gauges)
        self.metrics.add_gauges(self.scheduler.gauges)
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop_watching = asyncio.Event()

    def _upstreams(self, config: Config) -> tuple[UpstreamSettings, ...]:
        # `serve --upstream URL` replaces whatever users.toml lists.
        if self._upstream_override:
            return (UpstreamSettings(url=self._upstream_override),)
        return config.effective_upstreams()

    @property
    def upstream(self) -> str:
        """The first configured upstream (see ``pool`` for all of them)."""
        return self.pool.upstreams[0].url

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None, "the gateway is not started"
        return self._client

    async def start(self) -> None:
        await asyncio.to_thread(self.ledger.open)
        if self.ledger.recovered:
            log.warning(
                "charged %d reservation(s) left by a gateway that stopped mid-request",
                self.ledger.recovered,
            )
        self._client = make_upstream_client(self.config.server)
        await self.pool.start()
        self._stop_watching.clear()
        self._watcher = asyncio.create_task(
            watch_file(self.config_path.resolve(), self.reload, self._stop_watching)
        )

    async def stop(self) -> None:
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.pool.stop()
        if self._client is not None:
            await self._client.aclose()
        await asyncio.to_thread(self.ledger.close)

    def _file_version(self) -> bytes | None:
        # The content, not the stat: inode numbers are reused and mtimes are coarse, so two
        # quick writes can look alike by stat.
        try:
            return self.config_path.read_bytes()
        except OSError:
            return None

    def reload(self) -> None:
        """Re-read users.toml; a bad file is reported once and the last good config stays.

        The same file is applied once: the web UI reloads right after its own write, and the
        watcher then reports that write again.
        """
        version = self._file_version()
        if self.config_error is None and version is not None and version == self._applied_version:
            return
        try:
            config = load_config(self.config_path)
            if self.config.users and not config.users:
                # What a non-atomic write (`> users.toml`, some editors) looks like half-way:
                # applying it would lock every user out and forget every rate-limit bucket.
                raise ConfigError(f"{self.config_path}: no users at all (a half-written file?)")
        except ConfigError as exc:
            if str(exc) != self.config_error:
                log.error("users.toml rejected, still serving the last good config: %s", exc)
            self.config_error = str(exc)
            self.metrics.reload_failures.inc()
        else:
            self.apply(config)
            self._applied_version = version
            self.config_error = None
            self.reloads += 1
            self.metrics.reloads.inc()
            log.info("users.toml reloaded: %d users", len(config.users))

    def apply(self, config: Config) -> None:
        removed = set(self.config.users) - set(config.users)
        self.config = config
        self.users_by_key = config.by_key_hash()
        self.limiter.forget(removed)
        self.pool.configure(self._upstreams(config), config.server)
        self.scheduler.configure(config.server)
