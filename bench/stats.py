"""Percentiles of samples in seconds, reported in milliseconds."""

from __future__ import annotations


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return 0.0
    rank = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 50) * 1000,
        "p90": percentile(ordered, 90) * 1000,
        "p99": percentile(ordered, 99) * 1000,
        "max": (ordered[-1] if ordered else 0.0) * 1000,
    }
