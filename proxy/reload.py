"""Watching users.toml for changes (hot reload).

The store replaces the file by renaming a temp file over it, which changes its inode, so the
directory is watched (not the file) and events are filtered by name. The watchfiles debounce
is cut from its 1.6 s default so a change is applied well within a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from watchfiles import Change, awatch

log = logging.getLogger("gatewayctl")


async def watch_file(target: Path, on_change: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``on_change`` whenever the file at the absolute path ``target`` changes."""

    def is_target(_change: Change, changed: str) -> bool:
        return Path(changed) == target

    async for _changes in awatch(
        target.parent,
        watch_filter=is_target,
        debounce=50,
        step=25,
        stop_event=stop,
        recursive=False,
    ):
        try:
            on_change()
        except Exception:
            # One failed reload must not end hot reload for the life of the process.
            log.exception("reloading %s failed; still watching it", target)
