"""The daemon as systemd runs it: sd_notify, HTTP API (demand-response retries with an
Idempotency-Key), reload on SIGHUP, graceful SIGTERM; and the watchdog fed by the real daemon,
in-process, while its loop or one of its agents is wedged."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from buildingd.agents.device import DeviceAgent
from buildingd.agents.runtime import Child, ChildState, Supervisor
from buildingd.agents.zone import ZoneAgent
from buildingd.config.loader import load_site
from buildingd.service.app import Daemon
from buildingd.settings import HttpSettings, MqttSettings, Settings, SimSettings
from tests.conftest import until_sync
from tests.daemon_proc import Running, start_daemon

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(site_copy: Path, tmp_path: Path) -> Iterator[Running]:
    running = start_daemon(site_copy, tmp_path)
    try:
        yield running
    finally:
        running.close()


def test_ready_status_watchdog_and_api(daemon: Running) -> None:
    ready = daemon.wait_for(lambda m: "READY=1" in m)
    assert "STATUS=8 zones" in ready  # one datagram: READY=1 and the summary
    daemon.wait_for(lambda m: m == "WATCHDOG=1", timeout_s=5)
    code, health = daemon.get("/healthz")
    assert code == 200 and health["ready"] is True
    code, zones = daemon.get("/api/zones")
    assert code == 200 and len(zones) == 8
    code, devices = daemon.get("/api/devices")
    assert code == 200 and {d["id"] for d in devices} >= {"main-meter", "f1-meeting-lights"}
    code, metrics = daemon.get("/metrics")
    assert code == 200
    assert "# TYPE buildingd_bus_messages_total counter" in metrics
    assert 'buildingd_device_up{device="main-meter"} 1' in metrics
    # As Prometheus reads it: the page parses, one family per name, and the figures are there.
    families = list(text_string_to_metric_families(metrics))
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    up = {s.labels["device"]: s.value for f in families for s in f.samples
          if s.name == "buildingd_device_up"}  # fmt: skip
    assert up["main-meter"] == 1.0 and len(up) == len(devices)
    bus = [s for f in families for s in f.samples if s.name == "buildingd_bus_messages_total"]
    assert bus and all(s.value > 0 for s in bus)


def test_writes_need_the_token_and_bad_requests_get_4xx(daemon: Running) -> None:
    daemon.wait_for(lambda m: "READY=1" in m)
    assert daemon.post("/api/reload", None)[0] == 401
    assert daemon.post("/api/reload", "wrong")[0] == 403
    code, body = daemon.post("/api/reload", daemon.token)
    assert code == 200 and body["ok"] is True
    assert daemon.get("/api/nope")[0] == 404
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9\r\n\r\n",
        b"POST /api/reload HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
            s.sendall(raw)
            reply = s.recv(4096).decode()
        status = int(reply.split(" ")[1])
        assert 400 <= status < 500, reply
        assert "Traceback" not in reply
    # The bounds: a body over 64 kB is refused before it is read, chunked bodies need a length,
    # headers over 8 kB are refused (400 from the HTTP parser).
    auth = f"Host: x\r\nAuthorization: Bearer {daemon.token}\r\n".encode()
    for raw, want in (
        (b"POST /api/reload HTTP/1.1\r\n" + auth + b"Content-Length: 70000\r\n\r\n", 413),
        (b"POST /api/reload HTTP/1.1\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n", 411),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 400),
    ):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
            s.sendall(raw)
            reply = s.recv(4096).decode()
        assert int(reply.split(" ")[1]) == want, reply


def test_votes_demand_response_and_acknowledgement_over_http(daemon: Running) -> None:
    daemon.wait_for(lambda m: "READY=1" in m)
    vote = b'{"vote": "cold"}'
    assert daemon.post("/api/zones/f1-meeting/vote", None, vote)[0] == 401
    code, body = daemon.post("/api/zones/f1-meeting/vote", daemon.token, vote)
    assert code == 200 and body["accepted"] is True
    code, body = daemon.post("/api/zones/f1-meeting/vote", daemon.token, b'{"vote": "sauna"}')
    assert code == 422 and "unknown vote" in body["reason"]
    assert daemon.post("/api/zones/nowhere/vote", daemon.token, vote)[0] == 404
    assert daemon.post("/api/zones/f1-meeting/vote", daemon.token, b"[1]")[0] == 400
    assert daemon.post("/api/demand-response", daemon.token, b'{"target_w": -5}')[0] == 422
    # A target this building cannot meet (90 kW, inside max_target_w): it breaks glass.
    code, body = daemon.post(
        "/api/demand-response", daemon.token, b'{"target_w": 90000, "window_s": 600}'
    )
    assert code == 202
    conversation = body["conversation_id"]
    alerts = until_sync(
        lambda: [a for a in daemon.get("/api/alerts")[1] if "escalation" in a],
        "an escalation among the alerts",
    )
    assert conversation in alerts[0]["escalation"]
    code, runs = daemon.get("/api/negotiations")
    assert code == 200 and any(r["conversation_id"] == conversation for r in runs)
    ack = f"/api/alerts/{alerts[0]['id']}/ack"
    assert daemon.post(ack, daemon.token, b'{"by": "Jo"}') == (
        200,
        {"acknowledged": alerts[0]["id"], "by": "Jo"},
    )
    assert daemon.post(ack, daemon.token, b'{"by": "Jo"}')[0] == 404  # already acknowledged
    code, metrics = daemon.get("/metrics")
    assert "buildingd_escalations_total" in metrics
    assert "buildingd_poll_seconds{" in metrics and "buildingd_alerts_open" in metrics
    override = "/api/zones/f1-reception/override"
    assert daemon.post(override, None, b'{"heating_sp_c": 21.5}')[0] == 401
    code, body = daemon.post(override, daemon.token, b'{"heating_sp_c": 45}')
    assert code == 422 and "safety band" in body["reason"]
    assert daemon.post(override, daemon.token, b'{"setpoint": 21}')[0] == 400


# Demand-response requests with an ``Idempotency-Key`` (IETF draft "The Idempotency-Key HTTP
# Header Field"): a client that got a 503 or a timeout just as its request landed sends it again
# with the same key and gets the event it opened, also after a restart; the key on a different
# request is refused (422).
ASK = {"target_w": 500, "window_s": 600, "reason": "grid operator"}


def dr_request(daemon: Running, key: str | None, body: dict[str, Any] = ASK) -> tuple[int, Any]:
    headers = {} if key is None else {"Idempotency-Key": key}
    return daemon.post("/api/demand-response", daemon.token, json.dumps(body).encode(), headers)


def events(daemon: Running) -> list[str]:
    return [r["conversation_id"] for r in daemon.json("/api/negotiations")]


def test_a_demand_response_retried_with_its_idempotency_key_opens_one_event(
    daemon: Running, site_copy: Path, tmp_path: Path
) -> None:
    daemon.wait_ready()
    code, first = dr_request(daemon, '"retry-1"')  # a structured-field string, as the draft has it
    assert code == 202
    conversation = first["conversation_id"]
    assert dr_request(daemon, '"retry-1"') == (202, first)  # the retry: the same event
    assert dr_request(daemon, "retry-1") == (202, first)  # the key unquoted is the same key
    assert events(daemon).count(conversation) == 1 and len(events(daemon)) == 1
    code, body = dr_request(daemon, '"retry-1"', {**ASK, "target_w": 900})
    assert code == 422 and "different request" in json.dumps(body), body
    assert daemon.metric("buildingd_requests_refused_total", source="http") >= 1
    assert len(events(daemon)) == 1  # nothing opened by the refused one
    assert dr_request(daemon, "x" * 256)[0] == 400
    code, other = dr_request(daemon, '"retry-2"')  # another key: another event
    assert code == 202 and other["conversation_id"] != conversation
    assert len(events(daemon)) == 2
    # Kept in the state: after a restart the retry is still the event it opened.
    daemon.stop()
    again = start_daemon(site_copy, tmp_path, state=daemon.state)
    try:
        again.wait_ready()
        assert dr_request(again, '"retry-1"') == (202, first)
        assert dr_request(again, '"retry-1"', {**ASK, "window_s": 900})[0] == 422
        assert set(events(again)) <= {conversation, other["conversation_id"]}  # none new
        assert dr_request(again, None)[0] == 202  # no key: a new event each time, as before
    finally:
        again.close()


def test_sighup_with_a_broken_policy_keeps_the_old_one(daemon: Running) -> None:
    daemon.wait_for(lambda m: "READY=1" in m)
    policy = daemon.site / "policies" / "office.yaml"
    text = policy.read_text()
    policy.write_text(text.replace("vacancy_timeout_s: 900", "vacancy_timeout_s: soon"))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda m: "RELOADING=1" in m and "MONOTONIC_USEC=" in m)
    failed = daemon.wait_for(lambda m: "reload failed" in m)
    assert "office.yaml:" in failed and "vacancy_timeout_s" in failed
    code, health = daemon.get("/healthz")
    assert code == 200 and health["ready"]
    code, metrics = daemon.get("/metrics")
    assert 'buildingd_reloads_total{result="failed"} 1' in metrics


# An actuator write in the journal: ``audit: [device=D zone=Z point=P] command value=V ...``
# (no zone for the coordinator's writes to air handlers).
AUDIT_WRITE = re.compile(
    r"audit: \[device=(?P<device>\S+)(?: zone=\S+)? point=(?P<point>\S+)\] command "
    r"value=(?P<value>\S+) .*outcome=written"
)


def writes(lines: list[str]) -> list[tuple[str, str, float]]:
    """Every actuator write in ``lines``, in order: (device, point, value)."""
    return [
        (m["device"], m["point"], float(m["value"]))
        for line in lines
        if (m := AUDIT_WRITE.search(line)) is not None
    ]


def rewrites(lines: list[str]) -> list[tuple[str, str, float]]:
    """Writes that repeat the value the same point was last written with: an actuator
    rewritten although its target did not change."""
    last: dict[tuple[str, str], float] = {}
    out = []
    for device, point, value in writes(lines):
        if last.get((device, point)) == value:
            out.append((device, point, value))
        last[device, point] = value
    return out


def zone(daemon: Running, zone_id: str) -> dict[str, Any]:
    code, body = daemon.get(f"/api/zones/{zone_id}")
    assert code == 200
    return dict(body)


def test_sighup_applies_a_valid_change_to_exactly_what_changed(daemon: Running) -> None:
    daemon.wait_for(lambda m: "READY=1" in m)
    # Let every zone drive its actuators first, so a rewrite after the reload would show.
    daemon.wait_for_output(r"device=f2-server-thermostat .*point=heating_sp\] command value=18")
    until_sync(lambda: len({(d, p) for d, p, _ in writes(daemon.output)}) >= 10,
               "ten actuator points written")  # fmt: skip
    assert zone(daemon, "f2-server")["heating_sp_c"] == 18.0
    _, before = daemon.get("/api/agents")
    # The policy of one zone, the poll interval of one actuator device, and one device added.
    policies = daemon.site / "policies" / "office.yaml"
    text = policies.read_text()
    server_room = text[text.index("- id: server-room") :]
    policies.write_text(
        text.replace(server_room, server_room.replace("heating_c: 18.0", "heating_c: 17.0"))
    )
    devices = daemon.site / "devices" / "demo-sim.yaml"
    text = devices.read_text()
    lights = text.index("- id: f1-reception-lights")
    devices.write_text(
        text[:lights] + text[lights:].replace("poll_interval_s: 10", "poll_interval_s: 15", 1)
    )
    (daemon.site / "devices" / "extra.yaml").write_text(
        "devices:\n  - id: lobby-co2\n    driver: sim\n    points:\n"
        "      - {id: co2, zone: f1-reception, kind: co2}\n"
    )
    mark = len(daemon.output)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda m: "RELOADING=1" in m)
    daemon.wait_for(lambda m: "READY=1" in m)
    reloaded = daemon.output[daemon.wait_for_output(r"reloaded: ", mark)]
    assert "devices stopped: f1-reception-lights" in reloaded
    assert "devices started: f1-reception-lights, lobby-co2" in reloaded
    assert "policies changed: server-room" in reloaded
    # The new band is in force: the zone decides with it and its thermostat gets it.
    until_sync(lambda: zone(daemon, "f2-server")["heating_sp_c"] == 17.0, "the new band in force")
    daemon.wait_for_output(
        r"device=f2-server-thermostat .*point=heating_sp\] command value=17", mark
    )
    # Only the changed device's agent was restarted; every other agent is the one from before.
    _, after = daemon.get("/api/agents")
    old = {a["name"]: (a["started_s"], a["restarts"], a["state"]) for a in before}
    new = {a["name"]: (a["started_s"], a["restarts"], a["state"]) for a in after}
    assert new.pop("device[lobby-co2]")[2] == "running" and "device[lobby-co2]" not in old
    assert new["device[f1-reception-lights]"][0] > old["device[f1-reception-lights]"][0]
    del old["device[f1-reception-lights]"], new["device[f1-reception-lights]"]
    assert new == old
    _, devices_now = daemon.get("/api/devices")
    assert "lobby-co2" in {d["id"] for d in devices_now}
    # A few control intervals later, no actuator was rewritten with the value it already had:
    # not by the zones re-binding their actuators, not through the restarted lights agent.
    time.sleep(3)
    assert writes(daemon.output[:mark]), "no actuator was written before the reload"
    assert rewrites(daemon.output) == []


def test_sighup_applies_live_settings_and_names_those_that_need_a_restart(
    daemon: Running,
) -> None:
    daemon.wait_for(lambda m: "READY=1" in m)
    assert not any(" DEBUG " in line for line in daemon.output)
    daemon.config.write_text(
        'log_level = "debug"\n\n[mqtt]\nkeepalive_s = 60\n\n[http]\nbind = "127.0.0.2"\n'
    )
    mark = len(daemon.output)
    daemon.proc.send_signal(signal.SIGHUP)
    ready = daemon.wait_for(lambda m: "READY=1" in m)
    # STATUS= says what waits for a restart, and keeps saying it (systemctl status shows it).
    assert "restart needed for mqtt.keepalive_s, http.bind" in ready
    journal = daemon.output[daemon.wait_for_output(r"settings changed that need a restart", mark)]
    assert "WARNING" in journal and "mqtt.keepalive_s, http.bind" in journal
    reloaded = daemon.output[daemon.wait_for_output(r"reloaded: ", mark)]
    assert "settings applied: log_level=debug" in reloaded
    # The log level is live: debug lines from now on.
    daemon.wait_for_output(r" DEBUG ", mark)
    # The others keep their running values: the API still answers on 127.0.0.1.
    code, health = daemon.get("/healthz")
    assert code == 200 and "restart needed for mqtt.keepalive_s, http.bind" in health["status"]
    # Putting the values back clears the notice; the level change back is applied too, and
    # so is a rotated token (the file is re-read on every reload).
    daemon.config.write_text('log_level = "info"\n\n[mqtt]\nkeepalive_s = 30\n')
    token_file = daemon.config.parent / "token"
    token_file.write_text("rotated-token\n")
    code, body = daemon.post("/api/reload", daemon.token)
    assert code == 200
    assert body["restart_needed"] == []
    assert body["settings_applied"] == ["log_level=info", "http token"]
    assert "restart needed" not in daemon.get("/healthz")[1]["status"]
    assert daemon.post("/api/reload", daemon.token)[0] == 403
    assert daemon.post("/api/reload", "rotated-token")[0] == 200


def test_sighup_with_broken_settings_keeps_everything_and_says_where(daemon: Running) -> None:
    daemon.wait_for(lambda m: "READY=1" in m)
    daemon.config.write_text('log_level = "info"\n\n[mqtt]\nkeepalive_s = "often"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    failed = daemon.wait_for(lambda m: "reload failed" in m)
    assert f"{daemon.config}:4: mqtt.keepalive_s: Input should be a valid integer" in failed
    code, health = daemon.get("/healthz")
    assert code == 200 and health["ready"]


def test_sigterm_stops_gracefully_and_flushes_telemetry(daemon: Running) -> None:
    daemon.wait_for(lambda m: "READY=1" in m)
    time.sleep(2)
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_for(lambda m: "STOPPING=1" in m)
    assert daemon.proc.wait(timeout=60) == 0, daemon.output[-20:]
    daemon.wait_for_output("messages on the bus")  # the exit summary
    files = [p for p in (daemon.state / "telemetry").rglob("*") if p.is_file()]
    assert files and sum(p.stat().st_size for p in files) > 0


# The watchdog as the daemon feeds it: the real Daemon (every agent, the simulator, the embedded
# broker) on its own event loop in a thread, started with NOTIFY_SOCKET and WATCHDOG_USEC as
# systemd starts it. The test reads the notify socket and wedges things from outside: the loop
# itself (a blocking call on it, as a synchronous driver call would), or one agent (a read or a
# decision that never returns, the loop otherwise fine). Nothing in the daemon is test-only.
WATCHDOG_USEC = 400_000  # a ping every 0.2 s


@dataclass
class InProcess:
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    notify: socket.socket
    daemon: Daemon

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the daemon's loop (agents are not thread-safe) and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def drain(self) -> list[str]:
        """Every notification already queued, without waiting."""
        out = []
        self.notify.setblocking(False)
        try:
            while True:
                out.append(self.notify.recv(4096).decode())
        except BlockingIOError:
            return out

    def pings_within(self, seconds: float) -> int:
        """WATCHDOG=1 datagrams that arrive in the next ``seconds``."""
        count = 0
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.notify.settimeout(left)
            try:
                count += self.notify.recv(4096) == b"WATCHDOG=1"
            except TimeoutError:
                break
        return count


@pytest.fixture
def in_process(
    site_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., InProcess]]:
    started: list[InProcess] = []

    def start(speed: float, **slack: float) -> InProcess:
        sock_path = tmp_path / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(sock_path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
        monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        settings = Settings(
            site_dir=site_copy,
            state_dir=tmp_path / "state",
            speed=speed,
            mqtt=MqttSettings(port=0),
            http=HttpSettings(enabled=False),
            sim=SimSettings(modbus_port=0, bacnet_port=0, start="2027-01-11T09:00:00"),
        )
        site = load_site(site_copy)
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        made: list[Daemon] = []
        failed: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)

            async def main() -> None:
                daemon = Daemon(settings, site)
                for name, value in slack.items():
                    setattr(daemon, name, value)
                daemon.on_ready.append(ready.set)
                made.append(daemon)
                await daemon.run()

            try:
                loop.run_until_complete(main())
            except BaseException as err:  # reaches the test through ``failed``
                failed.append(err)
                ready.set()
            finally:
                loop.close()

        thread = threading.Thread(target=serve, name="daemon", daemon=True)
        thread.start()
        assert ready.wait(60), "the daemon did not get ready"
        assert not failed, failed
        running = InProcess(loop, thread, notify, made[0])
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.loop.call_soon_threadsafe(running.daemon.request_stop)
        running.thread.join(60)
        running.notify.close()
        assert not running.thread.is_alive(), "the daemon did not stop"


def test_daemon_pings_only_while_its_event_loop_runs(in_process: Callable[..., InProcess]) -> None:
    d = in_process(speed=10)
    assert d.pings_within(2.0) >= 5  # fed by the daemon's housekeeping every 0.2 s
    assert d.call(d.daemon.stuck_agents) == {}
    blocked, release = threading.Event(), threading.Event()

    def wedge() -> None:  # a blocking call on the loop: nothing else runs meanwhile
        blocked.set()
        release.wait(30)

    try:
        d.loop.call_soon_threadsafe(wedge)
        assert blocked.wait(10)
        d.drain()  # pings sent before the loop wedged
        assert d.pings_within(2.0) == 0  # ten intervals: systemd's WatchdogSec= would expire
    finally:
        release.set()
    assert d.pings_within(2.0) >= 5  # and the daemon carries on
    assert d.call(d.daemon.stuck_agents) == {}


def _withholds_pings_while_stuck(d: InProcess, name: str, wedge: Callable[[], None]) -> None:
    """``wedge`` (run on the loop) makes agent ``name`` stop making progress until the
    module-level release event is set; the loop itself keeps running."""
    assert d.pings_within(2.0) >= 3  # pings flow before the wedge
    d.call(wedge)
    until_sync(lambda: name in d.call(d.daemon.stuck_agents), f"{name} counted as stuck")
    stuck = d.call(d.daemon.stuck_agents)
    assert list(stuck) == [name], stuck  # only the wedged agent
    # The guard lets the last heartbeat age out (three control intervals), then stops.
    time.sleep(2.0)
    d.drain()
    assert d.pings_within(2.0) == 0
    assert d.call(lambda: d.daemon.watchdog is not None and d.daemon.watchdog.pings_withheld > 0)


def test_daemon_withholds_pings_while_a_poll_never_returns(
    in_process: Callable[..., InProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="buildingd.service.health")
    d = in_process(speed=30, poll_slack_s=1.0)
    device_id = "f1-reception-presence"
    first = d.call(lambda: d.daemon.device_agents[device_id])
    release = asyncio.Event()

    # The agent crashes once and is restarted: the watchdog must watch the new agent.
    def crash_once() -> None:
        driver = d.daemon.device_agents[device_id].driver
        assert driver is not None

        async def broken_read() -> Any:
            raise RuntimeError("a driver bug")

        driver.read = broken_read  # type: ignore[method-assign]

    d.call(crash_once)
    until_sync(lambda: d.call(lambda: d.daemon.device_agents[device_id]) is not first,
               "the device agent restarted")  # fmt: skip

    def hang_reads() -> None:  # like a driver waiting on a socket with no timeout
        driver = d.daemon.device_agents[device_id].driver
        assert driver is not None
        read = driver.read

        async def stuck_read() -> Any:
            await release.wait()
            return await read()

        driver.read = stuck_read  # type: ignore[method-assign]

    try:
        _withholds_pings_while_stuck(d, f"device[{device_id}]", hang_reads)
        assert "a read in flight" in d.call(d.daemon.stuck_agents)[f"device[{device_id}]"]
    finally:
        d.loop.call_soon_threadsafe(release.set)
    assert d.pings_within(2.0) >= 3  # the read returned: pings again
    assert d.call(d.daemon.stuck_agents) == {}
    said = [r.getMessage() for r in caplog.records if r.name == "buildingd.service.health"]
    assert sum(f"watchdog: device[{device_id}] stuck" in m for m in said) == 1  # once, not per tick
    assert f"watchdog: device[{device_id}] is making progress again" in said


def test_daemon_withholds_pings_while_a_zone_stops_deciding(
    in_process: Callable[..., InProcess],
) -> None:
    d = in_process(speed=30, zone_slack_s=1.0)
    release = asyncio.Event()

    def hang_control() -> None:  # a decision stuck, e.g. on a command that never goes out
        agent = d.daemon.zone_agents["f1-kitchen"]
        control = agent.control

        async def stuck_control(now_s: float) -> None:
            await release.wait()
            await control(now_s)

        agent.control = stuck_control  # type: ignore[method-assign]

    try:
        _withholds_pings_while_stuck(d, "zone[f1-kitchen]", hang_control)
    finally:
        d.loop.call_soon_threadsafe(release.set)
    assert d.pings_within(2.0) >= 3
    assert d.call(d.daemon.stuck_agents) == {}


class StoppedClock:
    """Real-time rate (speed 1), moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime(2027, 1, 11, 9, tzinfo=UTC) + timedelta(seconds=self.t)

    async def sleep(self, seconds: float) -> None:
        self.t += seconds

    def to_loop_seconds(self, seconds: float) -> float:
        return seconds


