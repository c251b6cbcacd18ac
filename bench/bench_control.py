"""Control-loop benchmarks (JSON on stdout):

- throughput (issue 18's first figure): a generated 200-zone site (2,000 points on 600 simulated
  devices, each polled every 10 s) run in process on virtual time (looptime): the loop jumps to
  the next timer as soon as all that is ready has run, so the site's readings are driven in as
  fast as the daemon takes them, and every one of them is handled: no overload artefacts (points
  turned stale, commands retried, because the loop lags behind a clock sped up past it), and
  decisions as often as in a building (a tick every 10 s, occupancy changes at once). Counted
  from the daemon being ready to its stop (start-up and shutdown left out), per second of wall
  time: ``readings_per_s``, every reading the device agents took from their drivers and judged
  (sent on to the zone, or suppressed as unchanged by report-by-exception); the simulated
  building's own work is inside it. Beside it ``zone_readings_per_s`` (the readings the zone
  agents took from their inboxes: the ones sent on), decisions and commands per second, and
  readings per CPU-second (the machine may be shared). The ratio is ``readings_per_s`` over the
  raw in-process bus rate (one envelope sent and taken), measured just before and just after the
  daemon run (their mean);
- messages per zone-hour with report-by-exception vs publishing every poll (virtual time).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import looptime

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sitegen import generate, settings_for

from buildingd.agents.bus import Envelope, InProcessBus, Mailbox, Performative
from buildingd.agents.device import DeviceAgent
from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.evaluate import NullSink
from buildingd.service.app import Daemon
from buildingd.settings import REPO_SITE

SIMULATED_S = 600.0  # of the 200-zone site, on a Monday at 09:00


async def raw_bus_rate(n: int = 200_000) -> float:
    bus = InProcessBus()
    box = Mailbox("sink", maxsize=n + 1)
    bus.subscribe("sink", box)
    env = Envelope(performative=Performative.INFORM, sender="a", receiver="sink", ontology="x")
    t0 = time.perf_counter()
    for _ in range(n):
        await bus.send(env)
        await box.get()
    return n / (time.perf_counter() - t0)


# Counters read at ready and at stop: their difference is what the running daemon did.
_COUNTED = {
    "readings": ("buildingd_readings_published_total", "buildingd_readings_suppressed_total"),
    "published": ("buildingd_readings_published_total",),
    "zone_readings": ("buildingd_zone_readings_total",),
    "decisions": ("buildingd_zone_decisions_total",),
    "commands": ("buildingd_commands_total",),
}


async def daemon_rate(site_dir: Path, state: Path, seconds: float) -> dict[str, float]:
    """Run the daemon on ``site_dir`` for ``seconds`` of its clock (virtual, under looptime)."""
    site = load_site(site_dir)
    start = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)
    daemon = Daemon(
        settings_for(site_dir, state), site, clock=ScaledClock(start, 1.0), sink_factory=NullSink
    )
    marks: list[tuple[float, float, dict[str, float]]] = []

    def mark() -> None:
        c = daemon.metrics.counters
        counts = {
            name: float(sum(v for k, v in c.items() if k.startswith(prefixes)))
            for name, prefixes in _COUNTED.items()
        }
        marks.append((time.perf_counter(), time.process_time(), counts))

    daemon.on_ready.append(mark)
    daemon.on_stopping.append(mark)
    await daemon.run(seconds)
    (t0, cpu0, first), (t1, cpu1, last) = marks
    wall = t1 - t0
    per_s = {f"{name}_per_s": (last[name] - first[name]) / wall for name in _COUNTED}
    decisions = last["decisions"] - first["decisions"]
    return {
        **per_s,
        "readings_per_cpu_s": (last["readings"] - first["readings"]) / (cpu1 - cpu0),
        "readings_per_decision": (last["readings"] - first["readings"]) / max(1.0, decisions),
        "cpu_fraction": (cpu1 - cpu0) / wall,
        "wall_s": wall,
        "points": sum(len(d.points_list()) for d in site.devices.values()),
    }


def control_loop(seconds: float = SIMULATED_S) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        site_dir = generate(Path(tmp) / "site", 200, poll_interval_s=10.0)
        before = asyncio.run(raw_bus_rate())
        loop = looptime.new_event_loop(start=0.0)
        try:
            rate = loop.run_until_complete(daemon_rate(site_dir, Path(tmp) / "state", seconds))
        finally:
            loop.close()
        after = asyncio.run(raw_bus_rate())
    bus = (before + after) / 2
    return {
        **{k: round(v, 1) for k, v in rate.items()},
        "baseline_raw_bus_messages_per_s": round(bus, 1),
        "raw_bus_before_and_after": [round(before, 1), round(after, 1)],
        "ratio_readings_to_raw_bus": round(rate["readings_per_s"] / bus, 4),
        "ratio_zone_readings_to_raw_bus": round(rate["zone_readings_per_s"] / bus, 4),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def messages_per_zone_hour(report_by_exception: bool, hours: float = 6.0) -> float:
    site = load_site(REPO_SITE)
    DeviceAgent.report_by_exception = report_by_exception
    with tempfile.TemporaryDirectory() as tmp:
        start = datetime(2027, 1, 11, 7, 0, tzinfo=UTC)
        daemon = Daemon(
            settings_for(REPO_SITE, Path(tmp)),
            site,
            clock=ScaledClock(start, 1.0),
            sink_factory=NullSink,
        )
        loop = looptime.new_event_loop(start=0.0)
        try:
            summary = loop.run_until_complete(daemon.run(hours * 3600))
        finally:
            loop.close()
            DeviceAgent.report_by_exception = True
    return summary.bus_messages / (len(site.zones) * hours)


def main() -> None:
    loop = control_loop()
    rbe = messages_per_zone_hour(True)
    every = messages_per_zone_hour(False)
    print(
        json.dumps(
            {
                "control_loop": loop,
                "messages_per_zone_hour": {
                    "report_by_exception": round(rbe, 1),
                    "every_poll": round(every, 1),
                    "ratio": round(rbe / every, 3),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
