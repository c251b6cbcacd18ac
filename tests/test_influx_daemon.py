"""The whole daemon writing to a real victoria-metrics through an outage and a SIGTERM restart."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.servers import VictoriaMetrics

pytestmark = [pytest.mark.influx, pytest.mark.slow]


def start_daemon(
    site: Path, state: Path, vm: VictoriaMetrics, start: str
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = dict(
        os.environ,
        BUILDINGD_HTTP__PORT=str(port),
        BUILDINGD_MQTT__PORT="0",  # the embedded broker on a free port
        BUILDINGD_SIM__MODBUS_PORT="0",  # the simulated Modbus gateway too
        BUILDINGD_STATE_DIR=str(state),
        BUILDINGD_SITE_DIR=str(site),
        BUILDINGD_SIM__START=start,
        BUILDINGD_INFLUX__ENABLED="true",
        BUILDINGD_INFLUX__URL=vm.url,
        BUILDINGD_INFLUX__TOKEN="test",
        BUILDINGD_INFLUX__FLUSH_INTERVAL_S="0.2",
        BUILDINGD_INFLUX__RETRY_MAX_S="0.5",
        BUILDINGD_INFLUX__TIMEOUT_S="2",
    )
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildingd", "run", "--speed", "30", "--no-console"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if json.loads(r.read())["ready"]:
                    return proc, port
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("daemon not ready within 30 s")


def stop_daemon(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def last_stamp_ms(vm: VictoriaMetrics) -> int:
    return max(t for s in vm.export('{__name__=~".+"}') for t in s["timestamps"])


def buffered_points(state: Path) -> int:
    with sqlite3.connect(state / "telemetry-buffer.sqlite") as db:
        return int(db.execute("SELECT total(points) FROM batch").fetchone()[0])


def test_outage_and_sigterm_restart_lose_nothing(site_copy: Path, tmp_path: Path) -> None:
    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    state = tmp_path / "state"
    start = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    proc, _ = start_daemon(site_copy, state, vm, start)
    try:
        time.sleep(3)
        before = last_stamp_ms(vm)
        vm.stop()
        time.sleep(4)
        out = stop_daemon(proc)  # SIGTERM during the outage
        on_disk = buffered_points(state)
        assert on_disk > 0, out
        assert "unavailable" in out

        # Restarted, still no server; the simulated clock goes on an hour later (the first run
        # covered about 5 simulated minutes), as the real one would.
        later = datetime.fromisoformat(start) + timedelta(hours=1)
        proc, _ = start_daemon(site_copy, state, vm, later.isoformat())
        time.sleep(3)
        assert buffered_points(state) > on_disk  # new data queued behind the old
        vm.start()
        deadline = time.monotonic() + 30
        while buffered_points(state) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert buffered_points(state) == 0
        out = stop_daemon(proc)
        assert "writable again" in out

        series = vm.export('{__name__="reading_value"}')
        assert series
        for s in series:  # each point arrived once: no repeated timestamp in any series
            assert len(s["timestamps"]) == len(set(s["timestamps"])), s["metric"]
        # What the first run produced during the outage (after the last point the server had
        # before it went away) and what the second run produced arrived.
        stamps = sorted(t for s in series for t in s["timestamps"])
        later_ms = later.timestamp() * 1000
        assert any(before < t < later_ms for t in stamps)
        assert any(t >= later_ms for t in stamps)
    finally:
        if proc.poll() is None:
            proc.kill()
        vm.stop()
