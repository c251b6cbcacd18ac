"""The MQTT connection and the agent bus over a real broker (mosquitto, and the embedded amqtt):
delivery, will and availability, reconnect, bad input (NaN/Infinity tokens, 1 MB) counted and
never raised, a flood of 10,000 envelopes accounted for to the last."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from buildingd.agents.bus import Envelope, Mailbox, Performative
from buildingd.agents.messages import CommandMsg
from buildingd.metrics import Metrics
from buildingd.mqtt.broker import EmbeddedBroker
from buildingd.mqtt.bus import MqttBus
from buildingd.mqtt.bus_auth import BusSealer
from buildingd.mqtt.connection import MqttConnection, suback_refusal, topic_matches
from buildingd.settings import MqttSettings
from tests.conftest import free_port, until
from tests.servers import Mosquitto, flood_command

pytestmark = pytest.mark.mosquitto
KEY = b"0123456789abcdef0123456789abcdef"  # the test site's bus key


@pytest.fixture(params=["mosquitto", "amqtt"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    if request.param == "mosquitto":
        mosq = Mosquitto(tmp_path / "mosquitto")
        mosq.start()
        yield mosq.host, mosq.port
        mosq.stop()
    else:
        # Above the daemon connection's own 256 kB bound, so that bound is what is tested here
        # (the broker's refusal of larger publishes: tests/faults/test_broker_limits.py).
        embedded = EmbeddedBroker(max_payload_bytes=4 * 1024 * 1024)
        await embedded.start()
        yield embedded.host, embedded.port
        await embedded.stop()


def settings(**kw: object) -> MqttSettings:
    return MqttSettings.model_validate({"enabled": True, "reconnect_max_s": 0.5, **kw})


async def connected(host: str, port: int, name: str) -> MqttConnection:
    conn = MqttConnection(settings(client_id=name), "hq", host, port)
    await conn.start()
    assert await conn.wait_connected(10)
    return conn


def request_envelope(sender: str, receiver: str) -> Envelope:
    return CommandMsg(point_id="level", value=50.0, zone_id=None, reason="test").envelope(
        Performative.REQUEST, sender, receiver
    )


async def raw_publish(host: str, port: int, topic: str, payloads: list[bytes]) -> None:
    async with aiomqtt.Client(host, port, identifier="intruder") as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


def test_topic_filters_follow_the_mqtt_rules() -> None:
    assert topic_matches("a/+/c", "a/b/c")
    assert topic_matches("a/#", "a/b/c")
    assert topic_matches("a/#", "a")  # '#' also matches the parent level
    assert not topic_matches("a/+", "a/b/c")
    assert not topic_matches("a/b", "a/b/c")


async def test_envelopes_cross_processes_and_bad_ones_are_counted(
    broker: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    host, port = broker
    conn_a, conn_b = await connected(host, port, "gw-a"), await connected(host, port, "gw-b")
    bus_a = MqttBus(conn_a, lambda name: name == "zone[f1-office]", KEY)
    bus_b = MqttBus(conn_b, lambda name: name == "device[lights]", KEY)
    await asyncio.sleep(0.3)  # the subscriptions settle
    inbox = Mailbox("device[lights]")
    bus_b.subscribe("device[lights]", inbox)

    sent = request_envelope("zone[f1-office]", "device[lights]")
    await bus_a.send(sent)
    got = await asyncio.wait_for(inbox.get(), 5)
    assert got == sent

    topic = f"{conn_b.base}/bus/device[lights]"
    good = sent.model_dump(mode="json")
    content = good["content"]

    sealer = BusSealer(KEY, "gw-x")

    def wrapped(envelope: dict[str, object]) -> bytes:
        return sealer.seal(topic, envelope)

    replayed = wrapped(good)

    bad = {
        "not JSON": [
            b"not json at all",
            # Literal NaN / Infinity tokens: Python's json takes them, JSON does not.
            wrapped({**good, "content": {**content, "value": 1.0}}).replace(b"1.0", b"NaN"),
            wrapped({**good, "content": {**content, "value": 1.0}}).replace(b"1.0", b"-Infinity"),
            wrapped({**good, "content": {**content, "value": 1.0}}).replace(b"1.0", b"1e999"),
        ],
        "wrong shape": [b"[1, 2, 3]"],
        "unauthenticated": [
            json.dumps({"origin": "x", "envelope": good}).encode(),  # no seal
            BusSealer(b"another site's key", "gw-x").seal(topic, good),
            replayed.replace(b'"level"', b'"setpoint"'),  # altered after sealing
        ],
        "stale": [BusSealer(KEY, "gw-old", clock=lambda: time.time() - 3600).seal(topic, good)],
        "invalid envelope": [
            wrapped({**good, "performative": "shout"}),
            wrapped({**good, "content": "NaN", "ontology": 7}),
        ],
        "forged sender": [
            wrapped({**good, "sender": "device[lights]"}),  # one of gw-b's own agents
            wrapped({**good, "sender": "hacker"}),  # commands come from zones or the coordinator
        ],
        # A well-formed envelope whose content is not a command: the agent would fail on it.
        "invalid content": [wrapped({**good, "content": {"point_id": "level"}})],
        "oversized": [b"{" + b" " * (1024 * 1024) + b"}"],  # 1 MB
        "replayed": [replayed],  # the same sealed message a second time (the first is delivered)
    }
    await raw_publish(host, port, topic, [replayed])
    assert await asyncio.wait_for(inbox.get(), 5) == sent  # sealed with the site's key: heard
    await raw_publish(host, port, topic, [p for payloads in bad.values() for p in payloads])
    total = sum(len(payloads) for payloads in bad.values())
    await until(lambda: bus_b.stats.invalid == total, "every bad envelope counted")
    assert bus_b.invalid_by_reason == {reason: len(p) for reason, p in bad.items()}
    assert conn_b.counters.oversized == 1
    assert conn_b.counters.by_reason == {"oversized": 1}
    assert len(inbox) == 0  # none reached the agent
    logged = [r.message for r in caplog.records]  # (gw-a, subscribed to the bus too, logs too)
    for reason in set(bad) - {"oversized"}:
        assert any(f"invalid message on {topic}: {reason}" in m for m in logged), reason
    assert any(f"{topic}: payload of 1048578 bytes refused" in m for m in logged)

    await bus_a.send(sent)  # and the bus goes on
    assert await asyncio.wait_for(inbox.get(), 5) == sent
    assert conn_b.connected.is_set() and conn_b.counters.handler_errors == 0
    await conn_a.stop()
    await conn_b.stop()


async def test_an_envelope_for_a_local_agent_stays_off_the_broker(mosquitto: Mosquitto) -> None:
    """A zone's command to a device agent of the same process is delivered in process and not
    published: other gateways would only validate it to find nobody to give it to."""
    conn = await connected(mosquitto.host, mosquitto.port, "gw-a")
    local = {"zone[f1-office]", "device[heater]"}
    bus = MqttBus(conn, local.__contains__, KEY)
    inbox = Mailbox("device[heater]")
    bus.subscribe("device[heater]", inbox)
    seen: list[str] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="watcher") as watcher:
        await watcher.subscribe(f"{conn.base}/bus/#", qos=1)
        here = request_envelope("zone[f1-office]", "device[heater]")
        await bus.send(here)
        await bus.send(request_envelope("zone[f1-office]", "device[lights]"))  # elsewhere
        async with asyncio.timeout(10):
            async for message in watcher.messages:
                seen.append(str(message.topic))
                if str(message.topic).endswith("device[lights]"):
                    break
    assert await asyncio.wait_for(inbox.get(), 5) == here
    assert seen == [f"{conn.base}/bus/device[lights]"]
    await conn.stop()


async def test_a_flood_of_envelopes_is_accounted_for_to_the_last(mosquitto: Mosquitto) -> None:
    # 10,000 QoS 1 envelopes from another process: every one is received and validated, and
    # the receiving mailbox (1,000, drop-oldest) counts what it had to drop. None is lost
    # unaccounted, and the bus still carries a message after the flood.
    conn_a = await connected(mosquitto.host, mosquitto.port, "gw-a")
    conn_b = await connected(mosquitto.host, mosquitto.port, "gw-b")
    bus_a = MqttBus(conn_a, lambda name: name == "zone[f1-office]", KEY)
    bus_b = MqttBus(conn_b, lambda name: name == "device[lights]", KEY)
    inbox = Mailbox("device[lights]", maxsize=1000, overflow="drop_oldest")
    bus_b.subscribe("device[lights]", inbox)
    await asyncio.sleep(0.3)
    flood = request_envelope("zone[f2]", "device[lights]").model_dump(mode="json")
    template = json.dumps(flood | {"conversation_id": "{i}"})
    topic = f"{conn_b.base}/bus/device[lights]"
    count = 10_000
    publisher = await asyncio.create_subprocess_exec(
        *flood_command(mosquitto.host, mosquitto.port, topic, count, template, 1, KEY)
    )
    assert await asyncio.wait_for(publisher.wait(), 60) == 0  # all acknowledged by the broker
    await until(lambda: bus_b.stats.by_kind["request/command"] >= count, "every command")
    await asyncio.sleep(0.2)  # nothing more arrives
    assert bus_b.stats.by_kind["request/command"] == count
    assert conn_b.counters.received == count
    assert bus_b.stats.invalid == 0 and conn_b.counters.handler_errors == 0
    assert len(inbox) + inbox.dropped == count
    assert len(inbox) == 1000
    # The newest survived, in order: drop-oldest kept the last 1,000 envelopes.
    kept = [int((await inbox.get()).conversation_id or "-1") for _ in range(1000)]
    assert kept == list(range(count - 1000, count))

    sent = request_envelope("zone[f1-office]", "device[lights]")
    await bus_a.send(sent)
    assert await asyncio.wait_for(inbox.get(), 5) == sent
    assert conn_b.connected.is_set() and conn_b.counters.connects == 1
    await conn_a.stop()
    await conn_b.stop()


async def test_a_backlog_larger_than_any_client_queue_loses_nothing(mosquitto: Mosquitto) -> None:
    # 30,000 QoS 1 messages in a burst. With messages queued in aiomqtt (bounded at 10,000),
    # paho acknowledged each to the broker and the full queue then discarded it with a warning:
    # 2,865 of 30,000 were lost so. Handed straight to the handlers, every one arrives, once.
    conn = await connected(mosquitto.host, mosquitto.port, "gw")
    got: list[bytes] = []
    conn.subscribe("site/flood", lambda t, p, r: got.append(p), qos=1)
    await asyncio.sleep(0.3)
    count = 30_000
    publisher = await asyncio.create_subprocess_exec(
        *flood_command(mosquitto.host, mosquitto.port, "site/flood", count, "{i}", qos=1)
    )
    assert await asyncio.wait_for(publisher.wait(), 90) == 0
    await until(lambda: len(got) >= count, "every envelope delivered", timeout_s=60)
    await asyncio.sleep(0.2)
    assert [int(p) for p in got] == list(range(count))  # all of them, once, in order
    assert conn.counters.received == count and conn.connected.is_set()
    await conn.stop()


async def test_will_reconnect_and_resubscribe(mosquitto: Mosquitto) -> None:
    watcher = await connected(mosquitto.host, mosquitto.port, "watcher")
    statuses: list[bytes] = []
    watcher.subscribe("buildingd/hq/status", lambda t, p, r: statuses.append(p), qos=1)

    conn = MqttConnection(settings(client_id="gw"), "hq", mosquitto.host, mosquitto.port)
    received: list[bytes] = []
    conn.subscribe("site/test", lambda t, p, r: received.append(p))
    reconnected = asyncio.Event()

    async def on_connect() -> None:
        reconnected.set()

    conn.on_connect(on_connect)
    await conn.start()
    assert await conn.wait_connected(10)
    await until(lambda: statuses[-1:] == [b"online"], "status online")

    mosquitto.stop()  # the broker dies: both clients lose it
    await until(lambda: not conn.connected.is_set(), "the connection lost")
    assert not await conn.publish("site/test", b"lost")  # refused while down, counted
    assert conn.counters.publish_failed == 1
    reconnected.clear()
    mosquitto.start()
    assert await conn.wait_connected(15)
    await asyncio.wait_for(reconnected.wait(), 5)
    assert await watcher.wait_connected(15)
    watcher.subscribe("buildingd/hq/status", lambda t, p, r: statuses.append(p), qos=1)
    assert await conn.publish("site/test", b"after", qos=1)
    await until(
        lambda: received == [b"after"], "resubscribed after the restart"
    )  # resubscribed after the restart
    assert conn.counters.connects == 2

    await conn.stop()
    assert statuses[-1:] == [b"offline"]  # a clean stop says goodbye too
    await watcher.stop()


CRASHING_GATEWAY = """
import asyncio, os, sys
from buildingd.mqtt.connection import MqttConnection
from buildingd.settings import MqttSettings

