"""The whole daemon writing to a real victoria-metrics through an outage and a SIGTERM restart:
every line produced while the server was away arrives exactly once, oldest first."""

from __future__ import annotations

import json
import os
import re
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
from tests.servers import VictoriaMetrics, WriteRecorder

pytestmark = [pytest.mark.influx, pytest.mark.slow]


def start_daemon(
    site: Path, state: Path, influx_url: str, start: str
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = dict(
        os.environ,
        BUILDINGD_HTTP__PORT=str(port),
        BUILDINGD_MQTT__PORT="0",  # the embedded broker on a free port
        BUILDINGD_SIM__MODBUS_PORT="0",  # the simulated Modbus gateway too
        BUILDINGD_SIM__BACNET_PORT="0",  # and the simulated BACnet devices
        BUILDINGD_STATE_DIR=str(state),
        BUILDINGD_SITE_DIR=str(site),
        BUILDINGD_SIM__START=start,
        BUILDINGD_INFLUX__ENABLED="true",
        BUILDINGD_INFLUX__URL=influx_url,
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


def buffered_points(state: Path) -> int:
    with sqlite3.connect(state / "telemetry-buffer.sqlite") as db:
        return int(db.execute("SELECT total(points) FROM batch").fetchone()[0])


def buffered_lines(state: Path) -> list[str]:
    """Every line waiting in the on-disk buffer, oldest first (the order they will be sent)."""
    with sqlite3.connect(state / "telemetry-buffer.sqlite") as db:
        rows = db.execute("SELECT lines FROM batch ORDER BY id").fetchall()
    return [line for (text,) in rows for line in str(text).split("\n")]


UNESCAPED_SPACE = re.compile(r"(?<!\\) ")


def series_and_stamp(line: str) -> tuple[str, int]:
    """(measurement with its tags, timestamp in s) of a line of line protocol (string fields
    may hold spaces: the key ends at the first unescaped one, the timestamp follows the last)."""
    return UNESCAPED_SPACE.split(line, maxsplit=1)[0], int(line.rsplit(" ", 1)[1])


def reading_point(line: str) -> tuple[dict[str, str], float, int]:
    """Tags, ``value`` field and timestamp (ms) of a ``reading`` line, as the server keys it."""
    key, fields, stamp = UNESCAPED_SPACE.split(line)
    tags = dict(tag.split("=", 1) for tag in key.split(",")[1:])
    value = next(f.split("=", 1)[1] for f in fields.split(",") if f.startswith("value="))
    return tags, float(value), int(stamp) * 1000


def test_outage_and_sigterm_restart_lose_nothing(site_copy: Path, tmp_path: Path) -> None:
    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    # The daemon writes through a proxy that records, in order, each line the server accepted.
    server = WriteRecorder(vm.url)
    server.start()
    state = tmp_path / "state"
    start = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    proc, _ = start_daemon(site_copy, state, server.url, start)
    try:
        time.sleep(3)
        server.stop()  # the server goes away: connections are refused
        vm.stop()
        before = server.lines()
        assert before
        time.sleep(4)
        out = stop_daemon(proc)  # SIGTERM during the outage
        assert "unavailable" in out
        # What the first run produced during the outage, every line of it (SIGTERM flushed
        # memory to disk): nothing of it reached the server.
        first_outage = buffered_lines(state)
        assert len(first_outage) > 10, out
        assert not set(first_outage) & set(before)

        # Restarted, still no server; the simulated clock goes on an hour later (the first run
        # covered about 5 simulated minutes), as the real one would.
        later = datetime.fromisoformat(start) + timedelta(hours=1)
        proc, _ = start_daemon(site_copy, state, server.url, later.isoformat())
        time.sleep(3)
        outage = buffered_lines(state)  # both runs' outage data, oldest first
        assert outage[: len(first_outage)] == first_outage  # new data queued behind the old
        # The restart's own start-up (commands, zone states, daemon health) is in there too.
        measurements = {line.split(",", 1)[0] for line in outage[len(first_outage) :]}
        assert {"reading", "command", "zone_state", "daemon"} <= measurements
        vm.start()
        server.start()
        deadline = time.monotonic() + 30
        while buffered_points(state) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert buffered_points(state) == 0
        out = stop_daemon(proc)
        assert "writable again" in out

        accepted = server.lines()
        assert accepted[: len(before)] == before
        after = accepted[len(before) :]
        # Exactly once and in order: the first lines the server took after the outage are the
        # outage's lines, oldest first, each once; then what came since.
        assert after[: len(outage)] == outage
        assert len(accepted) == len(set(accepted)), "a line reached the server twice"
        # In time order per series, across the outage and the restart.
        last: dict[str, int] = {}
        for line in accepted:
            key, stamp = series_and_stamp(line)
            assert stamp >= last.get(key, stamp), f"out of order: {line}"
            last[key] = stamp

        # And the server holds them: every reading of the outage is a sample, stored once.
        stored: dict[frozenset[tuple[str, str]], list[tuple[int, float]]] = {}
        for s in vm.export('{__name__="reading_value"}'):
            labels = frozenset((k, v) for k, v in s["metric"].items() if k != "__name__")
            stored[labels] = list(zip(s["timestamps"], s["values"], strict=True))
            assert len(s["timestamps"]) == len(set(s["timestamps"])), s["metric"]
        readings = [line for line in outage if line.startswith("reading,")]
        assert readings
        for line in readings:
            tags, value, stamp_ms = reading_point(line)
            at = [v for t, v in stored[frozenset(tags.items())] if t == stamp_ms]
            assert len(at) == 1 and at[0] == pytest.approx(value, rel=1e-9), (line, at)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
        vm.stop()
