"""Modbus poll planning and register-map checks (pure).

A device's points are read in as few requests as possible: per table, neighbouring addresses are
coalesced into one block while the gap between them is at most ``max_gap`` and the block stays
within the protocol limits (Modbus Application Protocol v1.1b3, sections 6.1-6.4: 2,000 coils or
discrete inputs, 125 registers per read). A point is never split across blocks. A block the
device refuses (exception 02, illegal data address: often a hole in its map) is split and read in
smaller pieces, down to one point per request, so the good points keep being read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from buildingd.config.devices import DeviceSpec
from buildingd.config.modbus import DataType, ModbusDeviceBase, ModbusPoint, Planning, RegisterTable
from buildingd.drivers.checks import Problem, register_check
from buildingd.drivers.modbus_codec import BIT_TABLES, WIDTH, register_count

READ_ONLY_TABLES = (RegisterTable.DISCRETE_INPUT, RegisterTable.INPUT_REGISTER)


@dataclass(frozen=True)
class Block:
    table: RegisterTable
    start: int
    count: int
    points: tuple[ModbusPoint, ...]

    def describe(self) -> str:
        ids = ", ".join(p.id for p in self.points)
        return (
            f"{self.table.value} {self.start}-{self.start + self.count - 1} ({self.count}): {ids}"
        )


def plan_reads(points: Iterable[ModbusPoint], planning: Planning) -> list[Block]:
    by_table: dict[RegisterTable, list[ModbusPoint]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    blocks: list[Block] = []
    for table in RegisterTable:
        members = sorted(by_table.get(table, []), key=lambda p: p.address)
        limit = planning.max_bits if table in BIT_TABLES else planning.max_registers
        current: list[ModbusPoint] = []
        start = end = 0  # end: one past the last address in the block
        for point in members:
            p_end = point.address + register_count(point)
            if (
                current
                and point.address - end <= planning.max_gap
                and max(end, p_end) - start <= limit
            ):
                current.append(point)
                end = max(end, p_end)
                continue
            if current:
                blocks.append(Block(table, start, end - start, tuple(current)))
            current, start, end = [point], point.address, p_end
        if current:
            blocks.append(Block(table, start, end - start, tuple(current)))
    return blocks


def split_block(block: Block) -> list[Block]:
    """Two smaller blocks at a point boundary (one point: nothing left to split)."""
    if len(block.points) <= 1:
        return [block]
    half = len(block.points) // 2
    return [_span(block.table, block.points[:half]), _span(block.table, block.points[half:])]


def _span(table: RegisterTable, points: Sequence[ModbusPoint]) -> Block:
    start = min(p.address for p in points)
    end = max(p.address + register_count(p) for p in points)
    return Block(table, start, end - start, tuple(points))


def describe_plan(blocks: Sequence[Block]) -> list[str]:
    return [f"read {b.describe()}" for b in blocks]


def check_register_map(device: ModbusDeviceBase) -> list[Problem]:
    problems: list[Problem] = []
    used: dict[tuple[RegisterTable, int], tuple[int, ModbusPoint]] = {}
    for i, point in enumerate(device.points):
        where: tuple[str | int, ...] = ("points", i)
        if point.type is DataType.BIT and point.bit is None:
            problems.append(((*where, "bit"), "type bit needs bit: 0..15"))
        if point.bit is not None and point.type is not DataType.BIT:
            problems.append(((*where, "bit"), "bit is only for type: bit"))
        if point.table in BIT_TABLES and WIDTH[point.type] > 1:
            problems.append(
                ((*where, "type"), f"a {point.table.value} holds one bit, not a {point.type.value}")
            )
        if point.writable and point.table in READ_ONLY_TABLES:
            problems.append(((*where, "writable"), f"a {point.table.value} cannot be written"))
        if point.address + register_count(point) > 65536:
            problems.append(((*where, "address"), "runs past address 65535"))
        for address in range(point.address, point.address + register_count(point)):
            other = used.get((point.table, address))
            if other is not None and not (
                point.type is DataType.BIT
                and other[1].type is DataType.BIT
                and point.bit != other[1].bit
            ):
                problems.append(
                    (
                        (*where, "address"),
                        f"overlaps point {other[1].id!r} at {point.table.value} {address}",
                    )
                )
                break
            used[(point.table, address)] = (i, point)
    return problems


@register_check("modbus-tcp")
@register_check("modbus-rtu")
def _check(device: DeviceSpec) -> list[Problem]:
    assert isinstance(device, ModbusDeviceBase)
    return check_register_map(device)
