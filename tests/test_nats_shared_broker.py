"""Two ``buildingd run`` gateways of one site (a real 3-node NATS cluster, both coordinator
candidates) sharing ONE mosquitto broker, as Home Assistant users run them: a request sent over
MQTT acts once (a demand-response request opens one event, a vote or a set request is answered
once, by the gateway running the coordinator; the site's events are published once; while the
coordinator is taken over, one gateway answers so), and each entity's availability follows the
gateway that runs it, so killing one gateway leaves the other's entities available (the
retained availability topics read back from the broker)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests.daemon_proc import Running, start_daemon
from tests.nats_cluster import NatsCluster, gateway_env
from tests.servers import Mosquitto

pytestmark = [pytest.mark.nats, pytest.mark.slow]
WAIT_S = 90.0  # generous: two daemons, three NATS servers and mosquitto on a loaded 2-core machine
SETTLE_S = 3.0  # after the first answer: long enough for a second gateway's to arrive
BASE = "buildingd/demo-office"
NODE = "homeassistant/binary_sensor/buildingd_demo-office"
THERMOSTAT = "f1-reception-thermostat"


class Listener:
    """A client on the shared broker keeping every message it receives (retained ones too)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-listener")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(f"{BASE}/#", 1), ("homeassistant/#", 1)])
        self.client.loop_start()

    def _on_message(self, _client: Any, _data: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def last(self, topic: str) -> bytes | None:
        got = self.on(topic)
        return got[-1] if got else None

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained(port: int, topic: str) -> bytes | None:
    """The retained message on ``topic`` as a new client reads it from the broker."""
    got: list[bytes] = []
    done = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)

    def on_message(_c: Any, _d: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
        done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic, 1)
    client.loop_start()
    done.wait(2.0)  # a retained message comes at once after the SUBACK; none: nothing retained
    client.loop_stop()
    client.disconnect()
    return got[0] if got else None


