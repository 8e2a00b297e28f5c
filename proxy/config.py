"""The users.toml data model: parsing, validation and serialisation.

Everything that reads or writes users.toml goes through ``parse_config`` (so the CLI, the web
UI and the hot-reloading proxy reject exactly the same files) and ``config_to_toml``.
A limit that is absent from a user's table is unlimited; TOML has no null.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import tomli_w

Role = Literal["admin", "user"]
ROLES: tuple[Role, ...] = ("admin", "user")
UpstreamKind = Literal["ollama", "openai"]
UPSTREAM_KINDS: tuple[UpstreamKind, ...] = ("ollama", "openai")
# \Z, not $: "$" also matches before a trailing newline, which would let "bob\n" in.
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
DEFAULT_UPSTREAM = "http://127.0.0.1:11434"
MAX_INTEGER = 2**63 - 1


class ConfigError(ValueError):
    """users.toml is unreadable or invalid; the message names the offending field or line."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    upstream: str = DEFAULT_UPSTREAM
    # Relative paths are resolved against the directory holding users.toml.
    ledger: str = "usage.db"
    connect_timeout: float = 5.0
    # Longest silence tolerated from the engine, before the first byte or between two chunks.
    read_timeout: float = 300.0
    max_body_bytes: int = 32 * 1024 * 1024
    # Default cap on requests in flight per upstream (None: no cap, nothing ever queues).
    max_in_flight: int | None = None
    # Requests waiting for a saturated upstream: at most max_queue, each at most queue_timeout s.
    max_queue: int = 256
    queue_timeout: float = 30.0
    # Seconds between two health checks of each upstream.
    health_interval: float = 5.0


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """One engine from an ``[[upstreams]]`` table."""

    url: str
    # Names or globs of the models it serves; empty: every model.
    models: tuple[str, ...] = ()
    # None: the [server] default.
    max_in_flight: int | None = None
    # Decides the health probe (/api/version or /v1/models) and whether /api routes may use it.
    kind: UpstreamKind = "ollama"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role = "user"
    key_hash: str | None = None
    password_hash: str | None = None
    rps: float | None = None
    burst: int | None = None
    quota: int | None = None
    max_tokens: int | None = None
    concurrency: int | None = None  # requests in flight at once, queued ones included
    suspended: bool = False
    # Glob patterns of the models this user may use (see proxy/models.py); None: all models.
    models: tuple[str, ...] | None = None

    @property
    def bucket_capacity(self) -> float:
        """How many requests may arrive at once; defaults to max(1, rps)."""
        if self.burst is not None:
            return float(self.burst)
        return max(1.0, self.rps or 0.0)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSettings = field(default_factory=ServerSettings)
    users: Mapping[str, User] = field(default_factory=dict)
    # Empty: the single [server].upstream.
    upstreams: tuple[UpstreamSettings, ...] = ()

    def effective_upstreams(self) -> tuple[UpstreamSettings, ...]:
        return self.upstreams or (UpstreamSettings(url=self.server.upstream),)

    def by_key_hash(self) -> dict[str, User]:
        return {u.key_hash: u for u in self.users.values() if u.key_hash}

    def with_user(self, user: User) -> Config:
        users = dict(self.users)
        users[user.name] = user
        return replace(self, users=users)

    def without_user(self, name: str) -> Config:
        users = dict(self.users)
        del users[name]
        return replace(self, users=users)


_SERVER_FIELDS = {f.name: f for f in fields(ServerSettings)}
_USER_FIELDS = frozenset(f.name for f in fields(User)) - {"name"}
_UPSTREAM_FIELDS = frozenset(f.name for f in fields(UpstreamSettings))


