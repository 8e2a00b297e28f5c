"""The streaming load generator: many concurrent SSE streams from one asyncio process (aiohttp,
uvloop), timing the first byte and the gap before every event. Prints one JSON object.

Closed loop (``--duration``): each of ``--streams`` workers opens streams back to back until
the time is up. Hold (``--once``): every worker opens exactly one stream, the starts spread
over ``--ramp`` seconds, as a thousand users arriving at once would.

Run: ``python -m bench.streamclient --url http://127.0.0.1:9000 --streams 32 --duration 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.stats import summary


@dataclass
class Tally:
    streams: int = 0
    events: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    ttfb: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)

    def fail(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def one_stream(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], tally: Tally
) -> None:
    started = time.perf_counter()
    last = 0.0
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                tally.fail(f"status {response.status}")
                return
            done = False
            async for data in response.content.iter_any():
                now = time.perf_counter()
                events = data.count(b"\n\n")
                if not events:
                    continue
                if last == 0.0:
                    tally.ttfb.append(now - started)
                else:
                    tally.gaps.append(now - last)
                tally.gaps.extend([0.0] * (events - 1))
                tally.events += events
                last = now
                done = done or b"[DONE]" in data
            if not done:
                tally.fail("incomplete")
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.fail(type(exc).__name__)
        return
    tally.streams += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = args.url.rstrip("/") + "/v1/chat/completions"
    body = json.dumps(
        {
            "model": args.model,
            "messages": [{"role": "user", "content": "Tell me a story"}],
            "max_tokens": args.tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    headers = {"content-type": "application/json"}
    if args.key:
        headers["authorization"] = f"Bearer {args.key}"
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        deadline = started + args.duration

        async def worker(index: int) -> None:
            if args.once:
                await asyncio.sleep(args.ramp * index / max(1, args.streams))
                await one_stream(session, url, body, headers, tally)
                return
            while time.perf_counter() < deadline:
                await one_stream(session, url, body, headers, tally)

        await asyncio.gather(*(worker(i) for i in range(args.streams)))
        elapsed = time.perf_counter() - started
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
