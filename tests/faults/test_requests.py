"""Fault suite, requests from outside (issue 14): every demand-response, vote and setpoint
request is bounded by policy, one-shot (a retained message never acts), and audited when
refused. Against a real daemon and mosquitto, with a raw paho client as the requester."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest

from tests.daemon_proc import Running, start_daemon
from tests.servers import Mosquitto

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

BASE = "buildingd/demo-office"


Start = Callable[[], Running]


@pytest.fixture
def live(site_copy: Path, tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Start]:
    """Starts the demo site's daemon on mosquitto, Home Assistant setpoint topics on, each start
    on the same state directory (a restart), and stops what it started. Its power cap is taken
    out: a cap-triggered event must not be mistaken for a request's."""
    office = site_copy / "policies" / "office.yaml"
    office.write_text(office.read_text().replace("power_cap_w: 12000", ""))
    env = {
        "BUILDINGD_MQTT__ENABLED": "true",
        "BUILDINGD_MQTT__HOST": mosquitto.host,
        "BUILDINGD_MQTT__PORT": str(mosquitto.port),
        "BUILDINGD_MQTT__HOMEASSISTANT_DISCOVERY": "true",
    }
    started: list[Running] = []

    def start() -> Running:
        running = start_daemon(site_copy, tmp_path, env=env, speed=1.0)
        started.append(running)
        running.wait_ready()
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def daemon(live: Start) -> Running:
    return live()


def publish(broker: Mosquitto, topic: str, payload: str, *, retain: bool = False) -> None:
    mqtt_publish.single(topic, payload, qos=1, retain=retain, hostname=broker.host,
                        port=broker.port)  # fmt: skip


def refused(daemon: Running, kind: str) -> float:
    return daemon.metric("buildingd_requests_refused_total", kind=kind)


def audit_lines(daemon: Running, text: str) -> list[str]:
    return [line for line in daemon.output if "audit:" in line and text in line]


def test_an_overflowing_demand_response_window_is_refused_not_a_crash(
    daemon: Running, mosquitto: Mosquitto
) -> None:
    """The issue's row: six ``window_s: 1e308`` requests used to crash the coordinator, and the
    supervisor gave up on it for good."""
    for _ in range(6):
        publish(mosquitto, f"{BASE}/demand-response/request",
                '{"target_w": 500, "window_s": 1e308}')  # fmt: skip
    daemon.until(lambda: refused(daemon, "demand-response") >= 6, "six refusals")
    coordinator = daemon.agent("coordinator")
    assert coordinator["state"] == "running" and coordinator["restarts"] == 0, coordinator

    # The journal is read on a thread: the audit lines may arrive after the counter moved.
    def refusals_audited() -> list[str]:
        found = audit_lines(daemon, "demand-response outcome=refused")
        return found if len(found) >= 6 else []

    lines = daemon.until(refusals_audited, "six refusals audited")
    assert len(lines) == 6 and all("window_s" in line for line in lines), lines
    # The coordinator still takes a request inside the limits.
    publish(mosquitto, f"{BASE}/demand-response/request", '{"target_w": 500, "window_s": 600}')
    daemon.until(lambda: len(daemon.json("/api/negotiations")) == 1, "the valid event")
    assert daemon.json("/api/negotiations")[0]["target_w"] == 500


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"target_w": 500, "window_s": 31536000000}, "window_s"),  # a thousand years
        ({"target_w": 1e308, "window_s": 600}, "target_w"),
        ({"target_w": 500, "window_s": 14401}, "max_window_s"),  # the policy's 4 h, plus 1 s
        ({"target_w": 100001, "window_s": 600}, "max_target_w"),
    ],
)
def test_demand_response_beyond_the_limits_is_refused_over_http_and_audited(
    daemon: Running, body: dict[str, float], why: str
) -> None:
    status, answer = daemon.post_json("/api/demand-response", body)
    assert status == 422, answer
    assert why in answer["error"]
    assert daemon.json("/api/negotiations") == []
    daemon.until(lambda: audit_lines(daemon, "demand-response outcome=refused"), "audit")
    assert why in audit_lines(daemon, "demand-response outcome=refused")[0]
    assert refused(daemon, "demand-response") == 1


def test_a_refused_99_degree_setpoint_is_audited_over_http_and_mqtt(
    daemon: Running, mosquitto: Mosquitto
) -> None:
    status, answer = daemon.post_json("/api/zones/f1-meeting/override", {"heating_sp_c": 99})
    assert status == 422 and "safety band" in answer["reason"], answer
    publish(mosquitto, f"{BASE}/zone/f1-meeting/set/cooling_sp", "99")
    daemon.until(lambda: len(audit_lines(daemon, "override outcome=refused")) == 2, "audits")
    http, mqtt = audit_lines(daemon, "override outcome=refused")
    assert "zone=f1-meeting" in http and "source=http" in http and "heating_sp=99" in http
    assert "source=mqtt" in mqtt and "cooling_sp=99" in mqtt and "safety band" in mqtt
    assert refused(daemon, "override") == 2
    assert daemon.json("/api/zones/f1-meeting")["heating_sp_c"] < 30


def test_retained_requests_never_act_at_start_or_restart(live: Start, mosquitto: Mosquitto) -> None:
    """The issue's row: one retained demand-response request made an event at every connect."""
    publish(mosquitto, f"{BASE}/demand-response/request",
            '{"target_w": 500, "window_s": 600}', retain=True)  # fmt: skip
    publish(mosquitto, f"{BASE}/zone/f1-meeting/vote", "cold", retain=True)
    publish(mosquitto, f"{BASE}/zone/f1-meeting/set/heating_sp", "22.5", retain=True)
    for start in range(2):  # the second start is the restart
        daemon = live()
        ignored = functools.partial(daemon.metric, "buildingd_mqtt_retained_ignored_total")
        for kind in ("demand-response", "vote", "override"):
            daemon.until(
                lambda k=kind, n=ignored: n(kind=k) == 1,
                f"the retained {kind} request counted (start {start + 1})",
            )
        assert daemon.json("/api/negotiations") == []
        assert not audit_lines(daemon, "vote outcome=") and not audit_lines(daemon, "override")
        daemon.stop()
    # A request published without retain acts, once.
    daemon = live()
    publish(mosquitto, f"{BASE}/demand-response/request", '{"target_w": 500, "window_s": 600}')
    daemon.until(lambda: len(daemon.json("/api/negotiations")) == 1, "the live request")
