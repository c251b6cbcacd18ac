"""``buildingd evaluate``: the demo building on simulated time, run twice on the same weather,
occupancy and seed, once with buildingd's control and once with a common-practice baseline;
BOPTEST-style KPIs of both, savings, and bus messages per zone-hour.

The real daemon runs (agents, bus, drivers, simulator) on a virtual-time event loop (looptime):
time jumps ahead whenever every agent is idle, so a week takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from buildingd.clock import ScaledClock
from buildingd.config.loader import Site, load_site
from buildingd.config.policies import DemandResponseEvent
from buildingd.errors import ConfigError
from buildingd.points import PointKind
from buildingd.service.app import Daemon
from buildingd.settings import REPO_SITE, Settings
from buildingd.sim.building import COP_COOLING, COP_HEATING, Building

SAMPLE_S = 300.0  # trajectory resolution (5 min; BOPTEST KPIs are integrated from samples)

# Comfort bounds the KPIs judge both controllers against: EN 16798-1 category II-like office
# band while someone is in the zone, a wide protection band while it is empty.
OCCUPIED_BOUNDS_C = (21.0, 24.0)
EMPTY_BOUNDS_C = (15.0, 30.0)
HUMIDITY_BOUNDS_PCT = (25.0, 60.0)

SCENARIOS = {
    # name: (start date (a Monday), weather, fault)
    "heating": (date(2027, 1, 11), "heating", None),
    "cooling": (date(2026, 7, 13), "cooling", None),
    "mild": (date(2026, 4, 13), "mild", None),
    "sensor-failure": (date(2027, 1, 11), "heating", ("f1-meeting", PointKind.TEMPERATURE)),
    "demand-response": (date(2027, 1, 11), "heating", None),
}
# Demand-response events of a scenario: (offset from the start, duration s, target W). The
# utility calls for 1.5 kW less on Monday 16:00-17:00, the late-afternoon winter peak.
DR_EVENTS = {"demand-response": [(timedelta(hours=16), 3600.0, 1500.0)]}


class NullSink:
    """Evaluation keeps no telemetry; it only counts lines."""

    def __init__(self) -> None:
        self.lines = 0

    async def start(self) -> None:
        return None

    def submit(self, lines: Iterable[str]) -> None:
        self.lines += sum(1 for _ in lines)

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def stats(self) -> dict[str, float]:
        return {"lines": float(self.lines)}


@dataclass
class Run:
    controller: str
    trajectory: Path
    bus_messages: int
    zone_hours: float
    kpis: dict[str, Any] = field(default_factory=dict)
    negotiations: dict[str, int] = field(default_factory=dict)  # outcome -> count

    @property
    def messages_per_zone_hour(self) -> float:
        return self.bus_messages / self.zone_hours if self.zone_hours else 0.0


def _columns(site: Site) -> list[str]:
    cols = ["time_s"]
    for z in site.zones:
        cols += [f"temperature_c:{z}", f"lower_c:{z}", f"upper_c:{z}"]
        cols += [f"humidity_pct:{z}", f"hum_lower_pct:{z}", f"hum_upper_pct:{z}"]
    for z in site.zones:
        cols += [f"power_w:heating_{z}", f"power_w:cooling_{z}", f"power_w:lighting_{z}"]
    return cols


def _row(building: Building, t: float) -> list[float]:
    row = [t]
    for zone in building.zones.values():
        lower, upper = OCCUPIED_BOUNDS_C if zone.occupants else EMPTY_BOUNDS_C
        rh = building.read_point(zone.spec.id, PointKind.HUMIDITY) if not zone.sensor_faults else 0
        row += [round(zone.temperature_c, 3), lower, upper]
        row += [rh, *HUMIDITY_BOUNDS_PCT] if zone.occupants else [rh, 0.0, 100.0]
    for zone in building.zones.values():
        row += [
            round(zone.heating_w / COP_HEATING, 1),
            round(zone.cooling_w / COP_COOLING, 1),
            round(zone.spec.lighting_power_w * zone.light_level_pct / 100, 1),
        ]
    return row


async def _simulate(
    settings: Settings,
    site: Site,
    start: datetime,
    days: float,
    baseline: bool,
    fault: tuple[str, PointKind] | None,
    out: Path,
    progress: TextIO | None,
    label: str,
) -> Run:
    daemon = Daemon(
        settings, site, clock=ScaledClock(start, 1.0), sink_factory=NullSink, baseline=baseline
    )
    duration = days * 86400
    task = asyncio.ensure_future(daemon.run(duration))
    await daemon.ready.wait()
    building = daemon.building
    assert building is not None
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_columns(site))
        t = 0.0
        while t <= duration - SAMPLE_S and not task.done():
            if fault is not None and abs(t - 86400 - 3600 * 3.5) < SAMPLE_S / 2:
                building.inject_fault(fault[0], fault[1], "dead")  # Tuesday 10:00
            if fault is not None and abs(t - 86400 - 3600 * 9.5) < SAMPLE_S / 2:
                building.inject_fault(fault[0], fault[1], None)  # repaired at 16:00
            building.advance_to(daemon.clock.now())
            writer.writerow(_row(building, t))
            if progress is not None and int(t) % 3600 == 0:
                _bar(progress, label, t / duration)
            await asyncio.sleep(SAMPLE_S)
            t += SAMPLE_S
    summary = await task
    if progress is not None:
        _bar(progress, label, 1.0)
        progress.write("\n")
    return Run(
        controller="baseline" if baseline else "buildingd",
        trajectory=out,
        bus_messages=summary.bus_messages,
        zone_hours=len(site.zones) * days * 24,
        negotiations=dict(daemon.coordinator.outcomes) if daemon.coordinator else {},
    )


def _bar(out: TextIO, label: str, fraction: float) -> None:
    width = 40
    done = int(width * min(1.0, fraction))
    out.write(f"\r{label:<10} [{'#' * done}{'.' * (width - done)}] {100 * fraction:5.1f}%")
    out.flush()


def run_once(
    site: Site,
    start: datetime,
    days: float,
    seed: int,
    weather: str,
    baseline: bool,
    fault: tuple[str, PointKind] | None,
    out: Path,
    state_dir: Path,
    progress: TextIO | None = None,
) -> Run:
    import looptime

    settings = Settings(site_dir=site.root, state_dir=state_dir)
    settings = settings.model_copy(
        update={"http": settings.http.model_copy(update={"enabled": False})}
    )
    settings = settings.model_copy(
        update={
            "sim": settings.sim.model_copy(
                update={"seed": seed, "weather": weather, "protocols": False}
            )
        }
    )
    loop = looptime.new_event_loop(start=0.0)
    label = "baseline" if baseline else "buildingd"
    try:
        return loop.run_until_complete(
            _simulate(settings, site, start, days, baseline, fault, out, progress, label)
        )
    finally:
        loop.close()


def savings_pct(ours: float, base: float) -> float | None:
    return None if base == 0 else round(100.0 * (base - ours) / base, 1)


def evaluate(
    site: Site,
    days: float,
    seed: int,
    scenario: str,
    workdir: Path,
    progress: TextIO | None = None,
) -> dict[str, Any]:
    from buildingd.kpi import compute_kpis, read_trajectory_csv

    first_day, weather, fault = SCENARIOS[scenario]
    tz = ZoneInfo(site.timezone)
    start = datetime.combine(first_day, datetime.min.time(), tz)
    events = [
        DemandResponseEvent(start=start + offset, duration_s=duration, target_w=target)
        for offset, duration, target in DR_EVENTS.get(scenario, [])
    ]
    if events:
        site = replace(
            site, demand_response=site.demand_response.model_copy(update={"events": events})
        )
    area = sum(z.area_m2 for z in site.zones.values())
    runs: dict[str, Run] = {}
    for baseline in (False, True):
        name = "baseline" if baseline else "buildingd"
        run = run_once(
            site, start, days, seed, weather, baseline, fault,
            workdir / f"trajectory-{name}.csv", workdir / f"state-{name}", progress,
        )  # fmt: skip
        run.kpis = json.loads(compute_kpis(read_trajectory_csv(run.trajectory), area).to_json())
        runs[name] = run
    ours, base = runs["buildingd"].kpis, runs["baseline"].kpis
    result: dict[str, Any] = {
        "scenario": scenario,
        "days": days,
        "seed": seed,
        "start": start.isoformat(),
        "area_m2": area,
        "buildingd": ours,
        "baseline": base,
        "savings_pct": {
            key: savings_pct(ours[key], base[key])
            for key in ("ener_tot", "ener_light", "ppeak_tot")
            if ours.get(key) is not None and base.get(key) is not None
        },
        "messages_per_zone_hour": {
            name: round(run.messages_per_zone_hour, 2) for name, run in runs.items()
        },
        "trajectories": {name: str(run.trajectory) for name, run in runs.items()},
    }
    for event in events[:1]:  # mean building power while the event lasted
        offset = (event.start - start).total_seconds()
        result["negotiations"] = runs["buildingd"].negotiations
        result["demand_response_window_kw"] = {
            name: round(window_power_kw(run.trajectory, offset, event.duration_s), 3)
            for name, run in runs.items()
        }
    return result


def window_power_kw(trajectory: Path, start_s: float, duration_s: float) -> float:
    """Mean building power (all power columns) over a window of the trajectory."""
    with trajectory.open(newline="") as f:
        rows = [
            r for r in csv.DictReader(f) if start_s <= float(r["time_s"]) < start_s + duration_s
        ]
    totals = [sum(float(v) for k, v in r.items() if k.startswith("power_w:")) for r in rows]
    return sum(totals) / len(totals) / 1000 if totals else 0.0


def plot(result: dict[str, Any], folder: Path, zone_id: str, day: int = 1) -> list[Path]:
    """PNG plots over one representative day (default: the second, a Tuesday)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    series: dict[str, dict[str, list[float]]] = {}
    for name, path in result["trajectories"].items():
        with Path(path).open() as f:
            rows = list(csv.DictReader(f))
        lo, hi = day * 86400, (day + 1) * 86400
        rows = [r for r in rows if lo <= float(r["time_s"]) < hi]
        cols = rows[0].keys() if rows else []
        series[name] = {
            "hour": [(float(r["time_s"]) - lo) / 3600 for r in rows],
            "temp": [float(r[f"temperature_c:{zone_id}"]) for r in rows],
            "lower": [float(r[f"lower_c:{zone_id}"]) for r in rows],
            "upper": [float(r[f"upper_c:{zone_id}"]) for r in rows],
            "power": [
                sum(float(r[c]) for c in cols if c.startswith("power_w:")) / 1000 for r in rows
            ],
            "light": [
                sum(float(r[c]) for c in cols if c.startswith("power_w:lighting_")) / 1000
                for r in rows
            ],
        }
    made = []
    fig, ax = plt.subplots(figsize=(9, 4))
    ref = series["buildingd"]
    ax.fill_between(
        ref["hour"], ref["lower"], ref["upper"], color="tab:green", alpha=0.15, label="comfort band"
    )
    for name, s in series.items():
        ax.plot(s["hour"], s["temp"], label=name)
    ax.set(xlabel="hour of day", ylabel="°C", title=f"{zone_id}: temperature against its band")
    ax.legend()
    made.append(folder / f"temperature-{zone_id}.png")
    fig.savefig(made[-1], dpi=100, bbox_inches="tight")
    for key, title, unit in (("power", "building power", "kW"), ("light", "lighting power", "kW")):
        fig, ax = plt.subplots(figsize=(9, 4))
        for name, s in series.items():
            ax.plot(s["hour"], s[key], label=name)
        ax.set(xlabel="hour of day", ylabel=unit, title=title)
        ax.legend()
        made.append(folder / f"{key}.png")
        fig.savefig(made[-1], dpi=100, bbox_inches="tight")
    plt.close("all")
    return made


def evaluate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="buildingd evaluate", description=__doc__)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--site", type=Path, default=REPO_SITE)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="heating")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--plots", type=Path, help="write PNG plots into this folder")
    parser.add_argument("--plot-zone", default="f1-open-office")
    parser.add_argument("--workdir", type=Path, help="keep trajectories here (default: temporary)")
    args = parser.parse_args(argv)
    try:
        site = load_site(args.site)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="buildingd-evaluate-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = evaluate(site, args.days, args.seed, args.scenario, workdir, sys.stderr)
        if args.plots is not None:
            result["plots"] = [str(p) for p in plot(result, args.plots, args.plot_zone)]
        if args.workdir is None:
            result.pop("trajectories")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


__all__ = ["Run", "asdict", "evaluate", "evaluate_main", "timedelta"]
