"""``driver: ble`` on bleak (BlueZ over D-Bus): advertisement sensors and GATT devices.

* One ``AdvertisementScanner`` per adapter (a ``SharedResources`` entry) feeds every BLE device
  on it. Passive scanning where BlueZ offers it (an advertisement monitor: BlueZ >= 5.55 run with
  ``--experimental``, kernel >= 5.10), active otherwise or when a passive scan hears nothing;
  ``[ble] scanning`` chooses. A scanner that hears nothing for longer than its devices' stale
  timeout is restarted (BlueZ does not resume a discovery after the adapter was powered off
  and on), with jittered backoff while it fails.
* Advertisement devices decode their payload with ``ble_codecs``; a packet id seen twice is
  one measurement. ``read`` returns the latest values with when they arrived, and reports the
  device unavailable when it has not been heard within its stale timeout.
* GATT devices connect with bleak-retry-connector, read characteristics each poll or take their
  notifications, write with response and read back; a lost connection is re-opened on the next
  poll after a jittered backoff.

Bleak types stay in this module: the rest of buildingd sees ``Sample`` values and our errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from buildingd.clock import answer_timeout_s
from buildingd.config.ble import BleDevice, BlePoint
from buildingd.drivers.base import Driver, DriverContext
from buildingd.drivers.ble_codecs import (
    BTHOME_SERVICE_UUID,
    ENVIRONMENTAL_SENSING_UUID,
    RUUVI_COMPANY_ID,
    DecodeError,
    decode,
    decode_gatt,
    encode_gatt,
    uuid16,
)
from buildingd.errors import DeviceRejectedError, DeviceUnavailableError
from buildingd.points import Sample

if TYPE_CHECKING:
    from bleak import BleakClient
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

log = logging.getLogger(__name__)

ScanMode = Literal["auto", "active", "passive"]
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0
DEFAULT_SILENCE_S = 120.0


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One advertisement as buildingd sees it (bleak's types converted at the edge)."""

    address: str  # upper case
    name: str | None
    manufacturer_data: Mapping[int, bytes]
    service_data: Mapping[str, bytes]  # 128-bit UUID, lower case


# Where each format's payload travels, for routing and for BlueZ's passive-scan patterns.
def _payload(format_name: str, adv: Advertisement) -> bytes | None:
    if format_name == "bthome":
        return adv.service_data.get(BTHOME_SERVICE_UUID)
    if format_name == "xiaomi":
        return adv.service_data.get(ENVIRONMENTAL_SENSING_UUID)
    return adv.manufacturer_data.get(RUUVI_COMPANY_ID)


def _our_format(adv: Advertisement) -> str | None:
    for name in ("bthome", "xiaomi", "ruuvi"):
        if _payload(name, adv) is not None:
            return name
    return None


def _scanner_errors() -> tuple[type[BaseException], ...]:
    """What bleak raises when the adapter or BlueZ is unusable (not our bug)."""
    from bleak.exc import BleakError
    from dbus_fast import DBusError

    return (BleakError, DBusError, OSError, TimeoutError)


class ScannerDown(Exception):
    """The adapter cannot scan now (missing, powered off, BlueZ not running, or in backoff)."""


Listener = Callable[[Advertisement, "BLEDevice"], None]


