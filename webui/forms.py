"""Reading the dashboard's form fields into the values ``accounts`` expects.

The browser sends what was typed. An empty field, ``none``, ``unlimited`` or ``∞`` lifts the
limit, as ``none`` does on the CLI. The range rules themselves are not repeated here: the same
validator as the CLI's and the file loader's rejects a bad value, and its message is mapped back
to the field it names so the page can show it next to that field.
"""

from __future__ import annotations

import re
from typing import Any

from gatewayctl.proxy.accounts import LIMIT_FIELDS
from gatewayctl.proxy.config import ConfigError
from gatewayctl.proxy.errors import BadRequest

UNLIMITED = ("", "none", "unlimited", "∞")
_FLOATS = ("rps",)
_TEXT = ("models",)
_FIELD_IN_MESSAGE = re.compile(r"^(?:.*?: )?\[users\.[^\]]*\]\.(\w+): (.*)$", re.DOTALL)


def field_error(field: str | None, message: str) -> BadRequest:
    return BadRequest(message, param=field)


def from_config_error(exc: ConfigError) -> BadRequest:
    """``[users.alice].rps: must be > 0`` becomes "must be > 0" on the rps field."""
    match = _FIELD_IN_MESSAGE.match(str(exc))
    if match:
        return field_error(match.group(1), match.group(2))
    message = str(exc)
    for name in LIMIT_FIELDS:
        if message.startswith(f"{name}:"):
            return field_error(name, message.removeprefix(f"{name}:").strip())
    return field_error(None, message)


def _parse_value(name: str, raw: Any) -> Any:
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in UNLIMITED):
        return None
    if name in _TEXT:
        if isinstance(raw, list):
            return raw
        return str(raw)
    if isinstance(raw, bool):
        raise field_error(name, "must be a number")
    if isinstance(raw, int | float):
        return raw
    text = str(raw).strip().replace("_", "")
    try:
        return float(text) if name in _FLOATS else int(text)
    except ValueError:
        kind = "a number" if name in _FLOATS else "a whole number"
        raise field_error(name, f"must be {kind}, or empty for no limit") from None


def parse_limits(payload: dict[str, Any]) -> dict[str, Any]:
    """The limits present in ``payload``, typed; a field left out is not changed."""
    limits: dict[str, Any] = {}
    for name, raw in payload.items():
        if name not in LIMIT_FIELDS:
            raise field_error(name, f"unknown field {name!r}")
        limits[name] = _parse_value(name, raw)
    return limits
