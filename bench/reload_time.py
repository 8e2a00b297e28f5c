"""Hot reload: time from a users.toml write (through the store, as the CLI does) to the new
limit being enforced on the next request.

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


def _time_change(store: Store, client: httpx.Client, cap: int) -> float:
    expected = min(cap, ASKED)

    def change(config: Config) -> tuple[Config, User]:
        return set_limits(config, BENCH_USER, {"max_tokens": cap})

    started = time.perf_counter()
    store.update(change)
    while _cap_applied(client) != expected:
        if time.perf_counter() - started > DEADLINE_S:
            raise RuntimeError(f"max_tokens={cap} not enforced {DEADLINE_S} s after the write")
    return (time.perf_counter() - started) * 1000


def run(env: Env, *, repeat: int) -> dict[str, Any]:
    store = Store(env.users_path)
    target = env.gateway
    headers = {"authorization": f"Bearer {target.key}"}
    samples: list[float] = []
    with httpx.Client(base_url=target.url, headers=headers, timeout=10) as client:
        for _ in range(repeat):
            samples.append(_time_change(store, client, 7))
            samples.append(_time_change(store, client, BENCH_LIMITS["max_tokens"]))
    return {
        "samples": len(samples),
        "median_ms": statistics.median(samples),
        "max_ms": max(samples),
        "min_ms": min(samples),
    }
