"""MQTT benchmarks (JSON on stdout), on a real mosquitto on 127.0.0.1:

- end-to-end latency from an occupancy publish (zigbee2mqtt format) to the resulting light
  command on the broker (Tasmota ``cmnd/.../Dimmer``), through driver, device agent, zone agent
  and back, p50/p99, beside a plain publish-to-subscribe round trip on the same broker, taken
  in turns with the end-to-end rounds (same load, same event loop), with the garbage
  collector's passes during the rounds;
- messages per second the daemon takes in (sensor payloads parsed by the MQTT driver) beside
  what a bare aiomqtt subscriber receives from the same flood.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiomqtt
from gc_watch import CollectorWatch

from buildingd.config.loader import load_site
from buildingd.service.app import Daemon
from buildingd.settings import Settings
from tests.servers import Mosquitto

NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
ROUNDS = 1000  # p99 is then the 10th worst, not the 2nd
SETTLE_S = 0.03
FLOOD = 20_000

SITE = "site: bench\ntimezone: UTC\nzones:\n  - {id: room, area_m2: 20}\n"
DEVICES = """\
devices:
  - {id: motion, driver: mqtt, adapter: zigbee2mqtt, topic: motion, points: [
      {id: occ, field: occupancy, zone: room, kind: occupancy},
      {id: lux, field: illuminance, zone: room, kind: illuminance}]}
  - {id: thermo, driver: mqtt, adapter: json, topic: thermo, points: [
      {id: t, field: t, zone: room, kind: temperature}]}
  - {id: dimmer, driver: mqtt, adapter: tasmota, topic: dimmer, points: [
      {id: level, field: Dimmer, zone: room, kind: light_level, writable: true,
       limits: {min: 0, max: 100}}]}
"""
POLICY = """\
policies:
  - id: always
    zones: ["*"]
    schedule: {occupied_hours: [{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00",
                                 end: "23:59"}]}
    lighting: {vacancy_timeout_s: 0, daylight_target_lux: 500, full_output_lux: 500}
"""


def client(host: str, port: int, identifier: str) -> aiomqtt.Client:
    # TCP_NODELAY as the daemon's own connection sets it: without it a client's small publish
    # waits for the ACK of its previous one (Nagle against delayed ACK, up to 40 ms on
    # loopback), which made both figures swing with the gap between rounds.
    return aiomqtt.Client(host, port, identifier=identifier, socket_options=NODELAY)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def plain_round_trip(host: str, port: int) -> list[float]:
    """The broker's round trip with no daemon running (on an otherwise idle event loop)."""
    async with client(host, port, "rt-sub") as sub, client(host, port, "rt-pub") as pub:
        await sub.subscribe("bench/rt")
        await asyncio.sleep(0.2)
        return [await round_trip(pub, sub, str(i).encode()) for i in range(ROUNDS)]


async def round_trip(pub: aiomqtt.Client, sub: aiomqtt.Client, body: bytes) -> float:
    t0 = time.perf_counter()
    await pub.publish("bench/rt", body)
    async for _ in sub.messages:
        break
    return time.perf_counter() - t0


