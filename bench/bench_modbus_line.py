"""Modbus line benchmark (JSON on stdout), against a libmodbus device (tests/modbus_device.c,
built here) that timestamps every request it receives:

- write delay: a command sent to the device agent while 1,000 or 2,000 points of the same device
  are polled continuously, until buildingd puts the write on the socket ("to the wire") and
  until the device receives it; against one 10-register read's round trip on the same device,
  idle and during the polling (from the same process), p50/p99 and the ratios. On a loaded
  2-CPU machine the device's own time to be scheduled shows in every device-side figure;
- per-request overhead: a poll's time per request in buildingd against the bare client's round
  trip for the same requests;
- requests per poll with the default settings for scattered maps against the fewest possible
  (TCP: requests; RTU at 9,600 and 115,200 baud: time on the wire, the minimum computed here by
  an exhaustive shortest path over every block), and against the old gap rule (max_gap 10).

Stops (100 SIGTERMs at a 0.05 s poll interval) are measured by bench/bench_stops.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildingd.agents.bus import InProcessBus, Mailbox, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.device import DeviceAgent
from buildingd.agents.messages import CommandMsg
from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.config.modbus import ModbusPoint, ModbusTcpDevice, Planning, SerialConnection
from buildingd.drivers.base import DriverContext, SharedResources
from buildingd.drivers.modbus import ModbusDriver
from buildingd.drivers.modbus_codec import register_count
from buildingd.drivers.modbus_plan import WireCost, plan_cost, plan_reads
from tests.conftest import REPO
from tests.modbus_devices import LibmodbusDevice, build_device

START = datetime(2026, 1, 12, 8, tzinfo=UTC)
WRITES = 200
ROUND_TRIPS = 1000
SEED = 15


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(values, 0.5) * 1000, 3),
        "p99_ms": round(pct(values, 0.99) * 1000, 3),
    }


def scattered(rng: random.Random, n: int, span: int) -> list[dict[str, Any]]:
    """``n`` non-overlapping uint16/float32 holding-register points over ``0..span-1``."""
    used: set[int] = set()
    points: list[dict[str, Any]] = []
    while len(points) < n:
        type_ = rng.choice(["uint16", "uint16", "float32"])
        address = rng.randrange(span - 1)
        cells = {address, address + 1} if type_ == "float32" else {address}
        if cells & used:
            continue
        used |= cells
        points.append({"id": f"p{len(points)}", "kind": "temperature", "address": address,
                       "table": "holding_register", "type": type_})  # fmt: skip
    return points


def spec(port: int, points: list[dict[str, Any]], **extra: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {"id": "bench", "driver": "modbus-tcp", "unit_id": 1, "timeout_s": 5, "retries": 0,
         "connection": {"host": "127.0.0.1", "port": port}, "points": points, **extra}
    )  # fmt: skip


async def round_trips(port: int) -> list[float]:
    """One 10-register read at a time on an idle line, with the client buildingd uses."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
    await client.connect()
    out = []
    try:
        for _ in range(ROUND_TRIPS):
            t0 = time.perf_counter()
            await client.read_holding_registers(0, count=10, device_id=1)
            out.append(time.perf_counter() - t0)
    finally:
        client.close()
    return out


