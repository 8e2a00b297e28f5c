"""The token bucket (on an injected clock) and the quota book's reservation arithmetic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gatewayctl.proxy.config import User
from gatewayctl.proxy.ledger import Ledger, UsageRecord
from gatewayctl.proxy.limits import (
    QuotaBook,
    RateDecision,
    RateLimiter,
    format_duration,
    rate_headers,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> RateLimiter:
    return RateLimiter(clock=clock)


def take(limiter: RateLimiter, user: User) -> RateDecision:
    decision = limiter.acquire(user)
    assert decision is not None
    return decision


def test_no_rps_means_no_limit(limiter: RateLimiter) -> None:
    user = User(name="free")
    assert all(limiter.acquire(user) is None for _ in range(100))


def test_burst_then_refused_with_retry_after(limiter: RateLimiter) -> None:
    user = User(name="u", rps=1.0, burst=3)
    decisions = [take(limiter, user) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert {d.limit for d in decisions} == {3}
    assert decisions[0].retry_after == 0.0
    assert decisions[3].retry_after == pytest.approx(1.0)
    assert decisions[3].reset_after == pytest.approx(3.0)


def test_refill_at_rps(limiter: RateLimiter, clock: FakeClock) -> None:
    user = User(name="u", rps=4.0, burst=2)
    assert [take(limiter, user).allowed for _ in range(3)] == [True, True, False]
    clock.advance(0.125)  # half a token
    refused = take(limiter, user)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.125)
    clock.advance(0.125)
    assert take(limiter, user).allowed
    assert not take(limiter, user).allowed


def test_refill_never_exceeds_capacity(limiter: RateLimiter, clock: FakeClock) -> None:
    user = User(name="u", rps=10.0, burst=2)
    take(limiter, user)
    clock.advance(3600)
    assert [take(limiter, user).allowed for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize(("rps", "capacity"), [(0.5, 1), (1.0, 1), (5.0, 5), (2.5, 2)])
def test_capacity_defaults_to_max_one_rps(limiter: RateLimiter, rps: float, capacity: int) -> None:
    user = User(name="u", rps=rps)
    allowed = 0
    while take(limiter, user).allowed:
        allowed += 1
    assert allowed == capacity
    assert take(limiter, user).limit == capacity


def test_slow_rate_retry_after(limiter: RateLimiter, clock: FakeClock) -> None:
    user = User(name="u", rps=0.5)
    assert take(limiter, user).allowed
    refused = take(limiter, user)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(2.0)
    clock.advance(1.9)
    assert not take(limiter, user).allowed
    clock.advance(0.1)
    assert take(limiter, user).allowed


def test_rate_change_keeps_the_bucket(limiter: RateLimiter, clock: FakeClock) -> None:
    slow = User(name="u", rps=1.0, burst=2)
    assert [take(limiter, slow).allowed for _ in range(3)] == [True, True, False]
    # A reload raising the rate must not hand out a fresh full bucket.
    fast = User(name="u", rps=10.0, burst=5)
    refused = take(limiter, fast)
    assert not refused.allowed
    assert refused.limit == 5
    assert refused.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    assert take(limiter, fast).allowed


def test_lower_burst_clamps_a_full_bucket(limiter: RateLimiter) -> None:
    assert take(limiter, User(name="u", rps=1.0, burst=10)).remaining == 9
    smaller = User(name="u", rps=1.0, burst=2)
    assert [take(limiter, smaller).allowed for _ in range(3)] == [True, True, False]


def test_users_have_separate_buckets_and_forget(limiter: RateLimiter) -> None:
    a, b = User(name="a", rps=1.0), User(name="b", rps=1.0)
    assert take(limiter, a).allowed
    assert not take(limiter, a).allowed
    assert take(limiter, b).allowed
    limiter.forget({"a"})
    assert take(limiter, a).allowed, "a forgotten user starts with a full bucket"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "usage.db")
    ledger.open()
    yield ledger
    ledger.close()


def record(ledger: Ledger, user: str, prompt: int, completion: int) -> None:
    ledger.record(
        UsageRecord(0.0, user, "m", "chat", prompt, completion, False, 200, "ok", 1.0, None, "r")
    )


def test_quota_book_reserve_release(ledger: Ledger) -> None:
    book = QuotaBook(ledger)
    user = User(name="u", quota=100)
    assert book.available(User(name="free")) is None
    assert book.available(user) == 100
    record(ledger, "u", 10, 20)
    assert book.available(user) == 70
    book.reserve(user, 50)
    book.reserve(user, 15)
    assert book.reserved("u") == 65
    assert book.available(user) == 5
    book.reserve(user, 30)  # over-reserved: available clamps at zero
    assert book.available(user) == 0
    book.release("u", 30)
    book.release("u", 50)
    assert book.reserved("u") == 15
    assert book.available(user) == 55
    book.release("u", 40)  # releasing more than is reserved never goes negative
    assert book.reserved("u") == 0
    assert book.available(user) == 70
    assert book.available(User(name="other", quota=5)) == 5


def test_quota_zero_allows_nothing(ledger: Ledger) -> None:
    assert QuotaBook(ledger).available(User(name="u", quota=0)) == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.1204, "121ms"), (1.0, "1s"), (1.2, "2s"), (360.0, "6m0s"), (61.5, "1m2s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_rate_headers_follow_openai() -> None:
    decision = RateDecision(allowed=False, limit=3, remaining=0, retry_after=1, reset_after=2.5)
    assert dict(rate_headers(decision)) == {
        b"x-ratelimit-limit-requests": b"3",
        b"x-ratelimit-remaining-requests": b"0",
        b"x-ratelimit-reset-requests": b"3s",
    }
