"""Modbus poll efficiency (JSON on stdout): one device of 1,000 points scattered at random (fixed
seed) over the first ``SPAN`` holding and input registers, in mixed widths (int16/uint16, 32-bit
and float64 values), served by a real pymodbus server on 127.0.0.1. Polled with buildingd's block
plan and, in the same run against the same server, with the baseline of one request per point:
registers read per second and requests per poll cycle, every value checked. Also the wire time
the same polls would take on a 9,600-baud RTU line, computed from the frame sizes (Modbus over
Serial Line v1.02: 11 bits per character, 3.5 characters of silence per frame).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildingd.clock import ScaledClock
from buildingd.config.modbus import ModbusTcpDevice, RegisterTable
from buildingd.drivers.base import DriverContext, SharedResources
from buildingd.drivers.modbus import ModbusDriver
from buildingd.drivers.modbus_codec import decode, encode, register_count
from tests.conftest import free_port

POINTS = 1000
SPAN = 5000  # registers of each table the points are scattered over
SEED = 20260112
# Type mix of a building controller's map: mostly 16-bit values, a good share of 32-bit ones.
TYPES = {"int16": 30, "uint16": 20, "int32": 10, "uint32": 10, "float32": 25, "float64": 5}
# Timed polls per round (after one warm-up poll each), in ROUNDS interleaved rounds.
POLLS = {"planned": 8, "baseline_one_request_per_point": 1}
ROUNDS = 6
BAUD = 9600
FUNCTION = {RegisterTable.HOLDING_REGISTER: 3, RegisterTable.INPUT_REGISTER: 4}


def scattered_points(rng: random.Random) -> list[dict[str, Any]]:
    """``POINTS`` non-overlapping points at random addresses, each with the value it holds."""
    used: dict[str, set[int]] = {"holding_register": set(), "input_register": set()}
    types, weights = list(TYPES), list(TYPES.values())
    points: list[dict[str, Any]] = []
    while len(points) < POINTS:
        table = rng.choice(list(used))
        type_ = rng.choices(types, weights)[0]
        width = {"float64": 4}.get(type_, 2 if type_[-2:] == "32" else 1)
        address = rng.randrange(SPAN - width + 1)
        span = set(range(address, address + width))
        if span & used[table]:
            continue
        used[table] |= span
        scale = 0.1 if type_ in ("int16", "uint16") else 1.0
        value = round(rng.uniform(0 if type_[0] == "u" else -300, 300), 1)
        points.append(
            {"id": f"p{len(points)}", "kind": "temperature", "table": table, "address": address,
             "type": type_, "scale": scale, "value": value}
        )  # fmt: skip
    return points


def device(port: int, points: list[dict[str, Any]], planning: dict[str, int]) -> Any:
    return ModbusTcpDevice.model_validate({
        "id": "bench", "driver": "modbus-tcp", "connection": {"host": "127.0.0.1", "port": port},
        "timeout_s": 5, "planning": planning,
        "points": [{k: v for k, v in p.items() if k != "value"} for p in points],
    })  # fmt: skip


async def serve(port: int) -> Any:
    """A plain pymodbus device: holding and input registers 0..SPAN-1, all readable."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    def block(kind: DataType, count: int, value: Any) -> list[Any]:
        return [SimData(0, count=count, values=value, datatype=kind)]

    simdata = (
        block(DataType.BITS, 1, False),
        block(DataType.BITS, 1, False),
        block(DataType.REGISTERS, SPAN, 0),
        block(DataType.REGISTERS, SPAN, 0),
    )
    server = ModbusTcpServer([SimDevice(id=1, simdata=simdata)], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server


def rtu_seconds(blocks: list[int]) -> float:
    """Wire time of one poll: request 8 bytes, response 5 + 2n bytes, 3.5 chars gap each."""
    chars = sum(8 + 3.5 + 5 + 2 * n + 3.5 for n in blocks)
    return chars * 11 / BAUD


async def measure(
    specs: dict[str, ModbusTcpDevice], ctx: DriverContext, expected: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Polls of each variant, interleaved in rounds so that a busy machine slows both alike."""
    drivers = {name: ModbusDriver(spec, ctx) for name, spec in specs.items()}
    elapsed = dict.fromkeys(specs, 0.0)
    for driver in drivers.values():
        await driver.open()
        await driver.read()  # warm-up: connected, plan settled
        driver.requests = 0
    for _ in range(ROUNDS):
        for name, driver in drivers.items():
            t0 = time.perf_counter()
            for _ in range(POLLS[name]):
                values = await driver.read()
                assert {k: s.value for k, s in values.items()} == expected, "a value read wrong"
            elapsed[name] += time.perf_counter() - t0
    out: dict[str, dict[str, float]] = {}
    for name, driver in drivers.items():
        polls, spec = POLLS[name] * ROUNDS, specs[name]
        point_registers = sum(register_count(p) for p in spec.points)
        out[name] = {
            "requests_per_poll": driver.requests / polls,
            "registers_per_poll_on_the_wire": sum(b.count for b in driver.plan),  # gaps too
            "poll_s_tcp": elapsed[name] / polls,
            "registers_read_per_s_tcp": point_registers * polls / elapsed[name],  # of points
            "points_per_s_tcp": len(spec.points) * polls / elapsed[name],
            "rtu_9600_s_per_poll": rtu_seconds([b.count for b in driver.plan]),
        }
    return out


async def main_async() -> dict[str, object]:
    points = scattered_points(random.Random(SEED))
    start = datetime(2026, 1, 12, 8, tzinfo=UTC)
    ctx = DriverContext(clock=ScaledClock(start, 1.0), resources=SharedResources())
    port = free_port()
    server = await serve(port)
    served = device(port, points, {"max_gap": 0, "max_registers": 1})
    expected: dict[str, float] = {}
    for spec, point in zip(served.points, points, strict=True):
        words = encode(spec, point["value"])
        await server.async_setValues(1, FUNCTION[spec.table], spec.address, words)
        expected[spec.id] = decode(spec, words)
    try:
        # The default plan (by cost, TCP) against one request per point.
        specs = {"planned": device(port, points, {}), "baseline_one_request_per_point": served}
        results = await measure(specs, ctx, expected)
    finally:
        await ctx.resources.close_all()
        await server.shutdown()
    planned, naive = results["planned"], results["baseline_one_request_per_point"]
    return {
        "modbus": {
            "points": POINTS,
            "registers_of_points": sum(register_count(p) for p in served.points),
            "scattered_over": f"holding and input registers 0..{SPAN - 1}, seed {SEED}",
            "types": {t: sum(p["type"] == t for p in points) for t in TYPES},
            **{k: {m: round(v, 4) for m, v in r.items()} for k, r in results.items()},
            "ratio_requests": round(planned["requests_per_poll"] / naive["requests_per_poll"], 4),
            "ratio_registers_read_per_s_tcp": round(
                planned["registers_read_per_s_tcp"] / naive["registers_read_per_s_tcp"], 2
            ),
            "ratio_rtu_time": round(
                planned["rtu_9600_s_per_poll"] / naive["rtu_9600_s_per_poll"], 3
            ),
        }
    }


def main() -> None:
    print(json.dumps(asyncio.run(main_async()), indent=2))


if __name__ == "__main__":
    main()
