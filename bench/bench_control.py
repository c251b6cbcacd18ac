"""Control-loop benchmarks (JSON on stdout):

- throughput: readings per second through device agent -> zone agent -> command, in-process, on
  a generated 200-zone site, beside the raw in-process bus rate measured in the same run;
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sitegen import generate, settings_for

from buildingd.agents.bus import Envelope, InProcessBus, Mailbox, Performative
from buildingd.agents.device import DeviceAgent
from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.evaluate import NullSink
from buildingd.service.app import Daemon
from buildingd.settings import REPO_SITE


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


async def daemon_rate(
    site_dir: Path, state: Path, seconds: float, speed: float
) -> dict[str, float]:
    site = load_site(site_dir)
    start = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)
    daemon = Daemon(
        settings_for(site_dir, state), site, clock=ScaledClock(start, speed), sink_factory=NullSink
    )
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    await daemon.run(seconds)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    c = daemon.metrics.counters
    points = sum(len(d.points_list()) for d in site.devices.values())
    readings = c["buildingd_readings_published_total"] + c["buildingd_readings_suppressed_total"]
    commands = sum(v for k, v in c.items() if k.startswith("buildingd_commands_total"))
    return {
        "readings_per_s": readings / wall,
        "published_per_s": c["buildingd_readings_published_total"] / wall,
        "commands_per_s": commands / wall,
        "cpu_fraction": cpu / wall,
        "points": points,
        # What the site asks for: every point read once per poll interval, in real seconds.
        # The figure above cannot exceed it; ``ratio_offered_to_raw_bus`` is the most the
        # ratio below can show at this speed.
        "offered_readings_per_s": sum(
            len(d.points_list()) * speed / d.poll_interval_s for d in site.devices.values()
        ),
    }


def messages_per_zone_hour(report_by_exception: bool, hours: float = 6.0) -> float:
    import looptime

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
    with tempfile.TemporaryDirectory() as tmp:
        site_dir = generate(Path(tmp) / "site", 200, poll_interval_s=10.0)
        bus = asyncio.run(raw_bus_rate())
        # Speed 500: each of the 600 devices polls 50 times per real second (saturates the loop).
        loop_rate = asyncio.run(daemon_rate(site_dir, Path(tmp) / "state", 10.0, 500.0))
    rbe = messages_per_zone_hour(True)
    every = messages_per_zone_hour(False)
    print(
        json.dumps(
            {
                "control_loop": {
                    **{k: round(v, 1) for k, v in loop_rate.items()},
                    "baseline_raw_bus_messages_per_s": round(bus, 1),
                    "ratio_readings_to_raw_bus": round(loop_rate["readings_per_s"] / bus, 4),
                    "ratio_offered_to_raw_bus": round(loop_rate["offered_readings_per_s"] / bus, 4),
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                },
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
