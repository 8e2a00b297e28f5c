"""JSON in and out for the web UI's API: one error shape, the same as the proxy's /v1 errors.

An error is ``{"error": {"message", "type", "param", "code"}}``; ``param`` names the form field
a validation error belongs to, so the page can show the message next to it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from gatewayctl.proxy.config import ConfigError
from gatewayctl.proxy.errors import BadRequest, GatewayError
from gatewayctl.webui.forms import from_config_error
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

MAX_JSON_BYTES = 64 * 1024
Handler = Callable[[Request], Awaitable[Response]]


def error_response(error: GatewayError) -> Response:
    return Response(
        error.openai_body(), error.status, headers=error.headers, media_type="application/json"
    )


def api(handler: Handler) -> Handler:
    """Render refusals and validation errors as JSON errors, never as a 500."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as error:
            return error_response(error)
        except ConfigError as exc:  # AccountError included: a change that cannot be made
            return error_response(from_config_error(exc))

    return wrapper


async def json_body(request: Request) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise BadRequest("The request body is too large.")
    try:
        payload = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.") from None
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.") from None
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object.")
    return payload


def ok(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status)