def until(check: Any, what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    pytest.fail(f"not within {timeout_s:g} s: {what}")


def answers(listener: Listener, topic: str) -> list[dict[str, Any]]:
    """The answers on ``topic``: waits for the first, then for any other to arrive."""
    until(lambda: listener.on(topic), f"an answer on {topic}")
    time.sleep(SETTLE_S)
    return [json.loads(p) for p in listener.on(topic)]


@pytest.fixture
def shared(
    site_copy: Path, tmp_path: Path, nats_cluster: NatsCluster, mosquitto: Mosquitto
) -> Iterator[tuple[Running, Running, Listener]]:
    """Devices on ``devices``, every zone on ``zones``, both candidates; ``zones`` starts
    first and leads. Both are connected to ``mosquitto`` with Home Assistant discovery on."""
    with (site_copy / "site.yaml").open("a") as out:
        out.write("\ngateways:\n  - {id: devices, coordinator: true}\n"
                  '  - {id: zones, zones: ["*"], coordinator: true}\n')  # fmt: skip
    for path in (site_copy / "devices").glob("*.yaml"):
        path.write_text("gateway: devices\n" + path.read_text())
    key = tmp_path / "bus.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    listener = Listener(mosquitto.port)
    started: list[Running] = []
    try:
        for name in ("zones", "devices"):
            env = gateway_env(nats_cluster, "demo-office", name, key) | {
                "BUILDINGD_MQTT__ENABLED": "true",
                "BUILDINGD_MQTT__HOST": "127.0.0.1",
                "BUILDINGD_MQTT__PORT": str(mosquitto.port),
                "BUILDINGD_MQTT__HOMEASSISTANT_DISCOVERY": "true",
            }
            (tmp_path / name).mkdir()
            daemon = start_daemon(site_copy, tmp_path / name, env=env, speed=30.0)
            started.append(daemon)
            daemon.wait_ready(WAIT_S)
            if name == "zones":
                daemon.until(lambda d=daemon: d.metric("buildingd_coordinator_lease_revision"),
                             "zones leads", WAIT_S)  # fmt: skip
        zones, devices = started
        devices.until(lambda: devices.json("/healthz")["leader"] == "zones",
                      "devices sees zones lead", WAIT_S)  # fmt: skip
        for name in ("zones", "devices"):  # each bridge has heard the other's availability
            until(lambda n=name: listener.last(f"{BASE}/gateway/{n}/status") == b"online",
                  f"{name} online")  # fmt: skip
        time.sleep(1.0)
        yield zones, devices, listener
    finally:
        listener.close()
        for daemon in started:
            daemon.close()


def test_a_request_over_a_shared_broker_acts_once(
    shared: tuple[Running, Running, Listener],
) -> None:
    """Guards against each gateway's bridge taking the request: before, two gateways opened
    two events for one demand-response request, and a vote or set request was answered twice
    (the standby saying "the coordinator is not running")."""
    zones, devices, listener = shared
    reason = "grid call over a shared broker"
    before = len(listener.on(f"{BASE}/events"))  # both up and each heard the other
    listener.publish(
        f"{BASE}/demand-response/request",
        json.dumps({"target_w": 1500, "window_s": 1800, "reason": reason}),
    )

    def opened() -> set[str]:
        return {m.group(1) for d in (zones, devices) for line in d.output if reason in line
                and (m := re.search(r"outcome=collecting conversation=(\w+)", line))}  # fmt: skip

    until(opened, "the demand-response event opened")
    run_awarded = lambda: any(  # noqa: E731
        r["awarded"] for r in zones.json("/api/negotiations") if r["conversation_id"] in opened()
    )
    until(run_awarded, "the event awarded")  # by then a second request would have opened too
    assert len(opened()) == 1, opened()
    # The site's events (non-retained) once each, not once per gateway: the coordinator's
    # events reach both gateways over NATS, and only the coordinator's gateway publishes them.
    events = listener.on(f"{BASE}/events")[before:]
    negotiation = [e for e in events if json.loads(e)["kind"] == "negotiation"]
    doubled = [e for e in set(events) if events.count(e) > 1]
    assert negotiation and not doubled, doubled

    listener.publish(f"{BASE}/zone/f1-reception/vote", "cold")
    votes = answers(listener, f"{BASE}/zone/f1-reception/vote/result")
    assert [v["accepted"] for v in votes] == [True], votes

    listener.publish(f"{BASE}/zone/f1-meeting/set/mode", "standby")
    results = answers(listener, f"{BASE}/zone/f1-meeting/set/result")
    assert [r["result"] for r in results] == ["accepted"], results


def test_one_gateway_dying_leaves_the_others_entities_available(
    shared: tuple[Running, Running, Listener], mosquitto: Mosquitto
) -> None:
    """Guards against one availability topic for the whole site: before, every gateway's will
    wrote the one retained ``status`` "offline", so one gateway dying made every entity of the
    site unavailable in Home Assistant."""
    zones, devices, _ = shared

    def config(entity: str) -> dict[str, Any]:
        found = retained(mosquitto.port, f"{NODE}/{entity}_problem/config")
        assert found is not None, entity
        return dict(json.loads(found))

    zone_entity, device_entity = config("f1-reception"), config(THERMOSTAT)
    assert zone_entity["availability_topic"] == f"{BASE}/gateway/zones/status"
    assert device_entity["availability_topic"] == f"{BASE}/gateway/devices/status"
    devices.proc.kill()  # SIGKILL: the broker publishes its will
    until(lambda: retained(mosquitto.port, f"{BASE}/gateway/devices/status") == b"offline",
          "the dead gateway's will")  # fmt: skip
    assert retained(mosquitto.port, f"{BASE}/gateway/zones/status") == b"online"
    assert retained(mosquitto.port, f"{BASE}/status") is None  # nobody marks the whole site
    assert zones.proc.poll() is None


def test_while_the_coordinator_is_taken_over_one_gateway_says_so(
    shared: tuple[Running, Running, Listener],
) -> None:
    """Guards against the standby answering "the coordinator is not running" in the seconds
    after the leader's gateway died (before its lease aged out): a vote then is answered once,
    by the gateway left, saying the coordinator is being taken over and to send it again."""
    zones, devices, listener = shared
    zones.proc.kill()  # SIGKILL: the broker publishes its will; its lease ages out (6 s)
    until(lambda: listener.last(f"{BASE}/gateway/zones/status") == b"offline", "the will")
    listener.publish(f"{BASE}/zone/f1-reception/vote", "cold")
    votes = answers(listener, f"{BASE}/zone/f1-reception/vote/result")
    assert devices.metric("buildingd_coordinator_lease_revision") == 0  # not taken over yet
    assert [v["accepted"] for v in votes] == [False], votes
    assert "taking over" in votes[0]["reason"] and "again" in votes[0]["reason"], votes
