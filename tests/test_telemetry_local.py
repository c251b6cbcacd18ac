"""Telemetry with no InfluxDB configured: line-protocol files in the state directory, rotated,
bounded by ``local_max_mb`` (oldest file deleted, counted, logged), nothing lost unaccounted; and
the telemetry agent's graceful stop, which keeps what still waited in its mailbox."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from buildingd.agents.bus import InProcessBus, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import ReadingMsg, readings_topic
from buildingd.agents.runtime import RestartPolicy, Supervisor
from buildingd.agents.telemetry import TelemetryAgent
from buildingd.clock import SystemClock
from buildingd.config.loader import load_site
from buildingd.drivers.base import DriverContext
from buildingd.points import PointKind, Quality
from buildingd.settings import InfluxSettings
from buildingd.telemetry import schema
from buildingd.telemetry.sink import LocalFileSink, create_sink


def reading(i: int) -> str:
    start = datetime(2026, 11, 25, tzinfo=UTC)
    return schema.reading_line(
        "hq", "thermostat-1", "temperature", "f1-office", "temperature", "degC", float(i), "good",
        start + timedelta(seconds=i),
    )  # fmt: skip


def local_sink(state: Path, local_max_mb: float) -> LocalFileSink:
    # The daemon's own path: [influx] enabled = false gives the local files.
    sink = create_sink(InfluxSettings(enabled=False, local_max_mb=local_max_mb), state)
    assert isinstance(sink, LocalFileSink)
    return sink


def on_disk(sink: LocalFileSink) -> list[str]:
    return [line for path in sink.files() for line in path.read_text().splitlines()]


async def test_files_rotate_and_stay_within_the_bound_dropping_the_oldest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    max_bytes = int(0.02 * 1024 * 1024)  # 20 kB: ten files of 2 kB
    sink = local_sink(tmp_path / "state", 0.02)
    await sink.start()
    total = 0
    for batch in range(60):  # about 90 kB of line protocol, in batches as the agent sends them
        lines = [reading(i) for i in range(total, total + 30)]
        total += len(lines)
        sink.submit(lines)
        await sink.flush()
        sizes = [p.stat().st_size for p in sink.files()]
        assert sum(sizes) <= max_bytes, (batch, sizes)  # the bound holds after every write
        assert max(sizes) <= max_bytes // 10
    await sink.stop()

    files = sink.files()
    assert len(files) in (10, 11)  # rotated, and nothing beyond the bound was kept
    assert sink.files_deleted > 0
    numbers = [int(p.stem.split("-")[1]) for p in files]
    assert numbers == list(range(sink.files_deleted + 1, sink.files_deleted + 1 + len(files)))
    # Every point is on disk or counted as dropped; what is kept is the newest, in order.
    kept = on_disk(sink)
    assert sink.dropped_points + len(kept) == total
    assert kept == [reading(i) for i in range(total - len(kept), total)]
    assert sink.stats()["dropped_points"] == sink.dropped_points
    assert sink.stats()["local_bytes"] <= max_bytes
    deleted = [r for r in caplog.records if "deleted the oldest" in r.getMessage()]
    assert len(deleted) == sink.files_deleted
    assert deleted[0].levelno == logging.WARNING and "telemetry-000001.lp" in deleted[0].message


async def test_a_quiet_building_still_reaches_the_disk_and_stop_writes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("buildingd.telemetry.sink.time.monotonic", lambda: now[0])
    sink = local_sink(tmp_path / "state", 1.0)
    await sink.start()
    sink.submit([reading(0)])
    assert on_disk(sink) == []  # batched: one line does not cost a write
    now[0] += LocalFileSink.WRITE_AFTER_S
    sink.submit([reading(1)])  # ... but nothing waits longer than WRITE_AFTER_S
    assert on_disk(sink) == [reading(0), reading(1)]
    sink.submit([reading(2)])
    await sink.stop()  # SIGTERM: the rest goes to disk
    assert on_disk(sink) == [reading(0), reading(1), reading(2)]
    assert sink.stats()["written"] == 3.0


async def test_lines_the_disk_refuses_are_kept_in_memory_to_a_bound_then_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = local_sink(tmp_path / "state", 1.0)
    sink.MAX_PENDING = 1000
    await sink.start()
    (sink.folder / "telemetry-000001.lp").mkdir()  # the next file cannot be opened
    sink.submit(reading(i) for i in range(1500))
    assert sink.dropped_memory == 500  # the oldest went first
    assert list(sink.pending) == [reading(i) for i in range(500, 1500)]
    assert any("cannot write" in r.getMessage() for r in caplog.records)
    (sink.folder / "telemetry-000001.lp").rmdir()  # the disk is back
    await sink.flush()
    assert on_disk(sink) == [reading(i) for i in range(500, 1500)]
    assert sink.stats()["dropped_memory"] == 500.0


async def test_a_graceful_stop_records_what_still_waited_in_the_telemetry_mailbox(
    tmp_path: Path, demo_site: Path
) -> None:
    site = load_site(demo_site)
    clock = SystemClock()
    bus = InProcessBus()
    ctx = AgentContext(bus=bus, clock=clock, site=site, drivers=DriverContext(clock=clock))
    sink = local_sink(tmp_path / "state", 1.0)
    await sink.start()
    zone = next(iter(site.zones))
    async with Supervisor(clock, RestartPolicy()) as sup:
        await sup.start("telemetry", lambda: TelemetryAgent(ctx, sink))
        for i in range(5):  # the last readings of devices stopped just before, say
            msg = ReadingMsg(
                device_id="thermostat-1", point_id="temperature", zone_id=zone,
                kind=PointKind.TEMPERATURE, unit="degC", value=20.0 + i, quality=Quality.GOOD,
                timestamp=datetime(2026, 11, 25, 12, 0, i, tzinfo=UTC),
            )  # fmt: skip
            await bus.send(msg.envelope(Performative.INFORM, "device[thermostat-1]",
                                        readings_topic(zone)))  # fmt: skip
        # Stopped before it had a turn to take them: the stop hands them to the sink.
        await sup.stop("telemetry")
    await sink.stop()
    values = [float(line.split("value=")[1].split(",")[0]) for line in on_disk(sink)]
    assert values == [20.0, 21.0, 22.0, 23.0, 24.0]
