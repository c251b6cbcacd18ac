"""Break-glass escalation inside the coordinator and the daemon: each trigger (a zone outside its
safety band, a device that stays down, an agent past its restart limit, a negotiation that cannot
meet its target) raises exactly one alert however long it lasts; reminders follow the interval;
an acknowledgement stops them; clearing removes the retained MQTT topic; the webhook gets JSON.

The coordinator runs on an injected clock (and the daemon on virtual time), so hours of an
incident pass in milliseconds; only the webhook and MQTT tests use real sockets."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from buildingd.agents.bus import Envelope, InProcessBus, Mailbox, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    ALERTS_TOPIC,
    COORDINATOR,
    EVENTS_TOPIC,
    AlertActionMsg,
    AlertMsg,
    EventMsg,
    ZoneStateMsg,
)
from buildingd.config.loader import Site, load_site
from buildingd.coordinator.agent import CoordinatorAgent
from buildingd.coordinator.escalation import Cause, IncidentKey
from buildingd.coordinator.webhook import WebhookSender
from buildingd.drivers.base import DriverContext
from buildingd.metrics import Metrics
from buildingd.points import PointKind
from buildingd.service.app import Daemon
from buildingd.settings import Settings
from tests.conftest import REPO, one_room_site, run_virtual, until
from tests.servers import Mosquitto
from tests.test_daemon_sim import make_daemon, run_for

START = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)  # a Monday, 09:00 in Berlin
TICK_S = 10.0


class ManualClock:
    """The coordinator's clock, moved by the test."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return START + timedelta(seconds=self.t)

    async def sleep(self, seconds: float) -> None:
        self.t += seconds

    def to_loop_seconds(self, seconds: float) -> float:
        return seconds


async def drain(box: Mailbox) -> list[Envelope]:
    out = []
    while len(box):
        out.append(await box.get())
    return out


class Coordinator:
    """A coordinator agent on an in-process bus and a manual clock; ``run_for`` ticks it like
    its loop does (every 10 s) and collects what it published on the alerts topic."""

    def __init__(self, site: Site) -> None:
        self.clock = ManualClock()
        self.bus = InProcessBus()
        self.ctx = AgentContext(
            bus=self.bus, clock=self.clock, site=site, drivers=DriverContext(clock=self.clock)
        )
        self.agent = CoordinatorAgent(self.ctx)
        self._alerts = Mailbox("test-alerts", 100_000)
        self.bus.subscribe(ALERTS_TOPIC, self._alerts)
        self.alerts: list[tuple[float, AlertMsg]] = []

    async def run_for(
        self, seconds: float, inputs: Callable[[], list[Envelope]] | None = None
    ) -> None:
        end = self.clock.t + seconds
        while self.clock.t < end:
            self.clock.t += TICK_S
            for env in inputs() if inputs is not None else []:
                self.agent.take(env)
            self.agent.tick(self.clock.t)
            await self.agent.flush()
            for env in await drain(self._alerts):
                self.alerts.append((self.clock.t, AlertMsg.parse(env)))

    async def send(self, *envs: Envelope) -> None:
        for env in envs:
            self.agent.take(env)
        await self.agent.flush()
        for env in await drain(self._alerts):
            self.alerts.append((self.clock.t, AlertMsg.parse(env)))

    def actions(self, subject: str) -> list[tuple[float, str]]:
        return [(t, m.action) for t, m in self.alerts if subject in m.subjects]


def zone_state(zone_id: str, temperature_c: float | None) -> Envelope:
    return ZoneStateMsg(
        zone_id=zone_id, mode="occupied", temperature_c=temperature_c, humidity_pct=40.0,
        occupied=True, illuminance_lux=300.0, heating_sp_c=21.0, cooling_sp_c=24.0,
        light_level_pct=60.0, dehumidifier_on=False, timestamp=START,
    ).envelope(Performative.INFORM, f"zone[{zone_id}]", "zone-state")  # fmt: skip