async def write_delays(device: LibmodbusDevice, points: int, rng: random.Random) -> dict[str, Any]:
    """Commands sent at random moments while the device agent polls ``points`` continuously;
    the delay is from the send to the device receiving the write (both on CLOCK_MONOTONIC)."""
    setpoint = {"id": "sp", "kind": "heating_setpoint", "table": "holding_register",
                "address": 9999, "type": "uint16", "writable": True,
                "limits": {"min": 5, "max": 35}}  # fmt: skip
    clock = ScaledClock(START, 1.0)
    drivers = DriverContext(clock=clock, resources=SharedResources())
    ctx = AgentContext(bus=InProcessBus(), clock=clock, site=load_site(REPO), drivers=drivers)
    replies = Mailbox("zone[bench]", 10)
    ctx.bus.subscribe("zone[bench]", replies)
    device_spec = spec(
        device.port, [*scattered(rng, points, 9990), setpoint], poll_interval_s=0.001
    )
    agent = DeviceAgent(device_spec, ctx)
    agent.report_by_exception = True
    runner = asyncio.create_task(agent.run(lambda: None))
    delays: list[float] = []
    handed: list[float] = []
    on_wire_delays: list[float] = []
    reads_between: list[int] = []
    busy_round_trips: list[float] = []
    from pymodbus.client import AsyncModbusTcpClient

    probe = AsyncModbusTcpClient("127.0.0.1", port=device.port, timeout=5, retries=0)
    await probe.connect()
    try:
        while len(device.requests()) < 500:  # noqa: ASYNC110 - counted by the device
            await asyncio.sleep(0.05)
        assert isinstance(agent.driver, ModbusDriver) and agent.driver.line is not None
        per_poll = len(agent.driver.plan)
        # When buildingd hands each write to the client, which puts it on the socket before it
        # returns to the loop: the write "on the wire" as the daemon sees it.
        client = agent.driver.line.client
        write_register = client.write_register

        def timed_write(*args: Any, **kw: Any) -> Any:
            handed.append(time.monotonic())
            return write_register(*args, **kw)

        client.write_register = timed_write
        busy_from = time.monotonic()
        for i in range(WRITES):
            await asyncio.sleep(rng.uniform(0.005, 0.05))
            sent_s = time.monotonic()
            command = CommandMsg(point_id="sp", value=5 + i % 30, zone_id=None, reason="bench")
            await ctx.bus.send(command.envelope(Performative.REQUEST, "zone[bench]", agent.name))
            reply = await replies.get()
            assert reply.performative is Performative.INFORM_DONE, reply.content
            seen = device.requests()
            write = next(r for r in seen if r.function == 6 and r.at_s > sent_s)
            delays.append(write.at_s - sent_s)
            on_wire_delays.append(next(t for t in handed if t >= sent_s) - sent_s)
            reads_between.append(
                sum(1 for r in seen if r.function == 3 and sent_s < r.at_s < write.at_s)
            )
            # One 10-register read on another connection to the same device, at another
            # moment of the polling: the round trip the write delay is compared with.
            await asyncio.sleep(rng.uniform(0.005, 0.05))
            t0 = time.monotonic()
            await probe.read_holding_registers(0, count=10, device_id=1)
            busy_round_trips.append(time.monotonic() - t0)
        seen = device.requests()
        window = [r for r in seen if r.at_s >= busy_from]
        span_s = window[-1].at_s - window[0].at_s
    finally:
        probe.close()
        runner.cancel()
        await asyncio.wait({runner})
        await drivers.resources.close_all()
    return {
        "points": points,
        "requests_per_poll": per_poll,
        "requests_per_s_on_the_line": round(len(window) / span_s),
        "write_delay_to_the_wire": ms(on_wire_delays),
        "write_delay": ms(delays),
        "round_trip_10_registers_meanwhile": ms(busy_round_trips),
        "ratio_write_delay_p99_to_round_trip_meanwhile_p99": round(
            pct(delays, 0.99) / pct(busy_round_trips, 0.99), 2
        ),
        "reads_the_write_waited_for": {
            "max": max(reads_between),
            "mean": round(statistics.mean(reads_between), 2),
        },  # fmt: skip
        "_delays": delays,
        "_on_wire": on_wire_delays,
    }


async def overhead(device: LibmodbusDevice, rng: random.Random) -> dict[str, Any]:
    """A poll's time per request in buildingd (plan, requests, decoding) against the bare
    client sending the same requests one after another on the same device."""
    from pymodbus.client import AsyncModbusTcpClient

    points = scattered(rng, 2000, 9990)
    drivers = DriverContext(clock=ScaledClock(START, 1.0), resources=SharedResources())
    driver = ModbusDriver(spec(device.port, points), drivers)
    await driver.open()
    client = AsyncModbusTcpClient("127.0.0.1", port=device.port, timeout=5, retries=0)
    await client.connect()
    ours, bare = [], []
    try:
        await driver.read()
        for _ in range(20):
            t0 = time.perf_counter()
            await driver.read()
            ours.append((time.perf_counter() - t0) / len(driver.plan))
            t0 = time.perf_counter()
            for block in driver.plan:
                await client.read_holding_registers(block.start, count=block.count, device_id=1)
            bare.append((time.perf_counter() - t0) / len(driver.plan))
    finally:
        client.close()
        await drivers.resources.close_all()
    return {
        "points": 2000, "requests_per_poll": len(driver.plan),
        "buildingd_ms_per_request": round(statistics.median(ours) * 1000, 3),
        "bare_client_ms_per_request": round(statistics.median(bare) * 1000, 3),
        "buildingd_own_ms_per_request": round(
            (statistics.median(ours) - statistics.median(bare)) * 1000, 3),
    }  # fmt: skip