class AdvertisementScanner:
    """The shared scanner of one adapter. Started lazily by the devices' polls, so no task of its
    own runs; restarted when silent for longer than the shortest stale timeout of its devices."""

    def __init__(self, adapter: str, mode: ScanMode, ctx: DriverContext) -> None:
        self.adapter, self.mode, self.ctx = adapter, mode, ctx
        self._listeners: dict[int, tuple[Callable[[Advertisement], bool], Listener, float]] = {}
        self._scanner: Any = None
        self._lock = asyncio.Lock()
        self._heard_s = 0.0
        self._backoff_s = BACKOFF_MIN_S
        self._retry_at = 0.0
        self._available: bool | None = None
        self._passive_failed = False
        self._unclaimed: set[str] = set()  # addresses logged once as "in no device file"
        self.devices: dict[str, BLEDevice] = {}  # last seen BLEDevice of each claimed address

    def add_listener(
        self, key: int, matches: Callable[[Advertisement], bool], listener: Listener, stale_s: float
    ) -> None:
        self._listeners[key] = (matches, listener, stale_s)

    def remove_listener(self, key: int) -> None:
        self._listeners.pop(key, None)

    @property
    def silence_s(self) -> float:
        return min((s for _, _, s in self._listeners.values()), default=DEFAULT_SILENCE_S)

    async def ensure_running(self) -> None:
        """Start (or restart a silent) scan; ``ScannerDown`` when the adapter cannot scan."""
        async with self._lock:
            now = self.ctx.clock.monotonic()
            if self._scanner is not None and now - self._heard_s > self.silence_s:
                log.info(
                    "ble %s: nothing heard for %.0f s, restarting the scan",
                    self.adapter,
                    now - self._heard_s,
                )
                if self.mode == "auto" and self._scanning_mode() == "passive":
                    # A monitor that registers but forwards nothing (some BlueZ builds and
                    # controllers): active scanning from now on.
                    self._passive_failed = True
                await self._stop()
            if self._scanner is not None:
                return
            loop_now = asyncio.get_running_loop().time()
            if loop_now < self._retry_at:
                raise ScannerDown(f"adapter {self.adapter} cannot scan; next attempt after backoff")
            try:
                await self._start()
            except _scanner_errors() as err:
                self._retry_at = loop_now + self._backoff_s * random.uniform(0.5, 1.5)
                self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
                why = f"{type(err).__name__}: {err}"
                if self._available is not False:
                    log.warning("ble %s: cannot scan: %s", self.adapter, why)
                self._available = False
                raise ScannerDown(f"adapter {self.adapter} cannot scan: {why}") from err
            self._heard_s = self.ctx.clock.monotonic()
            self._backoff_s = BACKOFF_MIN_S
            if self._available is not True:
                log.info("ble %s: scanning (%s)", self.adapter, self._scanning_mode())
            self._available = True

    def _scanning_mode(self) -> Literal["active", "passive"]:
        if self.mode == "passive" or (self.mode == "auto" and not self._passive_failed):
            return "passive"
        return "active"

    async def _start(self) -> None:
        from bleak import BleakScanner
        from bleak.args.bluez import OrPattern, OrPatternLike
        from bleak.assigned_numbers import AdvertisementDataType
        from bleak.exc import BleakError

        if self._scanning_mode() == "passive":
            # BlueZ forwards only advertisements matching a pattern: our three payloads.
            patterns: list[OrPatternLike] = [
                OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc"),  # BTHome
                OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\x1a\x18"),  # 0x181A
                OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x99\x04"),
            ]
            scanner = BleakScanner(
                self._on_advertisement,
                scanning_mode="passive",
                bluez={"adapter": self.adapter, "or_patterns": patterns},
            )
            try:
                await scanner.start()
                self._scanner = scanner
                return
            except BleakError as err:
                if self.mode == "passive":
                    raise
                self._passive_failed = True
                log.info(
                    "ble %s: passive scanning unavailable (%s); scanning actively. Passive "
                    "scanning needs BlueZ >= 5.55 run with --experimental and Linux >= 5.10",
                    self.adapter,
                    err,
                )
        scanner = BleakScanner(self._on_advertisement, bluez={"adapter": self.adapter})
        await scanner.start()
        self._scanner = scanner

    async def _stop(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            try:
                await scanner.stop()
            except _scanner_errors() as err:  # a powered-off adapter has nothing to stop
                log.debug("ble %s: stopping the scan: %s", self.adapter, err)

    async def close(self) -> None:
        async with self._lock:
            await self._stop()

    def _on_advertisement(self, device: BLEDevice, data: AdvertisementData) -> None:
        self._heard_s = self.ctx.clock.monotonic()
        adv = Advertisement(
            address=device.address.upper(),
            name=data.local_name,
            manufacturer_data=dict(data.manufacturer_data),
            service_data={k.lower(): bytes(v) for k, v in data.service_data.items()},
        )
        claimed = False
        for matches, listener, _ in list(self._listeners.values()):
            if matches(adv):
                claimed = True
                self.devices[adv.address] = device
                listener(adv, device)
        if not claimed and adv.address not in self._unclaimed and len(self._unclaimed) < 1000:
            fmt = _our_format(adv)
            if fmt is not None:  # commissioning help: a sensor nobody declared yet
                self._unclaimed.add(adv.address)
                log.info(
                    "ble %s: %s sensor %s (%s) is in no device file",
                    self.adapter,
                    fmt,
                    adv.address,
                    adv.name or "no name",
                )


async def _scanner_for(device: BleDevice, ctx: DriverContext) -> AdvertisementScanner:
    async def create() -> AdvertisementScanner:
        return AdvertisementScanner(device.adapter, ctx.ble_scanning, ctx)

    async def close(scanner: AdvertisementScanner) -> None:
        await scanner.close()

    scanner: AdvertisementScanner = await ctx.resources.get(
        f"ble-scanner:{device.adapter}", create, close
    )
    return scanner


class _BleBase(Driver):
    def __init__(self, device: BleDevice, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        self.spec = device
        self.latest: dict[str, Sample] = {}
        self.scanner: AdvertisementScanner | None = None
        self._update = asyncio.Event()
        self._last_problem: str | None = None
        self._pattern = re.compile(device.name_pattern) if device.name_pattern else None

    def _matches(self, adv: Advertisement) -> bool:
        if self.spec.address is not None:
            return adv.address == self.spec.address.upper()
        assert self._pattern is not None
        return adv.name is not None and self._pattern.fullmatch(adv.name) is not None

    def _stale_s(self) -> float:
        return min(self.spec.stale_after(p) for p in self.spec.points)

    async def _attach(self) -> AdvertisementScanner:
        scanner = await _scanner_for(self.spec, self.ctx)
        scanner.add_listener(id(self), self._matches, self._on_advertisement, self._stale_s())
        self.scanner = scanner
        return scanner

    def _on_advertisement(self, adv: Advertisement, device: BLEDevice) -> None:
        pass

    async def _scanning(self) -> None:
        assert self.scanner is not None
        try:
            await self.scanner.ensure_running()
        except ScannerDown as err:
            raise DeviceUnavailableError(str(err), device_id=self.device.id) from err

    def _bad_input(self, message: str, point_id: str | None = None) -> None:
        """Count every bad payload; log it when it differs from the last one logged."""
        if self.ctx.metrics is not None:
            self.ctx.metrics.inc("buildingd_bad_payloads_total", device=self.device.id)
        if message != self._last_problem:
            where = f"{self.device.id}.{point_id}" if point_id else self.device.id
            log.warning("device %s: %s", where, message)
            self._last_problem = message

    @property
    def streams_updates(self) -> bool:
        return True

    async def wait_update(self) -> None:
        await self._update.wait()
        self._update.clear()

    async def close(self) -> None:
        if self.scanner is not None:
            self.scanner.remove_listener(id(self))


class BleAdvertisementDriver(_BleBase):
    """A sensor that broadcasts its readings (BTHome v2, RuuviTag RAWv2, Xiaomi custom)."""

    def __init__(self, device: BleDevice, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        self.heard_s: float | None = None  # last advertisement of any kind from the device
        self.opened_s = 0.0
        self.duplicates = 0
        self._packet_id: int | None = None
        self._without_payload_logged = False

    async def open(self) -> None:
        self.opened_s = self.ctx.clock.monotonic()
        await self._attach()
        await self._scanning()

    async def read(self) -> Mapping[str, Sample]:
        await self._scanning()
        now = self.ctx.clock.monotonic()
        silent_since = self.heard_s if self.heard_s is not None else self.opened_s
        if now - silent_since > self._stale_s():
            who = self.spec.address or f"a device named like {self.spec.name_pattern!r}"
            raise DeviceUnavailableError(
                f"no advertisement from {who} for {now - silent_since:.0f} s "
                f"(out of range, battery, or another adapter?)",
                device_id=self.device.id,
            )
        return dict(self.latest)

    async def write(self, point_id: str, value: float) -> float:
        raise DeviceRejectedError(
            "advertisements are read-only", device_id=self.device.id, point_id=point_id
        )

    def _on_advertisement(self, adv: Advertisement, device: BLEDevice) -> None:
        now = self.ctx.clock.monotonic()
        self.heard_s = now
        payload = _payload(self.spec.format, adv)
        if payload is None:
            # Scan responses carry the name only; a device of another format says so once.
            if (adv.manufacturer_data or adv.service_data) and not self._without_payload_logged:
                self._without_payload_logged = True
                log.warning(
                    "device %s: %s advertises no %s payload (service data %s, manufacturer ids %s)",
                    self.device.id,
                    adv.address,
                    self.spec.format,
                    sorted(adv.service_data),
                    sorted(adv.manufacturer_data),
                )
            return
        try:
            decoded = decode(self.spec.format, payload)
        except DecodeError as err:
            self._bad_input(f"{adv.address}: {err} (payload {payload.hex()})")
            return
        for problem in decoded.problems:
            self._bad_input(f"{adv.address}: {self.spec.format}: {problem}")
        if decoded.packet_id is not None and decoded.packet_id == self._packet_id:
            self.duplicates += 1  # the same measurement sent again
            return
        self._packet_id = decoded.packet_id
        for point in self.spec.points:
            name = point.value_name
            value = decoded.values.get(name) if name is not None else None
            if value is not None:
                self.latest[point.id] = Sample(value * point.scale, now)
        self._update.set()


class BleGattDriver(_BleBase):
    """A device read and driven through GATT characteristics."""

    def __init__(self, device: BleDevice, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        self.client: BleakClient | None = None
        self.connects = 0
        self._chars: dict[str, Any] = {}  # point id -> BleakGATTCharacteristic
        self._backoff_s = BACKOFF_MIN_S
        self._retry_at = 0.0
        self._missing_logged: set[str] = set()

    async def open(self) -> None:
        await self._attach()
        await self._connected()

    async def close(self) -> None:
        await super().close()
        await self._release()

    async def _release(self) -> None:
        """Drop the client, closing its D-Bus connection: bleak 3.1 keeps a dropped client's
        connection open and a reconnect on the same client would leak it (dbus-daemon allows
        256 per user), so every connection gets a fresh client and the old one is closed."""
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.disconnect()
            except _scanner_errors() as err:
                log.debug("device %s: disconnect: %s", self.device.id, err)

    def _on_disconnect(self, client: BleakClient) -> None:
        if client is self.client:  # the next poll reconnects
            log.info("device %s: connection lost", self.device.id)

    async def _connected(self) -> BleakClient:
        """The live connection, opened now if there is none (after the backoff)."""
        if self.client is not None:
            if self.client.is_connected:
                return self.client
            await self._release()
        loop_now = asyncio.get_running_loop().time()
        if loop_now < self._retry_at:
            raise DeviceUnavailableError(
                "not connected; next attempt after backoff", device_id=self.device.id
            )
        try:
            client = await self._connect()
        except _scanner_errors() as err:
            self._retry_at = loop_now + self._backoff_s * random.uniform(0.5, 1.5)
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            raise DeviceUnavailableError(
                f"cannot connect: {type(err).__name__}: {err}", device_id=self.device.id
            ) from err
        self._backoff_s = BACKOFF_MIN_S
        return client

    async def _connect(self) -> BleakClient:
        from bleak_retry_connector import BleakClientWithServiceCache, establish_connection
        from bleak_retry_connector import get_device as known_to_bluez

        address = self.spec.address
        assert address is not None and self.scanner is not None
        ble_device = self.scanner.devices.get(address.upper()) or await known_to_bluez(address)
        if ble_device is None:
            await self._scanning()  # the device is found by the scan
            raise DeviceUnavailableError(
                f"{address} not seen by adapter {self.spec.adapter}", device_id=self.device.id
            )
        async with asyncio.timeout(
            self.ctx.clock.to_loop_seconds(self.device.timeout_s * (self.device.retries + 1) + 10)
        ):
            client = await establish_connection(
                BleakClientWithServiceCache,
                ble_device,
                self.device.id,
                disconnected_callback=self._on_disconnect,
                max_attempts=self.device.retries + 1,
            )
        self.client = client
        self.connects += 1
        self._chars.clear()
        for point in self.spec.points:
            assert point.characteristic is not None
            uuid = (
                uuid16(int(point.characteristic, 16))
                if len(point.characteristic) == 4
                else (point.characteristic.lower())
            )
            char = client.services.get_characteristic(uuid)
            if char is None:
                if point.id not in self._missing_logged:
                    self._missing_logged.add(point.id)
                    self._bad_input(f"characteristic {uuid} not found on {address}", point.id)
                continue
            self._chars[point.id] = char
            if point.notify:
                await client.start_notify(char, self._notified(point))
                if "read" in char.properties:  # notifications bring changes, not the state
                    with contextlib.suppress(DeviceRejectedError):
                        value = await self._read_char(client, point)
                        self.latest[point.id] = Sample(value, self.ctx.clock.monotonic())
        return client

    def _notified(self, point: BlePoint) -> Callable[[Any, bytearray], None]:
        def on_value(_: Any, data: bytearray) -> None:
            try:
                value = self._decode(point, bytes(data))
            except DecodeError as err:
                self._bad_input(f"notification: {err}", point.id)
                return
            self.latest[point.id] = Sample(value, self.ctx.clock.monotonic())
            self._update.set()

        return on_value

    @staticmethod
    def _decode(point: BlePoint, data: bytes) -> float:
        assert point.type is not None
        return decode_gatt(data, point.type, point.scale)

    async def _read_char(self, client: BleakClient, point: BlePoint) -> float:
        from bleak.exc import BleakError

        try:
            async with asyncio.timeout(answer_timeout_s(self.ctx.clock, self.device.timeout_s)):
                data = bytes(await client.read_gatt_char(self._chars[point.id]))
        except (BleakError, TimeoutError, EOFError) as err:
            if not client.is_connected:
                raise DeviceUnavailableError(
                    f"connection lost: {err}", device_id=self.device.id, point_id=point.id
                ) from err
            raise DeviceRejectedError(
                f"read refused: {err}", device_id=self.device.id, point_id=point.id
            ) from err
        try:
            return self._decode(point, data)
        except DecodeError as err:
            self._bad_input(str(err), point.id)
            raise DeviceRejectedError(
                str(err), device_id=self.device.id, point_id=point.id
            ) from err

    async def read(self) -> Mapping[str, Sample]:
        client = await self._connected()
        samples: dict[str, Sample] = {}
        for point in self.spec.points:
            if point.id not in self._chars:
                continue  # missing characteristic: logged and counted once at connect
            if point.notify:
                if point.id in self.latest:
                    samples[point.id] = self.latest[point.id]
                continue
            try:
                samples[point.id] = Sample(
                    await self._read_char(client, point), self.ctx.clock.monotonic()
                )
            except DeviceRejectedError:
                continue  # this point has no value this poll; the others still count
        return samples

    def representable(self, point_id: str, value: float) -> float:
        """The value the characteristic holds once ``value`` is written (quantised to the point's
        scale), so the device agent compares the read-back with it exactly."""
        point = self._point(point_id)
        assert point.type is not None
        try:
            return decode_gatt(encode_gatt(value, point.type, point.scale), point.type, point.scale)
        except (ValueError, DecodeError) as err:
            raise DeviceRejectedError(
                str(err), device_id=self.device.id, point_id=point_id
            ) from err

    def _point(self, point_id: str) -> BlePoint:
        return next(p for p in self.spec.points if p.id == point_id)

    async def write(self, point_id: str, value: float) -> float:
        from bleak.exc import BleakError

        point = self._point(point_id)
        assert point.type is not None
        try:
            data = encode_gatt(value, point.type, point.scale)
        except ValueError as err:
            raise DeviceRejectedError(
                str(err), device_id=self.device.id, point_id=point_id
            ) from err
        client = await self._connected()
        if point_id not in self._chars:
            raise DeviceRejectedError(
                f"characteristic {point.characteristic} not found",
                device_id=self.device.id,
                point_id=point_id,
            )
        try:
            async with asyncio.timeout(answer_timeout_s(self.ctx.clock, self.device.timeout_s)):
                await client.write_gatt_char(self._chars[point_id], data, response=True)
        except (BleakError, TimeoutError, EOFError) as err:
            if not client.is_connected:
                raise DeviceUnavailableError(
                    f"connection lost: {err}", device_id=self.device.id, point_id=point_id
                ) from err
            raise DeviceRejectedError(
                f"write refused: {err}", device_id=self.device.id, point_id=point_id
            ) from err
        return await self._read_char(client, point)


def ble_driver(device: BleDevice, ctx: DriverContext) -> Driver:
    """The registry's factory for ``driver: ble``."""
    if device.format == "gatt":
        return BleGattDriver(device, ctx)
    return BleAdvertisementDriver(device, ctx)
