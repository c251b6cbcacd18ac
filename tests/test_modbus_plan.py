"""Modbus poll planning and register-map checks (pure): gap bridging, protocol limits, points never
split, re-planning after an illegal-address answer, and the problems ``check`` reports."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildingd.config.modbus import (
    ModbusPoint,
    ModbusRtuDevice,
    ModbusTcpDevice,
    Planning,
    RegisterTable,
    SerialConnection,
)
from buildingd.drivers.checks import check_device
from buildingd.drivers.modbus_codec import BIT_TABLES, register_count
from buildingd.drivers.modbus_plan import (
    Block,
    Refused,
    WireCost,
    describe_plan,
    plan_cost,
    plan_reads,
    split_block,
)


def pt(
    address: int, type_: str = "uint16", table: str = "holding_register", **kw: Any
) -> ModbusPoint:
    data = {"id": f"p{address}", "kind": "temperature", "table": table, "address": address}
    return ModbusPoint.model_validate({**data, "type": type_, **kw})


def spans(blocks: list[Block]) -> list[tuple[int, int]]:
    return [(b.start, b.count) for b in blocks]


def test_a_gap_up_to_max_gap_is_read_through() -> None:
    assert spans(plan_reads([pt(0), pt(4)], Planning(max_gap=3))) == [(0, 5)]  # 3 unused: bridged
    assert spans(plan_reads([pt(0), pt(5)], Planning(max_gap=3))) == [(0, 1), (5, 1)]
    assert spans(plan_reads([pt(0), pt(1)], Planning(max_gap=0))) == [(0, 2)]  # adjacent
    assert spans(plan_reads([pt(0), pt(2)], Planning(max_gap=0))) == [(0, 1), (2, 1)]
    # The gap counts from the end of a wide point, not its start.
    assert spans(plan_reads([pt(0, "float64"), pt(6)], Planning(max_gap=2))) == [(0, 7)]


def test_blocks_respect_max_registers() -> None:
    points = [pt(a) for a in range(130)]
    assert spans(plan_reads(points, Planning(max_gap=0))) == [(0, 125), (125, 5)]
    ten = plan_reads(points[:25], Planning(max_registers=10))
    assert spans(ten) == [(0, 10), (10, 10), (20, 5)]
    far = plan_reads([pt(0), pt(100), pt(124), pt(125)], Planning(max_gap=125))
    assert spans(far) == [(0, 125), (125, 1)]


def test_a_multi_register_point_is_never_split() -> None:
    # The float32 at 124-125 would cross the 125-register limit: it starts the next block.
    assert spans(plan_reads([pt(0), pt(124, "float32")], Planning(max_gap=125))) == [
        (0, 1),
        (124, 2),
    ]
    # A float64 wider than max_registers still goes out whole, alone in its block.
    blocks = plan_reads([pt(0), pt(1, "float64"), pt(5)], Planning(max_registers=2))
    assert spans(blocks) == [(0, 1), (1, 4), (5, 1)]


def test_coils_and_discrete_inputs_use_the_2000_bit_limit() -> None:
    coils = [pt(a, "bool", table="coil") for a in range(2500)]
    assert spans(plan_reads(coils, Planning(max_gap=0))) == [(0, 2000), (2000, 500)]
    inputs = [pt(a, "bool", table="discrete_input") for a in range(300)]
    (block,) = plan_reads(inputs, Planning(max_gap=0, max_registers=125, max_bits=2000))
    assert block.count == 300  # the register limit does not apply to bits
    assert spans(plan_reads(coils[:50], Planning(max_gap=0, max_bits=20))) == [
        (0, 20),
        (20, 20),
        (40, 10),
    ]


def test_each_table_is_planned_on_its_own() -> None:
    blocks = plan_reads(
        [pt(5), pt(5, table="input_register", id="in5"), pt(6, "bool", table="coil")], Planning()
    )
    assert sorted((b.table.value, b.start, b.count) for b in blocks) == [
        ("coil", 6, 1),
        ("holding_register", 5, 1),
        ("input_register", 5, 1),
    ]


def test_bits_of_one_register_share_one_read() -> None:
    points = [pt(9, "bit", bit=0, id="a"), pt(9, "bit", bit=7, id="b"), pt(10, id="c")]
    (block,) = plan_reads(points, Planning(max_gap=0))
    assert (block.start, block.count) == (9, 2)
    assert [p.id for p in block.points] == ["a", "b", "c"]


def test_a_refused_block_splits_at_point_boundaries_down_to_single_points() -> None:
    points = [pt(0), pt(2, "float32"), pt(4), pt(6, "float64"), pt(20)]
    (block,) = plan_reads(points, Planning(max_gap=15))
    assert (block.start, block.count) == (0, 21)
    pending, singles = [block], []
    while pending:
        current = pending.pop()
        parts = split_block(current)
        if parts == [current]:
            singles.append(current)
            continue
        assert len(parts) > 1 and sum(len(p.points) for p in parts) == len(current.points)
        assert all(p.count < current.count for p in parts)
        pending.extend(parts)
    assert sorted(spans(singles)) == [(0, 1), (2, 2), (4, 1), (6, 4), (20, 1)]  # points intact
    halves = split_block(block)
    assert spans(halves) == [(0, 4), (4, 17)]


def test_describe_plan_names_table_range_count_and_points() -> None:
    blocks = plan_reads([pt(0), pt(1, "float32"), pt(3, "bool", table="coil")], Planning())
    assert describe_plan(blocks) == [
        "read coil 3-3 (1): p3",
        "read holding_register 0-2 (3): p0, p1",
    ]


TABLES = ["coil", "discrete_input", "input_register", "holding_register"]
WIDE = ["uint16", "int32", "float32", "float64"]


@st.composite
def point_sets(draw: st.DrawFn) -> list[ModbusPoint]:
    points = []
    for i in range(draw(st.integers(1, 40))):
        table = draw(st.sampled_from(TABLES))
        type_ = "bool" if table in ("coil", "discrete_input") else draw(st.sampled_from(WIDE))
        address = draw(st.integers(0, 3000))
        points.append(
            ModbusPoint.model_validate(
                {"id": f"p{i}", "kind": "power", "table": table, "address": address, "type": type_}
            )  # fmt: skip
        )
    return points


@given(
    points=point_sets(),
    max_gap=st.none() | st.integers(0, 125),
    max_registers=st.integers(4, 125),
    max_bits=st.integers(1, 2000),
)
def test_plan_covers_every_point_once_within_the_limits(
    points: list[ModbusPoint], max_gap: int | None, max_registers: int, max_bits: int
) -> None:
    planning = Planning(max_gap=max_gap, max_registers=max_registers, max_bits=max_bits)
    blocks = plan_reads(points, planning)
    planned = [p.id for b in blocks for p in b.points]
    assert sorted(planned) == sorted(p.id for p in points)
    for block in blocks:
        limit = max_bits if block.table in BIT_TABLES else max_registers
        assert block.count <= limit
        for point in block.points:
            assert point.table is block.table
            first = point.address - block.start
            assert first >= 0 and first + register_count(point) <= block.count
    for block in blocks:  # nothing is read twice, unless overlapping points pass the limit
        limit = max_bits if block.table in BIT_TABLES else max_registers
        later = [b for b in blocks if b.table is block.table and b.start > block.start]
        for b in later:
            together = max(b.start + b.count, block.start + block.count) - block.start
            assert b.start >= block.start + block.count or together > limit


HR = RegisterTable.HOLDING_REGISTER
TCP = WireCost.tcp(0.002)


def test_by_cost_on_tcp_every_gap_within_the_limit_is_bridged() -> None:
    # As few requests as the 125-register limit allows (4), then the fewest registers.
    points = [pt(a) for a in (0, 124, 125, 249, 250, 600, 700)]
    assert spans(plan_reads(points, Planning())) == [(0, 1), (124, 2), (249, 2), (600, 101)]
    assert len(plan_reads(points, Planning(max_gap=10))) == 5  # the gap rule


def test_by_cost_on_rtu_a_gap_is_bridged_while_it_costs_less_than_a_request() -> None:
    # 9,600 baud 8E1: 11 bits a character, a register 2.3 ms, a request 13 characters, two
    # silences of 3.5 characters and a 5 ms turnaround: 27.9 ms, worth 12 registers.
    rtu = WireCost.rtu(SerialConnection(port="/dev/ttyUSB0", baudrate=9600), turnaround_s=0.005)
    assert rtu.request_s == pytest.approx(0.0279, abs=0.0001)
    assert spans(plan_reads([pt(0), pt(12)], Planning(), rtu)) == [(0, 13)]  # 11 bridged
    assert spans(plan_reads([pt(0), pt(14)], Planning(), rtu)) == [(0, 1), (14, 1)]
    fast = WireCost.rtu(SerialConnection(port="/dev/ttyUSB0", baudrate=115200), 0.005)
    # 115,200 baud: a register 0.19 ms, a request 9.7 ms (the 1.75 ms silences, the turnaround).
    assert spans(plan_reads([pt(0), pt(40)], Planning(), fast)) == [(0, 41)]
    assert spans(plan_reads([pt(0), pt(60)], Planning(), fast)) == [(0, 1), (60, 1)]


def test_refused_ranges_are_planned_around_with_the_fewest_requests() -> None:
    points = [pt(a) for a in (0, 1, 2, 3, 10, 11)]
    hole = Refused(HR, 5, 7)  # registers 5-6 do not exist
    assert spans(plan_reads(points, Planning(), TCP, [hole])) == [(0, 4), (10, 2)]
    refused_point = Refused(HR, 2, 3)  # point p2 itself is refused: read alone
    plan = plan_reads(points, Planning(), TCP, [refused_point])
    assert spans(plan) == [(0, 2), (2, 1), (3, 9)]
    cut = Refused(HR, 10, 10)  # no read across 9/10
    assert spans(plan_reads(points, Planning(), TCP, [cut])) == [(0, 4), (10, 2)]


def brute_force(
    points: list[ModbusPoint], limit: int, cost: WireCost, refused: list[Refused]
) -> float:
    """The cheapest set partition of the points into requests (any grouping, not only runs of
    neighbours): what no planner can beat."""

    def partitions(items: list[ModbusPoint]) -> Any:
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for part in partitions(rest):
            yield [[first], *part]
            for i in range(len(part)):
                yield [*part[:i], [first, *part[i]], *part[i + 1 :]]

    best = float("inf")
    for groups in partitions(points):
        total = 0.0
        for group in groups:
            start = min(p.address for p in group)
            end = max(p.address + register_count(p) for p in group)
            if len(group) > 1 and (
                end - start > limit or any(r.forbids(HR, start, end) for r in refused)
            ):
                break
            total += cost.of(HR, end - start)
        else:
            best = min(best, total)
    return best


@st.composite
def small_maps(draw: st.DrawFn) -> list[ModbusPoint]:
    """Up to 7 holding-register points that do not overlap, over 0..300."""
    points: list[ModbusPoint] = []
    used: set[int] = set()
    for i in range(draw(st.integers(1, 7))):
        type_ = draw(st.sampled_from(["uint16", "float32", "float64"]))
        address = draw(st.integers(0, 300))
        span = set(range(address, address + {"uint16": 1, "float32": 2}.get(type_, 4)))
        if span & used:
            continue
        used |= span
        points.append(pt(address, type_, id=f"p{i}"))
    return points


@settings(max_examples=300, deadline=None)
@given(
    points=small_maps(),
    limit=st.integers(4, 125),
    request_s=st.floats(0.0001, 0.05),
    register_s=st.floats(0, 0.005),
    refused=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 6)), max_size=3),
)
def test_the_plan_by_cost_is_optimal_against_brute_force(
    points: list[ModbusPoint],
    limit: int,
    request_s: float,
    register_s: float,
    refused: list[tuple[int, int]],
) -> None:
    cost = WireCost(request_s, register_s, register_s / 16)
    ranges = [Refused(HR, start, start + width) for start, width in refused]
    blocks = plan_reads(points, Planning(max_registers=limit), cost, ranges)
    assert plan_cost(blocks, cost) == pytest.approx(brute_force(points, limit, cost, ranges))
    assert sorted(p.id for b in blocks for p in b.points) == sorted(p.id for p in points)
    for block in blocks:  # every point whole in its block; limits and refusals respected
        assert all(b.start <= p.address and p.address + register_count(p) <= b.start + b.count
                   for b in [block] for p in block.points)  # fmt: skip
        if len(block.points) > 1:
            assert block.count <= limit
            assert not any(r.forbids(HR, block.start, block.start + block.count) for r in ranges)


def device(points: list[dict[str, Any]], driver: str = "modbus-tcp") -> Any:
    connection = {"host": "127.0.0.1"} if driver == "modbus-tcp" else {"port": "/dev/ttyUSB0"}
    model = ModbusTcpDevice if driver == "modbus-tcp" else ModbusRtuDevice
    return model.model_validate(
        {"id": "dev", "driver": driver, "connection": connection, "points": points}
    )


def row(id_: str, table: str, address: int, **kw: Any) -> dict[str, Any]:
    return {"id": id_, "kind": "power", "table": table, "address": address, **kw}


SWITCH = {"kind": "light_switch", "writable": True, "limits": {"min": 0, "max": 1}}


@pytest.mark.parametrize("driver", ["modbus-tcp", "modbus-rtu"])
def test_a_clean_register_map_has_no_problems(driver: str) -> None:
    points = [
        row("t", "input_register", 0, type="float32"),
        row("h", "input_register", 2),
        row("a", "holding_register", 9, type="bit", bit=0),
        row("b", "holding_register", 9, type="bit", bit=1),
        row("relay", "coil", 0, **SWITCH),
        row("end", "holding_register", 65532, type="float64"),  # 65532-65535: the last one
    ]
    assert check_device(device(points, driver)) == []


@pytest.mark.parametrize("driver", ["modbus-tcp", "modbus-rtu"])
def test_register_map_problems_are_reported_at_the_point(driver: str) -> None:
    points = [
        row("a", "holding_register", 0, type="float32"),  # 0
        row("b", "holding_register", 1),  # 1: inside a
        row("c", "input_register", 0, type="bit"),  # 2: no bit
        row("d", "input_register", 1, bit=4),  # 3: bit on a uint16
        row("e", "discrete_input", 0, **SWITCH),  # 4: read-only table
        row("f", "input_register", 5, **SWITCH),  # 5: read-only table
        row("g", "coil", 3, type="float32"),  # 6: 32 bits on a coil
        row("h", "discrete_input", 4, type="float64"),  # 7
        row("i", "holding_register", 65535, type="int32"),  # 8: 65535-65536
        row("j", "coil", 4, type="int16"),  # 9
    ]
    problems = {path: message for path, message in check_device(device(points, driver))}
    assert problems[("points", 1, "address")] == "overlaps point 'a' at holding_register 1"
    assert problems[("points", 2, "bit")] == "type bit needs bit: 0..15"
    assert problems[("points", 3, "bit")] == "bit is only for type: bit"
    assert problems[("points", 4, "writable")] == "a discrete_input cannot be written"
    assert problems[("points", 5, "writable")] == "a input_register cannot be written"
    assert problems[("points", 6, "type")] == "a coil holds one bit, not a float32"
    assert problems[("points", 7, "type")] == "a discrete_input holds one bit, not a float64"
    assert problems[("points", 8, "address")] == "runs past address 65535"
    assert len(problems) == 8  # an int16 on a coil reads as a bit: fine (the type defaults)


def test_the_same_bit_twice_is_an_overlap_even_among_other_bits() -> None:
    points = [
        row("a", "holding_register", 9, type="bit", bit=0),
        row("b", "holding_register", 9, type="bit", bit=1),
        row("c", "holding_register", 9, type="bit", bit=0),
        row("w", "holding_register", 9),  # a whole word over the bits
    ]
    problems = check_device(device(points))
    assert problems == [
        (("points", 2, "address"), "overlaps point 'a' at holding_register 9"),
        (("points", 3, "address"), "overlaps point 'a' at holding_register 9"),
    ]


def test_an_overlap_is_reported_once_and_against_every_address() -> None:
    points = [
        row("a", "holding_register", 0),
        row("b", "holding_register", 0, type="float64"),  # 0-3: clashes with a at 0
        row("c", "holding_register", 3),  # inside b, past the first clash
    ]
    assert check_device(device(points)) == [
        (("points", 1, "address"), "overlaps point 'a' at holding_register 0"),
        (("points", 2, "address"), "overlaps point 'b' at holding_register 3"),
    ]


def test_same_address_in_different_tables_is_no_overlap() -> None:
    points = [row("hr", "holding_register", 0), row("ir", "input_register", 0)]
    points += [row("co", "coil", 0, type="bool"), row("di", "discrete_input", 0, type="bool")]
    assert check_device(device(points)) == []


def test_bit_type_on_a_coil_and_scale_zero_are_reported() -> None:
    points = [row("c", "coil", 0, type="bit", bit=2), row("z", "holding_register", 0, scale=0)]
    problems = dict(check_device(device(points)))
    assert problems[("points", 0, "type")] == "a coil holds one bit, not a bit"
    assert problems[("points", 1, "scale")] == "scale 0 makes every reading the offset"
