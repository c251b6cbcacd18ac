"""A zone's learned state is written off the event loop (its fsyncs take milliseconds on an SD
card), in order, and a failed write is still counted and logged; at stop it is written and
waited for."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from buildingd.agents import learning_file
from buildingd.control.zone_learning import ZoneLearning
from buildingd.points import PointKind, Quality
from tests.test_decision_caches import meeting_room, reading

WAIT_S = 30.0  # only ever waited for in full when the save is back on the loop (the failure)


def warm_meeting_room(state_dir: Path):  # type: ignore[no-untyped-def]
    zone = meeting_room()
    zone.state_dir = state_dir
    zone.ctx.ready_s = 0.0
    zone._handle(reading(PointKind.TEMPERATURE, "f1-meeting-thermostat", "temperature", 21.0,
                         Quality.GOOD))  # type: ignore[arg-type]  # fmt: skip
    now = zone.ctx.clock.monotonic()
    zone._learning_saved_s = now - 2 * 3600  # the hourly save is due at the next decision
    return zone, now


async def test_the_hourly_save_does_not_hold_up_the_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, written = threading.Event(), threading.Event()
    real_write = learning_file.write_atomic

    def slow_disk(path: Path, body: str) -> None:
        release.wait(WAIT_S)
        real_write(path, body)
        written.set()

    monkeypatch.setattr(learning_file, "write_atomic", slow_disk)
    zone, now = warm_meeting_room(tmp_path)
    await zone.control(now)
    # The decision is made and its commands are out while the disk has not finished.
    assert zone.decision is not None
    assert not written.is_set()
    release.set()
    await asyncio.to_thread(written.wait, WAIT_S)
    stored = learning_file.path_for(tmp_path, "f1-meeting").read_text(encoding="utf-8")
    assert stored == learning_file.dump("f1-meeting", zone.learning)
    # At stop the save waits for the disk, after the one still in flight.
    zone.learning = ZoneLearning(start_bias_s=123.0)
    zone.save_learning()
    assert learning_file.load(tmp_path, "f1-meeting").start_bias_s == 123.0


async def test_a_failed_save_off_the_loop_is_counted_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full_disk(path: Path, body: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(learning_file, "write_atomic", full_disk)
    zone, now = warm_meeting_room(tmp_path)
    await zone.control(now)
    key = 'buildingd_state_write_errors_total{file="learning"}'
    for _ in range(1000):  # the report comes back to the loop when the writer thread is done
        if zone.ctx.metrics.counters[key]:
            break
        await asyncio.sleep(0.01)
    assert zone.ctx.metrics.counters[key] == 1
    assert "learned state not saved" in caplog.text and "No space left" in caplog.text
