"""Giving BACnet points back (ASHRAE 135 clause 19.2), end to end over UDP on 127.0.0.1: a mode
set by hand that expires is relinquished (buildingd's priority slot null again, the relinquish
default in control); at stop, a zone policy's ``shutdown: {action: hold|release}`` decides
(a real daemon process). The VAV box is served by the test, so its priority array can be read
after the daemon has stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from buildingd.clock import ScaledClock
from buildingd.config.bacnet import BacnetDevice
from buildingd.config.loader import load_site
from buildingd.sim.bacnet_server import SimulatedBacnetDevice, start_bacnet_devices
from buildingd.sim.building import Building
from tests.conftest import free_udp_port, until
from tests.daemon_proc import start_daemon

if TYPE_CHECKING:
    from buildingd.service.app import Daemon

pytestmark = pytest.mark.bacnet

ZONE = "f2-office-b"
OUR_SLOT = 7  # write_priority 8 of the demo file, 0-based
START = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)


def slot(sim: SimulatedBacnetDevice, point: str = "heat_sp") -> float | None:
    """What buildingd's priority slot holds (None: null)."""
    value = sim.objects[point].priorityArray[OUR_SLOT]
    return None if value.null is not None else float(value.real)


def present(sim: SimulatedBacnetDevice, point: str = "heat_sp") -> tuple[float, float]:
    """(present-value, relinquish-default)."""
    obj = sim.objects[point]
    return float(obj.presentValue), float(obj.relinquishDefault)


async def device_until(
    sim: SimulatedBacnetDevice, predicate: Callable[[], bool], what: str, timeout_s: float = 90
) -> None:
    """Wait, request by request on the device, until ``predicate()`` holds."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            sim.app.arrived.clear()
            await sim.app.arrived.wait()


def policy(site: Path, action: str, mode_override_s: float | None = None) -> None:
    path = site / "policies" / "office.yaml"
    before = path.read_text()
    text = before.replace("      action: hold ", f"      action: {action} ", 1)
    assert text != before or action == "hold", "the office policy's shutdown action moved"
    if mode_override_s is not None:
        line = "      reply_timeout_s: 10\n"
        assert line in text, "the office policy's negotiation section moved"
        text = text.replace(line, f"{line}      mode_override_s: {mode_override_s}\n", 1)
    path.write_text(text)


@pytest.fixture
async def vav(site_copy: Path) -> AsyncIterator[SimulatedBacnetDevice]:
    """The demo VAV box of the office B, on a free port, served here (not by the daemon): the
    site's BACnet file keeps only the VAV box, no longer simulated."""
    path = site_copy / "devices" / "demo-bacnet.yaml"
    text = path.read_text()
    text = text[: text.index("  - id: ahu1-bacnet")].replace("    simulated: true\n", "")
    path.write_text(text.replace("127.0.0.1:47811", f"127.0.0.1:{free_udp_port()}"))
    site = load_site(site_copy)
    spec = site.devices["f2-office-b-vav"]
    assert isinstance(spec, BacnetDevice)
    building = Building(list(site.zones.values()), START, site.timezone, seed=1)
    [sim] = await start_bacnet_devices(building, ScaledClock(START, 1.0), [spec])
    yield sim
    sim.app.close()


def in_process_daemon(site_copy: Path, tmp_path: Path, speed: float = 1.0) -> Daemon:
    """The demo site's daemon in this process, its BACnet client and simulated Modbus gateway on
    free loopback ports, no HTTP API."""
    from buildingd.service.app import Daemon
    from buildingd.settings import Settings

    settings = Settings.model_validate(
        {"site_dir": site_copy, "state_dir": tmp_path / "state", "http": {"enabled": False},
         "mqtt": {"port": 0}, "sim": {"start": "2027-01-11T09:00:00", "modbus_port": 0},
         "speed": speed, "bacnet": {"address": f"127.0.0.1:{free_udp_port()}"}}
    )  # fmt: skip
    return Daemon(settings, load_site(site_copy))


