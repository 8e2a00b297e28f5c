"""Wall time of `gatewayctl user list` and `gatewayctl usage` on a big users.toml and ledger,
and what their imports cost (``python -X importtime``)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.env import gatewayctl
from bench.fixtures import write_ledger, write_users

COMMANDS = {"user_list": ["user", "list"], "usage": ["usage"]}


def _env() -> dict[str, str]:
    # An installed package has its bytecode compiled; a dev shell that forbids writing it
    # would make every run compile the project again and time that instead.
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    return (time.perf_counter() - started) * 1000


def import_times(argv: list[str], top: int = 8) -> list[dict[str, Any]]:
    """The slowest top-level imports of one command, by cumulative microseconds."""
    script = argv[0]
    out = subprocess.run(
        [sys.executable, "-X", "importtime", script, *argv[1:]],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    rows: list[dict[str, Any]] = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cumulative_us, name = line.split(":", 1)[1].split("|")
        name = name[1:]  # nesting is shown by indentation past one space
        if not name.startswith(" "):
            rows.append({"module": name, "cumulative_ms": int(cumulative_us) / 1000})
    rows.sort(key=lambda row: -float(row["cumulative_ms"]))
    return rows[:top]


def run(workdir: Path, *, users: int, rows: int, repeat: int) -> dict[str, Any]:
    config = workdir / "cli" / "users.toml"
    write_users(config, "http://127.0.0.1:1", users)
    started = time.perf_counter()
    write_ledger(config.parent / "usage.db", rows, users)
    result: dict[str, Any] = {
        "users": users,
        "ledger_rows": rows,
        "ledger_write_s": time.perf_counter() - started,
    }
    for name, args in COMMANDS.items():
        argv = [*gatewayctl(), *args, "--config", str(config)]
        _time(argv)  # page cache, pyc files
        samples = [_time(argv) for _ in range(repeat)]
        result[name] = {
            "median_ms": statistics.median(samples),
            "min_ms": min(samples),
            "imports": import_times(argv),
        }
    return result
