"""The simulated building served over real Modbus (pymodbus server, TCP and RTU).

Every ``modbus-tcp``/``modbus-rtu`` device marked ``simulated: true`` answers at its unit id with
its register map from its device file: reads encode the simulated values into registers (the
same codec the driver decodes with), writes decode them and drive the simulated actuators. An
address outside the map answers exception 02 (illegal data address), as real devices do, and a
failed simulated sensor exception 04 (server device failure).
"""

from __future__ import annotations

import logging
import termios
from collections.abc import Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext

from buildingd.clock import Clock
from buildingd.config.modbus import (
    DataType,
    ModbusDeviceBase,
    ModbusPoint,
    ModbusRtuDevice,
    RegisterTable,
    SerialConnection,
)
from buildingd.drivers.modbus import serial_settings_refused
from buildingd.drivers.modbus_codec import BIT_TABLES, CodecError, decode, encode
from buildingd.drivers.modbus_codec import register_count as width
from buildingd.errors import StartupError
from buildingd.sim.building import Building

log = logging.getLogger(__name__)

TABLE_BY_FUNCTION = {
    1: RegisterTable.COIL, 5: RegisterTable.COIL, 15: RegisterTable.COIL,
    2: RegisterTable.DISCRETE_INPUT,
    3: RegisterTable.HOLDING_REGISTER, 6: RegisterTable.HOLDING_REGISTER,
    16: RegisterTable.HOLDING_REGISTER, 22: RegisterTable.HOLDING_REGISTER,
    23: RegisterTable.HOLDING_REGISTER,
    4: RegisterTable.INPUT_REGISTER,
}  # fmt: skip


class BuildingModbusContext(ModbusServerContext):
    """A pymodbus server datastore backed by the simulated building (no copy of the values)."""

    def __init__(self, building: Building, clock: Clock, units: dict[int, ModbusDeviceBase]):
        # Not calling the base initialiser: it builds the deprecated in-memory datastore.
        self.old_simulator = True  # pymodbus then calls async_getValues/async_setValues
        self.simdevices = []
        self.building, self.clock, self.units = building, clock, units
        self.requests = 0

    def device_ids(self) -> list[int]:
        return list(self.units)

    def _points_at(
        self, unit: ModbusDeviceBase, table: RegisterTable, address: int
    ) -> list[ModbusPoint]:
        return [
            p
            for p in unit.points
            if p.table is table and p.address <= address < p.address + width(p)
        ]

    def _value(self, point: ModbusPoint) -> float | None:
        if self.building.sensor_failed(point.zone, point.kind):
            return None
        return float(self.building.read_point(point.zone, point.kind))

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self.requests += 1
        unit = self.units.get(device_id)
        table = TABLE_BY_FUNCTION.get(func_code)
        if unit is None or table is None:
            return ExcCodes.GATEWAY_NO_RESPONSE if unit is None else ExcCodes.ILLEGAL_FUNCTION
        self.building.advance_to(self.clock.now())
        out: list[Any] = []
        for a in range(address, address + count):
            points = self._points_at(unit, table, a)
            if not points:
                return ExcCodes.ILLEGAL_ADDRESS
            values = [self._value(p) for p in points]
            if any(v is None for v in values):
                return ExcCodes.DEVICE_FAILURE
            try:
                if table in BIT_TABLES:
                    out.append(bool(encode(points[0], values[0] or 0.0)[0]))
                elif points[0].type is DataType.BIT:
                    out.append(
                        sum(
                            (1 << (p.bit or 0))
                            for p, v in zip(points, values, strict=True)
                            if v and v >= 0.5
                        )
                    )
                else:
                    out.append(encode(points[0], values[0] or 0.0)[a - points[0].address])
            except CodecError:
                return ExcCodes.DEVICE_FAILURE
        return out

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        unit = self.units.get(device_id)
        table = TABLE_BY_FUNCTION.get(func_code)
        if unit is None or table not in (RegisterTable.COIL, RegisterTable.HOLDING_REGISTER):
            return ExcCodes.ILLEGAL_FUNCTION
        self.building.advance_to(self.clock.now())
        writes: list[tuple[ModbusPoint, float]] = []
        a = address
        while a < address + len(values):
            points = [p for p in self._points_at(unit, table, a) if p.writable]
            if not points:
                return ExcCodes.ILLEGAL_ADDRESS
            first = points[0]
            if table is RegisterTable.COIL:
                writes.append((first, 1.0 if values[a - address] else 0.0))
                a += 1
            elif first.type is DataType.BIT:
                word = int(values[a - address])
                writes += [(p, float((word >> (p.bit or 0)) & 1)) for p in points]
                a += 1
            else:
                if first.address != a or a + width(first) > address + len(values):
                    return ExcCodes.ILLEGAL_ADDRESS  # half a value: refuse, as devices do
                words = [int(v) for v in values[a - address : a - address + width(first)]]
                writes.append((first, decode(first, words)))
                a += width(first)
        for point, value in writes:
            self.building.write_point(point.zone, point.kind, value)
        return None


async def start_modbus_tcp(
    building: Building, clock: Clock, devices: list[ModbusDeviceBase], host: str, port: int
) -> Any:
    """Serve ``devices`` on ``host:port``; returns the running server (``await .shutdown()``)."""
    from pymodbus.server import ModbusTcpServer

    units = {d.unit_id: d for d in devices}
    server = ModbusTcpServer(BuildingModbusContext(building, clock, units), address=(host, port))
    await server.serve_forever(background=True)
    log.info("sim: Modbus TCP on %s:%d serving units %s", host, port, sorted(units))
    return server


async def start_modbus_rtu(building: Building, clock: Clock, devices: list[ModbusRtuDevice]) -> Any:
    """Serve RTU ``devices`` (all on one line) on their serial port, with their line settings."""
    from pymodbus.server import ModbusSerialServer

    line = devices[0].connection
    units: dict[int, ModbusDeviceBase] = {d.unit_id: d for d in devices}
    server = ModbusSerialServer(
        BuildingModbusContext(building, clock, units), port=line.port, baudrate=line.baudrate,
        parity=line.parity, stopbits=line.stopbits, bytesize=line.bytesize,
    )  # fmt: skip
    try:
        await server.serve_forever(background=True)
    except (termios.error, OSError, RuntimeError) as err:
        # pymodbus says only "Could not start listen" for an OSError; try the port ourselves
        # for the reason (a pty that refuses parity raises termios.error, not an OSError).
        why = serial_settings_refused(line, _open_error(line, err))
        raise StartupError(f"simulator: {why}") from err
    log.info("sim: Modbus RTU on %s serving units %s", line.port, sorted(units))
    return server


def _open_error(line: SerialConnection, err: BaseException) -> BaseException:
    """The error opening ``line`` gives (pymodbus hides it behind a RuntimeError)."""
    if not isinstance(err, RuntimeError):
        return err
    import serial

    try:
        serial.Serial(line.port, line.baudrate, bytesize=line.bytesize, parity=line.parity,
                      stopbits=line.stopbits).close()  # fmt: skip
    except (termios.error, OSError) as opened:
        return opened
    return err
