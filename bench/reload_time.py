"""Hot reload: time from a users.toml write (through the store, as the CLI does) to the new
limit being enforced on the next request; the store's own write time is reported apart.

The limit changed is the bench user's ``max_tokens`` cap. The fake engine reports the
``max_tokens`` it received as the completion tokens, so each answer shows which cap the
gateway applied; requests are sent back to back until the new one shows.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
from gatewayctl.proxy.accounts import set_limits
from gatewayctl.proxy.config import Config, User
from gatewayctl.proxy.store import Store

from bench.env import Env
from bench.fixtures import BENCH_LIMITS, BENCH_USER

ASKED = 1000
DEADLINE_S = 10.0


def _cap_applied(client: httpx.Client) -> int:
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ASKED}
    response = client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    tokens: int = response.json()["usage"]["completion_tokens"]
    return tokens


def _time_change(store: Store, client: httpx.Client, cap: int) -> tuple[float, float]:
    """(ms the store took to write the file, ms from the file written to the cap enforced)."""
    expected = min(cap, ASKED)

    def change(config: Config) -> tuple[Config, User]:
        return set_limits(config, BENCH_USER, {"max_tokens": cap})

    started = time.perf_counter()
    store.update(change)
    written = time.perf_counter()
    while _cap_applied(client) != expected:
        if time.perf_counter() - written > DEADLINE_S:
            raise RuntimeError(f"max_tokens={cap} not enforced {DEADLINE_S} s after the write")
    return (written - started) * 1000, (time.perf_counter() - written) * 1000


def run(env: Env, *, repeat: int) -> dict[str, Any]:
    store = Store(env.users_path)
    target = env.gateway
    headers = {"authorization": f"Bearer {target.key}"}
    writes: list[float] = []
    samples: list[float] = []
    with httpx.Client(base_url=target.url, headers=headers, timeout=10) as client:
        for _ in range(repeat):
            for cap in (7, int(BENCH_LIMITS["max_tokens"])):
                write_ms, enforced_ms = _time_change(store, client, cap)
                writes.append(write_ms)
                samples.append(enforced_ms)
    return {
        "samples": len(samples),
        "median_ms": statistics.median(samples),
        "max_ms": max(samples),
        "min_ms": min(samples),
        "store_write_median_ms": statistics.median(writes),
    }
