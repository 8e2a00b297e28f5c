"""The dashboard's usage windows read from a real SQLite ledger, checked against a brute-force
count of the same rows, across reads that reuse the totals of finished hours."""

from __future__ import annotations

import random
from pathlib import Path

from gatewayctl.proxy.ledger import Ledger, UsageRecord
from gatewayctl.webui.activity import HOUR, HOURS, ActivityReader, Window

Row = tuple[float, str, int]  # ts, user, tokens
T0 = 1_750_000_000.0 - 1_750_000_000.0 % HOUR  # on the hour


def record(path: Path, rows: list[Row]) -> None:
    ledger = Ledger(path)
    ledger.open()
    for ts, user, tokens in rows:
        ledger.record(
            UsageRecord(
                ts, user, "m", "chat.completions", 1, tokens - 1, False, 200, "ok", 1.0, None, "r"
            )
        )
    ledger.close()


def expected(rows: list[Row], now: float) -> dict[str, object]:
    def window(since: float) -> dict[str, Window]:
        found: dict[str, Window] = {}
        for ts, user, tokens in rows:
            if since <= ts <= now:
                found[user] = found.get(user, Window()) + Window(1, tokens)
        return found

    first = (now // HOUR - (HOURS - 1)) * HOUR
    hourly: dict[str, list[int]] = {}
    for ts, user, tokens in rows:
        if first <= ts <= now:
            hourly.setdefault(user, [0] * HOURS)[int((ts - first) // HOUR)] += tokens
    seen: dict[str, float] = {}
    for ts, user, _ in rows:
        seen[user] = max(seen.get(user, ts), ts)
    return {
        "hour": window(now - HOUR),
        "day": window(now - HOURS * HOUR),
        "hourly": hourly,
        "seen": seen,
    }


def check(reader: ActivityReader, rows: list[Row], now: float) -> None:
    activity = reader.read(["alice", "bob", "carol"], now)
    want = expected([r for r in rows if r[0] <= now], now)
    got = {
        "hour": activity.last_hour,
        "day": activity.last_day,
        "hourly": activity.hourly,
        "seen": activity.last_seen,
    }
    assert got == want


def test_windows_match_a_brute_force_count_across_reads(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    rng = random.Random(3)
    rows: list[Row] = []
    for _ in range(3000):  # 30 hours of history before T0, some on hour boundaries
        ts = T0 - rng.choice([rng.uniform(0, 30 * HOUR), rng.randrange(0, 30) * HOUR])
        rows.append((ts, rng.choice(["alice", "bob"]), rng.randint(1, 500)))
    record(path, rows)
    reader = ActivityReader(path)
    now = T0 + 1234.5
    check(reader, rows, now)
    for step in range(5):  # time passes, more requests come, finished hours are reused
        later = [(now + rng.uniform(0, 2000), rng.choice(["alice", "carol"]), 7) for _ in range(50)]
        rows += later
        record(path, later)
        now += 2000 + step * 997
        check(reader, rows, now)


def test_a_request_committed_just_after_its_hour_ends_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    record(path, [(T0 - 10, "alice", 5)])
    reader = ActivityReader(path)
    assert reader.read(["alice"], T0 + 5).hourly["alice"][-2] == 5
    late = [(T0 - 0.5, "alice", 3)]  # settled at 10:59:59.5, committed at 11:00:05+
    record(path, late)
    activity = reader.read(["alice"], T0 + 60)
    assert activity.hourly["alice"][-2] == 8
    assert activity.last_hour["alice"] == Window(2, 8)


def test_an_empty_or_missing_ledger_reads_as_no_activity(tmp_path: Path) -> None:
    activity = ActivityReader(tmp_path / "none.db").read(["alice"], T0)
    assert (activity.last_day, activity.hourly, activity.total_hourly()) == ({}, {}, [0] * 24)
