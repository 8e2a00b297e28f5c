"""The chat page's two proxy routes, run as the logged-in user through the proxy pipeline.

    POST /ui/api/chat/completions   = /v1/chat/completions (streams; limits, quota, accounting)
    GET  /ui/api/models             = /v1/models, filtered to the models the user may use

The browser authenticates with its session cookie and CSRF token instead of an API key, so the
key never reaches the page, and everything else (rate limit, max_tokens cap, quota
reservation, streaming relay, cancel on disconnect, ledger) is the same code as for API
clients.
"""

from __future__ import annotations

from gatewayctl.proxy.asgi import Receive, Scope, Send
from gatewayctl.proxy.dialect import OPENAI
from gatewayctl.proxy.endpoints import ProxyEndpoint
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.proxy.model_endpoints import ModelListEndpoint
from gatewayctl.proxy.openai_api import plan_chat
from gatewayctl.webui.guard import Guard
from gatewayctl.webui.headers import route
from starlette.routing import BaseRoute
from starlette.types import ASGIApp


class AtUpstreamPath:
    """Run a proxy endpoint for a web UI path as if called on the API path it stands for
    (endpoints forward the request's own path to the engine)."""

    def __init__(self, path: str, endpoint: ASGIApp) -> None:
        self.path = path
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoint(
            {**scope, "path": self.path, "raw_path": self.path.encode()}, receive, send
        )


def chat_routes(gateway: Gateway, guard: Guard) -> list[BaseRoute]:
    chat = ProxyEndpoint(
        gateway, OPENAI, plan_chat, name="ui.chat.completions", authenticate=guard.authenticate
    )
    models = ModelListEndpoint(gateway, OPENAI, guard.authenticate)
    return [
        route(
            "/ui/api/chat/completions",
            AtUpstreamPath("/v1/chat/completions", chat),
            methods=["POST"],
        ),
        route("/ui/api/models", AtUpstreamPath("/v1/models", models), methods=["GET"]),
    ]
