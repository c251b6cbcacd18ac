"""Fault suite, an agent in a crash loop (a driver bug that fails every poll), the whole daemon
on virtual time: the supervisor gives up after its restart limit instead of looping, exactly one
break-glass alert is raised for the device, every other zone stays controlled, and a
technician's clear closes the alert. The bug is injected at our own seam (``DeviceAgent.poll``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from buildingd.agents.device import DeviceAgent
from buildingd.agents.runtime import RestartPolicy
from buildingd.coordinator.escalation import Cause
from tests.conftest import run_virtual
from tests.test_daemon_sim import make_daemon, run_for

DEVICE = "f1-reception-presence"
START = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)  # a Monday, 09:00 in Berlin


def test_a_crash_looping_agent_is_given_up_on_with_one_alert_and_control_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poll = DeviceAgent.poll
    crashes = 0

    async def buggy_poll(self: DeviceAgent) -> None:
        nonlocal crashes
        if self.device.id == DEVICE:
            crashes += 1
            raise RuntimeError("a driver bug")
        await poll(self)

    monkeypatch.setattr(DeviceAgent, "poll", buggy_poll)
    daemon, _ = make_daemon(tmp_path, START)

    async def main() -> None:
        task = await run_for(daemon, 3 * 3600)
        while daemon.metrics.counters["buildingd_agents_failed_total"] < 1:
            await daemon.clock.sleep(10)
        crashes_at_give_up = crashes
        others = {z: a.stats.seconds for z, a in daemon.zone_agents.items()}
        await daemon.clock.sleep(3600)  # an hour after the give-up
        assert crashes == crashes_at_give_up  # given up on: no more restarts, no loop
        for zone_id, agent in daemon.zone_agents.items():  # every zone still decides
            assert agent.stats.seconds > others[zone_id], zone_id
        assert daemon.coordinator is not None
        (alert,) = daemon.coordinator.incidents()
        assert alert.cause is Cause.AGENT_FAILED and alert.subject == DEVICE
        assert alert.repeats == 0  # one alert, however long it lasts
        assert daemon.coordinator.clear_alert(alert.id, "Jo")
        await daemon.coordinator.flush()
        assert daemon.coordinator.incidents() == []
        daemon.request_stop()
        await task

    run_virtual(main())
    # The first run and every restart the policy allows (5 within 300 s), then no more.
    assert crashes == RestartPolicy().max_restarts + 1
