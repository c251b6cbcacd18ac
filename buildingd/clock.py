"""Clocks: monotonic time for intervals, UTC wall time for schedules and timestamps.

The daemon gets ``SystemClock``; the simulator and ``--speed`` runs get ``ScaledClock``, whose
time advances ``speed`` times faster than the event loop's; tests can fast-forward the loop.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (simulated seconds for a scaled clock)."""
        ...

    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""
        ...

    def to_loop_seconds(self, seconds: float) -> float:
        """How many event-loop seconds ``seconds`` of this clock last (for timeouts)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def to_loop_seconds(self, seconds: float) -> float:
        return seconds


class ScaledClock:
    """Simulated time starting at ``start``, running ``speed`` times the event loop's time.

    Uses ``loop.time()`` so that a test that fast-forwards the loop fast-forwards this clock.
    """

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start = start.astimezone(UTC)
        self.speed = speed
        self._origin: float | None = None

    def _loop_elapsed(self) -> float:
        now = asyncio.get_running_loop().time()
        if self._origin is None:
            self._origin = now
        return now - self._origin

    def monotonic(self) -> float:
        return self._loop_elapsed() * self.speed

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.monotonic())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def to_loop_seconds(self, seconds: float) -> float:
        return seconds / self.speed
