"""The ASGI application: routes and lifespan. ``create_app`` is the only factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from gatewayctl.proxy import ollama_api
from gatewayctl.proxy.dialect import OLLAMA, OPENAI
from gatewayctl.proxy.endpoints import PassthroughEndpoint, Planner, ProxyEndpoint
from gatewayctl.proxy.errors import BadRequest, GatewayError, NotFound
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.proxy.model_endpoints import (
    ManagementEndpoint,
    ModelListEndpoint,
    guard_model_in_body,
    guard_model_in_path,
)
from gatewayctl.proxy.observe import Observer
from gatewayctl.proxy.openai_api import plan_chat, plan_completion, plan_embedding
from gatewayctl.proxy.ops import Healthz, MetricsEndpoint, Readyz
from gatewayctl.webui.routes import webui_routes
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route


def openai_routes(gateway: Gateway) -> list[BaseRoute]:
    def proxy(path: str, planner: Planner, name: str) -> Route:
        return Route(path, ProxyEndpoint(gateway, OPENAI, planner, name=name), methods=["POST"])

    one_model = PassthroughEndpoint(gateway, OPENAI, guard_model_in_path)
    return [
        proxy("/v1/chat/completions", plan_chat, "chat.completions"),
        proxy("/v1/completions", plan_completion, "completions"),
        proxy("/v1/embeddings", plan_embedding, "embeddings"),
        Route("/v1/models", ModelListEndpoint(gateway, OPENAI), methods=["GET"]),
        Route("/v1/models/{model:path}", one_model, methods=["GET"]),
    ]


def ollama_routes(gateway: Gateway) -> list[BaseRoute]:
    def proxy(path: str, planner: Planner, name: str) -> Route:
        return Route(path, ProxyEndpoint(gateway, OLLAMA, planner, name=name), methods=["POST"])

    models = ModelListEndpoint(gateway, OLLAMA)
    manage = ManagementEndpoint(gateway, OLLAMA)
    return [
        proxy("/api/chat", ollama_api.plan_chat, "api.chat"),
        proxy("/api/generate", ollama_api.plan_generate, "api.generate"),
        proxy("/api/embed", ollama_api.plan_embed, "api.embed"),
        proxy("/api/embeddings", ollama_api.plan_embeddings, "api.embeddings"),
        Route("/api/tags", models, methods=["GET"]),
        Route("/api/ps", models, methods=["GET"]),
        Route(
            "/api/show", PassthroughEndpoint(gateway, OLLAMA, guard_model_in_body), methods=["POST"]
        ),
        Route("/api/version", PassthroughEndpoint(gateway, OLLAMA), methods=["GET"]),
        *(
            Route(f"/api/{verb}", manage, methods=["POST"])
            for verb in ("pull", "push", "create", "copy")
        ),
        Route("/api/delete", manage, methods=["DELETE"]),
        Route("/api/blobs/{digest}", manage, methods=["HEAD", "POST"]),
    ]


def ops_routes(gateway: Gateway) -> list[BaseRoute]:
    return [
        Route("/healthz", Healthz(), methods=["GET"]),
        Route("/readyz", Readyz(gateway), methods=["GET"]),
        Route("/metrics", MetricsEndpoint(gateway), methods=["GET"]),
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
        routes=[
            *openai_routes(gateway),
            *ollama_routes(gateway),
            *ops_routes(gateway),
            *webui_routes(gateway),
        ],
        lifespan=lifespan,
        middleware=[Middleware(Observer, metrics=gateway.metrics)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.gateway = gateway
    return app
