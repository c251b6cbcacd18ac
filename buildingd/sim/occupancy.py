"""Stochastic occupancy on an office schedule, deterministic under a seed.

Each occupant of a zone gets, per working day, an arrival, a lunch break and a departure drawn
from distributions around office hours; meeting rooms get random meeting blocks instead.
"""

from __future__ import annotations

import random
from datetime import datetime


class OccupancyModel:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._plans: dict[tuple[str, int], list[tuple[float, float]]] = {}

    def _plan(
        self, zone_id: str, occupants: int, meeting: bool, local: datetime
    ) -> list[tuple[float, float]]:
        """Intervals (start hour, end hour) of presence for each occupant on that day."""
        key = (zone_id, local.toordinal())
        if key in self._plans:
            return self._plans[key]
        rng = random.Random(f"occupancy:{self.seed}:{zone_id}:{local.toordinal()}")
        intervals: list[tuple[float, float]] = []
        if local.weekday() < 5:
            if meeting:
                hour = 9.0
                while hour < 17.0:
                    length = rng.choice((0.5, 1.0, 1.0, 1.5))
                    if rng.random() < 0.45:
                        intervals.append((hour, hour + length))
                    hour += length + rng.choice((0.0, 0.5))
            else:
                for _ in range(occupants):
                    if rng.random() < 0.15:  # away today (leave, travel, home office)
                        continue
                    arrive = rng.gauss(8.3, 0.6)
                    leave = rng.gauss(17.2, 0.7)
                    lunch = rng.gauss(12.3, 0.3)
                    intervals.append((arrive, lunch))
                    intervals.append((lunch + rng.uniform(0.4, 0.9), max(leave, lunch + 1.0)))
        self._plans[key] = intervals
        if len(self._plans) > 4096:  # bounded: drop the oldest days
            self._plans.pop(next(iter(self._plans)))
        return intervals

    def occupants(self, zone_id: str, design: int, meeting: bool, local: datetime) -> int:
        if design <= 0:
            return 0
        hour = local.hour + local.minute / 60 + local.second / 3600
        present = sum(
            1 for start, end in self._plan(zone_id, design, meeting, local) if start <= hour < end
        )
        if meeting:
            return design // 2 + 1 if present else 0
        return present
