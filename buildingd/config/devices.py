"""Device file schema: assembles every driver's device model into one union keyed by ``driver:``.

Protocol-specific sections live beside this file (``modbus.py``, ``mqtt.py``, ``ble.py``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from buildingd.config.bacnet import BacnetDevice
from buildingd.config.base import DeviceBase, PointBase
from buildingd.config.ble import BleDevice
from buildingd.config.common import Id, Strict
from buildingd.config.modbus import ModbusRtuDevice, ModbusTcpDevice
from buildingd.config.mqtt import MqttDevice


class SimPoint(PointBase):
    pass


class SimDevice(DeviceBase):
    """A device of the simulated building (``buildingd/sim``)."""

    driver: Literal["sim"]
    points: list[SimPoint] = Field(min_length=1)


DeviceSpec = Annotated[
    SimDevice | ModbusTcpDevice | ModbusRtuDevice | MqttDevice | BleDevice | BacnetDevice,
    Field(discriminator="driver"),
]


class DeviceFile(Strict):
    """One file in ``devices/``: a list of devices (and, optionally, reusable profiles)."""

    devices: list[DeviceSpec] = Field(default_factory=list)
    gateway: Id | None = None  # the gateway of the file's devices that name none themselves
