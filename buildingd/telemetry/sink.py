"""Telemetry sinks: where line protocol goes. ``LocalFileSink`` (the default: bounded files in the
state directory a user can import later) and, when configured, the InfluxDB writer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from buildingd.settings import InfluxSettings

log = logging.getLogger(__name__)


def pending_age(since: float | None) -> float:
    """Seconds the oldest line still in memory has waited (0 when none waits): what a SIGKILL
    now would lose, in time."""
    return 0.0 if since is None else time.monotonic() - since


class TelemetrySink(Protocol):
    async def start(self) -> None: ...

    def submit(self, lines: Iterable[str]) -> None:
        """Never blocks, never raises."""
        ...

    async def flush(self) -> None: ...

    async def stop(self) -> None:
        """Flush everything to disk or the server (SIGTERM path)."""
        ...

    def stats(self) -> dict[str, float]: ...

    def outage(self) -> str | None:
        """Why the sink cannot deliver now (its data waits on disk), or None when it can."""
        ...


class LocalFileSink:
    """Line protocol appended to ``<state>/telemetry/telemetry-NNNNNN.lp`` in batches (no fsync
    per point, so an SD card lives): written when ``BATCH_LINES`` lines wait or the oldest has
    waited ``WRITE_AFTER_S`` (checked on each submit and by a ticker), and on stop. A written
    batch is in the kernel's hands, so a SIGKILL loses at most ``WRITE_AFTER_S`` of lines (a
    power cut also what the kernel had not yet written back).

    Bounded: a file is closed before it would pass ``max_bytes / FILES``, and past ``max_bytes``
    in all the oldest files are deleted, so the folder never holds more than ``max_bytes``. Every
    deletion is logged and its points counted (``dropped_points``, ``files_deleted``); lines the
    disk refused pile up in memory to ``MAX_PENDING``, past which the oldest are dropped and
    counted (``dropped_memory``)."""

    FILES = 10
    BATCH_LINES = 500
    WRITE_AFTER_S = 1.0
    MAX_PENDING = 100_000

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.file_bytes = max(1, max_bytes // self.FILES)
        self.pending: deque[str] = deque()
        self.written = 0
        self.files_deleted = 0
        self.dropped_points = 0
        self.dropped_memory = 0
        self._oldest_pending_s: float | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._ticker = asyncio.create_task(self._tick(), name="telemetry-local.flush")

    async def _tick(self) -> None:
        """Write lines that waited ``WRITE_AFTER_S`` even when nothing else is submitted."""
        while True:
            await asyncio.sleep(self.WRITE_AFTER_S / 10)
            if self._oldest_pending_s is not None and (
                time.monotonic() - self._oldest_pending_s >= self.WRITE_AFTER_S
            ):
                self._write()

    def submit(self, lines: Iterable[str]) -> None:
        self.pending.extend(lines)
        overflow = len(self.pending) - self.MAX_PENDING
        if overflow > 0:
            for _ in range(overflow):
                self.pending.popleft()
            self.dropped_memory += overflow
        now = time.monotonic()
        if self._oldest_pending_s is None and self.pending:
            self._oldest_pending_s = now
        waited = now - self._oldest_pending_s if self._oldest_pending_s is not None else 0.0
        if len(self.pending) >= self.BATCH_LINES or waited >= self.WRITE_AFTER_S:
            self._write()

    async def flush(self) -> None:
        self._write()

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self._write()

    def outage(self) -> str | None:
        return None  # local disk: write errors are logged and counted where they happen

    def stats(self) -> dict[str, float]:
        return {
            "pending": float(len(self.pending)),
            "pending_age_s": pending_age(self._oldest_pending_s),
            "written": float(self.written),
            "files_deleted": float(self.files_deleted),
            "dropped_points": float(self.dropped_points),
            "dropped_memory": float(self.dropped_memory),
            "local_bytes": float(sum(size for _, size in self._sizes())),
        }

    def files(self) -> list[Path]:
        """The line-protocol files, oldest first (by number, not by name)."""
        found = []
        for path in self.folder.glob("telemetry-*.lp"):
            number = path.stem.removeprefix("telemetry-")
            if number.isdigit():
                found.append((int(number), path))
        return [path for _, path in sorted(found)]

    def _sizes(self) -> list[tuple[Path, int]]:
        out = []
        for path in self.files():
            try:
                out.append((path, path.stat().st_size))
            except OSError:
                continue
        return out

    def _write(self) -> None:
        if not self.pending:
            return
        try:
            files = self.files()
            current = files[-1] if files else self.folder / "telemetry-000001.lp"
            size = current.stat().st_size if current.exists() else 0
            chunk: list[str] = []
            chunk_bytes = 0
            for text in (line + "\n" for line in self.pending):
                length = len(text.encode())
                if size + chunk_bytes + length > self.file_bytes and (size or chunk):
                    self._append(current, chunk)
                    current = self._next(current)
                    size, chunk, chunk_bytes = 0, [], 0
                chunk.append(text)
                chunk_bytes += length
            self._append(current, chunk)
            self.written += len(self.pending)
            self.pending.clear()
            self._oldest_pending_s = None
            self._enforce_bound()
        except OSError as err:
            log.error("telemetry: cannot write %s: %s", self.folder, err)  # noqa: TRY400

    @staticmethod
    def _append(path: Path, chunk: list[str]) -> None:
        if chunk:
            with path.open("a", encoding="utf-8") as f:
                f.write("".join(chunk))

    def _next(self, current: Path) -> Path:
        number = int(current.stem.removeprefix("telemetry-")) + 1
        return self.folder / f"telemetry-{number:06d}.lp"

    def _enforce_bound(self) -> None:
        sizes = self._sizes()
        total = sum(size for _, size in sizes)
        while total > self.max_bytes and len(sizes) > 1:
            oldest, size = sizes.pop(0)
            with oldest.open("rb") as f:
                points = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(65536), b""))
            oldest.unlink()
            total -= size
            self.files_deleted += 1
            self.dropped_points += points
            log.warning(
                "telemetry: local files over %d bytes: deleted the oldest, %s (%d points)",
                self.max_bytes,
                oldest.name,
                points,
            )


def create_sink(settings: InfluxSettings, state_dir: Path) -> TelemetrySink:
    if settings.enabled:
        from buildingd.telemetry.influx import InfluxSink

        return InfluxSink(settings, state_dir)
    return LocalFileSink(state_dir / "telemetry", int(settings.local_max_mb * 1024 * 1024))
