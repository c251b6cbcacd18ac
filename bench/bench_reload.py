"""Reload stall (JSON on stdout): the longest the daemon's event loop went without running, as a
probe task sleeping 1 ms sees it, while a SIGHUP-style reload of a generated site of ``ZONES``
zones runs in process: a reload that changes nothing (parse and compare only) and one that
changes every device (all device agents stopped and started), the first without and the others
after ``gc.freeze()`` (as ``buildingd run`` does once ready). Baselines in the same run: the
probe's longest gap with the daemon idle, and with the same site parsed on the loop (what a
reload stalled for when it parsed on the loop)."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from sitegen import generate  # noqa: E402

from buildingd.clock import ScaledClock  # noqa: E402
from buildingd.config.loader import load_site  # noqa: E402
from buildingd.evaluate import NullSink  # noqa: E402
from buildingd.service.app import Daemon  # noqa: E402
from buildingd.settings import Settings  # noqa: E402

ZONES = int(sys.argv[1]) if len(sys.argv) > 1 else 200
IDLE_S = 3.0


async def max_gap_s(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(longest gap between probe ticks, seconds ``work`` took)."""
    gaps: list[float] = []

    async def probe() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    await work()
    took = time.perf_counter() - t0
    await asyncio.sleep(0.01)  # the probe sees the gap the work may have left
    task.cancel()
    return max(gaps), took


async def bench(folder: Path) -> dict[str, object]:
    site_dir = generate(folder / "site", ZONES, poll_interval_s=60.0)
    settings = Settings(site_dir=site_dir, state_dir=folder / "state")
    settings = settings.model_copy(
        update={
            "sim": settings.sim.model_copy(update={"protocols": False}),
            "http": settings.http.model_copy(update={"enabled": False}),
        }
    )
    clock = ScaledClock(datetime(2027, 1, 11, 9, 0, tzinfo=UTC), 1.0)
    daemon = Daemon(settings, load_site(site_dir), clock=clock, sink_factory=NullSink)
    run = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    await asyncio.sleep(2.0)  # first polls and decisions out of the way
    idle_gap, _ = await max_gap_s(lambda: asyncio.sleep(IDLE_S))

    async def parse_on_loop() -> None:
        load_site(site_dir)

    on_loop_gap, parse_s = await max_gap_s(parse_on_loop)
    unfrozen_gap, unfrozen_s = await max_gap_s(daemon.reload)
    gc.freeze()  # as ``buildingd run`` does once ready (service/cli.py)
    same_gap, same_s = await max_gap_s(daemon.reload)
    generate(site_dir, ZONES, poll_interval_s=30.0)  # every device changes
    changed_gap, changed_s = await max_gap_s(daemon.reload)
    assert daemon.reloads == {"ok": 3, "failed": 0}, daemon.reloads
    daemon.request_stop()
    await run
    ms = 1000.0
    return {
        "zones": ZONES,
        "devices": 3 * ZONES,
        "reload_unchanged_no_gc_freeze_s": round(unfrozen_s, 2),
        "reload_unchanged_no_gc_freeze_max_loop_gap_ms": round(unfrozen_gap * ms, 1),
        "reload_unchanged_s": round(same_s, 2),
        "reload_unchanged_max_loop_gap_ms": round(same_gap * ms, 1),
        "reload_all_devices_s": round(changed_s, 2),
        "reload_all_devices_max_loop_gap_ms": round(changed_gap * ms, 1),
        "baseline_idle_max_loop_gap_ms": round(idle_gap * ms, 1),
        "baseline_parse_on_loop_max_loop_gap_ms": round(on_loop_gap * ms, 1),
        "baseline_parse_on_loop_s": round(parse_s, 2),
        "stall_ratio_vs_parse_on_loop": round(max(same_gap, changed_gap) / on_loop_gap, 3),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(bench(Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
