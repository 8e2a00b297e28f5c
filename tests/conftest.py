"""Shared fixtures: a fake Ollama and the gateway in front of it, both on real sockets."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatewayctl.proxy.app import create_app
from gatewayctl.proxy.config import Config, ServerSettings, User, config_to_toml
from gatewayctl.proxy.credentials import hash_api_key, hash_password
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.proxy.ledger import read_totals

from tests.fakes.ollama import FakeOllama
from tests.servers import serve_in_thread

PASSWORD = "secret-pw"


def key_of(name: str) -> str:
    return f"sk-test-{name}"


def make_user(name: str, **limits: Any) -> User:
    return User(
        name=name,
        key_hash=hash_api_key(key_of(name)),
        password_hash=hash_password(PASSWORD),
        **limits,
    )


def write_config(
    path: Path, upstream: str, users: dict[str, dict[str, Any]], **server: Any
) -> Path:
    config = Config(
        server=ServerSettings(upstream=upstream, **server),
        users={name: make_user(name, **limits) for name, limits in users.items()},
    )
    path.write_text(config_to_toml(config))
    return path


DEFAULT_USERS: dict[str, dict[str, Any]] = {
    "root": {"role": "admin"},
    "alice": {},
}


@dataclass
class Running:
    url: str
    config_path: Path
    gateway: Gateway

    def client(self, user: str = "alice", **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {key_of(user)}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kwargs)

    def totals(self, user: str) -> tuple[int, int, int]:
        """(requests, prompt_tokens, completion_tokens) as committed to the ledger file."""
        t = read_totals(self.gateway.ledger.path).get(user)
        return (t.requests, t.prompt_tokens, t.completion_tokens) if t else (0, 0, 0)

    def wait_for_totals(
        self, user: str, requests: int, timeout: float = 5.0
    ) -> tuple[int, int, int]:
        """The ledger commits off the request path: wait (bounded) until it holds N requests."""
        deadline = time.monotonic() + timeout
        while True:
            totals = self.totals(user)
            if totals[0] >= requests or time.monotonic() > deadline:
                return totals
            time.sleep(0.01)


@contextlib.contextmanager
def fake_and_gateway(
    directory: Path, users: dict[str, dict[str, Any]] | None = None
) -> Iterator[tuple[FakeOllama, Running]]:
    """A fake Ollama and a gateway in front of it, for a module-scoped fixture: tests that
    change no state share them instead of paying two server starts each."""
    fake = FakeOllama()
    with serve_in_thread(fake.app) as upstream:
        path = write_config(directory / "users.toml", upstream, users or DEFAULT_USERS)
        app = create_app(path)
        with serve_in_thread(app) as url:
            yield fake, Running(url, path, app.state.gateway)


Served = tuple[FakeOllama, Running]


@pytest.fixture(scope="module")
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One fake and one gateway per test module (users: the module's ``USERS``, if it has one)."""
    users = getattr(request.module, "USERS", None)
    name = request.module.__name__.rpartition(".")[2]
    with fake_and_gateway(tmp_path_factory.mktemp(name), users) as pair:
        yield pair


@pytest.fixture
def served(shared: Served) -> Served:
    """The module's fake and gateway, for tests that leave no state behind (each test finds its
    own ledger row by its response's x-request-id)."""
    shared[0].reset()
    return shared


@pytest.fixture
def fake() -> Iterator[tuple[FakeOllama, str]]:
    upstream = FakeOllama()
    with serve_in_thread(upstream.app) as url:
        yield upstream, url


StartGateway = Callable[..., contextlib.AbstractContextManager[Running]]


@pytest.fixture
def start_gateway(tmp_path: Path) -> StartGateway:
    """Start a gateway on a users.toml made of ``users`` in front of ``upstream``."""

    @contextlib.contextmanager
    def start(
        upstream: str, users: dict[str, dict[str, Any]] | None = None, **server: Any
    ) -> Iterator[Running]:
        path = write_config(tmp_path / "users.toml", upstream, users or DEFAULT_USERS, **server)
        app = create_app(path)
        with serve_in_thread(app) as url:
            yield Running(url, path, app.state.gateway)

    return start


@pytest.fixture
def gw(fake: tuple[FakeOllama, str], start_gateway: StartGateway) -> Iterator[Running]:
    """The gateway with default users in front of the fake Ollama."""
    with start_gateway(fake[1]) as running:
        yield running
