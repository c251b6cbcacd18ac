"""Fault: InfluxDB goes away under the running daemon, which is restarted during the outage.
Control goes on, one alert is raised (kept across the restart) and cleared when InfluxDB is
back, and every line produced meanwhile reaches it exactly once."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import until_sync
from tests.daemon_proc import Running, start_daemon
from tests.servers import VictoriaMetrics, WriteRecorder

pytestmark = [pytest.mark.influx, pytest.mark.slow]


def telemetry_alerts(daemon: Running) -> list[dict[str, Any]]:
    status, alerts = daemon.get("/api/alerts")
    assert status == 200
    return [a for a in alerts if str(a.get("escalation", "")).startswith("telemetry ")]


def decisions(daemon: Running) -> int:
    """Commands the zones have had written so far (control going on shows here)."""
    _, text = daemon.get("/metrics")
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("buildingd_commands_total{")
    )


def test_influx_outage_with_restart_raises_one_alert_and_loses_nothing(
    site_copy: Path, tmp_path: Path
) -> None:
    policy = site_copy / "policies" / "office.yaml"
    text = policy.read_text()
    assert "device_unavailable_s: 900" in text
    # Escalate after a simulated minute (2 s at --speed 30) instead of 15.
    policy.write_text(text.replace("device_unavailable_s: 900", "device_unavailable_s: 60"))
    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    server = WriteRecorder(vm.url)  # records, in order, each line the server accepted
    server.start()
    start = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    env = {
        "BUILDINGD_INFLUX__ENABLED": "true",
        "BUILDINGD_INFLUX__URL": server.url,
        "BUILDINGD_INFLUX__TOKEN": "test",
        "BUILDINGD_INFLUX__FLUSH_INTERVAL_S": "0.2",
        "BUILDINGD_INFLUX__RETRY_MAX_S": "0.5",
        "BUILDINGD_INFLUX__TIMEOUT_S": "2",
        "BUILDINGD_SIM__START": start,
    }
    daemon = start_daemon(site_copy, tmp_path, env=env)
    try:
        daemon.wait_for(lambda m: "READY=1" in m)
        until_sync(server.lines, "lines reach InfluxDB")
        assert telemetry_alerts(daemon) == []
        server.stop()  # InfluxDB goes away: connections are refused
        vm.stop()
        before = decisions(daemon)
        (alert,) = until_sync(lambda: telemetry_alerts(daemon), "one telemetry alert")
        assert "undeliverable" in alert["escalation"] and "InfluxDB" in alert["escalation"]
        assert "left: control unaffected" in alert["escalation"]
        until_sync(lambda: decisions(daemon) > before, "zones still commanded")

        # Restarted during the outage: the alert is still open, not raised a second time.
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0
        daemon.close()
        # The simulated clock goes on an hour later, as the real one would (the same start would
        # repeat the first run's lines, timestamps and all).
        later = datetime.fromisoformat(start) + timedelta(hours=1)
        daemon = start_daemon(
            site_copy, tmp_path, env={**env, "BUILDINGD_SIM__START": later.isoformat()}
        )
        daemon.wait_for(lambda m: "READY=1" in m)
        (again,) = until_sync(lambda: telemetry_alerts(daemon), "the alert kept")
        assert again["id"] == alert["id"]

        vm.start()
        server.start()
        until_sync(lambda: not telemetry_alerts(daemon), "the alert cleared")
        drained = 'buildingd_telemetry{figure="buffer_points"} 0.0'
        until_sync(
            lambda: f"{drained}\n" in daemon.get("/metrics")[1],
            "the buffer drained",
        )
        accepted = server.lines()
        doubled = sorted({line for line in accepted if accepted.count(line) > 1})
        assert doubled == [], "a line reached InfluxDB twice"
        pages = [line for line in daemon.output if "BREAK-GLASS" in line and "telemetry" in line]
        assert len(pages) == 1 and " cleared (" in pages[0], "the restart paged again"
    finally:
        daemon.close()
        server.stop()
        vm.stop()
