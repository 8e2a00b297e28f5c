"""What every request leaves behind: its request id, one access-log line, its metrics.

``Observer`` is the app's middleware. It gives each request a ``RequestInfo`` in its scope,
which the endpoints fill in as they learn things (user, model, tokens, time to first token),
adds ``x-request-id`` to every response that lacks one (so errors, /api routes and unknown
routes carry it too) and notes the status. When the response is over it writes one JSON line
on the ``gatewayctl.access`` logger and counts the request. It looks at the response start
only, never at a body chunk.

The access line holds these fields and nothing else, so never a key, a password or prompt
text: request_id, method, route (the route's template, not the raw path), status, user, model,
upstream, outcome, prompt_tokens, completion_tokens, latency_ms, ttft_ms, queued_ms.
Health probes and metric scrapes are neither logged nor counted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from gatewayctl.proxy.asgi import Message, Receive, Scope, Send, header
from gatewayctl.proxy.ledger import UsageRecord
from gatewayctl.proxy.metrics import UNKNOWN, Metrics
from starlette.types import ASGIApp

access_log = logging.getLogger("gatewayctl.access")
INFO_KEY = "gatewayctl.request"
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CLIENT_CLOSED = 499  # nginx's status for a client that left before the response


@dataclass(slots=True)
class RequestInfo:
    request_id: str
    started: float  # perf_counter()
    user: str | None = None
    model: str | None = None
    upstream: str | None = None
    status: int = 0
    outcome: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    queued_ms: float | None = None

    def settled(self, record: UsageRecord) -> None:
        self.prompt_tokens = record.prompt_tokens
        self.completion_tokens = record.completion_tokens
        self.ttft_ms = record.ttft_ms
        self.outcome = record.outcome

    def line(self, method: str, route: str, status: int) -> str:
        return json.dumps(
            {
                "request_id": self.request_id,
                "method": method,
                "route": route,
                "status": status,
                "user": self.user,
                "model": self.model,
                "upstream": self.upstream,
                "outcome": self.outcome,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "latency_ms": round((time.perf_counter() - self.started) * 1000, 2),
                "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 2),
                "queued_ms": None if self.queued_ms is None else round(self.queued_ms, 2),
            }
        )


def _new_request_id(scope: Scope) -> str:
    given = header(scope, b"x-request-id")
    # The client's own id is kept when it is a sane header value.
    if given and len(given) <= 128 and given.isascii() and given.decode().isprintable():
        return given.decode()
    return os.urandom(16).hex()  # as random as uuid4().hex, at a third of the cost


def request_info(scope: Scope) -> RequestInfo:
    """This request's info, made on first use (endpoints also work without the middleware)."""
    info: RequestInfo | None = scope.get(INFO_KEY)
    if info is None:
        info = scope[INFO_KEY] = RequestInfo(_new_request_id(scope), time.perf_counter())
    return info


def _label_model(info: RequestInfo, status: int) -> str:
    # A name the client made up (refused with 400, 403 or 404) must not become a label value:
    # that would let anyone with a key grow the metrics without bound.
    if info.model is None or (400 <= status < 500 and status != 429):
        return UNKNOWN
    return info.model


class Observer:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info = request_info(scope)
        request_id = info.request_id.encode()

        def send_start(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                headers = message.get("headers") or []
                if not any(key == b"x-request-id" for key, _ in headers):
                    message = {**message, "headers": [*headers, (b"x-request-id", request_id)]}
            return send(message)

        try:
            await self.app(scope, receive, send_start)
        except BaseException:
            info.status = info.status or 500
            raise
        finally:
            if scope["path"] not in OPS_PATHS:
                self._finish(scope, info)

    def _finish(self, scope: Scope, info: RequestInfo) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        status = info.status or CLIENT_CLOSED
        self.metrics.answered(
            info.user or UNKNOWN,
            _label_model(info, status),
            route,
            status,
            time.perf_counter() - info.started,
        )
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(info.line(scope["method"], route, status))
