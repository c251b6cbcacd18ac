"""The BACnet driver over real UDP on 127.0.0.1 against simulated BACnet/IP devices (bacpypes3
applications serving the simulated building): discovery, ReadPropertyMultiple planning counted on
the device, the ReadProperty fallback, writes at priority with read-back, a higher priority
reported, relinquish, error classes counted per device, a silent device, units checked, COV."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from buildingd.agents.context import Metrics
from buildingd.clock import ScaledClock
from buildingd.config.bacnet import BacnetDevice
from buildingd.config.loader import load_site
from buildingd.drivers.bacnet import BacnetDriver
from buildingd.drivers.base import BacnetClient, DriverContext, SharedResources
from buildingd.errors import DeviceRejectedError, DeviceUnavailableError, PriorityHeldError
from buildingd.points import PointKind
from buildingd.sim.bacnet_server import SimulatedBacnetDevice, start_bacnet_devices
from buildingd.sim.building import Building
from tests.conftest import REPO, free_udp_port, until

pytestmark = pytest.mark.bacnet

START = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
ZONE = "f1-meeting"


def vav(port: int, instance: int = 1001, **extra: Any) -> BacnetDevice:
    """A VAV box: room temperature, occupancy, a heating setpoint and a damper command."""
    return BacnetDevice.model_validate(
        {"id": f"vav{instance}", "driver": "bacnet", "device_instance": instance,
         "address": f"127.0.0.1:{port}", "timeout_s": 5, "retries": 0,
         "points": [
             {"id": "temp", "kind": "temperature", "zone": ZONE, "object_type": "analog-input",
              "instance": 1},
             {"id": "humidity", "kind": "humidity", "zone": ZONE, "object_type": "analog-input",
              "instance": 2},
             {"id": "occupied", "kind": "occupancy", "zone": ZONE, "object_type": "binary-input",
              "instance": 1},
             {"id": "heat_sp", "kind": "heating_setpoint", "zone": ZONE,
              "object_type": "analog-value", "instance": 1, "writable": True,
              "limits": {"min": 10, "max": 28}},
         ], **extra}
    )  # fmt: skip


@pytest.fixture
def building() -> Building:
    site = load_site(REPO)
    return Building(list(site.zones.values()), START, site.timezone, seed=1)


@pytest.fixture
async def ctx(building: Building) -> AsyncIterator[DriverContext]:
    context = DriverContext(
        clock=ScaledClock(START, 1.0), building=building, resources=SharedResources(),
        metrics=Metrics(), bacnet=BacnetClient(address=f"127.0.0.1:{free_udp_port()}"),
    )  # fmt: skip
    yield context
    await context.resources.close_all()


@pytest.fixture
def served() -> Iterator[list[SimulatedBacnetDevice]]:
    devices: list[SimulatedBacnetDevice] = []
    yield devices
    for d in devices:
        d.app.close()


async def serve(building: Building, ctx: DriverContext, spec: BacnetDevice,
                into: list[SimulatedBacnetDevice]) -> SimulatedBacnetDevice:  # fmt: skip
    [sim] = await start_bacnet_devices(building, ctx.clock, [spec])
    into.append(sim)
    return sim


def failures(ctx: DriverContext, device_id: str) -> dict[str, float]:
    assert ctx.metrics is not None
    prefix = "buildingd_bacnet_failures_total{"
    return {k: v for k, v in ctx.metrics.counters.items()
            if k.startswith(prefix) and f'device="{device_id}"' in k}  # fmt: skip


async def test_reads_every_point_in_one_request(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    spec = vav(free_udp_port())
    sim = await serve(building, ctx, spec, served)
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    sim.app.requests.clear()
    values = await driver.read()
    assert set(values) == {"temp", "humidity", "occupied", "heat_sp"}
    # The simulated sensor adds noise (sigma 0.03 K) to the zone's air temperature.
    assert values["temp"].value == pytest.approx(building.zones[ZONE].temperature_c, abs=0.2)
    assert values["occupied"].value in (0.0, 1.0)
    # Four points, one ReadPropertyMultiple: counted by the device, not by the client.
    assert sim.app.requests == {"ReadPropertyMultipleRequest": 1}


async def test_small_apdu_needs_more_requests_and_all_are_answered(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    port = free_udp_port()
    # The device declares a 50-octet APDU; the device file does not say: the driver learns it.
    sim = await serve(building, ctx, vav(port, reads={"max_apdu": 50}), served)
    spec = vav(port)
    driver = BacnetDriver(spec, ctx)
    assert len(driver.plan) == 1
    await driver.open()
    sim.app.requests.clear()
    values = await driver.read()
    assert set(values) == {"temp", "humidity", "occupied", "heat_sp"}
    assert sim.app.requests["ReadPropertyMultipleRequest"] == len(driver.plan) > 1
    # The device refuses answers longer than 50 octets (it cannot segment): none was refused,
    # so the plan's size bound held against bacpypes3's real encoding.
    assert failures(ctx, spec.id) == {}


async def test_device_without_rpm_is_read_point_by_point_and_remembered(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    spec = vav(free_udp_port())
    sim = await serve(building, ctx, spec, served)
    sim.app.rpm = False
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    first = await driver.read()
    assert set(first) == {"temp", "humidity", "occupied", "heat_sp"}
    sim.app.requests.clear()
    await driver.read()
    # Remembered: the second poll does not try ReadPropertyMultiple again.
    assert sim.app.requests == {"ReadPropertyRequest": 4}
    denied = 'failure="error:service-request-denied"'
    assert failures(ctx, spec.id) == {
        f'buildingd_bacnet_failures_total{{device="vav1001",{denied}}}': 1
    }


async def test_discovery_by_who_is(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    port = free_udp_port()
    await serve(building, ctx, vav(port, instance=2002), served)
    # Who-Is is sent to the device's port: simulated devices each have their own UDP port on
    # loopback, where a real site broadcasts on 47808. The I-Am tells the driver the address.
    found = vav(port, instance=2002).model_copy(update={"address": None})
    ctx.bacnet = dataclasses.replace(ctx.bacnet, who_is_to=f"127.0.0.1:{port}")
    driver = BacnetDriver(found, ctx)
    await driver.open()
    assert str(driver.peer) == f"127.0.0.1:{port}"
    assert "temp" in await driver.read()


async def test_discovery_by_broadcast_who_is(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    """Two devices share one BACnet port, as on a site's 47808, each on its own loopback address
    with a broadcast socket (``/8``: 127.255.255.255); the Who-Is goes to the broadcast address,
    the kernel hands it to both, and only the asked-for instance answers."""
    port = free_udp_port()
    sims = []
    for host, instance in (("127.0.0.3", 2003), ("127.0.0.4", 2004)):
        sims.append(await serve(building, ctx, vav(port, instance=instance).model_copy(
            update={"address": f"{host}/8:{port}"}), served))  # fmt: skip
    ctx.bacnet = dataclasses.replace(ctx.bacnet, who_is_to=f"127.255.255.255:{port}")
    for asked, (host, instance) in enumerate((("127.0.0.4", 2004), ("127.0.0.3", 2003)), 1):
        driver = BacnetDriver(vav(port, instance=instance).model_copy(update={"address": None}),
                              ctx)  # fmt: skip
        await driver.open()
        assert str(driver.peer) == f"{host}:{port}"
        both = [asked, asked]
        await until(lambda both=both: [s.app.requests["WhoIsRequest"] for s in sims] == both,
                    "both devices heard the Who-Is")  # fmt: skip
        assert "temp" in await driver.read()


async def test_write_at_priority_reads_back_and_relinquishes(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    spec = vav(free_udp_port(), write_priority=8)
    sim = await serve(building, ctx, spec, served)
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    before = building.read_point(ZONE, PointKind.HEATING_SETPOINT)
    read_back = await driver.write("heat_sp", 23.1)
    assert read_back == driver.representable("heat_sp", 23.1)  # a REAL holds 23.1000003...
    assert building.read_point(ZONE, PointKind.HEATING_SETPOINT) == pytest.approx(23.1, abs=1e-5)
    _present, slots = await driver.read_control(spec.points[3])
    assert [i + 1 for i, v in enumerate(slots) if v is not None] == [8]
    after = await driver.relinquish("heat_sp")
    assert after == pytest.approx(before, abs=1e-5)  # back to the relinquish default
    assert building.read_point(ZONE, PointKind.HEATING_SETPOINT) == pytest.approx(before, abs=1e-5)
    _present, slots = await driver.read_control(spec.points[3])
    assert slots == [None] * 16
    assert sim.app.requests["WritePropertyRequest"] == 2


async def test_close_leaves_what_was_commanded(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    """Closing the driver writes nothing: the device agent decides what is given back (a zone
    policy's ``shutdown: release``, a removed device; ``test_bacnet_release.py``)."""
    spec = vav(free_udp_port())
    sim = await serve(building, ctx, spec, served)
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    await driver.write("heat_sp", 24.0)
    await driver.close()
    assert sim.objects["heat_sp"].priorityArray[7].real == 24.0
    assert sim.app.requests["WritePropertyRequest"] == 1


async def test_higher_priority_hold_is_reported_not_fought(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    from bacpypes3.basetypes import PriorityValue

    spec = vav(free_udp_port())
    sim = await serve(building, ctx, spec, served)
    # The building automation system holds the setpoint at priority 5 (critical equipment).
    sim.objects["heat_sp"].priorityArray[4] = PriorityValue(real=16.0)
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    with pytest.raises(PriorityHeldError, match="priority 5 holds the point at 16.0") as info:
        await driver.write("heat_sp", 22.0)
    assert info.value.priority == 5
    slots = sim.objects["heat_sp"].priorityArray
    assert slots[4].real == 16.0  # untouched
    assert slots[7].real == 22.0  # ours is stored below it, in force once the BAS lets go
    assert building.read_point(ZONE, PointKind.HEATING_SETPOINT) == 16.0


async def test_error_classes_are_mapped_and_counted(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    port = free_udp_port()
    await serve(building, ctx, vav(port), served)
    # The device file names objects the device does not have, and an input as writable.
    wrong = BacnetDevice.model_validate(
        {"id": "wrong", "driver": "bacnet", "device_instance": 1001,
         "address": f"127.0.0.1:{port}", "timeout_s": 2, "retries": 0,
         "points": [
             {"id": "temp", "kind": "temperature", "zone": ZONE, "object_type": "analog-input",
              "instance": 1},
             {"id": "ghost", "kind": "co2", "zone": ZONE, "object_type": "binary-input",
              "instance": 99},
             {"id": "ghost_sp", "kind": "heating_setpoint", "zone": ZONE,
              "object_type": "analog-value", "instance": 42, "writable": True,
              "limits": {"min": 10, "max": 28}},
         ]}
    )  # fmt: skip
    driver = BacnetDriver(wrong, ctx)
    await driver.open()
    values = await driver.read()
    assert set(values) == {"temp"}  # the bad points fail alone
    with pytest.raises(DeviceRejectedError, match="unknown-object"):
        await driver.write("ghost_sp", 20.0)
    # units of ghost_sp at open, ghost and ghost_sp in the poll, the write: four refusals.
    key = 'buildingd_bacnet_failures_total{device="wrong",failure="error:unknown-object"}'
    assert failures(ctx, "wrong") == {key: 4}


async def test_silent_device_fails_only_itself(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    quiet_spec, loud_spec = vav(free_udp_port(), 3001, timeout_s=1), vav(free_udp_port(), 3002)
    quiet = await serve(building, ctx, quiet_spec, served)
    await serve(building, ctx, loud_spec, served)
    quiet_driver, loud_driver = BacnetDriver(quiet_spec, ctx), BacnetDriver(loud_spec, ctx)
    await quiet_driver.open()
    await loud_driver.open()
    quiet.app.silent = True
    results = await asyncio.gather(quiet_driver.read(), loud_driver.read(), return_exceptions=True)
    assert isinstance(results[0], DeviceUnavailableError)
    assert "timeout" in str(results[0])
    assert isinstance(results[1], dict) and len(results[1]) == 4
    assert failures(ctx, "vav3001") == {
        'buildingd_bacnet_failures_total{device="vav3001",failure="timeout:no-response"}': 1
    }
    quiet.app.silent = False
    assert len(await quiet_driver.read()) == 4  # back without reopening


async def test_units_mismatch_keeps_the_point_out(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    port = free_udp_port()
    await serve(building, ctx, vav(port), served)
    fahrenheit = vav(port).model_copy(deep=True)
    points = list(fahrenheit.points)
    points[0] = points[0].model_copy(update={"unit": "degF"})
    fahrenheit = fahrenheit.model_copy(update={"points": points})
    driver = BacnetDriver(fahrenheit, ctx)
    await driver.open()
    assert "temp" not in await driver.read()
    assert driver.excluded == {"temp": "device reports units 'degC', the point declares 'degF'"}


async def test_cov_delivers_changes_without_polling(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    spec = vav(free_udp_port())
    points = [p.model_copy(update={"cov": True}) if p.id == "occupied" else p for p in spec.points]
    spec = spec.model_copy(update={"points": points})
    sim = await serve(building, ctx, spec, served)
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    assert "occupied" not in [r.point_id for b in driver.plan for r in b.reads]
    async with asyncio.timeout(20):
        while "occupied" not in driver.cov.values:  # the initial notification
            await driver.wait_update()
    was = driver.cov.values["occupied"].value
    sim.app.requests.clear()
    sim.objects["occupied"].presentValue = "inactive" if was else "active"
    async with asyncio.timeout(20):
        while driver.cov.values["occupied"].value == was:
            await driver.wait_update()
    assert sim.app.requests["ReadPropertyMultipleRequest"] == 0  # pushed, not polled
    assert sim.app.requests["SubscribeCOVRequest"] == 0
    await driver.close()


async def test_cov_subscription_is_renewed_before_its_lifetime_ends(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    spec = vav(free_udp_port())
    points = [p.model_copy(update={"cov": True}) if p.id == "temp" else p for p in spec.points]
    # 3 s: below the schema's minimum (60 s) so the renewal happens within the test.
    spec = spec.model_copy(update={"points": points, "cov_lifetime_s": 3})
    sim = await serve(building, ctx, spec, served)
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    async with asyncio.timeout(30):
        while sim.app.requests["SubscribeCOVRequest"] < 3:  # the first and two renewals
            sim.app.arrived.clear()
            await sim.app.arrived.wait()
    assert sim.app.requests["SubscribeCOVRequest"] == 3
    # The value is current while the subscription holds, though it may not have changed.
    first = (await driver.read())["temp"].received_s
    async with asyncio.timeout(30):
        while sim.app.requests["SubscribeCOVRequest"] < 4:
            sim.app.arrived.clear()
            await sim.app.arrived.wait()
    assert (await driver.read())["temp"].received_s > first
    await driver.close()


async def test_the_daemon_runs_the_demo_bacnet_devices(site_copy: Path, tmp_path: Path) -> None:
    """The demo site as shipped (``[sim] bacnet_port = 0`` moves the devices to free ports): the
    simulator serves the VAV box and the air handler over BACnet/IP, the daemon's device agents
    read them and write through them; at stop the demo policy (``hold``) leaves what was written
    in force. No ``[bacnet] address``: the client binds loopback, every device is simulated."""
    from buildingd.service.app import Daemon
    from buildingd.settings import Settings

    settings = Settings.model_validate(
        {"site_dir": site_copy, "state_dir": tmp_path / "state", "http": {"enabled": False},
         "mqtt": {"port": 0},
         "sim": {"start": "2027-01-11T09:00:00", "modbus_port": 0, "bacnet_port": 0}}
    )  # fmt: skip
    daemon = Daemon(settings, load_site(site_copy))
    task = asyncio.create_task(daemon.run(120))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 60)
        vav_agent = daemon.device_agents["f2-office-b-vav"]
        ahu_agent = daemon.device_agents["ahu1-bacnet"]
        async with asyncio.timeout(30):
            # Polled until set: availability is set by the agents' first good poll.
            while not (vav_agent.available and ahu_agent.available):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        driver = vav_agent.driver
        assert isinstance(driver, BacnetDriver) and daemon.building is not None
        assert driver.ctx.bacnet.address.startswith("127.0.0.1:")  # never the building's LAN
        assert driver.spec.address != "127.0.0.1:47811"  # moved to a free port
        samples = await driver.read()
        room = daemon.building.zones["f2-office-b"].temperature_c
        assert samples["zone_temp"].value == pytest.approx(room, abs=0.2)
        await driver.write("heat_sp", 23.5)
        assert daemon.building.read_point("f2-office-b", PointKind.HEATING_SETPOINT) == 23.5
    finally:
        daemon.request_stop()
        await task
    assert daemon.building.read_point("f2-office-b", PointKind.HEATING_SETPOINT) == 23.5


async def test_binary_output_written_as_active_inactive(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    spec = BacnetDevice.model_validate(
        {"id": "relay", "driver": "bacnet", "device_instance": 4001,
         "address": f"127.0.0.1:{free_udp_port()}", "timeout_s": 5, "retries": 0,
         "points": [{"id": "lights", "kind": "light_switch", "zone": ZONE,
                     "object_type": "binary-output", "instance": 1, "writable": True,
                     "limits": {"min": 0, "max": 1}}]}
    )  # fmt: skip
    sim = await serve(building, ctx, spec, served)
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    assert await driver.write("lights", 1.0) == 1.0
    assert str(sim.objects["lights"].presentValue) == "active"
    assert building.read_point(ZONE, PointKind.LIGHT_SWITCH) == 1.0
    assert await driver.write("lights", 0.0) == 0.0
    assert building.read_point(ZONE, PointKind.LIGHT_SWITCH) == 0.0
    with pytest.raises(DeviceRejectedError, match="takes 0 or 1"):
        await driver.write("lights", 0.5)  # never rounded to on or off
    assert sim.app.requests["WritePropertyRequest"] == 2


async def test_a_point_the_simulator_cannot_serve_fails_alone(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    spec = vav(free_udp_port())
    # A binary input of a quantity the simulated building does not compute: not served.
    odd = {"id": "odd", "kind": "other", "zone": ZONE, "object_type": "binary-input",
           "instance": 7}  # fmt: skip
    spec = BacnetDevice.model_validate({**spec.model_dump(), "points": [
        *[p.model_dump(exclude_none=True) for p in spec.points], odd]})  # fmt: skip
    sim = await serve(building, ctx, spec, served)
    assert "odd" not in sim.objects
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    assert set(await driver.read()) == {"temp", "humidity", "occupied", "heat_sp"}
    key = 'buildingd_bacnet_failures_total{device="vav1001",failure="error:unknown-object"}'
    assert failures(ctx, "vav1001") == {key: 1}


def modes(port: int, states: int, mode_type: str = "multi-state-value") -> BacnetDevice:
    """An air handler's operating mode (a commandable multi-state value or output) and its
    current stage (multi-state-input), ``states`` states each."""
    return BacnetDevice.model_validate(
        {"id": "ahu", "driver": "bacnet", "device_instance": 5001,
         "address": f"127.0.0.1:{port}", "timeout_s": 5, "retries": 0,
         "points": [
             {"id": "mode", "kind": "other", "object_type": mode_type, "instance": 1,
              "writable": True, "limits": {"min": 1, "max": states}},
             {"id": "stage", "kind": "other", "object_type": "multi-state-input", "instance": 2,
              "plausible": {"min": 1, "max": states}},
         ]}
    )  # fmt: skip


@pytest.mark.parametrize("mode_type", ["multi-state-value", "multi-state-output"])
async def test_multi_state_points_read_write_at_priority_and_relinquish(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice], mode_type: str
) -> None:
    port = free_udp_port()
    spec = modes(port, states=3, mode_type=mode_type)
    sim = await serve(building, ctx, spec, served)
    assert int(sim.objects["mode"].numberOfStates) == 3
    sim.objects["stage"].presentValue = 2  # the device's own state, as the equipment runs
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    values = await driver.read()
    assert (values["mode"].value, values["stage"].value) == (1.0, 2.0)  # state numbers
    assert await driver.write("mode", 3.0) == 3.0
    assert int(sim.objects["mode"].presentValue) == 3
    _present, slots = await driver.read_control(spec.points[0])
    assert slots == [None] * 7 + [3.0] + [None] * 8  # at priority 8, the device file's default
    assert (await driver.read())["mode"].value == 3.0
    assert await driver.relinquish("mode") == 1.0  # back to the relinquish default
    _present, slots = await driver.read_control(spec.points[0])
    assert slots == [None] * 16
    assert sim.app.requests["WritePropertyRequest"] == 2


async def test_multi_state_write_outside_its_states_is_refused(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    """State 4 of a 3-state object is refused by the device (value-out-of-range: the device
    file here is wrong on purpose, its limits say 5 states); state 0 or 2.5 by buildingd's
    codec, before anything is sent."""
    port = free_udp_port()
    sim = await serve(building, ctx, modes(port, states=3), served)
    spec = modes(port, states=5)
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    assert await driver.write("mode", 2.0) == 2.0
    with pytest.raises(DeviceRejectedError, match="value-out-of-range"):
        await driver.write("mode", 4.0)
    for wrong in (0.0, 2.5):
        with pytest.raises(DeviceRejectedError, match="a state number is an integer >= 1"):
            await driver.write("mode", wrong)
    assert int(sim.objects["mode"].presentValue) == 2  # unchanged by the refused writes
    assert sim.objects["mode"].priorityArray[7].unsigned == 2
    assert sim.app.requests["WritePropertyRequest"] == 2  # the codec's refusals sent nothing
    key = 'buildingd_bacnet_failures_total{device="ahu",failure="error:value-out-of-range"}'
    assert failures(ctx, "ahu") == {key: 1}


async def test_refused_writes_are_mapped_and_counted(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    """The device refuses what it cannot take: a value outside its range, a write to a sensor.
    The device files here are wrong on purpose (wider limits than the device's, a sensor marked
    writable), so the refusals come from the device, not from buildingd's own checks."""

    def one_point(device_id: str, device: int, port: int, **point: Any) -> BacnetDevice:
        return BacnetDevice.model_validate(
            {"id": device_id, "driver": "bacnet", "device_instance": device,
             "address": f"127.0.0.1:{port}", "timeout_s": 5, "retries": 0,
             "points": [{"zone": ZONE, "object_type": "analog-value", **point}]}
        )  # fmt: skip

    vav_port, sensor_port = free_udp_port(), free_udp_port()
    sim = await serve(building, ctx, vav(vav_port), served)  # heat_sp accepts 10..28
    humidity = {"id": "rh", "kind": "humidity", "instance": 9}
    await serve(building, ctx, one_point("sensor", 1002, sensor_port, **humidity), served)
    wide = one_point("wrong-limits", 1001, vav_port, id="heat_sp", kind="heating_setpoint",
                     instance=1, writable=True, limits={"min": 0, "max": 40})  # fmt: skip
    writable_rh = one_point("wrong-sensor", 1002, sensor_port, **humidity, writable=True,
                            limits={"min": 0, "max": 100})  # fmt: skip
    driver, other = BacnetDriver(wide, ctx), BacnetDriver(writable_rh, ctx)
    await driver.open()
    await other.open()
    before = building.read_point(ZONE, PointKind.HEATING_SETPOINT)
    with pytest.raises(DeviceRejectedError, match=r"error \(property\): value-out-of-range"):
        await driver.write("heat_sp", 35.0)
    assert building.read_point(ZONE, PointKind.HEATING_SETPOINT) == before  # nothing applied
    assert all(slot.null is not None for slot in sim.objects["heat_sp"].priorityArray)
    with pytest.raises(DeviceRejectedError, match="write-access-denied"):
        await other.write("rh", 50.0)
    total = "buildingd_bacnet_failures_total"
    assert failures(ctx, "wrong-limits") == {
        f'{total}{{device="wrong-limits",failure="error:value-out-of-range"}}': 1
    }
    assert failures(ctx, "wrong-sensor") == {
        f'{total}{{device="wrong-sensor",failure="error:write-access-denied"}}': 1
    }


async def test_answer_too_big_for_an_unsegmented_device_is_split_and_kept_split(
    building: Building, ctx: DriverContext, served: list[SimulatedBacnetDevice]
) -> None:
    port = free_udp_port()
    # The device takes 50-octet APDUs and cannot segment; its device file wrongly says it can.
    sim = await serve(building, ctx, vav(port, reads={"max_apdu": 50}), served)
    spec = vav(port, reads={"segmentation": "segmented-both"})
    driver = BacnetDriver(spec, ctx)
    await driver.open()
    assert len(driver.plan) == 1
    assert set(await driver.read()) == {"temp", "humidity", "occupied", "heat_sp"}
    assert len(driver.plan) > 1  # split where the device refused, and kept
    sim.app.requests.clear()
    assert set(await driver.read()) == {"temp", "humidity", "occupied", "heat_sp"}
    assert sim.app.requests["ReadPropertyMultipleRequest"] == len(driver.plan)
    assert any("segmentation-not-supported" in key for key in failures(ctx, spec.id))
