"""BACnet poll efficiency (JSON on stdout): 1,000 points over 10 simulated BACnet/IP devices
(bacpypes3 on 127.0.0.1, one UDP port each), polled by the real driver with its
ReadPropertyMultiple plan and, in the same run against the same devices, with the baseline of
one ReadProperty per point: requests per poll (counted by the devices) and points per second,
every point read. Also COV against polling: messages to learn of changes to 100 rarely-changing
points, with a subscription (notifications counted) and by polling every ``POLL_S``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildingd.clock import ScaledClock
from buildingd.config.bacnet import BacnetDevice
from buildingd.config.loader import load_site
from buildingd.drivers.bacnet import BacnetDriver
from buildingd.drivers.base import BacnetClient, DriverContext, SharedResources
from buildingd.sim.bacnet_server import SimulatedBacnetDevice, start_bacnet_devices
from buildingd.sim.building import Building
from tests.conftest import REPO, free_udp_port

DEVICES, POINTS_PER_DEVICE = 10, 100
ROUNDS = 3  # interleaved rounds; polls per round per mode below
POLLS = {"rpm": 5, "baseline_read_property_per_point": 1}
START = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
COV_POINTS, COV_CHANGES = 100, 20
POLL_S = 10.0  # a typical poll interval: polling needs a request per interval, changes or not


def device_spec(n: int, zones: list[str], **extra: Any) -> BacnetDevice:
    points = [
        {"id": f"t{i}", "kind": "temperature", "zone": zones[i % len(zones)],
         "object_type": "analog-input", "instance": i}
        for i in range(POINTS_PER_DEVICE)
    ]  # fmt: skip
    return BacnetDevice.model_validate(
        {"id": f"dev{n}", "driver": "bacnet", "device_instance": 5000 + n,
         "address": f"127.0.0.1:{free_udp_port()}", "timeout_s": 10, "retries": 0,
         "points": points, **extra}
    )  # fmt: skip


def requests(sims: list[SimulatedBacnetDevice]) -> int:
    return sum(sum(s.app.requests.values()) for s in sims)


async def poll(drivers: list[BacnetDriver]) -> int:
    results = await asyncio.gather(*(d.read() for d in drivers))
    points = sum(len(r) for r in results)
    assert points == DEVICES * POINTS_PER_DEVICE, points
    return points


async def polling(building: Building, ctx: DriverContext, zones: list[str]) -> dict[str, Any]:
    specs = [device_spec(n, zones) for n in range(DEVICES)]
    sims = await start_bacnet_devices(building, ctx.clock, specs)
    try:
        modes = {mode: [BacnetDriver(s, ctx) for s in specs] for mode in POLLS}
        for mode, drivers in modes.items():
            for d in drivers:
                await d.open()
                d.rpm = mode == "rpm"
            await poll(drivers)  # warm-up
        elapsed = dict.fromkeys(POLLS, 0.0)
        sent = dict.fromkeys(POLLS, 0)
        for _ in range(ROUNDS):
            for mode, drivers in modes.items():
                before = requests(sims)
                t0 = time.perf_counter()
                for _ in range(POLLS[mode]):
                    await poll(drivers)
                elapsed[mode] += time.perf_counter() - t0
                sent[mode] += requests(sims) - before
        out: dict[str, Any] = {}
        for mode in POLLS:
            polls = ROUNDS * POLLS[mode]
            out[mode] = {
                "requests_per_poll": sent[mode] / polls,
                "points_per_s": round(polls * DEVICES * POINTS_PER_DEVICE / elapsed[mode]),
                "poll_s": round(elapsed[mode] / polls, 4),
            }
        base = out["baseline_read_property_per_point"]
        out["speedup"] = round(out["rpm"]["points_per_s"] / base["points_per_s"], 1)
        out["request_ratio"] = round(base["requests_per_poll"] / out["rpm"]["requests_per_poll"])
        return out
    finally:
        for s in sims:
            await s.stop()


async def cov(building: Building, ctx: DriverContext, zones: list[str]) -> dict[str, Any]:
    """100 binary points subscribed; ``COV_CHANGES`` of them change: notifications received
    against the requests polling every ``POLL_S`` would send over the same time."""
    points = [
        {"id": f"b{i}", "kind": "occupancy", "zone": zones[i % len(zones)],
         "object_type": "binary-value", "instance": i, "cov": True}
        for i in range(COV_POINTS)
    ]  # fmt: skip
    spec = BacnetDevice.model_validate(
        {"id": "cov", "driver": "bacnet", "device_instance": 6000,
         "address": f"127.0.0.1:{free_udp_port()}", "timeout_s": 10, "points": points}
    )  # fmt: skip
    [sim] = await start_bacnet_devices(building, ctx.clock, [spec])
    driver = BacnetDriver(spec, ctx)
    try:
        await driver.open()
        async with asyncio.timeout(60):
            while len(driver.cov.values) < COV_POINTS:  # every initial notification
                await driver.wait_update()
        sim.app.requests.clear()
        before = driver.cov.notifications
        latencies: list[float] = []
        for i in range(COV_CHANGES):
            point_id = f"b{i * (COV_POINTS // COV_CHANGES)}"
            was = driver.cov.values[point_id].value
            start = time.perf_counter()
            sim.objects[point_id].presentValue = "inactive" if was else "active"
            async with asyncio.timeout(30):
                while driver.cov.values[point_id].value == was:
                    await driver.wait_update()
            latencies.append(time.perf_counter() - start)
        latencies.sort()
        return {
            "points": COV_POINTS,
            "changes": COV_CHANGES,
            "cov_notifications_received": driver.cov.notifications - before,
            "cov_requests_to_device_meanwhile": sum(sim.app.requests.values()),
            # Renewals keep the subscriptions alive whatever changes: one per point per lifetime.
            "cov_renewals_per_hour": COV_POINTS * 3600 / spec.cov_lifetime_s,
            # Polling the same points with RPM (all fit in one request) every POLL_S, changes
            # or not; a change is seen half an interval late on average.
            "polling_requests_per_hour_rpm": 3600 / POLL_S,
            "cov_latency_median_ms": round(1000 * latencies[len(latencies) // 2], 2),
            "cov_latency_max_ms": round(1000 * latencies[-1], 2),
            "polling_latency_mean_ms": 1000 * POLL_S / 2,
        }
    finally:
        await driver.close()
        await sim.stop()


async def main() -> dict[str, Any]:
    site = load_site(REPO)
    zones = list(site.zones)
    building = Building(list(site.zones.values()), START, site.timezone, seed=1)
    ctx = DriverContext(
        clock=ScaledClock(START, 1.0), building=building, resources=SharedResources(),
        bacnet=BacnetClient(address=f"127.0.0.1:{free_udp_port()}"),
    )  # fmt: skip
    try:
        return {
            "devices": DEVICES,
            "points": DEVICES * POINTS_PER_DEVICE,
            "polling": await polling(building, ctx, zones),
            "cov": await cov(building, ctx, zones),
        }
    finally:
        await ctx.resources.close_all()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=2))
