"""Modbus register codec (pure): golden vectors for every word and byte order, range errors, and
round trips (encode then decode gives the value back within the scale's resolution)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.config.modbus import ModbusPoint
from buildingd.drivers.modbus_codec import (
    CodecError,
    decode,
    encode,
    encode_bit,
    register_count,
)

ORDERS = ["big", "little"]
INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
SCALES = [1.0, 0.1, 0.01, 0.5, 10.0, -0.1]


def pt(type_: str = "uint16", table: str = "holding_register", **kw: Any) -> ModbusPoint:
    return ModbusPoint.model_validate(
        {"id": "p", "kind": "temperature", "table": table, "address": 0, "type": type_, **kw}
    )


# (type, word_order, byte_order, engineering value, registers as on the wire)
VECTORS = [
    # IEEE 754 binary32 of 21.5 is 0x41AC0000.
    ("float32", "big", "big", 21.5, [0x41AC, 0x0000]),
    ("float32", "little", "big", 21.5, [0x0000, 0x41AC]),
    ("float32", "big", "little", 21.5, [0xAC41, 0x0000]),
    ("float32", "little", "little", 21.5, [0x0000, 0xAC41]),
    ("float32", "big", "big", -1.0, [0xBF80, 0x0000]),
    # Two's complement of -2 in 32 bits is 0xFFFFFFFE.
    ("int32", "big", "big", -2, [0xFFFF, 0xFFFE]),
    ("int32", "little", "big", -2, [0xFFFE, 0xFFFF]),
    ("int32", "big", "little", -2, [0xFFFF, 0xFEFF]),
    ("uint32", "big", "big", 0x12345678, [0x1234, 0x5678]),
    ("uint32", "little", "big", 0x12345678, [0x5678, 0x1234]),
    ("uint32", "big", "little", 0x12345678, [0x3412, 0x7856]),
    ("uint32", "little", "little", 0x12345678, [0x7856, 0x3412]),
    # IEEE 754 binary64 of 1.0 is 0x3FF0000000000000; of -2.5 is 0xC004000000000000.
    ("float64", "big", "big", 1.0, [0x3FF0, 0, 0, 0]),
    ("float64", "little", "big", 1.0, [0, 0, 0, 0x3FF0]),
    ("float64", "big", "big", -2.5, [0xC004, 0, 0, 0]),
    ("float64", "big", "little", -2.5, [0x04C0, 0, 0, 0]),
    ("int16", "big", "big", -1, [0xFFFF]),
    ("int16", "big", "big", -32768, [0x8000]),
    ("int16", "big", "little", 0x1234, [0x3412]),
    ("uint16", "big", "big", 65535, [0xFFFF]),
    ("uint16", "little", "little", 0x1234, [0x3412]),  # word order means nothing for one word
]


@pytest.mark.parametrize(("type_", "word", "byte", "value", "words"), VECTORS)
def test_golden_vectors_both_ways(
    type_: str, word: str, byte: str, value: float, words: list[int]
) -> None:
    point = pt(type_, word_order=word, byte_order=byte)
    assert encode(point, value) == words
    assert decode(point, words) == value


def test_register_counts() -> None:
    counts = {"bool": 1, "bit": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2}
    counts |= {"float32": 2, "float64": 4}
    for type_, count in counts.items():
        assert register_count(pt(type_)) == count, type_
    assert register_count(pt("bool", table="coil")) == 1
    assert register_count(pt("uint16", table="discrete_input")) == 1  # one bit, whatever the type


def test_scale_and_offset_give_engineering_units() -> None:
    assert decode(pt("int16", scale=0.1), [0xFF38]) == pytest.approx(-20.0)  # -200 tenths
    assert decode(pt("uint16", scale=0.1, offset=-40), [650]) == pytest.approx(25.0)
    assert encode(pt("uint16", scale=0.1, offset=-40), 25.0) == [650]
    assert encode(pt("int16", scale=0.1), 21.46) == [215]  # rounded to the nearest step
    assert encode(pt("int16", scale=0.1), 21.44) == [214]


def test_bits_inside_a_register() -> None:
    point = pt("bit", bit=3)
    assert decode(point, [0b1000]) == 1.0
    assert decode(point, [0xFFF7]) == 0.0  # every other bit set
    assert encode_bit(point, 0b0001, 1.0) == 0b1001
    assert encode_bit(point, 0xFFFF, 0.0) == 0xFFF7
    with pytest.raises(CodecError, match="encode_bit"):
        encode(point, 1.0)  # a lone bit would clobber its neighbours
    with pytest.raises(CodecError, match="encode_bit is for type bit"):
        encode_bit(pt("uint16"), 0, 1.0)
    with pytest.raises(CodecError, match="does not fit a bit"):
        encode_bit(point, 0, 2.0)
    with pytest.raises(CodecError, match="0..65535"):
        encode_bit(point, 0x10000, 1.0)


def test_coils_and_discrete_inputs_are_single_bits() -> None:
    coil = pt("bool", table="coil")
    assert decode(coil, [True]) == 1.0
    assert decode(coil, [False]) == 0.0
    assert decode(pt("bool", table="discrete_input"), [True]) == 1.0
    assert encode(coil, 1.0) == [1]
    assert encode(coil, 0.0) == [0]
    assert decode(pt("bool"), [7]) == 1.0  # a bool in a holding register: non-zero is true
    with pytest.raises(CodecError, match="does not fit a bit"):
        encode(coil, 2.0)
    with pytest.raises(CodecError, match="does not fit a bit"):
        encode(coil, -1.0)


@pytest.mark.parametrize(("type_", "bounds"), INT_RANGE.items())
def test_integer_range_edges(type_: str, bounds: tuple[int, int]) -> None:
    low, high = bounds
    point = pt(type_)
    assert decode(point, encode(point, low)) == low
    assert decode(point, encode(point, high)) == high
    for outside in (low - 1, high + 1):
        with pytest.raises(CodecError, match=f"does not fit a {type_}"):
            encode(point, outside)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("type_", ["int16", "uint32", "float32", "float64", "bool"])
def test_non_finite_values_are_refused(type_: str, value: float) -> None:
    with pytest.raises(CodecError, match="cannot write"):
        encode(pt(type_), value)


def test_values_a_type_cannot_hold_are_refused() -> None:
    with pytest.raises(CodecError, match="does not fit a float32"):
        encode(pt("float32"), 1e39)
    with pytest.raises(CodecError, match="does not fit a float64"):
        encode(pt("float64", scale=1e-300), 1e300)  # raw overflows to infinity
    with pytest.raises(CodecError, match="scale 0"):
        encode(pt("int16", scale=0), 1.0)


def test_malformed_registers_are_refused() -> None:
    with pytest.raises(CodecError, match="need 2 registers, got 1"):
        decode(pt("float32"), [0x41AC])
    with pytest.raises(CodecError, match="0..65535"):
        decode(pt("uint16"), [0x10000])
    with pytest.raises(CodecError, match="not a finite number"):
        decode(pt("float32"), [0x7FC0, 0x0000])  # a NaN from the device is not a reading


@given(
    type_=st.sampled_from(sorted(INT_RANGE)),
    word=st.sampled_from(ORDERS),
    byte=st.sampled_from(ORDERS),
    scale=st.sampled_from(SCALES),
    offset=st.sampled_from([0.0, -40.0, 273.15]),
    data=st.data(),
)
def test_integer_round_trip_within_half_a_step(
    type_: str, word: str, byte: str, scale: float, offset: float, data: st.DataObject
) -> None:
    point = pt(type_, word_order=word, byte_order=byte, scale=scale, offset=offset)
    low, high = INT_RANGE[type_]
    raw = data.draw(st.integers(low, high)) + data.draw(st.floats(-0.49, 0.49))
    raw = min(max(raw, low), high)
    value = raw * scale + offset
    words = encode(point, value)
    assert len(words) == register_count(point)
    assert all(0 <= w <= 0xFFFF for w in words)
    resolution = abs(scale)
    assert abs(decode(point, words) - value) <= resolution / 2 + 1e-9 * max(1.0, abs(value))


@given(
    type_=st.sampled_from(["float32", "float64"]),
    word=st.sampled_from(ORDERS),
    byte=st.sampled_from(ORDERS),
    scale=st.sampled_from(SCALES),
    value=st.floats(-1e6, 1e6),
)
def test_float_round_trip_within_precision(
    type_: str, word: str, byte: str, scale: float, value: float
) -> None:
    point = pt(type_, word_order=word, byte_order=byte, scale=scale)
    words = encode(point, value)
    assert len(words) == register_count(point)
    # Half an ulp of the raw value; below float32's smallest normal, values flush towards 0.
    relative, tiny = (2.0**-23, 1e-36) if type_ == "float32" else (2.0**-51, 1e-300)
    assert decode(point, words) == pytest.approx(value, rel=relative, abs=tiny)


@given(
    type_=st.sampled_from(["int16", "uint16", "int32", "uint32", "float32", "float64"]),
    word=st.sampled_from(ORDERS),
    byte=st.sampled_from(ORDERS),
    data=st.data(),
)
def test_any_registers_decode_and_encode_back_unchanged(
    type_: str, word: str, byte: str, data: st.DataObject
) -> None:
    point = pt(type_, word_order=word, byte_order=byte)
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4))
    words = (words * 4)[: register_count(point)]
    try:
        value = decode(point, words)
    except CodecError:  # NaN or infinity: not a reading
        assert type_.startswith("float")
        return
    assert encode(point, value) == words


@given(
    type_=st.sampled_from(["int32", "uint32", "float32", "float64"]),
    data=st.data(),
)
def test_orders_are_word_reversal_and_byte_swap(type_: str, data: st.DataObject) -> None:
    big = pt(type_)
    if type_.startswith("float"):
        value = data.draw(st.floats(-1e6, 1e6, width=32))
    else:
        value = data.draw(st.integers(*INT_RANGE[type_]))
    words = encode(big, value)
    assert encode(pt(type_, word_order="little"), value) == words[::-1]
    swapped = [int.from_bytes(struct.pack(">H", w), "little") for w in words]
    assert encode(pt(type_, byte_order="little"), value) == swapped


@given(
    bit=st.integers(0, 15),
    current=st.integers(0, 0xFFFF),
    on=st.booleans(),
)
def test_encode_bit_changes_only_its_bit(bit: int, current: int, on: bool) -> None:
    point = pt("bit", bit=bit)
    word = encode_bit(point, current, 1.0 if on else 0.0)
    assert decode(point, [word]) == (1.0 if on else 0.0)
    assert word & ~(1 << bit) == current & ~(1 << bit)
