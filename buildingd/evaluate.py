"""``buildingd evaluate``: the demo building on simulated time, run twice on the same weather,
occupancy and seed, once with buildingd's control and once with a common-practice baseline;
BOPTEST-style KPIs of both, savings, and bus messages per zone-hour.

The real daemon runs (agents, bus, drivers, simulator) on a virtual-time event loop (looptime):
time jumps ahead whenever every agent is idle. The two runs are independent, so they run in two
processes side by side when the machine has two cores (``--jobs``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import functools
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from buildingd.clock import ScaledClock
from buildingd.config.loader import Site, load_site
from buildingd.config.policies import DemandResponseEvent
from buildingd.control.zone import ZoneMode
from buildingd.errors import BuildingdError, ConfigError
from buildingd.kpi import Trajectory
from buildingd.points import PointKind
from buildingd.service.app import Daemon
from buildingd.settings import REPO_SITE, Settings
from buildingd.sim.building import (
    COP_COOLING,
    COP_HEATING,
    DEHUMIDIFIER_W,
    Building,
    relative_humidity,
)
from buildingd.sim.weather import Scenario as Weather

# Trajectory resolution: the physical state is sampled every 5 simulated minutes and the KPIs
# are integrated from the samples (trapezoidal, as BOPTEST does). Sampling costs next to nothing
# (the agents and the simulator do the work between samples), so it is not coarsened for speed.
SAMPLE_S = 300.0

# Comfort bounds the KPIs judge both controllers against: EN 16798-1 category II-like office
# band while someone is in the zone, a wide protection band while it is empty.
OCCUPIED_BOUNDS_C = (21.0, 24.0)
EMPTY_BOUNDS_C = (15.0, 30.0)
HUMIDITY_BOUNDS_PCT = (25.0, 60.0)


@dataclass(frozen=True)
class Fault:
    """A sensor that stops answering ``at`` after the start and answers again ``repaired``
    after it (None: never)."""

    zone_id: str
    kind: PointKind
    at: timedelta
    repaired: timedelta | None = None


@dataclass(frozen=True)
class DemandResponse:
    """A utility's call for ``target_w`` less, ``at`` after the start, for ``duration_s``."""

    at: timedelta
    duration_s: float
    target_w: float


@dataclass(frozen=True)
class Scenario:
    """What an evaluation runs: from 00:00 local time on ``first_day`` (a Monday), synthetic
    ``weather`` drawn from the seed, and what happens on top."""

    first_day: date
    weather: Weather
    about: str
    fault: Fault | None = None
    demand_response: tuple[DemandResponse, ...] = ()


SCENARIOS = {
    "heating": Scenario(date(2027, 1, 11), "heating", "a cold January week (mean 1 °C)"),
    "cooling": Scenario(date(2026, 7, 13), "cooling", "a hot July week (mean 25 °C)"),
    "mild": Scenario(date(2026, 4, 13), "mild", "an April week (mean 12 °C)"),
    # The meeting room's thermostat stops answering an hour after the building opens and is
    # repaired six hours later: the zone must fall back to a safe hold and say so.
    "sensor-failure": Scenario(
        date(2027, 1, 11),
        "heating",
        "heating week; f1-meeting's temperature sensor dead Monday 08:00-14:00",
        fault=Fault("f1-meeting", PointKind.TEMPERATURE, timedelta(hours=8), timedelta(hours=14)),
    ),
    # The utility calls for 1.5 kW less on Monday 16:00-17:00, the late-afternoon winter peak.
    "demand-response": Scenario(
        date(2027, 1, 11),
        "heating",
        "heating week; a call for 1.5 kW less on Monday 16:00-17:00",
        demand_response=(DemandResponse(timedelta(hours=16), 3600.0, 1500.0),),
    ),
}

