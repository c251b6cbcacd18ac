"""The BLE driver on real bleak against the BlueZ stand-in (tests/bluez.py): advertisement
sensors of every format, de-duplication, bad packets, silence, adapter power, GATT read, write,
notify and reconnect; and a zone driven by a BLE sensor and a BLE dimmer in the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest

from buildingd.clock import SystemClock
from buildingd.config.ble import BleDevice
from buildingd.config.loader import load_site
from buildingd.drivers.base import DriverContext, create_driver
from buildingd.drivers.ble import BleAdvertisementDriver, BleGattDriver
from buildingd.errors import DeviceRejectedError, DeviceUnavailableError
from buildingd.metrics import Metrics
from buildingd.points import Sample
from buildingd.service.app import Daemon
from buildingd.settings import Settings
from tests.bluez import FakeBlueZ, bluez_fixture  # noqa: F401  (the fixture is named bluez)
from tests.conftest import one_room_site, until

pytestmark = pytest.mark.ble

BTHOME = "fcd2"
XIAOMI = "181a"
RUUVI = 0x0499
# RuuviTag RAWv2 "valid data" vector of the format's documentation
# (docs.ruuvi.com, data format 5): 24.3 degC, 53.49 %RH, 100044 Pa, 2977 mV, sequence 205.
RUUVI_VALID = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
SENSOR, RUUVI_TAG, ATC, DIMMER = (
    "A4:C1:38:00:00:01",
    "C8:25:2D:00:00:02",
    "A4:C1:38:00:00:03",
    "D0:00:00:00:00:04",
)
LEVEL_CHAR = "0000ff01-0000-1000-8000-00805f9b34fb"


def bthome(packet_id: int, temperature_c: float, *extra: int) -> bytes:
    """BTHome v2 service data: device info 0x40 (v2, unencrypted), packet id, temperature."""
    return (
        bytes([0x40, 0x00, packet_id, 0x02])
        + struct.pack("<h", round(temperature_c * 100))
        + (bytes(extra))
    )


def pvvx(temperature_c: float, humidity_pct: float, counter: int) -> bytes:
    """pvvx custom format: MAC LSB first, int16 0.01 degC, uint16 0.01 %, mV, %, counter, flags."""
    mac = bytes.fromhex(ATC.replace(":", ""))[::-1]
    temp, hum = round(temperature_c * 100), round(humidity_pct * 100)
    return mac + struct.pack("<hHHBBB", temp, hum, 2950, 87, counter, 0)


def device(format_name: str, points: list[dict[str, Any]], **kw: Any) -> BleDevice:
    spec = {"id": f"{format_name}-dev", "driver": "ble", "format": format_name, "points": points}
    return BleDevice.model_validate(spec | kw)


def context(scanning: Literal["auto", "active", "passive"] = "active") -> DriverContext:
    return DriverContext(clock=SystemClock(), metrics=Metrics(), ble_scanning=scanning)


def thermometer(**kw: Any) -> BleDevice:
    return device("bthome", [{"id": "t", "kind": "temperature"}], id="th", address=SENSOR, **kw)


@contextlib.asynccontextmanager
async def opened(spec: BleDevice, ctx: DriverContext) -> AsyncIterator[Any]:
    """The device's driver, opened; closed with the shared scanner afterwards."""
    driver = create_driver(spec, ctx)
    try:
        await driver.open()
        yield driver
    finally:
        await driver.close()
        await ctx.resources.close_all()


def bad_payloads(ctx: DriverContext, device_id: str) -> float:
    assert ctx.metrics is not None
    return ctx.metrics.counters.get(f'buildingd_bad_payloads_total{{device="{device_id}"}}', 0)


async def values(driver: Any) -> dict[str, float]:
    samples: Mapping[str, Sample] = await driver.read()
    return {k: s.value for k, s in samples.items()}


