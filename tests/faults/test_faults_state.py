"""Fault suite, state files: a corrupt telemetry buffer or commitments file is set aside as
``<name>.corrupt-<UTC time>``, said once, and the daemon runs without it: control goes on."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from buildingd.telemetry.buffer import DiskBuffer
from tests.conftest import free_port, until_sync
from tests.daemon_proc import Running, start_daemon

pytestmark = pytest.mark.slow


def truncated(path: Path) -> None:
    """A real buffer with data, cut in half (a power cut while the SD card wrote it)."""
    buffer = DiskBuffer(path, 10**9)
    for i in range(300):
        buffer.append([f"reading,zone=z{j} value={i} {1_800_000_000 + i}" for j in range(50)])
    buffer.close()
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def overwritten(path: Path) -> None:
    path.write_bytes(b"\x00\xffnot a database" * 4096)


def control_goes_on(daemon: Running, since: int) -> None:
    """An actuator is written after ``since`` (a zone decided and a device wrote it)."""
    daemon.wait_for_output(r"audit: .* command .*outcome=written", start=since, timeout_s=60)


def said_once(daemon: Running, text: str) -> None:
    assert sum(text in line for line in daemon.output) == 1, [
        line for line in daemon.output if text in line
    ]


@pytest.mark.parametrize("damage", [truncated, overwritten], ids=["truncated", "overwritten"])
def test_a_corrupt_telemetry_buffer_is_set_aside_and_control_goes_on(
    damage: Callable[[Path], None], site_copy: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    buffer = state / "telemetry-buffer.sqlite"
    damage(buffer)
    # InfluxDB enabled but away (nothing listens): everything goes to the disk buffer.
    influx = {
        "BUILDINGD_INFLUX__ENABLED": "true",
        "BUILDINGD_INFLUX__URL": f"http://127.0.0.1:{free_port()}",
    }
    daemon = start_daemon(site_copy, tmp_path, state=state, env=influx)
    try:
        daemon.wait_for(lambda m: "READY=1" in m, timeout_s=60)
        ready_at = len(daemon.output)
        aside = list(state.glob("telemetry-buffer.sqlite.corrupt-*"))
        assert len(aside) == 1
        said_once(daemon, "telemetry-buffer.sqlite is unreadable")
        code, metrics = daemon.get("/metrics")
        assert code == 200
        assert 'buildingd_state_files_set_aside_total{file="telemetry"} 1' in metrics
        control_goes_on(daemon, ready_at)

        def buffered() -> int:  # telemetry goes on too, into a new buffer
            with sqlite3.connect(buffer) as db:
                return int(db.execute("SELECT total(points) FROM batch").fetchone()[0])

        until_sync(lambda: buffered() > 0, "telemetry buffered in the new database")
        assert daemon.proc.poll() is None
    finally:
        daemon.close()


def test_commitments_with_non_utf8_bytes_are_set_aside_and_the_coordinator_runs(
    site_copy: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "commitments.json").write_bytes(b'{"version": 1, "commitments": [\xff\xfe\xe9]}')
    daemon = start_daemon(site_copy, tmp_path, state=state)
    try:
        daemon.wait_for(lambda m: "READY=1" in m, timeout_s=60)
        ready_at = len(daemon.output)
        until_sync(lambda: list(state.glob("commitments.json.corrupt-*")), "commitments set aside")
        said_once(daemon, "commitments.json is unreadable")
        # The coordinator takes a demand-response request: it runs, it was not given up on.
        code, body = daemon.post(
            "/api/demand-response", daemon.token, b'{"target_w": 500, "window_s": 600}'
        )
        assert code == 202, body
        code, metrics = daemon.get("/metrics")
        assert 'buildingd_state_files_set_aside_total{file="commitments.json"} 1' in metrics
        assert "buildingd_agents_failed_total" not in metrics
        control_goes_on(daemon, ready_at)
    finally:
        daemon.close()


def test_an_unreadable_alerts_file_is_set_aside_and_alerts_work(
    site_copy: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "alerts.json").write_bytes(b'{"version": 1, "alerts": [{"id": "\xff')  # cut off
    daemon = start_daemon(site_copy, tmp_path, state=state)
    try:
        daemon.wait_for(lambda m: "READY=1" in m, timeout_s=60)
        until_sync(lambda: list(state.glob("alerts.json.corrupt-*")), "alerts file set aside")
        said_once(daemon, "alerts.json is unreadable")
        code, metrics = daemon.get("/metrics")
        assert 'buildingd_state_files_set_aside_total{file="alerts.json"} 1' in metrics
        # Break-glass still works, and its alert is kept in a new, readable file.
        code, _ = daemon.post(
            "/api/demand-response", daemon.token, b'{"target_w": 90000, "window_s": 600}'
        )
        assert code == 202

        def kept() -> bool:
            path = state / "alerts.json"
            return path.exists() and len(json.loads(path.read_text())["alerts"]) == 1

        until_sync(kept, "the new alert written to alerts.json")
    finally:
        daemon.close()
