"""Contract-net round cost (JSON on stdout) at 10, 100 and 1,000 zones, on the in-process bus and
over a real mosquitto on 127.0.0.1 (started here, on a free port): the whole daemon on a
generated site, one demand-response event from the cfp to every awarded zone confirming.

- in-process: one daemon, its coordinator and zones on the ``InProcessBus``;
- mqtt: the bus carried over MQTT (``MqttBus`` on an ``MqttConnection``, ``[mqtt] bus = true``),
  split over two gateways as site.yaml ``gateways:`` puts them (bench/sitegen.py): a daemon with
  the zones and devices (gateway ``zones``), and the coordinator (gateway ``plant``) on its own
  connection, so every negotiation message crosses the broker (in one process, like
  ``tests/test_mqtt_bus.py``: both sides share one event loop and one CPU).

Both run the same way, in real time (the clock at speed 1). Before the round each zone has sent
its first commands and had them confirmed and the bus is quiet (over MQTT the broker and the
sockets still carry the start-up's messages after the zones are done); devices poll hourly
(``POLL_S``), so no poll wave falls into one transport's round and not the other's. The
coordinator awards as soon as the last answer is in, and sees the award confirmed as soon as the
last confirmation is, without waiting for its tick.

Reported per transport: the round's wall time, when its steps were done (``phases_s``: cfps
sent, awards sent, confirmed, from the negotiation's history), when the bench saw it and the
process's CPU time until then, the conversation's
messages (counted by kind on the coordinator's bus; over MQTT also on the zones' bus, any
difference as ``lost``) and per zone, the cfp rounds, the bus's traffic before the round, and
every bus message from the cfp until the bus is quiet again (the awards set off commands to the
devices); per size, the award computation alone and the ratio mqtt / in-process of the round's
wall time; beside them the raw cost of the same number of messages on each transport, measured
in the same run. ``python bench/bench_negotiation.py 10 100`` runs only those sizes.

Over MQTT the package's bus refuses the zones' confirmations (``confirmation_refused``); while it
does, the bench registers a content model for them and says so in the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_control import raw_bus_rate, settings_for
from pydantic import Field
from sitegen import generate

from buildingd.agents.bus import Envelope, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    COORDINATOR,
    AdjustmentsMsg,
    Content,
    DemandResponseCall,
    zone_address,
)
from buildingd.clock import ScaledClock
from buildingd.config.loader import Site, load_site
from buildingd.control.contract_net import Level, Offer, award
from buildingd.coordinator.agent import CoordinatorAgent
from buildingd.coordinator.negotiation import NegotiationState
from buildingd.drivers.base import DriverContext
from buildingd.evaluate import NullSink
from buildingd.metrics import Metrics
from buildingd.mqtt.bus import MqttBus, content_problem
from buildingd.mqtt.bus_auth import load_or_create_key
from buildingd.mqtt.connection import MqttConnection
from buildingd.service.app import Daemon
from buildingd.settings import GatewaySettings, MqttSettings
from tests.servers import Mosquitto

SIZES = (10, 100, 1000)
START = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)  # a Monday, occupied
POLL_S = 3600.0  # device poll interval: one poll at start, none in the round
CHECK_S = 0.0002  # how often the bench looks whether the answers are in
QUIET_MESSAGES = 2  # in half a second: the bus is quiet before the round
RAW_MQTT_MESSAGES = 2000
S = NegotiationState
Figures = dict[str, Any]


def confirmation_refused() -> str | None:
    """Why ``MqttBus`` refuses a zone's confirmation of an award (inform-done ``{"level": ...}``),
    or None. No demand-response content model takes it (they forbid extra fields), so over MQTT
    every confirmation, and every restore confirmation (``{"restored": true}``), is dropped as
    invalid content: the coordinator never hears them and the negotiation fails at CONFIRM_S."""
    done = Envelope(performative=Performative.INFORM_DONE, sender=zone_address("z0000"),
                    receiver=COORDINATOR, ontology=DemandResponseCall.ontology,
                    content={"level": "shift 1K"})  # fmt: skip
    problem = content_problem(done)
    return None if problem is None else f"invalid content ({done.ontology}: {problem})"


STAND_INS: list[type[Content]] = []


def stand_in_for_confirmations() -> None:
    """Until the package has a model for the zones' inform-done, the bench registers one (the
    bus finds content models as ``Content`` subclasses), so the round can be measured."""

    class DemandResponseDone(Content):
        ontology: ClassVar[str] = DemandResponseCall.ontology
        level: str | None = Field(default=None, max_length=50)
        restored: bool = False

    STAND_INS.append(DemandResponseDone)  # __subclasses__ holds weak references


class PendingPublishes(logging.Filter):
    """Counts (and keeps off stderr) aiomqtt's "There are N pending publish calls." warning: it
    is logged for every QoS 1 publish while more than 10 are awaiting their acknowledgement."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().endswith("pending publish calls."):
            self.count += 1
            return False
        return True


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
    """Until ``count`` (messages) stands still for half a second, before the round and after it:
    over MQTT the broker and the sockets still carry messages after the agents are done."""
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


