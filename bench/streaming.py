"""Streaming figures: throughput of short streams, pacing of paced ones, and a thousand held
streams with the gateway's CPU and memory read from /proc while they run."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

from bench.env import Env, Target
from bench.procs import python, usage_of

PACE_MS = 50  # 20 tokens/s, a fast engine as one user sees it


def client(target: Target, *args: str, timeout: float) -> dict[str, Any]:
    argv = python("bench.streamclient", "--url", target.url, *args)
    if target.key:
        argv += ["--key", target.key]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=timeout)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(env: Env, *, seconds: float, streams: int = 32) -> dict[str, Any]:
    """Per target: unpaced 20-token streams back to back, then streams paced at 20 tokens/s."""
    throughput: dict[str, Any] = {}
    paced: dict[str, Any] = {}
    common = ["--streams", str(streams), "--duration", str(seconds)]
    for name, target in env.targets.items():
        throughput[name] = client(target, *common, "--tokens", "20", timeout=seconds + 60)
    for name, target in env.targets.items():
        model = f"bench@{PACE_MS}ms"
        paced[name] = client(
            target, *common, "--tokens", "20", "--model", model, timeout=seconds + 60
        )
    result: dict[str, Any] = {"streams": streams, "throughput": throughput, "paced": paced}
    result["added_ms"] = {
        "ttfb_p50": _added(throughput, "ttfb_ms", "p50"),
        "ttfb_p99": _added(throughput, "ttfb_ms", "p99"),
        "gap_p50": _added(paced, "gap_ms", "p50"),
        "gap_p99": _added(paced, "gap_ms", "p99"),
    }
    return result


def _added(results: dict[str, Any], figure: str, q: str) -> float:
    return float(results["gateway"][figure][q] - results["direct"][figure][q])


class _Sampler:
    """Samples a process's RSS every 100 ms in a thread; CPU time is read at both ends."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Sampler:
        self.before = usage_of(self.pid)
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = usage_of(self.pid)
        self.wall = time.perf_counter() - self.started

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_rss_kb = max(self.peak_rss_kb, usage_of(self.pid).rss_kb)

    def figures(self) -> dict[str, float]:
        return {
            "rss_before_mb": self.before.rss_kb / 1024,
            "rss_peak_mb": max(self.peak_rss_kb, self.after.rss_kb) / 1024,
            "cpu_percent": 100 * (self.after.cpu_seconds - self.before.cpu_seconds) / self.wall,
        }


def run_held(env: Env, *, streams: int, hold_seconds: float, ramp: float) -> dict[str, Any]:
    """``streams`` concurrent streams at 20 tokens/s, directly and through the gateway."""
    tokens = max(4, round(hold_seconds * 1000 / PACE_MS))
    args = ["--streams", str(streams), "--once", "--ramp", str(ramp), "--tokens", str(tokens)]
    args += ["--model", f"bench@{PACE_MS}ms"]
    timeout = hold_seconds + ramp + 120
    result: dict[str, Any] = {"streams": streams, "tokens_per_stream": tokens, "pace_ms": PACE_MS}
    result["direct"] = client(env.direct, *args, timeout=timeout)
    with _Sampler(env.gateway.pid) as sampler:
        result["gateway"] = client(env.gateway, *args, timeout=timeout)
    result["gateway_process"] = sampler.figures()
    result["added_ms"] = {
        "gap_p50": _added(result, "gap_ms", "p50"),
        "gap_p99": _added(result, "gap_ms", "p99"),
        "steady_gap_p50": _added(result, "steady_gap_ms", "p50"),
        "steady_gap_p99": _added(result, "steady_gap_ms", "p99"),
        "ttfb_p50": _added(result, "ttfb_ms", "p50"),
    }
    return result
