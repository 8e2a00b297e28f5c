"""What the dashboard reads from the usage ledger: recent requests and tokens per user.

Queries run on a read-only SQLite connection in a worker thread (the ledger's writer thread
keeps writing meanwhile, WAL lets both proceed) and the answer is shared for a second, so any
number of open dashboards cost one set of queries per second.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gatewayctl.proxy.ledger import connect

HOUR = 3600
HOURS = 24


@dataclass(frozen=True, slots=True)
class Window:
    requests: int = 0
    tokens: int = 0


@dataclass(slots=True)
class Activity:
    start: float  # the first hourly bucket begins here (epoch seconds, on the hour)
    hours: int
    last_hour: dict[str, Window] = field(default_factory=dict)
    last_day: dict[str, Window] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    hourly: dict[str, list[int]] = field(default_factory=dict)  # tokens per hour, oldest first

    def total_hourly(self) -> list[int]:
        return [sum(series[i] for series in self.hourly.values()) for i in range(self.hours)]


def read_activity(path: Path, users: Iterable[str], now: float, hours: int = HOURS) -> Activity:
    start = (now // HOUR - (hours - 1)) * HOUR
    activity = Activity(start=start, hours=hours)
    if not path.exists():
        return activity
    conn = connect(path, readonly=True)
    try:
        windows = conn.execute(
            "SELECT user, SUM(ts >= ?), SUM(CASE WHEN ts >= ? THEN prompt_tokens"
            " + completion_tokens ELSE 0 END), COUNT(*), SUM(prompt_tokens + completion_tokens)"
            " FROM requests WHERE ts >= ? GROUP BY user",
            (now - HOUR, now - HOUR, now - 24 * HOUR),
        ).fetchall()
        for user, hour_requests, hour_tokens, day_requests, day_tokens in windows:
            activity.last_hour[user] = Window(hour_requests, hour_tokens)
            activity.last_day[user] = Window(day_requests, day_tokens)
        buckets = conn.execute(
            "SELECT user, CAST((ts - ?) / ? AS INTEGER) AS bucket,"
            " SUM(prompt_tokens + completion_tokens) FROM requests WHERE ts >= ?"
            " GROUP BY user, bucket",
            (start, HOUR, start),
        ).fetchall()
        for user, bucket, tokens in buckets:
            if 0 <= bucket < hours:
                series = activity.hourly.setdefault(user, [0] * hours)
                series[bucket] += tokens
        # One indexed lookup per configured user beats a GROUP BY over the whole history.
        for user in users:
            (seen,) = conn.execute(
                "SELECT MAX(ts) FROM requests WHERE user = ?", (user,)
            ).fetchone()
            if seen is not None:
                activity.last_seen[user] = seen
    except sqlite3.OperationalError:  # the gateway has not created the tables yet
        pass
    finally:
        conn.close()
    return activity


class ActivityCache:
    def __init__(
        self,
        path: Path,
        *,
        max_age: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._max_age = max_age
        self._clock = clock
        self._lock = asyncio.Lock()
        self._value: Activity | None = None
        self._users: frozenset[str] = frozenset()
        self._read_at = 0.0

    async def get(self, users: Iterable[str]) -> Activity:
        wanted = frozenset(users)
        async with self._lock:
            now = self._clock()
            fresh = now - self._read_at < self._max_age and wanted <= self._users
            if self._value is None or not fresh:
                self._value = await asyncio.to_thread(read_activity, self._path, wanted, now)
                self._users = wanted
                self._read_at = now
            return self._value
