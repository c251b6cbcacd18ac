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
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: RegisterTable
    start: int
    count: int
    points: tuple[ModbusPoint, ...]

    def describe(self) -> str:
        ids = ", ".join(p.id for p in self.points)
        last = self.start + self.count - 1
        return f"{self.table.value} {self.start}-{last} ({self.count}): {ids}"


def plan_reads(points: Iterable[ModbusPoint], planning: Planning) -> list[Block]:
    """Read requests covering every point: per table by address, neighbours coalesced.

    A point wider than the limit (a float64 with ``max_registers`` below 4) gets a block of its
    own rather than being split.
    """
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
    """One line per request: table, address range, count and the point ids it serves."""
    return [f"read {b.describe()}" for b in blocks]


def check_register_map(device: ModbusDeviceBase) -> list[Problem]:
    """Register-map mistakes the schema cannot see alone, keyed ``("points", i, field)``."""
    problems: list[Problem] = []
    # Every point already seen at each (table, address): several ``bit`` points share a register.
    used: dict[tuple[RegisterTable, int], list[ModbusPoint]] = {}
    for i, point in enumerate(device.points):
        where: tuple[str | int, ...] = ("points", i)
        if point.type is DataType.BIT and point.bit is None:
            problems.append(((*where, "bit"), "type bit needs bit: 0..15"))
        if point.bit is not None and point.type is not DataType.BIT:
            problems.append(((*where, "bit"), "bit is only for type: bit"))
        if point.table in BIT_TABLES and (WIDTH[point.type] > 1 or point.type is DataType.BIT):
            problems.append(
                ((*where, "type"), f"a {point.table.value} holds one bit, not a {point.type.value}")
            )
        if point.writable and point.table in READ_ONLY_TABLES:
            problems.append(((*where, "writable"), f"a {point.table.value} cannot be written"))
        if point.scale == 0:
            problems.append(((*where, "scale"), "scale 0 makes every reading the offset"))
        if point.address + register_count(point) > 65536:
            problems.append(((*where, "address"), "runs past address 65535"))
        clashes: list[tuple[int, ModbusPoint]] = []
        for address in range(point.address, point.address + register_count(point)):
            others = used.setdefault((point.table, address), [])
            clashes += [(address, o) for o in others if not _bits_apart(point, o)]
            others.append(point)  # every address: a later point may overlap this one anywhere
        if clashes:
            address, clash = clashes[0]
            message = f"overlaps point {clash.id!r} at {point.table.value} {address}"
            problems.append(((*where, "address"), message))
    return problems


def _bits_apart(a: ModbusPoint, b: ModbusPoint) -> bool:
    """Two points may share a register only as different bits of it."""
    return a.type is DataType.BIT and b.type is DataType.BIT and a.bit != b.bit


@register_check("modbus-tcp")
@register_check("modbus-rtu")
def _check(device: DeviceSpec) -> list[Problem]:
    return check_register_map(device) if isinstance(device, ModbusDeviceBase) else []