def test_stuck_agents_counts_running_agents_past_their_allowance(site_copy: Path) -> None:
    """What the watchdog's ``control`` heartbeat depends on, on a clock moved by hand: a zone
    may go three control intervals (30 s) plus 60 s without deciding, a device three poll
    intervals plus 120 s without starting a poll; agents restarting or given up on, or that
    have not started yet, do not hold back the watchdog."""
    clock = StoppedClock()
    daemon = Daemon(Settings(site_dir=site_copy), load_site(site_copy), clock=clock)
    sup = daemon.supervisor = Supervisor(clock)
    zone = daemon.zone_agents["f1-kitchen"] = ZoneAgent("f1-kitchen", daemon.ctx)
    device = daemon.site.devices["f1-reception-presence"]  # polled every 5 s
    dev = daemon.device_agents[device.id] = DeviceAgent(device, daemon.ctx)
    for name, agent in (("zone[f1-kitchen]", zone), (f"device[{device.id}]", dev)):
        sup.children[name] = Child(name, lambda a=agent: a, state=ChildState.RUNNING, agent=agent)
    assert daemon.stuck_agents() == {}  # neither has decided or polled yet
    zone.last_control_s = dev.last_poll_s = clock.t
    clock.t += 90
    assert daemon.stuck_agents() == {}
    clock.t += 1
    assert list(daemon.stuck_agents()) == ["zone[f1-kitchen]"]
    assert "no decision for 91.0 s (allowed 90.0 s)" in daemon.stuck_agents()["zone[f1-kitchen]"]
    zone.last_control_s = clock.t
    clock.t += 135 - 91
    assert daemon.stuck_agents() == {}
    clock.t += 1
    assert daemon.stuck_agents() == {
        f"device[{device.id}]": "no poll started for 136.0 s (allowed 135.0 s)"
    }
    assert not daemon._control_alive()
    for state in (ChildState.RESTARTING, ChildState.FAILED):
        sup.children[f"device[{device.id}]"].state = state
        assert daemon.stuck_agents() == {}
        assert daemon._control_alive()


