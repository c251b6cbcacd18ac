"""Files in the state directory: atomic replacement, and setting aside a file that cannot be
read (``<name>.corrupt-<UTC time>``, kept for a human) so the daemon starts without it."""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: temporary file, fsync, rename, directory fsync; a power
    cut leaves the old or the new version, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
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


def set_aside(path: Path, why: str, now: datetime | None = None) -> Path | None:
    """Move an unreadable ``path`` to ``<name>.corrupt-<UTC time>`` beside it and log why, once;
    returns the new path (None when it could not be moved: then it is left where it is)."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():  # twice in one second: keep both
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        path.replace(aside)
    except OSError as err:
        log.error("state file %s is unreadable (%s), cannot move it: %s", path, why, err)  # noqa: TRY400
        return None
    log.error("state file %s is unreadable (%s): moved to %s, going on without", path, why, aside)
    return aside
