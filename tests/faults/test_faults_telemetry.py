"""Fault suite, telemetry on SIGKILL: in both modes (local files, InfluxDB with its disk buffer)
lines wait in memory about a second at most, so a killed daemon loses about one second of
telemetry: the age of the oldest line in memory (the daemon's own figure, watched throughout) and
the lines lost against those produced in the same run."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.daemon_proc import Running, start_daemon
from tests.servers import VictoriaMetrics, WriteRecorder

pytestmark = pytest.mark.slow

FIGURE = re.compile(r'^buildingd_telemetry\{figure="(\w+)"\} (\S+)$', re.M)
OBSERVE_S = 8.0  # real seconds of production observed before the kill
SPEED = 20.0  # simulated seconds per second: a few lines per second, as a small site makes


def figures(daemon: Running) -> dict[str, float]:
    code, text = daemon.get("/metrics")
    assert code == 200
    return {name: float(value) for name, value in FIGURE.findall(text)}


def produced(f: dict[str, float]) -> float:
    """Lines the daemon has produced so far: written (to a file or the server), put in the disk
    buffer, or still waiting in memory."""
    return f.get("written", 0) + f.get("buffered", 0) + f.get("pending", 0)


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[WriteRecorder]:
    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    server = WriteRecorder(vm.url)
    server.start()
    yield server
    server.stop()
    vm.stop()


def local_lines(state: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (state / "telemetry").glob("*.lp"))


def influx_lines(recorder: WriteRecorder, state: Path) -> int:
    buffer = state / "telemetry-buffer.sqlite"
    with sqlite3.connect(buffer) as db:
        on_disk = int(db.execute("SELECT total(points) FROM batch").fetchone()[0])
    return len(recorder.lines()) + on_disk


def sigkill_loss(daemon: Running, durable: Callable[[], int]) -> dict[str, float]:
    """Watch production for ``OBSERVE_S``, SIGKILL, and compare what was produced with what
    survived: lines lost, lines produced per second, most lines ever waiting in memory."""
    daemon.wait_for(lambda m: "READY=1" in m, timeout_s=60)
    time.sleep(2)  # past the start-up burst (every device's first reading)
    first = figures(daemon)
    t0 = time.monotonic()
    most_pending = oldest_s = 0.0
    while time.monotonic() - t0 < OBSERVE_S:
        last = figures(daemon)
        most_pending = max(most_pending, last.get("pending", 0))
        oldest_s = max(oldest_s, last["pending_age_s"])
        time.sleep(0.1)
    rate = (produced(last) - produced(first)) / (time.monotonic() - t0)
    daemon.proc.kill()
    daemon.proc.wait(timeout=10)
    lost = max(0.0, produced(last) - durable())
    result = {"lost_lines": lost, "lines_per_s": rate, "most_pending": most_pending,
              "oldest_pending_s": oldest_s, "pending_at_kill": last.get("pending", 0)}  # fmt: skip
    print(json.dumps(result))
    return result


def check(result: dict[str, float]) -> None:
    rate = result["lines_per_s"]
    assert rate > 2, result  # the building produces telemetry at all
    # No line waits in memory much past the one-second write interval (slack for a loaded
    # machine). Before, 24-30 seconds' worth waited (local files: 500 lines or 10 s). Counted in
    # lines this is noisy: a poll reads many points at once, so ten lines may come in one burst
    # at two lines a second.
    assert result["oldest_pending_s"] <= 2.5, result
    # Only what waited in memory at the kill is lost: the last second's lines, nothing older.
    assert result["lost_lines"] <= result["pending_at_kill"], result


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def test_sigkill_loses_about_a_second_of_local_telemetry(site_copy: Path, tmp_path: Path) -> None:
    daemon = start_daemon(site_copy, tmp_path, speed=SPEED, env={"BUILDINGD_SIM__START": now_iso()})
    try:
        check(sigkill_loss(daemon, lambda: local_lines(daemon.state)))
    finally:
        daemon.close()


@pytest.mark.influx
def test_sigkill_loses_about_a_second_of_influx_telemetry(
    site_copy: Path, tmp_path: Path, recorder: WriteRecorder
) -> None:
    env = {
        "BUILDINGD_SIM__START": now_iso(),
        "BUILDINGD_INFLUX__ENABLED": "true",
        "BUILDINGD_INFLUX__URL": recorder.url,
        "BUILDINGD_INFLUX__TOKEN": "test",
    }
    daemon = start_daemon(site_copy, tmp_path, speed=SPEED, env=env)
    try:
        check(sigkill_loss(daemon, lambda: influx_lines(recorder, daemon.state)))
    finally:
        daemon.close()
