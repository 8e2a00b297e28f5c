"""The durable usage ledger: one SQLite row per request plus per-user running totals.

Writes leave the request path: they are queued to one writer thread that commits them in
batches (WAL, synchronous=NORMAL: a committed batch survives a crash of the process). Quota
reservations are the exception that must be durable before the request is forwarded, so
``reserve`` waits for its commit; a reservation still on disk at the next start belongs to a
request that died with the process, and is charged in full then, so a crash can never let a
user through their quota.

The in-memory totals are updated at once when a record is queued, so quota checks never wait
for the disk. Other processes (the CLI, a dashboard) read the file with ``read_totals``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    user TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL,
    request_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_user_ts ON requests (user, ts);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE TABLE IF NOT EXISTS totals (
    user TEXT PRIMARY KEY,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    user TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    request_id TEXT NOT NULL
);
"""

_INSERT_REQUEST = (
    "INSERT INTO requests (ts, user, model, endpoint, prompt_tokens, completion_tokens,"
    " estimated, status, outcome, latency_ms, ttft_ms, request_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ADD_TOTALS = (
    "INSERT INTO totals (user, requests, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (user) DO UPDATE SET requests = requests + excluded.requests,"
    " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
    " completion_tokens = completion_tokens + excluded.completion_tokens"
)
_INSERT_RESERVATION = (
    "INSERT INTO reservations (id, ts, user, model, endpoint, tokens, request_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_DELETE_RESERVATION = "DELETE FROM reservations WHERE id = ?"
_BATCH = 1024
log = logging.getLogger("gatewayctl.ledger")


class LedgerError(RuntimeError):
    """The ledger could not commit; the request that needed it is refused."""


@dataclass(slots=True)
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageRecord:
    ts: float
    user: str
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    status: int
    outcome: str
    latency_ms: float
    ttft_ms: float | None
    request_id: str


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        # as_uri percent-encodes the path: a "#" or "?" in it would otherwise cut the URI and
        # open (and create) some other file.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    else:
        conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def read_totals(path: Path) -> dict[str, Totals]:
    """Per-user totals as committed on disk; for processes other than the gateway."""
    if not path.exists():
        return {}
    try:
        conn = connect(path, readonly=True)
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'totals'").fetchone():
                return {}  # created but not yet initialised
            rows = conn.execute(
                "SELECT user, requests, prompt_tokens, completion_tokens FROM totals"
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:  # not a database, unreadable: a clean error, not a traceback
        raise LedgerError(f"{path}: cannot read the usage ledger: {exc}") from None
    return {user: Totals(r, p, c) for user, r, p, c in rows}


def _recover(conn: sqlite3.Connection) -> int:
    """Charge reservations left by a process that died mid-request; returns how many."""
    rows = conn.execute(
        "SELECT ts, user, model, endpoint, tokens, request_id FROM reservations"
    ).fetchall()
    for ts, user, model, endpoint, tokens, request_id in rows:
        conn.execute(
            _INSERT_REQUEST,
            (ts, user, model, endpoint, 0, tokens, 1, 0, "interrupted", 0.0, None, request_id),
        )
        conn.execute(_ADD_TOTALS, (user, 1, 0, tokens))
    conn.execute("DELETE FROM reservations")
    return len(rows)


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._totals: dict[str, Totals] = {}
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._lock_fd: int | None = None
        self.recovered = 0

    def open(self) -> None:
        self._hold_exclusive()
        conn = connect(self.path)
        with conn:
            conn.executescript(SCHEMA)
            self.recovered = _recover(conn)
        self._totals = {
            user: Totals(r, p, c)
            for user, r, p, c in conn.execute(
                "SELECT user, requests, prompt_tokens, completion_tokens FROM totals"
            )
        }
        self._thread = threading.Thread(
            target=self._writer, args=(conn,), name="gatewayctl-ledger", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _hold_exclusive(self) -> None:
        """One gateway per ledger: a second would count in-flight reservations of the first as
        interrupted, and the two would keep separate quota totals in memory."""
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LedgerError(
                f"{self.path} is in use by another running gateway (one gateway per ledger)"
            ) from None
        self._lock_fd = fd

    def totals(self, user: str) -> Totals:
        return self._totals.get(user) or Totals()

    def all_totals(self) -> dict[str, Totals]:
        return dict(self._totals)

    async def reserve(
        self, user: str, tokens: int, *, model: str, endpoint: str, request_id: str
    ) -> int:
        """Persist a quota reservation; returns once it is committed."""
        reservation = next(self._ids)
        done = asyncio.get_running_loop().create_future()
        row = (reservation, time.time(), user, model, endpoint, tokens, request_id)
        self._queue.put(("reserve", row, done))
        try:
            await done
        except asyncio.CancelledError:
            # The request will not run: drop the row, or the next start would charge it in full.
            self._queue.put(("unreserve", reservation, None))
            raise
        return reservation

    def record(self, rec: UsageRecord, reservation: int | None = None) -> None:
        totals = self._totals.get(rec.user)
        if totals is None:
            totals = self._totals[rec.user] = Totals()
        totals.requests += 1
        totals.prompt_tokens += rec.prompt_tokens
        totals.completion_tokens += rec.completion_tokens
        self._queue.put(("record", rec, reservation))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._thread is None:
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.put(("flush", None, done))
        await done

    def _drain(self) -> Iterator[tuple[Any, ...] | None]:
        yield self._queue.get()
        for _ in range(_BATCH):
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def _writer(self, conn: sqlite3.Connection) -> None:
        running = True
        while running:
            waiters: list[asyncio.Future[None]] = []
            error: Exception | None = None
            try:
                with conn:
                    for op in self._drain():
                        if op is None:
                            running = False
                            break
                        kind, payload, extra = op
                        if kind == "reserve":
                            waiters.append(extra)
                            conn.execute(_INSERT_RESERVATION, payload)
                        elif kind == "record":
                            self._write_record(conn, payload, extra)
                        elif kind == "unreserve":
                            conn.execute(_DELETE_RESERVATION, (payload,))
                        else:
                            waiters.append(extra)
            except sqlite3.Error as exc:  # disk full, file removed: say so, keep serving
                log.error("usage ledger %s: write failed: %s", self.path, exc)
                error = exc
            for waiter in waiters:
                with contextlib.suppress(RuntimeError):  # that event loop is already closed
                    waiter.get_loop().call_soon_threadsafe(_resolve, waiter, error)
        conn.close()

    @staticmethod
    def _write_record(conn: sqlite3.Connection, rec: UsageRecord, reservation: int | None) -> None:
        conn.execute(
            _INSERT_REQUEST,
            (
                rec.ts,
                rec.user,
                rec.model,
                rec.endpoint,
                rec.prompt_tokens,
                rec.completion_tokens,
                int(rec.estimated),
                rec.status,
                rec.outcome,
                rec.latency_ms,
                rec.ttft_ms,
                rec.request_id,
            ),
        )
        conn.execute(_ADD_TOTALS, (rec.user, 1, rec.prompt_tokens, rec.completion_tokens))
        if reservation is not None:
            conn.execute(_DELETE_RESERVATION, (reservation,))


def _resolve(waiter: asyncio.Future[None], error: Exception | None) -> None:
    if waiter.done():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(LedgerError(str(error)))