async def test_a_mode_set_by_hand_is_relinquished_when_it_expires(
    site_copy: Path, tmp_path: Path, vav: SimulatedBacnetDevice
) -> None:
    policy(site_copy, "hold", mode_override_s=120)
    daemon = in_process_daemon(site_copy, tmp_path, speed=10.0)
    task = asyncio.create_task(daemon.run(600))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 60)
        await device_until(vav, lambda: slot(vav) is not None, "the zone commands heat_sp")
        coordinator = daemon.coordinator
        assert coordinator is not None
        await until(lambda: ZONE in coordinator.office.zones, "the zone's state", 60)
        result: dict[str, Any] = coordinator.override_mode(ZONE, "unoccupied")
        await coordinator.flush()
        assert result["accepted"], result
        # The unoccupied band's heating setpoint, commanded at buildingd's priority...
        await device_until(vav, lambda: slot(vav) == 16.0, "the override's setpoint")
        assert present(vav)[0] == 16.0
        # ... and given back when the override ends (120 s simulated), not the schedule's value.
        await device_until(vav, lambda: slot(vav) is None, "relinquished at the end")
        value, default = present(vav)
        assert value == default != 16.0
        zone = daemon.zone_agents[ZONE]
        ticks_from = zone.last_control_s
        assert ticks_from is not None
        await until(lambda: (zone.last_control_s or 0) >= ticks_from + 30, "3 control ticks")
        assert slot(vav) is None  # the zone left the point to the device
    finally:
        daemon.request_stop()
        await task


@pytest.mark.parametrize("action", ["hold", "release"])
async def test_at_stop_the_zone_policy_holds_or_releases(
    site_copy: Path, tmp_path: Path, vav: SimulatedBacnetDevice, action: str
) -> None:
    policy(site_copy, action)
    running = start_daemon(
        site_copy, tmp_path, env={"BUILDINGD_BACNET__ADDRESS": f"127.0.0.1:{free_udp_port()}"}
    )
    try:
        await device_until(vav, lambda: slot(vav) is not None, "the daemon commands heat_sp")
        commanded = slot(vav)
        log = await asyncio.to_thread(running.stop)
    finally:
        await asyncio.to_thread(running.close)
    assert running.proc.returncode == 0, log[-2000:]
    value, default = present(vav)
    if action == "hold":
        assert slot(vav) == commanded and value == commanded
        assert "relinquished" not in log
    else:
        assert slot(vav) is None and value == default
        assert "heat_sp relinquished at priority 8" in log


async def test_a_device_removed_by_a_reload_gives_its_points_back(
    site_copy: Path, tmp_path: Path, vav: SimulatedBacnetDevice
) -> None:
    """Whatever the policy (``hold`` here): a device no longer in the site is not buildingd's."""
    daemon = in_process_daemon(site_copy, tmp_path)
    task = asyncio.create_task(daemon.run(600))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 60)
        await device_until(vav, lambda: slot(vav) is not None, "the zone commands heat_sp")
        (site_copy / "devices" / "demo-bacnet.yaml").unlink()
        result = await daemon.reload()
        assert "f2-office-b-vav" not in daemon.device_agents, result
        assert slot(vav) is None and slot(vav, "cool_sp") is None
        value, default = present(vav)
        assert value == default
    finally:
        daemon.request_stop()
        await task


async def test_points_commanded_before_a_reload_changed_the_device_are_released_at_stop(
    site_copy: Path, tmp_path: Path, vav: SimulatedBacnetDevice
) -> None:
    """The reload restarts the device's agent; the new agent still knows what buildingd holds."""
    policy(site_copy, "release")
    daemon = in_process_daemon(site_copy, tmp_path)
    task = asyncio.create_task(daemon.run(600))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 60)
        await device_until(vav, lambda: slot(vav) is not None, "the zone commands heat_sp")
        first = daemon.device_agents["f2-office-b-vav"]
        path = site_copy / "devices" / "demo-bacnet.yaml"
        path.write_text(path.read_text().replace("poll_interval_s: 10", "poll_interval_s: 15"))
        await daemon.reload()
        assert daemon.device_agents["f2-office-b-vav"] is not first
        assert slot(vav) is not None  # a changed device is still buildingd's: nothing given back
    finally:
        daemon.request_stop()
        await task
    assert slot(vav) is None
    value, default = present(vav)
    assert value == default