async def main():
    conn = MqttConnection(MqttSettings(enabled=True, client_id="doomed"), "hq", "127.0.0.1",
                          int(sys.argv[1]))
    await conn.start()
    assert await conn.wait_connected(10)
    await asyncio.sleep(0.5)
    os._exit(0)  # gone without a DISCONNECT, like a power cut

asyncio.run(main())
"""


async def test_the_will_reports_a_crashed_gateway_offline(mosquitto: Mosquitto) -> None:
    watcher = await connected(mosquitto.host, mosquitto.port, "watcher")
    seen: list[bytes] = []
    watcher.subscribe("buildingd/hq/status", lambda t, p, r: seen.append(p), qos=1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_GATEWAY, str(mosquitto.port)
    )
    assert await proc.wait() == 0
    await until(lambda: seen[-2:] == [b"online", b"offline"], "online then offline")
    await watcher.stop()


async def test_publishes_are_timestamped_envelopes() -> None:
    # The JSON form round-trips: what one gateway publishes another validates the same way.
    env = Envelope(
        performative=Performative.CFP,
        sender="coordinator",
        receiver="zone[a]",
        ontology="demand-response",
        content={"target_w": 2000},
        reply_by=datetime(2026, 11, 25, 12, tzinfo=UTC),
        conversation_id="c1",
    )
    assert Envelope.model_validate(json.loads(json.dumps(env.model_dump(mode="json")))) == env
    logging.getLogger(__name__).debug("ok")


def test_a_suback_failure_is_told_apart_from_a_grant() -> None:
    # mosquitto grants every subscribe (its ACL filters delivery), so the SUBACK codes the
    # connection must refuse on are checked as paho hands them over (MQTT 3.1.1 section 3.9.3).
    granted = [ReasonCode(PacketTypes.SUBACK, identifier=q) for q in (0, 1, 2)]
    assert suback_refusal(granted) is None
    assert suback_refusal((0, 1)) is None
    failure = ReasonCode(PacketTypes.SUBACK, identifier=0x80)
    assert suback_refusal([*granted, failure]) == "refused by the broker (SUBACK 0x80)"
    assert suback_refusal((1, 0x80)) == "refused by the broker (SUBACK 0x80)"
    not_authorized = ReasonCode(PacketTypes.SUBACK, identifier=0x87)  # MQTT 5
    assert suback_refusal([not_authorized]) == "refused by the broker (SUBACK 0x87)"


async def test_an_envelope_the_broker_never_got_is_counted_and_still_delivered_locally(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No broker listens on this port (the connection is never started): every publish fails.
    metrics = Metrics()
    conn = MqttConnection(MqttSettings(enabled=True), "hq", "127.0.0.1", free_port(), metrics)
    # The receiver listens here but is no agent of this process (a topic: others may listen).
    bus = MqttBus(conn, lambda name: name == "zone[f1-office]", KEY)
    inbox = Mailbox("device[lights]")
    bus.subscribe("device[lights]", inbox)
    for _ in range(3):
        await bus.send(request_envelope("zone[f1-office]", "device[lights]"))
    assert len(inbox) == 3  # the local receiver has every one
    assert bus.stats.unpublished == 3
    assert metrics.counters['buildingd_bus_unpublished_total{kind="request/command"}'] == 3
    assert caplog.text.count("not published (broker unreachable)") == 1  # once per outage