async def end_to_end(
    host: str, port: int, root: Path
) -> tuple[list[float], list[float], dict[str, object], float, float]:
    for sub, text in (("devices", DEVICES), ("policies", POLICY)):
        (root / sub).mkdir(parents=True)
        (root / sub / "x.yaml").write_text(text)
    (root / "site.yaml").write_text(SITE)
    settings = Settings.model_validate({
        "state_dir": root / "state", "site_dir": root, "http": {"enabled": False},
        "mqtt": {"enabled": True, "host": host, "port": port},
    })  # fmt: skip
    daemon = Daemon(settings, load_site(root))
    task = asyncio.create_task(daemon.run(600))
    await daemon.ready.wait()
    latencies: list[float] = []
    plain: list[float] = []
    gc_pauses = CollectorWatch()
    async with (
        client(host, port, "bench-devices") as dev,
        client(host, port, "rt-sub") as rt_sub,
        client(host, port, "rt-pub") as rt_pub,
    ):
        await dev.subscribe("cmnd/dimmer/Dimmer")
        await rt_sub.subscribe("bench/rt")
        await dev.publish("thermo", b'{"t": 21.0}', retain=True)
        await dev.publish("tele/dimmer/STATE", b'{"POWER":"OFF","Dimmer":0}', retain=True)
        await asyncio.sleep(1.0)
        occupied = False
        gc.callbacks.append(gc_pauses)
        try:
            for i in range(ROUNDS):
                # The broker's own round trip in turns with the daemon's: both see the same load
                # (the machine is shared), so their ratio is one run's, not two moments'.
                plain.append(await round_trip(rt_pub, rt_sub, str(i).encode()))
                occupied = not occupied
                body = json.dumps({"occupancy": occupied, "illuminance": 10}).encode()
                t0 = time.perf_counter()
                await dev.publish("zigbee2mqtt/motion", body)
                async for message in dev.messages:
                    latencies.append(time.perf_counter() - t0)
                    level = int(bytes(message.payload))  # type: ignore[arg-type]
                    result = json.dumps({"POWER": "ON" if level else "OFF", "Dimmer": level})
                    await dev.publish("stat/dimmer/RESULT", result.encode())
                    break
                await asyncio.sleep(SETTLE_S)  # the read-back settles before the next change
        finally:
            gc.callbacks.remove(gc_pauses)
        # Throughput: a flood of sensor reports, counted by the daemon's connection.
        assert daemon.mqtt is not None
        before = daemon.mqtt.counters.received
        t0 = time.perf_counter()
        for i in range(FLOOD):
            await dev.publish("zigbee2mqtt/motion", f'{{"illuminance": {i % 900}}}'.encode())
        while daemon.mqtt.counters.received - before < FLOOD and time.perf_counter() - t0 < 60:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        daemon_rate = (daemon.mqtt.counters.received - before) / (time.perf_counter() - t0)
    daemon.request_stop()
    await task
    return latencies, plain, gc_pauses.summary(), daemon_rate, await bare_rate(host, port)


async def bare_rate(host: str, port: int) -> float:
    async with (
        client(host, port, "flood-sub") as sub,
        client(host, port, "flood-pub") as pub,
    ):
        await sub.subscribe("bench/flood")
        await asyncio.sleep(0.2)
        got = 0
        t0 = time.perf_counter()

        async def count() -> None:
            nonlocal got
            async for _ in sub.messages:
                got += 1
                if got >= FLOOD:
                    return

        counter = asyncio.create_task(count())
        for i in range(FLOOD):
            await pub.publish("bench/flood", f'{{"illuminance": {i % 900}}}'.encode())
        await asyncio.wait_for(counter, 60)
        return got / (time.perf_counter() - t0)


async def main_async(tmp: Path) -> dict[str, object]:
    broker = Mosquitto(tmp / "mosquitto")
    broker.start()
    try:
        alone = await plain_round_trip(broker.host, broker.port)
        e2e, plain, gc_pauses, daemon_rate, bare = await end_to_end(
            broker.host, broker.port, tmp / "site"
        )
    finally:
        broker.stop()
    ms = 1000.0
    return {
        "mqtt": {
            "occupancy_to_light_command_ms": {"p50": round(pct(e2e, 0.5) * ms, 2),
                                              "p99": round(pct(e2e, 0.99) * ms, 2),
                                              "mean": round(statistics.fmean(e2e) * ms, 2)},
            "baseline_broker_round_trip_ms": {"p50": round(pct(plain, 0.5) * ms, 3),
                                              "p99": round(pct(plain, 0.99) * ms, 3)},
            "ratio_p50_e2e_to_round_trip": round(pct(e2e, 0.5) / pct(plain, 0.5), 1),
            "ratio_p99_e2e_to_round_trip": round(pct(e2e, 0.99) / pct(plain, 0.99), 1),
            # The same round trip before the daemon started, alone on the event loop.
            "broker_round_trip_alone_ms": {"p50": round(pct(alone, 0.5) * ms, 3),
                                           "p99": round(pct(alone, 0.99) * ms, 3)},
            "ratio_p99_e2e_to_round_trip_alone": round(pct(e2e, 0.99) / pct(alone, 0.99), 1),
            "rounds": ROUNDS,
            "gc_during_rounds": gc_pauses,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "daemon_messages_per_s": round(daemon_rate),
            "baseline_bare_subscriber_messages_per_s": round(bare),
            "ratio_daemon_to_bare_subscriber": round(daemon_rate / bare, 3),
        }
    }  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(main_async(Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
