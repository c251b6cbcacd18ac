"""Scale benchmark (JSON on stdout): one daemon process carrying generated sites of 200, 1,000 and
2,000 zones (10 points each, simulated devices read in process, polled every 10 simulated s) at
speed 1 and 10. For each: load and ready times, CPU fraction and RSS over a window, the reading ->
decision latency p99, and the longest event-loop stall while the same site is reloaded.

Beside them, measured in the same run: the load time's growth per zone (linear: the ratio of
per-zone times stays near 1), this machine's pure-Python speed, and what a Raspberry Pi 4 would
need under the assumption stated in ``PI4``. Each configuration runs in a child process of its
own, so one's memory does not count in the next one's RSS.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

ZONES = (200, 1000, 2000)
SPEEDS = (1.0, 10.0)
SETTLE_S = 2.0  # after ready, before the window (first readings, first decisions)
WINDOW_S = 6.0  # at least; and at least 12 simulated s, so it holds a poll and a decision
LAG_TICK_S = 0.01
CHILD_TIMEOUT_S = 300.0  # a configuration this machine cannot carry is reported as not done
# Assumption (not measured here): a Raspberry Pi 4 (Cortex-A72, 1.5 GHz, CPython 3.11) runs
# pure-Python code 3 to 4 times slower than one core of a current x86-64 machine; 3.5 is taken.
# ``python bench/bench_scale.py --loop-rate`` on a Pi gives its own figure of ``loop_rate``:
# this machine's figure divided by the Pi's is the factor to use instead.
PI4 = {"slowdown_vs_this_core": 3.5, "cpu_budget_fraction": 0.5}


def loop_rate(seconds: float = 1.0) -> float:
    """Iterations per second of a small pure-Python loop (arithmetic, a dict, a method call):
    the same kind of work as the daemon's, and the figure to compare machines by."""
    table: dict[int, float] = {}
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(1000):
            table[i & 255] = table.get(i & 255, 0.0) * 0.5 + i
        n += 1000
    return n / (time.perf_counter() - t0)


