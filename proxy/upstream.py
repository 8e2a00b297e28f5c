"""The one shared HTTP client a gateway process uses to talk to its engines."""

from __future__ import annotations

import httpx
from gatewayctl.proxy.config import ServerSettings


def make_upstream_client(server: ServerSettings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=server.connect_timeout,
        read=server.read_timeout,
        write=server.read_timeout,
        pool=server.connect_timeout,
    )
    # Streams are long-lived: do not cap connections (the engine's own queue is the limit),
    # but keep enough idle ones to avoid reconnecting under load.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)
