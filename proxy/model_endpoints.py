"""Routes about models rather than generation; none of them is token-accounted.

- ``ModelListEndpoint``: ``/v1/models``, ``/api/tags``, ``/api/ps``, the upstreams' lists
  merged, filtered to the models the caller may use.
- guards for ``PassthroughEndpoint``: one model's details (``/v1/models/{model}``,
  ``/api/show``) only for a model the caller may use.
- ``ManagementEndpoint``: Ollama's model management (pull, push, create, copy, delete, blobs),
  admins only; the request body streams upstream as it arrives (a blob is a whole model file,
  larger than any body limit) and the answer streams back (pull's status lines).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
from gatewayctl.proxy.admission import check_rate
from gatewayctl.proxy.asgi import (
    ClientGone,
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_response,
)
from gatewayctl.proxy.auth import require_admin
from gatewayctl.proxy.config import User
from gatewayctl.proxy.endpoints import _Endpoint, parse_json_object, request_id_of, upstream_headers
from gatewayctl.proxy.errors import GatewayError, NotFound, UpstreamConnectFailed
from gatewayctl.proxy.forward import Relay, upstream_error
from gatewayctl.proxy.models import ensure_model_allowed, filter_model_list, model_allowed
from gatewayctl.proxy.upstreams import Upstream, merge_model_lists


def guard_model_in_path(user: User, scope: Scope, _body: bytes) -> None:
    """/v1/models/{model}: a model the caller may not use does not exist for them, as on
    OpenAI (404 model_not_found), which also keeps the answer the same whether it exists."""
    model = str(scope["path_params"]["model"])
    if not model_allowed(user, model):
        raise NotFound(
            f"The model '{model}' does not exist or you do not have access to it.",
            code="model_not_found",
        )


def guard_model_in_body(user: User, _scope: Scope, body: bytes) -> None:
    """/api/show: 403, like every other /api route naming a model the caller may not use."""
    payload = parse_json_object(body)
    model = payload.get("model") or payload.get("name")
    if isinstance(model, str):
        ensure_model_allowed(user, model)


class ModelListEndpoint(_Endpoint):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope)
        headers: Headers = [(b"x-request-id", request_id.encode())]
        try:
            await read_body(receive, self.gateway.config.server.max_body_bytes)
            user = self._authenticate(scope)
            response = await self._fetch(scope, request_id)
        except GatewayError as error:
            await self._error(send, error, request_id)
            return
        except ClientGone:
            return
        body = response.content
        if response.status_code == 200 and user.models is not None:
            try:
                payload = json.loads(body)
            except ValueError:
                pass  # not a list we understand: relay it as it came
            else:
                body = json.dumps(filter_model_list(user, payload)).encode()
        content_type = response.headers.get("content-type", "application/json").encode()
        await send_response(send, response.status_code, body, headers, content_type)

    async def _fetch(self, scope: Scope, request_id: str) -> httpx.Response:
        """The list of every upstream that answers, merged (a model served by two is listed
        once, an upstream lists only the models it is configured to serve)."""
        upstreams = self.gateway.pool.pick(None, self.native)
        answers = await asyncio.gather(*(self._get(scope, u, request_id) for u in upstreams))
        answered = [
            (u, a) for u, a in zip(upstreams, answers, strict=True) if isinstance(a, httpx.Response)
        ]
        if not answered:
            error = answers[0]
            assert isinstance(error, GatewayError)
            raise error
        if len(upstreams) == 1 and not upstreams[0].settings.models:
            return answered[0][1]  # as the engine said it
        merged = merge_model_lists([(u, a.content) for u, a in answered if a.status_code == 200])
        return answered[0][1] if merged is None else httpx.Response(200, json=merged)

    async def _get(
        self, scope: Scope, upstream: Upstream, request_id: str
    ) -> httpx.Response | GatewayError:
        client = self.gateway.client
        request = client.build_request(
            "GET",
            self._url(scope, upstream=upstream.url),
            headers=upstream_headers(scope, request_id),
        )
        try:
            return await client.send(request)
        except httpx.HTTPError as exc:
            error = upstream_error(exc)
            if isinstance(error, UpstreamConnectFailed):
                self._connect_failed(upstream, error)
            return error


class _StreamedBody:
    """The client's request body as an async iterator for httpx; ``receive`` for the relay's
    disconnect watcher waits until the body is through, so the two never read at once."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._done = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                break
        self._done.set()

    async def receive(self) -> Message:
        await self._done.wait()
        return await self._receive()


class ManagementEndpoint(_Endpoint):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope)
        rate: Headers = []
        try:
            # Refused on the headers alone: a non-admin's upload is never read.
            user = self._authenticate(scope)
            require_admin(user)
            rate = check_rate(self.gateway, user)
        except GatewayError as error:
            await self._error(send, error, request_id, rate)
            return
        headers = upstream_headers(scope, request_id)
        length = header(scope, b"content-length")
        streamed: _StreamedBody | None = None
        if length is not None and length != b"0":
            # Keep the length (Ollama's blob route reads it) rather than re-chunk the upload.
            headers["content-length"] = length.decode("latin-1")
            streamed = _StreamedBody(receive)
        elif header(scope, b"transfer-encoding") is not None:
            streamed = _StreamedBody(receive)
        request = self.gateway.client.build_request(
            scope["method"], self._url(scope), content=streamed, headers=headers
        )
        relay = Relay(
            self.gateway.client,
            request,
            self.dialect,
            hide_usage_chunk=False,
            response_headers=[(b"x-request-id", request_id.encode()), *rate],
        )
        try:
            await relay.run(receive if streamed is None else streamed.receive, send)
        except GatewayError as error:
            await self._error(send, error, request_id, rate)
        except ClientGone:
            return
