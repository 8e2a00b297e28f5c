"""What the gateway runs on in the bench: a real users.toml and, for the CLI, a big ledger."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gatewayctl.proxy.config import Config, ServerSettings, User, config_to_toml
from gatewayctl.proxy.credentials import hash_api_key, hash_password
from gatewayctl.proxy.ledger import SCHEMA

BENCH_USER = "bench"
BENCH_KEY = "sk-bench-0123456789abcdef0123456789abcdef"
# Every feature on, none of them refusing: the limiter, the quota book and the cap all run.
BENCH_LIMITS: dict[str, Any] = {
    "rps": 1e6,
    "burst": 1_000_000,
    "quota": 10**15,
    "max_tokens": 100_000,
}


def filler_name(index: int) -> str:
    return f"user{index:05d}"


def make_config(upstream: str, users: int, **server: object) -> Config:
    """The bench user plus ``users - 1`` others with keys, passwords and limits."""
    password = hash_password("bench-password")  # scrypt is slow: one hash shared by all
    table = {
        BENCH_USER: User(
            name=BENCH_USER,
            key_hash=hash_api_key(BENCH_KEY),
            password_hash=password,
            **BENCH_LIMITS,
        )
    }
    for index in range(1, users):
        name = filler_name(index)
        table[name] = User(
            name=name,
            role="admin" if index == 1 else "user",
            key_hash=hash_api_key(f"sk-bench-filler-{index}"),
            password_hash=password,
            rps=10.0,
            burst=20,
            quota=1_000_000,
            max_tokens=4096,
        )
    return Config(server=ServerSettings(upstream=upstream, **server), users=table)  # type: ignore[arg-type]


def write_users(path: Path, upstream: str, users: int = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_toml(make_config(upstream, users)))
    path.chmod(0o600)
    return path


def _rows(count: int, users: int) -> Iterator[tuple[object, ...]]:
    rng = random.Random(5)
    now = time.time()
    models = ("llama3.2", "qwen2.5:0.5b", "nomic-embed-text")
    for i in range(count):
        user = BENCH_USER if i % users == 0 else filler_name(i % users)
        yield (
            now - (count - i),
            user,
            models[i % 3],
            "chat.completions",
            rng.randrange(5, 500),
            rng.randrange(1, 800),
            0,
            200,
            "ok",
            12.5,
            3.1,
            f"req-{i:08x}",
        )


def write_ledger(path: Path, rows: int, users: int) -> None:
    """A ledger of ``rows`` requests with matching totals, written in one transaction."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(SCHEMA)
        with conn:
            conn.executemany(
                "INSERT INTO requests (ts, user, model, endpoint, prompt_tokens, completion_tokens,"
                " estimated, status, outcome, latency_ms, ttft_ms, request_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _rows(rows, users),
            )
            conn.execute(
                "INSERT INTO totals (user, requests, prompt_tokens, completion_tokens)"
                " SELECT user, count(*), sum(prompt_tokens), sum(completion_tokens)"
                " FROM requests GROUP BY user"
            )
    finally:
        conn.close()
