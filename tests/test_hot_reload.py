"""Hot reload of users.toml while the gateway serves, over real sockets: changes made through the
Store are enforced within a second, and a broken file never replaces the last good config."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatewayctl.proxy.accounts import add_user, remove_user, rotate_key, set_limits, set_suspended
from gatewayctl.proxy.config import Config
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.proxy.reload import watch_file
from gatewayctl.proxy.store import Store

from tests.conftest import Running, write_config
from tests.fakes import FakeOllama
from tests.proxy_helpers import EMBED_MODEL, chat_body, wait_until

RELOAD_WITHIN = 1.0  # seconds: the promise
EMBED = {"model": EMBED_MODEL, "input": "hello"}


def _poll_status(
    client: httpx.Client, wanted: int, request: Callable[[httpx.Client], httpx.Response]
) -> float:
    """Send ``request`` until it answers ``wanted``; return the seconds that took (bounded)."""
    started = time.monotonic()
    wait_until(lambda: request(client).status_code == wanted or None)
    return time.monotonic() - started


def _embed(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/embeddings", json=EMBED)


def _write(path: Path, text: str) -> None:
    """Replace the file at once, as the store does: a plain write_text truncates first, and the
    watcher could see the empty file in between (itself rejected, as a half-written file)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_new_limit_is_enforced_within_a_second(gw: Running, fake: tuple[FakeOllama, str]) -> None:
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
        Store(gw.config_path).update(lambda c: set_limits(c, "alice", {"max_tokens": 3}))
        started = time.monotonic()

        def capped() -> bool:
            response = client.post("/v1/chat/completions", json=chat_body())
            completion: int = response.json()["usage"]["completion_tokens"]
            return completion == 3

        wait_until(capped)
        elapsed = time.monotonic() - started
    assert elapsed < RELOAD_WITHIN, f"the new limit took {elapsed:.2f}s to apply"
    assert fake[0].requests_to("/v1/chat/completions")[-1].body["max_tokens"] == 3


def test_suspend_and_resume_apply_within_a_second(gw: Running) -> None:
    store = Store(gw.config_path)
    with gw.client() as client:
        store.update(lambda c: set_suspended(c, "alice", True))
        assert _poll_status(client, 403, _embed) < RELOAD_WITHIN
        store.update(lambda c: set_suspended(c, "alice", False))
        assert _poll_status(client, 200, _embed) < RELOAD_WITHIN


def test_rotated_key_replaces_the_old_one_within_a_second(gw: Running) -> None:
    new_key = Store(gw.config_path).update(lambda c: rotate_key(c, "alice"))
    with gw.client() as old:
        assert _poll_status(old, 401, _embed) < RELOAD_WITHIN
    with httpx.Client(
        base_url=gw.url, headers={"authorization": f"Bearer {new_key}"}, timeout=10
    ) as new:
        assert _embed(new).status_code == 200


def test_added_user_can_call_and_removed_user_cannot(gw: Running) -> None:
    store = Store(gw.config_path)
    key = store.update(lambda c: add_user(c, "dave", limits={"max_tokens": 2}))
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=10) as c:
        assert _poll_status(c, 200, _embed) < RELOAD_WITHIN
        store.update(lambda cfg: remove_user(cfg, "dave"))
        assert _poll_status(c, 401, _embed) < RELOAD_WITHIN


BROKEN: dict[str, tuple[Callable[[str], str], str]] = {
    "bad toml": (lambda text: text + "\n[users.alice\n", "invalid TOML"),
    "unknown field": (
        lambda text: text.replace(
            "[users.alice]\n", "[users.alice]\nsuspended = true\ncolour = 1\n"
        ),
        "[users.alice].colour: unknown field",
    ),
    "negative rps": (
        lambda text: text.replace("[users.alice]\n", "[users.alice]\nrps = -1\n"),
        "[users.alice].rps: must be >= 0",
    ),
    "empty file": (lambda _text: "", "no users at all"),
    "server table only": (lambda text: text.split("[users")[0], "no users at all"),
}


@pytest.mark.parametrize("breakage", list(BROKEN), ids=list(BROKEN))
def test_broken_file_keeps_the_last_good_config(
    gw: Running, breakage: str, caplog: pytest.LogCaptureFixture
) -> None:
    break_it, reason = BROKEN[breakage]
    good = gw.config_path.read_text()
    assert "[users.alice]\n" in good
    before = gw.gateway.config
    reloads = gw.gateway.reloads
    _write(gw.config_path, break_it(good))
    error = wait_until(lambda: gw.gateway.config_error)
    assert reason in error
    assert str(gw.config_path) in error
    assert gw.gateway.config is before
    with gw.client() as client:
        # Still serving alice with the last good (unsuspended) config.
        assert _embed(client).status_code == 200
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1 and rejected[0].levelname == "ERROR"

    # Fixing the file (by hand: the store refuses to read a broken one) clears the error.
    _write(gw.config_path, good.replace("[users.alice]\n", "[users.alice]\nmax_tokens = 2\n"))
    wait_until(lambda: gw.gateway.config_error is None or None)
    assert gw.gateway.config.users["alice"].max_tokens == 2
    assert gw.gateway.reloads > reloads


def test_store_refuses_to_update_a_broken_file(gw: Running) -> None:
    _write(gw.config_path, "[users.alice\n")
    wait_until(lambda: gw.gateway.config_error)

    def change(config: Config) -> tuple[Config, Any]:
        return set_limits(config, "alice", {"rps": 1.0})

    with pytest.raises(ValueError, match="invalid TOML"):
        Store(gw.config_path).update(change)
    assert gw.config_path.read_text() == "[users.alice\n"


def test_deleted_file_keeps_the_last_good_config_until_it_is_back(gw: Running) -> None:
    good = gw.config_path.read_text()
    gw.config_path.unlink()
    error = wait_until(lambda: gw.gateway.config_error)
    assert "no such file" in error
    with gw.client() as client:
        assert _embed(client).status_code == 200
    _write(gw.config_path, good)
    wait_until(lambda: gw.gateway.config_error is None or None)


def test_the_same_file_is_applied_once(tmp_path: Path) -> None:
    """The web UI reloads right after its own write and the watcher reports that write again:
    the second look must not count (or cost) a reload."""
    path = write_config(tmp_path / "users.toml", "http://127.0.0.1:9", {"root": {"role": "admin"}})
    gateway = Gateway(path)
    gateway.reload()
    assert gateway.reloads == 0, "unchanged since start"
    Store(path).update(lambda c: set_limits(c, "root", {"rps": 3.0}))
    gateway.reload()
    gateway.reload()
    assert gateway.reloads == 1
    assert gateway.config.users["root"].rps == 3.0


async def test_the_watcher_outlives_a_reload_that_raises(tmp_path: Path) -> None:
    target = tmp_path / "users.toml"
    target.write_text("# 0\n")
    calls: list[int] = []

    def on_change() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in reload")

    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_file(target.resolve(), on_change, stop))
    try:
        for wanted in (1, 2):  # write until the watcher (started at some point) reports it
            deadline = time.monotonic() + 10
            while len(calls) < wanted and time.monotonic() < deadline and not watcher.done():
                target.write_text(f"# {time.monotonic()}\n")
                await asyncio.sleep(0.1)
        assert not watcher.done(), watcher.exception()
        assert len(calls) >= 2
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 10)
