"""Device schema for ``ble`` devices: advertisement formats or GATT characteristics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from buildingd.config.base import DeviceBase, PointBase


class BlePoint(PointBase):
    # Advertisement formats: the decoded field ("temperature", "humidity", "motion", ...).
    field: str | None = None
    # GATT: the characteristic UUID and how its bytes decode.
    characteristic: str | None = None
    type: Literal["int8", "uint8", "int16", "uint16", "int32", "uint32", "float32"] | None = None
    scale: float = 1.0


class BleDevice(DeviceBase):
    driver: Literal["ble"]
    adapter: str = "hci0"
    address: str | None = None  # AA:BB:CC:DD:EE:FF
    name_pattern: str | None = None
    format: Literal["bthome", "ruuvi", "atc1441", "pvvx", "gatt"]
    points: list[BlePoint] = Field(min_length=1)
