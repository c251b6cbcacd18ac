"""Device schema for ``modbus-tcp`` and ``modbus-rtu``: connection, unit id and register maps."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, model_validator

from buildingd.config.base import DeviceBase, PointBase
from buildingd.config.common import Id, Strict


class RegisterTable(StrEnum):
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT_REGISTER = "input_register"
    HOLDING_REGISTER = "holding_register"


class DataType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BIT = "bit"  # one bit inside a 16-bit register (``bit: 0..15``)


class Order(StrEnum):
    BIG = "big"
    LITTLE = "little"


class ModbusPoint(PointBase):
    table: RegisterTable
    address: int = Field(ge=0, le=65535)
    type: DataType = DataType.UINT16
    bit: int | None = Field(default=None, ge=0, le=15)
    word_order: Order = Order.BIG  # order of 16-bit words in 32/64-bit values
    byte_order: Order = Order.BIG  # order of bytes inside each word
    scale: float = 1.0  # engineering = raw * scale + offset
    offset: float = 0.0


class Planning(Strict):
    """How a device's points are grouped into read requests. By default by cost (the poll's
    time on the wire); ``max_gap`` instead bridges gaps of at most that many registers."""

    max_gap: int | None = Field(default=None, ge=0, le=125)  # registers (or coils) bridged
    max_registers: int = Field(default=125, ge=1, le=125)
    max_bits: int = Field(default=2000, ge=1, le=2000)
    # What one request costs besides its bytes: on TCP the round trip to the gateway, on RTU the
    # device's turnaround (from the end of the request to the start of its answer).
    round_trip_s: float = Field(default=0.002, gt=0, le=10)
    turnaround_s: float = Field(default=0.005, ge=0, le=10)


class ModbusDeviceBase(DeviceBase):
    unit_id: int = Field(default=1, ge=0, le=247)
    planning: Planning = Planning()
    # A named profile (``buildingd.config.profiles``) supplies the register map; ``zone`` binds
    # its points. Points given as well are added to the profile's.
    profile: str | None = None
    zone: Id | None = None
    points: list[ModbusPoint] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("profile") is not None:
            from buildingd.config.profiles import profile_points

            extra = data.get("points") or []
            data = {
                **data,
                "points": profile_points(str(data["profile"]), data.get("zone")) + list(extra),
            }
        return data


class TcpConnection(Strict):
    host: str
    port: int = Field(default=502, ge=1, le=65535)


class SerialConnection(Strict):
    port: str  # /dev/ttyUSB0, /dev/serial/by-id/...
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class ModbusTcpDevice(ModbusDeviceBase):
    driver: Literal["modbus-tcp"]
    connection: TcpConnection


class ModbusRtuDevice(ModbusDeviceBase):
    driver: Literal["modbus-rtu"]
    connection: SerialConnection
