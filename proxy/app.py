"""The ASGI application: routes and lifespan. ``create_app`` is the only factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from gatewayctl.proxy import ollama_api
from gatewayctl.proxy.asgi import Receive, Scope, Send
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
from starlette.types import ASGIApp


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


class ExactRoutes:
    """Sends a request for a proxy route (a fixed path) straight to its endpoint.

    Starlette's router tries every route's regex in turn and its exception middleware wraps
    every send: on the paths that carry the traffic that was about a tenth of a request's CPU
    and an extra coroutine per streamed chunk. The route is put in the scope as the router
    would (the access log and metrics label by it); any other path or method, and a mounted
    root path, go the usual way (a wrong method still gets the router's 405)."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, Route]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] not in (route.methods or ()) or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        await route.app(scope, receive, send)


def exact_proxy_routes(routes: list[BaseRoute]) -> dict[str, Route]:
    """The proxy routes, by path: the ones ExactRoutes may take (none has a path parameter)."""
    return {
        route.path: route
        for route in routes
        if isinstance(route, Route)
        and isinstance(route.endpoint, ProxyEndpoint)
        and not route.param_convertors
    }


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

    routes = [
        *openai_routes(gateway),
        *ollama_routes(gateway),
        *ops_routes(gateway),
        *webui_routes(gateway),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(Observer, metrics=gateway.metrics),
            Middleware(ExactRoutes, routes=exact_proxy_routes(routes)),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.gateway = gateway
    return app
