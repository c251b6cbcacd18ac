"""The Modbus driver against a real pymodbus server serving the simulated building (or a plain
pymodbus device whose registers the test sets and checks), over TCP and over a real serial line
(a socat pty pair): block reads, re-planning after an illegal-address answer, verified writes,
refusals, every data type and byte order on the wire, a gateway that goes away and comes back,
and a silent unit that must not take its neighbours on the same line down."""

from __future__ import annotations

import asyncio
import re
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymodbus.exceptions import NoSuchIdException

from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.config.modbus import ModbusRtuDevice, ModbusTcpDevice
from buildingd.drivers import modbus
from buildingd.drivers.base import DriverContext, SharedResources
from buildingd.drivers.modbus import ModbusDriver
from buildingd.errors import DeviceRejectedError, DeviceUnavailableError
from buildingd.points import PointKind
from buildingd.sim.building import Building
from buildingd.sim.modbus_server import BuildingModbusContext, start_modbus_rtu, start_modbus_tcp
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


@pytest.fixture
async def wire_ctx() -> AsyncIterator[DriverContext]:
    """For plain pymodbus devices: no simulated building behind them."""
    context = DriverContext(clock=ScaledClock(START, 1.0), resources=SharedResources())
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
        after = [b.describe() for b in driver.plan]
        assert len(after) == len(before) + 1  # co2 alone, the others still in one block
        assert "input_register 0-1 (2): temperature, humidity" in after
        requests = driver.requests
        await driver.read()
        assert driver.requests - requests == len(after)
        assert driver.point_faults.keys() == {"co2"}
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


