"""The only writer of users.toml.

Every change (CLI, web UI) is a read-modify-write under an exclusive lock on a sidecar lock
file, ending in an atomic replace (temp file in the same directory, fsync, rename, fsync of the
directory). Two writers therefore never lose each other's update, and a reader (the proxy's
hot reload) only ever sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from gatewayctl.proxy.config import (
    Config,
    ConfigError,
    config_to_toml,
    load_config,
    parse_config_text,
)

T = TypeVar("T")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    def load(self) -> Config:
        return load_config(self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"{self._lock_path}: cannot create lock file: {exc}") from None
        try:
            _keep_owner_fd(fd, self.path)  # the web UI, as the service user, must open it too
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def update(self, change: Callable[[Config], tuple[Config, T]]) -> T:
        """Apply ``change`` to the current file under the lock and write the result.

        ``change`` gets the freshly read config and returns the new config plus a value for the
        caller (a new key, say). It may raise; then nothing is written.
        """
        with self._locked():
            current = self.load()
            new, result = change(current)
            self._write(new, header=self._header())
            return result

    def create(self, config: Config, *, overwrite: bool) -> None:
        with self._locked():
            if self.path.exists() and not overwrite:
                raise ConfigError(f"{self.path} already exists (use --force to overwrite)")
            self._write(config)

    def _header(self) -> str:
        """The comment block at the top of the file, which a rewrite keeps (other comments
        are lost: the file is rewritten from the data)."""
        lines = []
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
                if not line.startswith("#"):
                    break
                lines.append(line)
        return "".join(lines)

    def _write(self, config: Config, *, header: str = "") -> None:
        text = header + config_to_toml(config)
        parse_config_text(text)  # never write a file the proxy would reject
        # Replace the file a symlink points to, not the link: replacing the link would leave
        # the real file stale (and rename across directories).
        target = self.path.resolve()
        directory = target.parent
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)  # the file holds password hashes
            _keep_owner(tmp, target)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _owner(target: Path) -> tuple[int, int] | None:
    """Whose users.toml this is, when we run as root and so could take it from them."""
    if os.geteuid() != 0:
        return None
    try:
        owner = target.stat()
    except FileNotFoundError:
        return None
    return owner.st_uid, owner.st_gid


def _keep_owner(tmp: str, target: Path) -> None:
    """``sudo gatewayctl user ...`` must not hand users.toml to root: the gateway, running as
    its own service user, could then no longer read it. Only root can (and needs to) chown."""
    owner = _owner(target)
    if owner is not None:
        os.chown(tmp, *owner)


def _keep_owner_fd(fd: int, target: Path) -> None:
    owner = _owner(target)
    if owner is not None:
        os.fchown(fd, *owner)
