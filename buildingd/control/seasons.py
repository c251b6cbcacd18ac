"""Summer and winter modes by date: which of a policy's seasons is in force at a moment, and the
policy it gives the zones then (the season's bands, heating or cooling switched off). Season
boundaries are apscheduler ``CronTrigger`` fire times (00:00 local on the season's first day and
on the day after its last), asked at the daemon's own clock, so ``evaluate`` on virtual time
crosses them like a real year does. Pure."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from buildingd.config.policies import Band, Policy, Season, SeasonMode
from buildingd.control.recurrence import last_fire, next_fire

YEAR = timedelta(days=366)


def _midnight_cron(month_day: str) -> str:
    month, day = (int(p) for p in month_day.split("-"))
    return f"0 0 {day} {month} *"


def _day_after(month_day: str) -> str:
    following = date(2001, *(int(p) for p in month_day.split("-"))) + timedelta(days=1)
    return f"{following.month:02d}-{following.day:02d}"


def in_force(season: Season, now: datetime) -> bool:
    """True when ``now`` (aware, in the policy's timezone) lies in ``season``: its first day's
    midnight has fired in the last year and its end (the next midnight after its last day)
    has not fired since."""
    zone = now.tzinfo
    assert zone is not None
    begun = last_fire(_midnight_cron(season.start), now, zone, YEAR)
    if begun is None:
        return False
    ends = next_fire(_midnight_cron(_day_after(season.end)), begun, zone)
    return ends is None or now < ends


@lru_cache(maxsize=1024)
def _season_on(seasons: tuple[Season, ...], timezone: str, day: date) -> Season | None:
    # Boundaries are at midnight: the season at noon is the season all day.
    noon = datetime.combine(day, time(12), ZoneInfo(timezone))
    return next((s for s in seasons if in_force(s, noon)), None)


def season_at(policy: Policy, local: datetime) -> Season | None:
    """The season in force at ``local`` (aware, the policy's local time), None outside all."""
    if not policy.seasons or local.tzinfo is None:
        return None
    key = getattr(local.tzinfo, "key", None)
    if key is None:  # not a ZoneInfo: no cache key, ask the triggers directly
        return next((s for s in policy.seasons if in_force(s, local)), None)
    return _season_on(tuple(policy.seasons), key, local.date())


def _band(band: Band, mode: SeasonMode, policy: Policy) -> Band:
    if mode is SeasonMode.HEATING_ONLY:
        return Band.model_construct(heating_c=band.heating_c, cooling_c=policy.safety.max_c)
    if mode is SeasonMode.COOLING_ONLY:
        return Band.model_construct(heating_c=policy.safety.min_c, cooling_c=band.cooling_c)
    return band


def in_season(policy: Policy, season: Season | None) -> Policy:
    """``policy`` as it runs in ``season``: its bands where the season gives them, cooling
    (heating-only) or heating (cooling-only) moved out to the safety band's edge. Validation
    of the policy file checked that these bands nest and lie inside the safety band."""
    if season is None:
        return policy
    comfort = policy.comfort
    bands = {
        name: _band(getattr(season, name) or getattr(comfort, name), season.mode, policy)
        for name in ("occupied", "standby", "unoccupied")
    }
    return policy.model_copy(update={"comfort": comfort.model_copy(update=bands)})
