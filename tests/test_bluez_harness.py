"""Real bleak (BlueZ D-Bus backend) against the BlueZ stand-in in tests/bluez.py: advertisements,
GATT read/write/notify, disconnects and reconnects, adapter power, device removal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)
from bleak_retry_connector import establish_connection

import tests.bluez
from tests.bluez import FakeBlueZ, bluez_fixture  # noqa: F401  (the fixture is named bluez)

pytestmark = pytest.mark.ble

ADDR = "C0:FF:EE:00:00:01"
ATC_SERVICE = "0000181a-0000-1000-8000-00805f9b34fb"  # environmental sensing, as atc1441 uses
BTHOME = "0000fcd2-0000-1000-8000-00805f9b34fb"
TEMP_CHAR = "00002a6e-0000-1000-8000-00805f9b34fb"
RUUVI = 0x0499


class Adverts:
    """Scanner callback that lets a test wait for the advertisement it expects."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[BLEDevice, AdvertisementData]] = asyncio.Queue()

    def __call__(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self.queue.put_nowait((device, adv))

    async def first(self, address: str, mfr: bytes | None = None) -> AdvertisementData:
        """The first advertisement from ``address`` (with Ruuvi manufacturer data ``mfr``)."""
        while True:
            device, adv = await self.queue.get()
            if device.address == address and mfr in (None, adv.manufacturer_data.get(RUUVI)):
                return adv


async def eventually(condition: Callable[[], bool]) -> None:
    """Polls state that no callback reports (bleak's scanner cache, the bus daemon's clients);
    the caller's asyncio.timeout bounds it."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def sensor(bluez: FakeBlueZ) -> None:
    bluez.add_adapter("hci0")
    bluez.add_device("hci0", ADDR, "ruuvi", manufacturer_data={RUUVI: b"\x05\x01"})
    bluez.add_gatt_characteristic("hci0", ADDR, ATC_SERVICE, TEMP_CHAR, b"\x10\x00")


async def test_scanner_sees_first_advertisement_and_the_next(bluez: FakeBlueZ) -> None:
    bluez.add_adapter("hci0")
    adverts = Adverts()
    async with asyncio.timeout(5), BleakScanner(adverts, bluez={"adapter": "hci0"}):
        bluez.add_device(
            "hci0",
            ADDR,
            "ruuvi",
            rssi=-71,
            manufacturer_data={RUUVI: b"\x05\x01\x02"},
            service_data={"fcd2": b"\x40\x02\xc4\x09"},
            service_uuids=["fcd2"],
        )
        # the device's very first advertisement (InterfacesAdded) carries its data
        first = await adverts.first(ADDR)
        assert first.manufacturer_data == {RUUVI: b"\x05\x01\x02"}
        assert first.service_data == {BTHOME: b"\x40\x02\xc4\x09"}
        assert (first.local_name, first.rssi, first.service_uuids) == ("ruuvi", -71, [BTHOME])

        bluez.advertise("hci0", ADDR, manufacturer_data={RUUVI: b"\x05\x07"}, rssi=-50)
        second = await adverts.first(ADDR, mfr=b"\x05\x07")
        assert (second.rssi, second.service_data) == (-50, {BTHOME: b"\x40\x02\xc4\x09"})


async def test_known_device_is_found_when_scanning_starts(bluez: FakeBlueZ) -> None:
    sensor(bluez)
    async with asyncio.timeout(5):
        device = await BleakScanner.find_device_by_address(
            ADDR, timeout=3, bluez={"adapter": "hci0"}
        )
    assert device is not None
    assert device.name == "ruuvi"


async def test_gatt_read_write_notify(bluez: FakeBlueZ) -> None:
    sensor(bluez)
    notified: asyncio.Queue[bytearray] = asyncio.Queue()
    async with (
        asyncio.timeout(5),
        BleakClient(ADDR, timeout=3, bluez={"adapter": "hci0"}) as client,
    ):
        assert bluez.is_connected("hci0", ADDR)
        assert await client.read_gatt_char(TEMP_CHAR) == b"\x10\x00"

        await client.write_gatt_char(TEMP_CHAR, b"\x01\x02", response=True)
        assert bluez.characteristic_value("hci0", ADDR, TEMP_CHAR) == b"\x01\x02"

        await client.start_notify(TEMP_CHAR, lambda _char, data: notified.put_nowait(data))
        assert bluez.notify("hci0", ADDR, TEMP_CHAR, b"\xfe\x07")
        assert await notified.get() == b"\xfe\x07"

        await client.stop_notify(TEMP_CHAR)
        assert not bluez.notify("hci0", ADDR, TEMP_CHAR, b"\x00\x00")
    assert not bluez.is_connected("hci0", ADDR)


async def test_gatt_errors_are_bluez_errors(bluez: FakeBlueZ) -> None:
    bluez.add_adapter("hci0")
    bluez.add_device("hci0", ADDR, "ruuvi")
    bluez.add_gatt_characteristic("hci0", ADDR, ATC_SERVICE, "2a6f", flags=["write"])
    async with (
        asyncio.timeout(5),
        BleakClient(ADDR, timeout=3, bluez={"adapter": "hci0"}) as client,
    ):
        with pytest.raises(BleakGATTProtocolError) as read:
            await client.read_gatt_char("2a6f")
        assert read.value.code is BleakGATTProtocolErrorCode.READ_NOT_PERMITTED
        with pytest.raises(BleakDBusError, match=r"org\.bluez\.Error\.NotSupported"):
            await client.start_notify("2a6f", lambda _char, _data: None)


async def test_establish_connection_with_retry_connector(bluez: FakeBlueZ) -> None:
    sensor(bluez)
    async with asyncio.timeout(5):
        device = await BleakScanner.find_device_by_address(
            ADDR, timeout=3, bluez={"adapter": "hci0"}
        )
        assert device is not None
        client = await establish_connection(BleakClient, device, "ruuvi", max_attempts=1)
        try:
            assert await client.read_gatt_char(TEMP_CHAR) == b"\x10\x00"
        finally:
            await client.disconnect()


async def test_remote_disconnect_calls_back_and_reconnect_works(bluez: FakeBlueZ) -> None:
    sensor(bluez)
    dropped = asyncio.Event()
    client = BleakClient(ADDR, lambda _client: dropped.set(), timeout=3, bluez={"adapter": "hci0"})
    async with asyncio.timeout(5):
        await client.connect()
        assert bluez.bus_connections() == 2  # bleak's manager, the client's own connection
        bluez.disconnect("hci0", ADDR)
        await dropped.wait()
        assert not client.is_connected

        # bleak 3.1 keeps the client's D-Bus connection after a device-side disconnect and
        # would leak it on reconnect; disconnect() releases it
        await client.disconnect()
        await eventually(lambda: bluez.bus_connections() == 1)

        await client.connect()
        try:
            assert bluez.is_connected("hci0", ADDR)
            assert await client.read_gatt_char(TEMP_CHAR) == b"\x10\x00"
        finally:
            await client.disconnect()


async def test_powered_off_adapter_fails_scans_and_drops_links(bluez: FakeBlueZ) -> None:
    sensor(bluez)
    dropped = asyncio.Event()
    async with asyncio.timeout(5):
        client = BleakClient(
            ADDR, lambda _client: dropped.set(), timeout=3, bluez={"adapter": "hci0"}
        )
        await client.connect()
        scanner = BleakScanner(bluez={"adapter": "hci0"})
        await scanner.start()

        bluez.set_powered("hci0", False)
        await dropped.wait()
        await client.disconnect()  # releases the D-Bus connection bleak keeps after a drop
        # bleak ignores NotReady from StopDiscovery, so stopping a scan on a dead adapter is clean
        await scanner.stop()

        with pytest.raises(BleakDBusError) as named:
            await BleakScanner(bluez={"adapter": "hci0"}).start()
        assert named.value.dbus_error == "org.bluez.Error.NotReady"
        assert str(named.value) == "[org.bluez.Error.NotReady] Resource Not Ready"
        # without an adapter name bleak looks for a powered one itself
        with pytest.raises(BleakBluetoothNotAvailableError, match="No powered Bluetooth adapters"):
            await BleakScanner().start()
        with pytest.raises(BleakDBusError, match="NotReady"):
            await client.connect()

        bluez.set_powered("hci0", True)
        adverts = Adverts()
        async with BleakScanner(adverts, bluez={"adapter": "hci0"}):
            assert (await adverts.first(ADDR)).manufacturer_data == {RUUVI: b"\x05\x01"}


async def test_removed_device_is_forgotten_and_can_come_back(bluez: FakeBlueZ) -> None:
    sensor(bluez)
    adverts = Adverts()
    async with asyncio.timeout(5):
        async with BleakScanner(adverts, bluez={"adapter": "hci0"}) as scanner:
            device = (await adverts.queue.get())[0]
            bluez.remove_device("hci0", ADDR)
            # bleak drops it from the scanner as soon as InterfacesRemoved arrives
            await eventually(lambda: not scanner.discovered_devices)

            bluez.add_device("hci0", ADDR, "ruuvi", manufacturer_data={RUUVI: b"\x05\x09"})
            await adverts.first(ADDR, mfr=b"\x05\x09")
            assert [d.address for d in scanner.discovered_devices] == [ADDR]

        # a BLEDevice names a D-Bus path, so one from before the removal works again
        bluez.add_gatt_characteristic("hci0", ADDR, ATC_SERVICE, TEMP_CHAR, b"\x11\x00")
        async with BleakClient(device, timeout=3) as client:
            assert await client.read_gatt_char(TEMP_CHAR) == b"\x11\x00"

        bluez.remove_device("hci0", ADDR)
        with pytest.raises(BleakDeviceNotFoundError):
            await BleakClient(ADDR, timeout=0.5, bluez={"adapter": "hci0"}).connect()
        # with the stale BLEDevice bleak fails before calling BlueZ
        with pytest.raises(BleakError, match="not found"):
            await BleakClient(device, timeout=0.5).connect()


async def test_passive_scanning_registers_a_monitor(bluez: FakeBlueZ) -> None:
    # The stand-in accepts the advertisement monitor but does not apply its patterns: every
    # advertisement on the adapter reaches the callback, as bleak routes them by adapter.
    sensor(bluez)
    adverts = Adverts()
    pattern = OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x99\x04")
    args: BlueZScannerArgs = {"adapter": "hci0", "or_patterns": [pattern]}
    async with asyncio.timeout(5), BleakScanner(adverts, scanning_mode="passive", bluez=args):
        bluez.advertise("hci0", ADDR, manufacturer_data={RUUVI: b"\x05\x03"})
        assert (await adverts.first(ADDR, mfr=b"\x05\x03")).local_name == "ruuvi"
    assert "RegisterMonitor" in bluez.mock_log()
    assert "UnregisterMonitor" in bluez.mock_log()


def test_harness_that_cannot_start_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "broken_template.py"
    broken.write_text('raise ImportError("template is broken")\n')
    monkeypatch.setattr(tests.bluez, "TEMPLATE", broken)
    harness = FakeBlueZ()
    with pytest.raises(RuntimeError, match="template is broken"):
        harness.start()
    harness.stop()