async def slow_link(to_port: int, delay_s: float) -> asyncio.Server:
    """A TCP relay on a free port that holds every chunk ``delay_s`` each way: a slow link (a
    radio bridge, a busy gateway) in front of a real device."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            await asyncio.sleep(delay_s)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", to_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)  # fmt: skip

    return await asyncio.start_server(relay, "127.0.0.1", 0)


async def test_a_fast_simulation_does_not_cut_a_real_answer_short(building: Building) -> None:
    """At speed 60 a 3 s timeout is 50 ms of the event loop; a device 150 ms away must still be
    read (the timeout never goes below a real round trip), not timed out and answered late."""
    port = free_port()
    served = thermostat(port)
    server = await start_modbus_tcp(building, ScaledClock(START, 1.0), [served], "127.0.0.1", port)
    link = await slow_link(port, 0.15)
    far = thermostat(link.sockets[0].getsockname()[1], timeout_s=3)
    ctx = DriverContext(clock=ScaledClock(START, 60.0), building=building,
                        resources=SharedResources())  # fmt: skip
    try:
        driver = ModbusDriver(far, ctx)
        await driver.open()
        values = await driver.read()
        assert values["temperature"].value == pytest.approx(
            building.read_point("f1-meeting", PointKind.TEMPERATURE), abs=0.051
        )
        assert driver.requests == len(driver.plan)  # no request timed out and was repeated
    finally:
        await ctx.resources.close_all()
        link.close()
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
    # The cost of each plan against one request per point.
    assert re.search(r"\n  3 requests, [0-9.]+ ms on the wire per poll; one request per point: "
                     r"5 requests, [0-9.]+ ms\n", out)  # fmt: skip


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
        while await reader.read(1024):  # takes the requests, never answers
            pass
        writer.close()

    mute = await asyncio.start_server(silent, "127.0.0.1", 0)
    mute_port = mute.sockets[0].getsockname()[1]
    try:
        driver = ModbusDriver(thermostat(mute_port, timeout_s=0.3), ctx)
        await driver.open()
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailableError, match=r"did not answer.*within 0.3 s"):
            await driver.read()
        assert time.monotonic() - t0 < 5  # the device's own timeout, not pymodbus's default
        # A timeout fails the request, not the connection (other units may share it).
        assert driver.line is not None and driver.line.client.connected
        with pytest.raises(DeviceUnavailableError, match="not answering; next attempt in"):
            await driver.read()  # backing off: the silent device costs the line nothing now
    finally:
        mute.close()


# --- Plain pymodbus devices (no simulated building): the registers are exactly what is on the
# wire, so a test can set them server-side and check the words a write left.

FC_COIL, FC_DISCRETE, FC_HOLDING, FC_INPUT = 1, 2, 3, 4


def plain_device(unit_id: int, action: Any = None) -> Any:
    """A pymodbus ``SimDevice``: coils, discrete inputs, holding and input registers 0..199, all
    zero and all writable; ``action`` may change what a request reads or writes."""
    from pymodbus.simulator import DataType as SimType
    from pymodbus.simulator import SimData, SimDevice

    def bits() -> list[Any]:
        return [SimData(0, count=200, values=False, datatype=SimType.BITS)]

    def regs() -> list[Any]:
        return [SimData(0, count=200, values=0, datatype=SimType.REGISTERS)]

    return SimDevice(id=unit_id, simdata=(bits(), bits(), regs(), regs()), action=action)


async def serve_plain(devices: list[Any], port: int) -> Any:
    from pymodbus.server import ModbusTcpServer

    server = ModbusTcpServer(devices, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server


def tcp_device(port: int, points: list[dict[str, Any]], **extra: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {"id": "plain", "driver": "modbus-tcp", "unit_id": 1, "timeout_s": 1, "retries": 0,
         "connection": {"host": "127.0.0.1", "port": port}, "points": points, **extra}
    )  # fmt: skip


def binary(id_: str, table: str, address: int, **kw: Any) -> dict[str, Any]:
    writable = {"writable": True, "limits": {"min": 0, "max": 1}} if kw.pop("writable", 0) else {}
    return {"id": id_, "kind": "fan", "table": table, "address": address, "type": "bool",
            **writable, **kw}  # fmt: skip


async def test_bools_on_coils_and_discrete_inputs_over_tcp(wire_ctx: DriverContext) -> None:
    port = free_port()
    server = await serve_plain([plain_device(1)], port)
    try:
        device = tcp_device(port, [
            binary("fan", "coil", 3, writable=True), binary("pump", "coil", 10, writable=True),
            binary("alarm", "discrete_input", 5), binary("door", "discrete_input", 12),
            binary("window", "discrete_input", 9),
        ])  # fmt: skip
        await server.async_setValues(1, FC_COIL, 10, [True])
        await server.async_setValues(1, FC_DISCRETE, 5, [True])
        await server.async_setValues(1, FC_DISCRETE, 12, [True])
        driver = ModbusDriver(device, wire_ctx)
        await driver.open()
        values = {k: s.value for k, s in (await driver.read()).items()}
        assert values == {"fan": 0.0, "pump": 1.0, "alarm": 1.0, "door": 1.0, "window": 0.0}
        assert driver.requests == 2  # coils 3-10 in one read, discrete inputs 5-12 in another
        assert await driver.write("fan", 1.0) == 1.0
        assert await driver.write("pump", 0.0) == 0.0
        assert await server.async_getValues(1, FC_COIL, 3, 8) == [
            True, False, False, False, False, False, False, False
        ]  # fmt: skip
        with pytest.raises(DeviceRejectedError, match="does not fit a bit"):
            await driver.write("fan", 2.0)
    finally:
        await server.shutdown()


async def test_bit_inside_a_holding_register_read_and_read_modify_write(
    wire_ctx: DriverContext,
) -> None:
    port = free_port()
    server = await serve_plain([plain_device(1)], port)

    def bit(id_: str, n: int, writable: bool = True) -> dict[str, Any]:
        point = {"id": id_, "kind": "fan", "table": "holding_register", "address": 4,
                 "type": "bit", "bit": n}  # fmt: skip
        return point | ({"writable": True, "limits": {"min": 0, "max": 1}} if writable else {})

    async def word() -> int:
        return int((await server.async_getValues(1, FC_HOLDING, 4, 1))[0])

    try:
        device = tcp_device(port, [bit("b1", 1), bit("b2", 2, False), bit("b3", 3), bit("b15", 15)])
        # Bit 13 is set on the device but not declared: a write must keep it too.
        await server.async_setValues(1, FC_HOLDING, 4, [0b1010_0000_0000_0110])
        driver = ModbusDriver(device, wire_ctx)
        await driver.open()
        values = {k: s.value for k, s in (await driver.read()).items()}
        assert values == {"b1": 1.0, "b2": 1.0, "b3": 0.0, "b15": 1.0}
        assert driver.requests == 1  # four points, one register, one read
        assert await driver.write("b1", 0.0) == 0.0
        assert await word() == 0b1010_0000_0000_0100
        assert await driver.write("b3", 1.0) == 1.0
        assert await word() == 0b1010_0000_0000_1100
        # Read-modify-write reads the register now: what the device changed meanwhile is kept.
        await server.async_setValues(1, FC_HOLDING, 4, [0x00F0])
        assert await driver.write("b1", 1.0) == 1.0
        assert await word() == 0x00F2
        assert await driver.write("b15", 1.0) == 1.0
        assert await word() == 0x80F2
    finally:
        await server.shutdown()


def wire_words(fmt: str, value: float, word_order: str, byte_order: str) -> list[int]:
    """The registers of a 32-bit value in the four layouts, spelt out independently of the codec:
    big/big ABCD, little/big CDAB, big/little BADC, little/little DCBA (A = most significant)."""
    abcd = struct.pack(f">{fmt}", value if fmt == "f" else int(value))
    layout = {("big", "big"): (0, 1, 2, 3), ("little", "big"): (2, 3, 0, 1),
              ("big", "little"): (1, 0, 3, 2), ("little", "little"): (3, 2, 1, 0)}  # fmt: skip
    data = bytes(abcd[i] for i in layout[(word_order, byte_order)])
    return [int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")]


async def test_little_byte_order_for_32_bit_types_on_the_wire(wire_ctx: DriverContext) -> None:
    port = free_port()
    server = await serve_plain([plain_device(1)], port)
    # (type, word order, value read from golden words, golden words, value then written)
    cases = [
        ("float32", "big", 21.5, [0xAC41, 0x0000], -1.0),
        ("float32", "little", 21.5, [0x0000, 0xAC41], 1013.25),
        ("int32", "big", -2.0, [0xFFFF, 0xFEFF], -123456.0),
        ("int32", "little", -2.0, [0xFEFF, 0xFFFF], 70000.0),
        ("uint32", "big", float(0x12345678), [0x3412, 0x7856], 4000000000.0),
        ("uint32", "little", float(0x12345678), [0x7856, 0x3412], 65537.0),
    ]
    points = [
        {"id": f"{t}_{w}", "kind": "power", "table": "holding_register", "address": 10 * i,
         "type": t, "word_order": w, "byte_order": "little", "writable": True,
         "limits": {"min": -1e10, "max": 1e10}}
        for i, (t, w, *_) in enumerate(cases)
    ]  # fmt: skip
    try:
        for i, (_, _, _, words, _) in enumerate(cases):
            await server.async_setValues(1, FC_HOLDING, 10 * i, words)
        driver = ModbusDriver(tcp_device(port, points), wire_ctx)
        await driver.open()
        values = await driver.read()
        for (t, w, value, _, _), point in zip(cases, points, strict=True):
            assert values[point["id"]].value == value, (t, w)
        for i, (t, w, _, _, new) in enumerate(cases):
            assert await driver.write(f"{t}_{w}", new) == new
            fmt = {"float32": "f", "int32": "i", "uint32": "I"}[t]
            on_wire = await server.async_getValues(1, FC_HOLDING, 10 * i, 2)
            assert on_wire == wire_words(fmt, new, w, "little"), (t, w)
    finally:
        await server.shutdown()


@pytest.mark.serial
async def test_rtu_round_trip_of_a_float32_and_a_coil(
    wire_ctx: DriverContext, pty_pair: tuple[str, str]
) -> None:
    from pymodbus.server import ModbusSerialServer

    server_end, client_end = pty_pair
    server = ModbusSerialServer([plain_device(5)], port=server_end, baudrate=19200, parity="N")
    await server.serve_forever(background=True)
    device = ModbusRtuDevice.model_validate(
        {"id": "fcu", "driver": "modbus-rtu", "unit_id": 5, "timeout_s": 2, "retries": 1,
         "connection": {"port": client_end, "baudrate": 19200, "parity": "N"},
         "points": [
             {"id": "sp", "kind": "heating_setpoint", "table": "holding_register", "address": 20,
              "type": "float32", "writable": True, "limits": {"min": 5, "max": 35}},
             binary("fan", "coil", 7, writable=True),
         ]}
    )  # fmt: skip
    try:
        driver = ModbusDriver(device, wire_ctx)
        await driver.open()
        held = struct.unpack(">f", struct.pack(">f", 21.37))[0]
        assert await driver.write("sp", 21.37) == held
        assert await server.async_getValues(5, FC_HOLDING, 20, 2) == wire_words(
            "f", 21.37, "big", "big"
        )
        assert await driver.write("fan", 1.0) == 1.0
        assert (await server.async_getValues(5, FC_COIL, 7, 1))[0] is True
        await server.async_setValues(5, FC_HOLDING, 20, wire_words("f", 18.5, "big", "big"))
        await server.async_setValues(5, FC_COIL, 7, [False])
        values = await driver.read()
        assert (values["sp"].value, values["fan"].value) == (18.5, 0.0)
    finally:
        await server.shutdown()


# --- One silent unit on a shared line (an RS-485 bus, or several unit ids behind one TCP
# gateway): its requests time out, its neighbours keep being read every poll.


class SilentForUnknownUnits(BuildingModbusContext):
    """The simulated building's devices; a unit id it does not serve is not answered at all, as
    on a real bus (the pymodbus server drops the request with ``ignore_missing_devices``)."""

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> Any:
        if device_id not in self.units:
            raise NoSuchIdException(f"no unit {device_id} here")
        return await super().async_getValues(device_id, func_code, address, count)


async def neighbours_keep_reading(
    live: ModbusDriver, silent: ModbusDriver, units: dict[int, Any], come_back: Any
) -> None:
    """Poll both for ~3 s: the live one reads every poll over the same open connection, the
    silent one fails and is retried only after its backoff; then it comes back and reads."""
    await live.open()
    await silent.open()
    assert live.line is silent.line is not None  # one line, shared
    line = live.line
    await live.read()
    transport = line.client.ctx.transport
    polls, live_reads = 0, 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        polls += 1
        with pytest.raises(DeviceUnavailableError):
            await silent.read()
        values = await live.read()  # never DeviceUnavailableError: its line is fine
        live_reads += "temperature" in values or "level" in values
        await asyncio.sleep(0.05)
    assert live_reads == polls
    assert line.available is True and line.client.ctx.transport is transport  # never re-opened
    # Backed off: after the first poll's attempts, only a few more in ~3 s of polls.
    assert silent.requests <= (silent.spec.retries + 1) * 4 < polls
    come_back()
    deadline = time.monotonic() + 20
    while True:
        try:
            assert await silent.read()
            break
        except DeviceUnavailableError:
            assert time.monotonic() < deadline, "the silent unit was never polled again"
            await asyncio.sleep(0.1)


async def test_a_silent_unit_behind_a_tcp_gateway_does_not_take_down_its_neighbours(
    building: Building, ctx: DriverContext, caplog: pytest.LogCaptureFixture
) -> None:
    from pymodbus.server import ModbusTcpServer

    port = free_port()
    live, ghost = thermostat(port, timeout_s=2), thermostat(port, unit_id=2, timeout_s=0.3)
    units: dict[int, Any] = {1: live}
    server = ModbusTcpServer(SilentForUnknownUnits(building, ctx.clock, units),
                             address=("127.0.0.1", port), ignore_missing_devices=True)  # fmt: skip
    await server.serve_forever(background=True)
    try:
        await neighbours_keep_reading(
            ModbusDriver(live, ctx), ModbusDriver(ghost, ctx), units,
            lambda: units.update({2: ghost}),
        )  # fmt: skip
        assert "unavailable" not in caplog.text  # the line was never reported down
    finally:
        await server.shutdown()


@pytest.mark.serial
async def test_a_silent_unit_on_an_rtu_bus_does_not_take_down_its_neighbours(
    building: Building, ctx: DriverContext, pty_pair: tuple[str, str]
) -> None:
    from pymodbus.server import ModbusSerialServer

    server_end, client_end = pty_pair

    def dimmer(port: str, unit_id: int, timeout_s: float = 2) -> ModbusRtuDevice:
        return ModbusRtuDevice.model_validate(
            {"id": f"dimmer{unit_id}", "driver": "modbus-rtu", "unit_id": unit_id,
             "profile": "lighting-dimmer", "zone": "f1-meeting", "timeout_s": timeout_s,
             "retries": 1, "connection": {"port": port, "baudrate": 19200, "parity": "N"}}
        )  # fmt: skip

    units: dict[int, Any] = {7: dimmer(server_end, 7)}
    server = ModbusSerialServer(SilentForUnknownUnits(building, ctx.clock, units),
                                port=server_end, baudrate=19200, parity="N",
                                ignore_missing_devices=True)  # fmt: skip
    await server.serve_forever(background=True)
    try:
        await neighbours_keep_reading(
            ModbusDriver(dimmer(client_end, 7), ctx),
            ModbusDriver(dimmer(client_end, 8, timeout_s=0.3), ctx),
            units, lambda: units.update({8: dimmer(server_end, 8)}),
        )  # fmt: skip
    finally:
        await server.shutdown()


async def test_a_tcp_line_on_which_no_unit_answers_is_reopened(
    wire_ctx: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that looks connected but on which nothing is answered any more (a firewall that
    dropped its state) is re-opened once no unit has answered for a while."""
    monkeypatch.setattr(modbus, "SILENT_LINE_RECONNECT_S", 0.5)
    connections = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while await reader.read(1024):  # takes every request, answers none
            pass
        writer.close()

    mute = await asyncio.start_server(silent, "127.0.0.1", 0)
    driver = ModbusDriver(
        thermostat(mute.sockets[0].getsockname()[1], timeout_s=0.2, retries=2), wire_ctx
    )
    try:
        await driver.open()
        with pytest.raises(DeviceUnavailableError, match="did not answer"):
            await driver.read()  # three requests in 0.6 s unanswered: the line is re-opened
        assert driver.line is not None and not driver.line.client.connected
        deadline = time.monotonic() + 10
        while connections < 2:
            with pytest.raises(DeviceUnavailableError):
                await driver.read()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        mute.close()


