"""Telemetry sinks: where line protocol goes. ``LocalFileSink`` (the default: bounded files in the
state directory a user can import later) and, when configured, the InfluxDB writer."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from buildingd.settings import InfluxSettings

log = logging.getLogger(__name__)


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


class LocalFileSink:
    """Line protocol appended to ``<state>/telemetry/telemetry-NNNNNN.lp`` in batches (no fsync
    per point, so an SD card lives), rotated at ``max_bytes / 10``; the oldest file is deleted
    past ``max_bytes`` in all, and the drop is counted and logged."""

    FILES = 10
    BATCH_LINES = 500

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        # Bounded: if the disk refuses writes, the oldest lines go first.
        self.pending: deque[str] = deque(maxlen=100_000)
        self.written = 0
        self.dropped_files = 0
        self._current: Path | None = None

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def submit(self, lines: Iterable[str]) -> None:
        self.pending.extend(lines)
        if len(self.pending) >= self.BATCH_LINES:
            self._write()

    async def flush(self) -> None:
        self._write()

    async def stop(self) -> None:
        self._write()

    def stats(self) -> dict[str, float]:
        return {
            "pending": float(len(self.pending)),
            "written": float(self.written),
            "dropped_files": float(self.dropped_files),
        }

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("telemetry-*.lp"))

    def _write(self) -> None:
        if not self.pending:
            return
        try:
            files = self._files()
            current = files[-1] if files else self.folder / "telemetry-000001.lp"
            if current.exists() and current.stat().st_size > self.max_bytes // self.FILES:
                number = int(current.stem.split("-")[1]) + 1
                current = self.folder / f"telemetry-{number:06d}.lp"
            text = "\n".join(self.pending) + "\n"
            with current.open("a", encoding="utf-8") as f:
                f.write(text)
            self.written += len(self.pending)
            self.pending.clear()
            files = self._files()
            while sum(p.stat().st_size for p in files) > self.max_bytes and len(files) > 1:
                files[0].unlink()
                self.dropped_files += 1
                log.warning(
                    "telemetry: local files over %d bytes, dropped %s",
                    self.max_bytes,
                    files[0].name,
                )
                files = files[1:]
        except OSError as err:
            log.error("telemetry: cannot write %s: %s", self.folder, err)  # noqa: TRY400


def create_sink(settings: InfluxSettings, state_dir: Path) -> TelemetrySink:
    if settings.enabled:
        from buildingd.telemetry.influx import InfluxSink

        return InfluxSink(settings, state_dir)
    return LocalFileSink(state_dir / "telemetry", int(settings.local_max_mb * 1024 * 1024))
