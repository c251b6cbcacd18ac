"""Device schema for ``ble`` devices: advertisement sensors (BTHome v2, RuuviTag RAWv2, Xiaomi
custom firmware) and GATT devices (characteristics read, written and subscribed to)."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from buildingd.config.base import DeviceBase, PointBase
from buildingd.points import PointKind

MacAddress = Annotated[str, Field(pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")]
# 16-bit SIG short form ("2a6e") or the full 128-bit form.
Uuid = Annotated[
    str,
    Field(
        pattern=r"^([0-9A-Fa-f]{4}|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
        r"[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$"
    ),  # fmt: skip
]
GattType = Literal["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "float32"]
AdvertisementFormat = Literal["bthome", "ruuvi", "xiaomi"]

# Value names RuuviTag and Xiaomi payloads carry (``ble_codecs`` decodes them). BTHome defines
# dozens: any name of ``ble_codecs.UNITS`` is accepted there ("temperature_2" for the second).
FORMAT_FIELDS: dict[str, frozenset[str]] = {
    "ruuvi": frozenset(
        {
            "temperature",
            "humidity",
            "pressure_pa",
            "battery_mv",
            "tx_power_dbm",
            "movement_counter",
            "acceleration_x_mg",
            "acceleration_y_mg",
            "acceleration_z_mg",
        }
    ),  # fmt: skip
    "xiaomi": frozenset(
        {"temperature", "humidity", "battery", "battery_mv", "reed_switch", "trigger_output"}
    ),
}

# The advertisement field a point reads when it names none.
DEFAULT_FIELD: dict[PointKind, str] = {
    PointKind.TEMPERATURE: "temperature",
    PointKind.HUMIDITY: "humidity",
    PointKind.ILLUMINANCE: "illuminance",
    PointKind.OCCUPANCY: "occupancy",
    PointKind.CO2: "co2",
    PointKind.BATTERY: "battery",
    PointKind.POWER: "power",
    PointKind.ENERGY: "energy",
}


class BlePoint(PointBase):
    # Advertisement formats: the decoded value name ("temperature", "motion", ...); default by
    # kind (see DEFAULT_FIELD).
    field: str | None = None
    # GATT: the characteristic and how its bytes decode (little-endian, as GATT sends numbers);
    # engineering value = raw * scale.
    characteristic: Uuid | None = None
    type: GattType | None = None
    scale: float = Field(default=1.0, gt=0)
    notify: bool = False  # GATT: take values from notifications instead of reading each poll

    @property
    def value_name(self) -> str | None:
        return self.field if self.field is not None else DEFAULT_FIELD.get(self.kind)


class BleDevice(DeviceBase):
    driver: Literal["ble"]
    adapter: str = Field(default="hci0", pattern=r"^hci[0-9]{1,2}$")
    address: MacAddress | None = None
    name_pattern: str | None = None  # regular expression matched against the advertised name
    format: AdvertisementFormat | Literal["gatt"]
    points: list[BlePoint] = Field(min_length=1)

    @field_validator("name_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a regular expression: {err}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.address is None) == (self.name_pattern is None):
            raise ValueError("give exactly one of address or name_pattern")
        if self.format == "gatt" and self.address is None:
            raise ValueError("a GATT device is connected to by address: set address")
        return self
