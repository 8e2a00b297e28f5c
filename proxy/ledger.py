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

import contextlib
import fcntl
import itertools
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

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
# How long settled records may wait to share a transaction: never longer than this, and never
# when a reservation is waiting for its commit. A crash in that window loses the records but not
# the reservations behind them, which are then charged in full.
_LINGER_S = 0.005
_AWAITED = ("reserve", "flush")
# A checkpoint is asked for after this many written rows (about 1000 WAL pages, SQLite's own
# threshold), and every _CHECKPOINT_IDLE_S anyway.
_CHECKPOINT_AFTER = 200
_CHECKPOINT_IDLE_S = 1.0
_MAX_INT = 2**63 - 1  # SQLite's INTEGER


def _text(value: str) -> str:
    # A lone surrogate (JSON allows "\\ud800") cannot be stored as UTF-8: keep the rest.
    return value.encode("utf-8", "replace").decode()


def _int(value: int) -> int:
    return max(-_MAX_INT, min(_MAX_INT, value))


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
        self._checkpointer: _Checkpointer | None = None
        # The writer's connection, shared with reserve() under this lock.
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()
        self._reserved_since_checkpoint = 0
        self._in_flight = 0  # reservations returned by reserve() and not yet recorded
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
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job, see _Checkpointer
        self._conn = conn
        self._checkpointer = _Checkpointer(self.path)
        self._checkpointer.start()
        self._thread = threading.Thread(
            target=self._writer, args=(conn,), name="gatewayctl-ledger", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
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
        # Imported here, not at the top: every CLI command imports this module (for Totals
        # and read_totals) and asyncio would add tens of milliseconds to each of them.
        import asyncio

        reservation = next(self._ids)
        row = (reservation, time.time(), user, _text(model), endpoint, _int(tokens), request_id)
        if not (self._in_flight == 0 and self._reserve_now(row)):
            done = asyncio.get_running_loop().create_future()
            self._queue.put(("reserve", row, done))
            try:
                await done
            except asyncio.CancelledError:
                # The request will not run: drop the row, or the next start would charge it.
                self._queue.put(("unreserve", reservation, None))
                raise
        self._in_flight += 1
        return reservation

    def _reserve_now(self, row: tuple[Any, ...]) -> bool:
        """Commit one reservation right here, on the event loop, if the writer is not using
        the connection. reserve() only asks when no other reservation is in flight.

        The request cannot go on before its reservation is on disk, so it waits either way;
        handing one small insert to the writer thread and back costs two thread wake-ups,
        about 0.3 ms on a quiet 2-core machine (most of the gateway's added latency), against
        some 30 us for the insert and commit themselves (WAL, no fsync: checkpoints run in
        their own thread). With nothing else in flight, holding the loop for that long delays
        nobody; with requests in flight, reservations go to the writer and share its commits.
        """
        conn = self._conn
        if conn is None or not self._conn_lock.acquire(blocking=False):
            return False
        try:
            with conn:
                conn.execute(_INSERT_RESERVATION, row)
            self._reserved_since_checkpoint += 1
        except sqlite3.Error as exc:
            _log_failure(self.path, exc)
            raise LedgerError(str(exc)) from None
        finally:
            self._conn_lock.release()
        return True

    def record(self, rec: UsageRecord, reservation: int | None = None) -> None:
        if reservation is not None and self._in_flight:
            self._in_flight -= 1
        totals = self._totals.get(rec.user)
        if totals is None:
            totals = self._totals[rec.user] = Totals()
        totals.requests += 1
        totals.prompt_tokens += rec.prompt_tokens
        totals.completion_tokens += rec.completion_tokens
        self._queue.put(("record", rec, reservation))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        import asyncio

        if self._thread is None:
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.put(("flush", None, done))
        await done

    def _drain(self) -> Iterator[tuple[Any, ...] | None]:
        """One batch: what is queued now, plus, while nobody waits for the commit, what arrives
        within _LINGER_S. A lone request then costs one transaction (its record rides along
        with the next reservation) instead of two."""
        op = self._queue.get()
        deadline = time.monotonic() + _LINGER_S
        waited_for = False
        for _ in range(_BATCH):
            yield op
            if op is None:
                return
            waited_for = waited_for or op[0] in _AWAITED
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                linger = deadline - time.monotonic()
                if waited_for or linger <= 0:
                    return
                try:
                    op = self._queue.get(timeout=linger)
                except queue.Empty:
                    return
        yield op

    def _writer(self, conn: sqlite3.Connection) -> None:
        running = True
        since_checkpoint = 0
        while running:
            batch = _Batch()
            for op in self._drain():
                if op is None:
                    running = False
                    break
                batch.add(*op)
            error: Exception | None = None
            try:
                with self._conn_lock:
                    since_checkpoint += self._reserved_since_checkpoint  # by reserve() itself
                    self._reserved_since_checkpoint = 0
                    with conn:
                        batch.write(conn)
            # Disk full, file removed, a value SQLite cannot bind: say so, keep serving (a
            # writer thread that died would leave every later reservation waiting forever).
            except (sqlite3.Error, ValueError, OverflowError) as exc:
                _log_failure(self.path, exc)
                error = exc
            batch.resolve(error)
            since_checkpoint += len(batch.reserved) + len(batch.records)
            if since_checkpoint >= _CHECKPOINT_AFTER and self._checkpointer is not None:
                self._checkpointer.request()
                since_checkpoint = 0
        with self._conn_lock:
            self._conn = None
            conn.close()


class _Checkpointer:
    """Copies the WAL back into the database file, from its own thread and connection.

    SQLite does this inside a commit once the WAL passes 1000 pages, fsync included, and the
    reservation waiting for that commit would wait milliseconds (the added p99 of a request).
    Here the writer only asks for it; a PASSIVE checkpoint never blocks the writer."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="gatewayctl-ledger-checkpoint", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        conn = connect(self._path)
        try:
            while True:
                self._wanted.wait(_CHECKPOINT_IDLE_S)
                self._wanted.clear()
                if self._stopping:
                    return  # closing the last connection checkpoints whatever is left
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    _log_failure(self._path, exc)
        finally:
            conn.close()


class _Batch:
    """What the writer drained from the queue, written as one transaction with one statement
    per kind (``executemany``): the thread spends less time holding the GIL than with one
    ``execute`` per row, and the event loop is woken once per batch, not once per waiter."""

    __slots__ = ("records", "released", "reserved", "totals", "waiters")

    def __init__(self) -> None:
        self.reserved: list[tuple[Any, ...]] = []
        self.records: list[tuple[Any, ...]] = []
        self.totals: dict[str, list[int]] = {}
        self.released: list[tuple[int]] = []
        self.waiters: list[asyncio.Future[None]] = []

    def add(self, kind: str, payload: Any, extra: Any) -> None:
        if kind == "reserve":
            self.reserved.append(payload)
            self.waiters.append(extra)
        elif kind == "record":
            rec: UsageRecord = payload
            self.records.append(
                (
                    rec.ts,
                    rec.user,
                    _text(rec.model),
                    rec.endpoint,
                    _int(rec.prompt_tokens),
                    _int(rec.completion_tokens),
                    int(rec.estimated),
                    rec.status,
                    rec.outcome,
                    rec.latency_ms,
                    rec.ttft_ms,
                    rec.request_id,
                )
            )
            totals = self.totals.get(rec.user)
            if totals is None:
                totals = self.totals[rec.user] = [0, 0, 0]
            totals[0] += 1
            totals[1] = _int(totals[1] + rec.prompt_tokens)
            totals[2] = _int(totals[2] + rec.completion_tokens)
            if extra is not None:
                self.released.append((extra,))
        elif kind == "unreserve":
            self.released.append((payload,))
        else:  # flush
            self.waiters.append(extra)

    def write(self, conn: sqlite3.Connection) -> None:
        # Reservations first: a request settled (or cancelled) in the same batch as its
        # reservation deletes it after it was inserted, in the same transaction.
        if self.reserved:
            conn.executemany(_INSERT_RESERVATION, self.reserved)
        if self.records:
            conn.executemany(_INSERT_REQUEST, self.records)
            conn.executemany(_ADD_TOTALS, [(user, *t) for user, t in self.totals.items()])
        if self.released:
            conn.executemany(_DELETE_RESERVATION, self.released)

    def resolve(self, error: Exception | None) -> None:
        by_loop: dict[Any, list[asyncio.Future[None]]] = {}
        for waiter in self.waiters:
            by_loop.setdefault(waiter.get_loop(), []).append(waiter)
        for loop, waiters in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that event loop is already closed
                loop.call_soon_threadsafe(_resolve, waiters, error)


def _log_failure(path: Path, exc: Exception) -> None:
    import logging  # the rare path: the CLI need not import logging for it

    logging.getLogger("gatewayctl.ledger").error("usage ledger %s: write failed: %s", path, exc)


def _resolve(waiters: list[asyncio.Future[None]], error: Exception | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(LedgerError(str(error)))