def minimum_wire_s(points: list[ModbusPoint], cost: WireCost, limit: int) -> float:
    """The least time on the wire of any plan: shortest path over the sorted points, every
    block of consecutive points within ``limit`` tried (no pruning, unlike the planner)."""
    ordered = sorted(points, key=lambda p: p.address)
    best = [0.0] + [float("inf")] * len(ordered)
    for j in range(1, len(ordered) + 1):
        end = 0
        for i in range(j - 1, -1, -1):
            end = max(end, ordered[i].address + register_count(ordered[i]))
            start = ordered[i].address
            if end - start <= limit or i == j - 1:
                best[j] = min(best[j], best[i] + cost.of(ordered[i].table, end - start))
    return best[-1]


def fewest_requests(points: list[ModbusPoint], limit: int) -> int:
    """Greedy: start a request at the first point not yet read, take every point that fits."""
    count, end = 0, -1
    for p in sorted(points, key=lambda p: p.address):
        if p.address + register_count(p) <= end:
            continue
        count, end = count + 1, p.address + limit
    return count


def planning(rng: random.Random) -> dict[str, Any]:
    maps = {"40 points over 0..999": (40, 1000), "1000 points over 0..4999": (1000, 5000),
            "200 points over 0..65535": (200, 65535)}  # fmt: skip

    def rtu(baud: int) -> WireCost:
        return WireCost.rtu(SerialConnection(port="x", baudrate=baud), 0.005)

    lines = {"tcp": WireCost.tcp(0.002), "rtu_9600_8E1": rtu(9600), "rtu_115200_8E1": rtu(115200)}
    out: dict[str, Any] = {}
    for name, (n, span) in maps.items():
        points = [ModbusPoint.model_validate(p) for p in scattered(rng, n, span)]
        row: dict[str, Any] = {}
        for line, cost in lines.items():
            plan = plan_reads(points, Planning(), cost)
            gap = plan_reads(points, Planning(max_gap=10), cost)
            least = minimum_wire_s(points, cost, 125)
            row[line] = {
                "requests": len(plan), "fewest_requests": fewest_requests(points, 125),
                "wire_ms": round(plan_cost(plan, cost) * 1000, 2),
                "least_wire_ms": round(least * 1000, 2),
                "ratio_wire_time_to_least": round(plan_cost(plan, cost) / least, 4),
                "max_gap_10": {"requests": len(gap),
                               "wire_ms": round(plan_cost(gap, cost) * 1000, 2)},
            }  # fmt: skip
            if line == "tcp":
                row[line]["ratio_requests_to_fewest"] = round(
                    len(plan) / fewest_requests(points, 125), 4
                )
        out[name] = row
    return out


async def main_async() -> dict[str, Any]:
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_device(Path(tmp))
        device = LibmodbusDevice(binary, Path(tmp) / "requests.log")
        await device.start()
        try:
            rtt = await round_trips(device.port)
            writes = [await write_delays(device, n, rng) for n in (1000, 2000)]
            rtt_after = await round_trips(device.port)
            costs = await overhead(device, rng)
        finally:
            await device.stop()
    rtt_all = rtt + rtt_after
    rtt_p99 = pct(rtt_all, 0.99)
    for w in writes:
        w["ratio_write_delay_p99_to_idle_round_trip_p99"] = round(
            pct(w.pop("_delays"), 0.99) / rtt_p99, 2
        )
        w["ratio_write_delay_to_the_wire_p99_to_idle_round_trip_p99"] = round(
            pct(w.pop("_on_wire"), 0.99) / rtt_p99, 2
        )
    return {"modbus_line": {
        "device": "libmodbus 3.1.6 on 127.0.0.1 (tests/modbus_device.c)",
        "round_trip_10_registers_idle": ms(rtt_all),
        "writes_during_continuous_polling": writes,
        "per_request": costs,
        "planning_default_settings": planning(rng),
    }}  # fmt: skip


def main() -> None:
    print(json.dumps(asyncio.run(main_async()), indent=2))


if __name__ == "__main__":
    main()
