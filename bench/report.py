"""The results as a table (markdown, so it can be pasted into the README) and target checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

COLUMNS = ("direct", "gateway", "baseline", "nginx")
Row = tuple[str, dict[str, float], str]  # figure, value by target, format


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return ""
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "mb":
        return f"{value:.0f} MB"
    if kind == "pct":
        return f"{value:.0f} %"
    if kind == "us":
        return f"{value:.0f} µs"
    return f"{value:.2f} ms"


def _ratio(row: dict[str, float], over: str, kind: str) -> str:
    if "gateway" not in row or not row.get(over) or kind not in ("int", "ms", "us"):
        return ""
    return f"{row['gateway'] / row[over]:.2f}x"


def _rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    nonstream = results.get("nonstream")
    if nonstream:
        for conc, by_target in nonstream["concurrency"].items():

            def pick(key: str, by: dict[str, Any] = by_target) -> dict[str, float]:
                return {name: figures[key] for name, figures in by.items()}

            rows.append((f"non-stream c={conc}: req/s", pick("rps"), "int"))
            rows.append((f"non-stream c={conc}: p50", pick("p50_ms"), "ms"))
            rows.append((f"non-stream c={conc}: p99", pick("p99_ms"), "ms"))
            cpu = {
                n: f["cpu_us_per_request"]
                for n, f in by_target.items()
                if "cpu_us_per_request" in f
            }
            rows.append((f"non-stream c={conc}: CPU per request", cpu, "us"))
        if "added_ms" in nonstream:
            added = nonstream["added_ms"]
            rows.append(("added latency c=1: p50", {"gateway": added["p50"]}, "ms"))
            rows.append(("added latency c=1: p99", {"gateway": added["p99"]}, "ms"))
    stream = results.get("stream")
    if stream:
        throughput, paced = stream["throughput"], stream["paced"]
        n = stream["streams"]

        def of(runs: dict[str, Any], key: str, sub: str | None = None) -> dict[str, float]:
            return {t: (r[key][sub] if sub else r[key]) for t, r in runs.items()}

        rows.append((f"stream c={n}: streams/s", of(throughput, "streams_per_s"), "int"))
        rows.append((f"stream c={n}: chunks/s", of(throughput, "events_per_s"), "int"))
        rows.append((f"stream c={n}: TTFB p50", of(throughput, "ttfb_ms", "p50"), "ms"))
        rows.append((f"stream c={n}: TTFB p99", of(throughput, "ttfb_ms", "p99"), "ms"))
        rows.append((f"paced c={n}: inter-chunk p50", of(paced, "gap_ms", "p50"), "ms"))
        rows.append((f"paced c={n}: inter-chunk p99", of(paced, "gap_ms", "p99"), "ms"))
    held = results.get("streams1k")
    if held:
        n = held["streams"]
        runs = {t: held[t] for t in ("direct", "gateway")}
        for q in ("p50", "p99"):
            values = {t: r["steady_gap_ms"][q] for t, r in runs.items()}
            rows.append((f"{n} streams held: inter-chunk {q}", values, "ms"))
        for q in ("p50", "p99"):
            values = {t: r["gap_ms"][q] for t, r in runs.items()}
            rows.append((f"{n} streams incl. ramp: inter-chunk {q}", values, "ms"))
        rows.append(
            (f"{n} streams: TTFB p50", {t: r["ttfb_ms"]["p50"] for t, r in runs.items()}, "ms")
        )
        rows.append((f"{n} streams: errors", {t: r["errors"] for t, r in runs.items()}, "int"))
        proc = held["gateway_process"]
        rows.append((f"{n} streams: gateway RSS peak", {"gateway": proc["rss_peak_mb"]}, "mb"))
        rows.append((f"{n} streams: gateway CPU", {"gateway": proc["cpu_percent"]}, "pct"))
    cli = results.get("cli")
    if cli:
        what = f"({cli['users']} users, {cli['ledger_rows']:,} rows)"
        rows.append((f"`user list` {what}", {"gateway": cli["user_list"]["median_ms"]}, "ms"))
        rows.append((f"`usage` {what}", {"gateway": cli["usage"]["median_ms"]}, "ms"))
    reload = results.get("reload")
    if reload:
        rows.append(
            ("hot reload: write -> enforced, median", {"gateway": reload["median_ms"]}, "ms")
        )
        rows.append(("hot reload: write -> enforced, max", {"gateway": reload["max_ms"]}, "ms"))
        rows.append(
            (
                "hot reload: the store's write itself",
                {"gateway": reload["store_write_median_ms"]},
                "ms",
            )
        )
    return rows


def table(results: dict[str, Any]) -> str:
    header = ["figure", *COLUMNS, "gateway/direct", "gateway/baseline"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for figure, values, kind in _rows(results):
        cells = [figure, *(_fmt(values.get(c), kind) for c in COLUMNS)]
        cells += [_ratio(values, "direct", kind), _ratio(values, "baseline", kind)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


Check = tuple[str, Callable[[dict[str, Any]], float], str, float]
_CHECKS: list[Check] = [
    (
        "non-stream c=32 req/s",
        lambda r: r["nonstream"]["concurrency"]["32"]["gateway"]["rps"],
        ">=",
        3000,
    ),
    (
        "non-stream c=32 gateway/baseline",
        lambda r: (
            r["nonstream"]["concurrency"]["32"]["gateway"]["rps"]
            / r["nonstream"]["concurrency"]["32"]["baseline"]["rps"]
        ),
        ">=",
        0.75,
    ),
    (
        "non-stream c=32 capacity of one core, from CPU per request (req/s)",
        lambda r: 1e6 / r["nonstream"]["concurrency"]["32"]["gateway"]["cpu_us_per_request"],
        ">=",
        3000,
    ),
    ("added p50 c=1 (ms)", lambda r: r["nonstream"]["added_ms"]["p50"], "<=", 0.5),
    ("added p99 c=1 (ms)", lambda r: r["nonstream"]["added_ms"]["p99"], "<=", 2.0),
    (
        "held streams: added inter-chunk p99 (ms)",
        lambda r: r["streams1k"]["added_ms"]["steady_gap_p99"],
        "<=",
        10.0,
    ),
    (
        "held streams: gateway RSS (MB)",
        lambda r: r["streams1k"]["gateway_process"]["rss_peak_mb"],
        "<=",
        300,
    ),
    ("`user list` (ms)", lambda r: r["cli"]["user_list"]["median_ms"], "<", 300),
    ("`usage` (ms)", lambda r: r["cli"]["usage"]["median_ms"], "<", 300),
]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    checked = []
    for name, measure, op, goal in _CHECKS:
        try:
            value = measure(results)
        except (KeyError, ZeroDivisionError):
            continue  # that figure was not measured in this run
        ok = value >= goal if op == ">=" else value <= goal if op == "<=" else value < goal
        checked.append(
            {"target": name, "value": round(value, 3), "goal": f"{op} {goal:g}", "ok": ok}
        )
    return checked


def targets_text(checked: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  [{'ok' if c['ok'] else 'MISS'}] {c['target']}: {c['value']:g} (goal {c['goal']})"
        for c in checked
    )
