"""Contract-net round cost (JSON on stdout) at 10, 100 and 1,000 zones on the in-process bus: the
whole daemon on a generated site, one demand-response event from the cfp to every awarded zone
confirming. (The round across gateways over NATS is ``bench_nats_round.py``; the MQTT agent bus
it was once compared with here is retired.)

It runs in real time (the clock at speed 1). Before the round each zone has sent its first
commands and had them confirmed and the bus is quiet; devices poll hourly (``POLL_S``), so no
poll wave falls into the round. The coordinator awards as soon as the last answer is in, and
sees the award confirmed as soon as the last confirmation is, without waiting for its tick.

Reported: the round's wall time and the process's CPU time until the last confirmation was
taken (``round_cpu_s``), when its steps were done (``phases_s``: cfps sent, awards sent,
confirmed, from the negotiation's history), when the bench saw it and the process's CPU time
until then, the conversation's messages (counted by kind on the bus) and per zone, the cfp
rounds, the bus's traffic before the round, and every bus message from the cfp until the bus is
quiet again (the awards set off commands to the devices); per size, the award computation
alone; beside them the raw cost of the same number of messages on the in-process bus, measured
in the same run. ``python bench/bench_negotiation.py 10 100`` runs only those sizes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_control import raw_bus_rate
from sitegen import generate, settings_for

from buildingd.agents.bus import Performative
from buildingd.agents.messages import (
    COORDINATOR,
    AdjustmentsMsg,
    DemandResponseCall,
    zone_address,
)
from buildingd.clock import ScaledClock
from buildingd.config.loader import Site, load_site
from buildingd.control.contract_net import Level, Offer, award
from buildingd.coordinator.agent import CoordinatorAgent
from buildingd.coordinator.negotiation import NegotiationState
from buildingd.evaluate import NullSink
from buildingd.service.app import Daemon

SIZES = (10, 100, 1000)
START = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)  # a Monday, occupied
POLL_S = 3600.0  # device poll interval: one poll at start, none in the round
CHECK_S = 0.0002  # how often the bench looks whether the answers are in
QUIET_MESSAGES = 2  # in half a second: the bus is quiet before the round
S = NegotiationState
Figures = dict[str, Any]


async def settle(daemon: Daemon, coordinator: CoordinatorAgent) -> None:
    """Until the coordinator knows every zone and each zone has sent its first commands and had
    them confirmed, so that the start-up's traffic is over when the round begins. A zone sends
    none before every agent has started, then at its next control tick, up to 10 s later; an
    empty adjustments message from the coordinator (no offset changed) makes it decide now."""
    ready_s = daemon.ctx.ready_s
    assert ready_s is not None
    for zone_id in daemon.site.zones:
        nudge = AdjustmentsMsg().envelope(Performative.INFORM, COORDINATOR, zone_address(zone_id))
        await coordinator.ctx.send(nudge)
    zones = daemon.zone_agents.values()

    def settled() -> bool:
        return len(coordinator.zones) == len(daemon.site.zones) and all(
            (z.last_control_s or 0.0) > ready_s and not z.pending_commands() for z in zones
        )

    await until(settled, 60, "zones settled")
    await asyncio.sleep(0.2)  # the last zone states are taken in


def dr_kinds(by_kind: Counter[str]) -> Counter[str]:
    """Demand-response messages counted so far (the bus counts "performative/ontology")."""
    suffix = f"/{DemandResponseCall.ontology}"
    return Counter({k: n for k, n in by_kind.items() if k.endswith(suffix)})


async def until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.perf_counter() + timeout_s
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(CHECK_S)


async def quiet(count: Callable[[], int], timeout_s: float = 60.0) -> None:
    """Until ``count`` (messages) stands still for half a second, before the round and after
    it."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        before = count()
        await asyncio.sleep(0.5)
        if count() - before <= QUIET_MESSAGES:
            return
    raise TimeoutError(f"the bus did not quieten within {timeout_s:.0f} s")


async def per_second(count: Callable[[], int], seconds: float = 1.0) -> float:
    """How fast ``count`` grows over ``seconds``: the daemon's own traffic before the round."""
    before = count()
    await asyncio.sleep(seconds)
    return (count() - before) / seconds


