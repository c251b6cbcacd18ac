"""Verified writes through the device agent over a real pymodbus server: a target the register
cannot hold exactly is written and verified against what the register holds (not reported a
mismatch and retried forever), while a device that stores something else (it clamps to a limit
of its own, or rounds on its own) is still a read-back mismatch: an error event and a retry."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from buildingd.agents.bus import InProcessBus, Mailbox
from buildingd.agents.context import AgentContext
from buildingd.agents.device import DeviceAgent
from buildingd.agents.messages import EVENTS_TOPIC, CommandMsg, CommandResultMsg
from buildingd.clock import ScaledClock
from buildingd.config.loader import Site, load_site
from buildingd.config.modbus import ModbusTcpDevice
from buildingd.drivers.base import DriverContext, SharedResources, create_driver
from buildingd.sim.building import Building
from buildingd.sim.modbus_server import start_modbus_tcp
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.modbus
START = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
FC_HOLDING = 3


@pytest.fixture
def site() -> Site:
    return load_site(REPO)


@pytest.fixture
def building(site: Site) -> Building:
    return Building(list(site.zones.values()), START, site.timezone, seed=1)


@pytest.fixture
async def ctx(site: Site, building: Building) -> AsyncIterator[AgentContext]:
    clock = ScaledClock(START, 1.0)
    drivers = DriverContext(clock=clock, building=building, resources=SharedResources())
    context = AgentContext(bus=InProcessBus(), clock=clock, site=site, drivers=drivers)
    yield context
    await drivers.resources.close_all()


async def agent_for(device: ModbusTcpDevice, ctx: AgentContext) -> DeviceAgent:
    """A device agent with its driver open, as ``run`` leaves it (commands are executed here
    directly: the write path is what is under test, not the mailbox loop)."""
    agent = DeviceAgent(device, ctx)
    agent.driver = create_driver(device, ctx.drivers)
    await agent.driver.open()
    return agent


def command(point_id: str, value: float) -> CommandMsg:
    return CommandMsg(point_id=point_id, value=value, zone_id="f1-meeting", reason="test")


def setpoint_device(port: int, type_: str, scale: float = 1.0) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {"id": "fcu", "driver": "modbus-tcp", "unit_id": 1, "timeout_s": 1, "retries": 2,
         "connection": {"host": "127.0.0.1", "port": port},
         "points": [{"id": "sp", "kind": "heating_setpoint", "zone": "f1-meeting",
                     "table": "holding_register", "address": 0, "type": type_, "scale": scale,
                     "writable": True, "limits": {"min": 5, "max": 35}}]}
    )  # fmt: skip


class PlainServer:
    """A pymodbus server with one plain device (registers 0..99) whose ``store`` turns
    the raw words a write asks for into the words the device keeps (a device's own logic)."""

    def __init__(self, store: Any = None) -> None:
        self.store = store
        self.writes = 0
        self.server: Any = None
        self.port = 0

    async def _action(
        self, fc: int, start: int, address: int, count: int, regs: list[int], values: Any
    ) -> None:
        if values is not None and fc in (6, 16):
            self.writes += 1
            if self.store is not None:
                values[:] = self.store(list(values))

    async def start(self, port: int) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        regs = [SimData(0, count=100, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(id=1, simdata=regs, action=self._action)
        self.server, self.port = ModbusTcpServer([device], address=("127.0.0.1", port)), port
        await self.server.serve_forever(background=True)

    async def words(self, address: int, count: int) -> list[int]:
        return list(await self.server.async_getValues(1, FC_HOLDING, address, count))


@pytest.fixture
async def plain() -> AsyncIterator[tuple[PlainServer, int]]:
    server, port = PlainServer(), free_port()
    await server.start(port)
    yield server, port
    await server.server.shutdown()


def events(ctx: AgentContext) -> Mailbox:
    box = Mailbox("test")
    ctx.bus.subscribe(EVENTS_TOPIC, box)
    return box


def mismatches(ctx: AgentContext) -> float:
    return float(ctx.metrics.counters['buildingd_readback_mismatch_total{device="fcu"}'])


async def test_a_target_between_register_steps_is_written_and_verified(
    ctx: AgentContext, building: Building
) -> None:
    """The room thermostat's heating setpoint is an int16 of tenths: 21.37 is held as 21.4."""
    port = free_port()
    thermostat = ModbusTcpDevice.model_validate(
        {"id": "thermo", "driver": "modbus-tcp", "profile": "room-thermostat", "unit_id": 1,
         "zone": "f1-meeting", "timeout_s": 1, "connection": {"host": "127.0.0.1", "port": port}}
    )  # fmt: skip
    server = await start_modbus_tcp(building, ctx.clock, [thermostat], "127.0.0.1", port)
    try:
        agent = await agent_for(thermostat, ctx)
        result = await agent.execute(command("heating_sp", 21.37))
        assert result.ok, result.error
        assert result.read_back == pytest.approx(21.4)
        assert building.zones["f1-meeting"].heating_sp_c == pytest.approx(21.4)
        assert ctx.metrics.counters['buildingd_commands_total{device="thermo"}'] == 1
        assert ctx.metrics.counters['buildingd_readback_mismatch_total{device="thermo"}'] == 0
    finally:
        await server.shutdown()


async def test_a_float32_target_is_verified_at_float32_precision(
    ctx: AgentContext, plain: tuple[PlainServer, int]
) -> None:
    server, port = plain
    agent = await agent_for(setpoint_device(port, "float32"), ctx)
    result = await agent.execute(command("sp", 21.37))
    held = struct.unpack(">f", struct.pack(">f", 21.37))[0]  # 21.3700008...
    assert result.ok, result.error
    assert result.read_back == held != 21.37
    assert server.writes == 1 and mismatches(ctx) == 0


async def expect_mismatch(
    ctx: AgentContext, server: PlainServer, value: float, held: float
) -> CommandResultMsg:
    box = events(ctx)
    agent = await agent_for(setpoint_device(server.port, "int16", 0.1), ctx)
    result = await agent.execute(command("sp", value))
    assert not result.ok and result.read_back is None
    assert result.error is not None and f"read back {held}" in result.error
    retries = agent.device.retries
    assert server.writes == retries + 1  # retried, each time read back and compared
    assert mismatches(ctx) == retries + 1
    event = await box.get()
    assert event.content["kind"] == "command-rejected"
    assert f"read back {held}" in event.content["message"]
    return result


async def test_a_device_that_clamps_to_its_own_limit_is_a_mismatch(
    ctx: AgentContext, plain: tuple[PlainServer, int]
) -> None:
    server, _ = plain
    server.store = lambda words: [min(w, 250) for w in words]  # keeps at most 25.0 degC
    result = await expect_mismatch(ctx, server, 28.0, 25.0)
    assert result.error is not None and "wrote 28.0, read back 25.0" in result.error
    assert await server.words(0, 1) == [250]


async def test_one_register_step_off_is_a_mismatch_too(
    ctx: AgentContext, plain: tuple[PlainServer, int]
) -> None:
    """21.37 is held as 21.4 (raw 214); a device that keeps 21.3 did not do what was asked,
    although 21.3 is as close to 21.37 as one step of the register."""
    server, _ = plain
    server.store = lambda words: [w - 1 for w in words]
    result = await expect_mismatch(ctx, server, 21.37, 21.3)
    assert result.error is not None and "wrote 21.37 (held as 21.4), read back 21.3" in result.error


async def test_a_release_on_modbus_writes_the_value_and_a_releasing_stop_holds(
    ctx: AgentContext, plain: tuple[PlainServer, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Modbus has no priority array: a hand override's end writes the zone's value as before,
    and a policy's ``shutdown: release`` leaves the register as it is (said once in the log)."""
    server, port = plain
    agent = await agent_for(setpoint_device(port, "int16"), ctx)
    release = CommandMsg(point_id="sp", value=21.0, zone_id="f1-meeting", reason="test",
                         release=True)  # fmt: skip
    result = await agent.execute(release)
    assert result.ok and not result.released and result.read_back == 21.0
    assert server.writes == 1 and await server.words(0, 1) == [21]
    with caplog.at_level("INFO", logger="buildingd.agents.device"):
        await agent.release({"sp"}, "shutdown: policy releases")
    assert server.writes == 1 and await server.words(0, 1) == [21]
    assert "cannot relinquish; 1 point(s) held" in caplog.text
