"""How late a command arrives when the NATS node leading the site's command stream is SIGKILLed
(issue 19): a real 3-node JetStream cluster on 127.0.0.1 per trial, gateway ``a`` sending 300
commands (2 ms apart) to a thermostat on gateway ``b``, the stream's leader killed after the
100th. A delivery lost in flight when the node dies comes again only after the consumer's ack
wait.

Reported per trial (JSON on stdout): the worst delay of one command (sent to received), the
time from the kill to the last command received, the commands lost and doubled, the consumer's
ack wait, whether ``b`` was connected to the node killed, and the load average.
``python bench/bench_nats_command_delay.py 8`` runs 8 trials (default 6).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildingd.agents.bus import Mailbox
from buildingd.agents.messages import CommandMsg
from buildingd.nats import subjects
from tests.nats_cluster import TEST_USERS, NatsCluster
from tests.test_nats_bus import THERMOSTAT, command, gateway

COMMANDS, KILL_AT = 300, 100
PACE_S = 0.002  # between two commands
GIVE_UP_S = 60.0  # a command not come by then is lost


async def trial(cluster: NatsCluster) -> dict[str, float | int | bool | None]:
    box = Mailbox(THERMOSTAT, maxsize=10_000, overflow="block")
    sent: dict[float, float] = {}
    came: dict[float, float] = {}
    values: list[float] = []
    async with gateway(cluster, "a") as a, gateway(cluster, "b", {THERMOSTAT: box}) as b:
        assert a.js is not None and b.js is not None
        consumer = await b.js.consumer_info(subjects.stream_name("hq"), subjects.consumer_name("b"))
        ack_wait_s = consumer.config.ack_wait
        killed_at, b_on_it = 0.0, False
        for i in range(COMMANDS):
            if i == KILL_AT:
                info = await a.js.stream_info(subjects.stream_name("hq"))
                leader = info.cluster.leader if info.cluster is not None else None
                cluster.kill([n.name for n in cluster.nodes].index(leader))
                b_on_it = (
                    b.nc is not None
                    and b.nc.connected_url is not None
                    and str(b.nc.connected_url.port)
                    in next(n.url for n in cluster.nodes if n.name == leader)
                )
                killed_at = time.monotonic()
            sent[float(i)] = time.monotonic()
            await a.send(command(float(i)))
            await asyncio.sleep(PACE_S)  # b taking them as they come: deliveries in flight
        print(f"sent in {time.monotonic() - killed_at:.1f} s after the kill", file=sys.stderr)
        deadline = time.monotonic() + GIVE_UP_S
        while len(came) < COMMANDS and (left := deadline - time.monotonic()) > 0:
            try:
                env = await asyncio.wait_for(box.get(), left)
            except TimeoutError:
                break
            value = CommandMsg.parse(env).value
            values.append(value)
            came.setdefault(value, time.monotonic())
    doubled = sum(1 for n in collections.Counter(values).values() if n > 1)
    return {
        "worst_delay_s": round(max(came[v] - sent[v] for v in came), 2),
        "last_after_kill_s": round(max(came.values()) - killed_at, 2),
        "lost": COMMANDS - len(came),
        "doubled": doubled,
        "ack_wait_s": ack_wait_s,
        "b_on_killed_node": b_on_it,
        "load": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    results = []
    for _ in range(trials):
        with tempfile.TemporaryDirectory() as tmp:
            cluster = NatsCluster(Path(tmp) / "nats", users=TEST_USERS)
            try:
                cluster.start()
                results.append(asyncio.run(trial(cluster)))
            finally:
                cluster.stop()
        print(json.dumps(results[-1]), file=sys.stderr)
    worst = [r["worst_delay_s"] for r in results]
    print(json.dumps({"trials": results,
                      "worst_delay_s_max": max(worst),
                      "worst_delay_s_median": sorted(worst)[len(worst) // 2]}))  # fmt: skip


if __name__ == "__main__":
    main()
