"""A contract-net round with 1,000 zones spread over 3 gateways on a real 3-node NATS JetStream
cluster on 127.0.0.1 (started here, JetStream on, 3 replicas), against the same round on one
gateway in the same run (JSON on stdout). Issue 19's goal: under 1 s across gateways.

Each gateway is built as ``buildingd run`` builds one (``[gateway] id``, ``[nats]`` enabled with
the gateway's own NATS user, the site's bus key), each its own ``NatsBus`` and connection. The
round is measured twice on the same generated site:

- ``processes``: each gateway its own Python process running one ``Daemon`` (``g1`` in this
  process, which runs the round; ``g2`` and ``g3`` started from this file with ``--gateway``).
  This is what a real deployment corresponds to: each gateway its own Pi, with its own CPU,
  sharing only the network and the NATS cluster. (Here the three share the machine's cores.)
- ``one_process``: the three ``Daemon``s in this one process, sharing one event loop and so one
  CPU core: the dearer case.

The site (``bench/sitegen.py``, ``gateways=3``): each gateway its third of the zones and their
devices (polled hourly, so no poll falls into the round), the coordinator on ``g1``. Every
negotiation message between the coordinator and a zone of ``g2`` or ``g3`` is durable: sealed,
published into the site's command stream and acknowledged, taken by the receiving gateway's
consumer.

Reported, per mode: the round as in ``bench_negotiation.py`` (from the negotiation's own
history: cfp to the coordinator holding every confirmation), its messages, what the buses
counted (durable publishes the stream de-duplicated, unpublished, refused; the messages their
NATS clients received, core and durable, all gateways together); for ``processes``
also each gateway's CPU seconds from the cfp until its bus was quiet again. Beside them: the
in-process round of the same number of zones on one gateway in the same run, the ratios, and
the machine's load average. ``python bench/bench_nats_round.py 300`` runs another size.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
from sitegen import generate, settings_for

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


def gateway(site_dir: Path, state: Path, gateway_id: str, servers: list[str],
            epoch: float | None = None) -> Daemon:  # fmt: skip
    """Gateway ``gateway_id`` as ``buildingd run`` builds it. ``epoch``: the wall time the
    site's clock started at START (a gateway in another process keeps the same time)."""
    base = settings_for(site_dir, state / gateway_id)
    user = gateway_user("bench", gateway_id)
    settings = base.model_copy(update={
        "gateway": GatewaySettings(id=gateway_id),
        "nats": NatsSettings(enabled=True, servers=servers, user=user.name,
                             password=user.password, bus_key_file=state / "bus.key"),
    })  # fmt: skip
    late = 0.0 if epoch is None else time.time() - epoch
    clock = ScaledClock(START + timedelta(seconds=late), 1.0)
    daemon = Daemon(settings, load_site(site_dir), clock=clock, sink_factory=NullSink)
    daemon.on_ready.append(gc.freeze)  # as ``buildingd run`` does
    return daemon


def zones_settled(g: Daemon) -> bool:
    """Each zone of this gateway has sent its first commands and had them confirmed."""
    ready_s = g.ctx.ready_s or 0.0
    return all(
        (z.last_control_s or 0.0) > ready_s and not z.pending_commands()
        for z in g.zone_agents.values()
    )


async def settled(gateways: list[Daemon], zones: int) -> None:
    """Until the coordinator knows every zone and each zone of ``gateways`` has sent its first
    commands and had them confirmed (as ``bench_negotiation.settle``, over NATS)."""
    coordinator = gateways[0].coordinator
    assert coordinator is not None
    for zone_id in gateways[0].site.zones:  # decide now, not at the next control tick
        nudge = AdjustmentsMsg().envelope(Performative.INFORM, COORDINATOR, zone_address(zone_id))
        await coordinator.ctx.send(nudge)

    def done() -> bool:
        return len(coordinator.zones) == zones and all(zones_settled(g) for g in gateways)

    await until(done, 120, "zones settled")


COUNTED = ("deduplicated", "unpublished", "refused", "nats_messages_in")


def counters(buses: list[NatsBus | None]) -> list[tuple[int, ...]]:
    return [(b.duplicates, b.stats.unpublished, b.stats.invalid,
             b.nc.stats["in_msgs"] if b.nc else 0) for b in buses if b]  # fmt: skip


def counted_since(before: list[tuple[int, ...]], after: list[tuple[int, ...]]) -> Figures:
    return {
        name: sum(a[i] - c[i] for a, c in zip(after, before, strict=True))
        for i, name in enumerate(COUNTED)
    }


async def measured(g1: Daemon, zones: int, total: Any) -> Figures:
    """The round, with g1's coordinator, and its demand-response messages."""
    coordinator = g1.coordinator
    assert coordinator is not None
    before = dr_kinds(coordinator.ctx.bus.stats.by_kind)
    figures = await one_round(coordinator, zones)
    messages = sum((dr_kinds(coordinator.ctx.bus.stats.by_kind) - before).values())
    figures["messages"] = messages
    figures["messages_per_zone"] = messages / zones
    await quiet(total)  # the awards' device commands, each on its zone's gateway
    return figures


