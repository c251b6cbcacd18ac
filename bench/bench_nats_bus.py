"""The bus between gateways on a 3-node NATS cluster on loopback (JSON on stdout): one-way
latency and throughput of durable commands (stream, consumer, acknowledgement) and of core
informs between two gateways' buses, sealed as in production; in the same run, the same
commands through the in-process bus as the baseline. Also: how long a durable publish waits
when the stream's leader is SIGKILLed (the election NATS runs).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildingd.agents.bus import Envelope, InProcessBus, Mailbox, Performative
from buildingd.agents.messages import CommandMsg
from buildingd.nats import subjects
from buildingd.nats.bus import NatsBus
from buildingd.settings import NatsSettings
from tests.nats_cluster import TEST_USERS, NatsCluster

KEY = b"0123456789abcdef0123456789abcdef"
ROUTE = {"device[t1]": "b", "zone[z1]": "a"}
N = 500


def command(i: int, performative: Performative = Performative.REQUEST) -> Envelope:
    msg = CommandMsg(point_id="sp", value=float(i), zone_id="z1", reason=f"{time.perf_counter()}")
    return msg.envelope(performative, "zone[z1]", "device[t1]")


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {"median_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 3)}  # fmt: skip


async def one_way(send: Any, box: Mailbox, performative: Performative) -> dict[str, Any]:
    """Latency one message at a time, then throughput with all in flight."""
    lat: list[float] = []
    for i in range(N):
        await send(command(i, performative))
        env = await asyncio.wait_for(box.get(), 30)
        lat.append(time.perf_counter() - float(CommandMsg.parse(env).reason))
    start = time.perf_counter()
    for i in range(N):
        await send(command(i, performative))
    for _ in range(N):
        await asyncio.wait_for(box.get(), 30)
    return {**percentiles(lat), "msgs_per_s": round(N / (time.perf_counter() - start))}


def bus(cluster: NatsCluster, gateway_id: str) -> NatsBus:
    settings = NatsSettings(enabled=True, servers=cluster.urls, user=f"hq-{gateway_id}",
                            password=f"pw-hq-{gateway_id}")  # fmt: skip
    local = [a for a, g in ROUTE.items() if g == gateway_id]
    return NatsBus(settings, "hq", gateway_id, ROUTE.get, local.__contains__, KEY)


async def main() -> dict[str, Any]:
    local = InProcessBus()
    box = Mailbox("device[t1]", maxsize=10 * N, overflow="block")
    local.subscribe("device[t1]", box)
    baseline = await one_way(local.send, box, Performative.REQUEST)
    out: dict[str, Any] = {"messages": N, "in_process": baseline}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NatsCluster(Path(tmp) / "nats", users=TEST_USERS)
        cluster.start()
        a, b = bus(cluster, "a"), bus(cluster, "b")
        try:
            await a.start()
            await b.start()
            box = Mailbox("device[t1]", maxsize=10 * N, overflow="block")
            b.subscribe("device[t1]", box)
            async with asyncio.TaskGroup() as tasks:
                runner = tasks.create_task(b.run())
                out["durable_command"] = await one_way(a.send, box, Performative.REQUEST)
                # An inform for an agent of no known gateway goes on core NATS.
                b.subscribe("readings/z1", box)
                inform = lambda env: a.send(env.model_copy(update={"receiver": "readings/z1"}))  # noqa: E731
                out["core_inform"] = await one_way(inform, box, Performative.INFORM)
                assert a.js is not None
                info = await a.js.stream_info(subjects.stream_name("hq"))
                leader = [n.name for n in cluster.nodes].index(info.cluster.leader)  # type: ignore[union-attr]
                cluster.kill(leader)
                start = time.perf_counter()
                await a.send(command(0))
                out["durable_publish_after_leader_kill_s"] = round(time.perf_counter() - start, 2)
                await asyncio.wait_for(box.get(), 60)
                runner.cancel()
            out["refused"] = dict(b.invalid_by_reason)
        finally:
            await a.stop()
            await b.stop()
            cluster.stop()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=2))
