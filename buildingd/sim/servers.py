"""Glue between the daemon and the simulator: when it is needed, when it starts, and the protocol
servers (Modbus, MQTT) that serve its devices on 127.0.0.1 so drivers talk to it as to hardware."""

from __future__ import annotations

import contextlib
import logging
import socket
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from buildingd.config.bacnet import BacnetDevice
from buildingd.config.loader import Site
from buildingd.config.modbus import ModbusDeviceBase, ModbusRtuDevice, ModbusTcpDevice
from buildingd.config.mqtt import MqttDevice

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from buildingd.clock import Clock
    from buildingd.mqtt.connection import MqttConnection
    from buildingd.settings import SimSettings
    from buildingd.sim.building import Building

BACNET_IP_PORT = 47808  # 0xBAC0, ASHRAE 135 Annex J

# A simulated device's (driver, host, port) -> the port it was moved to ([sim] modbus_port for
# Modbus TCP gateways, [sim] bacnet_port for BACnet/IP devices).
Moves = dict[tuple[str, str, int], int]


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


async def start_simulator_servers(
    building: Building,
    clock: Clock,
    site: Site,
    sim: SimSettings,
    mqtt: MqttConnection | None,
    services: contextlib.AsyncExitStack,
) -> Moves:
    """Serve the simulated building's ``simulated: true`` devices over their own protocols.
    Returns the gateways moved to another port; ``site``'s device specs already follow them."""
    if not sim.protocols:
        return {}
    mqtt_devices = [d for d in site.devices.values() if d.simulated and isinstance(d, MqttDevice)]
    moves = await _serve_modbus(building, clock, site, sim, services)
    await _serve_modbus_rtu(building, clock, site, sim, services)
    moves |= await _serve_bacnet(building, clock, site, sim, services)
    if mqtt_devices and mqtt is not None:
        from buildingd.sim.mqtt_devices import SimulatedMqttDevices

        sim_mqtt = SimulatedMqttDevices(building, clock, mqtt, mqtt_devices)
        await sim_mqtt.start()
        services.push_async_callback(sim_mqtt.stop)
    return moves


async def _serve_modbus(
    building: Building,
    clock: Clock,
    site: Site,
    sim: SimSettings,
    services: contextlib.AsyncExitStack,
) -> Moves:
    """One Modbus TCP server per simulated gateway address. With ``[sim] modbus_port`` set
    (0: a free port) the gateways move there and the device specs follow."""
    gateways: dict[tuple[str, str, int], list[ModbusTcpDevice]] = {}
    for device in site.devices.values():
        if device.simulated and isinstance(device, ModbusTcpDevice):
            gateways.setdefault(_endpoint(device), []).append(device)
    if not gateways:
        return {}
    from buildingd.sim.modbus_server import start_modbus_tcp

    moves: Moves = {}
    if sim.modbus_port is not None:
        moves = {key: sim.modbus_port or free_loopback_port() for key in gateways}
        relocate_simulated(site, moves)
    for (_, host, port), devices in gateways.items():
        served: list[ModbusDeviceBase] = [
            d for d in (site.devices[x.id] for x in devices) if isinstance(d, ModbusTcpDevice)
        ]
        port = moves.get(("modbus", host, port), port)
        server = await start_modbus_tcp(building, clock, served, host, port)
        services.push_async_callback(server.shutdown)
    return moves


async def _serve_modbus_rtu(
    building: Building,
    clock: Clock,
    site: Site,
    sim: SimSettings,
    services: contextlib.AsyncExitStack,
) -> None:
    """One Modbus RTU server per simulated serial line listed in ``[sim] modbus_rtu_ports``,
    on the other end of the line, with the line's settings."""
    lines: dict[str, list[ModbusRtuDevice]] = {}
    for device in site.devices.values():
        if device.simulated and isinstance(device, ModbusRtuDevice):
            lines.setdefault(device.connection.port, []).append(device)
    if not lines:
        return
    from buildingd.sim.modbus_server import start_modbus_rtu

    for port, devices in lines.items():
        serving = sim.modbus_rtu_ports.get(port)
        if serving is None:
            log.warning("sim: RTU line %s is not in [sim] modbus_rtu_ports: not simulated", port)
            continue
        moved = [
            d.model_copy(update={"connection": d.connection.model_copy(update={"port": serving})})
            for d in devices
        ]
        server = await start_modbus_rtu(building, clock, moved)
        services.push_async_callback(server.shutdown)


async def _serve_bacnet(
    building: Building,
    clock: Clock,
    site: Site,
    sim: SimSettings,
    services: contextlib.AsyncExitStack,
) -> Moves:
    """One BACnet/IP device per simulated ``driver: bacnet`` device, at its own address (only
    127.0.0.1: the simulator never answers on a real network). With ``[sim] bacnet_port`` set
    they move to consecutive ports from there (0: free ports) and the device specs follow."""
    devices = [
        d
        for d in site.devices.values()
        if d.simulated and isinstance(d, BacnetDevice) and d.address is not None
    ]
    local = [d for d in devices if d.address is not None and d.address.startswith("127.")]
    for device in devices:
        if device not in local:
            log.warning("sim: BACnet device %s is not on 127.0.0.1: not simulated", device.id)
    if not local:
        return {}
    from buildingd.sim.bacnet_server import start_bacnet_devices

    moves: Moves = {}
    if sim.bacnet_port is not None:
        first = sim.bacnet_port
        moves = {
            _endpoint(d): first + n if first else free_loopback_port(socket.SOCK_DGRAM)
            for n, d in enumerate(local)
        }
        relocate_simulated(site, moves)
    served = [d for d in (site.devices[x.id] for x in local) if isinstance(d, BacnetDevice)]
    for running in await start_bacnet_devices(building, clock, served):
        services.push_async_callback(running.stop)
    return moves


def relocate_simulated(site: Site, moves: Moves) -> None:
    """Point simulated Modbus TCP and BACnet devices at the ports they were moved to (at start
    and again after a reload re-read the device files)."""
    for device in list(site.devices.values()):
        if not device.simulated or not isinstance(device, ModbusTcpDevice | BacnetDevice):
            continue
        endpoint = _endpoint(device)
        new = moves.get(endpoint)
        if new is None:
            continue
        if isinstance(device, BacnetDevice):
            site.devices[device.id] = device.model_copy(update={"address": f"{endpoint[1]}:{new}"})
        else:
            moved = device.connection.model_copy(update={"port": new})
            site.devices[device.id] = device.model_copy(update={"connection": moved})


def _endpoint(device: ModbusTcpDevice | BacnetDevice) -> tuple[str, str, int]:
    """The key of a simulated device's address in ``Moves``."""
    if isinstance(device, ModbusTcpDevice):
        return ("modbus", device.connection.host, device.connection.port)
    host, _, port = (device.address or "").rpartition(":")
    return ("bacnet", host, int(port) if port.isdigit() else BACNET_IP_PORT)


def free_loopback_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A TCP (or, with ``SOCK_DGRAM``, UDP) port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