async def read_when(driver: Any, wanted: dict[str, float], timeout_s: float = 10.0) -> None:
    """Poll the driver (as its device agent does) until it returns ``wanted``."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                got = await values(driver)
            except DeviceUnavailableError:
                got = {}
            if all(got.get(k) == pytest.approx(v) for k, v in wanted.items()):
                return
            await asyncio.sleep(0.1)


async def test_each_advertisement_format_becomes_readings(bluez: FakeBlueZ) -> None:
    bluez.add_adapter("hci0")
    ctx = context()
    th = create_driver(
        device("bthome", [{"id": "t", "kind": "temperature"}], id="th", address=SENSOR), ctx
    )
    tag = create_driver(
        device(
            "ruuvi",
            [
                {"id": "t", "kind": "temperature"},
                {"id": "rh", "kind": "humidity"},
                {"id": "p", "kind": "other", "field": "pressure_pa", "scale": 0.01},  # hPa
            ],
            id="tag",
            address=RUUVI_TAG.lower(),  # addresses match whatever their case
        ),
        ctx,
    )
    atc = create_driver(
        device("xiaomi", [{"id": "rh", "kind": "humidity"}], id="atc", name_pattern="ATC_.*"), ctx
    )
    assert isinstance(th, BleAdvertisementDriver) and isinstance(atc, BleAdvertisementDriver)
    try:
        for driver in (th, tag, atc):
            await driver.open()
        # One scanner serves the adapter, whatever the number of devices on it.
        assert th.scanner is tag.scanner is atc.scanner  # type: ignore[attr-defined]
        bluez.add_device("hci0", SENSOR, "SBHT-003C", service_data={BTHOME: bthome(1, 21.5)})
        bluez.add_device("hci0", RUUVI_TAG, "Ruuvi 884F", manufacturer_data={RUUVI: RUUVI_VALID})
        bluez.add_device("hci0", ATC, "ATC_000003", service_data={XIAOMI: pvvx(22.25, 41.5, 7)})
        await read_when(th, {"t": 21.5})
        await read_when(tag, {"t": 24.3, "rh": 53.49, "p": 1000.44})
        await read_when(atc, {"rh": 41.5})
        assert bad_payloads(ctx, "th") == bad_payloads(ctx, "tag") == 0
    finally:
        for driver in (th, tag, atc):
            await driver.close()
        await ctx.resources.close_all()


async def test_a_packet_id_seen_again_is_the_same_measurement(bluez: FakeBlueZ) -> None:
    bluez.add_adapter("hci0")
    async with opened(thermometer(), context()) as th:
        assert isinstance(th, BleAdvertisementDriver)
        bluez.add_device("hci0", SENSOR, "th", service_data={BTHOME: bthome(9, 20.0)})
        await read_when(th, {"t": 20.0})
        # Same packet id, other bytes: a resend, not a new measurement (and not a jump to 30).
        bluez.advertise("hci0", SENSOR, service_data={BTHOME: bthome(9, 30.0)})
        await until(lambda: th.duplicates >= 1, "a duplicate advertisement seen")
        assert await values(th) == {"t": 20.0}
        bluez.advertise("hci0", SENSOR, service_data={BTHOME: bthome(10, 20.5)})
        await read_when(th, {"t": 20.5})


@pytest.mark.parametrize(
    ("payload", "logged"),
    [
        (RUUVI_VALID[:10], "RAWv2 needs 24 bytes, got 10"),  # truncated
        (bytes([3]) + RUUVI_VALID[1:], "data format 3"),  # an older format version
    ],
)
async def test_bad_advertisements_are_logged_counted_and_lose_nothing(
    bluez: FakeBlueZ, caplog: pytest.LogCaptureFixture, payload: bytes, logged: str
) -> None:
    bluez.add_adapter("hci0")
    ctx = context()
    tag = create_driver(
        device("ruuvi", [{"id": "t", "kind": "temperature"}], id="tag", address=RUUVI_TAG), ctx
    )
    try:
        await tag.open()
        bluez.add_device("hci0", RUUVI_TAG, "Ruuvi", manufacturer_data={RUUVI: RUUVI_VALID})
        await read_when(tag, {"t": 24.3})
        with caplog.at_level(logging.WARNING, logger="buildingd.drivers.ble"):
            bluez.advertise("hci0", RUUVI_TAG, manufacturer_data={RUUVI: payload})
            await until(lambda: bad_payloads(ctx, "tag") >= 1, "the tag's bad payload counted")
        assert f"device tag: {RUUVI_TAG}: ruuvi: {logged}" in caplog.text
        assert await values(tag) == {"t": 24.3}  # the last good value stays
        newer = bytearray(RUUVI_VALID)
        newer[1:3], newer[16:18] = b"\x13\x00", b"\x00\xce"  # 24.32 degC, sequence 206
        oversized = bytes(newer) + b"\x00" * 40
        before = bad_payloads(ctx, "tag")  # every bad advertisement heard counts
        bluez.advertise("hci0", RUUVI_TAG, manufacturer_data={RUUVI: oversized})
        await read_when(tag, {"t": 24.32})  # decoded, and the trailing bytes counted
        assert bad_payloads(ctx, "tag") > before
        assert "bytes after the 24-byte RAWv2 payload ignored" in caplog.text
    finally:
        await tag.close()
        await ctx.resources.close_all()


async def test_encrypted_bthome_and_unknown_addresses(
    bluez: FakeBlueZ, caplog: pytest.LogCaptureFixture
) -> None:
    bluez.add_adapter("hci0")
    ctx = context()
    th = create_driver(
        device(
            "bthome",
            [{"id": "t", "kind": "temperature"}],
            id="th",
            address=SENSOR,
            stale_after_s=1.5,
        ),
        ctx,
    )
    try:
        with caplog.at_level(logging.INFO, logger="buildingd.drivers.ble"):
            await th.open()
            encrypted = bytes([0x41]) + bytes(12)  # bit 0: encrypted, no key configured
            bluez.add_device("hci0", SENSOR, "th", service_data={BTHOME: encrypted})
            stranger = "A4:C1:38:99:99:99"
            bluez.add_device("hci0", stranger, "other", service_data={BTHOME: bthome(1, 19.0)})
            await until(lambda: bad_payloads(ctx, "th") >= 1, "the sensor's bad payload counted")
            await until(lambda: "is in no device file" in caplog.text, "the unknown device logged")
            assert "unsupported: encrypted (no key configured)" in caplog.text
            assert f"bthome sensor {stranger} (other) is in no device file" in caplog.text
            assert await values(th) == {}
            # Heard, but never a usable value: present and not stale. Gone: unavailable.
            bluez.remove_device("hci0", SENSOR)
            await asyncio.sleep(2.0)
            with pytest.raises(DeviceUnavailableError, match=f"no advertisement from {SENSOR}"):
                await th.read()
        # The stranger was logged once however often it advertised.
        assert caplog.text.count("is in no device file") == 1
    finally:
        await th.close()
        await ctx.resources.close_all()


async def test_a_device_that_goes_away_and_comes_back(bluez: FakeBlueZ) -> None:
    bluez.add_adapter("hci0")
    async with opened(thermometer(stale_after_s=1.0), context()) as th:
        bluez.add_device("hci0", SENSOR, "th", service_data={BTHOME: bthome(1, 21.0)})
        await read_when(th, {"t": 21.0})
        bluez.remove_device("hci0", SENSOR)
        await asyncio.sleep(1.5)
        with pytest.raises(DeviceUnavailableError):
            await th.read()
        bluez.add_device("hci0", SENSOR, "th", service_data={BTHOME: bthome(2, 21.5)})
        await read_when(th, {"t": 21.5})


async def test_adapter_powered_off_and_on(bluez: FakeBlueZ) -> None:
    bluez.add_adapter("hci0")
    async with opened(thermometer(stale_after_s=1.0), context()) as th:
        bluez.add_device("hci0", SENSOR, "th", service_data={BTHOME: bthome(1, 21.0)})
        await read_when(th, {"t": 21.0})
        bluez.set_powered("hci0", False)
        # Silent past the stale timeout: the scan is restarted, which a powered-off adapter
        # refuses, so the device is unavailable with the adapter named as the cause.
        await asyncio.sleep(1.5)
        with pytest.raises(DeviceUnavailableError, match="adapter hci0 cannot scan"):
            await th.read()
        bluez.set_powered("hci0", True)
        bluez.advertise("hci0", SENSOR, service_data={BTHOME: bthome(2, 22.0)})
        await read_when(th, {"t": 22.0}, timeout_s=15)  # after the scanner's backoff


async def test_auto_scanning_falls_back_to_active_when_passive_hears_nothing(
    bluez: FakeBlueZ,
) -> None:
    # The stand-in registers advertisement monitors but never feeds them (as a BlueZ whose
    # controller cannot filter): a silent passive scan must give way to an active one.
    bluez.add_adapter("hci0")
    async with opened(thermometer(stale_after_s=1.0), context("auto")) as th:
        bluez.add_device("hci0", SENSOR, "th", service_data={BTHOME: bthome(1, 21.0)})
        await read_when(th, {"t": 21.0}, timeout_s=15)


def gatt_dimmer(bluez: FakeBlueZ) -> BleDevice:
    bluez.add_adapter("hci0")
    bluez.add_device("hci0", DIMMER, "dimmer")
    bluez.add_gatt_characteristic("hci0", DIMMER, "ff00", LEVEL_CHAR, b"\x00")
    bluez.add_gatt_characteristic("hci0", DIMMER, "181a", "2a6e", struct.pack("<h", 2150))
    return device(
        "gatt",
        [
            {
                "id": "level",
                "kind": "light_level",
                "characteristic": LEVEL_CHAR,
                "type": "uint8",
                "notify": True,
                "writable": True,
                "limits": {"min": 0, "max": 100},
            },
            {
                "id": "t",
                "kind": "temperature",
                "characteristic": "2a6e",
                "type": "int16",
                "scale": 0.01,
            },
            {
                "id": "rh",
                "kind": "humidity",
                "characteristic": "2a6f",
                "type": "uint16",
                "scale": 0.01,
            },
        ],  # fmt: skip
        id="dimmer",
        address=DIMMER,
    )


async def test_gatt_read_write_notify_and_reconnect(
    bluez: FakeBlueZ, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = context()
    dimmer = create_driver(gatt_dimmer(bluez), ctx)
    assert isinstance(dimmer, BleGattDriver)
    try:
        with caplog.at_level(logging.WARNING, logger="buildingd.drivers.ble"):
            await dimmer.open()
        # The missing humidity characteristic is logged and counted once; the rest works.
        assert "dimmer.rh: characteristic 00002a6f-" in caplog.text
        assert bad_payloads(ctx, "dimmer") == 1
        assert await values(dimmer) == {"t": 21.5, "level": 0.0}  # read once, then notified
        assert await dimmer.write("level", 40) == 40.0  # written with response, read back
        assert bluez.characteristic_value("hci0", DIMMER, LEVEL_CHAR) == b"\x28"
        # Someone dims at the wall: the notification is the new value.
        assert bluez.notify("hci0", DIMMER, LEVEL_CHAR, b"\x32")
        await asyncio.wait_for(dimmer.wait_update(), 5)
        assert await values(dimmer) == {"t": 21.5, "level": 50.0}
        # The link drops: the next poll reconnects and subscribes again.
        connections = bluez.bus_connections()  # bleak's manager and the client's own
        bluez.disconnect("hci0", DIMMER)
        await until(
            lambda: dimmer.client is not None and not dimmer.client.is_connected,
            "the dimmer disconnected",
        )
        assert (await values(dimmer))["t"] == 21.5
        assert dimmer.connects == 2
        assert bluez.bus_connections() == connections  # the dropped client's was closed
        assert bluez.notify("hci0", DIMMER, LEVEL_CHAR, b"\x0a")
        await asyncio.wait_for(dimmer.wait_update(), 5)
        assert (await values(dimmer))["level"] == 10.0
        with pytest.raises(DeviceRejectedError, match="outside the range of uint8"):
            await dimmer.write("level", 300)
        assert bad_payloads(ctx, "dimmer") == 1
    finally:
        await dimmer.close()
        await ctx.resources.close_all()


async def test_a_gatt_device_out_of_range_is_unavailable_not_a_crash(bluez: FakeBlueZ) -> None:
    bluez.add_adapter("hci0")
    ctx = context()
    spec = device(
        "gatt",
        [{"id": "t", "kind": "temperature", "characteristic": "2a6e", "type": "int16"}],
        id="far",
        address="D0:00:00:00:00:99",
    )
    far = create_driver(spec, ctx)
    try:
        with pytest.raises(DeviceUnavailableError, match="not seen by adapter hci0"):
            await far.open()
        with pytest.raises(DeviceUnavailableError):
            await far.read()
    finally:
        await far.close()
        await ctx.resources.close_all()


DEVICES = f"""\
devices:
  - id: room-sensor
    driver: ble
    format: bthome
    address: "{SENSOR}"
    poll_interval_s: 1
    points:
      - {{id: t, zone: room, kind: temperature}}
      - {{id: occupancy, zone: room, kind: occupancy}}
      - {{id: lux, zone: room, kind: illuminance}}
  - id: room-dimmer
    driver: ble
    format: gatt
    address: "{DIMMER}"
    poll_interval_s: 5
    points:
      - {{id: level, zone: room, kind: light_level, characteristic: "{LEVEL_CHAR}", type: uint8,
         notify: true, writable: true, limits: {{min: 0, max: 100}}}}
