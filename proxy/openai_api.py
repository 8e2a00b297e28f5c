"""Planners for the OpenAI-compatible routes (/v1/chat/completions, /v1/completions,
/v1/embeddings): field validation, prompt estimate, completion limit, upstream body."""

from __future__ import annotations

from typing import Any

from gatewayctl.proxy.endpoints import Plan, storable
from gatewayctl.proxy.errors import BadRequest
from gatewayctl.proxy.usage import estimate_prompt_tokens


def typed_field(payload: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    value = payload.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise BadRequest(f"Invalid type for '{name}': expected {what}.", param=name)
    return value


def required_model(payload: dict[str, Any]) -> str:
    model = typed_field(payload, "model", (str,), "a string")
    if not model:
        raise BadRequest("You must provide a model parameter.", param="model")
    if not storable(model):
        raise BadRequest("Invalid 'model': not a valid Unicode string.", param="model")
    return str(model)


def positive_int(payload: dict[str, Any], name: str) -> int | None:
    value: int | None = typed_field(payload, name, (int,), "an integer")
    if value is not None and value < 1:
        raise BadRequest(f"Invalid '{name}': must be at least 1, got {value}.", param=name)
    return value


def _require(payload: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> None:
    if typed_field(payload, name, kinds, what) is None:
        raise BadRequest(f"Missing required parameter: '{name}'.", param=name)


def _generation_plan(payload: dict[str, Any]) -> Plan:
    model = required_model(payload)
    stream = bool(typed_field(payload, "stream", (bool,), "a boolean"))
    options = typed_field(payload, "stream_options", (dict,), "an object")
    client_wants_usage = bool(options and options.get("include_usage") is True)
    requested = [positive_int(payload, n) for n in ("max_tokens", "max_completion_tokens")]
    present = [r for r in requested if r is not None]
    choices = positive_int(payload, "n") or 1

    def write_body(limit: int | None) -> dict[str, Any]:
        if limit is not None:
            # Ollama ignores max_completion_tokens (ollama#7125): send the limit as max_tokens.
            payload.pop("max_completion_tokens", None)
            payload["max_tokens"] = limit
        if stream:
            payload["stream_options"] = {**(options or {}), "include_usage": True}
        return payload

    return Plan(
        model=model,
        prompt_estimate=estimate_prompt_tokens(payload),
        requested_limit=min(present) if present else None,
        write_body=write_body,
        choices=choices,
        hide_usage_chunk=stream and not client_wants_usage,
    )


def plan_chat(payload: dict[str, Any]) -> Plan:
    _require(payload, "messages", (list,), "an array")
    return _generation_plan(payload)


def plan_completion(payload: dict[str, Any]) -> Plan:
    _require(payload, "prompt", (str, list), "a string or an array")
    return _generation_plan(payload)


def plan_embedding(payload: dict[str, Any]) -> Plan:
    model = required_model(payload)
    _require(payload, "input", (str, list), "a string or an array")
    return Plan(
        model=model,
        prompt_estimate=estimate_prompt_tokens(payload),
        requested_limit=None,
        write_body=lambda _limit: payload,
        generates=False,
    )
