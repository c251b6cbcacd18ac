"""The whole daemon on the simulated building, on virtual time: a day passes in seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from buildingd.agents.bus import Mailbox
from buildingd.agents.messages import EVENTS_TOPIC, CommandMsg, EventMsg
from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.control.zone import ZoneMode
from buildingd.points import PointKind, Quality
from buildingd.service.app import Daemon
from buildingd.settings import Settings
from tests.conftest import REPO, run_virtual

BERLIN = ZoneInfo("Europe/Berlin")


class MemorySink:
    """A telemetry sink that keeps lines in memory (the TelemetrySink seam is ours)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stopped = False

    async def start(self) -> None:
        return None

    def submit(self, lines: Iterable[str]) -> None:
        self.lines.extend(lines)

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    def outage(self) -> str | None:
        return None

    def stats(self) -> dict[str, float]:
        return {"lines": float(len(self.lines))}


def make_daemon(
    tmp_path: Path, start: datetime, seed: int = 7, site_dir: Path = REPO
) -> tuple[Daemon, MemorySink]:
    settings = Settings(state_dir=tmp_path / "state", site_dir=site_dir)
    settings = settings.model_copy(
        update={
            "sim": settings.sim.model_copy(
                update={"seed": seed, "start": start.isoformat(), "protocols": False}
            ),
            "http": settings.http.model_copy(update={"enabled": False}),
        }
    )
    sink = MemorySink()
    clock = ScaledClock(start, 1.0)
    return Daemon(settings, load_site(site_dir), clock=clock, sink_factory=lambda: sink), sink


async def run_for(daemon: Daemon, seconds: float) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.ensure_future(daemon.run(seconds))
    await daemon.ready.wait()
    return task


def test_unoccupied_zone_drifts_to_its_setback_band(tmp_path: Path) -> None:
    friday_evening = datetime(2026, 1, 16, 18, 0, tzinfo=BERLIN)
    daemon, sink = make_daemon(tmp_path, friday_evening)

    async def main() -> None:
        task = await run_for(daemon, 10 * 3600)
        await task

    run_virtual(main())
    assert daemon.building is not None
    zone = daemon.building.zones["f2-office-a"]
    agent = daemon.zone_agents["f2-office-a"]
    assert agent.decision is not None
    assert agent.decision.state.mode is ZoneMode.UNOCCUPIED
    assert zone.heating_sp_c == 16.0 and zone.cooling_sp_c == 29.0
    # Four hours after the end of occupied hours in January the room has cooled well below the
    # occupied band and settles at the setback setpoint.
    assert 15.0 < zone.temperature_c < 18.0
    assert sink.stopped
    assert any(line.startswith("zone") or "f2-office-a" in line for line in sink.lines)


def test_stale_only_temperature_sensor_means_safe_hold(tmp_path: Path) -> None:
    monday = datetime(2026, 1, 12, 9, 0, tzinfo=BERLIN)
    daemon, _ = make_daemon(tmp_path, monday)
    events: list[EventMsg] = []

    async def main() -> None:
        box = Mailbox("test-events", 10_000)
        daemon.bus.subscribe(EVENTS_TOPIC, box)
        task = await run_for(daemon, 3600)
        await asyncio.sleep(300)
        zone = daemon.zone_agents["f1-meeting"]
        assert zone.decision is not None and zone.decision.state.mode is not ZoneMode.HOLD
        assert daemon.building is not None
        daemon.building.inject_fault("f1-meeting", PointKind.TEMPERATURE, "dead")
        await asyncio.sleep(600)
        assert zone.decision.state.mode is ZoneMode.HOLD
        assert "temperature" in zone.degraded
        daemon.building.inject_fault("f1-meeting", PointKind.TEMPERATURE, None)
        await asyncio.sleep(120)
        assert zone.decision.state.mode is not ZoneMode.HOLD
        daemon.request_stop()
        await task
        while len(box):
            events.append(EventMsg.parse(await box.get()))

    run_virtual(main())
    kinds = [(e.kind, e.zone_id) for e in events]
    assert ("degraded", "f1-meeting") in kinds
    assert ("recovered", "f1-meeting") in kinds
    assert any(e.kind == "availability" and "f1-meeting-thermostat" in e.message for e in events)
    # Only the failing zone was degraded.
    assert {z for k, z in kinds if k == "degraded"} == {"f1-meeting"}


