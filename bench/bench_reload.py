"""Reload stall (JSON on stdout): the longest the daemon's event loop went without running, as a
probe task sleeping 1 ms sees it, while a SIGHUP-style reload of a generated site of ``ZONES``
zones runs in process, with the cyclic collector's passes seen meanwhile (``gc.callbacks``): a
reload that changes nothing (parse and compare only), first without ``gc.freeze()``, then
``RELOADS`` reloads that change every device (all device agents stopped and started) with the
collector set up as ``buildingd run`` sets it (``gc.freeze()`` once ready and after each
reload), and the process's RSS and tracked objects before and after them (a leak grows them per
reload). Baselines in the same run: the probe's longest gap with the daemon idle, and with the
same site parsed on the loop (what a reload stalled for when it parsed on the loop).

Usage: ``bench_reload.py [ZONES [RELOADS]]`` (200 and 20 unless given)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from gc_watch import CollectorWatch  # noqa: E402
from sitegen import generate, quiet_daemon  # noqa: E402

from buildingd.config.loader import load_site  # noqa: E402

ZONES = int(sys.argv[1]) if len(sys.argv) > 1 else 200
RELOADS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
IDLE_S = 3.0
MS = 1000.0


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


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def tracked_objects() -> int:
    """Objects the collector tracks, frozen ones included (a leak of agents shows here first)."""
    return len(gc.get_objects()) + gc.get_freeze_count()


async def bench(folder: Path) -> dict[str, object]:
    load_start = os.getloadavg()
    site_dir = generate(folder / "site", ZONES, poll_interval_s=60.0)
    daemon = quiet_daemon(site_dir, folder / "state")
    watch = CollectorWatch()
    gc.callbacks.append(watch)
    run = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    await asyncio.sleep(2.0)  # first polls and decisions out of the way
    idle_gap, _ = await max_gap_s(lambda: asyncio.sleep(IDLE_S))

    async def parse_on_loop() -> None:
        load_site(site_dir)

    on_loop_gap, parse_s = await max_gap_s(parse_on_loop)
    watch.clear()
    unfrozen_gap, unfrozen_s = await max_gap_s(daemon.reload)
    unfrozen_gc = watch.summary()
    # As ``buildingd run`` sets the collector up (service/cli.py).
    gc.freeze()
    daemon.on_reloaded.append(gc.freeze)
    watch.clear()
    same_gap, same_s = await max_gap_s(daemon.reload)
    same_gc = watch.summary()

    async def reload_every_device(n: int) -> tuple[float, float]:
        generate(site_dir, ZONES, poll_interval_s=30.0 if n % 2 == 0 else 60.0)
        return await max_gap_s(daemon.reload)

    await reload_every_device(0)  # what the first restart of every agent allocates once
    rss_before, objects_before = rss_mb(), tracked_objects()
    watch.clear()
    runs, rss_every_5 = [], []
    for n in range(1, RELOADS + 1):
        runs.append(await reload_every_device(n))
        if n % 5 == 0:
            rss_every_5.append(round(rss_mb(), 1))
    changed_gc = watch.summary()
    rss_after, objects_after = rss_mb(), tracked_objects()
    assert daemon.reloads == {"ok": 3 + RELOADS, "failed": 0}, daemon.reloads
    daemon.request_stop()
    await run
    gc.callbacks.remove(watch)
    gc.unfreeze()
    gaps = [gap for gap, _ in runs]
    return {
        "zones": ZONES,
        "devices": 3 * ZONES,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "reload_unchanged_no_gc_freeze_s": round(unfrozen_s, 2),
        "reload_unchanged_no_gc_freeze_max_loop_gap_ms": round(unfrozen_gap * MS, 1),
        "reload_unchanged_no_gc_freeze_gc": unfrozen_gc,
        "reload_unchanged_s": round(same_s, 2),
        "reload_unchanged_max_loop_gap_ms": round(same_gap * MS, 1),
        "reload_unchanged_gc": same_gc,
        "reloads_all_devices": RELOADS,
        "reload_all_devices_median_s": round(statistics.median(s for _, s in runs), 2),
        "reload_all_devices_max_loop_gap_ms": round(max(gaps) * MS, 1),
        "reload_all_devices_median_max_loop_gap_ms": round(statistics.median(gaps) * MS, 1),
        "reload_all_devices_gc": changed_gc,
        "rss_before_reloads_mb": round(rss_before, 1),
        "rss_after_reloads_mb": round(rss_after, 1),
        "rss_every_5_reloads_mb": rss_every_5,
        # From the 5th on: the first few reloads grow the allocator's arenas once (1-14 MB).
        "rss_growth_per_reload_after_5_mb": round(
            (rss_after - (rss_every_5 or [rss_before])[0]) / max(1, RELOADS - 5), 3
        ),
        "tracked_objects_before_reloads": objects_before,
        "tracked_objects_growth_per_reload": round((objects_after - objects_before) / RELOADS, 1),
        "baseline_idle_max_loop_gap_ms": round(idle_gap * MS, 1),
        "baseline_parse_on_loop_max_loop_gap_ms": round(on_loop_gap * MS, 1),
        "baseline_parse_on_loop_s": round(parse_s, 2),
        "stall_ratio_vs_parse_on_loop": round(max(same_gap, *gaps) / on_loop_gap, 3),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(bench(Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
