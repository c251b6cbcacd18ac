"""The InfluxDB writer against a real victoria-metrics: schema, outage, restart, token, bound."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from buildingd.settings import InfluxSettings
from buildingd.telemetry import schema
from buildingd.telemetry.influx import InfluxSink, Outcome, classify_http_error
from tests.conftest import free_port
from tests.servers import VictoriaMetrics

pytestmark = pytest.mark.influx


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    yield vm
    vm.stop()


def influx_settings(url: str, **overrides: Any) -> InfluxSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "url": url,
        "token": SecretStr("test-token"),
        "flush_interval_s": 0.1,
        "retry_max_s": 0.5,
        "timeout_s": 2.0,
    }
    return InfluxSettings(**(values | overrides))


def reading(i: int, start: datetime) -> str:
    return schema.reading_line(
        "hq", "thermostat-1", "temperature", "f1-office", "temperature", "degC", float(i), "good",
        start + timedelta(seconds=i),
    )  # fmt: skip


def exported_values(vm: VictoriaMetrics, name: str) -> tuple[list[float], list[int]]:
    series = vm.export(f'{{__name__="{name}"}}')
    assert len(series) == 1, series
    return series[0]["values"], series[0]["timestamps"]


async def wait_until_replayed(sink: InfluxSink, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while sink.buffer.points or sink.pending:
        assert asyncio.get_running_loop().time() < deadline, sink.stats()
        await asyncio.sleep(0.1)


def test_write_errors_are_classified() -> None:
    assert classify_http_error(429, "slow down", "7").retry_after_s == 7.0
    assert classify_http_error(429, "slow down", "7").outcome is Outcome.RETRY
    assert classify_http_error(503, "unavailable", None).outcome is Outcome.RETRY
    assert classify_http_error(503, "x", "Wed, 21 Oct 2026 07:28:00 GMT").retry_after_s is None
    assert classify_http_error(401, "unauthorized", None).outcome is Outcome.CONFIG
    assert classify_http_error(404, "bucket not found", None).outcome is Outcome.CONFIG
    assert classify_http_error(400, "unable to parse", None).outcome is Outcome.REJECTED


async def test_every_measurement_arrives_with_its_tags_and_values(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    lines = [
        reading(0, now),
        schema.command_line(
            "hq", "thermostat-1", "heating_sp", "f1-office", "heating_setpoint", 21.5, True,
            "comfort", None, now,
        ),
        schema.zone_state_line(
            "hq", "f1-office", "occupied", 21.2, 45.0, True, 21.0, 24.0, 21.0, 24.0, 80.0,
            1200.0, 0.0, 96.0, now,
        ),
        schema.zone_learning_line(
            "hq", "f1-office", {"heating_k_per_h": 2.5, "warmup_lead_s": 3600.0}, now
        ),
        schema.event_line("hq", "alert", "error", "zone[f1-office]", "f1-office", "stale", now),
        schema.daemon_line("hq", {"uptime_s": 12.0, "devices_up": 3, "rss_mb": 61.5}, now),
        schema.negotiation_line("hq", "demand-response", "executing", "c1", "shedding",
                                {"target_w": 2000.0, "committed_w": 2100.0, "turns": 3}, now),
    ]  # fmt: skip
    sink = InfluxSink(influx_settings(victoria.url), tmp_path / "state")
    await sink.start()
    sink.submit(lines)
    await sink.stop()
    assert sink.counters["written"] == len(lines)

    ts_ms = int(now.timestamp()) * 1000
    expected = {
        "reading_value": (
            {"site": "hq", "zone": "f1-office", "device": "thermostat-1", "point": "temperature"}
            | {"kind": "temperature", "unit": "degC"},
            0.0,
        ),
        "command_value": ({"point": "heating_sp", "kind": "heating_setpoint"}, 21.5),
        "command_ok": ({"device": "thermostat-1"}, 1.0),
        "zone_state_temperature_c": ({"zone": "f1-office", "mode": "occupied"}, 21.2),
        "zone_state_occupied": ({"zone": "f1-office"}, 1.0),
        "zone_state_lighting_w": ({"zone": "f1-office"}, 96.0),
        "zone_learning_heating_k_per_h": ({"zone": "f1-office"}, 2.5),
        "event_level": ({"kind": "alert", "severity": "error", "zone": "f1-office"}, 2.0),
        "daemon_uptime_s": ({"site": "hq"}, 12.0),
        "daemon_rss_mb": ({"site": "hq"}, 61.5),
        "negotiation_committed_w": ({"kind": "demand-response", "state": "executing"}, 2100.0),
    }
    for name, (labels, value) in expected.items():
        series = victoria.export(f'{{__name__="{name}"}}')
        assert len(series) == 1, name
        assert labels.items() <= series[0]["metric"].items(), (name, series[0]["metric"])
        assert series[0]["values"] == [value]
        assert series[0]["timestamps"] == [ts_ms]
    # Every measurement the schema documents arrived (string fields are dropped by
    # victoria-metrics, so each measurement is checked through its numeric fields).
    names = {s["metric"]["__name__"] for s in victoria.export('{__name__=~".+"}')}
    assert {m for m in schema.SCHEMA if not any(n.startswith(m + "_") for n in names)} == set()


async def test_an_outage_loses_nothing_and_keeps_the_order(
    victoria: VictoriaMetrics, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="buildingd.telemetry")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    sink = InfluxSink(influx_settings(victoria.url, batch_size=50), tmp_path / "state")
    await sink.start()
    sink.submit(reading(i, start) for i in range(100))
    await sink.flush()
    assert sink.counters["written"] == 100

    victoria.stop()
    for chunk in range(6):  # a stretch of operation with the server away
        sink.submit(reading(i, start) for i in range(100 + 50 * chunk, 150 + 50 * chunk))
        await asyncio.sleep(0.15)
    await sink.flush()
    assert sink.buffer.points == 300
    assert sink.stats()["connected"] == 0.0
    assert sum("unavailable" in r.message for r in caplog.records) == 1  # once per outage

    victoria.start()
    sink.submit(reading(i, start) for i in range(400, 420))  # new data queues behind the buffer
    await wait_until_replayed(sink)
    await sink.stop()

    values, timestamps = exported_values(victoria, "reading_value")
    assert values == [float(i) for i in range(420)]  # each exactly once
    assert timestamps == sorted(set(timestamps))
    assert sink.counters["replayed"] == 320
    assert any("writable again" in r.message for r in caplog.records)


async def test_a_restart_during_the_outage_loses_nothing(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    state = tmp_path / "state"
    first = InfluxSink(influx_settings(victoria.url, batch_size=40), state)
    await first.start()
    first.submit(reading(i, start) for i in range(50))
    await first.flush()
    victoria.stop()
    first.submit(reading(i, start) for i in range(50, 130))
    await first.stop()  # the SIGTERM path: what is in memory goes to disk
    assert first.counters["written"] == 50

    second = InfluxSink(influx_settings(victoria.url, batch_size=40), state)
    assert second.buffer.points == 80  # survived the restart
    await second.start()
    second.submit(reading(i, start) for i in range(130, 140))
    await asyncio.sleep(0.5)  # still down: everything stays queued
    victoria.start()
    await wait_until_replayed(second)
    await second.stop()
    values, _ = exported_values(victoria, "reading_value")
    assert values == [float(i) for i in range(140)]


async def test_a_wrong_token_is_a_configuration_error_that_keeps_the_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vm = VictoriaMetrics(tmp_path / "vm", auth=("grafana", "s3cret"))
    vm.start()
    try:
        sink = InfluxSink(influx_settings(vm.url), tmp_path / "state")
        await sink.start()
        sink.submit(reading(i, datetime.now(UTC)) for i in range(10))
        for _ in range(5):
            await sink.flush()
        await asyncio.sleep(0.5)
        await sink.stop()
    finally:
        vm.stop()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "configuration error" in errors[0].message and "401" in errors[0].message
    assert sink.counters["write_errors"] == 1  # waits for a fix instead of spinning
    assert sink.buffer.points == 10  # kept on disk for when the token is fixed


async def test_the_buffer_bound_drops_the_oldest_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    sink = InfluxSink(
        influx_settings(closed, buffer_max_mb=0.004, batch_size=20), tmp_path / "state"
    )
    await sink.start()
    start = datetime.now(UTC).replace(microsecond=0)
    for batch in range(10):
        sink.submit(reading(i, start) for i in range(20 * batch, 20 * batch + 20))
        await sink.flush()
    kept = sink.buffer.points
    assert 0 < kept < 200
    assert sink.counters["dropped_bound"] == 200 - kept
    oldest = sink.buffer.oldest()
    assert oldest is not None
    assert oldest.lines[0] == reading(200 - kept, start)  # the newest points survived
    assert sink.buffer.bytes <= 0.004 * 1024 * 1024
    assert sum("disk buffer full" in r.message for r in caplog.records) == 1
    await sink.stop()
