"""Occupancy schedules: is a local time inside occupied hours, and when do they next start."""

from __future__ import annotations

from datetime import datetime, timedelta

from buildingd.config.policies import Schedule

# The last answer, for the same schedule and time objects: one zone decision asks three times
# (decide, its mode, learning) with the same two.
_last: tuple[Schedule, datetime, bool] | None = None


def scheduled_occupied(schedule: Schedule, local: datetime) -> bool:
    global _last
    last = _last
    if last is not None and last[0] is schedule and last[1] is local:
        return last[2]
    answer = _scheduled_occupied(schedule, local)
    _last = (schedule, local, answer)
    return answer


def _scheduled_occupied(schedule: Schedule, local: datetime) -> bool:
    if local.date() in schedule.holidays:
        return False
    t = local.time().replace(tzinfo=None)
    return any(
        local.weekday() in {d.number for d in block.days} and block.start <= t < block.end
        for block in schedule.occupied_hours
    )


def next_occupied_start(schedule: Schedule, local: datetime, horizon_s: float) -> datetime | None:
    """The first start of occupied hours after ``local`` within ``horizon_s``, or None."""
    for day in range(int(horizon_s // 86400) + 2):
        date = (local + timedelta(days=day)).date()
        if date in schedule.holidays:
            continue
        starts = sorted(
            datetime.combine(date, block.start, local.tzinfo)
            for block in schedule.occupied_hours
            if date.weekday() in {d.number for d in block.days}
        )
        for start in starts:
            if start > local and (start - local).total_seconds() <= horizon_s:
                return start
    return None


def occupied_until(schedule: Schedule, local: datetime) -> datetime | None:
    """The end of the occupied block ``local`` is in (today's), or None outside occupied hours."""
    if local.date() in schedule.holidays:
        return None
    t = local.time().replace(tzinfo=None)
    ends = [
        datetime.combine(local.date(), block.end, local.tzinfo)
        for block in schedule.occupied_hours
        if local.weekday() in {d.number for d in block.days} and block.start <= t < block.end
    ]
    return max(ends, default=None)
