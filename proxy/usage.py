"""Finding token usage in what the engine sends, without decoding every chunk.

A stream is cut into whole events (SSE) or lines (NDJSON) and each is scanned as bytes; only an
event that carries usage (``"usage"``, or Ollama's ``"done":true`` line) is decoded. When an
engine reports no usage at all (llama.cpp's server in streams), the completion is counted one
token per content event and the prompt is estimated; the record is then marked estimated.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder()
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# One content token per event: a non-empty string in a content/text field.
_TOKEN = re.compile(rb'"(?:content|text|reasoning_content|thinking|response)"\s*:\s*"(?!")')
_NULL_USAGE = re.compile(rb'"usage"\s*:\s*null')


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


def estimate_tokens(text: str) -> int:
    """About four characters a token, rounded up: the usual rule of thumb for English."""
    return math.ceil(len(text) / 4)


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts, or a batch of inputs
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return _text_of(value.get("text") or value.get("content") or "")
    if isinstance(value, int):  # token ids
        return "xxxx"
    return ""


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        text = " ".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        system = body.get("system")  # Ollama's /api/generate and /api/chat extras
        if isinstance(system, str):
            text += system
        return estimate_tokens(text) + 4 * len(messages) + 3
    for key in ("prompt", "input"):
        if key in body:
            return estimate_tokens(_text_of(body[key])) + 1
    return 1


def _usage_from_object(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def usage_from_openai_body(body: bytes) -> Usage | None:
    """The ``usage`` object of a complete OpenAI-style JSON body (it comes last, so rfind)."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    start = body.find(b"{", at)
    if start < 0:
        return None
    try:
        usage, _ = _DECODER.raw_decode(body[start:].decode("utf-8", "replace"))
    except ValueError:
        return None
    return _usage_from_object(usage)


def _data_of(event: bytes) -> bytes:
    """The payload of an SSE event's ``data:`` lines."""
    parts = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(parts)


class _StreamScanner:
    """What a stream has told so far, and the incomplete end of what was read."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.counted_tokens = 0
        self.done = False
        self.error = False
        self._tail = b""

    def _with_tail(self, chunk: bytes) -> bytes:
        return self._tail + chunk if self._tail else chunk

    def flush(self) -> bytes:
        """What is left when the stream ends (an incomplete last event or line)."""
        tail, self._tail = self._tail, b""
        return tail


class SseScanner(_StreamScanner):
    """Cuts an SSE stream into whole events, notes usage, hides injected usage chunks."""

    def __init__(self, *, hide_usage_chunk: bool) -> None:
        super().__init__()
        self.hide_usage_chunk = hide_usage_chunk

    def feed(self, chunk: bytes) -> bytes:
        """Returns the bytes of the whole events in ``chunk`` that the client should get."""
        data = self._with_tail(chunk)
        out: list[bytes] = []
        start = 0
        for match in _EVENT_END.finditer(data):
            end = match.end()
            event = data[start:end]
            start = end
            kept = self._keep(event)
            if kept:
                out.append(kept)
        self._tail = data[start:]
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _keep(self, event: bytes) -> bytes:
        """The event as the client should get it (b"" to hide it)."""
        if b'"usage"' in event and not _NULL_USAGE.search(event):
            return self._usage_event(event)
        if _TOKEN.search(event):
            self.counted_tokens += 1
        elif b"[DONE]" in event:
            self.done = True
        elif b'"error"' in event:
            self.error = True
        return event

    def _usage_event(self, event: bytes) -> bytes:
        try:
            chunk = json.loads(_data_of(event))
        except ValueError:
            return event
        if not isinstance(chunk, dict):
            return event
        choices = chunk.get("choices")
        usage = _usage_from_object(chunk.get("usage"))
        # Ollama's /v1/completions puts a zeroed usage in every chunk; only the final,
        # choice-less chunk (or a non-zero running count, as vLLM can send) is real.
        if usage is not None and (not choices or usage.prompt_tokens + usage.completion_tokens):
            self.usage = usage
        if choices:
            if _TOKEN.search(event):
                self.counted_tokens += 1
            if self.hide_usage_chunk:
                # The usage only our include_usage made the engine add to every chunk (Ollama's
                # /v1/completions): a client that did not ask gets the chunk without it.
                del chunk["usage"]
                end = event[len(event.rstrip(b"\r\n")) :]
                return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + end
            return event
        return b"" if self.hide_usage_chunk else event


class NdjsonScanner(_StreamScanner):
    """Cuts an Ollama NDJSON stream into whole lines and reads the final ``done`` line."""

    def feed(self, chunk: bytes) -> bytes:
        data = self._with_tail(chunk)
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        whole = data[:cut]
        if not whole:
            return b""
        for line in whole.splitlines():
            self._scan(line)
        return whole

    def flush(self) -> bytes:
        tail = super().flush()
        if tail.strip():
            self._scan(tail)
        return tail

    def _scan(self, line: bytes) -> None:
        if b'"done":true' in line or b'"done": true' in line:
            self.done = True
            try:
                final = json.loads(line)
            except ValueError:
                return
            if isinstance(final, dict):
                prompt = final.get("prompt_eval_count", 0)  # absent when the prompt was cached
                completion = final.get("eval_count", 0)
                if isinstance(prompt, int) and isinstance(completion, int):
                    self.usage = Usage(prompt, completion)
        elif line.startswith(b'{"error"') or b'"error":' in line[:12]:
            self.error = True
        elif _TOKEN.search(line):
            self.counted_tokens += 1
