"""The Modbus line as a device sees it, against two stacks: a pymodbus server and a libmodbus
device built from tests/modbus_device.c. Each counts and timestamps requests on the device side:
a poll makes exactly the planned requests (the fewest the limits allow), a refused point is one
event and the fewest requests after the split, and a command issued while the device is polled
continuously reaches it before the poll's next request."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from buildingd.agents.bus import InProcessBus, Mailbox, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.device import DeviceAgent
from buildingd.agents.messages import EVENTS_TOPIC, CommandMsg, EventMsg
from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.config.modbus import ModbusTcpDevice
from buildingd.drivers.base import DriverContext, SharedResources
from buildingd.drivers.modbus import ModbusDriver
from tests.conftest import REPO
from tests.modbus_devices import (
    READS,
    LibmodbusDevice,
    PymodbusDevice,
    RecordingDevice,
    build_device,
)

pytestmark = pytest.mark.modbus
START = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
Start = Callable[..., Awaitable[RecordingDevice]]


@pytest.fixture(scope="session")
def libmodbus_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_device(tmp_path_factory.mktemp("libmodbus"))


@pytest.fixture(params=["pymodbus", "libmodbus"])
async def start_device(
    request: pytest.FixtureRequest, tmp_path: Path, libmodbus_binary: Path
) -> AsyncIterator[Start]:
    """Starts a recording device of the parametrised stack, refusing the given ranges."""
    started: list[RecordingDevice] = []

    async def start(refused: list[tuple[int, int]] | None = None) -> RecordingDevice:
        device: RecordingDevice
        if request.param == "libmodbus":
            device = LibmodbusDevice(libmodbus_binary, tmp_path / "requests.log", refused)
        else:
            device = PymodbusDevice(refused)
        await device.start()
        started.append(device)
        return device

    yield start
    for device in started:
        await device.stop()


@pytest.fixture
async def drivers() -> AsyncIterator[DriverContext]:
    context = DriverContext(clock=ScaledClock(START, 1.0), resources=SharedResources())
    yield context
    await context.resources.close_all()


def reading(address: int, type_: str = "uint16") -> dict[str, Any]:
    return {"id": f"p{address}", "kind": "temperature", "table": "holding_register",
            "address": address, "type": type_}  # fmt: skip


def spec(port: int, points: list[dict[str, Any]], **extra: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {"id": "dev", "driver": "modbus-tcp", "unit_id": 1, "timeout_s": 2, "retries": 0,
         "connection": {"host": "127.0.0.1", "port": port}, "points": points, **extra}
    )  # fmt: skip


def fewest_requests(addresses: list[tuple[int, int]], limit: int) -> int:
    """The fewest reads covering every ``(address, width)`` whole, ``limit`` registers each:
    start a read at the first point not yet read and take every point that fits (greedy, which
    is optimal for this)."""
    count, end = 0, -1
    for address, width in sorted(addresses):
        if address + width > end or address < end - limit:
            if address + width <= end:
                continue
            count, end = count + 1, address + limit
            if address + width > end:
                end = address + width
    return count


def reads(device: RecordingDevice) -> list[Any]:
    return [r for r in device.requests() if r.function in READS]


async def test_a_poll_makes_the_planned_requests_the_fewest_the_limits_allow(
    start_device: Start, drivers: DriverContext
) -> None:
    rng = random.Random(40)
    addresses = sorted(rng.sample(range(0, 1000, 4), 40))
    points = [reading(a, rng.choice(["uint16", "float32"])) for a in addresses]
    device = await start_device()
    driver = ModbusDriver(spec(device.port, points), drivers)
    await driver.open()
    values = await driver.read()
    assert set(values) == {p["id"] for p in points}
    widths = [(p["address"], 2 if p["type"] == "float32" else 1) for p in points]
    assert len(reads(device)) == len(driver.plan) == fewest_requests(widths, 125)
    for _ in range(3):
        await driver.read()
    assert len(reads(device)) == 4 * len(driver.plan)


async def test_a_refused_point_is_one_event_and_the_fewest_requests_after_the_split(
    start_device: Start,
) -> None:
    device = await start_device(refused=[(5, 5), (30, 31)])  # point p5; a hole at 30-31
    points = [reading(a) for a in [*range(10), 20, 29, 32, 40]]
    clock = ScaledClock(START, 1.0)
    drivers = DriverContext(clock=clock, resources=SharedResources())
    ctx = AgentContext(bus=InProcessBus(), clock=clock, site=load_site(REPO), drivers=drivers)
    events = Mailbox("events", 1000)
    ctx.bus.subscribe(EVENTS_TOPIC, events)
    agent = DeviceAgent(spec(device.port, points, poll_interval_s=0.05), ctx)
    runner = asyncio.create_task(agent.run(lambda: None))
    try:
        async with asyncio.timeout(60):  # the device's requests: no event to await in the test
            while sum(r.address == 0 for r in reads(device)) < 8:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert isinstance(agent.driver, ModbusDriver)
        # p0-4, p5 alone (refused, still tried: it may come back), p6-29, p32-40.
        assert [(b.start, b.count) for b in agent.driver.plan] == [
            (0, 5), (5, 1), (6, 24), (32, 9)
        ]  # fmt: skip
        seen = reads(device)
        polls = [i for i, r in enumerate(seen) if r.address == 0 and r.count == 5]
        assert polls[-1] - polls[-2] == 4  # requests in a poll, counted by the device
        faults = []
        while len(events):
            event = EventMsg.parse(await events.get())
            if event.kind == "point-fault":
                faults.append((event.severity, event.message))
        assert len(faults) == 1, faults  # once, not at every poll
        assert faults[0][0] == "warning"
        assert "point p5: refused by the device: exception 2" in faults[0][1]
        assert ctx.metrics.counters['buildingd_point_faults_total{device="dev"}'] == 1
    finally:
        runner.cancel()
        await asyncio.wait({runner})
        await drivers.resources.close_all()


async def test_a_command_during_continuous_polling_goes_before_the_polls_next_request(
    start_device: Start,
) -> None:
    device = await start_device()
    rng = random.Random(1000)
    addresses = sorted(rng.sample(range(9000), 1000))
    setpoint = {"id": "sp", "kind": "heating_setpoint", "table": "holding_register",
                "address": 9500, "type": "uint16", "writable": True,
                "limits": {"min": 5, "max": 35}}  # fmt: skip
    clock = ScaledClock(START, 1.0)
    drivers = DriverContext(clock=clock, resources=SharedResources())
    ctx = AgentContext(bus=InProcessBus(), clock=clock, site=load_site(REPO), drivers=drivers)
    results = Mailbox("zone[test]", 100)
    ctx.bus.subscribe("zone[test]", results)
    agent = DeviceAgent(
        spec(device.port, [*map(reading, addresses), setpoint], poll_interval_s=0.05), ctx
    )
    runner = asyncio.create_task(agent.run(lambda: None))
    try:
        async with asyncio.timeout(60):  # the device's requests: no event to await in the test
            while len(reads(device)) < 100:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert isinstance(agent.driver, ModbusDriver)
        per_poll = len(agent.driver.plan)
        assert per_poll > 20  # a poll is many requests: a command arrives in the middle of one
        for value in (21, 22, 23, 24, 25):
            await asyncio.sleep(rng.uniform(0.01, 0.2))  # some moment of the polling
            sent_s = time.monotonic()
            command = CommandMsg(point_id="sp", value=value, zone_id=None, reason="test")
            await ctx.bus.send(command.envelope(Performative.REQUEST, "zone[test]", agent.name))
            async with asyncio.timeout(30):
                reply = await results.get()
            assert reply.performative is Performative.INFORM_DONE, reply.content
            write = next(r for r in device.requests() if r.function == 6 and r.at_s > sent_s)
            assert write.count == value
            # Reads the device received between the command and its write: at most the one in
            # flight when the command came and the one the poll sent before the agent had read
            # its mailbox; never the rest of the poll.
            between = [r for r in reads(device) if sent_s < r.at_s < write.at_s]
            assert len(between) <= 2, (len(between), per_poll)
    finally:
        runner.cancel()
        await asyncio.wait({runner})
        await drivers.resources.close_all()
