"""Recurring events from cron expressions (a utility's demand-response window every weekday
17:00-18:00): which occurrence is running at a given moment. Fire times come from apscheduler's
``CronTrigger``, asked for the time after any datetime we give it, so the daemon's own clock
drives them (virtual time in ``buildingd evaluate``) and a clock jump at boot changes nothing.
Pure; apscheduler is imported only where a recurring event exists."""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from functools import cache
from typing import Any


@cache
def _trigger(cron: str, zone: tzinfo) -> Any:
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger.from_crontab(cron, timezone=zone)


def check_cron(cron: str) -> str:
    """``cron`` if it is a valid five-field crontab expression; ValueError saying why if not."""
    from zoneinfo import ZoneInfo

    if len(cron.split()) != 5:
        raise ValueError(f"{cron!r}: want 5 fields (minute hour day month weekday)")
    _trigger(cron, ZoneInfo("UTC"))  # raises ValueError naming the bad field
    return cron


def running_occurrence(
    cron: str, duration_s: float, now: datetime, zone: tzinfo
) -> datetime | None:
    """The start of the occurrence of ``cron`` (local time in ``zone``) whose window of
    ``duration_s`` contains ``now`` (aware), or None when none does."""
    first = _trigger(cron, zone).get_next_fire_time(None, now - timedelta(seconds=duration_s))
    if first is None or first > now:
        return None
    # Windows longer than the period overlap: the latest start that has begun is the one.
    start: datetime = first
    while True:
        after = _trigger(cron, zone).get_next_fire_time(start, start + timedelta(seconds=1))
        if after is None or after > now:
            break
        start = after
    return start if now < start + timedelta(seconds=duration_s) else None


def next_fire(cron: str, after: datetime, zone: tzinfo) -> datetime | None:
    """The first fire time of ``cron`` (local time in ``zone``) strictly after ``after``."""
    fire: datetime | None = _trigger(cron, zone).get_next_fire_time(
        None, after + timedelta(microseconds=1)
    )
    return fire


def last_fire(cron: str, now: datetime, zone: tzinfo, within: timedelta) -> datetime | None:
    """The latest fire time of ``cron`` at or before ``now``, looking back at most ``within``."""
    fire = _trigger(cron, zone).get_next_fire_time(None, now - within)
    if fire is None or fire > now:
        return None
    latest: datetime = fire
    while (following := next_fire(cron, latest, zone)) is not None and following <= now:
        latest = following
    return latest