def event(kind: str, source: str, severity: str, message: str) -> Envelope:
    return EventMsg(
        kind=kind, source=source, severity=severity, message=message, timestamp=START
    ).envelope(Performative.INFORM, source, EVENTS_TOPIC)


def action(what: str, alert_id: str | None = None, by: str = "Jo (MQTT)") -> Envelope:
    msg = AlertActionMsg(action=what, alert_id=alert_id, by=by)  # type: ignore[arg-type]
    return msg.envelope(Performative.REQUEST, "mqtt-bridge", COORDINATOR)


def break_glass_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.getMessage().startswith("BREAK-GLASS")
    ]


# -- each trigger, on the coordinator -----------------------------------------------------------


async def test_a_zone_outside_its_safety_band_alerts_once_reminds_and_clears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = Coordinator(load_site(REPO))
    caplog.set_level(logging.ERROR)
    temperature = 9.0  # the office policy's safety band is 12..30 °C, max_outside_s 1800

    def states() -> list[Envelope]:
        return [zone_state("f1-meeting", temperature)]

    await c.run_for(1790, states)
    assert c.actions("f1-meeting") == []  # not yet: outside for less than max_outside_s
    await c.run_for(2 * 3600 + 100, states)  # reminder interval 3600 s (office policy)
    actions = c.actions("f1-meeting")
    assert [a for _, a in actions] == ["raised", "reminder", "reminder"]
    raised_at = actions[0][0]
    assert 1800 <= raised_at <= 1800 + TICK_S
    assert [t - raised_at for t, _ in actions[1:]] == [3600, 7200]
    (incident,) = c.agent.incidents()
    assert incident.key == IncidentKey("f1-meeting", Cause.SAFETY_BAND)
    assert incident.severity == "critical"
    assert "f1-meeting at 9.0 °C, below its safety band 12.0..30.0 °C" in incident.summary
    assert "occupied mode" in incident.tried and "heating setpoint 21.0" in incident.left_state
    assert any("Facilities on call" in who for who in incident.contacts)
    payload = c.alerts[0][1].subjects["f1-meeting"]
    assert payload is not None and payload["alerts"][0]["id"] == incident.id

    await c.send(action("acknowledge", incident.id))
    await c.run_for(3 * 3600, states)  # still cold, but acknowledged: no more reminders
    assert [a for _, a in c.actions("f1-meeting")][3:] == ["acknowledged"]
    assert c.agent.open_escalations() == [] and c.agent.incidents() == [incident]

    temperature = 20.0
    await c.run_for(60, states)
    last_time, last = c.alerts[-1]
    assert last.action == "cleared" and last.subjects == {"f1-meeting": None}
    assert c.agent.incidents() == []
    lines = break_glass_lines(caplog)
    assert len(lines) == 5  # raised, two reminders, acknowledged, cleared
    assert "f1-meeting" in lines[0] and "acknowledged by Jo (MQTT)" in lines[3]
    assert "back inside its safety band" in lines[4]


async def test_an_unknown_temperature_neither_raises_nor_clears() -> None:
    c = Coordinator(load_site(REPO))
    await c.run_for(600, lambda: [zone_state("f1-meeting", 35.0)])
    await c.run_for(3600, lambda: [zone_state("f1-meeting", None)])  # the sensor died
    assert c.actions("f1-meeting") == []  # its device's alert says so, not a stale reading
    await c.run_for(1300, lambda: [zone_state("f1-meeting", 35.0)])
    assert [a for _, a in c.actions("f1-meeting")] == ["raised"]