async def one_process(site_dir: Path, state: Path, cluster: NatsCluster, zones: int) -> Figures:
    gateways = [gateway(site_dir, state, g, cluster.urls) for g in GATEWAYS]
    tasks = [asyncio.ensure_future(g.run()) for g in gateways]
    buses = [g.nats for g in gateways]

    def total() -> int:
        return sum(g.bus.stats.total for g in gateways)

    try:
        for g in gateways:
            await g.ready.wait()
        assert all(g.coordinator is None for g in gateways[1:])
        await settled(gateways, zones)
        await quiet(total)
        before = counters(buses)
        figures = await measured(gateways[0], zones, total)
        figures.update(counted_since(before, counters(buses)))
        figures["zones_per_gateway"] = {g.settings.gateway.id: len(g.zone_agents)
                                        for g in gateways}  # fmt: skip
    finally:
        for g in gateways:
            g.request_stop()
        await asyncio.gather(*tasks)
        gc.unfreeze()
    return figures


async def line(proc: asyncio.subprocess.Process, what: str, timeout_s: float = 180) -> str:
    """The next line a gateway process says (its logs go to stderr)."""
    assert proc.stdout is not None
    async with asyncio.timeout(timeout_s):
        text = (await proc.stdout.readline()).decode().strip()
    if not text:
        raise RuntimeError(f"gateway process exited (code {await proc.wait()}) before {what}")
    return text


async def tell(proc: asyncio.subprocess.Process, word: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(word.encode() + b"\n")
    await proc.stdin.drain()


async def processes(site_dir: Path, state: Path, cluster: NatsCluster, zones: int) -> Figures:
    """g1 here (it runs the round), g2 and g3 each its own process (``serve_gateway``)."""
    epoch = time.time()
    others = [
        await asyncio.create_subprocess_exec(
            *(sys.executable, __file__, "--gateway", g, str(site_dir), str(state)),
            *(",".join(cluster.urls), repr(epoch)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for g in GATEWAYS[1:]
    ]
    g1 = gateway(site_dir, state, GATEWAYS[0], cluster.urls, epoch)
    task = asyncio.ensure_future(g1.run())

    def total() -> int:
        return g1.bus.stats.total

    try:
        await g1.ready.wait()
        await settled([g1], zones)
        for proc in others:
            assert await line(proc, "settling") == "settled"
        await quiet(total)
        before = counters([g1.nats])
        for proc in others:
            await tell(proc, "round")
        cpu0 = time.process_time()
        figures = await measured(g1, zones, total)
        cpu = {GATEWAYS[0]: time.process_time() - cpu0}
        figures.update(counted_since(before, counters([g1.nats])))
        zones_per = {GATEWAYS[0]: len(g1.zone_agents)}
        for g, proc in zip(GATEWAYS[1:], others, strict=True):
            await tell(proc, "stop")
            told = json.loads(await line(proc, "its figures"))
            cpu[g], zones_per[g] = told.pop("cpu_s"), told.pop("zones")
            for name, n in told.items():
                figures[name] += n
        figures["cpu_s_per_gateway"] = {g: round(s, 3) for g, s in cpu.items()}
        figures["zones_per_gateway"] = zones_per
    finally:
        g1.request_stop()
        await task
        gc.unfreeze()
        for proc in others:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    return figures


async def serve_gateway(site_dir: Path, state: Path, gateway_id: str, servers: list[str],
                        epoch: float) -> None:  # fmt: skip
    """One gateway in this process, told by the bench on stdin when the round begins
    ("round") and when to stop ("stop"); says "settled", then its figures, on stdout."""
    daemon = gateway(site_dir, state, gateway_id, servers, epoch)
    task = asyncio.ensure_future(daemon.run())
    loop = asyncio.get_running_loop()

    def total() -> int:
        return daemon.bus.stats.total

    try:
        await daemon.ready.wait()
        await until(lambda: zones_settled(daemon), 120, f"{gateway_id}: zones settled")
        print("settled", flush=True)
        assert (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "round"
        before, cpu0 = counters([daemon.nats]), time.process_time()
        assert (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "stop"
        await quiet(total)  # until the awards' device commands are done
        figures = counted_since(before, counters([daemon.nats]))
        figures["cpu_s"] = time.process_time() - cpu0
        figures["zones"] = len(daemon.zone_agents)
        print(json.dumps(figures), flush=True)
    finally:
        daemon.request_stop()
        await task


async def bench(tmp: Path, zones: int, cluster: NatsCluster) -> Figures:
    one = generate(tmp / "site-one", zones, poll_interval_s=POLL_S)
    local = await in_process(load_site(one), one, tmp / "state-one")
    spread = generate(tmp / "site-three", zones, POLL_S, gateways=len(GATEWAYS))
    out: Figures = {
        "zones": zones,
        "cluster": "3 nats-server nodes on 127.0.0.1, JetStream, stream replicas 3",
    }
    for mode, run in (("processes", processes), ("one_process", one_process)):
        state = tmp / f"state-{mode}"
        state.mkdir()
        (state / "bus.key").write_text(KEY)
        figures = await run(spread, state, cluster, zones)
        out[mode] = rounded(figures)
        out[f"ratio_{mode}_to_in_process"] = round(
            figures["round_wall_s"] / local["round_wall_s"], 2
        )
    out["in_process"] = rounded(local)
    out["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> None:
    if sys.argv[1:2] == ["--gateway"]:
        gateway_id, site_dir, state, servers, epoch = sys.argv[2:7]
        asyncio.run(serve_gateway(Path(site_dir), Path(state), gateway_id,
                                  servers.split(","), float(epoch)))  # fmt: skip
        return
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
