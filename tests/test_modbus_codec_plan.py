"""Modbus register codec and poll planning (pure): known vectors, round trips, block limits,
re-planning after an illegal-address answer, register-map checks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.config.modbus import ModbusPoint, ModbusTcpDevice, Planning
from buildingd.drivers.modbus_codec import CodecError, decode, encode, encode_bit
from buildingd.drivers.modbus_plan import check_register_map, plan_reads, split_block


def pt(
    address: int, type_: str = "uint16", table: str = "holding_register", **kw: Any
) -> ModbusPoint:
    return ModbusPoint.model_validate(
        {"id": f"p{address}", "kind": "temperature", "table": table, "address": address,
         "type": type_, **kw}
    )  # fmt: skip


def test_known_vectors() -> None:
    assert encode(pt(0, "float32"), 21.5) == [0x41AC, 0x0000]
    assert encode(pt(0, "int32"), -2) == [0xFFFF, 0xFFFE]
    assert encode(pt(0, "int32", word_order="little"), -2) == [0xFFFE, 0xFFFF]
    assert encode(pt(0, "uint16", byte_order="little"), 0x1234) == [0x3412]
    assert decode(pt(0, "int16", scale=0.1), [0xFF38]) == pytest.approx(-20.0)
    assert decode(pt(0, "uint16", scale=0.1, offset=-40), [650]) == pytest.approx(25.0)
    assert decode(pt(0, "bit", bit=3), [0b1000]) == 1.0
    assert encode_bit(pt(0, "bit", bit=3), 0b0001, 1.0) == 0b1001
    assert decode(pt(0, "bool", table="coil"), [True]) == 1.0
    with pytest.raises(CodecError, match="does not fit"):
        encode(pt(0, "uint16"), 70000)
    with pytest.raises(CodecError, match="does not fit"):
        encode(pt(0, "int16"), -40000)
    with pytest.raises(CodecError):
        encode(pt(0, "float32"), float("nan"))


@given(
    type_=st.sampled_from(["int16", "uint16", "int32", "uint32", "float32", "float64"]),
    word=st.sampled_from(["big", "little"]),
    byte=st.sampled_from(["big", "little"]),
    value=st.floats(min_value=-30, max_value=60, allow_nan=False),
)
def test_encode_then_decode_round_trips(type_: str, word: str, byte: str, value: float) -> None:
    point = pt(0, type_, word_order=word, byte_order=byte, scale=0.01, offset=0.0)
    if type_.startswith("uint") and round(value / 0.01) < 0:
        with pytest.raises(CodecError):
            encode(point, value)
        return
    words = encode(point, value)
    assert all(0 <= w <= 0xFFFF for w in words)
    tolerance = 0.005 + 1e-9 + (1e-5 * abs(value) if type_ == "float32" else 0)  # half a step
    assert decode(point, words) == pytest.approx(value, abs=tolerance)


def test_neighbours_coalesce_within_gap_and_limits() -> None:
    points = [pt(0), pt(1, "float32"), pt(10), pt(40), pt(200, "float64")]
    blocks = plan_reads(points, Planning(max_gap=10, max_registers=125))
    assert [(b.start, b.count) for b in blocks] == [(0, 11), (40, 1), (200, 4)]
    tight = plan_reads([pt(0), pt(100), pt(124), pt(125)], Planning(max_gap=125))
    assert [(b.start, b.count) for b in tight] == [(0, 125), (125, 1)]  # 125-register limit
    # A multi-register point is never split: it starts a new block instead.
    edge = plan_reads([pt(0), pt(123, "float32")], Planning(max_gap=125, max_registers=124))
    assert [(b.start, b.count) for b in edge] == [(0, 1), (123, 2)]
    coils = plan_reads(
        [pt(i, "bool", table="coil") for i in range(0, 2500, 10)], Planning(max_gap=10)
    )
    assert all(b.count <= 2000 for b in coils) and len(coils) == 2
    assert (
        plan_reads([pt(5, table="input_register"), pt(5)], Planning())[0].table.value
        == "input_register"
    )


def test_a_refused_block_splits_down_to_single_points() -> None:
    (block,) = plan_reads([pt(0), pt(2), pt(4), pt(6)], Planning(max_gap=5))
    halves = split_block(block)
    assert [(b.start, b.count) for b in halves] == [(0, 3), (4, 3)]
    quarters = [q for h in halves for q in split_block(h)]
    assert [len(q.points) for q in quarters] == [1, 1, 1, 1]
    assert split_block(quarters[0]) == [quarters[0]]


def test_register_map_checks() -> None:
    switch = {"writable": True, "limits": {"min": 0, "max": 1}}
    rows: list[tuple[str, str, str, int, dict[str, Any]]] = [
        ("a", "temperature", "holding_register", 0, {"type": "float32"}),
        ("b", "humidity", "holding_register", 1, {}),
        ("c", "occupancy", "input_register", 0, {"type": "bit"}),
        ("d1", "light_switch", "holding_register", 9, {"type": "bit", "bit": 0}),
        ("d2", "fan", "holding_register", 9, {"type": "bit", "bit": 1}),
        ("e", "light_switch", "discrete_input", 0, switch),
        ("f", "power", "coil", 3, {"type": "float32"}),
    ]
    points = [{"id": i, "kind": k, "table": t, "address": a, **extra} for i, k, t, a, extra in rows]
    device = ModbusTcpDevice.model_validate(
        {"id": "d", "driver": "modbus-tcp", "connection": {"host": "127.0.0.1"}, "points": points}
    )
    problems = {(path[1], path[2]): msg for path, msg in check_register_map(device)}
    assert "overlaps point 'a'" in problems[(1, "address")]
    assert problems[(2, "bit")] == "type bit needs bit: 0..15"
    assert (3, "address") not in problems and (4, "address") not in problems  # two bits of one word
    assert "cannot be written" in problems[(5, "writable")]
    assert "holds one bit" in problems[(6, "type")]
