"""The MQTT connection and the agent bus over a real broker (mosquitto, and the embedded amqtt):
delivery, will and availability, reconnect, bad input counted and never raised, a flood."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from buildingd.agents.bus import Envelope, Mailbox, Performative
from buildingd.mqtt.broker import EmbeddedBroker
from buildingd.mqtt.bus import MqttBus
from buildingd.mqtt.connection import MqttConnection, topic_matches
from buildingd.settings import MqttSettings
from tests.servers import Mosquitto

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(params=["mosquitto", "amqtt"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    if request.param == "mosquitto":
        mosq = Mosquitto(tmp_path / "mosquitto")
        mosq.start()
        yield mosq.host, mosq.port
        mosq.stop()
    else:
        embedded = EmbeddedBroker()
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
    return Envelope(
        performative=Performative.REQUEST,
        sender=sender,
        receiver=receiver,
        ontology="command",
        content={"point_id": "level", "value": 50.0},
    )


async def raw_publish(host: str, port: int, topic: str, payloads: list[bytes]) -> None:
    async with aiomqtt.Client(host, port, identifier="intruder") as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


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
    bus_a = MqttBus(conn_a, lambda name: name == "zone[f1-office]")
    bus_b = MqttBus(conn_b, lambda name: name == "device[lights]")
    await asyncio.sleep(0.3)  # the subscriptions settle
    inbox = Mailbox("device[lights]")
    bus_b.subscribe("device[lights]", inbox)

    sent = request_envelope("zone[f1-office]", "device[lights]")
    await bus_a.send(sent)
    got = await asyncio.wait_for(inbox.get(), 5)
    assert got == sent

    topic = f"{conn_b.base}/bus/device[lights]"
    good = sent.model_dump(mode="json")
    bad = [
        b"not json at all",
        b"[1, 2, 3]",  # JSON of the wrong shape
        json.dumps({"origin": "x", "envelope": {**good, "performative": "shout"}}).encode(),
        json.dumps({"origin": "x", "envelope": {**good, "content": "NaN", "ontology": 7}}).encode(),
        # a remote message claiming to be one of gw-b's own agents
        json.dumps({"origin": "x", "envelope": {**good, "sender": "device[lights]"}}).encode(),
        # a command from something that is not a zone or the coordinator
        json.dumps({"origin": "x", "envelope": {**good, "sender": "hacker"}}).encode(),
        b"{" + b" " * (1024 * 1024) + b"}",  # 1 MB
    ]
    await raw_publish(host, port, topic, bad)
    await until(lambda: bus_b.stats.invalid + conn_b.counters.oversized == len(bad))
    assert conn_b.counters.oversized == 1
    assert bus_b.invalid_by_reason == {
        "not JSON": 1, "wrong shape": 1, "invalid envelope": 2, "forged sender": 2,
    }  # fmt: skip
    assert len(inbox) == 0  # none reached the agent
    assert any("invalid message on" in r.message and topic in r.message for r in caplog.records)

    # A flood: 10,000 messages from another client; the connection survives and keeps working.
    flood = [
        json.dumps({"origin": "x", "envelope": good | {"sender": "zone[f2]"}}).encode()
    ] * 10_000
    await raw_publish(host, port, topic, flood)
    await until(lambda: bus_b.stats.by_kind["request/command"] >= 1000, timeout_s=30)
    await bus_a.send(sent)
    assert conn_b.connected.is_set() and conn_b.counters.handler_errors == 0
    await conn_a.stop()
    await conn_b.stop()


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
    await until(lambda: statuses[-1:] == [b"online"])

    mosquitto.stop()  # the broker dies: both clients lose it
    await until(lambda: not conn.connected.is_set())
    assert not await conn.publish("site/test", b"lost")  # refused while down, counted
    assert conn.counters.publish_failed == 1
    reconnected.clear()
    mosquitto.start()
    assert await conn.wait_connected(15)
    await asyncio.wait_for(reconnected.wait(), 5)
    assert await watcher.wait_connected(15)
    watcher.subscribe("buildingd/hq/status", lambda t, p, r: statuses.append(p), qos=1)
    assert await conn.publish("site/test", b"after", qos=1)
    await until(lambda: received == [b"after"])  # resubscribed after the restart
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
    await until(lambda: seen[-2:] == [b"online", b"offline"], timeout_s=15)
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
