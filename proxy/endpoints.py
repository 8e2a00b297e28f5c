"""The request pipeline shared by every proxied route, in both dialects.

    read body -> authenticate -> rate limit -> parse + plan (dialect specific) -> enter the
    scheduler (per-user concurrency) -> admit (model access, cap, quota) -> get an upstream
    (queueing while all are busy) -> relay, on another upstream if the connection is refused
    -> settle usage in the ledger -> release the slot

Each route only supplies a *planner*: a function that validates the JSON body and says which
model it uses, how big the prompt is, what completion limit the client asked for, and how to
write the upstream body once the effective limit is known.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gatewayctl.proxy.admission import admit, check_rate, settle
from gatewayctl.proxy.asgi import (
    ClientGone,
    Headers,
    Receive,
    Scope,
    Send,
    read_body,
    send_response,
)
from gatewayctl.proxy.auth import bearer_token, user_for_key
from gatewayctl.proxy.config import User
from gatewayctl.proxy.dialect import Dialect
from gatewayctl.proxy.errors import BadRequest, GatewayError, ServerBusy, UpstreamConnectFailed
from gatewayctl.proxy.forward import Outcome, Relay
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.proxy.observe import CLIENT_CLOSED, request_info
from gatewayctl.proxy.scheduler import Slot
from gatewayctl.proxy.upstreams import Upstream

log = logging.getLogger("gatewayctl")
_FORWARDED = (b"content-type", b"accept", b"user-agent", b"x-request-id")


@dataclass(slots=True)
class Plan:
    model: str
    prompt_estimate: int
    requested_limit: int | None
    write_body: Callable[[int | None], dict[str, Any]]  # effective limit -> upstream JSON
    choices: int = 1
    generates: bool = True
    hide_usage_chunk: bool = False


Planner = Callable[[dict[str, Any]], Plan]


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.") from None
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object.")
    return payload


def request_id_of(scope: Scope) -> str:
    """The client's x-request-id if it sent a sane one, else a new id; the same all along the
    request (the access log and every response header use it)."""
    return request_info(scope).request_id


def upstream_headers(scope: Scope, request_id: str) -> dict[str, str]:
    # Only what the engine needs: never the client's Authorization, Cookie or Host (httpx sets
    # the upstream's own Host; Ollama refuses foreign ones), and no compression so usage can be
    # read from the bytes as they pass.
    headers = {"accept-encoding": "identity", "x-request-id": request_id}
    for key, value in scope["headers"]:
        if key in _FORWARDED and key != b"x-request-id":
            headers[key.decode()] = value.decode("latin-1")
    return headers


Authenticator = Callable[[Scope], User]


class _Endpoint:
    def __init__(
        self, gateway: Gateway, dialect: Dialect, authenticate: Authenticator | None = None
    ) -> None:
        self.gateway = gateway
        self.dialect = dialect
        # API keys by default; the web UI passes its session check instead.
        self._check = authenticate or self._authenticate_key

    def _authenticate(self, scope: Scope) -> User:
        user = self._check(scope)
        request_info(scope).user = user.name  # for the access log and metrics
        return user

    async def _error(
        self, send: Send, error: GatewayError, request_id: str, extra: Headers | None = None
    ) -> None:
        headers = [(b"x-request-id", request_id.encode()), *(extra or [])]
        headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
        await send_response(send, error.status, self.dialect.error_body(error), headers)

    def _authenticate_key(self, scope: Scope) -> User:
        return user_for_key(self.gateway.users_by_key, bearer_token(scope))

    @property
    def native(self) -> bool:
        """Ollama's own API, which only an Ollama upstream speaks."""
        return self.dialect.name == "ollama"

    def _url(self, scope: Scope, path: str | None = None, upstream: str | None = None) -> str:
        query = scope.get("query_string", b"")
        base = upstream or self.gateway.pool.preferred(self.native).url
        url = base + (path or scope["path"])
        return f"{url}?{query.decode('latin-1')}" if query else url

    def _connect_failed(self, upstream: Upstream, error: GatewayError) -> None:
        self.gateway.pool.mark_down(upstream, error.message)
        self.gateway.metrics.connect_failures.labels(upstream.label).inc()

    async def _relay(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upstream: Upstream,
        next_upstream: Callable[[], Awaitable[Upstream | None]],
        content: bytes | None,
        response_headers: Headers,
        hide_usage_chunk: bool = False,
    ) -> Outcome:
        """Relay to ``upstream``; when it refuses the connection (so nothing reached the engine
        or the client), mark it down and go on with ``next_upstream()``. Raises the last
        connect error when there is none left."""
        info = request_info(scope)
        while True:
            info.upstream = upstream.label
            request = self.gateway.client.build_request(
                scope["method"],
                self._url(scope, upstream=upstream.url),
                content=content,
                headers=upstream_headers(scope, info.request_id),
            )
            relay = Relay(
                self.gateway.client,
                request,
                self.dialect,
                hide_usage_chunk=hide_usage_chunk,
                response_headers=response_headers,
            )
            try:
                return await relay.run(receive, send)
            except UpstreamConnectFailed as error:
                self._connect_failed(upstream, error)
                following = await next_upstream()
                if following is None:
                    raise
                upstream = following


