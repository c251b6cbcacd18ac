"""A reload of a large site keeps the event loop running: the site is parsed and validated in a
worker thread, and the difference is applied on the loop one agent at a time. A probe task on
the daemon's loop counts its ticks while each part of the reload is in progress. No cyclic
collector pass runs during a reload (a full one held the loop for 100s of ms), the collector is
back as it was after it, applied or refused, and what a reload replaces is freed without it."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest

import buildingd.service.reloading as reloading
from buildingd.config.loader import Site, load_site
from buildingd.service.app import Daemon
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from sitegen import generate, quiet_daemon

pytestmark = pytest.mark.slow

ZONES = 300  # three devices each: 900 device agents restarted by the reload
MIN_TICKS = 5  # the probe must have run at least this often during each part


async def test_the_loop_keeps_running_while_a_large_site_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_dir = generate(tmp_path / "site", ZONES, poll_interval_s=60.0)
    daemon = quiet_daemon(site_dir, tmp_path / "state")
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


SMALL = 5  # zones: enough to restart agents of every kind


async def _running(tmp_path: Path) -> tuple[Daemon, asyncio.Task[object]]:
    daemon = quiet_daemon(generate(tmp_path / "site", SMALL, poll_interval_s=60.0), tmp_path)
    run: asyncio.Task[object] = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    return daemon, run


async def test_what_a_reload_replaces_is_freed_with_the_collector_frozen_as_buildingd_run_has_it(
    tmp_path: Path,
) -> None:
    daemon, run = await _running(tmp_path)
    # As ``buildingd run`` sets it up (service/cli.py): what lives is frozen, out of the
    # collector's reach, so a cycle among frozen objects would never be freed.
    gc.freeze()
    daemon.on_reloaded.append(gc.freeze)
    try:
        old = [weakref.ref(a) for a in daemon.device_agents.values()]
        frozen_before = gc.get_freeze_count()
        generate(daemon.settings.site_dir, SMALL, poll_interval_s=30.0)  # every device changes
        result = await daemon.reload()
        await asyncio.sleep(0)
        assert result["ok"] is True, result
        assert len(daemon.device_agents) == len(old) == 3 * SMALL
        # The stopped agents went with the reload (reference counting), not left to a collector.
        assert [r for r in old if r() is not None] == []
        # The new site and agents were frozen after the apply, beside what was there.
        assert gc.get_freeze_count() > frozen_before
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        daemon.request_stop()
        await run


@pytest.mark.parametrize("outcome", ["applied", "refused", "raised"])
async def test_no_collector_pass_during_a_reload_and_the_collector_is_back_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    daemon, run = await _running(tmp_path)
    seen: list[bool] = []  # whether the collector was on, as the reload read and as it ended

    def watched_load_site(folder: Path) -> Site:
        seen.append(gc.isenabled())
        return load_site(folder)

    async def refuse(device_id: str) -> None:
        raise RuntimeError(f"device {device_id} cannot start")

    monkeypatch.setattr(reloading, "load_site", watched_load_site)
    daemon.on_reloaded.append(lambda: seen.append(gc.isenabled()))
    site_dir = daemon.settings.site_dir
    if outcome == "refused":
        (site_dir / "site.yaml").write_text("zones: [\n")
    else:
        generate(site_dir, SMALL, poll_interval_s=30.0)
    if outcome == "raised":
        monkeypatch.setattr(daemon, "start_device", refuse)
    try:
        assert gc.isenabled()
        if outcome == "raised":
            with pytest.raises(RuntimeError, match="cannot start"):
                await daemon.reload()
        else:
            assert (await daemon.reload())["ok"] is (outcome == "applied")
        assert seen == ([False, False] if outcome == "applied" else [False])
        assert gc.isenabled()
    finally:
        daemon.request_stop()
        await run
