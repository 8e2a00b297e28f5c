"""Usage scanning of SSE and NDJSON streams, whatever the chunk boundaries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from gatewayctl.proxy.usage import (
    NdjsonScanner,
    SseScanner,
    Usage,
    estimate_prompt_tokens,
    usage_from_openai_body,
)
from hypothesis import given, settings
from hypothesis import strategies as st

OLLAMA_SEP = b"\n\n"
LLAMACPP_SEP = b"\r\n\r\n"  # sse-starlette, as llama.cpp's Python server sends it


def sse(payload: Any, sep: bytes = OLLAMA_SEP) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return b"data: " + data.encode() + sep


def chat_chunk(content: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {"role": "assistant", "content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [choice],
    } | extra


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    total = prompt + completion
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def chat_stream(
    contents: Sequence[str], usage: tuple[int, int] | None, sep: bytes = OLLAMA_SEP
) -> tuple[bytes, bytes]:
    """(the whole stream, the usage-only event in it, or b"")."""
    events = [sse(chat_chunk(c), sep) for c in contents]
    events.append(sse(chat_chunk("", "stop"), sep))
    usage_event = sse(usage_chunk(*usage), sep) if usage else b""
    events += [usage_event, sse("[DONE]", sep)]
    return b"".join(events), usage_event


def feed_all(scanner: SseScanner | NdjsonScanner, chunks: Sequence[bytes]) -> bytes:
    return b"".join(scanner.feed(chunk) for chunk in chunks) + scanner.flush()


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@pytest.mark.parametrize("sep", [OLLAMA_SEP, LLAMACPP_SEP], ids=["lf", "crlf"])
@pytest.mark.parametrize("hide", [True, False])
def test_sse_usage_chunk_hidden_only_when_asked(sep: bytes, hide: bool) -> None:
    stream, usage_event = chat_stream(["Hel", "lo", "!"], (12, 3), sep)
    scanner = SseScanner(hide_usage_chunk=hide)
    out = feed_all(scanner, [stream])
    assert scanner.usage == Usage(12, 3)
    assert scanner.counted_tokens == 3
    assert scanner.done
    assert not scanner.error
    assert out == (stream.replace(usage_event, b"") if hide else stream)


def test_sse_crlf_events_are_cut_whole() -> None:
    first, second = sse(chat_chunk("a"), LLAMACPP_SEP), sse(chat_chunk("b"), LLAMACPP_SEP)
    scanner = SseScanner(hide_usage_chunk=False)
    assert scanner.feed(first + second[:10]) == first
    assert scanner.feed(second[10:-1]) == b""  # "\r\n\r" is not the end of an event yet
    assert scanner.feed(second[-1:]) == second
    assert scanner.counted_tokens == 2


def test_sse_without_usage_counts_tokens() -> None:
    stream, _ = chat_stream(["one", "", "two", "three"], None, LLAMACPP_SEP)
    scanner = SseScanner(hide_usage_chunk=True)
    assert feed_all(scanner, [stream]) == stream
    assert scanner.usage is None
    assert scanner.counted_tokens == 3, "empty content is not a token"


def test_sse_null_usage_is_an_ordinary_chunk() -> None:
    event = sse(chat_chunk("x", usage=None))
    scanner = SseScanner(hide_usage_chunk=True)
    assert scanner.feed(event) == event
    assert scanner.usage is None
    assert scanner.counted_tokens == 1


def completion_chunk(text: str, usage: tuple[int, int], choices: bool = True) -> dict[str, Any]:
    """Ollama's /v1/completions: a zeroed usage in every chunk, the real one last."""
    prompt, completion = usage
    body: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "text_completion",
        "choices": [{"text": text, "index": 0, "finish_reason": None}] if choices else [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }
    return body


def test_sse_zeroed_usage_chunks_are_ignored() -> None:
    chunks = [sse(completion_chunk(t, (0, 0))) for t in ("a", "b")]
    final = sse(completion_chunk("", (7, 2), choices=False))
    scanner = SseScanner(hide_usage_chunk=True)
    out = feed_all(scanner, [*chunks, final, sse("[DONE]")])
    assert scanner.usage == Usage(7, 2)
    assert scanner.counted_tokens == 2
    # Zeroed chunks carry text: never hidden, but the usage the client did not ask for is cut.
    stripped = [completion_chunk(t, (0, 0)) for t in ("a", "b")]
    assert out == b"".join(sse({k: v for k, v in c.items() if k != "usage"}) for c in stripped) + (
        sse("[DONE]")
    )
    # A zeroed usage in a chunk with text must not replace a real count seen before it.
    scanner = SseScanner(hide_usage_chunk=False)
    feed_all(scanner, [sse(completion_chunk("a", (5, 1))), sse(completion_chunk("b", (0, 0)))])
    assert scanner.usage == Usage(5, 1)


def test_sse_last_usage_wins() -> None:
    # vLLM's continuous usage stats: a running count in every chunk, then the final one.
    events = [sse(chat_chunk("a", usage=usage_chunk(4, 1)["usage"]))]
    events.append(sse(chat_chunk("b", usage=usage_chunk(4, 2)["usage"])))
    events.append(sse(usage_chunk(4, 2)))
    events.append(sse(usage_chunk(4, 3)))
    scanner = SseScanner(hide_usage_chunk=True)
    out = feed_all(scanner, events)
    assert scanner.usage == Usage(4, 3)
    assert scanner.counted_tokens == 2
    assert out == sse(chat_chunk("a")) + sse(chat_chunk("b")), "running counts cut too"


