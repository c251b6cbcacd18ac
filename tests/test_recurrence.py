"""Recurring demand-response windows from cron expressions: which occurrence is running, bad
expressions refused with file, line and key, and the coordinator opening each occurrence once on
its own clock."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from buildingd.agents.bus import Performative
from buildingd.config.policies import RecurringEvent
from buildingd.control.recurrence import check_cron, running_occurrence
from buildingd.service.cli import main
from tests.test_coordinator_logic import Coordinator, demo_site, of

BERLIN = ZoneInfo("Europe/Berlin")
WEEKDAYS_17H = "0 17 * * mon-fri"


def local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2027, 1, day, hour, minute, tzinfo=BERLIN)  # 2027-01-11 is a Monday


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (local(11, 16, 59), None),
        (local(11, 17, 0), local(11, 17, 0)),
        (local(11, 17, 59), local(11, 17, 0)),
        (local(11, 18, 0), None),  # the window's end is outside it
        (local(15, 17, 30), local(15, 17, 0)),  # Friday
        (local(16, 17, 30), None),  # Saturday
    ],
)
def test_running_occurrence_of_a_weekday_window(now: datetime, expected: datetime | None) -> None:
    assert running_occurrence(WEEKDAYS_17H, 3600, now, BERLIN) == expected


def test_windows_longer_than_the_period_give_the_latest_start() -> None:
    now = local(11, 17, 35)
    assert running_occurrence("*/10 * * * *", 3600, now, BERLIN) == local(11, 17, 30)


def test_daylight_saving_day_keeps_local_time() -> None:
    # 2027-03-28: clocks go forward at 02:00 in Berlin; 17:00 is still 17:00 local.
    sunday = datetime(2027, 3, 28, 17, 10, tzinfo=BERLIN)
    assert running_occurrence("0 17 * * *", 1800, sunday, BERLIN) == sunday.replace(minute=0)


@pytest.mark.parametrize(
    ("cron", "why"),
    [
        ("0 25 * * *", "higher than the maximum value (23)"),
        ("0 17 * *", "want 5 fields"),
        ("0 17 * * funday", 'Invalid weekday name "funday"'),
    ],
)
def test_bad_cron_is_refused_with_the_reason(cron: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        check_cron(cron)


def test_check_points_at_the_bad_cron(site_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = site_copy / "policies" / "office.yaml"
    text = policy.read_text()
    assert "  recurring: []\n" in text
    text = text.replace(
        "  recurring: []\n",
        '  recurring:\n    - {cron: "0 25 * * mon-fri", duration_s: 3600, target_w: 1500}\n',
        1,
    )
    policy.write_text(text)
    line = next(n for n, s in enumerate(text.splitlines(), 1) if "0 25 * * mon-fri" in s)
    assert main(["check", "--site", str(site_copy)]) == 1
    err = capsys.readouterr().err
    assert f"{policy}:{line}: demand_response.recurring[0].cron:" in err
    assert "higher than the maximum value (23)" in err


def test_coordinator_opens_each_occurrence_once() -> None:
    site = demo_site()
    recurring = [RecurringEvent(cron=WEEKDAYS_17H, duration_s=3600, target_w=800)]
    site = replace(
        site, demand_response=site.demand_response.model_copy(update={"recurring": recurring})
    )
    monday_1650 = local(11, 16, 50).astimezone(UTC)
    coordinator = Coordinator(site=site, start=monday_1650)
    coordinator.tick()
    assert not of(coordinator.sent(), Performative.CFP)  # 16:50: not yet
    coordinator.tick(11 * 60)  # 17:01
    cfps = of(coordinator.sent(), Performative.CFP)
    assert len(cfps) == 8
    assert "recurring event 1" in coordinator.agent.negotiations[cfps[0].conversation_id].reason
    coordinator.tick()
    assert not of(coordinator.sent(), Performative.CFP)  # once per occurrence
    # The next occurrence, Tuesday 17:00, opens again.
    tuesday = Coordinator(site=site, start=monday_1650 + timedelta(days=1, minutes=11))
    tuesday.tick()
    assert len(of(tuesday.sent(), Performative.CFP)) == 8
