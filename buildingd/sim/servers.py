"""Glue between the daemon and the simulator: when it is needed, when it starts, and the protocol
servers (Modbus, MQTT) that serve its devices on 127.0.0.1 so drivers talk to it as to hardware."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from buildingd.config.loader import Site
from buildingd.config.mqtt import MqttDevice

if TYPE_CHECKING:
    from buildingd.service.app import Daemon


def site_needs_simulator(site: Site) -> bool:
    return any(d.driver == "sim" or d.simulated for d in site.devices.values())


def resolve_start(start: str | None, timezone: str) -> datetime:
    """``None``/``now``: now; ``workday``: 06:30 local on the next working day (a demo that shows
    a morning); otherwise an ISO date-time (naive means the site's timezone)."""
    tz = ZoneInfo(timezone)
    if start in (None, "now"):
        return datetime.now(UTC)
    if start == "workday":
        day = datetime.now(tz) + timedelta(days=1)
        while day.weekday() >= 5:
            day += timedelta(days=1)
        return day.replace(hour=6, minute=30, second=0, microsecond=0).astimezone(UTC)
    moment = datetime.fromisoformat(start)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.astimezone(UTC)


async def start_simulator_servers(daemon: Daemon, services: contextlib.AsyncExitStack) -> None:
    """Serve the simulated building's ``simulated: true`` devices over their own protocols."""
    building = daemon.building
    if building is None or not daemon.settings.sim.protocols:
        return
    mqtt_devices = [
        d for d in daemon.site.devices.values() if d.simulated and isinstance(d, MqttDevice)
    ]
    if mqtt_devices and daemon.mqtt is not None:
        from buildingd.sim.mqtt_devices import SimulatedMqttDevices

        sim = SimulatedMqttDevices(building, daemon.clock, daemon.mqtt, mqtt_devices)
        await sim.start()
        services.push_async_callback(sim.stop)
