"""The two API dialects the gateway speaks: OpenAI's (/v1) and Ollama's native one (/api).

A dialect decides how an error looks (in a body and inside a stream) and where usage is found.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from gatewayctl.proxy.errors import GatewayError
from gatewayctl.proxy.usage import NdjsonScanner, SseScanner, Usage, usage_from_openai_body


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    error_body: Callable[[GatewayError], bytes]
    stream_error: Callable[[GatewayError], bytes]
    new_scanner: Callable[[bool], SseScanner | NdjsonScanner]
    usage_from_body: Callable[[bytes], Usage | None]


def _ollama_usage(body: bytes) -> Usage | None:
    scanner = NdjsonScanner()
    scanner.feed(body.rstrip(b"\n") + b"\n")
    return scanner.usage


def _ollama_embed_usage(body: bytes) -> Usage | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    count = data.get("prompt_eval_count")
    if isinstance(count, int):
        return Usage(count, 0)
    if "embeddings" in data:  # /api/embed omits a zero count, like the done line does
        return Usage(0, 0)
    return None  # legacy /api/embeddings reports nothing: the prompt gets estimated


def _usage_from_ollama_body(body: bytes) -> Usage | None:
    return _ollama_usage(body) or _ollama_embed_usage(body)


OPENAI = Dialect(
    name="openai",
    error_body=GatewayError.openai_body,
    stream_error=lambda error: b"data: " + error.openai_body() + b"\n\n",
    new_scanner=lambda hide_usage: SseScanner(hide_usage_chunk=hide_usage),
    usage_from_body=usage_from_openai_body,
)

OLLAMA = Dialect(
    name="ollama",
    error_body=GatewayError.ollama_body,
    stream_error=lambda error: error.ollama_body() + b"\n",
    new_scanner=lambda _hide_usage: NdjsonScanner(),
    usage_from_body=_usage_from_ollama_body,
)
