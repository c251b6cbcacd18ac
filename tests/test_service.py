"""The daemon as systemd runs it: sd_notify, HTTP API, reload on SIGHUP, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow


@dataclass
class Running:
    proc: subprocess.Popen[str]
    notify: socket.socket
    port: int
    site: Path
    state: Path
    token: str
    messages: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for(self, predicate: Any, timeout_s: float = 30.0) -> str:
        """Read notifications until one satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(data)
            if predicate(data):
                return data
        raise AssertionError(f"no matching notification; got {self.messages[-10:]}")

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                body = r.read()
                return r.status, json.loads(body) if path != "/metrics" else body.decode()
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def post(self, path: str, token: str | None, body: bytes = b"{}") -> tuple[int, Any]:
        req = urllib.request.Request(self.base + path, method="POST", data=body)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")


@pytest.fixture
def daemon(site_copy: Path, tmp_path: Path) -> Iterator[Running]:
    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    state = tmp_path / "state"
    env = dict(
        os.environ,
        NOTIFY_SOCKET=str(sock_path),
        WATCHDOG_USEC="2000000",
        BUILDINGD_HTTP__PORT=str(port),
        BUILDINGD_MQTT__PORT="0",  # the embedded broker on a free port
        BUILDINGD_SIM__MODBUS_PORT="0",  # the simulated Modbus gateway too
        BUILDINGD_HTTP__TOKEN_FILE=str(token_file),
        BUILDINGD_STATE_DIR=str(state),
        BUILDINGD_SITE_DIR=str(site_copy),
        BUILDINGD_SIM__START="2027-01-11T09:00:00",
    )
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildingd", "run", "--speed", "30", "--no-console"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = Running(proc, notify, port, site_copy, state, "s3cret-token")
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        notify.close()


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
    # A target no building could meet: the negotiation runs and breaks glass.
    code, body = daemon.post(
        "/api/demand-response", daemon.token, b'{"target_w": 1000000, "window_s": 600}'
    )
    assert code == 202
    conversation = body["conversation_id"]
    deadline = time.monotonic() + 30
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not alerts:
        alerts = [a for a in daemon.get("/api/alerts")[1] if "escalation" in a]
        time.sleep(0.5)
    assert alerts and conversation in alerts[0]["escalation"]
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


def test_sighup_applies_changes_without_restarting_other_agents(daemon: Running) -> None:
    daemon.wait_for(lambda m: "READY=1" in m)
    _, before = daemon.get("/api/agents")
    started = {a["name"]: a["started_s"] for a in before}
    (daemon.site / "devices" / "extra.yaml").write_text(
        "devices:\n  - id: lobby-co2\n    driver: sim\n    points:\n"
        "      - {id: co2, zone: f1-reception, kind: co2}\n"
    )
    policy = daemon.site / "policies" / "office.yaml"
    policy.write_text(
        policy.read_text().replace("vacancy_timeout_s: 900", "vacancy_timeout_s: 600")
    )
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda m: "RELOADING=1" in m)
    daemon.wait_for(lambda m: "READY=1" in m)
    _, after = daemon.get("/api/agents")
    now = {a["name"]: a["started_s"] for a in after}
    assert "device[lobby-co2]" in now and "device[lobby-co2]" not in started
    unchanged = {k: v for k, v in now.items() if k in started}
    assert unchanged == started  # nobody else was restarted
    _, devices = daemon.get("/api/devices")
    assert "lobby-co2" in {d["id"] for d in devices}


def test_sigterm_stops_gracefully_and_flushes_telemetry(daemon: Running) -> None:
    daemon.wait_for(lambda m: "READY=1" in m)
    time.sleep(2)
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_for(lambda m: "STOPPING=1" in m)
    out, _ = daemon.proc.communicate(timeout=60)
    assert daemon.proc.returncode == 0, out
    assert "messages on the bus" in out  # the exit summary
    files = [p for p in (daemon.state / "telemetry").rglob("*") if p.is_file()]
    assert files and sum(p.stat().st_size for p in files) > 0