async def test_a_device_that_stays_down_alerts_once_and_clears_when_back() -> None:
    c = Coordinator(load_site(REPO))
    device = "f1-reception-thermostat"
    down = event("availability", f"device[{device}]", "warning",
                 f"device {device} unavailable: no answer (timeout)")  # fmt: skip
    await c.send(down)
    await c.run_for(880)
    assert c.actions(device) == []  # device_unavailable_s is 900 in the office policy
    await c.send(down)  # the device agent restarted and said so again: the same incident
    await c.run_for(1800, lambda: [zone_state("f1-reception", 20.5)])
    assert [a for _, a in c.actions(device)] == ["raised"]
    assert 900 <= c.actions(device)[0][0] <= 900 + TICK_S
    (incident,) = c.agent.incidents()
    assert incident.cause is Cause.DEVICE_DOWN and incident.kind.value == "device"
    assert "unavailable for" in incident.summary and "no answer (timeout)" in incident.summary
    assert "f1-reception" in incident.left_state
    await c.send(event("availability", f"device[{device}]", "info", f"device {device} back"))
    assert [a for _, a in c.actions(device)] == ["raised", "cleared"]
    assert c.alerts[-1][1].subjects == {device: None}
    await c.run_for(3600)
    assert len(c.actions(device)) == 2  # nothing more once back


async def test_a_device_back_under_a_restarted_agent_is_not_an_alert() -> None:
    c = Coordinator(load_site(REPO))
    device = "f1-reception-thermostat"
    gauge = f'buildingd_device_up{{device="{device}"}}'
    c.ctx.metrics.set("buildingd_device_up", 0.0, device=device)
    await c.send(event("availability", f"device[{device}]", "warning",
                       f"device {device} unavailable: timeout"))  # fmt: skip
    await c.run_for(300)
    # Its agent crashed and was restarted; the new one's first poll succeeds. A new agent has
    # no "unavailable" to come back from, so it says so only in its gauge.
    c.ctx.metrics.gauges[gauge] = 1.0
    await c.run_for(3600)
    assert c.actions(device) == []
    assert c.agent.escalations.conditions(Cause.DEVICE_DOWN) == {}


async def test_an_agent_past_its_restart_limit_alerts_once_until_cleared() -> None:
    c = Coordinator(load_site(REPO))
    failed = event(
        "agent-failed",
        "supervisor",
        "error",
        "agent zone[f1-kitchen] stopped after too many restarts: RuntimeError: boom",
    )
    await c.send(failed, failed)
    await c.run_for(60)
    await c.send(failed)
    assert [a for _, a in c.actions("f1-kitchen")] == ["raised"]
    (incident,) = c.agent.incidents()
    assert incident.cause is Cause.AGENT_FAILED and incident.severity == "critical"
    assert incident.repeats == 2
    assert "RuntimeError: boom" in incident.summary and "zone not controlled" in incident.left_state
    # The daemon cannot see a given-up agent come back: a technician clears it.
    await c.send(action("clear", incident.id, by="Jo"))
    assert [a for _, a in c.actions("f1-kitchen")] == ["raised", "cleared"]
    assert c.agent.incidents() == [] and incident.cleared_by == "Jo"
    # Unknown or already-cleared ids are refused and counted, never raised.
    await c.send(action("acknowledge", incident.id), action("clear", "nosuchid"))
    assert c.ctx.metrics.counters['buildingd_messages_rejected_total{agent="coordinator"}'] == 2


async def test_an_impossible_target_alerts_once_for_repeated_negotiations() -> None:
    c = Coordinator(load_site(REPO))
    for _ in range(3):  # e.g. the power cap re-opening an event that cannot be met
        c.agent.open_demand_response(1_000_000, 900, "test: far beyond the building")
        await c.run_for(1200)  # nobody answers: silence counts as refusal at reply_by
    # One alert; the reminders follow the shortest interval of the policies (server room: 30 min).
    actions = c.actions("building")
    assert [a for _, a in actions if a != "reminder"] == ["raised"]
    assert [t - actions[0][0] for t, a in actions if a == "reminder"] == [1800]
    (incident,) = c.agent.incidents()
    assert incident.cause is Cause.NEGOTIATION and incident.repeats >= 2
    assert "cfp to" in incident.tried and "refused" in incident.tried