async def one_round(coordinator: CoordinatorAgent, zones: int) -> Figures:
    """One event, cfp to every awarded zone confirming. The coordinator moves on by itself as
    soon as a step's answers are all in; when each step was done is read from the negotiation's
    own history (the clock runs at speed 1, so its seconds are wall seconds): ``round_wall_s``
    ends when the coordinator has taken the last confirmation. ``observed_wall_s`` and
    ``observed_cpu_s`` run until this bench saw it, later by whatever the loop ran meanwhile
    (the zones' decisions and device commands the awards set off)."""
    demand = sum((z.hvac_w or 0) + (z.lighting_w or 0) for z in coordinator.zones.values())
    gc.collect()  # not the start-up's garbage in the round
    t0, cpu0 = time.perf_counter(), time.process_time()
    conversation = coordinator.open_demand_response(max(100.0, 0.2 * demand), 1800, "bench")
    await coordinator.flush()
    phases = {"cfps_sent": time.perf_counter() - t0}  # seconds since the round began
    run = coordinator.negotiations[conversation]
    n = run.negotiation
    cpu_at: dict[str, float] = {}  # process CPU seconds since the round began, by state reached
    advance = n.advance

    def timed_advance(to: S, now_s: float, reason: str) -> S:
        state = advance(to, now_s, reason)
        cpu_at.setdefault(state.value, time.process_time() - cpu0)
        return state

    n.advance = timed_advance  # type: ignore[method-assign]
    while n.state in (S.OPEN, S.COLLECTING, S.AWARDING):
        if time.perf_counter() - t0 > 120:
            raise TimeoutError(f"{zones} zones: still {n.state} after 120 s")
        await asyncio.sleep(CHECK_S)
    observed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    steps = {S.AWARDING: "awards_sent", S.OPEN: "asked_again", S.EXECUTING: "confirmed"}
    for time_s, _, to, _ in n.history:
        if to in steps:
            phases.setdefault(steps[to], time_s - n.opened_s)
    return {
        "round_wall_s": phases.get("confirmed", observed),
        "observed_wall_s": observed,
        "observed_cpu_s": cpu,
        # CPU until the coordinator took the last confirmation: on a loaded machine the wall
        # time also counts the moments other processes had the core.
        "round_cpu_s": cpu_at.get(S.EXECUTING.value, cpu),
        "phases_s": {k: round(v, 5) for k, v in phases.items()},
        "zones_awarded": len(run.awarded),
        "rounds": run.round,  # cfp rounds before the award (the policy allows up to 3)
        "state": n.state.value,
    }


def counted(
    figures: Figures, before: Counter[str], after: Counter[str], zones: int
) -> Counter[str]:
    messages = sum((after - before).values())
    figures["messages"] = messages
    figures["messages_per_zone"] = messages / zones
    return after - before


async def in_process(site: Site, site_dir: Path, state: Path) -> Figures:
    clock = ScaledClock(START, 1.0)
    daemon = Daemon(settings_for(site_dir, state), site, clock=clock, sink_factory=NullSink)
    daemon.on_ready.append(gc.freeze)  # as ``buildingd run`` does
    task = asyncio.ensure_future(daemon.run())
    try:
        await daemon.ready.wait()
        coordinator = daemon.coordinator
        assert coordinator is not None
        await settle(daemon, coordinator)
        await quiet(lambda: daemon.bus.stats.total)
        background = await per_second(lambda: daemon.bus.stats.total)
        before, total = dr_kinds(daemon.bus.stats.by_kind), daemon.bus.stats.total
        figures = await one_round(coordinator, len(site.zones))
        counted(figures, before, dr_kinds(daemon.bus.stats.by_kind), len(site.zones))
        figures["background_bus_messages_per_s"] = background
        # All kinds, until the bus is quiet again: with what the awards set off (the zones
        # confirm first, then command their devices, which answer; the zones' new states).
        await quiet(lambda: daemon.bus.stats.total)
        figures["bus_messages_all_kinds"] = daemon.bus.stats.total - total
    finally:
        daemon.request_stop()
        await task
        gc.unfreeze()
    return figures


def award_cost(zones: int) -> float:
    offers = [
        Offer(f"z{i}", Level(shift_k=k), 200.0 * k * (1 + i % 7), k * k * (1 + i % 3))
        for i in range(zones)
        for k in (0.5, 1.0, 2.0)
    ]
    target = 0.3 * sum(o.shed_w for o in offers if o.level.shift_k == 2.0)
    t0 = time.perf_counter()
    award(offers, target)
    return time.perf_counter() - t0


def rounded(figures: Figures) -> Figures:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in figures.items()}


async def bench(tmp: Path, sizes: tuple[int, ...]) -> Figures:
    bus_rate = await raw_bus_rate(100_000)
    results: Figures = {}
    for zones in sizes:
        site_dir = generate(tmp / f"site-{zones}", zones, poll_interval_s=POLL_S)
        local = await in_process(load_site(site_dir), site_dir, tmp / f"state-{zones}-local")
        raw = local["messages"] / bus_rate
        local["baseline_raw_bus_s_for_same_messages"] = raw
        local["ratio_round_to_raw_bus"] = local["round_wall_s"] / max(raw, 1e-9)
        results[str(zones)] = {
            "in_process": rounded(local),
            "award_s": round(award_cost(zones), 5),
        }
    return {"contract_net": results, "baseline_raw_bus_messages_per_s": round(bus_rate, 1)}


def main() -> None:
    sizes = tuple(int(a) for a in sys.argv[1:]) or SIZES  # e.g. ``10 100`` for a quick look
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(bench(Path(tmp), sizes))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
