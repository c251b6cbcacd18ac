"""Modbus poll planning and register-map checks (pure).

A device's points are read in the requests that take the least time on the wire: per table, the
points (sorted by address) are cut into blocks by dynamic programming over the cost of each
block for the transport (``WireCost``: a fixed cost per request plus a cost per register or bit
carried), within the protocol limits (Modbus Application Protocol v1.1b3, sections 6.1-6.4:
2,000 coils or discrete inputs, 125 registers per read) and never across a range the device
refused. A point is never split across blocks. ``max_gap`` overrides this with the older rule:
bridge gaps of at most that many registers. A block the device refuses (exception 02, illegal
data address) is split and read in smaller pieces, down to one point per request, and what
the pieces tell (which range was refused) is learned and planned around.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from buildingd.config.devices import DeviceSpec
from buildingd.config.modbus import (
    DataType,
    ModbusDeviceBase,
    ModbusPoint,
    ModbusRtuDevice,
    Planning,
    RegisterTable,
    SerialConnection,
)
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

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True)
class Refused:
    """A range ``[start, end)`` of a table the device refused to read (exception 02): no block
    may overlap it, except a block of the one point it is (a point is always read, alone if it
    must). ``start == end`` is a cut: no block may hold both ``start - 1`` and ``start``."""

    table: RegisterTable
    start: int
    end: int

    def forbids(self, table: RegisterTable, start: int, end: int) -> bool:
        """Whether a block of ``table`` over ``[start, end)`` may not be read."""
        if table is not self.table:
            return False
        if self.start == self.end:  # a cut
            return start < self.start < end
        return start < self.end and end > self.start


@dataclass(frozen=True)
class WireCost:
    """Seconds one read request takes on the wire: ``request_s`` whatever it carries, plus
    ``register_s`` per register (``bit_s`` per coil or discrete input) in the answer."""

    request_s: float
    register_s: float
    bit_s: float

    def of(self, table: RegisterTable, count: int) -> float:
        return self.request_s + count * (self.bit_s if table in BIT_TABLES else self.register_s)

    @classmethod
    def tcp(cls, round_trip_s: float) -> WireCost:
        """Modbus TCP: a request costs a round trip; a register 16 bits at 100 Mbit/s (nothing,
        next to it: bridging any gap within the limits beats another request)."""
        return cls(round_trip_s, 16 / 100e6, 1 / 100e6)

    @classmethod
    def rtu(cls, serial: SerialConnection, turnaround_s: float) -> WireCost:
        """Modbus RTU (Modbus over Serial Line v1.02, 2.5.1): a character is a start bit, the
        data bits, the parity bit if any and the stop bits; a read request is 8 characters, its
        answer 5 plus the data; each frame is followed by 3.5 characters of silence (1.75 ms
        above 19,200 baud); the device takes ``turnaround_s`` to answer."""
        bits = 1 + serial.bytesize + (serial.parity != "N") + serial.stopbits
        char_s = bits / serial.baudrate
        gap_s = 0.00175 if serial.baudrate > 19200 else 3.5 * char_s
        return cls((8 + 5) * char_s + 2 * gap_s + turnaround_s, 2 * char_s, char_s / 8)


def wire_cost(device: ModbusDeviceBase) -> WireCost:
    if isinstance(device, ModbusRtuDevice):
        return WireCost.rtu(device.connection, device.planning.turnaround_s)
    return WireCost.tcp(device.planning.round_trip_s)


def plan_cost(blocks: Sequence[Block], cost: WireCost) -> float:
    """Seconds on the wire of one poll following ``blocks``."""
    return sum(cost.of(b.table, b.count) for b in blocks)


def plan_reads(
    points: Iterable[ModbusPoint],
    planning: Planning,
    cost: WireCost | None = None,
    refused: Iterable[Refused] = (),
) -> list[Block]:
    """Read requests covering every point, per table.

    By cost (the default, ``max_gap`` unset): the plan with the least time on the wire under
    ``cost`` (TCP's when not given) that respects the limits and the ``refused`` ranges. With
    ``max_gap``: neighbours coalesced while the gap is at most ``max_gap``. Either way a point
    wider than the limit (a float64 with ``max_registers`` below 4) gets a block of its own
    rather than being split.
    """
    by_table: dict[RegisterTable, list[ModbusPoint]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    refusals = tuple(refused)
    blocks: list[Block] = []
    for table in RegisterTable:
        members = sorted(by_table.get(table, []), key=lambda p: p.address)
        limit = planning.max_bits if table in BIT_TABLES else planning.max_registers
        if planning.max_gap is None:
            blocks += _optimal(table, atoms(members, limit), limit,
                               cost or WireCost.tcp(planning.round_trip_s), refusals)  # fmt: skip
            continue
        max_gap = planning.max_gap
        current: list[ModbusPoint] = []
        start = end = 0  # end: one past the last address in the block
        for point in members:
            p_end = point.address + register_count(point)
            if current and point.address - end <= max_gap and max(end, p_end) - start <= limit:
                current.append(point)
                end = max(end, p_end)
                continue
            if current:
                blocks.append(Block(table, start, end - start, tuple(current)))
            current, start, end = [point], point.address, p_end
        if current:
            blocks.append(Block(table, start, end - start, tuple(current)))
    return blocks


def atoms(
    members: Sequence[ModbusPoint], limit: int
) -> list[tuple[int, int, tuple[ModbusPoint, ...]]]:
    """Points sorted by address grouped where they overlap (bits of one register): ``(start,
    end, points)``; a block holds an atom whole or not at all. Overlapping points that together
    pass the request ``limit`` stay apart (their shared registers are then read twice)."""
    atoms: list[tuple[int, int, tuple[ModbusPoint, ...]]] = []
    for point in members:
        end = point.address + register_count(point)
        if (
            atoms
            and point.address < atoms[-1][1]
            and max(atoms[-1][1], end) - atoms[-1][0] <= limit
        ):
            start, last_end, group = atoms[-1]
            atoms[-1] = (start, max(last_end, end), (*group, point))
        else:
            atoms.append((point.address, end, (point,)))
    return atoms


def _optimal(
    table: RegisterTable,
    atoms: Sequence[tuple[int, int, tuple[ModbusPoint, ...]]],
    limit: int,
    cost: WireCost,
    refused: Sequence[Refused],
) -> list[Block]:
    """Cut the sorted atoms into consecutive blocks of least total cost (dynamic programming:
    ``best[j]``, the cheapest plan of the first ``j`` atoms, is the cheapest ``best[i]`` plus
    one block of atoms ``i..j-1``). A block of several atoms must fit the limit and overlap no
    refused range; a single atom always goes (alone if nothing else can join it). Consecutive
    blocks lose nothing: a block spans every atom between its first and last anyway."""
    refusals = [r for r in refused if r.table is table]
    n = len(atoms)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        end = atoms[j - 1][1]
        for i in range(j - 1, -1, -1):
            start = atoms[i][0]
            if i < j - 1 and (
                end - start > limit or any(r.forbids(table, start, end) for r in refusals)
            ):
                break  # a wider block (smaller i) only adds registers and refused ranges
            total = best[i] + cost.of(table, end - start)
            # Ties (to float rounding) keep the shortest last block: earlier blocks fill up.
            if total < best[j] - 1e-12:
                best[j], cut[j] = total, i
    blocks: list[Block] = []
    j = n
    while j > 0:
        i = cut[j]
        members = tuple(p for atom in atoms[i:j] for p in atom[2])
        blocks.append(Block(table, atoms[i][0], atoms[j - 1][1] - atoms[i][0], members))
        j = i
    return blocks[::-1]


def refused_between(parts: Sequence[Block]) -> Refused:
    """A block was refused but each of its ``parts`` was read: the device refuses what lies
    between them (a hole in its map, or, when they touch, a boundary it will not read across)."""
    return Refused(parts[0].table, parts[0].end, parts[-1].start)


def refused_point(block: Block) -> Refused:
    """A block of one point (or of the bits of one register) was refused: that range."""
    return Refused(block.table, block.start, block.end)


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


def describe_plan(
    blocks: Sequence[Block],
    cost: WireCost | None = None,
    points: Sequence[ModbusPoint] | None = None,
) -> list[str]:
    """One line per request: table, address range, count and the point ids it serves; with
    ``cost``, a last line with the poll's time on the wire against one request per point."""
    lines = [f"read {b.describe()}" for b in blocks]
    if cost is not None and points:
        one_each = [Block(p.table, p.address, register_count(p), (p,)) for p in points]
        planned_ms, each_ms = plan_cost(blocks, cost) * 1000, plan_cost(one_each, cost) * 1000
        lines.append(
            f"{_requests(len(blocks))}, {planned_ms:.1f} ms on the wire per poll; "
            f"one request per point: {_requests(len(one_each))}, {each_ms:.1f} ms"
        )
    return lines


def _requests(n: int) -> str:
    return f"{n} request{'s' if n != 1 else ''}"


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
