"""Security headers on every web UI response (pages, assets and the JSON API).

The pages load only their own scripts and styles (no inline script, no CDN), never render in a
frame, and do not leak their URL to other sites.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gatewayctl.proxy.asgi import Message, Receive, Scope, Send
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; manifest-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in present]
                if b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def route(path: str, endpoint: Callable[..., Any], methods: list[str]) -> Route:
    """A web UI route: its responses carry the security headers."""
    return Route(path, endpoint, methods=methods, middleware=[Middleware(SecurityHeaders)])
