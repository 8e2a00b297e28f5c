"""Session cookies, the signing key file, login throttling and dashboard form parsing, in-process
with explicit clocks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from gatewayctl.proxy.config import ConfigError, User
from gatewayctl.proxy.credentials import hash_password
from gatewayctl.proxy.errors import BadRequest
from gatewayctl.webui.forms import from_config_error, parse_limits
from gatewayctl.webui.sessions import KEY_FILE, Sessions, load_or_create_key
from gatewayctl.webui.throttle import LoginThrottle, Policy


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def alice(password: str = "pw-one") -> User:
    return User(name="alice", password_hash=hash_password(password))


def test_cookie_round_trip_and_binding() -> None:
    sessions = Sessions(b"k" * 32)
    user = alice()
    cookie, session = sessions.issue(user)
    read = sessions.read(cookie)
    assert read == session
    assert sessions.user_of(session, {"alice": user}) is user
    changed = User(name="alice", password_hash=hash_password("pw-two"))
    assert sessions.user_of(session, {"alice": changed}) is None
    assert sessions.user_of(session, {}) is None


def test_a_cookie_signed_with_another_key_is_refused() -> None:
    cookie, _ = Sessions(b"a" * 32).issue(alice())
    assert Sessions(b"b" * 32).read(cookie) is None


def test_cookies_expire() -> None:
    clock = Clock()
    sessions = Sessions(b"k" * 32, ttl=60, clock=clock)
    cookie, _ = sessions.issue(alice())
    clock.now += 59
    assert sessions.read(cookie) is not None
    clock.now += 1
    assert sessions.read(cookie) is None


def test_revoked_sessions_stay_revoked_and_are_forgotten_after_expiry() -> None:
    clock = Clock()
    sessions = Sessions(b"k" * 32, ttl=60, clock=clock)
    cookie, session = sessions.issue(alice())
    sessions.revoke(session)
    assert sessions.read(cookie) is None
    clock.now += 61
    sessions.revoke(sessions.issue(alice())[1])  # revoking prunes what expired
    assert session.sid not in sessions._revoked


def test_logging_out_anonymous_sessions_keeps_nothing() -> None:
    # Anyone can get an anonymous session and log it out, as often as they like: remembering
    # each one for the session lifetime would let any visitor grow the gateway's memory.
    sessions = Sessions(b"k" * 32)
    for _ in range(1000):
        _, session = sessions.issue()
        sessions.revoke(session)
    assert sessions._revoked == {}
    cookie, session = sessions.issue(alice())
    sessions.revoke(session)
    assert sessions.read(cookie) is None


def test_csrf_token_belongs_to_one_session() -> None:
    sessions = Sessions(b"k" * 32)
    _, one = sessions.issue()
    _, two = sessions.issue()
    assert sessions.csrf_ok(one, sessions.csrf_token(one))
    assert not sessions.csrf_ok(one, sessions.csrf_token(two))
    assert not sessions.csrf_ok(one, None)
    assert not sessions.csrf_ok(one, "")


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode) == 0o600
    assert load_or_create_key(tmp_path) == key
    assert len(key) == 32


def test_unwritable_directory_falls_back_to_a_process_key(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    assert len(load_or_create_key(missing)) == 32
    assert not missing.exists()


def test_throttle_slows_then_locks_out_by_name() -> None:
    clock = Clock()
    policy = Policy(free=3, lockout_after=6, window=900)
    throttle = LoginThrottle(by_name=policy, by_address=Policy(100, 200, 900), clock=clock)
    for _ in range(3):
        assert throttle.attempt("alice", "10.0.0.1") is None
    refusal = throttle.attempt("Alice", "10.0.0.2")  # names are case-insensitive
    assert refusal is not None
    assert refusal.retry_after == 1
    clock.now += 1
    assert throttle.attempt("alice", "10.0.0.1") is None  # 4th failure: next wait is 2 s
    clock.now += 1
    assert throttle.attempt("alice", "10.0.0.1") is not None
    clock.now += 1
    assert throttle.attempt("alice", "10.0.0.1") is None  # 5th
    clock.now += 4
    assert throttle.attempt("alice", "10.0.0.1") is None  # 6th: locked out now
    clock.now += 120
    locked = throttle.attempt("alice", "10.0.0.1")
    assert locked is not None
    assert "locked" in locked.message
    clock.now += 900
    assert throttle.attempt("alice", "10.0.0.1") is None  # the window passed
    assert throttle.attempt("bob", "10.0.0.1") is None  # another name was never held up


def test_success_forgives_the_name() -> None:
    throttle = LoginThrottle(clock=Clock())
    for _ in range(2):
        throttle.attempt("alice", "10.0.0.1")
    throttle.attempt("alice", "10.0.0.1")
    throttle.succeeded("alice", "10.0.0.1")
    for _ in range(3):
        assert throttle.attempt("alice", "10.0.0.1") is None


def test_form_values_are_typed_and_empty_lifts_a_limit() -> None:
    assert parse_limits({"rps": "2.5", "burst": "4", "quota": "1_000", "max_tokens": ""}) == {
        "rps": 2.5,
        "burst": 4,
        "quota": 1000,
        "max_tokens": None,
    }
    assert parse_limits({"quota": "none", "models": "llama3.2:*"}) == {
        "quota": None,
        "models": "llama3.2:*",
    }
    with pytest.raises(BadRequest) as caught:
        parse_limits({"burst": "2.5"})
    assert caught.value.param == "burst"
    with pytest.raises(BadRequest) as caught:
        parse_limits({"password_hash": "x"})
    assert caught.value.param == "password_hash"


def test_validation_messages_are_mapped_to_their_field() -> None:
    error = from_config_error(ConfigError("[users.alice].rps: must be >= 0, got -1.0"))
    assert (error.param, error.message) == ("rps", "must be >= 0, got -1.0")
    other = from_config_error(ConfigError("users.toml: cannot read"))
    assert other.param is None
