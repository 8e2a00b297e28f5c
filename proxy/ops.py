"""Operations routes: ``/healthz`` (the process answers), ``/readyz`` (it can serve),
``/metrics`` (Prometheus text format, admins only).

/healthz and /readyz take no key, so they name no user and no upstream address. /metrics shows
user names and their usage, so it takes an admin's API key (``Authorization: Bearer sk-...``):
a missing or wrong key gets 401, a user's key 403.
"""

from __future__ import annotations

import json

from gatewayctl.proxy.asgi import Receive, Scope, Send, send_response
from gatewayctl.proxy.auth import require_admin
from gatewayctl.proxy.dialect import OPENAI
from gatewayctl.proxy.endpoints import _Endpoint
from gatewayctl.proxy.errors import GatewayError
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.proxy.metrics import CONTENT_TYPE
from gatewayctl.proxy.observe import request_info


class Healthz:
    """Alive: the process answers. Nothing else is checked, so a restart is never triggered by
    an engine being down."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_response(send, 200, b'{"status":"ok"}')


class Readyz:
    """Ready when the config is loaded (always, once started: a bad file stops the start) and
    at least one upstream answered its last health probe; 503 otherwise."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upstreams = self.gateway.pool.upstreams
        ready = self.gateway.pool.ready
        body = {
            "status": "ready" if ready else "unavailable",
            "upstreams": len(upstreams),
            "healthy_upstreams": sum(1 for u in upstreams if u.healthy and u.checked),
            # The file on disk was rejected; the last good config is still serving.
            "config_error": self.gateway.config_error is not None,
        }
        await send_response(send, 200 if ready else 503, json.dumps(body).encode())


class MetricsEndpoint(_Endpoint):
    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway, OPENAI)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            require_admin(self._authenticate(scope))
        except GatewayError as error:
            await self._error(send, error, request_info(scope).request_id)
            return
        body = self.gateway.metrics.render()
        await send_response(send, 200, body, content_type=CONTENT_TYPE.encode())
