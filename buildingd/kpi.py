"""Building-control KPIs of a trajectory, following BOPTEST's core KPIs.

Definitions follow the BOPTEST documentation (IBPSA Project 1, "Key Performance Indicators",
https://ibpsa.github.io/project1-boptest/docs-testcases/ and Blum et al., "Building optimization
testing framework (BOPTEST) for simulation-based benchmarking of control strategies in
buildings", J. Build. Perf. Sim. 14(5), 2021, section 3.3):

* ``tdis_tot`` thermal discomfort, K·h per zone: for each zone the time integral (trapezoidal) of
  the deviation below the lower and above the upper comfort bound, then the mean over zones.
* ``ener_tot`` energy use, kWh/m²: time integral of the sum of all power signals over floor area.
* ``ppeak_tot`` peak power, kW/m²: the largest 15-minute mean of the summed power, over floor area
  (BOPTEST resamples to 15-minute means before taking the maximum).

In the same style, buildingd adds:

* ``hdis_tot`` humidity discomfort, %RH·h per zone, when humidity columns are present.
* ``ener_light`` lighting energy, kWh/m², from the ``power_w:lighting*`` columns.

Input is a CSV with a ``time_s`` column, per zone ``temperature_c:<zone>``, ``lower_c:<zone>``,
``upper_c:<zone>`` (optionally ``humidity_pct:``, ``hum_lower_pct:``, ``hum_upper_pct:``) and any
number of ``power_w:<name>`` columns.

A missing sample (an empty cell or ``nan``) is missing, never zero: the intervals on either side
of it are left out of that signal's integral (a gap counts neither as comfort nor as discomfort,
neither as energy nor as none), and a sum of signals is missing where any of them is.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from buildingd.errors import BuildingdError

PEAK_WINDOW_S = 900.0  # BOPTEST: 15-minute means for peak power


class TrajectoryError(BuildingdError, ValueError):
    """The trajectory file cannot be used: says which file, row or column."""


@dataclass(frozen=True)
class Trajectory:
    time_s: list[float]
    columns: dict[str, list[float]]

    def zones(self) -> list[str]:
        return sorted(c.split(":", 1)[1] for c in self.columns if c.startswith("temperature_c:"))

    def power_columns(self, prefix: str = "") -> list[str]:
        return [c for c in self.columns if c.startswith("power_w:" + prefix)]

    def between(self, start_s: float, end_s: float) -> Trajectory:
        """The rows with ``start_s <= time_s <= end_s`` (a week of a longer run)."""
        keep = [i for i, t in enumerate(self.time_s) if start_s <= t <= end_s]
        return Trajectory(
            [self.time_s[i] for i in keep],
            {name: [values[i] for i in keep] for name, values in self.columns.items()},
        )


@dataclass(frozen=True)
class Kpis:
    tdis_tot: float  # K·h per zone
    ener_tot: float  # kWh/m²
    ppeak_tot: float  # kW/m²
    ener_light: float  # kWh/m²
    hdis_tot: float | None  # %RH·h per zone, None without humidity columns
    zones: int
    hours: float
    tdis_by_zone: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def read_trajectory_csv(path: Path) -> Trajectory:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as err:
        raise TrajectoryError(f"{path}: {err.strerror}") from err
    if not rows or "time_s" not in rows[0]:
        raise TrajectoryError(f"{path}:1: no time_s column in the header")
    header = rows[0]
    values: dict[str, list[float]] = {name: [] for name in header}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise TrajectoryError(f"{path}:{line_no}: {len(row)} values for {len(header)} columns")
        for name, text in zip(header, row, strict=True):
            try:
                values[name].append(float(text) if text.strip() else math.nan)
            except ValueError:
                raise TrajectoryError(f"{path}:{line_no}: {name}: not a number: {text!r}") from None
    time_s = values.pop("time_s")
    if any(b <= a for a, b in zip(time_s, time_s[1:], strict=False)):
        raise TrajectoryError(f"{path}: time_s must increase strictly")
    return Trajectory(time_s, values)


def integrate(time_s: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal time integral (value·s); intervals with a missing (NaN) end are left out."""
    return sum(
        (t1 - t0) * (v0 + v1) / 2
        for t0, t1, v0, v1 in zip(time_s, time_s[1:], values, values[1:], strict=False)
        if v0 == v0 and v1 == v1  # NaN is the one value unequal to itself
    )


