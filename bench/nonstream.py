"""Non-streaming chat completions under wrk at several concurrencies, every target in turn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.env import Env
from bench.procs import usage_of
from bench.wrk import run_wrk, write_script, wrk_path

BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 20}
)
PATH = "/v1/chat/completions"


def run(env: Env, *, seconds: float, concurrencies: tuple[int, ...]) -> dict[str, Any]:
    binary = wrk_path()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    scripts: dict[str, Path] = {
        name: write_script(env.workdir / f"wrk-{name}.lua", BODY, target.key)
        for name, target in env.targets.items()
    }
    for name, target in env.targets.items():  # open connections, fill pools, warm caches
        run_wrk(binary, target.url + PATH, scripts[name], connections=32, seconds=1)
    by_concurrency: dict[str, dict[str, Any]] = {}
    for connections in concurrencies:
        row: dict[str, Any] = {}
        for name, target in env.targets.items():
            before = usage_of(target.pid)
            run = run_wrk(
                binary, target.url + PATH, scripts[name], connections=connections, seconds=seconds
            )
            cpu = usage_of(target.pid).cpu_seconds - before.cpu_seconds
            if run.requests == 0 or run.non2xx + run.errors > run.requests // 100:
                raise RuntimeError(
                    f"{name} at c={connections}: {run.non2xx} non-2xx answers and "
                    f"{run.errors} socket errors in {run.requests} requests "
                    f"(see {env.workdir}/logs)"
                )
            row[name] = run.as_dict()
            if name != "nginx":  # its workers are other processes than the one we started
                row[name]["cpu_us_per_request"] = cpu * 1e6 / run.requests
        by_concurrency[str(connections)] = row
    result: dict[str, Any] = {"seconds": seconds, "concurrency": by_concurrency}
    if "1" in by_concurrency:
        one = by_concurrency["1"]
        result["added_ms"] = {
            q: one["gateway"][f"{q}_ms"] - one["direct"][f"{q}_ms"] for q in ("p50", "p99")
        }
    return result


def profile_target(env: Env, name: str, *, seconds: float, connections: int) -> None:
    """Load one target with wrk for ``seconds`` (while a profiler samples it)."""
    binary = wrk_path()
    assert binary is not None
    target = env.targets[name]
    script = write_script(env.workdir / f"wrk-{name}.lua", BODY, target.key)
    run_wrk(binary, target.url + PATH, script, connections=connections, seconds=seconds)
