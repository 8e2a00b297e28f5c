"""The ASGI application: routes and lifespan. ``create_app`` is the only factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from gatewayctl.proxy.dialect import OLLAMA, OPENAI
from gatewayctl.proxy.endpoints import PassthroughEndpoint, ProxyEndpoint
from gatewayctl.proxy.errors import BadRequest, GatewayError, NotFound
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.proxy.openai_api import plan_chat, plan_completion, plan_embedding
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route


def openai_routes(gateway: Gateway) -> list[BaseRoute]:
    def proxy(path: str, planner: object, name: str) -> Route:
        endpoint = ProxyEndpoint(gateway, OPENAI, planner, name=name)  # type: ignore[arg-type]
        return Route(path, endpoint, methods=["POST"])

    models = PassthroughEndpoint(gateway, OPENAI)
    return [
        proxy("/v1/chat/completions", plan_chat, "chat.completions"),
        proxy("/v1/completions", plan_completion, "completions"),
        proxy("/v1/embeddings", plan_embedding, "embeddings"),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", models, methods=["GET"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods answer in the dialect of their prefix, not in HTML."""
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if exc.status_code == 404:
        error = NotFound(f"Unknown route: {request.method} {request.url.path}")
    else:
        error = BadRequest(exc.detail)
        error.status = exc.status_code
    dialect = OLLAMA if request.url.path.startswith("/api/") else OPENAI
    return Response(
        dialect.error_body(error), exc.status_code, exc.headers, media_type="application/json"
    )


def create_app(config_path: Path, *, upstream: str | None = None) -> Starlette:
    gateway = Gateway(config_path, upstream=upstream)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = Starlette(
        routes=openai_routes(gateway),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.gateway = gateway
    return app