"""


async def test_a_ble_sensor_and_dimmer_drive_a_zone_in_the_daemon(
    bluez: FakeBlueZ, tmp_path: Path
) -> None:
    root = one_room_site(tmp_path / "site", "ble", DEVICES)
    site = load_site(root)
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "site_dir": root,
            "http": {"enabled": False},
            "ble": {"scanning": "active"},
        }
    )
    gatt_dimmer(bluez)
    bluez.add_device("hci0", SENSOR, "room", service_data={BTHOME: bthome(1, 20.5)})
    daemon = Daemon(settings, site)
    task = asyncio.create_task(daemon.run(60))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 20)
        # Someone walks into a dark room: BTHome occupancy (0x23) and illuminance (0x05).
        occupied_dark = bthome(2, 20.5, 0x23, 0x01, 0x05, 0x10, 0x27, 0x00)  # 100.00 lx
        bluez.advertise("hci0", SENSOR, service_data={BTHOME: occupied_dark})
        zone = daemon.zone_agents["room"]
        await until(lambda: zone.inputs().occupied is True, "the zone occupied")
        assert zone.inputs().illuminance_lux == pytest.approx(100.0)
        assert zone.inputs().temperature_c == pytest.approx(20.5)
        await until(
            lambda: bluez.characteristic_value("hci0", DIMMER, LEVEL_CHAR) != b"\x00",
            "the dimmer level written",
        )
        assert daemon.device_agents["room-dimmer"].available
    finally:
        daemon.request_stop()
        await task
    level = bluez.characteristic_value("hci0", DIMMER, LEVEL_CHAR)[0]
    assert 0 < level <= 100  # lights on for the occupant, inside the device's limits
