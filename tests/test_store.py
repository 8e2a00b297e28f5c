"""The users.toml store: no lost update under concurrent writers, atomic replace, 0600."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from gatewayctl.proxy import accounts
from gatewayctl.proxy.config import (
    Config,
    ConfigError,
    User,
    config_to_toml,
    load_config,
    parse_config_text,
)
from gatewayctl.proxy.store import Store

SPAWN = multiprocessing.get_context("spawn")
PROCESSES = 3
THREADS = 3
ADDS_PER_PROCESS = 8
CHANGES_PER_THREAD = 8


def seeded(path: Path, names: list[str]) -> Store:
    users = {name: User(name=name, role="admin" if name == "root" else "user") for name in names}
    path.write_text(config_to_toml(Config(users=users)))
    return Store(path)


def add_users(path: str, prefix: str, count: int, start: Any) -> None:
    """A writer process: add ``count`` users, one store update each."""
    store = Store(Path(path))
    start.wait(timeout=120)
    for i in range(count):
        store.update(lambda c, name=f"{prefix}{i}": accounts.add_user(c, name))


def change_limits(store: Store, name: str, count: int, start: Any) -> None:
    """A writer thread: change one user's limits ``count`` times, the last change wins."""
    start.wait(timeout=120)
    for i in range(1, count + 1):
        store.update(lambda c, rps=float(i): accounts.set_limits(c, name, {"rps": rps}))
    store.update(lambda c: accounts.set_suspended(c, name, True))


def test_concurrent_writers_never_lose_an_update(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    editors = [f"t{i}" for i in range(THREADS)]
    store = seeded(path, ["root", *editors])
    start = SPAWN.Barrier(PROCESSES + THREADS)
    processes = [
        SPAWN.Process(target=add_users, args=(str(path), f"p{i}-", ADDS_PER_PROCESS, start))
        for i in range(PROCESSES)
    ]
    threads = [
        threading.Thread(target=change_limits, args=(store, name, CHANGES_PER_THREAD, start))
        for name in editors
    ]
    for worker in [*processes, *threads]:
        worker.start()
    for thread in threads:
        thread.join(timeout=120)
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    config = store.load()
    added = {f"p{p}-{i}" for p in range(PROCESSES) for i in range(ADDS_PER_PROCESS)}
    assert set(config.users) == {"root", *editors, *added}
    for name in editors:
        assert config.users[name].rps == float(CHANGES_PER_THREAD)
        assert config.users[name].suspended
    assert all(config.users[name].key_hash for name in added)


def rewrite_many(path: str, count: int) -> None:
    store = Store(Path(path))
    for i in range(count):
        store.update(lambda c, q=i: accounts.set_limits(c, "u0", {"quota": q}))


def test_readers_only_ever_see_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    seeded(path, [f"u{i}" for i in range(150)])  # big enough to take several writes
    writer = SPAWN.Process(target=rewrite_many, args=(str(path), 60))
    writer.start()
    versions: set[int | None] = set()
    reads = 0
    while writer.is_alive() or reads == 0:
        config = parse_config_text(path.read_text())  # raises on a partial file
        assert len(config.users) == 150
        versions.add(config.users["u0"].quota)
        reads += 1
    writer.join(timeout=60)
    assert writer.exitcode == 0
    assert load_config(path).users["u0"].quota == 59
    print(f"\n{reads} reads saw {len(versions)} versions")
    assert len(versions) >= 2, "the reader ran while the writer replaced the file"
    assert not [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def snapshot(path: Path) -> tuple[bytes, int, int, list[str]]:
    info = path.stat()
    return path.read_bytes(), info.st_ino, info.st_mtime_ns, sorted(os.listdir(path.parent))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: accounts.set_limits(c, "alice", {"rps": -1.0}), id="negative-rps"),
        pytest.param(lambda c: accounts.add_user(c, "alice"), id="duplicate-user"),
        pytest.param(lambda c: accounts.remove_user(c, "root"), id="last-admin"),
        # Built in code without validation: the store still refuses to write it.
        pytest.param(
            lambda c: (c.with_user(replace(c.users["alice"], burst=0)), None), id="unvalidated"
        ),
        pytest.param(
            lambda c: (c.with_user(User(name="bob", key_hash=c.users["alice"].key_hash)), None),
            id="duplicate-key",
        ),
    ],
)
def test_a_rejected_change_writes_nothing(tmp_path: Path, change: Any) -> None:
    path = tmp_path / "users.toml"
    store = seeded(path, ["root"])
    store.update(lambda c: accounts.add_user(c, "alice"))
    before = snapshot(path)
    with pytest.raises(ConfigError):
        store.update(change)
    assert snapshot(path) == before


def test_update_returns_the_result_and_writes_0600(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    store = seeded(path, ["root"])
    path.chmod(0o644)
    key = store.update(lambda c: accounts.add_user(c, "alice", limits={"quota": 10}))
    assert key.startswith("sk-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(path).users["alice"].quota == 10
    assert key not in path.read_text(), "only the hash is stored"


def test_update_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    with pytest.raises(ConfigError, match="no such file"):
        Store(path).update(lambda c: accounts.add_user(c, "alice"))
    assert not path.exists()


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    store = Store(path)
    first = Config(users={"a": User(name="a", role="admin")})
    store.create(first, overwrite=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="already exists"):
        store.create(Config(), overwrite=False)
    assert store.load() == first
    store.create(Config(), overwrite=True)
    assert store.load().users == {}


def test_a_symlinked_users_toml_stays_a_symlink(tmp_path: Path) -> None:
    # e.g. /etc/gatewayctl/users.toml -> /srv/config/users.toml: write through to the target.
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "users.toml"
    seeded(target, ["root"])
    link = tmp_path / "users.toml"
    link.symlink_to(target)
    Store(link).update(lambda c: accounts.add_user(c, "alice"))
    assert link.is_symlink()
    assert "alice" in load_config(target).users
    assert not [p.name for p in (tmp_path / "real").iterdir() if p.suffix == ".tmp"]


def test_a_write_keeps_the_files_owner(tmp_path: Path) -> None:
    """`sudo gatewayctl user ...` must leave users.toml to the service user that owns it."""
    path = tmp_path / "users.toml"
    store = seeded(path, ["root"])
    # As root (CI, most servers) hand the file to another account first; otherwise the file is
    # already someone's own and must stay so.
    owner = (4242, 4243) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        os.chown(path, *owner)
    store.update(lambda c: accounts.add_user(c, "alice"))
    for written in (path.stat(), path.with_name("users.toml.lock").stat()):
        assert (written.st_uid, written.st_gid) == owner
    assert "alice" in load_config(path).users


def test_a_write_keeps_the_comment_block_at_the_top(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    seeded(path, ["root"])
    path.write_text("# our lab's gateway\n# edit with gatewayctl\n" + path.read_text())
    Store(path).update(lambda c: accounts.add_user(c, "alice"))
    text = path.read_text()
    assert text.startswith("# our lab's gateway\n# edit with gatewayctl\n[")
    assert "alice" in load_config(path).users
