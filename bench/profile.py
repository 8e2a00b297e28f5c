"""Sampling the gateway with py-spy under load, and boiling the stacks down to a top list.

py-spy writes collapsed stacks (``thread;frame;frame;... count``); a function's *self* share
counts samples where it is the innermost frame, its *total* share samples where it appears at
all. Coroutines run from uvloop's C code, so their stacks start at the task, not at main().
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, out: Path, seconds: float, load: Callable[[], None]) -> Path:
    """Sample ``pid`` while ``load()`` runs; returns the collapsed-stack file."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    argv = [binary, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--threads"]
    argv += ["--duration", str(max(1, round(seconds))), "--format", "raw", "-o", str(out)]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        load()
    finally:
        _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
    return out


def _short(frame: str) -> str:
    """``send (httpx/_client.py:1629)`` -> ``httpx/_client.py:send``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{name}"


def summarize(collapsed: Path, top: int = 25) -> dict[str, Any]:
    """Shares of the main thread's samples (the event loop: the gateway's bottleneck), plus
    how the samples split between threads (the ledger writes from threads of its own)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        head, _, rest = stack.partition(";")
        thread = head.split("): ", 1)[1] if head.startswith("thread (") else "?"
        threads[thread] += count
        frames = [_short(f) for f in rest.split(";") if "(" in f]
        if thread != "MainThread" or not frames:
            continue
        samples += count
        own[frames[-1]] += count
        by_file[frames[-1].rsplit(":", 1)[0]] += count
        for frame in set(frames):
            total[frame] += count

    def share(counter: collections.Counter[str], of: int) -> list[dict[str, Any]]:
        return [
            {"function": name, "percent": round(100 * n / of, 1)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": samples,
        "threads": share(threads, sum(threads.values()) or 1),
        "self": share(own, samples or 1),
        "total": share(total, samples or 1),
        "self_by_file": share(by_file, samples or 1),
    }
