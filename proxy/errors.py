"""Errors the gateway answers with, and how each API dialect renders them.

    GatewayError                    any refusal; carries status, OpenAI type/code/param, headers
    ├── BadRequest                  400 invalid_request_error
    ├── Unauthorized                401 invalid_api_key
    ├── Forbidden                   403 (suspended, admin only, model not allowed)
    │   └── QuotaExhausted          403 insufficient_quota, x-should-retry: false
    ├── NotFound                    404
    ├── PayloadTooLarge             413
    ├── RateLimited                 429 rate_limit_exceeded, Retry-After
    │   ├── ConcurrencyLimited      429 concurrency_limit_exceeded (the user's own cap)
    │   └── ServerBusy              429 server_busy (upstream queue full, or waited too long)
    ├── UpstreamUnavailable         502 (connection refused, reset, bad answer)
    │   └── UpstreamConnectFailed   502, no connection was made: another upstream may be tried
    ├── UpstreamTimeout             504
    └── LedgerUnavailable           503 (the usage ledger cannot record a quota reservation)

The same error renders OpenAI-shaped on /v1 (``{"error": {"message", "type", "param",
"code"}}``) and Ollama-shaped on /api (``{"error": "message"}``), with the same status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping


class GatewayError(Exception):
    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def openai_body(self) -> bytes:
        return json.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        ).encode()

    def ollama_body(self) -> bytes:
        return json.dumps({"error": self.message}).encode()


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        # Nothing changes by retrying a refusal; tell the openai SDK so.
        super().__init__(message, code=code, headers={"x-should-retry": "false"})


class QuotaExhausted(Forbidden):
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="insufficient_quota")


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class ConcurrencyLimited(RateLimited):
    code = "concurrency_limit_exceeded"


class ServerBusy(RateLimited):
    code = "server_busy"


class UpstreamUnavailable(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_unavailable"


class UpstreamConnectFailed(UpstreamUnavailable):
    """Nothing reached the engine, so nothing was generated: safe to send elsewhere."""


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"


class LedgerUnavailable(GatewayError):
    """A quota cannot be enforced without its reservation on disk: refuse rather than guess."""

    status = 503
    type = "api_error"
    code = "ledger_unavailable"
