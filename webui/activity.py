"""What the dashboard reads from the usage ledger: recent requests and tokens per user.

Queries run on a read-only SQLite connection in a worker thread (the ledger's writer thread
keeps writing meanwhile; WAL lets both proceed), and the answer is shared for a second, so any
number of open dashboards cost one refresh per second.

A refresh must stay cheap on a busy gateway (scanning a day of rows takes about 250 ms per
200,000 requests here), so the totals of each finished hour are read once and kept; a refresh
then scans only the current hour, the last 60 minutes, and the part of the oldest hour that is
still inside the last 24 hours. An hour counts as finished a little after it ends, so a request
settled at 10:59:59 and committed a moment later is not lost from hour 10.
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
DAY = HOURS * HOUR
SETTLED_AFTER = 30.0  # seconds after its end before an hour's totals are kept for good

_TOKENS = "prompt_tokens + completion_tokens"


@dataclass(frozen=True, slots=True)
class Window:
    requests: int = 0
    tokens: int = 0

    def __add__(self, other: Window) -> Window:
        return Window(self.requests + other.requests, self.tokens + other.tokens)


Hourly = dict[str, Window]  # one hour: user -> what they did in it


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


def _by_user(rows: Iterable[tuple[str, int, int | None]]) -> Hourly:
    return {user: Window(requests, tokens or 0) for user, requests, tokens in rows}


class ActivityReader:
    """Reads ``Activity`` from a ledger file, keeping the totals of finished hours."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._settled: dict[int, Hourly] = {}  # hour number (epoch // HOUR) -> totals

    def _hours(self, conn: sqlite3.Connection, first: int, last: int) -> dict[int, Hourly]:
        """Per-user totals of each hour from ``first`` to ``last`` inclusive."""
        found: dict[int, Hourly] = {hour: {} for hour in range(first, last + 1)}
        rows = conn.execute(
            f"SELECT CAST(ts / {HOUR} AS INTEGER) AS hour, user, COUNT(*), SUM({_TOKENS})"
            " FROM requests WHERE ts >= ? AND ts < ? GROUP BY hour, user",
            (first * HOUR, (last + 1) * HOUR),
        )
        for hour, user, requests, tokens in rows:
            if hour in found:
                found[hour][user] = Window(requests, tokens or 0)
        return found

    def _window(self, conn: sqlite3.Connection, since: float, until: float | None) -> Hourly:
        """Per-user totals from ``since`` to ``until`` (None: up to now)."""
        return _by_user(
            conn.execute(
                f"SELECT user, COUNT(*), SUM({_TOKENS}) FROM requests"
                " WHERE ts >= ? AND ts < ? GROUP BY user",
                (since, float("inf") if until is None else until),
            )
        )

    def read(self, users: Iterable[str], now: float) -> Activity:
        current = int(now // HOUR)
        first = current - (HOURS - 1)  # the chart's first hour
        activity = Activity(start=first * HOUR, hours=HOURS)
        if not self.path.exists():
            return activity
        conn = connect(self.path, readonly=True)
        try:
            self._fill(activity, conn, users, now, current, first)
        except sqlite3.OperationalError:  # the gateway has not created the tables yet
            pass
        finally:
            conn.close()
        return activity

    def _fill(
        self,
        activity: Activity,
        conn: sqlite3.Connection,
        users: Iterable[str],
        now: float,
        current: int,
        first: int,
    ) -> None:
        for hour in [h for h in self._settled if h < first]:
            del self._settled[hour]
        # Never empty: the current hour is never settled.
        missing = [h for h in range(first, current + 1) if h not in self._settled]
        fresh = self._hours(conn, missing[0], current)
        for hour, totals in fresh.items():
            if (hour + 1) * HOUR + SETTLED_AFTER <= now:
                self._settled[hour] = totals
        hours = {**fresh, **self._settled}

        # The last 24 hours: the chart's hours plus the tail of the hour before them.
        day = self._window(conn, now - DAY, first * HOUR)
        for index, hour in enumerate(range(first, current + 1)):
            for user, window in hours[hour].items():
                day[user] = day.get(user, Window()) + window
                series = activity.hourly.setdefault(user, [0] * HOURS)
                series[index] = window.tokens
        activity.last_day = day
        activity.last_hour = self._window(conn, now - HOUR, None)
        # One indexed lookup per configured user beats a GROUP BY over the whole history.
        for user in users:
            (seen,) = conn.execute(
                "SELECT MAX(ts) FROM requests WHERE user = ?", (user,)
            ).fetchone()
            if seen is not None:
                activity.last_seen[user] = seen


class ActivityCache:
    def __init__(
        self,
        path: Path,
        *,
        max_age: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reader = ActivityReader(path)
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
                self._value = await asyncio.to_thread(self._reader.read, wanted, now)
                self._users = wanted
                self._read_at = now
            return self._value