def test_an_agent_past_its_restart_limit_leaves_its_device_down_and_its_zone_degraded(
    in_process: Callable[..., InProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    device_id, zone_id = "f1-reception-presence", "f1-kitchen"
    poll, control = DeviceAgent.poll, ZoneAgent.control

    async def buggy_poll(self: DeviceAgent) -> None:
        if self.device.id == device_id:
            raise RuntimeError("a driver bug")
        await poll(self)

    async def buggy_control(self: ZoneAgent, now_s: float) -> None:
        if self.zone_id == zone_id:
            raise RuntimeError("a control bug")
        await control(self, now_s)

    monkeypatch.setattr(DeviceAgent, "poll", buggy_poll)
    monkeypatch.setattr(ZoneAgent, "control", buggy_control)
    d = in_process(speed=60)  # restart backoffs are simulated seconds: 1 + 2 + ... + 16
    until_sync(lambda: d.call(lambda: d.daemon.metrics.counters["buildingd_agents_failed_total"])
               >= 2, "the supervisor gave up on both agents")  # fmt: skip
    assert d.call(lambda: d.daemon.device_agents[device_id].available) is False
    gauge = f'buildingd_device_up{{device="{device_id}"}}'
    assert d.call(lambda: d.daemon.metrics.gauges[gauge]) == 0.0
    assert "agent" in d.call(lambda: d.daemon.zone_agents[zone_id].degraded)
    summary = d.call(d.daemon.status_summary)
    assert "(1 degraded)" in summary and "1 down" in summary, summary
