"""A BlueZ stand-in for tests that run real bleak: a private dbus-daemon on a unix socket in a
temporary directory, and python-dbusmock serving ``org.bluez`` on it with tests/bluez_template.py.
The real system bus is never touched: bleak is pointed at the private bus through
``DBUS_SYSTEM_BUS_ADDRESS`` (the ``bluez`` fixture sets it with monkeypatch).

Use it from a test module::

    from tests.bluez import FakeBlueZ, bluez_fixture  # noqa: F401  (the fixture is ``bluez``)

    async def test_something(bluez: FakeBlueZ) -> None:
        bluez.add_adapter("hci0")
        bluez.add_device("hci0", "C0:FF:EE:00:00:01", "sensor", manufacturer_data={0x0499: b".."})
        ...  # real bleak code

Calls are synchronous dbus-python calls to the mock; bleak sees their effects as the D-Bus
signals bluetoothd would send (InterfacesAdded/Removed, PropertiesChanged). A harness that cannot
start raises RuntimeError: tests fail, they never skip.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dbus
import dbus.bus
import pytest
from bleak.uuids import normalize_uuid_str

TEMPLATE = Path(__file__).with_name("bluez_template.py")
MOCK_IFACE = "org.bluez.Mock"
START_TIMEOUT = 10.0

# Everyone on this private bus may own and talk to anything: it only carries the test's traffic.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class FakeBlueZ:
    """dbus-daemon + dbusmock BlueZ; ``address`` is the value for DBUS_SYSTEM_BUS_ADDRESS."""

    def __init__(self, advertising_interval: float = 0.1) -> None:
        # how often unconnected devices re-advertise while an adapter discovers (0: never)
        self.advertising_interval = advertising_interval
        self.address = ""
        self._dir: Path | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._mock: subprocess.Popen[bytes] | None = None
        self._bus: dbus.bus.BusConnection | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        daemon = shutil.which("dbus-daemon", path=f"{os.environ.get('PATH', '')}:/usr/bin")
        if daemon is None:
            raise RuntimeError("dbus-daemon is not installed: run `make test` (it installs dbus)")
        # a short path: unix socket paths are limited to 108 bytes, pytest's tmp_path is long
        self._dir = Path(tempfile.mkdtemp(prefix="fakebluez-"))
        config = self._dir / "bus.conf"
        config.write_text(BUS_CONFIG.format(socket=self._dir / "bus"))
        try:
            self._start_daemon(daemon, config)
            self._start_mock()
        except BaseException:
            self.stop()
            raise

    def _start_daemon(self, daemon: str, config: Path) -> None:
        assert self._dir is not None
        with (self._dir / "dbus-daemon.err").open("wb") as err:
            self._daemon = subprocess.Popen(
                [daemon, "--nofork", "--nopidfile", f"--config-file={config}", "--print-address=1"],
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self._daemon.stdout is not None
        ready, _, _ = select.select([self._daemon.stdout], [], [], START_TIMEOUT)
        line = self._daemon.stdout.readline().decode().strip() if ready else ""
        if not line:
            self._daemon.kill()
            self._daemon.wait()
            raise RuntimeError(f"dbus-daemon did not start: {self._stderr('dbus-daemon.err')}")
        self.address = line

    def _start_mock(self) -> None:
        assert self._dir is not None
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}
        args = ["--template", str(TEMPLATE), "--logfile", str(self._dir / "mock.log")]
        args += ["--parameters", json.dumps({"advertising_interval": self.advertising_interval})]
        with (self._dir / "dbusmock.err").open("wb") as err:
            self._mock = subprocess.Popen(
                [sys.executable, "-m", "dbusmock", "--system", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self._bus = dbus.bus.BusConnection(self.address)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._bus.name_has_owner("org.bluez"):
            if self._mock.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"dbusmock BlueZ did not start (exit {self._mock.poll()}): "
                    f"{self._stderr('dbusmock.err')}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None
        for proc in (self._mock, self._daemon):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._daemon is not None and self._daemon.stdout is not None:
            self._daemon.stdout.close()
        self._mock = self._daemon = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> FakeBlueZ:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stderr(self, name: str) -> str:
        assert self._dir is not None
        path = self._dir / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def mock_log(self) -> str:
        """Every call the mock served, for debugging a failing test."""
        return self._stderr("mock.log")

    def bus_connections(self) -> int:
        """Clients connected to the private bus besides the mock and this harness: bleak holds
        one for its BlueZ manager and one per connected BleakClient."""
        if self._bus is None:
            raise RuntimeError("FakeBlueZ is not started")
        names = [str(n) for n in self._bus.list_names() if str(n).startswith(":")]
        return len(names) - 2

    def _call(self, method: str, signature: str, *args: Any) -> Any:
        if self._bus is None:
            raise RuntimeError("FakeBlueZ is not started")
        return self._bus.call_blocking(
            "org.bluez", "/", MOCK_IFACE, method, signature, args, timeout=5, byte_arrays=True
        )

    # --- adapters and advertisements -----------------------------------------------------------

    def add_adapter(
        self, name: str = "hci0", address: str = "00:1A:7D:DA:71:01", powered: bool = True
    ) -> str:
        """Adds ``/org/bluez/<name>`` (InterfacesAdded); returns its object path."""
        return str(self._call("AddAdapter", "ssb", name, address, powered))

    def set_powered(self, adapter: str, powered: bool) -> None:
        """Powers the adapter off (discovery ends, connected devices disconnect, StartDiscovery and
        Connect fail with org.bluez.Error.NotReady) or on again."""
        self._call("SetAdapterPowered", "sb", adapter, powered)

    def add_device(
        self,
        adapter: str,
        address: str,
        name: str | None = None,
        *,
        rssi: int = -60,
        manufacturer_data: Mapping[int, bytes] | None = None,
        service_data: Mapping[str, bytes] | None = None,
        service_uuids: Iterable[str] | None = None,
        tx_power: int | None = None,
    ) -> str:
        """A device heard for the first time: its first advertisement (InterfacesAdded)."""
        adv = _advertisement(name, rssi, manufacturer_data, service_data, service_uuids, tx_power)
        return str(self._call("AddDevice", "ssa{sv}", adapter, address, adv))

    def advertise(
        self,
        adapter: str,
        address: str,
        *,
        rssi: int | None = None,
        manufacturer_data: Mapping[int, bytes] | None = None,
        service_data: Mapping[str, bytes] | None = None,
        name: str | None = None,
        service_uuids: Iterable[str] | None = None,
    ) -> None:
        """A new advertisement from a known device (PropertiesChanged with the given fields; fields
        left None keep their value). An empty call still reaches scanner callbacks."""
        adv = _advertisement(name, rssi, manufacturer_data, service_data, service_uuids, None)
        self._call("Advertise", "ssa{sv}", adapter, address, adv)

    def remove_device(self, adapter: str, address: str) -> None:
        """The device goes away: disconnected if connected, then InterfacesRemoved for its GATT
        objects and itself. ``add_device`` may add it again."""
        self._call("DeleteDevice", "ss", adapter, address)

    def disconnect(self, adapter: str, address: str) -> None:
        """The device drops the link (ServicesResolved and Connected become False)."""
        self._call("DropConnection", "ss", adapter, address)

    def is_connected(self, adapter: str, address: str) -> bool:
        path = f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"
        if self._bus is None:
            raise RuntimeError("FakeBlueZ is not started")
        value = self._bus.call_blocking(
            "org.bluez",
            path,
            dbus.PROPERTIES_IFACE,
            "Get",
            "ss",
            ("org.bluez.Device1", "Connected"),
        )
        return bool(value)

    # --- GATT ----------------------------------------------------------------------------------

    def add_gatt_characteristic(
        self,
        adapter: str,
        device_address: str,
        service_uuid: str,
        char_uuid: str,
        value: bytes = b"",
        flags: Iterable[str] = ("read", "write", "notify"),
    ) -> str:
        """Adds the characteristic (and its primary service, once); returns the characteristic's
        object path. Add them before bleak connects: bleak reads the GATT tree once per connect.
        UUIDs may be 16-bit ("2a6e") or 128-bit; char UUIDs must be unique per device."""
        return str(
            self._call(
                "AddGattCharacteristic",
                "ssssayas",
                adapter,
                device_address,
                normalize_uuid_str(service_uuid),
                normalize_uuid_str(char_uuid),
                dbus.ByteArray(value),
                list(flags),
            )
        )

    def characteristic_value(self, adapter: str, device_address: str, char_uuid: str) -> bytes:
        """What the peripheral holds: the initial value, or what was last written or notified."""
        uuid = normalize_uuid_str(char_uuid)
        return bytes(self._call("GetCharacteristicValue", "sss", adapter, device_address, uuid))

    def notify(self, adapter: str, device_address: str, char_uuid: str, value: bytes) -> bool:
        """The peripheral sets the value and notifies; returns False (nothing sent) when no client
        has notifications on or the device is not connected."""
        uuid = normalize_uuid_str(char_uuid)
        args = (adapter, device_address, uuid, dbus.ByteArray(value))
        return bool(self._call("Notify", "sssay", *args))


def _advertisement(
    name: str | None,
    rssi: int | None,
    manufacturer_data: Mapping[int, bytes] | None,
    service_data: Mapping[str, bytes] | None,
    service_uuids: Iterable[str] | None,
    tx_power: int | None,
) -> dbus.Dictionary:
    """Advertisement fields for the mock; the template turns them into BlueZ's exact types."""
    adv: dict[str, Any] = {}
    if name is not None:
        adv["Name"] = dbus.String(name)
    if rssi is not None:
        adv["RSSI"] = dbus.Int16(rssi)
    if tx_power is not None:
        adv["TxPower"] = dbus.Int16(tx_power)
    if manufacturer_data is not None:
        data = {dbus.UInt16(k): dbus.ByteArray(v) for k, v in manufacturer_data.items()}
        adv["ManufacturerData"] = dbus.Dictionary(data, signature="qay")
    if service_data is not None:
        data = {normalize_uuid_str(k): dbus.ByteArray(v) for k, v in service_data.items()}
        adv["ServiceData"] = dbus.Dictionary(data, signature="say")
    if service_uuids is not None:
        adv["UUIDs"] = dbus.Array([normalize_uuid_str(u) for u in service_uuids], signature="s")
    return dbus.Dictionary(adv, signature="sv")


@pytest.fixture(name="bluez")
def bluez_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBlueZ]:
    """A started FakeBlueZ with DBUS_SYSTEM_BUS_ADDRESS pointing bleak at it; stopped after."""
    harness = FakeBlueZ()
    harness.start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", harness.address)
    try:
        yield harness
    finally:
        harness.stop()
