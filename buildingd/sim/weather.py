"""Synthetic weather, deterministic under a seed: outdoor temperature, humidity and sun.

Daily sinusoids around a scenario's mean, with day-to-day variation and cloudiness drawn per day.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Scenario = Literal["heating", "cooling", "mild"]

# (daily mean degC, daily amplitude K, outdoor RH %) per scenario; a heating week is a cold
# central-European January week, a cooling week a hot July week.
_CLIMATE: dict[str, tuple[float, float, float]] = {
    "heating": (1.0, 4.0, 80.0),
    "cooling": (25.0, 6.0, 55.0),
    "mild": (12.0, 5.0, 70.0),
}


def scenario_for(moment: datetime) -> Scenario:
    month = moment.month
    if month in (11, 12, 1, 2, 3):
        return "heating"
    if month in (6, 7, 8):
        return "cooling"
    return "mild"


@dataclass(frozen=True)
class Outdoor:
    temperature_c: float
    humidity_pct: float
    # Global irradiance on a surface facing each way, W/m2 (simple clear-sky bell x clouds).
    irradiance_w_m2: dict[str, float]
    horizontal_lux: float


class Weather:
    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self._days: dict[int, tuple[float, float]] = {}

    def _day(self, ordinal: int) -> tuple[float, float]:
        """(mean offset K, cloudiness 0..1) for a calendar day, the same for the same seed."""
        if ordinal not in self._days:
            rng = random.Random(f"weather:{self.seed}:{ordinal}")
            self._days[ordinal] = (rng.gauss(0.0, 2.0), rng.random() ** 1.5)
        return self._days[ordinal]

    def at(self, local: datetime) -> Outdoor:
        mean, amplitude, rh = _CLIMATE[self.scenario]
        offset, cloud = self._day(local.toordinal())
        hour = local.hour + local.minute / 60 + local.second / 3600
        # Coldest around 05:00, warmest around 15:00.
        temperature = mean + offset + amplitude * math.sin((hour - 9.0) / 24 * 2 * math.pi)
        sunrise, sunset = (8.0, 16.5) if self.scenario == "heating" else (5.5, 21.0)
        if self.scenario == "mild":
            sunrise, sunset = 6.5, 19.0
        peak = (
            300.0 if self.scenario == "heating" else 850.0 if self.scenario == "cooling" else 600.0
        )
        if sunrise < hour < sunset:
            phase = (hour - sunrise) / (sunset - sunrise)  # 0..1 across the day
            beam = peak * math.sin(math.pi * phase) * (1.0 - 0.75 * cloud)
            diffuse = 0.15 * peak * math.sin(math.pi * phase)
        else:
            phase, beam, diffuse = 0.0, 0.0, 0.0
        facing = {
            "east": diffuse + beam * max(0.0, math.cos(math.pi * phase)) * 0.8,
            "west": diffuse + beam * max(0.0, -math.cos(math.pi * phase)) * 0.8,
            "south": diffuse + beam * math.sin(math.pi * phase) * 0.7,
            "north": diffuse,
            "none": 0.0,
        }
        # Roughly 110 lm/W for daylight (luminous efficacy of global solar radiation).
        horizontal_lux = (beam + diffuse) * 110.0
        return Outdoor(temperature, rh, facing, horizontal_lux)
