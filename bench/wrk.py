"""Driving wrk with a POST body and reading its figures back as JSON (from a Lua ``done``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WRK = "/usr/bin/wrk"
_MARK = "BENCH_JSON "

_SCRIPT = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{mark}{{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    errors: int
    non2xx: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrk_path() -> str | None:
    return WRK if Path(WRK).exists() else shutil.which("wrk")


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def write_script(path: Path, body: str, key: str | None) -> Path:
    auth = f'wrk.headers["Authorization"] = {_lua_string("Bearer " + key)}' if key else ""
    path.write_text(_SCRIPT.format(body=_lua_string(body), auth=auth, mark=_MARK))
    return path


def run_wrk(binary: str, url: str, script: Path, *, connections: int, seconds: float) -> WrkResult:
    threads = max(1, min(2, connections))
    argv = [
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith(_MARK):
            raw = json.loads(line[len(_MARK) :])
            seconds_run = raw["duration_us"] / 1e6
            return WrkResult(
                requests=raw["requests"],
                rps=raw["requests"] / seconds_run if seconds_run else 0.0,
                p50_ms=raw["p50_us"] / 1000,
                p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                mean_ms=raw["mean_us"] / 1000,
                errors=raw["errors"],
                non2xx=raw["non2xx"],
            )
    raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