def mqtt_settings(client_id: str | None = None) -> MqttSettings:
    return MqttSettings(enabled=True, bus=True, client_id=client_id)


async def over_mqtt(site: Site, site_dir: Path, state: Path, broker: Mosquitto) -> Figures:
    clock = ScaledClock(START, 1.0)
    # The coordinator's gateway: its own connection and bus; it must hear the zones' first
    # states, so it is up before the zones start.
    conn = MqttConnection(
        mqtt_settings("bench-coordinator"), site.site_id, broker.host, broker.port
    )
    key_file = state / "bus.key"  # the site's bus key, shared by both gateways
    bus = MqttBus(conn, lambda name: name == COORDINATOR, load_or_create_key(key_file))
    ctx = AgentContext(bus=bus, clock=clock, site=site, drivers=DriverContext(clock=clock),
                       metrics=Metrics())  # fmt: skip
    coordinator = CoordinatorAgent(ctx, state_dir=state / "coordinator")
    (state / "coordinator").mkdir(parents=True, exist_ok=True)
    await conn.start()
    assert await conn.wait_connected(10), "the coordinator did not connect to mosquitto"
    started = asyncio.Event()
    agent = asyncio.ensure_future(coordinator.run(started.set))
    await started.wait()

    base = settings_for(site_dir, state / "zones")
    settings = base.model_copy(update={
        "mqtt": mqtt_settings().model_copy(
            update={"host": broker.host, "port": broker.port, "bus_key_file": key_file}),
        "gateway": GatewaySettings(id="zones"),
    })  # fmt: skip
    daemon = Daemon(settings, site, clock=clock, sink_factory=NullSink)
    assert isinstance(daemon.bus, MqttBus) and daemon.mqtt is not None
    task = asyncio.ensure_future(daemon.run())
    try:
        await daemon.ready.wait()
        await settle(daemon, coordinator)
        zones_conn = daemon.mqtt

        def received_now() -> int:
            return conn.counters.received + zones_conn.counters.received

        await quiet(received_now)
        background = await per_second(received_now)
        before_c = dr_kinds(bus.stats.by_kind)
        before_z = dr_kinds(daemon.bus.stats.by_kind)
        total, received = daemon.bus.stats.total, received_now()
        dropped0 = coordinator.inbox.dropped
        figures = await one_round(coordinator, len(site.zones))
        # Both connections receive every bus message (each bus subscribes to all of them),
        # the zones' their own publishes back too: what the one process handles meanwhile.
        figures["mqtt_received_in_round"] = received_now() - received
        at_coordinator = counted(figures, before_c, dr_kinds(bus.stats.by_kind), len(site.zones))
        figures["background_mqtt_received_per_s"] = background
        await quiet(received_now)  # the last rejections reach the zones
        figures["bus_messages_all_kinds"] = daemon.bus.stats.total - total  # on the zones' bus
        figures["mqtt_received_all_kinds"] = received_now() - received
        at_zones = dr_kinds(daemon.bus.stats.by_kind) - before_z
        # Each message is counted once on each side (sent on one, delivered on the other).
        kinds = set(at_coordinator) | set(at_zones)
        figures["lost"] = sum(abs(at_coordinator[k] - at_zones[k]) for k in kinds)
        figures["coordinator_inbox_dropped"] = coordinator.inbox.dropped - dropped0
        figures["invalid"] = bus.stats.invalid + daemon.bus.stats.invalid
        figures["publish_failed"] = (
            conn.counters.publish_failed + daemon.mqtt.counters.publish_failed
        )
    finally:
        daemon.request_stop()
        await task
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent
        await conn.stop()
    return figures


