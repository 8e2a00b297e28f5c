"""The request pipeline shared by every proxied route, in both dialects.

    read body -> authenticate -> rate limit -> parse + plan (dialect specific) -> admit (cap,
    quota) -> relay upstream -> settle usage in the ledger

Each route only supplies a *planner*: a function that validates the JSON body and says which
model it uses, how big the prompt is, what completion limit the client asked for, and how to
write the upstream body once the effective limit is known.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gatewayctl.proxy.admission import admit, check_rate, settle
from gatewayctl.proxy.asgi import (
    ClientGone,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_response,
)
from gatewayctl.proxy.auth import bearer_token, user_for_key
from gatewayctl.proxy.config import User
from gatewayctl.proxy.dialect import Dialect
from gatewayctl.proxy.errors import BadRequest, GatewayError
from gatewayctl.proxy.forward import Outcome, Relay
from gatewayctl.proxy.gateway import Gateway

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
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object.")
    return payload


def request_id_of(scope: Scope) -> str:
    given = header(scope, b"x-request-id")
    if given and len(given) <= 128 and given.isascii():
        return given.decode()
    return uuid.uuid4().hex


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
        self._authenticate = authenticate or self._authenticate_key

    async def _error(
        self, send: Send, error: GatewayError, request_id: str, extra: Headers | None = None
    ) -> None:
        headers = [(b"x-request-id", request_id.encode()), *(extra or [])]
        headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
        await send_response(send, error.status, self.dialect.error_body(error), headers)

    def _authenticate_key(self, scope: Scope) -> User:
        return user_for_key(self.gateway.users_by_key, bearer_token(scope))

    def _url(self, scope: Scope, path: str | None = None) -> str:
        query = scope.get("query_string", b"")
        url = self.gateway.upstream + (path or scope["path"])
        return f"{url}?{query.decode('latin-1')}" if query else url


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
        started = time.perf_counter()
        request_id = request_id_of(scope)
        gateway = self.gateway
        rate: Headers = []
        try:
            body = await read_body(receive, gateway.config.server.max_body_bytes)
            user = self._authenticate(scope)
            rate = check_rate(gateway, user)
            plan = self.planner(parse_json_object(body))
            ticket = await admit(
                gateway,
                user,
                model=plan.model,
                endpoint=self.name,
                request_id=request_id,
                started=started,
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
            upstream_body = json.dumps(plan.write_body(ticket.completion_limit)).encode()
            request = gateway.client.build_request(
                "POST",
                self._url(scope),
                content=upstream_body,
                headers=upstream_headers(scope, request_id),
            )
            relay = Relay(
                gateway.client,
                request,
                self.dialect,
                hide_usage_chunk=plan.hide_usage_chunk,
                response_headers=[(b"x-request-id", request_id.encode()), *rate],
            )
            try:
                outcome = await relay.run(receive, send)
            except GatewayError as error:
                outcome.status = error.status
                outcome.outcome = "upstream_unreachable"
                await self._error(send, error, request_id, rate)
        finally:
            settle(gateway, ticket, outcome)


Guard = Callable[[User, Scope, bytes], None]  # raises GatewayError to refuse the request


class PassthroughEndpoint(_Endpoint):
    """A route that reads rather than generates (a version, one model's details): authenticated,
    checked by its guard, forwarded with its body, not accounted."""

    def __init__(self, gateway: Gateway, dialect: Dialect, guard: Guard | None = None) -> None:
        super().__init__(gateway, dialect)
        self._guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope)
        try:
            body = await read_body(receive, self.gateway.config.server.max_body_bytes)
            user = self._authenticate(scope)
            if self._guard is not None:
                self._guard(user, scope, body)
            request = self.gateway.client.build_request(
                scope["method"],
                self._url(scope),
                content=body or None,
                headers=upstream_headers(scope, request_id),
            )
            relay = Relay(
                self.gateway.client,
                request,
                self.dialect,
                hide_usage_chunk=False,
                response_headers=[(b"x-request-id", request_id.encode())],
            )
            await relay.run(receive, send)
        except GatewayError as error:
            await self._error(send, error, request_id)
        except ClientGone:
            return
