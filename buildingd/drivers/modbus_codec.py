"""Modbus values to and from registers (pure).

Registers are 16-bit words (Modbus Application Protocol Specification v1.1b3, section 4.2: big
endian within a register). Values wider than one register span consecutive registers; devices
disagree on the order of those words (``word_order``) and a few swap the bytes inside each word
(``byte_order``). Engineering value = raw * scale + offset.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from buildingd.config.modbus import DataType, ModbusPoint, Order, RegisterTable

BIT_TABLES = (RegisterTable.COIL, RegisterTable.DISCRETE_INPUT)
WIDTH = {
    DataType.BOOL: 1, DataType.BIT: 1, DataType.INT16: 1, DataType.UINT16: 1,
    DataType.INT32: 2, DataType.UINT32: 2, DataType.FLOAT32: 2, DataType.FLOAT64: 4,
}  # fmt: skip
STRUCT = {
    DataType.INT16: ">h", DataType.UINT16: ">H", DataType.INT32: ">i", DataType.UINT32: ">I",
    DataType.FLOAT32: ">f", DataType.FLOAT64: ">d",
}  # fmt: skip


class CodecError(ValueError):
    pass


def register_count(point: ModbusPoint) -> int:
    """How many registers (or bits, on coil/discrete tables) the point occupies."""
    return 1 if point.table in BIT_TABLES else WIDTH[point.type]


def _words_to_bytes(point: ModbusPoint, words: Sequence[int]) -> bytes:
    ordered = list(words) if point.word_order is Order.BIG else list(reversed(words))
    out = b"".join(w.to_bytes(2, "big") for w in ordered)
    if point.byte_order is Order.LITTLE:
        out = b"".join(out[i : i + 2][::-1] for i in range(0, len(out), 2))
    return out


def _bytes_to_words(point: ModbusPoint, data: bytes) -> list[int]:
    if point.byte_order is Order.LITTLE:
        data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if point.word_order is Order.BIG else list(reversed(words))


def decode(point: ModbusPoint, registers: Sequence[int | bool]) -> float:
    """Engineering value of a point from its registers (or one bit)."""
    if len(registers) != register_count(point):
        raise CodecError(
            f"{point.id}: need {register_count(point)} registers, got {len(registers)}"
        )
    if point.table in BIT_TABLES or point.type is DataType.BOOL:
        raw = 1.0 if registers[0] else 0.0
    elif point.type is DataType.BIT:
        raw = float((int(registers[0]) >> (point.bit or 0)) & 1)
    else:
        raw = float(
            struct.unpack(STRUCT[point.type], _words_to_bytes(point, [int(r) for r in registers]))[
                0
            ]
        )
    value = raw * point.scale + point.offset
    if not math.isfinite(value):
        raise CodecError(f"{point.id}: not a finite number ({raw})")
    return value


def encode(point: ModbusPoint, value: float) -> list[int]:
    """Registers (or one 0/1 bit) that represent ``value``; CodecError when it cannot fit."""
    if not math.isfinite(value):
        raise CodecError(f"{point.id}: cannot write {value}")
    raw = (value - point.offset) / point.scale
    if point.table in BIT_TABLES or point.type in (DataType.BOOL, DataType.BIT):
        if point.type is DataType.BIT:
            raise CodecError(f"{point.id}: a bit inside a register is written with encode_bit")
        return [1 if raw >= 0.5 else 0]
    fmt = STRUCT[point.type]
    if point.type not in (DataType.FLOAT32, DataType.FLOAT64):
        raw = round(raw)
        bits = 16 * WIDTH[point.type]
        low, high = (
            (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt[1].islower() else (0, 2**bits - 1)
        )
        if not low <= raw <= high:
            raise CodecError(f"{point.id}: {value} does not fit a {point.type.value}")
        return _bytes_to_words(point, struct.pack(fmt, int(raw)))
    try:
        return _bytes_to_words(point, struct.pack(fmt, raw))
    except OverflowError as err:
        raise CodecError(f"{point.id}: {value} does not fit a {point.type.value}") from err


def encode_bit(point: ModbusPoint, current: int, value: float) -> int:
    """The register with the point's bit set or cleared, the other bits kept."""
    mask = 1 << (point.bit or 0)
    return (current | mask) if value >= 0.5 else (current & ~mask & 0xFFFF)