class ProxyEndpoint(_Endpoint):
    """A generating or embedding route: limited, capped, accounted."""

    def __init__(
        self,
        gateway: Gateway,
        dialect: Dialect,
        planner: Planner,
        *,
        name: str,
        authenticate: Authenticator | None = None,
    ) -> None:
        super().__init__(gateway, dialect, authenticate)
        self.planner = planner
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info = request_info(scope)
        request_id = info.request_id
        gateway = self.gateway
        rate: Headers = []
        slot: Slot | None = None
        try:
            try:
                body = await read_body(receive, gateway.config.server.max_body_bytes)
                user = self._authenticate(scope)
                rate = check_rate(gateway, user)
                plan = self._plan(body)
                info.model = plan.model
                slot = gateway.scheduler.enter(user)
                ticket = await admit(
                    gateway,
                    user,
                    model=plan.model,
                    endpoint=self.name,
                    request_id=request_id,
                    started=info.started,
                    prompt_estimate=plan.prompt_estimate,
                    requested_limit=plan.requested_limit,
                    choices=plan.choices,
                    generates=plan.generates,
                )
            except GatewayError as error:
                await self._error(send, error, request_id, rate)
                return
            except ClientGone:
                return
            outcome = Outcome()
            try:
                content = json.dumps(plan.write_body(ticket.completion_limit)).encode()
                outcome = await self._forward(scope, receive, send, slot, plan, content, rate)
            finally:
                info.settled(settle(gateway, ticket, outcome))
        finally:
            if slot is not None:
                slot.release()  # whatever happened above, and only once

    def _plan(self, body: bytes) -> Plan:
        try:
            return self.planner(parse_json_object(body))
        except RecursionError:  # the prompt estimate walks nested content recursively
            raise BadRequest("The request body is nested too deeply.") from None

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        slot: Slot,
        plan: Plan,
        content: bytes,
        rate: Headers,
    ) -> Outcome:
        """Get an upstream (waiting in the queue while all are busy) and relay to it."""
        scheduler = self.gateway.scheduler
        info = request_info(scope)
        outcome = Outcome()

        async def next_upstream() -> Upstream | None:
            return slot.upstream if await scheduler.failover(slot, receive) else None

        try:
            await scheduler.assign(slot, plan.model, self.native, receive)
            assert slot.upstream is not None
            return await self._relay(
                scope,
                receive,
                send,
                slot.upstream,
                next_upstream,
                content,
                [(b"x-request-id", info.request_id.encode()), *rate],
                plan.hide_usage_chunk,
            )
        except GatewayError as error:
            outcome.status = error.status
            outcome.outcome = (
                "server_busy" if isinstance(error, ServerBusy) else "upstream_unreachable"
            )
            await self._error(send, error, info.request_id, rate)
        except ClientGone:  # left while queued
            outcome.status, outcome.outcome = CLIENT_CLOSED, "client_disconnect"
        finally:
            if slot.waited is not None:
                info.queued_ms = slot.waited * 1000
        return outcome


Guard = Callable[[User, Scope, bytes], None]  # raises GatewayError to refuse the request


class PassthroughEndpoint(_Endpoint):
    """A route that reads rather than generates (a version, one model's details): authenticated,
    checked by its guard, forwarded with its body, not accounted."""

    def __init__(self, gateway: Gateway, dialect: Dialect, guard: Guard | None = None) -> None:
        super().__init__(gateway, dialect)
        self._guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info = request_info(scope)
        try:
            body = await read_body(receive, self.gateway.config.server.max_body_bytes)
            user = self._authenticate(scope)
            if self._guard is not None:
                self._guard(user, scope, body)
            info.model = _named_model(scope, body)
            candidates = iter(self.gateway.pool.pick(info.model, self.native))

            async def next_upstream() -> Upstream | None:
                return next(candidates, None)

            first = await next_upstream()
            assert first is not None  # pick() raises rather than return nothing
            await self._relay(
                scope,
                receive,
                send,
                first,
                next_upstream,
                body or None,
                [(b"x-request-id", info.request_id.encode())],
            )
        except GatewayError as error:
            await self._error(send, error, info.request_id)
        except ClientGone:
            return


def _named_model(scope: Scope, body: bytes) -> str | None:
    """The model a read names, in its path (/v1/models/{model}) or body (/api/show)."""
    model = scope.get("path_params", {}).get("model")
    if model is None and body:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if isinstance(payload, dict):
            model = payload.get("model") or payload.get("name")
    return model if isinstance(model, str) and model and storable(model) else None


def storable(text: str) -> bool:
    """False for a string with a lone surrogate (legal in JSON as ``\\ud800``): it can be
    neither stored in the ledger nor exported as a metric label."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