def _number(where: str, value: Any, *, integer: bool, minimum: float) -> float | int:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: must be {kind}, got {value!r}")
    number: float | int = value
    if isinstance(number, int) and number > MAX_INTEGER:
        # What SQLite can store (quotas and reservations end up there); bigger ones would also
        # overflow the float conversion below.
        raise ConfigError(f"{where}: must be <= {MAX_INTEGER}")
    if not math.isfinite(number):  # TOML has nan and inf; no limit or timeout means either
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if number < minimum:
        raise ConfigError(f"{where}: must be >= {minimum:g}, got {value!r}")
    return number


def _parse_server(table: Any) -> ServerSettings:
    if not isinstance(table, dict):
        raise ConfigError("[server]: must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"[server].{key}"
        if key not in _SERVER_FIELDS:
            raise ConfigError(f"{where}: unknown field")
        if key in ("host", "upstream", "ledger"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: must be a non-empty string")
            values[key] = _url(where, value) if key == "upstream" else value
        elif key in ("port", "max_body_bytes", "max_in_flight", "max_queue"):
            values[key] = _number(where, value, integer=True, minimum=1)
            if key == "port" and value > 65535:
                raise ConfigError(f"{where}: must be <= 65535, got {value!r}")
        else:
            values[key] = float(_number(where, value, integer=False, minimum=0.001))
    return ServerSettings(**values)


_MODEL_PATTERN = re.compile(r"^[^\s,]{1,200}$")


def _parse_models(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: must be a list of model name patterns, got {value!r}")
    for pattern in value:
        if not isinstance(pattern, str) or not _MODEL_PATTERN.match(pattern):
            raise ConfigError(
                f"{where}: {pattern!r} is not a model name pattern "
                "(1 to 200 characters, no spaces or commas)"
            )
    return tuple(value)


def _url(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


def _parse_upstream(index: int, table: Any) -> UpstreamSettings:
    at = f"[[upstreams]] #{index + 1}"
    if not isinstance(table, dict):
        raise ConfigError(f"{at}: must be a table")
    if "url" not in table:
        raise ConfigError(f"{at}.url: missing (the engine's base URL)")
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{at}.{key}"
        if key not in _UPSTREAM_FIELDS:
            raise ConfigError(f"{where}: unknown field")
        if key == "url":
            values[key] = _url(where, value)
        elif key == "models":
            values[key] = _parse_models(where, value)
            if not value:
                raise ConfigError(f"{where}: must not be empty (leave it out to serve every model)")
        elif key == "max_in_flight":
            values[key] = _number(where, value, integer=True, minimum=1)
        elif value not in UPSTREAM_KINDS:  # kind
            raise ConfigError(f"{where}: must be 'ollama' or 'openai', got {value!r}")
        else:
            values[key] = value
    return UpstreamSettings(**values)


def _parse_upstreams(data: Mapping[str, Any]) -> tuple[UpstreamSettings, ...]:
    tables = data.get("upstreams")
    if tables is None:
        return ()
    if not isinstance(tables, list) or not tables:
        raise ConfigError("upstreams: must be one or more [[upstreams]] tables")
    if isinstance(data.get("server"), dict) and "upstream" in data["server"]:
        raise ConfigError(
            "[server].upstream: not allowed together with [[upstreams]] "
            "(move it into an [[upstreams]] table)"
        )
    upstreams = tuple(_parse_upstream(i, t) for i, t in enumerate(tables))
    seen: set[str] = set()
    for i, upstream in enumerate(upstreams):
        if upstream.url in seen:
            raise ConfigError(f"[[upstreams]] #{i + 1}.url: {upstream.url} is listed twice")
        seen.add(upstream.url)
    return upstreams


def _parse_user(name: str, table: Any) -> User:
    if not USER_NAME.match(name):
        raise ConfigError(
            f"[users.{name}]: invalid user name (letters, digits, and _ . @ -, at most 64)"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"[users.{name}]: must be a table")
    values: dict[str, Any] = {"name": name}
    for key, value in table.items():
        where = f"[users.{name}].{key}"
        if key not in _USER_FIELDS:
            raise ConfigError(f"{where}: unknown field")
        if key == "role":
            if value not in ROLES:
                raise ConfigError(f"{where}: must be 'admin' or 'user', got {value!r}")
            values[key] = value
        elif key in ("key_hash", "password_hash"):
            if not isinstance(value, str) or ":" not in value:
                raise ConfigError(f"{where}: must be a hash string such as 'sha256:...'")
            values[key] = value
        elif key == "suspended":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: must be true or false, got {value!r}")
            values[key] = value
        elif key == "models":
            values[key] = _parse_models(where, value)
        elif key == "rps":
            rps = float(_number(where, value, integer=False, minimum=0))
            if rps == 0:
                raise ConfigError(f"{where}: must be > 0 (suspend the user to block them)")
            values[key] = rps
        elif key == "burst":
            values[key] = _number(where, value, integer=True, minimum=1)
        else:  # quota, max_tokens, concurrency
            values[key] = _number(where, value, integer=True, minimum=0 if key == "quota" else 1)
    return User(**values)


def parse_config(data: Mapping[str, Any]) -> Config:
    unknown = set(data) - {"server", "users", "upstreams"}
    if unknown:
        raise ConfigError(f"unknown top-level table or key: {sorted(unknown)[0]}")
    server = _parse_server(data.get("server", {}))
    upstreams = _parse_upstreams(data)
    users_table = data.get("users", {})
    if not isinstance(users_table, dict):
        raise ConfigError("[users]: must be a table of user tables")
    users = {name: _parse_user(name, table) for name, table in users_table.items()}
    seen: dict[str, str] = {}
    for user in users.values():
        if user.key_hash:
            if user.key_hash in seen:
                raise ConfigError(
                    f"[users.{user.name}].key_hash: same API key as user {seen[user.key_hash]!r}"
                )
            seen[user.key_hash] = user.name
    return Config(server=server, users=users, upstreams=upstreams)


def parse_config_text(text: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ConfigError(f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nested array or inline table
        raise ConfigError("invalid TOML: nested too deeply") from None
    return parse_config(data)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create one with `gatewayctl init`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return parse_config_text(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def user_to_table(user: User) -> dict[str, Any]:
    table: dict[str, Any] = {"role": user.role}
    for name in ("key_hash", "password_hash", "rps", "burst", "quota", "max_tokens", "concurrency"):
        value = getattr(user, name)
        if value is not None:
            table[name] = value
    if user.suspended:
        table["suspended"] = True
    if user.models is not None:
        table["models"] = list(user.models)
    return table


def validate_user(user: User) -> User:
    """Check a user built in code against the same rules as a user read from the file."""
    return _parse_user(user.name, user_to_table(user))


def config_to_toml(config: Config) -> str:
    defaults = ServerSettings()
    server = {
        name: getattr(config.server, name)
        for name in _SERVER_FIELDS
        if name in ("host", "port", "upstream", "ledger")
        or getattr(config.server, name) != getattr(defaults, name)
    }
    if config.upstreams:
        del server["upstream"]  # the two forms are exclusive
    users = {name: user_to_table(user) for name, user in sorted(config.users.items())}
    document: dict[str, Any] = {"server": server}
    if config.upstreams:
        document["upstreams"] = [_upstream_to_table(u) for u in config.upstreams]
    document["users"] = users
    return tomli_w.dumps(document)


def _upstream_to_table(upstream: UpstreamSettings) -> dict[str, Any]:
    table: dict[str, Any] = {"url": upstream.url}
    if upstream.models:
        table["models"] = list(upstream.models)
    if upstream.max_in_flight is not None:
        table["max_in_flight"] = upstream.max_in_flight
    if upstream.kind != "ollama":
        table["kind"] = upstream.kind
    return table


def ledger_path(config: Config, config_path: Path) -> Path:
    path = Path(config.server.ledger)
    return path if path.is_absolute() else config_path.resolve().parent / path
