"""``python -m bench``: start the fake engine, the gateway, the bare baseline and nginx, drive
them, print a table and write the figures as JSON (bench/results/<timestamp>.json)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import cli_times, nonstream, profile, reload_time, streaming
from bench.env import Env, started
from bench.report import table, targets, targets_text

SUITES = ("nonstream", "stream", "streams1k", "cli", "reload")
RESULTS = Path(__file__).resolve().parent / "results"


def _machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        rev = ""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": rev,
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument(
        "--only", action="append", choices=SUITES, help="run only this suite (repeatable)"
    )
    parser.add_argument("--seconds", type=float, help="duration of each load run")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway at c=32")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON")
    return parser.parse_args(argv)


def _run_suites(env: Env | None, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    quick, suites = args.quick, args.only or list(SUITES)
    seconds = args.seconds or (1.0 if quick else 5.0)
    results: dict[str, Any] = {}
    if "nonstream" in suites and env:
        concurrencies = (1, 32) if quick else (1, 32, 256)
        results["nonstream"] = nonstream.run(env, seconds=seconds, concurrencies=concurrencies)
        _progress("nonstream", results)
    if args.profile and env:
        out = work / "gateway.collapsed"
        profile.record(
            env.gateway.pid,
            out,
            seconds,
            lambda: nonstream.profile_target(env, "gateway", seconds=seconds, connections=32),
        )
        results["profile"] = profile.summarize(out, top=60)
        results["profile"]["collapsed"] = str(out)
    if "stream" in suites and env:
        results["stream"] = streaming.run(env, seconds=seconds)
        _progress("stream", results)
    if "streams1k" in suites and env:
        streams = 200 if quick else 1000
        hold = 2.0 if quick else 10.0
        results["streams1k"] = streaming.run_held(env, streams=streams, hold_seconds=hold, ramp=1.0)
        _progress("streams1k", results)
    if "reload" in suites and env:
        results["reload"] = reload_time.run(env, repeat=2 if quick else 5)
        _progress("reload", results)
    if "cli" in suites:
        rows = 100_000 if quick else 1_000_000
        results["cli"] = cli_times.run(work, users=1000, rows=rows, repeat=3 if quick else 7)
        _progress("cli", results)
    return results


def _progress(suite: str, results: dict[str, Any]) -> None:
    print(f"-- {suite} done", file=sys.stderr, flush=True)


def profile_text(summary: dict[str, Any]) -> None:
    print("\nprofile of the gateway at c=32 (py-spy): samples by thread")
    for row in summary["threads"][:5]:
        print(f"  {row['percent']:5.1f} %  {row['function']}")
    # The frames every sample of the loop passes through, from main() down to the loop.
    outer: tuple[str, ...] = ("typer/", "gatewayctl:", "cli/", "uvicorn/main.py")
    outer += ("uvicorn/server.py", "uvicorn/_compat.py", "asyncio/runners.py:Runner.run")
    for kind in ("self", "total"):
        print(f"main thread, {kind} time:")
        rows = [r for r in summary[kind] if kind == "self" or not r["function"].startswith(outer)]
        for row in rows[:20]:
            print(f"  {row['percent']:5.1f} %  {row['function']}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    suites = args.only or list(SUITES)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output: dict[str, Any] = {
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "started": stamp,
        "machine": _machine(),
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory(prefix="gatewayctl-bench-") as tmp:
        work = Path(tmp)
        if any(s != "cli" for s in suites):
            with started(work, baseline=not args.no_baseline, nginx=not args.no_nginx) as env:
                output["targets_run"] = sorted(env.targets)
                output.update(_run_suites(env, args, work))
        else:
            output.update(_run_suites(None, args, work))
        if args.profile and "profile" in output:
            kept = args.out / f"{stamp}-gateway.collapsed"
            args.out.mkdir(parents=True, exist_ok=True)
            kept.write_bytes(Path(output["profile"]["collapsed"]).read_bytes())
            output["profile"]["collapsed"] = str(kept)
    output["targets"] = targets(output)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{stamp}.json"
    path.write_text(json.dumps(output, indent=2))
    print(table(output))
    print()
    print("targets (one worker):")
    print(targets_text(output["targets"]))
    if "profile" in output:
        profile_text(output["profile"])
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
