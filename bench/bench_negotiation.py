"""Contract-net round cost (JSON on stdout) at 10, 100 and 1,000 zones: the whole daemon on a
generated site (virtual time), one demand-response event from cfp to every awarded zone
confirming. Reported: wall-clock CPU time of the round, messages in the conversation per zone,
the cfp rounds it took, and the award computation alone; beside the in-process bus's raw cost
for the same number of messages, measured in the same run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_control import raw_bus_rate, settings_for
from sitegen import generate

from buildingd.agents.messages import DemandResponseCall
from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.coordinator.contract_net import Level, Offer, award
from buildingd.coordinator.negotiation import NegotiationState
from buildingd.evaluate import NullSink
from buildingd.service.app import Daemon

SIZES = (10, 100, 1000)


async def one_round(site_dir: Path, state: Path) -> dict[str, float]:
    site = load_site(site_dir)
    start = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)
    daemon = Daemon(settings_for(site_dir, state), site, clock=ScaledClock(start, 1.0),
                    sink_factory=NullSink)  # fmt: skip
    task = asyncio.ensure_future(daemon.run(4 * 3600))
    await daemon.ready.wait()
    await asyncio.sleep(1800)  # zones settle and report their demand
    coordinator = daemon.coordinator
    assert coordinator is not None
    demand = sum((z.hvac_w or 0) + (z.lighting_w or 0) for z in coordinator.zones.values())
    stats = daemon.bus.stats
    before = dr_messages(stats.by_kind)
    cpu0 = time.process_time()
    conversation = coordinator.open_demand_response(max(100.0, 0.2 * demand), 1800, "bench")
    await coordinator.flush()
    run = coordinator.negotiations[conversation]
    while run.negotiation.state in (NegotiationState.COLLECTING, NegotiationState.AWARDING):  # noqa: ASYNC110
        await asyncio.sleep(1)
    cpu = time.process_time() - cpu0
    # By kind, not by conversation: with 1,000 zones the commands' own conversations push this
    # one out of the bus's bounded per-conversation count. The event is the only negotiation.
    messages = dr_messages(stats.by_kind) - before
    state_reached = run.negotiation.state.value
    daemon.request_stop()
    await task
    return {
        "round_cpu_s": cpu,
        "messages": messages,
        "messages_per_zone": messages / len(site.zones),
        "zones_awarded": len(run.awarded),
        "rounds": run.round,  # cfp rounds before the award (the policy allows up to 3)
        "state": state_reached,  # type: ignore[dict-item]
    }


def dr_messages(by_kind: Counter[str]) -> int:
    """Demand-response messages counted so far (the bus counts "performative/ontology")."""
    return sum(n for kind, n in by_kind.items() if kind.endswith(f"/{DemandResponseCall.ontology}"))


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


def main() -> None:
    import looptime

    bus_rate = asyncio.run(raw_bus_rate(100_000))
    results: dict[str, object] = {}
    for zones in SIZES:
        with tempfile.TemporaryDirectory() as tmp:
            site_dir = generate(Path(tmp) / "site", zones, poll_interval_s=60.0)
            loop = looptime.new_event_loop(start=0.0)
            try:
                figures = loop.run_until_complete(one_round(site_dir, Path(tmp) / "state"))
            finally:
                loop.close()
        figures["award_s"] = award_cost(zones)
        figures["baseline_raw_bus_s_for_same_messages"] = figures["messages"] / bus_rate
        figures["ratio_round_to_raw_bus"] = figures["round_cpu_s"] / max(
            figures["baseline_raw_bus_s_for_same_messages"], 1e-9
        )
        results[str(zones)] = {
            k: (round(v, 5) if isinstance(v, float) else v) for k, v in figures.items()
        }
    print(json.dumps({"contract_net": results}, indent=2))


if __name__ == "__main__":
    main()