def band_deviation(
    values: Sequence[float], lower: Sequence[float], upper: Sequence[float]
) -> list[float]:
    """Distance outside [lower, upper]; missing (NaN) where the value or a bound is."""
    return [
        max(lo - v, 0.0) + max(v - hi, 0.0) if v == v and lo == lo and hi == hi else math.nan
        for v, lo, hi in zip(values, lower, upper, strict=True)
    ]


def peak_window_mean(time_s: Sequence[float], power: Sequence[float]) -> float:
    """Largest mean of a piecewise-linear signal over consecutive 15-minute windows (a window's
    mean is taken over the part of it where the signal is known)."""
    if len(time_s) < 2:
        return power[0] if power and power[0] == power[0] else 0.0
    start, end = time_s[0], time_s[-1]
    if end - start <= PEAK_WINDOW_S:
        return _window_mean(time_s, power, start, end)
    peak = 0.0
    edge = start
    while edge + PEAK_WINDOW_S <= end + 1e-9:
        peak = max(peak, _window_mean(time_s, power, edge, edge + PEAK_WINDOW_S))
        edge += PEAK_WINDOW_S
    return peak


def _window_mean(time_s: Sequence[float], values: Sequence[float], a: float, b: float) -> float:
    """Mean over [a, b] of the linear interpolation of the samples, where they are known."""
    total = covered = 0.0
    for t0, t1, v0, v1 in zip(time_s, time_s[1:], values, values[1:], strict=False):
        lo, hi = max(t0, a), min(t1, b)
        if hi <= lo or v0 != v0 or v1 != v1:  # outside the window, or a missing end
            continue
        slope = (v1 - v0) / (t1 - t0)
        total += (hi - lo) * (v0 + slope * ((lo + hi) / 2 - t0))
        covered += hi - lo
    return total / covered if covered else 0.0


def compute_kpis(trajectory: Trajectory, area_m2: float) -> Kpis:
    if area_m2 <= 0:
        raise TrajectoryError(f"floor area must be positive, got {area_m2}")
    t, cols = trajectory.time_s, trajectory.columns
    zones = trajectory.zones()
    if not zones:
        raise TrajectoryError("no temperature_c:<zone> column")
    for zone in zones:
        for prefix in ("lower_c:", "upper_c:"):
            if prefix + zone not in cols:
                raise TrajectoryError(f"zone {zone}: missing column {prefix}{zone}")

    def band_hours(zone: str, value: str, lower: str, upper: str) -> float:
        """Time integral of the deviation outside the band, in unit·h."""
        deviation = band_deviation(cols[value + zone], cols[lower + zone], cols[upper + zone])
        return integrate(t, deviation) / 3600

    tdis = {zone: band_hours(zone, "temperature_c:", "lower_c:", "upper_c:") for zone in zones}
    hdis_zones = [z for z in zones if f"humidity_pct:{z}" in cols]
    hdis = None
    if hdis_zones:
        hdis = sum(
            band_hours(z, "humidity_pct:", "hum_lower_pct:", "hum_upper_pct:") for z in hdis_zones
        ) / len(hdis_zones)
    power_cols = trajectory.power_columns()
    total = [sum(cols[c][i] for c in power_cols) for i in range(len(t))]
    light = [sum(cols[c][i] for c in trajectory.power_columns("lighting")) for i in range(len(t))]
    return Kpis(
        tdis_tot=sum(tdis.values()) / len(zones),
        ener_tot=integrate(t, total) / 3.6e6 / area_m2,
        ppeak_tot=peak_window_mean(t, total) / 1000 / area_m2 if power_cols else 0.0,
        ener_light=integrate(t, light) / 3.6e6 / area_m2,
        hdis_tot=hdis,
        zones=len(zones),
        hours=(t[-1] - t[0]) / 3600 if t else 0.0,
        tdis_by_zone=tdis,
    )


def kpi_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="buildingd kpi", description="BOPTEST-style KPIs of a trajectory CSV (JSON on stdout)"
    )
    parser.add_argument("trajectory", type=Path)
    parser.add_argument("--area-m2", type=float, required=True, help="conditioned floor area")
    args = parser.parse_args(list(argv))
    try:
        kpis = compute_kpis(read_trajectory_csv(args.trajectory), args.area_m2)
    except TrajectoryError as err:
        print(f"buildingd kpi: {err}", file=sys.stderr)
        return 2
    print(kpis.to_json())
    return 0
