"""users.toml validation: every rule, error messages that name the field, the demo file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from gatewayctl.proxy.config import (
    Config,
    ConfigError,
    ServerSettings,
    User,
    config_to_toml,
    ledger_path,
    load_config,
    parse_config_text,
    validate_user,
)
from gatewayctl.proxy.credentials import hash_api_key, verify_api_key, verify_password
from gatewayctl.proxy.demo import DEMO_USERS, demo_credentials_in

REPO_USERS_TOML = Path(__file__).resolve().parents[1] / "users.toml"
KEY_HASH = hash_api_key("sk-one")


def user_toml(name: str = "a", **fields: str) -> str:
    body = "".join(f"{key} = {value}\n" for key, value in fields.items())
    return f'[users."{name}"]\nrole = "user"\n{body}'


# (users.toml text, text the error must contain: the field, and what is wrong)
INVALID = {
    "unknown user field": (user_toml(colour='"red"'), "[users.a].colour: unknown field"),
    "unknown server field": ('[server]\nhots = "x"\n', "[server].hots: unknown field"),
    "unknown top-level": ("[servers]\nhost = 'x'\n", "unknown top-level table or key: servers"),
    "rps string": (user_toml(rps='"fast"'), "[users.a].rps: must be a number"),
    "rps bool": (user_toml(rps="true"), "[users.a].rps: must be a number"),
    "rps negative": (user_toml(rps="-1"), "[users.a].rps: must be >= 0"),
    "rps zero": (user_toml(rps="0"), "[users.a].rps: must be > 0"),
    "rps nan": (user_toml(rps="nan"), "[users.a].rps: must be a finite number"),
    "rps inf": (user_toml(rps="inf"), "[users.a].rps: must be a finite number"),
    "burst zero": (user_toml(rps="1", burst="0"), "[users.a].burst: must be >= 1"),
    "burst float": (user_toml(burst="1.5"), "[users.a].burst: must be an integer"),
    "quota negative": (user_toml(quota="-5"), "[users.a].quota: must be >= 0"),
    "quota string": (user_toml(quota='"10"'), "[users.a].quota: must be an integer"),
    "quota float": (user_toml(quota="10.0"), "[users.a].quota: must be an integer"),
    "max_tokens zero": (user_toml(max_tokens="0"), "[users.a].max_tokens: must be >= 1"),
    # SQLite stores 64-bit integers; a float conversion overflows long before 400 digits.
    "quota past 64 bits": (user_toml(quota="9" * 20), "[users.a].quota: must be <= "),
    "quota 400 digits": (user_toml(quota="9" * 400), "[users.a].quota: must be <= "),
    "rps 400 digits": (user_toml(rps="9" * 400), "[users.a].rps: must be <= "),
    "quota 5000 digits": (user_toml(quota="9" * 5000), "invalid TOML: Exceeds the limit"),
    "arrays nested too deeply": (
        user_toml(models="[" * 5000 + "]" * 5000),
        "invalid TOML: nested too deeply",
    ),
    "max_queue 400 digits": ("[server]\nmax_queue = " + "9" * 400 + "\n", "[server].max_queue"),
    "bad role": ('[users.a]\nrole = "root"\n', "[users.a].role: must be 'admin' or 'user'"),
    "suspended string": (user_toml(suspended='"yes"'), "[users.a].suspended: must be true"),
    "key_hash no scheme": (user_toml(key_hash='"abc"'), "[users.a].key_hash: must be a hash"),
    "password_hash int": (user_toml(password_hash="5"), "[users.a].password_hash: must be a hash"),
    "duplicate key hash": (
        user_toml("a", key_hash=f'"{KEY_HASH}"') + user_toml("b", key_hash=f'"{KEY_HASH}"'),
        "[users.b].key_hash: same API key as user 'a'",
    ),
    "upstream scheme": ('[server]\nupstream = "ftp://h"\n', "[server].upstream: must start with"),
    "upstream bare host": ('[server]\nupstream = "localhost:11434"\n', "[server].upstream"),
    "upstream empty": ('[server]\nupstream = ""\n', "[server].upstream: must be a non-empty"),
    "upstream int": ("[server]\nupstream = 5\n", "[server].upstream: must be a non-empty"),
    "port zero": ("[server]\nport = 0\n", "[server].port: must be >= 1"),
    "port too big": ("[server]\nport = 70000\n", "[server].port: must be <= 65535"),
    "port string": ('[server]\nport = "80"\n', "[server].port: must be an integer"),
    "timeout zero": ("[server]\nread_timeout = 0\n", "[server].read_timeout: must be >= 0.001"),
    "timeout nan": ("[server]\nconnect_timeout = nan\n", "[server].connect_timeout: must be a"),
    "server not table": ("server = 1\n", "[server]: must be a table"),
    "users not table": ("users = 1\n", "[users]: must be a table"),
    "user not table": ("[users]\na = 1\n", "[users.a]: must be a table"),
    "name with space": (user_toml("bad name"), "[users.bad name]: invalid user name"),
    "name leading dash": (user_toml("-x"), "[users.-x]: invalid user name"),
    "name trailing newline": (user_toml("bob\\n"), "invalid user name"),
    "name too long": (user_toml("a" * 65), "invalid user name"),
}


@pytest.mark.parametrize(("text", "message"), INVALID.values(), ids=INVALID.keys())
def test_invalid_config_is_rejected_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text)
    assert message in str(caught.value)


def test_broken_toml_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 3"):
        parse_config_text('[server]\nport = 8000\nhost = "unterminated\n')


def test_absent_limits_are_unlimited_and_round_trip() -> None:
    text = user_toml("free") + user_toml("capped", rps="2.5", burst="3", quota="0", max_tokens="9")
    config = parse_config_text(text)
    free, capped = config.users["free"], config.users["capped"]
    assert (free.rps, free.burst, free.quota, free.max_tokens) == (None, None, None, None)
    assert (capped.rps, capped.burst, capped.quota, capped.max_tokens) == (2.5, 3, 0, 9)
    assert parse_config_text(config_to_toml(config)) == config
    assert "rps" not in config_to_toml(Config(users={"free": free}))


def test_integer_rps_is_a_float_and_name_may_use_punctuation() -> None:
    config = parse_config_text(user_toml("j.doe@example-1_x", rps="2"))
    user = config.users["j.doe@example-1_x"]
    assert user.rps == 2.0
    assert isinstance(user.rps, float)


def test_upstream_trailing_slash_is_dropped() -> None:
    config = parse_config_text('[server]\nupstream = "http://h:1/"\n')
    assert config.server.upstream == "http://h:1"


@pytest.mark.parametrize(
    ("rps", "burst", "capacity"), [(None, None, 1.0), (0.5, None, 1.0), (5.0, None, 5.0), (5, 2, 2)]
)
def test_bucket_capacity_defaults_to_max_one_rps(
    rps: float | None, burst: int | None, capacity: float
) -> None:
    assert User(name="u", rps=rps, burst=burst).bucket_capacity == capacity


def test_validate_user_applies_the_file_rules_to_code_built_users() -> None:
    good = User(name="u", rps=1.0, quota=10)
    assert validate_user(good) == good
    with pytest.raises(ConfigError, match=r"\[users.u\].rps: must be >= 0"):
        validate_user(replace(good, rps=-2.0))
    with pytest.raises(ConfigError, match=r"\[users.u\].burst: must be >= 1"):
        validate_user(replace(good, burst=0))
    with pytest.raises(ConfigError, match="invalid user name"):
        validate_user(replace(good, name="no/slash"))


def test_load_config_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=f"{missing}: no such file"):
        load_config(missing)
    with pytest.raises(ConfigError, match=f"{tmp_path}: cannot read"):
        load_config(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=f"{binary}: cannot read"):
        load_config(binary)
    bad = tmp_path / "bad.toml"
    bad.write_text(user_toml(rps="-1"))
    with pytest.raises(ConfigError, match=rf"{bad}: \[users.a\].rps"):
        load_config(bad)


def test_ledger_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config_path = tmp_path / "conf" / "users.toml"
    assert ledger_path(Config(), config_path) == tmp_path / "conf" / "usage.db"
    absolute = Config(server=ServerSettings(ledger="/var/lib/usage.db"))
    assert ledger_path(absolute, config_path) == Path("/var/lib/usage.db")


def test_repo_demo_users_toml_has_the_documented_credentials() -> None:
    config = load_config(REPO_USERS_TOML)
    expected = {
        "admin": ("admin123", "sk-admin-001", "admin"),
        "alice": ("alice123", "sk-alice-123", "user"),
        "bob": ("bob123", "sk-bob-456", "user"),
        "charlie": ("char123", "sk-char-789", "user"),
    }
    assert set(config.users) == set(expected)
    for name, (password, key, role) in expected.items():
        user = config.users[name]
        assert user.role == role
        assert user.key_hash == hash_api_key(key)
        assert verify_api_key(key, user.key_hash)
        assert verify_password(password, user.password_hash)
        assert not verify_password(password + "x", user.password_hash)
        assert DEMO_USERS[name] == (password, key)
    assert config.server.host == "127.0.0.1"
    assert sorted(demo_credentials_in(config)) == sorted(expected)
    limits = {
        (u.rps, u.burst, u.quota, u.max_tokens) for n, u in config.users.items() if n != "admin"
    }
    assert len(limits) == 3, "each demo user shows a different set of limits"
    assert all(rps is not None for rps, *_ in limits)
