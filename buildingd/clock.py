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


# A device's answer takes real time however fast the simulation runs: a request timeout is never
# scaled below this many event-loop seconds (or the configured timeout, if it is shorter).
ANSWER_FLOOR_S = 1.0


def answer_timeout_s(clock: Clock, seconds: float) -> float:
    """Event-loop seconds to wait for a device's answer given a ``seconds`` timeout of
    ``clock``: scaled with a simulation, but not below a real round trip (a loopback answer on a
    loaded machine takes tens of ms; at speed 60 a 3 s timeout would be 50 ms, and every late
    answer a spurious timeout)."""
    return max(clock.to_loop_seconds(seconds), min(seconds, ANSWER_FLOOR_S))
