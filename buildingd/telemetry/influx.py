"""``InfluxSink``: line protocol to the InfluxDB 2.x write API (``/api/v2/write``, also accepted by
InfluxDB 3 and VictoriaMetrics) with store-and-forward, so an outage loses nothing.

* Batches of at most ``batch_size`` lines leave every ``flush_interval_s`` (or sooner when a batch
  is full), gzip-compressed, with second precision (the schema's timestamps are whole seconds:
  a building's readings change far slower, and coarse timestamps compress best).
* While the server is unreachable, answering 5xx/429, or timing out, batches go to the on-disk
  ``DiskBuffer`` and are replayed oldest first when it returns; new data queues behind the buffer
  so order is kept. Retries back off exponentially with jitter, honouring ``Retry-After``.
* 401/403/404 are configuration errors (bad token, org or bucket): logged once as such, data kept
  on disk, retried slowly rather than spinning. 400/413/422 mean the server refuses the data itself:
  the batch is dropped, counted and logged (retrying would block everything behind it forever).
* On stop, whatever is still in memory is written to the disk buffer (or the server, if it is up)
  and replayed on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from buildingd.settings import InfluxSettings
from buildingd.telemetry.buffer import DiskBuffer
from buildingd.telemetry.sink import pending_age

log = logging.getLogger(__name__)

RETRY_MIN_S = 1.0
CONFIG_RETRY_S = 60.0  # after 401/403/404: someone has to fix the settings first
REPLAY_BATCHES_PER_STEP = 50  # then take in new data again


class Outcome(Enum):
    WRITTEN = "written"
    RETRY = "retry"  # the server may take it later: keep it
    CONFIG = "config"  # our settings are wrong: keep it, say so, retry slowly
    REJECTED = "rejected"  # the server refuses this data: drop it, count it


@dataclass(frozen=True)
class WriteResult:
    outcome: Outcome
    detail: str = ""
    retry_after_s: float | None = None


def classify_http_error(status: int, message: str, retry_after: str | None) -> WriteResult:
    """What to do about an HTTP error answer of the write API."""
    after = _parse_retry_after(retry_after)
    if status == 429 or status >= 500:
        return WriteResult(Outcome.RETRY, f"HTTP {status}: {message}", after)
    if status in (401, 403, 404):
        return WriteResult(Outcome.CONFIG, f"HTTP {status}: {message}", after)
    return WriteResult(Outcome.REJECTED, f"HTTP {status}: {message}")


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff


def read_token(settings: InfluxSettings) -> str:
    if settings.token_file is not None:
        return settings.token_file.read_text(encoding="utf-8").strip()
    return settings.token.get_secret_value() if settings.token is not None else ""


class InfluxSink:
    def __init__(self, settings: InfluxSettings, state_dir: Path) -> None:
        self.settings = settings
        self.buffer = DiskBuffer(
            state_dir / "telemetry-buffer.sqlite", int(settings.buffer_max_mb * 1024 * 1024)
        )
        self.pending: deque[str] = deque()
        self.max_pending = max(100_000, 20 * settings.batch_size)
        self._oldest_pending_s: float | None = None  # monotonic time the oldest line came
        self.counters = {
            "written": 0,
            "buffered": 0,
            "replayed": 0,
            "dropped_bound": 0,
            "dropped_memory": 0,
            "rejected": 0,
            "write_errors": 0,
        }
        self._retry_at = 0.0
        self._backoff_s = RETRY_MIN_S
        self._problem: str | None = None  # the current outage's reason, logged once
        self._drop_logged = False
        self._wake = asyncio.Event()
        self._step_lock = asyncio.Lock()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._write_api: Any = None

    # -- TelemetrySink -------------------------------------------------------------------------

    async def start(self) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._client = InfluxDBClient(
            url=self.settings.url,
            token=read_token(self.settings),
            org=self.settings.org,
            timeout=int(self.settings.timeout_s * 1000),
            enable_gzip=self.settings.gzip,
            verify_ssl=self.settings.verify_tls,
            ssl_ca_cert=str(self.settings.ca_file) if self.settings.ca_file else None,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        if self.buffer.points:
            log.info(
                "telemetry: %d points from an earlier outage in %s, replaying",
                self.buffer.points,
                self.buffer.path,
            )
        self._task = asyncio.create_task(self._run(), name="influx-writer")

    def submit(self, lines: Iterable[str]) -> None:
        self.pending.extend(lines)
        if self._oldest_pending_s is None and self.pending:
            self._oldest_pending_s = time.monotonic()
        overflow = len(self.pending) - self.max_pending
        if overflow > 0:  # only if the writer is wedged for minutes; the disk bound is the real one
            for _ in range(overflow):
                self.pending.popleft()
            self.counters["dropped_memory"] += overflow
        if len(self.pending) >= self.settings.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        await self._step(replay=True)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._step(replay=False)  # to the server if it is up, else to disk
        self._spill(list(self.pending))
        self.pending.clear()
        self.buffer.close()
        if self._client is not None:
            await asyncio.to_thread(self._client.close)

    def outage(self) -> str | None:
        if self._problem is None:
            return None
        return f"InfluxDB at {self.settings.url} not writable: {self._problem}"

    def stats(self) -> dict[str, float]:
        return {
            **{k: float(v) for k, v in self.counters.items()},
            "pending": float(len(self.pending)),
            "pending_age_s": pending_age(self._oldest_pending_s),
            "buffer_points": float(self.buffer.points),
            "buffer_bytes": float(self.buffer.bytes),
            "state_files_set_aside": float(len(self.buffer.set_aside)),
            "connected": 0.0 if self._problem else 1.0,
        }

    # -- the writer loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            # Woken early by a full batch, or on the flush interval: both mean "write now".
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.flush_interval_s)
            self._wake.clear()
            try:
                await self._step(replay=True)
            except Exception:
                log.exception("telemetry: writer step failed; data stays queued")

    async def _step(self, replay: bool) -> None:
        # One step at a time: a flush() racing the writer loop would reorder batches.
        async with self._step_lock:
            await self._step_locked(replay)

    async def _step_locked(self, replay: bool) -> None:
        size = self.settings.batch_size
        while self.pending:
            batch = [self.pending.popleft() for _ in range(min(size, len(self.pending)))]
            if self.buffer.points or self._now() < self._retry_at:
                self._spill(batch)  # behind what is already waiting, to keep the order
                continue
            result = await self._write(batch)
            if result.outcome in (Outcome.RETRY, Outcome.CONFIG):
                self._spill(batch)
        # Here, not before the loop: lines submitted during a write above were taken too.
        self._oldest_pending_s = None
        if replay:
            await self._replay()

    async def _replay(self) -> None:
        for _ in range(REPLAY_BATCHES_PER_STEP):
            if self._now() < self._retry_at:
                return
            stored = self.buffer.oldest()
            if stored is None:
                return
            result = await self._write(stored.lines)
            if result.outcome in (Outcome.RETRY, Outcome.CONFIG):
                return
            self.buffer.remove(stored.id)
            if result.outcome is Outcome.WRITTEN:
                self.counters["replayed"] += len(stored.lines)
        if self.buffer.points:
            self._wake.set()  # more to replay: come back right after taking in new data

    def _spill(self, batch: list[str]) -> None:
        if not batch:
            return
        dropped = self.buffer.append(batch)
        self.counters["buffered"] += len(batch)
        if dropped:
            self.counters["dropped_bound"] += dropped
            if not self._drop_logged:
                self._drop_logged = True
                log.error(
                    "telemetry: disk buffer full (%.0f MB): dropping the oldest points "
                    "(%d so far; logged once per outage)",
                    self.settings.buffer_max_mb,
                    dropped,
                )

    async def _write(self, lines: list[str]) -> WriteResult:
        result = await self._post("\n".join(lines))
        if result.outcome is Outcome.WRITTEN:
            self.counters["written"] += len(lines)
            if self._problem is not None:
                log.info("telemetry: InfluxDB at %s writable again", self.settings.url)
            self._problem = None
            self._drop_logged = self._drop_logged and bool(self.buffer.points)
            self._backoff_s = RETRY_MIN_S
            return result
        self.counters["write_errors"] += 1
        if result.outcome is Outcome.REJECTED:
            self.counters["rejected"] += len(lines)
            log.error(
                "telemetry: InfluxDB refused a batch of %d points, dropped: %s",
                len(lines),
                result.detail,
            )
            return result
        if result.outcome is Outcome.CONFIG:
            delay = max(CONFIG_RETRY_S, result.retry_after_s or 0.0)
            if self._problem != result.detail:
                log.error(
                    "telemetry: configuration error writing to %s (check token, org and bucket "
                    "in [influx]): %s; keeping data on disk, retrying every %.0f s",
                    self.settings.url,
                    result.detail,
                    delay,
                )
        else:
            delay = result.retry_after_s or self._backoff_s * random.uniform(0.8, 1.2)
            self._backoff_s = min(self._backoff_s * 2, self.settings.retry_max_s)
            if self._problem is None:
                log.warning(
                    "telemetry: InfluxDB at %s unavailable (%s); buffering to %s",
                    self.settings.url,
                    result.detail,
                    self.buffer.path,
                )
        self._problem = result.detail
        self._retry_at = self._now() + delay
        return result

    async def _post(self, body: str) -> WriteResult:
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision
        from urllib3.exceptions import HTTPError

        try:
            await asyncio.to_thread(
                self._write_api.write,
                bucket=self.settings.bucket,
                org=self.settings.org,
                record=body,
                write_precision=WritePrecision.S,
            )
        except InfluxDBError as err:
            status = getattr(err, "status", None) or getattr(err.response, "status", None)
            if status is None:
                return WriteResult(Outcome.RETRY, str(err))
            return classify_http_error(int(status), err.message, err.retry_after)
        except (OSError, HTTPError) as err:  # refused, reset, timed out
            return WriteResult(Outcome.RETRY, f"{type(err).__name__}: {err}")
        return WriteResult(Outcome.WRITTEN)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()
