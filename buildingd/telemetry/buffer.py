"""Store-and-forward buffer: batches of line protocol kept on disk while InfluxDB is away.

One SQLite database in the state directory, in WAL mode with ``synchronous=NORMAL``: one
transaction per batch (never per point) and no fsync per commit, so an SD card lives, yet a
committed batch survives a daemon crash or restart. Batches come out oldest first. The total size
is bounded: past the bound the oldest batches are dropped and counted. A database that cannot be
read (truncated or overwritten by a power cut) is set aside and replaced by an empty one: a
telemetry buffer never stops the daemon.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from buildingd.statefile import set_aside_logged


@dataclass(frozen=True)
class StoredBatch:
    id: int
    lines: list[str]


class DiskBuffer:
    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.set_aside: list[Path] = []  # unreadable databases moved away (for the alert)
        self.batches = self.points = self.bytes = 0
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            self._replace(err)

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batch ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, points INTEGER NOT NULL,"
            " bytes INTEGER NOT NULL, lines TEXT NOT NULL)"
        )
        row = self._db.execute("SELECT count(*), total(points), total(bytes) FROM batch").fetchone()
        self.batches, self.points, self.bytes = int(row[0]), int(row[1]), int(row[2])

    def _replace(self, err: sqlite3.DatabaseError) -> None:
        """Set the unreadable database (and its WAL) aside and start an empty one."""
        with contextlib.suppress(sqlite3.Error, AttributeError):
            self._db.close()
        for suffix in ("-wal", "-shm"):
            extra = self.path.with_name(self.path.name + suffix)
            if extra.exists():
                set_aside_logged(extra, f"WAL of an unreadable buffer: {err}")
        aside = set_aside_logged(self.path, f"telemetry buffer: {err}")
        if aside is None:  # cannot move it: leave it alone and buffer nothing on disk
            self.path.unlink(missing_ok=True)
        else:
            self.set_aside.append(aside)
        self._open()

    def append(self, lines: list[str]) -> int:
        """Store one batch; returns how many points the bound made us drop (oldest first)."""
        if not lines:
            return 0
        try:
            return self._append(lines)
        except sqlite3.DatabaseError as err:
            self._replace(err)
            return self._append(lines)

    def _append(self, lines: list[str]) -> int:
        text = "\n".join(lines)
        self._db.execute(
            "INSERT INTO batch (points, bytes, lines) VALUES (?, ?, ?)",
            (len(lines), len(text), text),
        )
        self.batches += 1
        self.points += len(lines)
        self.bytes += len(text)
        dropped = 0
        while self.bytes > self.max_bytes and self.batches > 1:
            dropped += self._drop_oldest()
        return dropped

    def oldest(self) -> StoredBatch | None:
        try:
            row = self._db.execute("SELECT id, lines FROM batch ORDER BY id LIMIT 1").fetchone()
        except sqlite3.DatabaseError as err:
            self._replace(err)
            return None
        return None if row is None else StoredBatch(int(row[0]), str(row[1]).split("\n"))

    def remove(self, batch_id: int) -> None:
        try:
            row = self._db.execute(
                "DELETE FROM batch WHERE id = ? RETURNING points, bytes", (batch_id,)
            ).fetchone()
        except sqlite3.DatabaseError as err:
            self._replace(err)
            return
        if row is not None:
            self.batches -= 1
            self.points -= int(row[0])
            self.bytes -= int(row[1])

    def _drop_oldest(self) -> int:
        oldest = self._db.execute("SELECT id, points FROM batch ORDER BY id LIMIT 1").fetchone()
        self.remove(int(oldest[0]))
        return int(oldest[1])

    def close(self) -> None:
        self._db.close()