async def test_a_bridge_gets_a_snapshot_of_the_open_alerts() -> None:
    c = Coordinator(load_site(REPO))
    await c.send(event("agent-failed", "supervisor", "error",
                       "agent telemetry stopped after too many restarts: OSError"))  # fmt: skip
    await c.send(action("snapshot"))
    snapshot = c.alerts[-1][1]
    assert snapshot.action == "snapshot" and list(snapshot.subjects) == ["telemetry"]
    payload = snapshot.subjects["telemetry"]
    assert payload is not None and payload["alerts"][0]["severity"] == "major"


# -- the webhook ------------------------------------------------------------------------------


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 recording the JSON it is posted; answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.posts: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, json.loads(body), dict(self.headers)))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/buildingd"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def with_webhook(site_copy: Path, url: str) -> Site:
    office = site_copy / "policies" / "office.yaml"
    text = office.read_text()
    old = "    escalation:\n      reminder_interval_s: 3600\n"
    assert old in text
    office.write_text(text.replace(old, old + f"      webhook_url: {url}\n", 1))
    return load_site(site_copy)


async def test_the_webhook_receives_each_step_as_json(site_copy: Path) -> None:
    with WebhookReceiver() as hook:
        c = Coordinator(with_webhook(site_copy, hook.url.replace("//", "//ops:s3cret@", 1)))
        c.agent.webhooks.start()
        try:
            failed = event("agent-failed", "supervisor", "error",
                           "agent device[f1-reception-thermostat] stopped after too many "
                           "restarts: OSError: bus gone")  # fmt: skip
            await c.send(failed, failed)
            (incident,) = c.agent.incidents()
            assert c.agent.acknowledge(incident.id, "Jo")
            assert c.agent.clear_alert(incident.id, "Jo")
            await c.agent.flush()
            async with asyncio.timeout(30):
                await c.agent.webhooks.drained()
        finally:
            await c.agent.webhooks.stop()
    assert [body["event"] for _, body, _ in hook.posts] == ["raised", "acknowledged", "cleared"]
    path, body, headers = hook.posts[0]
    assert path == "/hooks/buildingd" and headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Basic b3BzOnMzY3JldA=="  # ops:s3cret
    alert = body["alert"]
    assert body["site"] == c.ctx.site.site_id
    assert alert["id"] == incident.id and alert["device"] == "f1-reception-thermostat"
    assert alert["cause"] == "agent-failed" and alert["severity"] == "critical"
    assert "OSError: bus gone" in alert["summary"] and alert["tried"] and alert["left_state"]
    assert alert["since"].startswith("2026-01-12T08:00")
    assert hook.posts[1][1]["alert"]["acknowledged_by"] == "Jo"
    assert hook.posts[2][1]["alert"]["cleared_by"] == "Jo"
    counters = c.ctx.metrics.counters
    assert counters['buildingd_webhook_posts_total{result="ok"}'] == 3


async def test_a_failing_webhook_is_counted_and_never_blocks_the_coordinator() -> None:
    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    metrics = Metrics()
    sender = WebhookSender(metrics, timeout_s=0.3, attempts=2, backoff_s=0.0)
    sender.start()
    try:
        with WebhookReceiver(status=500) as broken:
            for i in range(3):
                sender.submit(f"http://127.0.0.1:{silent.getsockname()[1]}/", {"n": i})
            sender.submit(broken.url, {"n": 3})
            sender.submit("ftp://example.org/", {"n": 4})
            assert sender.pending >= 4  # submit queued and returned: nothing waited for it
            async with asyncio.timeout(60):
                await sender.drained()
        assert [body["n"] for _, body, _ in broken.posts] == [3, 3]  # 5xx: retried
    finally:
        await sender.stop()
        silent.close()
    assert metrics.counters['buildingd_webhook_posts_total{result="failed"}'] == 5


