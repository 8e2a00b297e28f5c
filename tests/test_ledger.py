"""The SQLite usage ledger: committed records, durable totals, crash recovery, batching."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gatewayctl.proxy.ledger import Ledger, LedgerError, Totals, UsageRecord, read_totals


def usage(user: str, prompt: int, completion: int, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "ts": time.time(),
        "user": user,
        "model": "llama3",
        "endpoint": "chat.completions",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "estimated": False,
        "status": 200,
        "outcome": "ok",
        "latency_ms": 12.5,
        "ttft_ms": 3.0,
        "request_id": "req-1",
    }
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "usage.db"


@pytest.fixture
async def ledger(db: Path) -> AsyncIterator[Ledger]:
    ledger = Ledger(db)
    ledger.open()
    yield ledger
    ledger.close()


async def test_records_are_committed_for_other_readers(ledger: Ledger, db: Path) -> None:
    ledger.record(usage("alice", 10, 5))
    ledger.record(usage("alice", 1, 2, estimated=True, outcome="disconnected", status=499))
    ledger.record(usage("bob", 7, 0))
    # In-memory totals move at once, before the disk: quota checks never wait for a commit.
    assert ledger.totals("alice") == Totals(2, 11, 7)
    await ledger.flush()
    assert read_totals(db) == {"alice": Totals(2, 11, 7), "bob": Totals(1, 7, 0)}
    assert read_totals(db)["alice"].total_tokens == 18
    saved = rows(db, "SELECT user, estimated, status, outcome FROM requests ORDER BY id")
    assert saved == [
        ("alice", 0, 200, "ok"),
        ("alice", 1, 499, "disconnected"),
        ("bob", 0, 200, "ok"),
    ]


async def test_wal_mode(ledger: Ledger, db: Path) -> None:
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]


async def test_totals_survive_reopen(db: Path) -> None:
    first = Ledger(db)
    first.open()
    first.record(usage("alice", 3, 4))
    first.close()
    second = Ledger(db)
    second.open()
    try:
        assert second.recovered == 0
        assert second.totals("alice") == Totals(1, 3, 4)
        assert second.all_totals() == {"alice": Totals(1, 3, 4)}
        assert second.totals("nobody") == Totals()
        second.record(usage("alice", 1, 1))
        await second.flush()
        assert read_totals(db)["alice"] == Totals(2, 4, 5)
    finally:
        second.close()


async def test_settled_reservation_is_not_charged_again(db: Path) -> None:
    ledger = Ledger(db)
    ledger.open()
    reservation = await ledger.reserve("alice", 100, model="m", endpoint="chat", request_id="req-1")
    assert rows(db, "SELECT user, tokens FROM reservations") == [("alice", 100)]
    ledger.record(usage("alice", 5, 6), reservation)
    ledger.close()
    assert rows(db, "SELECT COUNT(*) FROM reservations") == [(0,)]
    reopened = Ledger(db)
    reopened.open()
    reopened.close()
    assert reopened.recovered == 0
    assert read_totals(db) == {"alice": Totals(1, 5, 6)}


async def test_reservations_with_others_in_flight_are_on_disk_when_reserve_returns(
    ledger: Ledger, db: Path
) -> None:
    # The first is committed on the spot, the others by the writer thread in shared commits.
    first = await ledger.reserve("alice", 1, model="m", endpoint="chat", request_id="r-0")
    others = await asyncio.gather(
        *(
            ledger.reserve("alice", 10, model="m", endpoint="chat", request_id=f"r-{i}")
            for i in range(1, 6)
        )
    )
    assert rows(db, "SELECT COUNT(*), SUM(tokens) FROM reservations") == [(6, 51)]
    for reservation in [first, *others]:
        ledger.record(usage("alice", 1, 0), reservation)
    await ledger.flush()
    assert rows(db, "SELECT COUNT(*) FROM reservations") == [(0,)]
    assert read_totals(db) == {"alice": Totals(6, 6, 0)}


CRASHING_GATEWAY = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from pathlib import Path
    from gatewayctl.proxy.ledger import Ledger, UsageRecord

    async def main() -> None:
        ledger = Ledger(Path(sys.argv[1]))
        ledger.open()
        ledger.record(UsageRecord(time.time(), "alice", "m", "chat", 5, 6, False, 200, "ok",
                                  1.0, None, "req-done"))
        await ledger.reserve("alice", 77, model="llama3", endpoint="chat", request_id="req-died")
        await ledger.flush()
        os._exit(0)  # dies mid-request: no settle, no close

    asyncio.run(main())
    """
)