# looptime spins this many extra idle loop cycles before each jump of the clock, for I/O and
# threads that could still wake the loop. An evaluation has neither (no sockets, no executor,
# telemetry goes to ``NullSink``), so none are needed (looptime still makes one idle pass): its
# default of 42 cost about 15 % of the CPU time. Timers fire at the same virtual times, in the
# same order: the trajectories are byte for byte the same.
NOOP_CYCLES = 0


class LoopClock(ScaledClock):
    """``ScaledClock`` at speed 1 on a loop known in advance: the same readings with two
    lookups fewer (agents read the clock ~50 times per simulated second)."""

    def __init__(self, start: datetime, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(start, 1.0)
        self._time = loop.time

    def monotonic(self) -> float:
        if self._origin is None:
            self._origin = self._time()
        return self._time() - self._origin


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

    def outage(self) -> str | None:
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
    # Alerts the daemon showed (``Daemon.open_alerts``) at any sample, in the order first seen.
    alerts: list[str] = field(default_factory=list)
    hold_h: dict[str, float] = field(default_factory=dict)  # zones that were in safe hold
    modes_at_end: dict[str, str] = field(default_factory=dict)  # at the last sample

    @property
    def messages_per_zone_hour(self) -> float:
        return self.bus_messages / self.zone_hours if self.zone_hours else 0.0


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs (picklable: it is handed to a worker process)."""

    site: Site
    start: datetime
    days: float
    seed: int
    weather: Weather
    baseline: bool
    fault: Fault | None
    out: Path
    state_dir: Path

    @property
    def label(self) -> str:
        return "baseline" if self.baseline else "buildingd"


def _columns(site: Site) -> list[str]:
    cols = ["time_s"]
    for z in site.zones:
        cols += [f"temperature_c:{z}", f"lower_c:{z}", f"upper_c:{z}"]
        cols += [f"humidity_pct:{z}", f"hum_lower_pct:{z}", f"hum_upper_pct:{z}"]
    for z in site.zones:
        cols += [f"power_w:heating_{z}", f"power_w:cooling_{z}", f"power_w:lighting_{z}"]
        cols += [f"power_w:dehumidifier_{z}"]
    return cols


def _row(building: Building, t: float) -> list[float]:
    """The physical state at ``t``: what the occupants feel and what the meters count, not what
    the sensors say (a dead sensor does not make a room's air dry, and reading the simulated
    sensors here would draw from their noise and change the run)."""
    row = [t]
    for zone in building.zones.values():
        lower, upper = OCCUPIED_BOUNDS_C if zone.occupants else EMPTY_BOUNDS_C
        rh = round(relative_humidity(zone.temperature_c, zone.humidity_ratio), 1)
        row += [round(zone.temperature_c, 3), lower, upper]
        row += [rh, *HUMIDITY_BOUNDS_PCT] if zone.occupants else [rh, 0.0, 100.0]
    for zone in building.zones.values():
        row += [
            round(zone.heating_w / COP_HEATING, 1),
            round(zone.cooling_w / COP_COOLING, 1),
            round(zone.spec.lighting_power_w * zone.light_level_pct / 100, 1),
            zone.dehumidifier * DEHUMIDIFIER_W,
        ]
    return row


def _alert_text(alert: dict[str, object]) -> str:
    if "escalation" in alert:
        return f"escalation: {alert['escalation']}"
    for key in ("zone", "device", "agent"):
        if key in alert:
            return f"{key} {alert[key]}: {alert.get('cause')}"
    return json.dumps(alert, sort_keys=True, default=str)


async def _simulate(spec: RunSpec, settings: Settings, progress: Callable[[float], None]) -> Run:
    site, fault = spec.site, spec.fault
    clock = LoopClock(spec.start, asyncio.get_running_loop())
    daemon = Daemon(settings, site, clock=clock, sink_factory=NullSink, baseline=spec.baseline)
    duration = spec.days * 86400
    task = asyncio.ensure_future(daemon.run(duration))
    await daemon.ready.wait()
    building = daemon.building
    assert building is not None
    fail_s = fault.at.total_seconds() if fault else math.inf
    repair_s = fault.repaired.total_seconds() if fault and fault.repaired else math.inf
    dead = False
    alerts: dict[str, None] = {}  # an ordered set
    hold_s: dict[str, float] = {}
    modes: dict[str, str] = {}
    with spec.out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_columns(site))
        t = 0.0
        while t <= duration - SAMPLE_S and not task.done():
            if fault is not None and dead != (fail_s <= t < repair_s):
                dead = not dead
                building.inject_fault(fault.zone_id, fault.kind, "dead" if dead else None)
            building.advance_to(daemon.clock.now())
            writer.writerow(_row(building, t))
            for alert in daemon.open_alerts():
                alerts.setdefault(_alert_text(alert), None)
            for zone_id, agent in daemon.zone_agents.items():
                modes[zone_id] = agent.state.mode.value
                if agent.state.mode is ZoneMode.HOLD:
                    hold_s[zone_id] = hold_s.get(zone_id, 0.0) + SAMPLE_S
            progress(t / duration)
            await asyncio.sleep(SAMPLE_S)
            t += SAMPLE_S
    summary = await task
    progress(1.0)
    return Run(
        controller=spec.label,
        trajectory=spec.out,
        bus_messages=summary.bus_messages,
        zone_hours=len(site.zones) * spec.days * 24,
        negotiations=dict(daemon.coordinator.outcomes) if daemon.coordinator else {},
        alerts=list(alerts)[:50],
        hold_h={z: round(s / 3600, 2) for z, s in hold_s.items()},
        modes_at_end=modes,
    )


class Progress:
    """Progress of an evaluation on ``out`` (stderr). On a terminal, one line of bars redrawn in
    place; anywhere else (a pipe, a log file, CI, the journal) a plain line each time the whole
    evaluation passes another 10 %, so a log shows progress without carriage returns."""

    width = 20

    def __init__(self, out: TextIO, labels: Sequence[str]) -> None:
        self.out = out
        try:
            self.tty = out.isatty()
        except (AttributeError, ValueError):  # a closed or unusual stream: plain lines
            self.tty = False
        self.fractions = dict.fromkeys(labels, 0.0)
        self._tenths = 0

    def update(self, label: str, fraction: float) -> None:
        fraction = min(1.0, max(0.0, fraction))
        if fraction <= self.fractions[label]:
            return  # never backwards
        self.fractions[label] = fraction
        if self.tty:
            self._draw()
            return
        overall = sum(self.fractions.values()) / len(self.fractions)
        tenths = int(overall * 10 + 1e-9)
        if tenths > self._tenths:
            self._tenths = tenths
            each = ", ".join(f"{n} {100 * f:.0f}%" for n, f in self.fractions.items())
            self.out.write(f"evaluate: {10 * tenths}% ({each})\n")
            self.out.flush()

    def _draw(self) -> None:
        bars = "  ".join(
            f"{name} [{'#' * int(self.width * f)}{'.' * (self.width - int(self.width * f))}]"
            f" {100 * f:5.1f}%"
            for name, f in self.fractions.items()
        )
        self.out.write(f"\r{bars}")
        self.out.flush()

    def message(self, line: str) -> None:
        """A line that is not progress (what a run logged); on a terminal it goes above the
        bars, which are drawn again below it."""
        if self.tty:
            self.out.write(f"\r\x1b[K{line}\n")
            self._draw()
        else:
            self.out.write(f"{line}\n")
            self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _settings(spec: RunSpec) -> Settings:
    settings = Settings(site_dir=spec.site.root, state_dir=spec.state_dir)
    return settings.model_copy(
        update={
            "http": settings.http.model_copy(update={"enabled": False}),
            "sim": settings.sim.model_copy(
                update={"seed": spec.seed, "weather": spec.weather, "protocols": False}
            ),
        }
    )


def run_one(spec: RunSpec, progress: Callable[[float], None] | None = None) -> Run:
    """One controller over the whole horizon, on a virtual-time loop of its own."""
    import looptime

    loop = looptime.new_event_loop(start=0.0, noop_cycles=NOOP_CYCLES)
    try:
        return loop.run_until_complete(
            _simulate(spec, _settings(spec), progress or (lambda _fraction: None))
        )
    finally:
        loop.close()


def _worker_main(spec_file: str) -> None:
    """A run in a worker process (``run_all``): the spec is read from ``spec_file``
    (``*.spec``), progress written beside it (``*.progress``), the run at the end (``*.run``)."""
    spec_path = Path(spec_file)
    spec = pickle.loads(spec_path.read_bytes())
    parent = os.getppid()

    def replace_file(suffix: str, data: bytes) -> None:
        tmp = spec_path.with_suffix(suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(spec_path.with_suffix(suffix))  # readers never see half a file

    last = 0.0

    def report(fraction: float) -> None:
        nonlocal last
        if os.getppid() != parent:  # the caller died without stopping us: nobody wants this run
            os._exit(3)
        if time.monotonic() - last >= 0.2:  # the caller looks twice a second
            last = time.monotonic()
            replace_file(".progress", f"{fraction:.6f}".encode())

    replace_file(".run", pickle.dumps(run_one(spec, report)))


class _Worker:
    """One run in a child interpreter (``python -c``): independent of how the caller's program
    starts (no ``if __name__ == "__main__"`` needed, unlike multiprocessing's spawn), and
    killed if the caller is interrupted."""

    def __init__(self, spec: RunSpec, folder: Path) -> None:
        self.spec = spec
        self.spec_file = folder / f"{spec.label}.spec"
        self.spec_file.write_bytes(pickle.dumps(spec))
        self.stderr = self.spec_file.with_suffix(".stderr").open("w+")
        # The child imports the very buildingd this process runs.
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
        code = f"from buildingd.evaluate import _worker_main; _worker_main({str(self.spec_file)!r})"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=self.stderr,
            stderr=self.stderr, env=env,
        )  # fmt: skip

    def fraction(self) -> float:
        try:
            return float(self.spec_file.with_suffix(".progress").read_text())
        except (OSError, ValueError):
            return 0.0

    def result(self) -> Run:
        """The run, once the process is done; what it logged is left in ``output``."""
        code = self.proc.wait()
        self.stderr.seek(0)
        output = self.stderr.read()
        self.stderr.close()
        if code != 0:
            raise BuildingdError(
                f"evaluate: the {self.spec.label} run failed (exit {code}):\n{output[-4000:]}"
            )
        self.output = output
        run: Run = pickle.loads(self.spec_file.with_suffix(".run").read_bytes())
        return run

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def run_all(specs: Sequence[RunSpec], jobs: int, progress: Progress | None) -> list[Run]:
    """The runs, in this process one after the other (``jobs`` 1) or up to ``jobs`` at a time
    in child processes. Either way each run is the same computation with the same result."""

    def show(label: str, fraction: float) -> None:
        if progress is not None:
            progress.update(label, fraction)

    def say(line: str) -> None:
        if progress is not None:
            progress.message(line)
        else:
            print(line, file=sys.stderr)

    if jobs <= 1 or len(specs) <= 1:
        return [run_one(s, functools.partial(show, s.label)) for s in specs]
    runs: dict[str, Run] = {}
    waiting = list(specs)
    running: list[_Worker] = []
    with tempfile.TemporaryDirectory(prefix="buildingd-evaluate-jobs-") as tmp:
        try:
            while waiting or running:
                while waiting and len(running) < jobs:
                    running.append(_Worker(waiting.pop(0), Path(tmp)))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    running[0].proc.wait(0.5)
                for worker in list(running):
                    show(worker.spec.label, worker.fraction())
                    if worker.proc.poll() is not None:
                        running.remove(worker)
                        runs[worker.spec.label] = worker.result()
                        show(worker.spec.label, 1.0)
                        # What the run logged (warnings, alerts), saying which run it was.
                        for line in worker.output.splitlines():
                            say(f"{worker.spec.label}: {line}")
        finally:
            for worker in running:
                worker.kill()
    return [runs[s.label] for s in specs]


def default_jobs() -> int:
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def savings_pct(ours: float, base: float) -> float | None:
    return None if base == 0 else round(100.0 * (base - ours) / base, 1)


def evaluate(
    site: Site,
    days: float,
    seed: int,
    scenario: str,
    workdir: Path,
    progress: TextIO | None = None,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Both controllers over ``days`` of ``scenario``; trajectories are written to ``workdir``.
    ``jobs``: processes to use (default: two when there are two cores; 1 runs in-process)."""
    from buildingd.kpi import compute_kpis, read_trajectory_csv

    chosen = SCENARIOS[scenario]
    tz = ZoneInfo(site.timezone)
    start = datetime.combine(chosen.first_day, datetime.min.time(), tz)
    events = [
        DemandResponseEvent(start=start + dr.at, duration_s=dr.duration_s, target_w=dr.target_w)
        for dr in chosen.demand_response
    ]
    if events:
        site = replace(
            site, demand_response=site.demand_response.model_copy(update={"events": events})
        )
    area = sum(z.area_m2 for z in site.zones.values())
    specs = [
        RunSpec(
            site,
            start,
            days,
            seed,
            chosen.weather,
            baseline,
            chosen.fault,
            workdir / f"trajectory-{name}.csv",
            workdir / f"state-{name}",
        )  # fmt: skip
        for baseline, name in ((False, "buildingd"), (True, "baseline"))
    ]
    for spec in specs:  # every evaluation learns from nothing, whatever an earlier one left
        shutil.rmtree(spec.state_dir, ignore_errors=True)
    bar = Progress(progress, [s.label for s in specs]) if progress is not None else None
    runs = {
        run.controller: run for run in run_all(specs, default_jobs() if jobs is None else jobs, bar)
    }
    if bar is not None:
        bar.finish()
    trajectories = {name: read_trajectory_csv(run.trajectory) for name, run in runs.items()}
    for name, run in runs.items():
        run.kpis = json.loads(compute_kpis(trajectories[name], area).to_json())
    ours, base = runs["buildingd"].kpis, runs["baseline"].kpis
    result: dict[str, Any] = {
        "scenario": scenario,
        "about": chosen.about,
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
        "alerts": {name: run.alerts for name, run in runs.items()},
        "trajectories": {name: str(run.trajectory) for name, run in runs.items()},
    }
    if days > WEEK_DAYS:
        # Learning from nothing: each week on its own, so the second shows what was learned.
        result["weeks"] = [
            _week_kpis(trajectories, area, week) for week in range(math.ceil(days / WEEK_DAYS))
        ]
    result["optimal_start_min"] = optimal_start_report(specs[0].state_dir, site, start.date(), days)
    if chosen.fault is not None:
        fault = chosen.fault
        result["fault"] = {
            "zone": fault.zone_id,
            "point": fault.kind.value,
            "failed_at": (start + fault.at).isoformat(),
            "repaired_at": (start + fault.repaired).isoformat() if fault.repaired else None,
            **{
                name: {
                    "hold_h": run.hold_h.get(fault.zone_id, 0.0),
                    "mode_at_end": run.modes_at_end.get(fault.zone_id),
                    "alerts": [a for a in run.alerts if fault.zone_id in a],
                }
                for name, run in runs.items()
            },
        }
    for event in events[:1]:  # mean building power while the event lasted
        offset = (event.start - start).total_seconds()
        result["negotiations"] = runs["buildingd"].negotiations
        result["demand_response_window_kw"] = {
            name: round(window_power_kw(run.trajectory, offset, event.duration_s), 3)
            for name, run in runs.items()
        }
    return result


WEEK_DAYS = 7


def _week_kpis(trajectories: dict[str, Trajectory], area: float, week: int) -> dict[str, Any]:
    from buildingd.kpi import compute_kpis

    start_s, end_s = week * WEEK_DAYS * 86400.0, (week + 1) * WEEK_DAYS * 86400.0
    kpis = {
        name: json.loads(compute_kpis(t.between(start_s, end_s), area).to_json())
        for name, t in trajectories.items()
    }
    ours, base = kpis["buildingd"], kpis["baseline"]
    return {
        "week": week + 1,
        **kpis,
        "savings_pct": {
            key: savings_pct(ours[key], base[key]) for key in ("ener_tot", "ener_light")
        },
    }


def optimal_start_report(
    state_dir: Path, site: Site, first_day: date, days: float
) -> dict[str, dict[str, Any]]:
    """Per zone, from its learned state: each week's start errors in minutes (+ late, - early)
    and their p90 of the absolute error (the nearest-rank 90th percentile)."""
    from buildingd.agents import learning_file

    report: dict[str, dict[str, Any]] = {}
    weeks = max(1, math.ceil(days / WEEK_DAYS))
    for zone_id in site.zones:
        if not site.policy_for(zone_id).schedule.occupied_hours:
            continue
        learned = learning_file.load(state_dir, zone_id)
        entry: dict[str, Any] = {}
        for week in range(weeks):
            minutes = [
                round(s.error_s / 60, 1)
                for s in learned.starts
                if (s.day - first_day).days // WEEK_DAYS == week
            ]
            ranked = sorted(abs(m) for m in minutes)
            p90 = ranked[math.ceil(0.9 * len(ranked)) - 1] if ranked else None
            entry[f"week {week + 1}"] = {"errors": minutes, "p90_abs": p90}
        report[zone_id] = entry
    return report


def window_power_kw(trajectory: Path, start_s: float, duration_s: float) -> float:
    """Mean building power (all power columns) over a window of the trajectory."""
    with trajectory.open(newline="") as f:
        rows = [
            r for r in csv.DictReader(f) if start_s <= float(r["time_s"]) < start_s + duration_s
        ]
    totals = [sum(float(v) for k, v in r.items() if k.startswith("power_w:")) for r in rows]
    return sum(totals) / len(totals) / 1000 if totals else 0.0


def plot(result: dict[str, Any], folder: Path, zone_id: str, day: int | None = None) -> list[Path]:
    """PNG plots over one representative day: by default the second (a Tuesday, past the first
    night's start-up) when the run has it, else the first (what there is of it)."""
    if day is None:
        day = 1 if result["days"] >= 2 else 0
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
    parser = argparse.ArgumentParser(
        prog="buildingd evaluate",
        description=__doc__,
        epilog="scenarios: "
        + "; ".join(f"{name}: {s.about}" for name, s in SCENARIOS.items())
        + ". Progress goes to stderr: a bar on a terminal, otherwise a line per 10 %.",
    )
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--site", type=Path, default=REPO_SITE)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="heating")
    parser.add_argument(
        "--jobs",
        type=int,
        default=default_jobs(),
        help="processes (the two controllers side by side; 1: one after the other)",
    )
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
        result = evaluate(
            site, args.days, args.seed, args.scenario, workdir, sys.stderr, jobs=args.jobs
        )
        if args.plots is not None:
            result["plots"] = [str(p) for p in plot(result, args.plots, args.plot_zone)]
        if args.workdir is None:
            result.pop("trajectories")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


__all__ = ["SCENARIOS", "Run", "RunSpec", "Scenario", "evaluate", "evaluate_main", "plot"]
