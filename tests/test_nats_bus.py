"""The agent bus between gateways over a real 3-node NATS JetStream cluster: a command for a
gateway that is down waits in the site's stream and is delivered once when it is back (an hour
later too); a repeated publish is stored once; an expired command is refused to its sender; a
forged or replayed one, and every other kind of bad message, is refused and counted; an envelope
for an agent of the same gateway stays off NATS, one that cannot be published is counted; a
gateway's NATS user cannot reach another site; commands sent together go as one batch, and a
forged or replayed batch is refused and counted."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import nats
import nats.errors
import pytest

from buildingd.agents.bus import Envelope, Mailbox, Performative
from buildingd.agents.messages import (
    DEMAND_RESPONSE_TOPIC,
    CommandMsg,
    DemandResponseCall,
    RefusalMsg,
)
from buildingd.metrics import Metrics
from buildingd.nats import subjects
from buildingd.nats.bus import NatsBus
from buildingd.nats.connection import NatsErrors, connect
from buildingd.nats.seal import BusSealer
from buildingd.settings import NatsSettings
from tests.conftest import until
from tests.nats_cluster import ADMIN, NatsCluster, publish_stored

pytestmark = pytest.mark.nats

KEY = b"0123456789abcdef0123456789abcdef"  # the test site's bus key
ROUTE = {"device[t1]": "b", "zone[z1]": "a"}  # the thermostat on gateway b, its zone on a
THERMOSTAT, ZONE = "device[t1]", "zone[z1]"
WAIT_S = 30.0  # a bound for a loaded machine, not a speed requirement
# A command lost in flight comes again after the consumer's ack wait (5 s): this bound leaves a
# loaded machine 20 s more (gateway b starts inside it), and is still below JetStream's default
# (30 s, what it was), so the old ack wait fails it.
LOST_IN_FLIGHT_S = 25.0


def nats_settings(cluster: NatsCluster, user: str) -> NatsSettings:
    return NatsSettings(enabled=True, servers=cluster.urls, user=user, password=f"pw-{user}")


@asynccontextmanager
async def gateway(
    cluster: NatsCluster,
    gateway_id: str,
    boxes: dict[str, Mailbox] | None = None,
    clock: Callable[[], float] = time.time,
    leads: Callable[[], bool] | None = None,
) -> AsyncIterator[NatsBus]:
    """Gateway ``gateway_id`` of site hq: its bus on the cluster, its agents' mailboxes
    subscribed, taking its commands until the block ends (the gateway going down). With
    ``leads``: a coordinator candidate (requests for the coordinator go to its queue, which
    it takes while it leads)."""
    settings = nats_settings(cluster, f"hq-{gateway_id}")
    local = [a for a, g in ROUTE.items() if g == gateway_id]

    def route(address: str) -> str | None:
        if address == DEMAND_RESPONSE_TOPIC and leads is not None:
            return gateway_id if leads() else subjects.COORDINATOR_QUEUE
        return ROUTE.get(address)

    bus = NatsBus(settings, "hq", gateway_id, route, local.__contains__, KEY,
                  clock=clock, metrics=Metrics(), leads=leads)  # fmt: skip
    await bus.start()
    for address, box in (boxes or {}).items():
        bus.subscribe(address, box)
    try:
        async with asyncio.TaskGroup() as tasks:
            runner = tasks.create_task(bus.run(), name=f"nats-bus[{gateway_id}]")
            yield bus
            runner.cancel()
    finally:
        await bus.stop()


def command(value: float, reply_by: datetime | None = None) -> Envelope:
    msg = CommandMsg(point_id="heating_sp", value=value, zone_id="z1", reason="test")
    return msg.envelope(Performative.REQUEST, ZONE, THERMOSTAT, reply_with=f"c{value}",
                        reply_by=reply_by)  # fmt: skip


async def received(box: Mailbox) -> Envelope:
    return await asyncio.wait_for(box.get(), WAIT_S)


async def values_until_sentinel(bus: NatsBus, box: Mailbox) -> list[float]:
    """Every command value in ``box`` up to a sentinel command sent now: what arrived before it
    is all that arrived (the stream delivers a consumer's messages in order)."""
    await bus.send(command(-1.0))
    values: list[float] = []
    while True:
        env = await received(box)
        value = CommandMsg.parse(env).value
        if value == -1.0:
            return values
        values.append(value)


async def values_until_all(
    bus: NatsBus, box: Mailbox, expected: set[float], within_s: float = 45.0
) -> list[float]:
    """``values_until_sentinel``, then on until every ``expected`` value came or ``within_s``
    passed: a delivery lost in flight when a NATS node dies comes again only after the
    consumer's ack wait (``COMMAND_ACK_WAIT_S``), behind the sentinel."""
    values = await values_until_sentinel(bus, box)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not expected <= set(values) and (left := deadline - loop.time()) > 0:
        try:
            env = await asyncio.wait_for(box.get(), left)
        except TimeoutError:
            break
        values.append(CommandMsg.parse(env).value)
    return values


async def test_a_command_for_a_gateway_that_is_down_is_delivered_once_when_it_is_back(
    nats_cluster: NatsCluster,
) -> None:
    async with gateway(nats_cluster, "b"):
        pass  # b has run once (its consumer exists) and is down now
    async with gateway(nats_cluster, "a") as a:
        await a.send(command(21.5, reply_by=datetime.now(UTC) + timedelta(hours=2)))
        await a.send(command(22.0))
        assert a.stats.unpublished == 0
        # b comes back an hour later (its clock says so): the commands waited in the stream;
        # their seals are judged against the time the stream stored them, not as stale.
        box = Mailbox(THERMOSTAT, overflow="block")
        later = lambda: time.time() + 3600  # noqa: E731
        async with gateway(nats_cluster, "b", {THERMOSTAT: box}, clock=later) as b:
            first, second = await received(box), await received(box)
            assert [CommandMsg.parse(e).value for e in (first, second)] == [21.5, 22.0]
            assert first.sender == ZONE and first.reply_with == "c21.5"
            assert await values_until_sentinel(a, box) == []  # nothing delivered twice
            assert b.stats.invalid == 0
    # Acknowledged: not delivered again when b restarts once more.
    async with gateway(nats_cluster, "b", {THERMOSTAT: box}), gateway(nats_cluster, "a") as a:
        assert await values_until_sentinel(a, box) == []


async def test_a_publish_repeated_with_its_message_id_is_delivered_once(
    nats_cluster: NatsCluster,
) -> None:
    box = Mailbox(THERMOSTAT, overflow="block")
    async with gateway(nats_cluster, "a") as a, gateway(nats_cluster, "b", {THERMOSTAT: box}):
        subject = subjects.command_subject("hq", "b", THERMOSTAT)
        body = a.sealer.seal(subject, command(19.0).model_dump(mode="json"))
        msg_id = {"Nats-Msg-Id": f"{a.origin}-{a.sealer.counter}"}
        assert a.js is not None
        acks = [await a.js.publish(subject, body, headers=dict(msg_id)) for _ in range(3)]
        assert [bool(ack.duplicate) for ack in acks] == [False, True, True]
        assert len({ack.seq for ack in acks}) == 1
        assert await values_until_sentinel(a, box) == [19.0]


async def test_a_command_past_its_reply_by_is_refused_to_its_sender(
    nats_cluster: NatsCluster,
) -> None:
    zone_box, box = Mailbox(ZONE, overflow="block"), Mailbox(THERMOSTAT, overflow="block")
    async with gateway(nats_cluster, "a", {ZONE: zone_box}) as a:
        # Sent while b is down; its reply-by time passes before b is back.
        await a.send(command(30.0, reply_by=datetime.now(UTC) - timedelta(seconds=1)))
        async with gateway(nats_cluster, "b", {THERMOSTAT: box}) as b:
            refusal = await received(zone_box)
            assert refusal.performative is Performative.REFUSE
            assert (refusal.sender, refusal.in_reply_to) == (THERMOSTAT, "c30.0")
            content = RefusalMsg.parse(refusal)
            assert content.refused_ontology == "command"
            assert content.reason.startswith("expired")
            assert await values_until_sentinel(a, box) == []  # never written
            assert b.expired == 1 and b.invalid_by_reason["expired"] == 1
            assert b.metrics is not None
            assert b.metrics.counters['buildingd_bus_refused_total{reason="expired"}'] == 1


async def test_forged_and_replayed_commands_are_refused_and_counted(
    nats_cluster: NatsCluster,
) -> None:
    box = Mailbox(THERMOSTAT, overflow="block")
    # The intruder holds a gateway's NATS password, not the site's bus key.
    intruder = await nats.connect(servers=nats_cluster.urls, user="hq-a", password="pw-hq-a")
    js = intruder.jetstream()
    subject = subjects.command_subject("hq", "b", THERMOSTAT)
    captured: asyncio.Queue[bytes] = asyncio.Queue()

    async def capture(msg: nats.aio.msg.Msg) -> None:
        captured.put_nowait(msg.data)

    # What it replays it overheard on the network (a gateway's user may not subscribe to
    # another gateway's commands): captured here with the cluster's own credentials.
    sniffer = await nats.connect(nats_cluster.urls, user=ADMIN.name, password=ADMIN.password)
    await sniffer.subscribe(subject, cb=capture)
    try:
        async with (
            gateway(nats_cluster, "a") as a,
            gateway(nats_cluster, "b", {THERMOSTAT: box}) as b,
        ):
            forger = BusSealer(b"not the site key, but long enough", "intruder")
            forged = forger.seal(subject, command(35.0).model_dump(mode="json"))
            await publish_stored(js, subject, forged, "forged-1")
            await a.send(command(20.0))
            genuine = await asyncio.wait_for(captured.get(), WAIT_S)
            while json.loads(genuine)["origin"] != a.origin:  # the forged one went by first
                genuine = await asyncio.wait_for(captured.get(), WAIT_S)
            assert json.loads(genuine)["envelope"]["content"]["value"] == 20.0
            await publish_stored(js, subject, genuine, "replay-1")
            assert await values_until_sentinel(a, box) == [20.0]
            assert b.invalid_by_reason == {"unauthenticated": 1, "replayed": 1}
            assert b.stats.invalid == 2
    finally:
        await intruder.close()
        await sniffer.close()


async def test_every_kind_of_bad_message_is_refused_counted_and_logged_once(
    nats_cluster: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # What the MQTT bus was tested against (tests/test_mqtt_bus.py before it was retired), on
    # the bus between gateways: every refusal reason, none raised into the receiver, none
    # reaching the agent, each reason logged once, and the bus goes on after them.
    box = Mailbox(THERMOSTAT, overflow="block")
    intruder = await nats.connect(servers=nats_cluster.urls, user="hq-a", password="pw-hq-a")
    # core NATS, to b's agent: judged by b's own clock
    subject = subjects.gateway_agent_subject("hq", "b", THERMOSTAT)
    good = command(20.0).model_dump(mode="json")
    content = good["content"]
    sealer = BusSealer(KEY, "gw-x")

    def sealed(envelope: dict[str, object]) -> bytes:
        return sealer.seal(subject, envelope)

    one = sealed({**good, "content": {**content, "value": 1.0}})
    bad = {
        # Literal NaN / Infinity tokens: Python's json takes them, JSON does not.
        "not JSON": [
            b"not json",
            one.replace(b"1.0", b"NaN"),
            one.replace(b"1.0", b"-Infinity"),
            one.replace(b"1.0", b"1e999"),
        ],  # fmt: skip
        "wrong shape": [b"[1, 2, 3]", b'{"origin": "x", "envelope": 7}'],
        "unauthenticated": [
            json.dumps({"origin": "x", "envelope": good}).encode(),  # no seal
            BusSealer(b"another site's key", "gw-x").seal(subject, good),
            sealed(good).replace(b'"heating_sp"', b'"cooling_sp"'),  # altered after sealing
        ],
        "stale": [BusSealer(KEY, "gw-old", clock=lambda: time.time() - 3600).seal(subject, good)],
        "invalid envelope": [sealed({**good, "performative": "shout"})],
        "receiver mismatch": [sealed({**good, "receiver": "device[t2]"})],
        "forged sender": [
            sealed({**good, "sender": THERMOSTAT}),  # gateway b's own agent
            sealed({**good, "sender": "hacker"}),  # commands come from zones or the coordinator
        ],
        # A well-formed envelope whose content is not a command: the agent would fail on it.
        "invalid content": [sealed({**good, "content": {"point_id": "level"}})],
    }
    try:
        async with (
            gateway(nats_cluster, "a") as a,
            gateway(nats_cluster, "b", {THERMOSTAT: box}) as b,
        ):
            for payloads in bad.values():
                for payload in payloads:
                    await intruder.publish(subject, payload)
            await intruder.flush()
            total = sum(len(payloads) for payloads in bad.values())
            await until(lambda: b.stats.invalid == total, "every bad message counted")
            assert b.invalid_by_reason == {reason: len(p) for reason, p in bad.items()}
            assert b.metrics is not None
            assert b.metrics.counters['buildingd_bus_refused_total{reason="not JSON"}'] == 4
            assert len(box) == 0  # none reached the agent
            logged = [r.getMessage() for r in caplog.records if "bus: refused (" in r.getMessage()]
            assert sorted(m.split("(", 1)[1].split(")")[0] for m in logged) == sorted(bad)
            assert await values_until_sentinel(a, box) == []  # the bus goes on
    finally:
        await intruder.close()


async def test_an_envelope_for_an_agent_of_this_gateway_stays_off_nats(
    nats_cluster: NatsCluster,
) -> None:
    """A command from a zone to a device of the same gateway is delivered in process and not
    published: the other gateways would only check it to find nobody to give it to."""
    box = Mailbox(THERMOSTAT, overflow="block")
    watcher = await nats.connect(nats_cluster.urls, user=ADMIN.name, password=ADMIN.password)
    seen: list[str] = []

    async def record(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.subject)

    await watcher.subscribe("buildingd.hq.>", cb=record)
    route = {**ROUTE, ZONE: "b"}  # the zone on the thermostat's gateway
    bus = NatsBus(nats_settings(nats_cluster, "hq-b"), "hq", "b", route.get,
                  {ZONE, THERMOSTAT}.__contains__, KEY)  # fmt: skip
    await bus.start()
    try:
        bus.subscribe(THERMOSTAT, box)
        here = command(21.0)
        await bus.send(here)
        assert await received(box) == here
        sentinel = Envelope(performative=Performative.INFORM, sender="daemon",
                            receiver="readings/z1", ontology="test")  # fmt: skip
        await bus.send(sentinel)  # a topic: published; once seen, all before it was seen
        await until(lambda: seen != [], "the topic's message on NATS")
        assert seen == [subjects.agent_subject("hq", "readings/z1")]
    finally:
        await bus.stop()
        await watcher.close()


async def heard(send: Callable[[], Awaitable[None]], box: Mailbox) -> Envelope:
    """What ``send`` sends, once ``box`` has it: sent again each second until then (a new
    subscription reaches the cluster's other nodes soon after; core NATS drops what is sent
    before)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            await send()
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(box.get(), 1.0)


async def test_a_gateway_takes_from_nats_only_what_its_agents_listen_to(
    nats_cluster: NatsCluster,
) -> None:
    """The server sends gateway b only informs for a topic one of b's agents listens to and
    for b's own agents: not the other topics (a 1,000-zone round's readings and states, which
    b would parse only to drop), nor b's own messages back."""
    zone, thermostat = Mailbox(ZONE), Mailbox(THERMOSTAT)

    def inform(receiver: str, value: float = 0.0) -> Envelope:
        return Envelope(performative=Performative.INFORM, sender="daemon", receiver=receiver,
                        ontology="test", content={"value": value})  # fmt: skip

    async with (
        gateway(nats_cluster, "a") as a,
        gateway(nats_cluster, "b", {"readings/z1": zone, THERMOSTAT: thermostat}) as b,
    ):
        await b.listening()
        await heard(lambda: a.send(inform("readings/z1")), zone)
        await asyncio.sleep(1.0)  # a copy sent before the one that came, then dropped
        while zone.get_nowait() is not None:
            pass
        before = b.core_received
        await b.send(inform("readings/z1", 1.0))  # delivered here; not sent back by NATS
        assert (await received(zone)).content == {"value": 1.0}
        await b.nc.flush()  # type: ignore[union-attr]
        for n in range(100):
            await a.send(inform("readings/z2", n))  # nobody on b listens to these
            await a.send(inform("zone-state", n))
        await a.send(inform(THERMOSTAT, 2.0))  # b's agent: on b's own subject
        await a.send(inform("readings/z1", 3.0))  # a's messages come in order: the last
        assert (await received(thermostat)).content == {"value": 2.0}
        assert (await received(zone)).content == {"value": 3.0}
        assert b.core_received - before == 2
        assert b.stats.invalid == 0


async def test_an_inform_for_the_coordinator_reaches_the_gateway_that_leads(
    nats_cluster: NatsCluster,
) -> None:
    """Gateway a does not lead: what it says to the coordinator (here its demand-response
    topic) goes to the coordinator's queue on core NATS too, which the leader b hears."""
    box = Mailbox("coordinator")
    async with (
        gateway(nats_cluster, "a", leads=lambda: False) as a,
        gateway(nats_cluster, "b", {DEMAND_RESPONSE_TOPIC: box}, leads=lambda: True) as b,
    ):
        await b.listening()
        inform = Envelope(performative=Performative.INFORM, sender="daemon",
                          receiver=DEMAND_RESPONSE_TOPIC, ontology="test")  # fmt: skip
        got = await heard(lambda: a.send(inform), box)
        assert (got.sender, got.ontology) == ("daemon", "test")
        assert a.stats.unpublished == 0 and b.stats.invalid == 0


async def test_an_envelope_not_published_is_counted_and_logged() -> None:
    # Not connected (no cluster at all): a command for another gateway cannot go out; it is
    # counted by kind, never raised into the sending agent.
    metrics = Metrics()
    settings = NatsSettings(enabled=True, servers=["nats://127.0.0.1:1"])
    bus = NatsBus(settings, "hq", "a", ROUTE.get, {ZONE}.__contains__, KEY, metrics=metrics)
    for _ in range(3):
        await bus.send(command(20.0))
    assert bus.stats.unpublished == 3
    assert metrics.counters['buildingd_bus_unpublished_total{kind="request/command"}'] == 3


async def test_a_gateway_of_one_site_cannot_reach_another_site_s_subjects(
    nats_cluster: NatsCluster,
) -> None:
    box = Mailbox("readings/z1")
    errors = NatsErrors()
    other = await connect(nats_settings(nats_cluster, "other-x"), "other-x", errors)
    try:
        async with (
            gateway(nats_cluster, "a") as a,
            gateway(nats_cluster, "b", {"readings/z1": box}) as b,
        ):
            subject = subjects.agent_subject("hq", "readings/z1")
            sealed = BusSealer(KEY, "other-site").seal(subject, {"forged": True})
            await other.publish(subject, sealed)
            await other.flush()
            await until(lambda: errors.by_kind.get("permissions", 0) >= 1,
                        "the server's permissions violation")  # fmt: skip
            with pytest.raises(nats.errors.Error):  # the stream's API is closed to it too
                await other.jetstream(timeout=2).stream_info(subjects.stream_name("hq"))
            # Only hq's own message reaches hq's agents.
            reading = Envelope(performative=Performative.INFORM, sender="daemon",
                               receiver="readings/z1", ontology="test")  # fmt: skip
            await a.send(reading)
            got = await received(box)
            assert (got.sender, got.ontology) == ("daemon", "test")
            assert len(box) == 0 and b.stats.invalid == 0
    finally:
        await other.close()


async def test_a_gateway_cannot_listen_to_what_is_sent_to_another_gateway(
    nats_cluster: NatsCluster,
) -> None:
    """Gateway a's NATS user may not subscribe to the informs other gateways address to b's
    agents, nor to the commands published into the site's stream for b: refused by the
    server, nothing received; b's agent gets its inform."""
    box = Mailbox(THERMOSTAT)
    errors = NatsErrors()
    eavesdropper = await connect(nats_settings(nats_cluster, "hq-a"), "eavesdropper", errors)
    overheard: list[str] = []

    async def overhear(msg: nats.aio.msg.Msg) -> None:
        overheard.append(msg.subject)

    try:
        async with (
            gateway(nats_cluster, "a") as a,
            gateway(nats_cluster, "b", {THERMOSTAT: box}) as b,
        ):
            await b.listening()
            for subject in (subjects.gateway_agents("hq", "b"),
                            subjects.gateway_commands("hq", "b")):  # fmt: skip
                await eavesdropper.subscribe(subject, cb=overhear)
            await eavesdropper.flush()
            await until(lambda: errors.by_kind.get("permissions", 0) >= 2,
                        "the server's permissions violations")  # fmt: skip
            inform = Envelope(performative=Performative.INFORM, sender=ZONE,
                              receiver=THERMOSTAT, ontology="test")  # fmt: skip
            await a.send(inform)
            await a.send(command(20.0))
            assert (await received(box)).ontology == "test"
            assert CommandMsg.parse(await received(box)).value == 20.0
            await eavesdropper.flush()
            assert overheard == []
    finally:
        await eavesdropper.close()


async def test_no_command_is_lost_or_doubled_when_the_stream_leader_is_killed(
    nats_cluster: NatsCluster,
) -> None:
    box = Mailbox(THERMOSTAT, maxsize=10_000, overflow="block")
    async with gateway(nats_cluster, "a") as a, gateway(nats_cluster, "b", {THERMOSTAT: box}):
        assert a.js is not None
        for i in range(300):
            if i == 100:  # SIGKILL the node leading the site's stream, mid-stream
                info = await a.js.stream_info(subjects.stream_name("hq"))
                leader = info.cluster.leader if info.cluster is not None else None
                killed = [n.name for n in nats_cluster.nodes].index(leader)
                nats_cluster.kill(killed)
            await a.send(command(float(i)))
        assert a.stats.unpublished == 0
        values = await values_until_all(a, box, set(map(float, range(300))))
        doubled = sorted(v for v, n in collections.Counter(values).items() if n > 1)
        lost = sorted(set(map(float, range(300))) - set(values))
        assert (lost, doubled, len(values)) == ([], [], 300)  # each exactly once
        nats_cluster.restart(killed)


async def test_a_command_whose_delivery_was_lost_in_flight_comes_again_within_seconds(
    nats_cluster: NatsCluster,
) -> None:
    """A delivery lost in flight (a NATS node dying between the consumer's leader and the
    gateway) is seen by JetStream only as a command not acknowledged: it comes again after the
    consumer's ack wait, which was JetStream's 30 s (commands up to 30 s late after a node
    died, issue 19). Here the loss is made exact: a client with b's NATS user pulls b's command
    and goes away without an answer; b, up again, must get it within ``LOST_IN_FLIGHT_S``."""
    async with gateway(nats_cluster, "b"):
        pass  # b's consumer exists; b is down
    async with gateway(nats_cluster, "a") as a:
        await a.send(command(21.0))
        await a.published()
    lost = await connect(nats_settings(nats_cluster, "hq-b"), "lost-in-flight", NatsErrors())
    try:
        sub = await lost.jetstream(timeout=5).pull_subscribe_bind(
            durable=subjects.consumer_name("b"), stream=subjects.stream_name("hq")
        )
        [msg] = await sub.fetch(1, timeout=WAIT_S)  # delivered, never acknowledged
        lost_at = time.monotonic()
    finally:
        await lost.close()
    assert msg.metadata.num_delivered == 1
    box = Mailbox(THERMOSTAT, overflow="block")
    async with gateway(nats_cluster, "b", {THERMOSTAT: box}):
        env = await received(box)
        late_s = time.monotonic() - lost_at
    assert CommandMsg.parse(env).value == 21.0
    assert late_s < LOST_IN_FLIGHT_S, f"delivered again {late_s:.1f} s after it was lost"


async def test_a_gateway_cannot_take_another_gateway_s_commands(
    nats_cluster: NatsCluster,
) -> None:
    """Gateway a's NATS user may pull only from its own consumer: b's commands stay b's."""
    box = Mailbox(THERMOSTAT, overflow="block")
    async with gateway(nats_cluster, "b", {THERMOSTAT: box}):
        pass  # b's consumer exists; b is down
    errors = NatsErrors()
    thief = await connect(nats_settings(nats_cluster, "hq-a"), "thief", errors)
    try:
        async with gateway(nats_cluster, "a") as a:
            await a.send(command(23.0))
            stream = subjects.stream_name("hq")
            with pytest.raises(nats.errors.Error):  # pulling from b's consumer
                sub = await thief.jetstream(timeout=2).pull_subscribe_bind(
                    durable=subjects.consumer_name("b"), stream=stream
                )
                await sub.fetch(1, timeout=2)
            with pytest.raises(nats.errors.Error):  # a consumer of its own on b's commands
                await thief.jetstream(timeout=2).pull_subscribe(
                    subjects.gateway_commands("hq", "b"), durable="gw_a2", stream=stream
                )
            assert errors.by_kind.get("permissions", 0) >= 1
            async with gateway(nats_cluster, "b", {THERMOSTAT: box}):
                assert await values_until_sentinel(a, box) == [23.0]
    finally:
        await thief.close()


async def test_a_request_for_the_coordinator_is_acknowledged_once_it_is_durable(
    nats_cluster: NatsCluster,
) -> None:
    """A demand-response request in the coordinator's queue stays in the stream until the
    leader that took it says the event is durable (``settle``): one that lost its lease first
    hands it back, and it is taken again, by the next leader or by itself leading again (not
    refused as a replay), and acknowledged once. Guards that a leader dying between taking a
    request and storing the event it opened loses nothing."""
    leading = {"a": True, "b": False}
    answers = {"a": [False, True], "b": [True]}  # a loses its lease before storing, once
    boxes = {g: Mailbox(g, overflow="block") for g in leading}

    def settle(gateway_id: str, then: dict[str, bool]) -> Callable[[], Awaitable[bool]]:
        async def settled() -> bool:
            durable = answers[gateway_id].pop(0)
            if not durable:
                leading.update(then)
            return durable

        return settled

    request = DemandResponseCall(target_w=500, window_s=600, reason="grid").envelope(
        Performative.REQUEST, "mqtt-bridge", DEMAND_RESPONSE_TOPIC, conversation_id="r1"
    )
    async with (
        gateway(nats_cluster, "a", {DEMAND_RESPONSE_TOPIC: boxes["a"]},
                leads=lambda: leading["a"]) as a,
        gateway(nats_cluster, "b", {DEMAND_RESPONSE_TOPIC: boxes["b"]},
                leads=lambda: leading["b"]) as b,
    ):  # fmt: skip
        for bus in (a, b):
            bus.settle_for = frozenset({DEMAND_RESPONSE_TOPIC})
        # a's first settle fails and b leads next: b takes the request a handed back.
        a.settle = settle("a", {"a": False, "b": True})
        b.settle = settle("b", {})
        await b.send(request)  # b does not lead yet: into the coordinator's queue
        for box in boxes.values():
            assert (await received(box)).conversation_id == "r1"
        await until(lambda: not answers["b"], "b acknowledged it")
        # Now b hands it back once and leads on: it takes it again (its counter forgotten).
        answers["b"] = [False, True]
        b.settle = settle("b", {})
        await a.send(request.model_copy(update={"conversation_id": "r2"}))
        assert (await received(boxes["b"])).conversation_id == "r2"
        assert (await received(boxes["b"])).conversation_id == "r2"
        await until(lambda: not answers["b"], "b acknowledged it")
        assert a.stats.invalid == b.stats.invalid == 0  # nothing refused as a replay
        # Acknowledged: the consumer holds nothing more for anyone, nothing else came.
        assert b.js is not None
        deadline = time.monotonic() + WAIT_S
        while True:
            info = await b.js.consumer_info(subjects.stream_name("hq"),
                                            subjects.COORDINATOR_CONSUMER)  # fmt: skip
            if (info.num_pending, info.num_ack_pending) == (0, 0):
                break
            assert time.monotonic() < deadline, info
            await asyncio.sleep(0.1)
        assert len(boxes["a"]) == len(boxes["b"]) == 0


async def test_durable_publishes_are_pipelined_stored_once_and_in_order_between_two_agents(
    nats_cluster: NatsCluster,
) -> None:
    """Guards the publish pipeline (issue 19): a send returns before its acknowledgement, so
    many are in flight at once (each used to wait for its own round trip); still every command
    is stored once, and those from one agent to another in the order sent."""
    box = Mailbox(THERMOSTAT, maxsize=10_000, overflow="block")
    zones = [f"zone[z{i}]" for i in range(20)]
    async with gateway(nats_cluster, "a") as a, gateway(nats_cluster, "b", {THERMOSTAT: box}):
        most_in_flight = 0
        for value in range(10):
            for zone in zones:
                msg = CommandMsg(point_id="heating_sp", value=value, zone_id=None, reason="test")
                await a.send(msg.envelope(Performative.REQUEST, zone, THERMOSTAT))
                most_in_flight = max(most_in_flight, a.in_flight)
        await a.published()
        assert a.stats.unpublished == 0 and not a.publishing and a.in_flight == 0
        assert most_in_flight > 1
        got = [await received(box) for _ in range(10 * len(zones))]
        by_sender: dict[str, list[float]] = collections.defaultdict(list)
        for env in got:
            by_sender[env.sender].append(CommandMsg.parse(env).value)
        assert by_sender == {zone: [float(v) for v in range(10)] for zone in zones}
        assert await values_until_sentinel(a, box) == []  # nothing more, nothing twice


async def sent_in_one_turn(bus: NatsBus, values: list[float]) -> None:
    """Commands sent one after the other with nothing awaited in between: one batch."""
    for value in values:
        await bus.send(command(value))


async def test_commands_sent_in_one_loop_turn_go_as_one_batch_delivered_once_after_a_restart(
    nats_cluster: NatsCluster,
) -> None:
    """Guards batching (issue 19, the round across gateways): what one gateway sends to
    another's agents in one loop turn is one message in the stream (one seal, one publish),
    waits there while the receiving gateway is down, and is delivered once, in order, when it
    is back; acknowledged, it is not delivered again after another restart."""
    async with gateway(nats_cluster, "b"):
        pass  # b has run once (its consumer exists) and is down now
    async with gateway(nats_cluster, "a") as a:
        assert a.js is not None
        stream = subjects.stream_name("hq")
        before = (await a.js.stream_info(stream)).state.messages
        await sent_in_one_turn(a, [21.0, 21.5, 22.0])
        await a.published()
        assert a.stats.unpublished == 0
        assert (await a.js.stream_info(stream)).state.messages == before + 1  # one batch
        box = Mailbox(THERMOSTAT, overflow="block")
        async with gateway(nats_cluster, "b", {THERMOSTAT: box}) as b:
            assert await values_until_sentinel(a, box) == [21.0, 21.5, 22.0]
            assert b.stats.invalid == 0
    async with gateway(nats_cluster, "b", {THERMOSTAT: box}), gateway(nats_cluster, "a") as a:
        assert await values_until_sentinel(a, box) == []  # acknowledged: not again


async def test_a_forged_or_replayed_batch_is_refused_and_counted_and_each_envelope_checked(
    nats_cluster: NatsCluster,
) -> None:
    """A batch sealed without the site's key is refused whole and counted; a genuine batch
    published again is refused as a replay; in a genuine batch each envelope is checked on its
    own (a forged sender refused and counted, the others delivered)."""
    box = Mailbox(THERMOSTAT, overflow="block")
    intruder = await nats.connect(servers=nats_cluster.urls, user="hq-a", password="pw-hq-a")
    js = intruder.jetstream()
    subject = subjects.batch_subject("hq", "b")
    captured: asyncio.Queue[bytes] = asyncio.Queue()

    async def capture(msg: nats.aio.msg.Msg) -> None:
        captured.put_nowait(msg.data)

    # What it replays it overheard on the network (a gateway's user may not subscribe to
    # another gateway's commands): captured here with the cluster's own credentials.
    sniffer = await nats.connect(nats_cluster.urls, user=ADMIN.name, password=ADMIN.password)
    await sniffer.subscribe(subject, cb=capture)
    good, forged_sender = command(24.0), command(25.0).model_copy(update={"sender": "hacker"})
    try:
        async with (
            gateway(nats_cluster, "a") as a,
            gateway(nats_cluster, "b", {THERMOSTAT: box}) as b,
        ):
            forger = BusSealer(b"not the site key, but long enough", "intruder")
            batch = [command(35.0).model_dump(mode="json"), command(36.0).model_dump(mode="json")]
            await publish_stored(js, subject, forger.seal(subject, batch), "f-1")
            mixed = [good.model_dump(mode="json"), forged_sender.model_dump(mode="json")]
            insider = BusSealer(KEY, "gw-x")  # holds the key: still no forged sender gets in
            await publish_stored(js, subject, insider.seal(subject, mixed), "m-1")
            await sent_in_one_turn(a, [20.0, 21.0])
            genuine = await asyncio.wait_for(captured.get(), WAIT_S)
            while json.loads(genuine)["origin"] != a.origin:  # the others went by first
                genuine = await asyncio.wait_for(captured.get(), WAIT_S)
            await publish_stored(js, subject, genuine, "replay-1")
            assert await values_until_sentinel(a, box) == [24.0, 20.0, 21.0]
            assert b.invalid_by_reason == {"unauthenticated": 1, "forged sender": 1,
                                           "replayed": 1}  # fmt: skip
            assert b.stats.invalid == 3
    finally:
        await intruder.close()
        await sniffer.close()
