"""Store-and-forward buffer: batches of line protocol kept on disk while InfluxDB is away.

One SQLite database in the state directory, in WAL mode with ``synchronous=NORMAL``: one
transaction per batch (never per point) and no fsync per commit, so an SD card lives, yet a
committed batch survives a daemon crash or restart. Batches come out oldest first. The total size
is bounded: past the bound the oldest batches are dropped and counted.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoredBatch:
    id: int
    lines: list[str]


class DiskBuffer:
    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batch ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, points INTEGER NOT NULL,"
            " bytes INTEGER NOT NULL, lines TEXT NOT NULL)"
        )
        row = self._db.execute("SELECT count(*), total(points), total(bytes) FROM batch").fetchone()
        self.batches, self.points, self.bytes = int(row[0]), int(row[1]), int(row[2])

    def append(self, lines: list[str]) -> int:
        """Store one batch; returns how many points the bound made us drop (oldest first)."""
        if not lines:
            return 0
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
        row = self._db.execute("SELECT id, lines FROM batch ORDER BY id LIMIT 1").fetchone()
        return None if row is None else StoredBatch(int(row[0]), str(row[1]).split("\n"))

    def remove(self, batch_id: int) -> None:
        row = self._db.execute(
            "DELETE FROM batch WHERE id = ? RETURNING points, bytes", (batch_id,)
        ).fetchone()
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
