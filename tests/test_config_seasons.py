"""Summer and winter modes by date (``seasons:`` in a policy): bad seasons fail `buildingd check`
with file, line and key; the season in force changes at midnight of its first day on whatever
clock asks (virtual time included), wrapping past the new year; zones run the season's bands
with cooling or heating switched off; the real daemon on virtual time crosses a boundary."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from buildingd.config.loader import load_site
from buildingd.control.seasons import in_season, season_at
from buildingd.control.zone import ZoneInputs, ZoneState, decide
from buildingd.service.cli import main
from tests.conftest import run_virtual

TZ = ZoneInfo("Europe/Berlin")
SEASONS = """    seasons:
      - {name: winter, start: "10-01", end: "04-30", mode: heating-only}
      - name: summer
        start: "05-01"
        end: "09-30"
        mode: cooling-only
        occupied: {heating_c: 22.0, cooling_c: 25.0}
"""
ANCHOR = "      action: hold               # on stop, leave actuators where they are\n"


def with_seasons(site: Path, seasons: str = SEASONS) -> Path:
    policy = site / "policies" / "office.yaml"
    text = policy.read_text()
    assert ANCHOR in text
    policy.write_text(text.replace(ANCHOR, ANCHOR + seasons, 1))
    return policy


def check_errors(site: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["check", "--site", str(site)]) == 1
    return capsys.readouterr().err


def line_of(path: Path, needle: str) -> int:
    return next(n for n, s in enumerate(path.read_text().splitlines(), 1) if needle in s)


def test_seasons_load_and_check_passes(site_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_seasons(site_copy)
    assert main(["check", "--site", str(site_copy)]) == 0, capsys.readouterr().err
    policy = load_site(site_copy).policy_for("f1-open-office")
    assert [s.name for s in policy.seasons] == ["winter", "summer"]


@pytest.mark.parametrize(
    ("old", "new", "key", "why"),
    [
        ('end: "09-30"', 'end: "13-30"', "seasons[1].end", "'13-30': no such day every year"),
        ('start: "05-01"', 'start: "02-29"', "seasons[1].start", "'02-29': no such day every year"),
        ('start: "05-01"', 'start: "5/1"', "seasons[1].start", "want MM-DD"),
        ("mode: cooling-only", "mode: summer", "seasons[1].mode", "Input should be"),
        ("mode: cooling-only", "mode: cooling-only\n        colour: red", "seasons[1].colour",
         "unknown key"),
        ('start: "05-01"', 'start: "04-15"', "seasons",
         "season 'summer' overlaps season 'winter' on 04-15"),
    ],
)  # fmt: skip
def test_bad_seasons_are_reported_at_file_line_key(
    site_copy: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, key: str, why: str
) -> None:
    policy = with_seasons(site_copy, SEASONS.replace(old, new, 1))
    err = check_errors(site_copy, capsys)
    needle = new.splitlines()[-1].strip() if key != "seasons" else "seasons:"
    line = line_of(policy, needle)
    assert f"{policy}:{line}: policies[0].{key}:" in err, err
    assert why in err


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("cooling_c: 25.0", "cooling_c: 26.0",
         "seasons: 'summer': cooling_c must not decrease from occupied to standby"),
        ("mode: heating-only}", "unoccupied: {heating_c: 10.0, cooling_c: 29.0}}",
         "seasons: 'winter': unoccupied (10.0..29.0 degC) is outside the safety band (12.0..30.0"),
    ],
)  # fmt: skip
def test_a_seasons_bands_must_nest_and_stay_inside_safety(
    site_copy: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, why: str
) -> None:
    policy = with_seasons(site_copy, SEASONS.replace(old, new))
    err = check_errors(site_copy, capsys)
    assert f"{policy}:{line_of(policy, '- id: office')}: policies[0]: {why}" in err, err


@pytest.fixture
def policy(site_copy: Path):  # type: ignore[no-untyped-def]
    with_seasons(site_copy)
    return load_site(site_copy).policy_for("f1-open-office")


def test_the_season_changes_at_midnight_of_its_first_day(policy) -> None:  # type: ignore[no-untyped-def]
    def name(*args: int) -> str | None:
        season = season_at(policy, datetime(*args, tzinfo=TZ))  # type: ignore[misc]
        return season.name if season else None

    assert name(2026, 9, 30, 23, 59) == "summer"
    assert name(2026, 10, 1, 0, 0) == "winter"
    assert name(2027, 1, 15, 12) == "winter"  # wraps past the new year
    assert name(2027, 4, 30, 23, 59) == "winter"
    assert name(2027, 5, 1, 0, 0) == "summer"
    assert name(2028, 2, 29, 12) == "winter"  # a leap day inside a season


def test_a_day_in_no_season_runs_the_policy_as_written(site_copy: Path) -> None:
    with_seasons(site_copy, SEASONS.replace('end: "09-30"', 'end: "09-15"'))
    policy = load_site(site_copy).policy_for("f1-open-office")
    gap = datetime(2026, 9, 20, 12, tzinfo=TZ)
    assert season_at(policy, gap) is None
    assert in_season(policy, None) is policy


def test_zones_run_the_seasons_bands_and_mode(policy) -> None:  # type: ignore[no-untyped-def]
    winter_day = datetime(2027, 1, 11, 10, tzinfo=TZ)  # a Monday
    summer_day = datetime(2026, 7, 13, 10, tzinfo=TZ)
    winter = in_season(policy, season_at(policy, winter_day))
    summer = in_season(policy, season_at(policy, summer_day))
    hot, cold = ZoneInputs(27.0, occupied=True), ZoneInputs(18.0, occupied=True)
    # Winter, heating only: a hot room is not cooled short of the safety band.
    d = decide(ZoneState(), hot, winter, winter_day, 0.0)
    assert d.band.heating_c == policy.comfort.occupied.heating_c
    assert d.band.cooling_c == policy.safety.max_c
    # Summer, cooling only, with its own occupied band: a cold room is not heated.
    d = decide(ZoneState(), cold, summer, summer_day, 0.0)
    assert d.band.cooling_c == 25.0
    assert d.band.heating_c == policy.safety.min_c
    # The policy as written still heats and cools.
    d = decide(ZoneState(), cold, policy, summer_day, 0.0)
    assert (d.band.heating_c, d.band.cooling_c) == (21.0, 24.0)


@pytest.mark.slow
def test_the_daemon_crosses_into_winter_on_virtual_time(
    site_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real daemon (agents, bus, simulated drivers) on virtual time from 23:30 on 30
    September: the office zones' thermostats get the summer setback (no heating) until
    midnight, the winter one (no cooling) after it."""
    from tests.test_daemon_sim import make_daemon, run_for

    with_seasons(site_copy)
    start = datetime(2026, 9, 30, 23, 30, tzinfo=TZ)
    daemon, _ = make_daemon(tmp_path, start, site_dir=site_copy)
    seen: list[tuple[float, float]] = []
    summaries: list[dict[str, object] | None] = []

    async def night() -> None:
        task = await run_for(daemon, 3600)
        building = daemon.building
        assert building is not None
        await asyncio.sleep(1200)  # 23:50
        zone = building.zones["f1-open-office"]
        seen.append((zone.heating_sp_c, zone.cooling_sp_c))
        await task
        seen.append((zone.heating_sp_c, zone.cooling_sp_c))
        # Shown with the learned state (``buildingd status``, GET /api/zones).
        summaries.append(daemon.zone_agents["f1-open-office"].learning_summary())

    with caplog.at_level(logging.INFO, logger="buildingd.agents.zone"):
        run_virtual(night())
    policy = daemon.site.policy_for("f1-open-office")
    assert seen[0] == (policy.safety.min_c, policy.comfort.unoccupied.cooling_c)
    assert seen[1] == (policy.comfort.unoccupied.heating_c, policy.safety.max_c)
    assert "zone f1-open-office: season summer -> winter" in caplog.text
    assert summaries[0] is not None and summaries[0]["season"] == "winter"
