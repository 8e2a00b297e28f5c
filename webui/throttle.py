"""Login throttling, per user name and per client address.

Each failed attempt is counted against both the name tried and the address it came from.
After a few failures the next attempt must wait (1 s, 2 s, 4 s, ... doubling), and past a
hard limit that key is locked out for a while: a brute-force run gets slowed, then refused.
An attempt is counted *before* the password is checked and forgiven on success, so a burst of
parallel guesses cannot slip through while the hashes are being computed.

The address limits are looser than the name limits because many people can share one address
(an office NAT, a reverse proxy in front of the gateway).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Policy:
    free: int  # failures allowed without delay
    lockout_after: int  # failures after which the key is refused for `window`
    window: float  # seconds a failure is remembered (and the lockout lasts)
    max_delay: float = 60.0


BY_NAME = Policy(free=3, lockout_after=10, window=15 * 60)
BY_ADDRESS = Policy(free=10, lockout_after=50, window=15 * 60)
_MAX_KEYS = 10_000


@dataclass(slots=True)
class _Failures:
    count: int
    last: float


@dataclass(frozen=True, slots=True)
class Refusal:
    message: str
    retry_after: float


class LoginThrottle:
    def __init__(
        self,
        *,
        by_name: Policy = BY_NAME,
        by_address: Policy = BY_ADDRESS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policies = {"name": by_name, "address": by_address}
        self._clock = clock
        self._failures: dict[tuple[str, str], _Failures] = {}

    def _keys(self, name: str, address: str) -> list[tuple[str, str]]:
        return [("name", name.lower()), ("address", address)]

    def _wait(self, key: tuple[str, str], now: float) -> float:
        policy = self._policies[key[0]]
        failures = self._failures.get(key)
        if failures is None or now - failures.last >= policy.window:
            return 0.0
        if failures.count >= policy.lockout_after:
            return policy.window - (now - failures.last)
        if failures.count < policy.free:
            return 0.0
        delay = min(policy.max_delay, 2.0 ** (failures.count - policy.free))
        return max(0.0, delay - (now - failures.last))

    def attempt(self, name: str, address: str) -> Refusal | None:
        """Refuse the attempt, or count it as a failure until ``succeeded`` forgives it."""
        now = self._clock()
        keys = self._keys(name, address)
        for key in keys:
            wait = self._wait(key, now)
            if wait > 0:
                return self._refusal(key, wait)
        self._prune(now)
        for key in keys:
            failures = self._failures.get(key)
            window = self._policies[key[0]].window
            if failures is None or now - failures.last >= window:
                self._failures[key] = _Failures(1, now)
            else:
                failures.count += 1
                failures.last = now
        return None

    def succeeded(self, name: str, address: str) -> None:
        """Forgive this attempt: clear the name's record and take one off the address."""
        self._failures.pop(("name", name.lower()), None)
        failures = self._failures.get(("address", address))
        if failures is not None:
            failures.count -= 1
            if failures.count <= 0:
                del self._failures[("address", address)]

    def _refusal(self, key: tuple[str, str], wait: float) -> Refusal:
        locked = self._failures[key].count >= self._policies[key[0]].lockout_after
        what = "this account" if key[0] == "name" else "your address"
        seconds = max(1, math.ceil(wait))
        if locked:
            minutes = max(1, math.ceil(wait / 60))
            message = (
                f"Too many failed logins for {what}: login is locked for {minutes} min. "
                "Ask an admin if you forgot your password."
            )
        else:
            message = f"Too many failed logins for {what}. Try again in {seconds} s."
        return Refusal(message, seconds)

    def _prune(self, now: float) -> None:
        if len(self._failures) < _MAX_KEYS:
            return
        for key, failures in list(self._failures.items()):
            if now - failures.last >= self._policies[key[0]].window:
                del self._failures[key]
        if len(self._failures) >= _MAX_KEYS:  # a flood of fresh keys: drop the oldest half
            ordered = sorted(self._failures.items(), key=lambda item: item[1].last)
            for key, _ in ordered[: len(ordered) // 2]:
                del self._failures[key]
