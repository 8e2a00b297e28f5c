"""Admission control: the per-user token bucket and quota reservations.

Both live in this process's memory today. They sit behind small classes whose every decision
is one synchronous call (check and take in one step), which is the shape a Redis backend needs
(one Lua script per call) when several workers must share them. Until then ``serve`` refuses
more than one worker, so no two processes keep separate buckets.

Quota semantics: a user's quota bounds their lifetime total tokens (prompt + completion) as
recorded in the ledger. At admission a request reserves its estimated prompt plus its whole
effective completion limit, clamped to what remains; when it ends, the reservation is replaced
by the tokens really used. Concurrent requests therefore can never together exceed the quota
by more than the error of the prompt estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gatewayctl.proxy.config import User
from gatewayctl.proxy.ledger import Ledger


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds until one request is allowed again (0 when allowed)
    reset_after: float  # seconds until the bucket is full again


class RateLimiter:
    """Token buckets by user name; they outlive config reloads, only rate and size change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, user: User) -> RateDecision | None:
        """Take one request from the user's bucket; None when the user has no rate limit."""
        rate = user.rps
        if rate is None:
            return None
        capacity = user.bucket_capacity
        now = self._clock()
        bucket = self._buckets.get(user.name)
        if bucket is None:
            bucket = self._buckets[user.name] = _Bucket(capacity, now)
        else:
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        retry_after = 0.0 if allowed else (1.0 - bucket.tokens) / rate
        return RateDecision(
            allowed=allowed,
            limit=math.floor(capacity),
            remaining=math.floor(bucket.tokens),
            retry_after=retry_after,
            reset_after=(capacity - bucket.tokens) / rate,
        )

    def forget(self, names: set[str]) -> None:
        """Drop buckets of users who no longer exist."""
        for name in names:
            self._buckets.pop(name, None)


class QuotaBook:
    """Tokens reserved by requests in flight, checked together with the ledger's totals."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._reserved: dict[str, int] = {}

    def available(self, user: User) -> int | None:
        """Tokens the user may still reserve; None when the user has no quota."""
        if user.quota is None:
            return None
        used = self._ledger.totals(user.name).total_tokens
        return max(0, user.quota - used - self._reserved.get(user.name, 0))

    def reserve(self, user: User, tokens: int) -> None:
        self._reserved[user.name] = self._reserved.get(user.name, 0) + tokens

    def release(self, user_name: str, tokens: int) -> None:
        left = self._reserved.get(user_name, 0) - tokens
        if left > 0:
            self._reserved[user_name] = left
        else:
            self._reserved.pop(user_name, None)

    def reserved(self, user_name: str) -> int:
        return self._reserved.get(user_name, 0)


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds)}s"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s"


def rate_headers(decision: RateDecision) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-ratelimit-limit-requests", str(decision.limit).encode()),
        (b"x-ratelimit-remaining-requests", str(decision.remaining).encode()),
        (b"x-ratelimit-reset-requests", format_duration(decision.reset_after).encode()),
    ]
