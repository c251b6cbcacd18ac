"""Modbus poll efficiency (JSON on stdout), against a real pymodbus server on 127.0.0.1 serving the
simulated building: a device of 60 points spread over 120 holding registers, polled with
buildingd's block plan beside the baseline of one request per point, in the same run. Also the
time the same polls would take on a 9,600-baud RTU line, computed from the frame sizes
(Modbus over Serial Line v1.02: 11 bits per character, 3.5 characters of silence per frame).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.config.modbus import ModbusTcpDevice
from buildingd.drivers.base import DriverContext, SharedResources
from buildingd.drivers.modbus import ModbusDriver
from buildingd.settings import REPO_SITE
from buildingd.sim.building import Building
from buildingd.sim.modbus_server import start_modbus_tcp
from tests.conftest import free_port

POINTS = 60
POLLS = 200
BAUD = 9600


def device(port: int, max_gap: int, max_registers: int, step: int = 2) -> ModbusTcpDevice:
    """Points every ``step`` registers; the served device has one at every register (the
    gaps hold values the site does not use), the polled one every other register."""
    count = POINTS * 2 // step
    points = [
        {"id": f"t{i}", "kind": "temperature", "zone": "f1-meeting", "table": "holding_register",
         "address": step * i, "type": "int16", "scale": 0.1}
        for i in range(count)
    ]  # fmt: skip
    return ModbusTcpDevice.model_validate({
        "id": "bench", "driver": "modbus-tcp", "connection": {"host": "127.0.0.1", "port": port},
        "planning": {"max_gap": max_gap, "max_registers": max_registers}, "points": points,
    })  # fmt: skip


def rtu_seconds(blocks: list[int]) -> float:
    """Wire time of one poll: request 8 bytes, response 5 + 2n bytes, 3.5 chars gap each."""
    chars = sum(8 + 3.5 + 5 + 2 * n + 3.5 for n in blocks)
    return chars * 11 / BAUD


async def poll(spec: ModbusTcpDevice, ctx: DriverContext) -> dict[str, float]:
    driver = ModbusDriver(spec, ctx)
    await driver.open()
    await driver.read()
    driver.requests = 0
    t0 = time.perf_counter()
    for _ in range(POLLS):
        values = await driver.read()
        assert len(values) == POINTS
    elapsed = time.perf_counter() - t0
    return {
        "requests_per_poll": driver.requests / POLLS,
        "polls_per_s_tcp": POLLS / elapsed,
        "rtu_9600_s_per_poll": rtu_seconds([b.count for b in driver.plan]),
    }


async def main_async() -> dict[str, object]:
    site = load_site(REPO_SITE)
    start = datetime(2026, 1, 12, 8, tzinfo=UTC)
    building = Building(list(site.zones.values()), start, site.timezone, seed=1)
    ctx = DriverContext(clock=ScaledClock(start, 1.0), building=building,
                        resources=SharedResources())  # fmt: skip
    port = free_port()
    served = device(port, 10, 125, step=1)
    server = await start_modbus_tcp(building, ctx.clock, [served], "127.0.0.1", port)
    try:
        planned = await poll(device(port, 10, 125), ctx)
        naive = await poll(device(port, 0, 1), ctx)
    finally:
        await ctx.resources.close_all()
        await server.shutdown()
    r = {k: round(v, 4) for k, v in planned.items()}
    b = {k: round(v, 4) for k, v in naive.items()}
    return {
        "modbus": {
            "points": POINTS,
            "planned": r,
            "baseline_one_request_per_point": b,
            "ratio_requests": round(planned["requests_per_poll"] / naive["requests_per_poll"], 4),
            "ratio_polls_per_s_tcp": round(
                planned["polls_per_s_tcp"] / naive["polls_per_s_tcp"], 2
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