async def test_a_full_webhook_queue_drops_the_oldest_post() -> None:
    metrics = Metrics()
    sender = WebhookSender(metrics, max_pending=2)  # not started: everything waits
    for i in range(4):
        sender.submit("http://127.0.0.1:9/", {"n": i})
    assert sender.pending == 2
    assert metrics.counters['buildingd_webhook_posts_total{result="dropped"}'] == 2
    await sender.stop()
    assert metrics.counters['buildingd_webhook_posts_total{result="dropped"}'] == 4


# -- the whole daemon on the simulated building (virtual time) ------------------------------------


def test_daemon_cold_zone_and_dead_sensor_each_alert_once(tmp_path: Path) -> None:
    daemon, _ = make_daemon(tmp_path, START)
    seen: dict[str, Any] = {}

    async def main() -> None:
        task = await run_for(daemon, 4 * 3600)
        box = Mailbox("test-alerts", 100_000)
        daemon.bus.subscribe(ALERTS_TOPIC, box)
        assert daemon.building is not None
        await asyncio.sleep(600)
        # The meeting room's heating fails and it goes cold; the reception's thermostat dies.
        meeting = daemon.building.zones["f1-meeting"]
        heating = meeting.spec
        meeting.spec = heating.model_copy(update={"heating_capacity_w": 0.0})
        daemon.building.inject_fault("f1-reception", PointKind.TEMPERATURE, "dead")

        async def cold_for(seconds: float) -> None:
            for _ in range(int(seconds // 600)):  # held cold (heating down, window open)
                meeting.temperature_c = 6.0
                await asyncio.sleep(600)

        await cold_for(4800)
        coordinator = daemon.coordinator
        assert coordinator is not None
        seen["open"] = {i.key: i for i in coordinator.incidents()}
        device = next(i for i in coordinator.incidents() if i.cause is Cause.DEVICE_DOWN)
        assert coordinator.acknowledge(device.id, "Jo")
        await cold_for(3600)
        # Repaired: heating back, sensor answering.
        meeting.spec = heating
        meeting.temperature_c = 19.0
        daemon.building.inject_fault("f1-reception", PointKind.TEMPERATURE, None)
        await asyncio.sleep(600)
        seen["after"] = list(coordinator.incidents())
        seen["alerts"] = [AlertMsg.parse(e) for e in await drain(box)]
        daemon.request_stop()
        await task

    run_virtual(main())
    open_ = seen["open"]
    cold = open_[IncidentKey("f1-meeting", Cause.SAFETY_BAND)]
    assert "below its safety band" in cold.summary
    dead = open_[IncidentKey("f1-reception-thermostat", Cause.DEVICE_DOWN)]
    assert "simulated sensor failure" in dead.summary
    alerts: list[AlertMsg] = seen["alerts"]

    def steps(subject: str) -> list[str]:
        return [m.action for m in alerts if subject in m.subjects]

    # 2 h 20 min outside the band: the alert after 30 min, a reminder an hour later, and
    # cleared as soon as the zone is back in band.
    assert steps("f1-meeting") == ["raised", "reminder", "cleared"]
    # Down for 15 min: the alert, its reminder an hour later, then acknowledged (80 min): the
    # next reminder (due at 2 h 15 min) is not sent.
    assert steps("f1-reception-thermostat") == ["raised", "reminder", "acknowledged", "cleared"]
    assert not [i for i in seen["after"] if i.kind.value in ("zone", "device")]


# -- MQTT: retained per subject, acknowledged and cleared by message, webhook ---------------------

DEVICES = """\
devices:
  - id: thermo
    driver: mqtt
    adapter: json
    topic: sensors/room
    points:
      - {id: t, field: temp, zone: room, kind: temperature}
"""
POLICY = """\
policies:
  - id: always
    zones: ["*"]
    escalation:
      reminder_interval_s: 3600
      webhook_url: {url}
      contacts:
        - {{name: Night shift, phone: "+49 30 555"}}
"""


async def retained(host: str, port: int, pattern: str) -> dict[str, bytes]:
    """The retained messages under ``pattern``, as a client connecting now sees them. A
    sentinel subscribed after the pattern arrives after all of them (in order, one connection),
    so absence is known without waiting for a timeout."""
    sentinel = f"test/sentinel/{id(pattern)}"
    out: dict[str, bytes] = {}
    async with aiomqtt.Client(host, port, identifier=f"look-{id(out)}") as client:
        await client.publish(sentinel, b"x", qos=1, retain=True)
        await client.subscribe(pattern, qos=1)
        await client.subscribe(sentinel, qos=1)
        async with asyncio.timeout(30):
            async for message in client.messages:
                if message.topic.value == sentinel:
                    break
                if message.retain:
                    out[message.topic.value] = bytes(message.payload)  # type: ignore[arg-type]
        await client.publish(sentinel, b"", qos=1, retain=True)
    return out


@pytest.mark.mosquitto
async def test_alerts_are_retained_per_subject_acked_and_cleared_over_mqtt(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with WebhookReceiver() as hook:
        root = one_room_site(tmp_path / "site", "esc", DEVICES, POLICY.format(url=hook.url))
        site = load_site(root)
        settings = Settings.model_validate(
            {
                "state_dir": tmp_path / "state",
                "site_dir": site.root,
                "http": {"enabled": False},
                "mqtt": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port},
            }
        )
        daemon = Daemon(settings, site)
        host, port = mosquitto.host, mosquitto.port
        task = asyncio.create_task(daemon.run(120))
        try:
            await asyncio.wait_for(daemon.ready.wait(), 30)
            coordinator = daemon.coordinator
            assert coordinator is not None
            # The supervisor gives up on the device agent (as after too many crashes).
            await daemon._give_up("device[thermo]", RuntimeError("driver wedged"))
            await until(lambda: bool(coordinator.incidents()), "an incident")
            (incident,) = coordinator.incidents()
            topic = "buildingd/esc/alerts/thermo"
            seen: dict[str, bytes] = {}
            for _ in range(100):  # the bridge publishes as soon as the bus hands it over
                seen = await retained(host, port, "buildingd/esc/alerts/+")
                if topic in seen:
                    break
            alert = json.loads(seen[topic])
            assert alert["subject"] == "thermo" and alert["kind"] == "device"
            (one,) = alert["alerts"]
            assert one["id"] == incident.id and one["cause"] == "agent-failed"
            assert one["contacts"] == ["Night shift <+49 30 555>"]
            assert one["ack_topic"] == f"buildingd/esc/alerts/{incident.id}/ack"

            async with aiomqtt.Client(host, port, identifier="technician") as tech:
                await tech.publish(one["ack_topic"], b'{"by": "Jo"}', qos=1)
                await until(lambda: incident.acknowledged_by is not None, "acknowledged")
                assert incident.acknowledged_by == "Jo (MQTT)"
                for _ in range(100):
                    seen = await retained(host, port, topic)
                    if json.loads(seen[topic])["alerts"][0]["acknowledged_by"]:
                        break
                assert json.loads(seen[topic])["alerts"][0]["acknowledged_by"] == "Jo (MQTT)"
                await tech.publish(one["clear_topic"], b"Jo", qos=1)
                await until(lambda: not coordinator.incidents(), "cleared")
            for _ in range(100):
                seen = await retained(host, port, "buildingd/esc/alerts/+")
                if topic not in seen:
                    break
            assert topic not in seen  # the empty retained payload removed it
            async with asyncio.timeout(30):
                await coordinator.webhooks.drained()
            events = [body["event"] for _, body, _ in hook.posts]
            assert events == ["raised", "acknowledged", "cleared"]
            assert hook.posts[0][1]["alert"]["device"] == "thermo"
        finally:
            daemon.request_stop()
            await task