def rss_mb() -> tuple[float, float]:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def p99(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[98]


class LagMonitor:
    """Sleeps ``LAG_TICK_S`` again and again; how late it wakes is how long the loop was busy."""

    def __init__(self) -> None:
        self.worst_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(LAG_TICK_S)
            self.worst_s = max(self.worst_s, loop.time() - t0 - LAG_TICK_S)


async def one(zones: int, speed: float) -> dict[str, Any]:
    from sitegen import generate

    from buildingd.agents.messages import ReadingMsg
    from buildingd.agents.zone import ZoneAgent
    from buildingd.clock import ScaledClock
    from buildingd.config.loader import load_site
    from buildingd.evaluate import NullSink
    from buildingd.service.app import Daemon
    from buildingd.settings import Settings

    clock = ScaledClock(datetime(2027, 1, 11, 9, 0, tzinfo=UTC), speed)
    decisions: list[float] = []  # seconds from a reading's publish to the decision it caused
    arrivals: list[float] = []  # seconds from a reading's publish to its zone taking it
    durations: list[float] = []  # seconds of loop time one zone decision takes
    handle, control = ZoneAgent._handle, ZoneAgent.control
    triggered: dict[str, datetime] = {}

    def timed_handle(self: ZoneAgent, env: Any) -> bool:
        changed = handle(self, env)
        if env.ontology == ReadingMsg.ontology:
            at = ReadingMsg.parse(env).timestamp
            arrivals.append((clock.now() - at).total_seconds() / speed)
            if changed:
                triggered.setdefault(self.zone_id, at)
        return changed

    async def timed_control(self: ZoneAgent, now_s: float) -> None:
        t0 = time.perf_counter()
        await control(self, now_s)
        durations.append(time.perf_counter() - t0)
        at = triggered.pop(self.zone_id, None)
        if at is not None:
            decisions.append((clock.now() - at).total_seconds() / speed)

    ZoneAgent._handle = timed_handle  # type: ignore[method-assign]
    ZoneAgent.control = timed_control  # type: ignore[method-assign]

    with tempfile.TemporaryDirectory() as tmp:
        site_dir = generate(Path(tmp) / "site", zones, poll_interval_s=10.0)
        t0 = time.perf_counter()
        site = load_site(site_dir)
        load_s = time.perf_counter() - t0
        settings = Settings.model_validate(
            {"site_dir": site_dir, "state_dir": Path(tmp) / "state", "http": {"enabled": False},
             "sim": {"protocols": False}}
        )  # fmt: skip
        daemon = Daemon(settings, site, clock=clock, sink_factory=NullSink)
        # As ``buildingd run`` does (service/cli.py): what start-up and reloads built is frozen.
        daemon.on_ready.append(gc.freeze)
        daemon.on_reloaded.append(gc.freeze)
        daemon.on_stopping.append(gc.unfreeze)
        t0 = time.perf_counter()
        running = asyncio.create_task(daemon.run(None))
        await daemon.ready.wait()
        ready_s = time.perf_counter() - t0
        await asyncio.sleep(SETTLE_S)
        decisions.clear()
        arrivals.clear()
        durations.clear()
        monitor = LagMonitor()
        lag = asyncio.create_task(monitor.run())
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(max(WINDOW_S, 12.0 / speed))
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - t0)
        rss, peak = rss_mb()
        window_stall_s = monitor.worst_s
        monitor.worst_s = 0.0
        t0 = time.perf_counter()
        outcome = await daemon.reload()
        reload_s = time.perf_counter() - t0
        await asyncio.sleep(0.2)
        reload_stall_s = monitor.worst_s
        lag.cancel()
        daemon.request_stop()
        await running
    return {
        "zones": zones,
        "speed": speed,
        "load_s": round(load_s, 3),
        "load_ms_per_zone": round(load_s * 1000 / zones, 3),
        "ready_s": round(ready_s, 2),
        "cpu_fraction": round(cpu, 3),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
        "readings_taken": len(arrivals),
        "reading_to_zone_p99_ms": _ms(p99(arrivals)),
        "decisions": len(durations),
        "decision_p99_ms": _ms(p99(durations)),
        # Readings that make the zone decide at once (occupancy, a quality change): publish to
        # decision done. Few or none in a short window at speed 1.
        "triggered_decisions": len(decisions),
        "triggered_decision_latency_p99_ms": _ms(p99(decisions)),
        "loop_stall_max_ms": _ms(window_stall_s),
        "reload_s": round(reload_s, 2),
        "reload_ok": bool(outcome.get("ok", True)),
        "reload_stall_ms": _ms(reload_stall_s),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def child(zones: int, speed: float) -> dict[str, Any]:
    """One configuration in a process of its own; a timeout or a failure is recorded as such."""
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(zones), str(speed)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"zones": zones, "speed": speed, "error": f"not done in {CHILD_TIMEOUT_S:.0f} s"}
    if proc.returncode != 0:
        return {"zones": zones, "speed": speed, "error": proc.stderr[-1500:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"bench_scale: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main(sizes: tuple[int, ...] = ZONES) -> None:
    rate = loop_rate()
    load = os.getloadavg()[0]
    runs = [child(zones, speed) for zones in sizes for speed in SPEEDS]
    ok = [r for r in runs if "error" not in r]
    per_zone = {r["zones"]: r["load_ms_per_zone"] for r in ok if r["speed"] == SPEEDS[0]}
    slowdown = PI4["slowdown_vs_this_core"]
    pi = {
        f"{r['zones']}_zones_speed_{r['speed']:g}": {
            "cpu_fraction": round(r["cpu_fraction"] * slowdown, 2),
            "fits": r["cpu_fraction"] * slowdown <= PI4["cpu_budget_fraction"],
            "load_s": round(r["load_s"] * slowdown, 1),
            "ready_s": round(r["ready_s"] * slowdown, 1),
        }
        for r in ok
    }
    print(
        json.dumps(
            {
                "scale": {
                    "runs": runs,
                    "load_linearity": {
                        "ms_per_zone": per_zone,
                        # Near 1 when loading is linear in zones (was ~1.5-2 before: quadratic).
                        "ratio_largest_to_smallest_per_zone": round(
                            per_zone[max(per_zone)] / per_zone[min(per_zone)], 2
                        )
                        if len(per_zone) > 1
                        else None,
                    },
                    "baseline_loop_rate_per_s": round(rate),
                    "machine_load_average_1min": round(load, 2),
                    "pi4_assumption": PI4,
                    "pi4_estimate": pi,
                }
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(asyncio.run(one(int(sys.argv[2]), float(sys.argv[3])))))
    elif sys.argv[1:2] == ["--loop-rate"]:
        print(json.dumps({"loop_rate_per_s": round(loop_rate(3.0))}))
    else:  # ``python bench/bench_scale.py 200 1000``: only those sizes
        main(tuple(int(a) for a in sys.argv[1:]) or ZONES)
