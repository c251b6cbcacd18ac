"""The ``Driver`` interface every protocol implements, the context drivers are built with, and the
registry keyed by the ``driver:`` name of device files."""

from __future__ import annotations

import asyncio
import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from buildingd.clock import Clock
from buildingd.config.devices import DeviceSpec
from buildingd.errors import DeviceRejectedError
from buildingd.points import Sample

if TYPE_CHECKING:
    from buildingd.metrics import Metrics
    from buildingd.mqtt.connection import MqttConnection
    from buildingd.sim.building import Building

log = logging.getLogger(__name__)


class Driver(ABC):
    """Connection to one device. Values are in engineering units (scale/offset applied)."""

    # The protocol can give a written point back to the device's own control (BACnet: null at
    # our priority in the priority array). False: a point can only be written or left as is.
    relinquishes: ClassVar[bool] = False

    def __init__(self, device: DeviceSpec, ctx: DriverContext) -> None:
        self.device = device
        self.ctx = ctx

    @abstractmethod
    async def open(self) -> None:
        """Connect. Raises ``DeviceUnavailableError`` when the device cannot be reached."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection; never raises."""

    @abstractmethod
    async def read(self) -> Mapping[str, Sample]:
        """Current values of the readable points, by point id.

        Polled drivers read the device now; streaming drivers (MQTT, BLE advertisements) return
        the latest value received, with when it was received, so staleness can be judged.
        Raises ``DeviceUnavailableError`` or ``DeviceRejectedError``.
        """

    @abstractmethod
    async def write(self, point_id: str, value: float) -> float:
        """Write one point (limits were checked by the caller) and return the value read back."""

    async def relinquish(self, point_id: str) -> float:
        """Give a written point back (only when ``relinquishes``); returns the value then in
        control."""
        raise DeviceRejectedError(
            f"driver {self.device.driver} cannot relinquish", device_id=self.device.id,
            point_id=point_id,
        )  # fmt: skip

    @property
    def streams_updates(self) -> bool:
        """Whether ``wait_update`` ever returns (a streaming driver, once open); a device agent
        keeps no waiting task for a driver that is only polled."""
        return False

    async def wait_update(self) -> None:
        """Return when new data may be available (streaming drivers); polled drivers never do."""
        await asyncio.Event().wait()

    def describe(self) -> list[str]:
        """Human-readable lines for ``buildingd check --verbose`` (e.g. a Modbus poll plan)."""
        return []


class SharedResources:
    """Connections shared by several devices (a Modbus line, a BLE scanner, the MQTT client),
    created on first use and closed together when the daemon stops."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._lock = asyncio.Lock()

    async def get(
        self,
        key: str,
        create: Callable[[], Awaitable[Any]],
        close: Callable[[Any], Awaitable[None]] | None = None,
    ) -> Any:
        async with self._lock:
            if key not in self._items:
                item = await create()
                self._items[key] = item
                if close is not None:
                    self._closers.append(lambda: close(item))
            return self._items[key]

    async def close_all(self) -> None:
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                log.warning("closing a shared connection failed", exc_info=True)
        self._closers.clear()
        self._items.clear()


@dataclass(frozen=True)
class BacnetClient:
    """The BACnet/IP client (``[bacnet]`` settings): bacpypes3 address ("host": the default
    interface on 47808; "192.168.1.5/24", "127.0.0.1:47900"), our device instance, the BBMD to
    register with as a foreign device on routed networks, and where Who-Is goes to find devices
    without an ``address`` (None: broadcast on the local network)."""

    address: str = "host"
    device_instance: int = 4194302
    bbmd: str | None = None
    bbmd_ttl_s: int = 300
    who_is_to: str | None = None


@dataclass
class DriverContext:
    clock: Clock
    resources: SharedResources = field(default_factory=SharedResources)
    building: Building | None = None  # the simulated building, for ``driver: sim``
    mqtt: MqttConnection | None = None  # when ``[mqtt] enabled``
    metrics: Metrics | None = None  # drivers count bad input here
    # False: ``simulated: true`` devices are read from the model, not over their protocol.
    serve_protocols: bool = True
    ble_scanning: Literal["auto", "active", "passive"] = "auto"
    bacnet: BacnetClient = field(default_factory=lambda: BacnetClient())


DriverFactory = Callable[[DeviceSpec, DriverContext], Driver]

# driver name -> "module:factory" (a Driver class or a function choosing one); modules are
# imported only when a device uses them, so a site
# without BLE never imports bleak.
_REGISTRY: dict[str, str] = {
    "sim": "buildingd.drivers.sim:SimDriver",
    "modbus-tcp": "buildingd.drivers.modbus:ModbusDriver",
    "modbus-rtu": "buildingd.drivers.modbus:ModbusDriver",
    "mqtt": "buildingd.drivers.mqtt:MqttDriver",
    "ble": "buildingd.drivers.ble:ble_driver",
    "bacnet": "buildingd.drivers.bacnet:BacnetDriver",
}


def create_driver(device: DeviceSpec, ctx: DriverContext) -> Driver:
    driver = device.driver
    if device.simulated and ctx.building is not None and not ctx.serve_protocols:
        driver = "sim"
    module_name, factory_name = _REGISTRY[driver].split(":")
    factory: DriverFactory = getattr(importlib.import_module(module_name), factory_name)
    return factory(device, ctx)
