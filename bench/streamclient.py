"""The streaming load generator: many concurrent SSE streams from one asyncio process (raw
protocols, the httptools parser, uvloop), timing the first byte and the gap before every event.
Prints one JSON object.

A full HTTP client costs tens of microseconds per chunk, and a thousand streams at 20 tokens/s
are 20,000 chunks a second: the client would be the slowest part and its own delays would
drown the gateway's. Here a chunk costs one parser callback.

Closed loop (``--duration``): each of ``--streams`` connections runs streams back to back
(keep-alive) until the time is up. Hold (``--once``): every connection runs exactly one stream,
the starts spread over ``--ramp`` seconds, as a thousand users arriving at once would.

Run: ``python -m bench.streamclient --url http://127.0.0.1:9000 --streams 32 --duration 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools

from bench.stats import summary


@dataclass
class Tally:
    streams: int = 0
    events: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    ttfb: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    gap_times: list[float] = field(default_factory=list)  # when each gap ended

    def fail(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


class _Connection(asyncio.Protocol):
    """One keep-alive connection running one stream at a time."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally
        self._parser = httptools.HttpResponseParser(self)
        self._transport: Any = None
        self._done: asyncio.Future[None] | None = None
        self._started = 0.0
        self._last = 0.0
        self._tail = b""  # the last byte of the previous piece: "\n\n" may straddle two
        self._complete = False
        self._status = 0
        self._saw_done = False

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish("bad response")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._complete:
            self._finish("connection lost")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        events = (self._tail + body).count(b"\n\n")
        self._tail = body[-1:]
        if not events:
            return
        tally = self._tally
        if self._last == 0.0:
            tally.ttfb.append(now - self._started)
        else:
            tally.gaps.append(now - self._last)
            tally.gap_times.append(now)
        if events > 1:
            tally.gaps.extend([0.0] * (events - 1))
            tally.gap_times.extend([now] * (events - 1))
        tally.events += events
        self._last = now
        self._saw_done = self._saw_done or b"[DONE]" in body

    def on_message_complete(self) -> None:
        self._complete = True
        if self._status != 200:
            self._finish(f"status {self._status}")
        elif not self._saw_done:
            self._finish("incomplete")
        else:
            self._tally.streams += 1
            self._finish(None)

    def _finish(self, error: str | None) -> None:
        if error is not None:
            self._tally.fail(error)
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def close(self) -> None:
        self._transport.close()

    async def run(self, request: bytes) -> bool:
        """One stream; False when the connection cannot carry another."""
        self._done = asyncio.get_running_loop().create_future()
        self._started = time.perf_counter()
        self._last = 0.0
        self._tail = b""
        self._complete = self._saw_done = False
        self._transport.write(request)
        await self._done
        return self._complete and not self._transport.is_closing()


def build_request(url: str, args: argparse.Namespace) -> bytes:
    parts = urlsplit(url)
    body = json.dumps(
        {
            "model": args.model,
            "messages": [{"role": "user", "content": "Tell me a story"}],
            "max_tokens": args.tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    head = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if args.key:
        head.append(f"Authorization: Bearer {args.key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(args.url, args)
    tally = Tally()
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    deadline = started + args.duration

    async def worker(index: int) -> None:
        if args.once:
            await asyncio.sleep(args.ramp * index / max(1, args.streams))
        conn: _Connection | None = None
        try:
            while True:
                if conn is None:
                    try:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(tally), host, port
                        )
                    except OSError as exc:
                        tally.fail(type(exc).__name__)
                        return
                if not await conn.run(request):
                    conn.close()
                    conn = None
                if args.once or time.perf_counter() >= deadline:
                    return
        finally:
            if conn is not None:
                conn.close()

    await asyncio.gather(*(worker(i) for i in range(args.streams)))
    elapsed = time.perf_counter() - started
    # Steady state: once every stream has started and run a second, until a second before the
    # last event; the ramp (a thousand connections and admissions at once) is measured apart.
    first = started + (args.ramp if args.once else 0.0) + 1.0
    last = (tally.gap_times[-1] if tally.gap_times else started) - 1.0
    steady = [g for g, t in zip(tally.gaps, tally.gap_times, strict=True) if first <= t <= last]
    return {
        "streams": tally.streams,
        "events": tally.events,
        "errors": tally.errors,
        "error_kinds": tally.error_kinds,
        "elapsed_s": elapsed,
        "streams_per_s": tally.streams / elapsed,
        "events_per_s": tally.events / elapsed,
        "ttfb_ms": summary(tally.ttfb),
        "gap_ms": summary(tally.gaps),
        "steady_gap_ms": summary(steady),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--ramp", type=float, default=1.0)
    args = parser.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