async def raw_mqtt_rate(broker: Mosquitto, n: int = RAW_MQTT_MESSAGES) -> float:
    """Envelopes per second from one connection to another through mosquitto, published one
    after the other at QoS 1 (as ``MqttBus.send`` does), nothing validated."""
    pub = MqttConnection(mqtt_settings("bench-raw-pub"), "raw", broker.host, broker.port)
    sub = MqttConnection(mqtt_settings("bench-raw-sub"), "raw", broker.host, broker.port)
    got = [0]
    topic = f"{sub.base}/bus/{zone_address('z0000')}"
    sub.subscribe(topic, lambda t, p, r: got.__setitem__(0, got[0] + 1), qos=1)
    for conn in (pub, sub):
        await conn.start()
        assert await conn.wait_connected(10)
    await asyncio.sleep(0.2)  # the subscription settles
    call = DemandResponseCall(target_w=1000.0, window_s=1800.0, reason="bench")
    cfp = call.envelope(
        Performative.CFP, COORDINATOR, zone_address("z0000"), conversation_id="c" * 16
    )
    body = json.dumps({"origin": "raw", "envelope": cfp.model_dump(mode="json")})
    t0 = time.perf_counter()
    for _ in range(n):
        await pub.publish(topic, body, qos=1)
    await until(lambda: got[0] >= n, 30, "raw MQTT messages")
    rate = n / (time.perf_counter() - t0)
    await pub.stop()
    await sub.stop()
    return rate


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


async def bench(broker: Mosquitto, tmp: Path, sizes: tuple[int, ...]) -> Figures:
    refused = confirmation_refused()
    if refused is not None:
        stand_in_for_confirmations()
    pending = PendingPublishes()
    logging.getLogger("mqtt").addFilter(pending)
    bus_rate = await raw_bus_rate(100_000)
    mqtt_rate = await raw_mqtt_rate(broker)
    results: Figures = {}
    for zones in sizes:
        site_dir = generate(tmp / f"site-{zones}", zones, poll_interval_s=POLL_S)
        site = load_site(site_dir)  # once: both transports run the same site
        local = await in_process(site, site_dir, tmp / f"state-{zones}-local")
        apart = generate(tmp / f"site-{zones}-apart", zones, POLL_S, coordinator_apart=True)
        mqtt = await over_mqtt(load_site(apart), apart, tmp / f"state-{zones}-mqtt", broker)
        for figures, rate, name in ((local, bus_rate, "bus"), (mqtt, mqtt_rate, "mqtt")):
            raw = figures["messages"] / rate
            figures[f"baseline_raw_{name}_s_for_same_messages"] = raw
            figures[f"ratio_round_to_raw_{name}"] = figures["round_wall_s"] / max(raw, 1e-9)
        results[str(zones)] = {
            "in_process": rounded(local),
            "mqtt": rounded(mqtt),
            "ratio_mqtt_to_in_process": round(mqtt["round_wall_s"] / local["round_wall_s"], 2),
            "award_s": round(award_cost(zones), 5),
        }
    return {
        "contract_net": results,
        "mqtt": {
            "broker": "mosquitto on 127.0.0.1",
            "qos": "1 for cfp, propose, refuse, accept/reject, inform-done; 0 for inform",
            "raw_messages_per_s": round(mqtt_rate, 1),
            "aiomqtt_pending_publish_warnings": pending.count,
            # Why the package's MqttBus refuses the zones' award confirmations (None: it takes
            # them); while it does, the bench registers a content model for them.
            "confirmation_refused_by_package": refused,
            "stand_in_confirmation_model": refused is not None,
        },
        "baseline_raw_bus_messages_per_s": round(bus_rate, 1),
    }


def main() -> None:
    sizes = tuple(int(a) for a in sys.argv[1:]) or SIZES  # e.g. ``10 100`` for a quick look
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        broker.start()
        try:
            out = asyncio.run(bench(broker, Path(tmp), sizes))
        finally:
            broker.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