@pytest.mark.serial
async def test_the_daemon_serves_simulated_rtu_devices_on_a_serial_line(
    site_copy: Path, tmp_path: Path, pty_pair: tuple[str, str]
) -> None:
    from buildingd.service.app import Daemon
    from buildingd.settings import Settings

    daemon_end, simulator_end = pty_pair
    (site_copy / "devices" / "rtu.yaml").write_text(
        "devices:\n"
        "  - id: kitchen-rtu-thermostat\n"
        "    driver: modbus-rtu\n"
        "    simulated: true\n"
        "    profile: room-thermostat\n"
        "    zone: f1-kitchen\n"
        "    unit_id: 4\n"
        "    poll_interval_s: 2\n"
        f"    connection: {{port: {daemon_end}, baudrate: 19200, parity: N}}\n"
    )
    settings = Settings.model_validate(
        {
            "site_dir": site_copy,
            "state_dir": tmp_path / "state",
            "http": {"enabled": False},
            "mqtt": {"port": 0},
            "sim": {
                "modbus_port": 0,
                "bacnet_port": 0,
                "start": "2027-01-11T09:00:00",
                "modbus_rtu_ports": {daemon_end: simulator_end},
            },
        }
    )
    daemon = Daemon(settings, load_site(site_copy))
    task = asyncio.create_task(daemon.run(120))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 60)
        agent = daemon.device_agents["kitchen-rtu-thermostat"]
        async with asyncio.timeout(30):
            while not agent.available:  # noqa: ASYNC110 - set by the agent's first good poll
                await asyncio.sleep(0.1)
        # The real RTU client reads the simulated thermostat over the serial line.
        assert agent.driver is not None and daemon.building is not None
        samples = await agent.driver.read()
        room = daemon.building.zones["f1-kitchen"].temperature_c
        assert samples["temperature"].value == pytest.approx(room, abs=0.2)  # tenths, noise
    finally:
        daemon.request_stop()
        await task