def test_sse_error_event_and_unterminated_tail() -> None:
    error = sse({"error": {"message": "model crashed", "type": "server_error"}})
    scanner = SseScanner(hide_usage_chunk=False)
    assert (
        scanner.feed(sse(chat_chunk("a")) + error + b'data: {"partial')
        == sse(chat_chunk("a")) + error
    )
    assert scanner.error
    assert not scanner.done
    assert scanner.flush() == b'data: {"partial'
    assert scanner.flush() == b""


contents = st.lists(st.text(max_size=8), max_size=12)
cuts = st.lists(st.integers(min_value=0, max_value=4000), max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    contents=contents,
    usage=st.none() | st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    sep=st.sampled_from([OLLAMA_SEP, LLAMACPP_SEP]),
    hide=st.booleans(),
    cuts=cuts,
)
def test_sse_any_chunking_gives_the_same_result(
    contents: list[str],
    usage: tuple[int, int] | None,
    sep: bytes,
    hide: bool,
    cuts: list[int],
) -> None:
    stream, usage_event = chat_stream(contents, usage, sep)
    scanner = SseScanner(hide_usage_chunk=hide)
    out = feed_all(scanner, split_at(stream, cuts))
    assert out == (stream.replace(usage_event, b"") if hide and usage_event else stream)
    assert scanner.usage == (Usage(*usage) if usage else None)
    assert scanner.counted_tokens == sum(1 for c in contents if c)
    assert scanner.done


def ndjson_stream(contents: Sequence[str], final: dict[str, Any]) -> bytes:
    lines = [
        {"model": "m", "message": {"role": "assistant", "content": c}, "done": False}
        for c in contents
    ]
    lines.append({"model": "m", "message": {"role": "assistant", "content": ""}, **final})
    return b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)


DONE = {"done_reason": "stop", "done": True, "prompt_eval_count": 11, "eval_count": 4}


def test_ndjson_done_line_gives_usage() -> None:
    stream = ndjson_stream(["a", "b", ""], DONE)
    scanner = NdjsonScanner()
    assert feed_all(scanner, [stream]) == stream
    assert scanner.usage == Usage(11, 4)
    assert scanner.counted_tokens == 2
    assert scanner.done
    assert not scanner.error


def test_ndjson_done_without_prompt_eval_count() -> None:
    # Ollama leaves prompt_eval_count out when the whole prompt came from its cache.
    scanner = NdjsonScanner()
    final = {"done": True, "eval_count": 6}
    feed_all(scanner, [ndjson_stream(["x"], final)])
    assert scanner.usage == Usage(0, 6)


def test_ndjson_done_with_spaces_and_generate_lines() -> None:
    stream = b'{"response": "Hi", "done": false}\n{"response": "", "done": true, "eval_count": 1}\n'
    scanner = NdjsonScanner()
    feed_all(scanner, [stream])
    assert scanner.done
    assert scanner.usage == Usage(0, 1)
    assert scanner.counted_tokens == 1


def test_ndjson_error_line() -> None:
    stream = ndjson_stream(["a"], {"done": False})[:-1] + b'\n{"error":"model runner crashed"}\n'
    scanner = NdjsonScanner()
    assert feed_all(scanner, [stream]) == stream
    assert scanner.error
    assert not scanner.done
    assert scanner.usage is None


def test_ndjson_unterminated_last_line_is_scanned_at_flush() -> None:
    stream = ndjson_stream(["a"], DONE).rstrip(b"\n")
    scanner = NdjsonScanner()
    head = scanner.feed(stream)
    assert scanner.usage is None
    assert head + scanner.flush() == stream
    assert scanner.usage == Usage(11, 4)


@settings(max_examples=150, deadline=None)
@given(contents=contents, cuts=cuts, prompt=st.none() | st.integers(0, 10**6))
def test_ndjson_any_chunking_gives_the_same_result(
    contents: list[str], cuts: list[int], prompt: int | None
) -> None:
    final: dict[str, Any] = {"done": True, "eval_count": len(contents)}
    if prompt is not None:
        final["prompt_eval_count"] = prompt
    stream = ndjson_stream(contents, final)
    scanner = NdjsonScanner()
    assert feed_all(scanner, split_at(stream, cuts)) == stream
    assert scanner.usage == Usage(prompt or 0, len(contents))
    assert scanner.counted_tokens == sum(1 for c in contents if c)


def test_usage_from_openai_body() -> None:
    body = json.dumps({"choices": [{"message": {"content": '"usage": no'}}], **usage_chunk(9, 2)})
    assert usage_from_openai_body(body.encode()) == Usage(9, 2)
    assert usage_from_openai_body(b'{"choices": []}') is None
    assert usage_from_openai_body(b'{"usage": {"prompt_tokens": "x"}}') is None
    assert usage_from_openai_body(b'{"usage": {"prompt_tokens": 3') is None


def test_estimate_prompt_tokens() -> None:
    chat = {"messages": [{"role": "user", "content": "x" * 40}]}
    assert estimate_prompt_tokens(chat) == 10 + 4 + 3
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 8}]}]}
    assert estimate_prompt_tokens(parts) == 2 + 4 + 3
    assert estimate_prompt_tokens({"prompt": "y" * 9}) == 3 + 1
    assert estimate_prompt_tokens({"input": ["ab", "cd"]}) == 2 + 1
    assert estimate_prompt_tokens({}) == 1
