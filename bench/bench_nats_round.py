"""A contract-net round with 1,000 zones spread over 3 gateways on a real 3-node NATS JetStream
cluster on 127.0.0.1 (started here, JetStream on, 3 replicas), against the same round on one
gateway in the same run (JSON on stdout). Issue 19's goal: under 1 s across gateways.

The gateways are three ``Daemon``s in this one process, each built as ``buildingd run`` builds
a gateway (``[gateway] id``, ``[nats]`` enabled with the gateway's own NATS user, the site's
bus key): each its own ``NatsBus`` and connection, sharing one event loop and so one CPU core
(separate processes would spread over the machine's cores: this is the dearer case). The site
(``bench/sitegen.py``, ``gateways=3``): each gateway its third of the zones and their devices
(polled hourly, so no poll falls into the round), the coordinator on ``g1``. Every negotiation
message between the coordinator and a zone of ``g2`` or ``g3`` is durable: sealed, published
into the site's command stream and acknowledged, taken by the receiving gateway's consumer.

Reported: the round as in ``bench_negotiation.py`` (from the negotiation's own history: cfp to
the coordinator holding every confirmation), its messages, what the buses counted (durable
publishes the stream de-duplicated, unpublished, refused), the in-process round of the same
site in the same run and the ratio, and the machine's load average.
``python bench/bench_nats_round.py 300`` runs another size.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_control import settings_for
from bench_negotiation import (
    POLL_S,
    START,
    dr_kinds,
    in_process,
    one_round,
    quiet,
    rounded,
    until,
)
from sitegen import generate

from buildingd.agents.bus import Performative
from buildingd.agents.messages import COORDINATOR, AdjustmentsMsg, zone_address
from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.evaluate import NullSink
from buildingd.nats.bus import NatsBus
from buildingd.service.app import Daemon
from buildingd.settings import GatewaySettings, NatsSettings
from tests.nats_cluster import NatsCluster, gateway_user

ZONES = 1000
GATEWAYS = ("g1", "g2", "g3")
KEY = "0123456789abcdef0123456789abcdef\n"  # the site's bus key, shared by its gateways
Figures = dict[str, Any]


def gateway(site_dir: Path, state: Path, gateway_id: str, cluster: NatsCluster) -> Daemon:
    base = settings_for(site_dir, state / gateway_id)
    user = gateway_user("bench", gateway_id)
    settings = base.model_copy(update={
        "gateway": GatewaySettings(id=gateway_id),
        "nats": NatsSettings(enabled=True, servers=cluster.urls, user=user.name,
                             password=user.password, bus_key_file=state / "bus.key"),
    })  # fmt: skip
    clock = ScaledClock(START, 1.0)
    daemon = Daemon(settings, load_site(site_dir), clock=clock, sink_factory=NullSink)
    daemon.on_ready.append(gc.freeze)  # as ``buildingd run`` does
    return daemon


async def settled(gateways: list[Daemon]) -> None:
    """Until the coordinator knows every zone and each zone, on whichever gateway, has sent
    its first commands and had them confirmed (as ``bench_negotiation.settle``, over NATS)."""
    coordinator = gateways[0].coordinator
    assert coordinator is not None
    for zone_id in gateways[0].site.zones:  # decide now, not at the next control tick
        nudge = AdjustmentsMsg().envelope(Performative.INFORM, COORDINATOR, zone_address(zone_id))
        await coordinator.ctx.send(nudge)
    zones = [(g, z) for g in gateways for z in g.zone_agents.values()]

    def done() -> bool:
        return len(coordinator.zones) == len(gateways[0].site.zones) and all(
            (z.last_control_s or 0.0) > (g.ctx.ready_s or 0.0) and not z.pending_commands()
            for g, z in zones
        )

    await until(done, 120, "zones settled")


async def over_nats(site_dir: Path, state: Path, cluster: NatsCluster, zones: int) -> Figures:
    gateways = [gateway(site_dir, state, g, cluster) for g in GATEWAYS]
    tasks = [asyncio.ensure_future(g.run()) for g in gateways]
    buses = [g.nats for g in gateways]
    assert all(isinstance(b, NatsBus) for b in buses)

    def total() -> int:
        return sum(g.bus.stats.total for g in gateways)

    try:
        for g in gateways:
            await g.ready.wait()
        coordinator = gateways[0].coordinator
        assert coordinator is not None and all(g.coordinator is None for g in gateways[1:])
        await settled(gateways)
        await quiet(total)
        before = dr_kinds(coordinator.ctx.bus.stats.by_kind)
        counted = [(b.duplicates, b.stats.unpublished, b.stats.invalid) for b in buses if b]
        figures = await one_round(coordinator, zones)
        messages = sum((dr_kinds(coordinator.ctx.bus.stats.by_kind) - before).values())
        figures["messages"] = messages
        figures["messages_per_zone"] = messages / zones
        await quiet(total)  # the awards' device commands, each on its zone's gateway
        after = [(b.duplicates, b.stats.unpublished, b.stats.invalid) for b in buses if b]
        for i, name in enumerate(("deduplicated", "unpublished", "refused")):
            figures[name] = sum(a[i] - c[i] for a, c in zip(after, counted, strict=True))
        figures["zones_per_gateway"] = {g.settings.gateway.id: len(g.zone_agents)
                                        for g in gateways}  # fmt: skip
    finally:
        for g in gateways:
            g.request_stop()
        await asyncio.gather(*tasks)
        gc.unfreeze()
    return figures


async def bench(tmp: Path, zones: int, cluster: NatsCluster) -> Figures:
    one = generate(tmp / "site-one", zones, poll_interval_s=POLL_S)
    local = await in_process(load_site(one), one, tmp / "state-one")
    spread = generate(tmp / "site-three", zones, POLL_S, gateways=len(GATEWAYS))
    (tmp / "state-three").mkdir()
    (tmp / "state-three" / "bus.key").write_text(KEY)
    nats = await over_nats(spread, tmp / "state-three", cluster, zones)
    return {
        "zones": zones,
        "gateways": "3 Daemons in one process (one event loop), each its own NatsBus",
        "cluster": "3 nats-server nodes on 127.0.0.1, JetStream, stream replicas 3",
        "over_nats": rounded(nats),
        "in_process": rounded(local),
        "ratio_round_nats_to_in_process": round(nats["round_wall_s"] / local["round_wall_s"], 2),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    zones = int(sys.argv[1]) if len(sys.argv) > 1 else ZONES
    with tempfile.TemporaryDirectory() as tmp:
        users = [gateway_user("bench", g) for g in GATEWAYS]
        cluster = NatsCluster(Path(tmp) / "nats", users=users)
        cluster.start()
        try:
            t0 = time.perf_counter()
            out = asyncio.run(bench(Path(tmp), zones, cluster))
            out["seconds"] = round(time.perf_counter() - t0, 1)
        finally:
            cluster.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
