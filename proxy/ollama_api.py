"""Planners for Ollama's native generating routes (/api/chat, /api/generate, /api/embed,
/api/embeddings): field validation, prompt estimate, completion limit, upstream body.

Ollama's output cap is ``options.num_predict``; any value below 1 (the default -1, and -2,
"fill the context") means no cap, so the gateway's cap takes its place. Streaming is the
default: only ``"stream": false`` asks for one JSON object.
"""

from __future__ import annotations

from typing import Any

from gatewayctl.proxy.endpoints import Plan
from gatewayctl.proxy.errors import BadRequest
from gatewayctl.proxy.openai_api import required_model, typed_field
from gatewayctl.proxy.usage import estimate_prompt_tokens, estimate_tokens


def _options(payload: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] | None = typed_field(payload, "options", (dict,), "an object")
    return options or {}


def requested_num_predict(options: dict[str, Any]) -> int | None:
    """The client's own cap, or None when it asked for none (absent, -1, -2, 0)."""
    value = options.get("num_predict")
    if value is None:
        return None
    # Ollama reads options loosely (a JSON number into an int field), so 64.0 means 64.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            f"invalid options.num_predict: expected an integer, got {value!r}", param="options"
        )
    return value if value > 0 else None


def _generation_plan(payload: dict[str, Any], prompt_estimate: int) -> Plan:
    model = required_model(payload)
    typed_field(payload, "stream", (bool,), "a boolean")
    options = _options(payload)

    def write_body(limit: int | None) -> dict[str, Any]:
        if limit is not None:
            payload["options"] = {**options, "num_predict": limit}
        return payload

    return Plan(
        model=model,
        prompt_estimate=prompt_estimate,
        requested_limit=requested_num_predict(options),
        write_body=write_body,
    )


def plan_chat(payload: dict[str, Any]) -> Plan:
    # No messages is legal: Ollama then just loads (or with keep_alive 0, unloads) the model.
    typed_field(payload, "messages", (list,), "an array")
    return _generation_plan(payload, estimate_prompt_tokens(payload))


def plan_generate(payload: dict[str, Any]) -> Plan:
    typed_field(payload, "prompt", (str,), "a string")
    system = typed_field(payload, "system", (str,), "a string") or ""
    estimate = estimate_prompt_tokens(payload) + estimate_tokens(system)
    return _generation_plan(payload, estimate)


def _embedding_plan(payload: dict[str, Any]) -> Plan:
    return Plan(
        model=required_model(payload),
        prompt_estimate=estimate_prompt_tokens(payload),
        requested_limit=None,
        write_body=lambda _limit: payload,
        generates=False,
    )


def plan_embed(payload: dict[str, Any]) -> Plan:
    inputs = typed_field(payload, "input", (str, list), "a string or an array of strings")
    if isinstance(inputs, list) and not all(isinstance(i, str) for i in inputs):
        raise BadRequest("invalid type for 'input': expected an array of strings", param="input")
    return _embedding_plan(payload)


def plan_embeddings(payload: dict[str, Any]) -> Plan:
    """The legacy route: it reports no token count, so the prompt is charged as estimated."""
    typed_field(payload, "prompt", (str,), "a string")
    return _embedding_plan(payload)