def test_reservation_of_a_dead_process_is_charged_in_full(db: Path) -> None:
    subprocess.run([sys.executable, "-c", CRASHING_GATEWAY, str(db)], check=True, timeout=60)
    assert read_totals(db) == {"alice": Totals(1, 5, 6)}, "the reservation is not charged yet"
    ledger = Ledger(db)
    ledger.open()
    ledger.close()
    assert ledger.recovered == 1
    assert ledger.totals("alice") == Totals(2, 5, 6 + 77)
    assert read_totals(db) == {"alice": Totals(2, 5, 83)}
    interrupted = rows(
        db,
        "SELECT user, model, completion_tokens, estimated, outcome, request_id FROM requests"
        " WHERE outcome != 'ok'",
    )
    assert interrupted == [("alice", "llama3", 77, 1, "interrupted", "req-died")]
    assert rows(db, "SELECT COUNT(*) FROM reservations") == [(0,)]
    again = Ledger(db)
    again.open()
    again.close()
    assert again.recovered == 0, "charged once, not at every start"
    assert read_totals(db) == {"alice": Totals(2, 5, 83)}


async def test_many_records_are_batched(ledger: Ledger, db: Path) -> None:
    count = 10_000
    started = time.perf_counter()
    for i in range(count):
        ledger.record(usage(f"user{i % 7}", 3, 4, request_id=f"req-{i}"))
    await ledger.flush()
    elapsed = time.perf_counter() - started
    print(f"\n{count} ledger records committed in {elapsed:.3f} s")
    totals = read_totals(db)
    assert sum(t.requests for t in totals.values()) == count
    assert sum(t.total_tokens for t in totals.values()) == 7 * count
    assert rows(db, "SELECT COUNT(*) FROM requests") == [(count,)]
    assert elapsed < 30, "one commit per record would take minutes on a loaded machine"


async def test_write_failure_refuses_the_reservation_and_keeps_serving(
    ledger: Ledger, db: Path
) -> None:
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE reservations")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="reservations"):
        await ledger.reserve("alice", 5, model="m", endpoint="chat", request_id="r")
    ledger.record(usage("alice", 1, 1))
    await ledger.flush()
    assert read_totals(db) == {"alice": Totals(1, 1, 1)}


def test_read_totals_of_a_missing_or_empty_ledger(tmp_path: Path) -> None:
    assert read_totals(tmp_path / "absent.db") == {}
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert read_totals(empty) == {}


def test_read_totals_of_a_file_that_is_not_a_ledger(tmp_path: Path) -> None:
    junk = tmp_path / "usage.db"
    junk.write_text("not a database, but long enough to have a header " * 4)
    with pytest.raises(LedgerError, match=str(junk)):
        read_totals(junk)


@pytest.mark.parametrize("directory", ["with#hash", "with?query", "with%25percent", "with space"])
def test_read_totals_path_with_uri_characters(tmp_path: Path, directory: str) -> None:
    path = tmp_path / directory / "usage.db"
    path.parent.mkdir()
    ledger = Ledger(path)
    ledger.open()
    ledger.record(usage("alice", 2, 3))
    ledger.close()
    assert read_totals(path) == {"alice": Totals(1, 2, 3)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [directory], "no stray file created"


async def test_a_cancelled_reservation_is_not_charged_at_the_next_start(db: Path) -> None:
    # A request cancelled while its reservation is being committed (client gone, shutdown)
    # never runs: its reservation must not survive to be charged in full as 'interrupted'.
    ledger = Ledger(db)
    ledger.open()
    # With another request in flight, a reservation is committed by the writer thread, and
    # its request can be cancelled while it waits for that commit.
    other = await ledger.reserve("bob", 1, model="m", endpoint="chat", request_id="other")
    task = asyncio.create_task(
        ledger.reserve("alice", 500, model="m", endpoint="chat", request_id="gone")
    )
    await asyncio.sleep(0)  # the task queues its reservation and waits for the commit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ledger.flush()
    assert rows(db, "SELECT request_id FROM reservations") == [("other",)]
    ledger.record(usage("bob", 1, 0), other)
    ledger.close()
    reopened = Ledger(db)
    reopened.open()
    reopened.close()
    assert reopened.recovered == 0
    assert reopened.totals("alice") == Totals()


def test_a_second_gateway_cannot_open_a_ledger_in_use(db: Path) -> None:
    first = Ledger(db)
    first.open()
    try:
        with pytest.raises(LedgerError, match="in use by another running gateway"):
            Ledger(db).open()
    finally:
        first.close()
    again = Ledger(db)  # released on close
    again.open()
    again.close()


async def test_a_row_sqlite_cannot_store_does_not_stop_the_writer(ledger: Ledger, db: Path) -> None:
    # A lone surrogate cannot be encoded to UTF-8 and an int past 64 bits cannot be bound:
    # neither is a sqlite3.Error, and the writer thread must outlive both.
    ledger.record(usage("alice", 1, 1, model="\ud800"))
    await asyncio.wait_for(ledger.flush(), 10)
    ledger.record(usage("alice", 2**70, 1))
    await asyncio.wait_for(ledger.flush(), 10)
    await asyncio.wait_for(
        ledger.reserve("alice", 5, model="m", endpoint="chat", request_id="r"), 10
    )
    ledger.record(usage("bob", 1, 1))
    await asyncio.wait_for(ledger.flush(), 10)
    assert read_totals(db)["bob"] == Totals(1, 1, 1)
