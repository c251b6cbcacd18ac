"""A reload of a large site keeps the event loop running: the site is parsed and validated in a
worker thread, and the difference is applied on the loop one agent at a time. A probe task on
the daemon's loop counts its ticks while each part of the reload is in progress."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import buildingd.service.reloading as reloading
from buildingd.clock import ScaledClock
from buildingd.config.loader import Site, load_site
from buildingd.evaluate import NullSink
from buildingd.service.app import Daemon
from buildingd.settings import Settings
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from sitegen import generate

pytestmark = pytest.mark.slow

ZONES = 300  # three devices each: 900 device agents restarted by the reload
MIN_TICKS = 5  # the probe must have run at least this often during each part


async def test_the_loop_keeps_running_while_a_large_site_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_dir = generate(tmp_path / "site", ZONES, poll_interval_s=60.0)
    settings = Settings(site_dir=site_dir, state_dir=tmp_path / "state")
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

    ticks = 0
    devices_seen: set[int] = set()

    async def probe() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1
            devices_seen.add(len(daemon.device_agents))

    # What the probe had counted when the worker thread began and ended parsing the site.
    parse: dict[str, int] = {}

    def timed_load_site(folder: Path) -> Site:
        parse["start"] = ticks
        site = load_site(folder)
        parse["end"] = ticks
        return site

    monkeypatch.setattr(reloading, "load_site", timed_load_site)
    # Every device changes (its poll interval): all 900 device agents stop and start again.
    generate(site_dir, ZONES, poll_interval_s=30.0)
    prober = asyncio.create_task(probe())
    try:
        before = ticks
        result: dict[str, Any] = await daemon.reload()
        during = ticks - before
    finally:
        prober.cancel()
        daemon.request_stop()
    await run
    assert result["ok"] is True, result
    assert "devices started" in str(result["changes"])
    assert all(d.poll_interval_s == 30.0 for d in daemon.site.devices.values())
    # Parsing did not hold the loop: the probe ticked while load_site ran in its thread.
    assert parse["end"] - parse["start"] >= MIN_TICKS, parse
    # Applying did not either: the probe saw the devices stopped and restarted part way.
    part_way = {n for n in devices_seen if 0 < n < 3 * ZONES}
    assert len(part_way) >= MIN_TICKS, sorted(devices_seen)
    assert during >= 2 * MIN_TICKS
