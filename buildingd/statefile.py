"""Small state files in the state directory: written atomically (a power cut leaves the old or the
new version, never half of one) and, when unreadable, set aside for a human to look at instead of
stopping the daemon. No knowledge of any file's contents."""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)


def write_atomic(path: Path, body: str) -> None:
    """Replace ``path`` with ``body``: temporary file, fsync, rename, directory fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    # The rename itself reaches the disk only when the directory is synced.
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def set_aside(path: Path, now: datetime | None = None) -> Path | None:
    """Move an unreadable file out of the way as ``<name>.corrupt-<UTC time>``; its new path, or
    None when it could not be moved either."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():  # twice in one second: keep both
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        path.replace(aside)
    except OSError:
        return None
    return aside


def set_aside_logged(path: Path, why: str) -> Path | None:
    """``set_aside`` and one journal line saying why and where the file went."""
    aside = set_aside(path)
    if aside is None:
        log.error("state file %s is unreadable (%s), cannot move it either", path, why)
    else:
        log.error("state file %s is unreadable (%s): moved to %s", path, why, aside)
    return aside
