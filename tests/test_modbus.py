"""The Modbus driver against a real pymodbus server serving the simulated building, over TCP and
over a real serial line (a socat pty pair): block reads, re-planning after an illegal-address
answer, verified writes, refusals, a gateway that goes away and comes back."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.config.modbus import ModbusRtuDevice, ModbusTcpDevice
from buildingd.drivers.base import DriverContext, SharedResources
from buildingd.drivers.modbus import ModbusDriver
from buildingd.errors import DeviceRejectedError, DeviceUnavailableError
from buildingd.points import PointKind
from buildingd.sim.building import Building
from buildingd.sim.modbus_server import start_modbus_rtu, start_modbus_tcp
from tests.conftest import REPO, free_port
from tests.servers import need

pytestmark = pytest.mark.modbus
START = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)


def thermostat(port: int, **extra: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {"id": "thermo", "driver": "modbus-tcp", "connection": {"host": "127.0.0.1", "port": port},
         "unit_id": 1, "profile": "room-thermostat", "zone": "f1-meeting", "timeout_s": 1,
         "retries": 0, **extra}
    )  # fmt: skip


@pytest.fixture
def building() -> Building:
    site = load_site(REPO)
    return Building(list(site.zones.values()), START, site.timezone, seed=1)


@pytest.fixture
async def ctx(building: Building) -> AsyncIterator[DriverContext]:
    context = DriverContext(clock=ScaledClock(START, 1.0), building=building,
                            resources=SharedResources())  # fmt: skip
    yield context
    await context.resources.close_all()


async def test_reads_writes_and_read_back_over_tcp(building: Building, ctx: DriverContext) -> None:
    port = free_port()
    served = thermostat(port)
    server = await start_modbus_tcp(building, ctx.clock, [served], "127.0.0.1", port)
    try:
        driver = ModbusDriver(served, ctx)
        await driver.open()
        values = await driver.read()
        assert set(values) == {"temperature", "humidity", "heating_sp", "cooling_sp", "occupancy"}
        truth = building.read_point("f1-meeting", PointKind.TEMPERATURE)
        assert values["temperature"].value == pytest.approx(truth, abs=0.051)  # tenths on the wire
        # Three blocks (discrete inputs, input registers, holding registers) for five points.
        assert driver.requests == 3
        assert await driver.write("heating_sp", 21.5) == pytest.approx(21.5)
        assert building.zones["f1-meeting"].heating_sp_c == pytest.approx(21.5)
        with pytest.raises(DeviceRejectedError, match="does not fit"):
            await driver.write("heating_sp", 4000.0)  # int16 tenths cannot hold it
    finally:
        await server.shutdown()


async def test_a_hole_in_the_map_is_replanned_and_the_good_points_still_read(
    building: Building, ctx: DriverContext
) -> None:
    port = free_port()
    served = thermostat(port)
    # The device file declares a register the device does not have, inside the same block.
    declared = thermostat(port, points=[
        {"id": "co2", "kind": "co2", "table": "input_register", "address": 3, "type": "uint16"},
    ])  # fmt: skip
    server = await start_modbus_tcp(building, ctx.clock, [served], "127.0.0.1", port)
    try:
        driver = ModbusDriver(declared, ctx)
        await driver.open()
        before = [b.describe() for b in driver.plan]
        assert "input_register 0-3 (4): temperature, humidity, co2" in before
        values = await driver.read()
        assert {"temperature", "humidity", "heating_sp"} <= set(values) and "co2" not in values
        after = driver.describe()
        assert len(after) > len(before)  # the refused block was split and stays split
        requests = driver.requests
        await driver.read()
        assert driver.requests - requests == len(after)
    finally:
        await server.shutdown()


async def test_gateway_down_then_back(building: Building, ctx: DriverContext) -> None:
    port = free_port()
    served = thermostat(port)
    server = await start_modbus_tcp(building, ctx.clock, [served], "127.0.0.1", port)
    driver = ModbusDriver(served, ctx)
    await driver.open()
    await driver.read()
    await server.shutdown()
    await asyncio.sleep(0.2)
    with pytest.raises(DeviceUnavailableError):
        await driver.read()
    server = await start_modbus_tcp(building, ctx.clock, [served], "127.0.0.1", port)
    try:
        deadline = time.monotonic() + 20
        while True:  # reconnects after its backoff (jittered, starting at ~1 s)
            try:
                assert "temperature" in await driver.read()
                break
            except DeviceUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert driver.line is not None and driver.line.available is True
    finally:
        await server.shutdown()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        [need("socat"), "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while not (a.exists() and b.exists()):
        assert proc.poll() is None and time.monotonic() < deadline, "socat did not start"
        time.sleep(0.05)
    yield str(a), str(b)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.serial
async def test_rtu_over_a_real_serial_line(
    building: Building, ctx: DriverContext, pty_pair: tuple[str, str]
) -> None:
    server_end, client_end = pty_pair

    def rtu(port: str) -> ModbusRtuDevice:
        return ModbusRtuDevice.model_validate(
            {"id": "dimmer", "driver": "modbus-rtu", "unit_id": 7, "profile": "lighting-dimmer",
             "zone": "f1-meeting", "timeout_s": 2, "retries": 1,
             # Linux ptys refuse parity bits (termios EINVAL): the line runs 8N1 here.
             "connection": {"port": port, "baudrate": 19200, "parity": "N"}}
        )  # fmt: skip

    server = await start_modbus_rtu(building, ctx.clock, [rtu(server_end)])
    try:
        driver = ModbusDriver(rtu(client_end), ctx)
        await driver.open()
        assert await driver.write("level", 60.0) == 60.0
        assert building.zones["f1-meeting"].light_level_pct == 60.0
        assert (await driver.read())["level"].value == 60.0
        assert driver.line is not None and driver.line.gap_s == pytest.approx(3.5 * 11 / 19200)
    finally:
        await server.shutdown()


def test_check_verbose_prints_the_poll_plans(capsys: pytest.CaptureFixture[str]) -> None:
    from buildingd.service.cli import main

    assert main(["check", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"f1-meeting-thermostat \(modbus-tcp\):\n  read discrete_input 0-0", out)


TYPES = ["int16", "uint16", "int32", "uint32", "float32", "float64"]


async def test_every_type_and_word_order_round_trips_over_the_wire(
    building: Building, ctx: DriverContext
) -> None:
    port = free_port()
    points, address = [], 0
    for type_ in TYPES:
        for order in ("big", "little"):
            points.append({"id": f"{type_}_{order}", "kind": "heating_setpoint",
                           "zone": "f1-meeting", "table": "holding_register", "address": address,
                           "type": type_, "word_order": order, "scale": 0.01, "writable": True,
                           "limits": {"min": 5, "max": 35}})  # fmt: skip
            address += 4
    device = ModbusTcpDevice.model_validate(
        {"id": "all", "driver": "modbus-tcp", "unit_id": 9, "points": points,
         "connection": {"host": "127.0.0.1", "port": port}}
    )  # fmt: skip
    server = await start_modbus_tcp(building, ctx.clock, [device], "127.0.0.1", port)
    try:
        driver = ModbusDriver(device, ctx)
        await driver.open()
        for i, point in enumerate(device.points):
            value = 17.25 + i  # each write moves the simulated setpoint, read back through it
            assert await driver.write(point.id, value) == pytest.approx(value, abs=1e-4)
            assert building.zones["f1-meeting"].heating_sp_c == pytest.approx(value, abs=1e-4)
        assert len(driver.plan) == 1  # 48 registers in one read
    finally:
        await server.shutdown()


async def test_an_exception_answer_and_a_silent_device(
    building: Building, ctx: DriverContext
) -> None:
    port = free_port()
    served = thermostat(port)
    server = await start_modbus_tcp(building, ctx.clock, [served], "127.0.0.1", port)
    try:
        driver = ModbusDriver(served, ctx)
        await driver.open()
        building.inject_fault("f1-meeting", PointKind.TEMPERATURE, "dead")
        values = await driver.read()  # exception 04 for the input registers, the rest reads
        assert "temperature" not in values and "heating_sp" in values
        with pytest.raises(DeviceRejectedError, match="exception"):
            odd = thermostat(port, unit_id=1, points=[
                {"id": "ghost", "kind": "fan", "zone": "f1-meeting", "table": "holding_register",
                 "address": 500, "writable": True, "limits": {"min": 0, "max": 1}}])  # fmt: skip
            ghost = ModbusDriver(odd, ctx)
            await ghost.open()
            await ghost.write("ghost", 1.0)  # exception 02: no such register
    finally:
        await server.shutdown()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # takes the request, never answers
        await asyncio.sleep(30)

    mute = await asyncio.start_server(silent, "127.0.0.1", 0)
    mute_port = mute.sockets[0].getsockname()[1]
    try:
        driver = ModbusDriver(thermostat(mute_port, timeout_s=0.3), ctx)
        await driver.open()
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailableError, match="Timeout"):
            await driver.read()
        assert time.monotonic() - t0 < 5  # the device's own timeout, not pymodbus's default
    finally:
        mute.close()
