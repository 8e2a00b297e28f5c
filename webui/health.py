"""Upstream health as the dashboard shows it: the gateway's own pool, as its probes and
requests last saw each engine (no probing of our own)."""

from __future__ import annotations

from typing import Any

from gatewayctl.proxy.gateway import Gateway


def upstream_views(gateway: Gateway) -> list[dict[str, Any]]:
    views = []
    for upstream in gateway.pool.upstreams:
        if not upstream.checked and upstream.healthy:
            detail = "not probed yet"
        else:
            detail = upstream.error or "ok"
        views.append(
            {
                "url": upstream.label,
                "kind": upstream.settings.kind,
                "healthy": upstream.healthy,
                "detail": detail,
                "in_flight": upstream.in_flight,
                "max_in_flight": upstream.cap,
                "models": list(upstream.settings.models),
            }
        )
    return views