def test_out_of_range_and_frozen_values_are_flagged_not_used(tmp_path: Path) -> None:
    monday = datetime(2026, 1, 12, 9, 0, tzinfo=BERLIN)
    daemon, _ = make_daemon(tmp_path, monday)

    async def main() -> None:
        task = await run_for(daemon, 8 * 3600)
        await asyncio.sleep(120)
        assert daemon.building is not None
        daemon.building.inject_fault("f2-office-b", PointKind.TEMPERATURE, "out_of_range")
        await asyncio.sleep(60)
        agent = daemon.zone_agents["f2-office-b"]
        qualities = {s.quality for k, s in agent.sensors.values() if k is PointKind.TEMPERATURE}
        assert qualities == {Quality.OUT_OF_RANGE}
        assert agent.inputs().temperature_c is None
        daemon.building.inject_fault("f2-office-b", PointKind.TEMPERATURE, None)
        daemon.building.inject_fault("f2-office-a", PointKind.HUMIDITY, "frozen")
        await asyncio.sleep(5 * 3600)  # default frozen_after_s for humidity is 4 h
        agent_a = daemon.zone_agents["f2-office-a"]
        hum = {s.quality for k, s in agent_a.sensors.values() if k is PointKind.HUMIDITY}
        assert hum == {Quality.FROZEN}
        assert agent_a.inputs().humidity_pct is None
        assert agent.inputs().temperature_c is not None  # the repaired sensor is used again
        daemon.request_stop()
        await task

    run_virtual(main())
    flagged = daemon.metrics.counters
    assert any("out_of_range" in k for k in flagged)
    assert any("frozen" in k for k in flagged)


def test_commands_outside_limits_or_safety_band_are_refused(tmp_path: Path) -> None:
    monday = datetime(2026, 1, 12, 9, 0, tzinfo=BERLIN)
    daemon, _ = make_daemon(tmp_path, monday)

    async def main() -> None:
        task = await run_for(daemon, 3600)
        device = daemon.device_agents["f1-kitchen-thermostat"]
        assert daemon.building is not None
        before = daemon.building.zones["f1-kitchen"].heating_sp_c
        # Device limits are 5..35 degC.
        r = await device.execute(
            CommandMsg(point_id="heating_sp", value=36.0, zone_id="f1-kitchen", reason="t")
        )
        assert not r.ok and "outside the device limits" in (r.error or "")
        # Inside the device limits but outside the office policy's safety band (12..30 degC).
        r = await device.execute(
            CommandMsg(point_id="heating_sp", value=8.0, zone_id="f1-kitchen", reason="t")
        )
        assert not r.ok and "safety band" in (r.error or "")
        r = await device.execute(
            CommandMsg(point_id="temperature", value=20.0, zone_id="f1-kitchen", reason="t")
        )
        assert not r.ok and "not writable" in (r.error or "")
        assert daemon.building.zones["f1-kitchen"].heating_sp_c == before  # nothing written
        r = await device.execute(
            CommandMsg(point_id="heating_sp", value=20.5, zone_id="f1-kitchen", reason="t")
        )
        assert r.ok and r.read_back == 20.5
        daemon.request_stop()
        await task

    run_virtual(main())
    assert (
        daemon.metrics.counters['buildingd_commands_rejected_total{device="f1-kitchen-thermostat"}']
        == 3
    )


def test_summary_after_a_working_day(tmp_path: Path) -> None:
    monday = datetime(2026, 1, 12, 6, 0, tzinfo=BERLIN)
    daemon, _ = make_daemon(tmp_path, monday)

    async def main() -> object:
        task = await run_for(daemon, 14 * 3600)
        return await task

    summary = run_virtual(main())
    lines = summary.lines()  # type: ignore[attr-defined]
    assert lines[0].split()[:3] == ["zone", "hours", "in"]
    open_office = next(z for z in summary.zones if z.zone_id == "f1-open-office")  # type: ignore[attr-defined]
    assert 13.5 < open_office.hours <= 14.01
    assert open_office.heating_kwh > 1.0  # January: the zone was heated
    assert open_office.in_band_pct is not None and open_office.in_band_pct > 80
    assert open_office.light_on_h > 0.5
    assert summary.bus_messages > 1000  # type: ignore[attr-defined]
    # The lights were switched off at night: the zone's last light command was 0.
    assert daemon.building is not None
    assert daemon.building.zones["f1-open-office"].light_level_pct == 0.0
    _ = timedelta
