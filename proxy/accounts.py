"""Changes to users and their limits, as pure functions on a Config.

The CLI and the web UI both call these inside ``Store.update``, so a rule (who may exist, what a
limit may be, what is shown once) lives in one place. Values are validated by the same parser
that reads users.toml, when the store writes the result.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gatewayctl.proxy.config import USER_NAME, Config, ConfigError, Role, User, validate_user
from gatewayctl.proxy.credentials import hash_api_key, hash_password, new_api_key
from gatewayctl.proxy.ledger import Totals
from gatewayctl.proxy.models import parse_patterns

LIMIT_FIELDS = ("rps", "burst", "quota", "max_tokens", "concurrency", "models")


class AccountError(ConfigError):
    """A change that cannot be made: unknown user, duplicate user, last admin..."""


def get_user(config: Config, name: str) -> User:
    try:
        return config.users[name]
    except KeyError:
        raise AccountError(f"no such user: {name!r}") from None


def add_user(
    config: Config,
    name: str,
    *,
    role: Role = "user",
    password: str | None = None,
    limits: dict[str, Any] | None = None,
) -> tuple[Config, str]:
    """Add a user; returns the new config and the user's API key, shown this once."""
    if not USER_NAME.match(name):
        raise AccountError(
            f"invalid user name {name!r}: letters, digits, and _ . @ -, at most 64 characters"
        )
    if name in config.users:
        raise AccountError(f"user {name!r} already exists")
    key = new_api_key()
    user = User(
        name=name,
        role=role,
        key_hash=hash_api_key(key),
        password_hash=None if password is None else _password_hash(password),
    )
    user = validate_user(replace(user, **_limit_changes(limits or {})))
    return config.with_user(user), key


def _limit_changes(limits: dict[str, Any]) -> dict[str, Any]:
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise AccountError(f"unknown limit: {sorted(unknown)[0]}")
    models = limits.get("models")
    if isinstance(models, str):  # as typed: "llama3.2:*,qwen2.5:0.5b", or "none"
        return {**limits, "models": parse_patterns(models)}
    if isinstance(models, list):  # the dataclass is frozen: keep it hashable
        return {**limits, "models": tuple(models)}
    return limits


def set_limits(config: Config, name: str, limits: dict[str, Any]) -> tuple[Config, User]:
    """Change some limits; a value of None lifts that limit, an absent key leaves it as is."""
    user = validate_user(replace(get_user(config, name), **_limit_changes(limits)))
    return config.with_user(user), user


def set_suspended(config: Config, name: str, suspended: bool) -> tuple[Config, User]:
    user = replace(get_user(config, name), suspended=suspended)
    return config.with_user(user), user


def rotate_key(config: Config, name: str) -> tuple[Config, str]:
    key = new_api_key()
    user = replace(get_user(config, name), key_hash=hash_api_key(key))
    return config.with_user(user), key


def _password_hash(password: str) -> str:
    """The one password rule, for new users and changed passwords alike."""
    if len(password) < 6:
        raise AccountError("password too short (at least 6 characters)")
    try:
        password.encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON allows ("\\ud800")
        raise AccountError("password is not valid Unicode text") from None
    return hash_password(password)


def set_password(config: Config, name: str, password: str) -> tuple[Config, User]:
    user = replace(get_user(config, name), password_hash=_password_hash(password))
    return config.with_user(user), user


def remove_user(config: Config, name: str) -> tuple[Config, User]:
    user = get_user(config, name)
    admins = [u for u in config.users.values() if u.role == "admin"]
    if user.role == "admin" and len(admins) == 1:
        raise AccountError(f"{name!r} is the last admin; add another admin first")
    return config.without_user(name), user


def user_view(user: User) -> dict[str, Any]:
    """A user as shown by the CLI and the web UI: limits, never the hashes."""
    return {
        "user": user.name,
        "role": user.role,
        "suspended": user.suspended,
        "rps": user.rps,
        "burst": user.burst,
        "quota": user.quota,
        "max_tokens": user.max_tokens,
        "concurrency": user.concurrency,
        "models": None if user.models is None else list(user.models),
        "has_password": user.password_hash is not None,
        "has_key": user.key_hash is not None,
    }


def usage_view(user: User, totals: Totals) -> dict[str, Any]:
    """A user's usage against their quota; ``remaining`` is None when unlimited."""
    remaining = None if user.quota is None else max(0, user.quota - totals.total_tokens)
    return {
        "user": user.name,
        "requests": totals.requests,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "total_tokens": totals.total_tokens,
        "quota": user.quota,
        "remaining": remaining,
    }
