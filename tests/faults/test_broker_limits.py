"""Fault suite, the embedded broker (issue 14): five 20 MB retained payloads used to stay in the
daemon's memory (RSS 53 -> 226 MB); now a retained payload above the size limit, or past the
bound on retained bytes, is not kept. And a password file shuts anonymous clients out.
Against the real amqtt broker in-process, with aiomqtt clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest
from pwdlib import PasswordHash

from buildingd.mqtt.broker import EmbeddedBroker
from buildingd.mqtt.broker_limits import REFUSED
from tests.conftest import free_port
from tests.daemon_proc import start_daemon

MB = 1024 * 1024


async def retained_on_connect(broker: EmbeddedBroker, topic_filter: str) -> dict[str, int]:
    """What a new subscriber is handed as retained: topic -> payload size. The sentinel topic,
    retained last, marks the end (a broker sends retained messages in no promised order, so
    the test waits until everything it expects, sentinel included, has come)."""
    got: dict[str, int] = {}
    async with aiomqtt.Client(broker.host, broker.port, identifier="late") as client:
        await client.subscribe(topic_filter, qos=1)
        async with asyncio.timeout(30):
            async for message in client.messages:
                got[str(message.topic)] = len(message.payload)  # type: ignore[arg-type]
                if "t/sentinel" in got:
                    return got
    return got


async def test_an_oversized_publish_disconnects_its_client_unread() -> None:
    broker = EmbeddedBroker(max_payload_bytes=1 * MB, max_retained_bytes=3 * MB)
    await broker.start()
    before = dict(REFUSED)
    try:
        async with aiomqtt.Client(broker.host, broker.port, identifier="watcher") as watcher:
            await watcher.subscribe("t/#", qos=1)
            with pytest.raises(aiomqtt.MqttError):  # the 20 MB payload, retained
                async with aiomqtt.Client(broker.host, broker.port, identifier="big") as big:
                    await big.publish("t/huge", b"x" * (20 * MB), qos=1, retain=True)
                    await big.publish("t/after", b"never", qos=1)
            # The broker goes on: a normal publish still reaches the watcher, the huge never did.
            async with aiomqtt.Client(broker.host, broker.port, identifier="small") as small:
                await small.publish("t/small", b"ok", qos=1)
            async with asyncio.timeout(30):
                async for message in watcher.messages:
                    assert str(message.topic) == "t/small", message.topic
                    break
        assert REFUSED["publish"] == before["publish"] + 1
        assert not broker._broker.retained_messages
    finally:
        await broker.stop()


async def test_retained_payloads_are_bounded_in_total() -> None:
    broker = EmbeddedBroker(max_payload_bytes=1 * MB, max_retained_bytes=3 * MB)
    await broker.start()
    try:
        async with aiomqtt.Client(broker.host, broker.port, identifier="filler") as client:
            for n in range(4):  # 0.9 MB each: three fit in 3 MB, the fourth does not
                await client.publish(f"t/ok{n}", b"y" * (900 * 1024), qos=1, retain=True)
            await client.publish("t/sentinel", b"end", qos=1, retain=True)
        got = await retained_on_connect(broker, "t/#")
        assert sorted(t for t in got if t.startswith("t/ok")) == ["t/ok0", "t/ok1", "t/ok2"]
        kept = sum(len(m.data) for m in broker._broker.retained_messages.values())
        assert kept <= 3 * MB
    finally:
        await broker.stop()


async def test_a_password_file_shuts_anonymous_clients_out(tmp_path: Path) -> None:
    users = tmp_path / "broker-passwords"
    users.write_text(f"buildingd:{PasswordHash.recommended().hash('s3cret')}\n")
    broker = EmbeddedBroker(password_file=users)
    await broker.start()
    try:
        for who, password in ((None, None), ("buildingd", "wrong"), ("mallory", "s3cret")):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(broker.host, broker.port, username=who,
                                          password=password, identifier="x"):  # fmt: skip
                    pass
        async with aiomqtt.Client(broker.host, broker.port, username="buildingd",
                                  password="s3cret", identifier="ok") as client:  # fmt: skip
            await client.publish("t/x", b"1", qos=1)
    finally:
        await broker.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_the_daemons_embedded_broker_takes_a_password_and_bounds_retained_bytes(
    site_copy: Path, tmp_path: Path
) -> None:
    """The issue's row, on the real daemon: five 20 MB retained payloads took RSS 53 -> 226 MB;
    now each is refused before it is read, its client disconnected."""
    import paho.mqtt.client as mqtt

    users = tmp_path / "broker-passwords"
    users.write_text(f"buildingd:{PasswordHash.recommended().hash('s3cret')}\n")
    port = free_port()
    env = {
        "BUILDINGD_MQTT__ENABLED": "true",
        "BUILDINGD_MQTT__PORT": str(port),
        "BUILDINGD_MQTT__USERNAME": "buildingd",
        "BUILDINGD_MQTT__PASSWORD": "s3cret",
        "BUILDINGD_MQTT__BROKER_PASSWORD_FILE": str(users),
    }
    daemon = start_daemon(site_copy, tmp_path, env=env, speed=1.0)
    daemon.wait_ready()
    try:
        assert daemon.metric("buildingd_mqtt_connected") == 1.0  # it logged in to its broker
        before = rss_mb(daemon.proc.pid)
        anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon")
        assert anonymous.connect("127.0.0.1", port) == 0  # TCP; the broker answers CONNACK
        anonymous.loop_start()
        daemon.until(lambda: not anonymous.is_connected(), "the anonymous client refused")
        anonymous.loop_stop()

        for n in range(5):  # each 20 MB publish costs its client the connection, unread
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"filler{n}")
            client.username_pw_set("buildingd", "s3cret")
            client.connect("127.0.0.1", port)
            client.loop_start()
            daemon.until(client.is_connected, "the filler connected")
            client.publish(f"t/huge{n}", b"x" * (20 * MB), qos=1, retain=True)
            daemon.until(lambda c=client: not c.is_connected(), "the filler disconnected")
            client.loop_stop()
        daemon.until(
            lambda: daemon.metric("buildingd_broker_refused_total", what="publish") == 5.0,
            "five refusals counted",
        )
        assert sum("above max_payload_bytes" in line for line in daemon.output) == 5
        grown = rss_mb(daemon.proc.pid) - before
        # Not kept: at most a transient buffer's worth remains (the issue saw +173 MB).
        assert grown < 60, f"RSS grew {grown:.0f} MB"
    finally:
        daemon.stop()
