"""Modbus values to and from registers (pure).

Registers are 16-bit words (Modbus Application Protocol Specification v1.1b3, section 4.2: big
endian within a register). Values wider than one register span consecutive registers; devices
disagree on the order of those words (``word_order``) and a few swap the bytes inside each word
(``byte_order``). Coils and discrete inputs are single bits. Engineering value = raw * scale +
offset. Owns the conversion only: no I/O, no protocol library.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from buildingd.config.modbus import DataType, ModbusPoint, Order, RegisterTable
from buildingd.errors import BuildingdError

BIT_TABLES = (RegisterTable.COIL, RegisterTable.DISCRETE_INPUT)
WIDTH = {
    DataType.BOOL: 1, DataType.BIT: 1, DataType.INT16: 1, DataType.UINT16: 1,
    DataType.INT32: 2, DataType.UINT32: 2, DataType.FLOAT32: 2, DataType.FLOAT64: 4,
}  # fmt: skip
STRUCT = {
    DataType.INT16: ">h", DataType.UINT16: ">H", DataType.INT32: ">i", DataType.UINT32: ">I",
    DataType.FLOAT32: ">f", DataType.FLOAT64: ">d",
}  # fmt: skip


SINGLE_WORD = (DataType.INT16, DataType.UINT16)


class CodecError(BuildingdError, ValueError):
    """A value that cannot be represented in (or read from) a point's registers."""


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
    for r in registers:
        if not 0 <= int(r) <= 0xFFFF:
            raise CodecError(f"{point.id}: a register holds 0..65535, got {list(registers)}")
    single = point.type in SINGLE_WORD and point.table not in BIT_TABLES
    if single and point.byte_order is Order.BIG:
        # The common case, without the bytes round trip: a 16-bit word as it came.
        word = int(registers[0])
        raw = float(word - 0x10000 if word & 0x8000 and point.type is DataType.INT16 else word)
    elif point.table in BIT_TABLES or point.type is DataType.BOOL:
        raw = 1.0 if registers[0] else 0.0
    elif point.type is DataType.BIT:
        raw = float((int(registers[0]) >> (point.bit or 0)) & 1)
    else:
        data = _words_to_bytes(point, [int(r) for r in registers])
        raw = float(struct.unpack(STRUCT[point.type], data)[0])
    value = raw * point.scale + point.offset
    if not math.isfinite(value):
        raise CodecError(f"{point.id}: not a finite number ({raw})")
    return value


def _raw(point: ModbusPoint, value: float) -> float:
    """Engineering value back to the raw number: (value - offset) / scale, finite or CodecError."""
    if not math.isfinite(value):
        raise CodecError(f"{point.id}: cannot write {value}")
    if point.scale == 0:
        raise CodecError(f"{point.id}: scale 0 cannot be inverted")
    raw = (value - point.offset) / point.scale
    if not math.isfinite(raw):
        raise CodecError(f"{point.id}: {value} does not fit a {point.type.value}")
    return raw


def _bit(point: ModbusPoint, value: float) -> bool:
    raw = _raw(point, value)
    if not 0 <= raw <= 1:
        raise CodecError(f"{point.id}: {value} does not fit a bit (raw {raw:g}, not 0..1)")
    return raw >= 0.5


def encode(point: ModbusPoint, value: float) -> list[int]:
    """Registers (or one 0/1 bit) that represent ``value``; CodecError when it cannot fit."""
    if point.type is DataType.BIT and point.table not in BIT_TABLES:
        raise CodecError(f"{point.id}: a bit inside a register is written with encode_bit")
    if point.table in BIT_TABLES or point.type is DataType.BOOL:
        return [1 if _bit(point, value) else 0]
    raw = _raw(point, value)
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
    """The register ``current`` with the point's bit set or cleared, the other bits kept.

    A ``bit`` point shares its register with others, so writing it is read-modify-write: the
    caller reads the register, and writes back what this returns.
    """
    if point.type is not DataType.BIT or point.bit is None:
        raise CodecError(f"{point.id}: encode_bit is for type bit with bit: 0..15")
    if not 0 <= current <= 0xFFFF:
        raise CodecError(f"{point.id}: a register holds 0..65535, got {current}")
    mask = 1 << point.bit
    return (current | mask) if _bit(point, value) else (current & ~mask & 0xFFFF)
