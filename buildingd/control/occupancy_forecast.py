"""Occupancy prediction for one zone from its own history: the probability that someone is there in
each 15-minute slot of each weekday, learned by an exponentially weighted mean per slot. Pure: the
zone agent feeds it the fraction of each finished slot it saw occupied and asks when people will
likely arrive; holidays neither teach nor predict. Predictions carry their confidence (how many
days taught the slot); with too little, callers fall back to the schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

SLOT_S = 900  # 15 minutes
SLOTS_PER_DAY = 86400 // SLOT_S
WEIGHT = 0.5  # weight of the newest day in a slot's mean: a changed habit shows the next week
CONFIDENT_DAYS = 3  # a slot taught by fewer days than this predicts nothing on its own
ARRIVAL_PROBABILITY = 0.3  # a slot this often occupied: someone may well be there (comfort first)
WORKDAYS = frozenset(range(5))
ARRIVALS_KEPT = 8  # answers kept per profile (a profile lives one slot: usually one answer)


def slot_of(local: datetime) -> int:
    return (local.hour * 3600 + local.minute * 60 + local.second) // SLOT_S


def _day_type(weekday: int) -> str:
    return "workday" if weekday in WORKDAYS else "weekend"


@dataclass(frozen=True)
class SlotMean:
    probability: float = 0.0
    days: int = 0


@dataclass(frozen=True)
class Prediction:
    """Expected next arrival (local time, start of its slot) within the asked horizon, with the
    slot's probability and whether enough days taught it. ``arrival`` None: nobody expected."""

    arrival: datetime | None
    probability: float
    confident: bool


@dataclass(frozen=True)
class OccupancyProfile:
    """Slot means keyed by ``(weekday, slot)``, and pooled by day type (workday/weekend) so a
    new zone learns from every workday at once before each weekday has its own days."""

    by_weekday: dict[tuple[int, int], SlotMean] = field(default_factory=dict)
    by_day_type: dict[tuple[str, int], SlotMean] = field(default_factory=dict)
    # ``predict_arrival``'s answers for this profile. A profile is never changed in place (a
    # taught slot makes a new one, with an empty cache), so an answer kept here cannot go stale.
    arrivals: dict[object, tuple[int | None, float, bool]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def slot(self, weekday: int, slot: int) -> SlotMean:
        """The weekday's own mean once confident, else the day type's pooled mean."""
        own = self.by_weekday.get((weekday, slot), SlotMean())
        if own.days >= CONFIDENT_DAYS:
            return own
        return self.by_day_type.get((_day_type(weekday), slot), SlotMean())


def _blend(mean: SlotMean, fraction: float) -> SlotMean:
    if mean.days == 0:
        return SlotMean(fraction, 1)
    return SlotMean((1 - WEIGHT) * mean.probability + WEIGHT * fraction, mean.days + 1)


def observe(
    profile: OccupancyProfile, day: date, slot: int, fraction: float, holidays: frozenset[date]
) -> OccupancyProfile:
    """Teach one finished slot: ``fraction`` of it was seen occupied (0..1). Holidays and
    nonsense (outside 0..1, NaN) teach nothing."""
    if day in holidays or not math.isfinite(fraction) or not 0 <= fraction <= 1:
        return profile
    if not 0 <= slot < SLOTS_PER_DAY:
        return profile
    weekday = day.weekday()
    own_key, type_key = (weekday, slot), (_day_type(weekday), slot)
    return OccupancyProfile(
        by_weekday={
            **profile.by_weekday,
            own_key: _blend(profile.by_weekday.get(own_key, SlotMean()), fraction),
        },
        by_day_type={
            **profile.by_day_type,
            type_key: _blend(profile.by_day_type.get(type_key, SlotMean()), fraction),
        },
    )


def predict_arrival(
    profile: OccupancyProfile, local_now: datetime, horizon_s: float, holidays: frozenset[date]
) -> Prediction:
    """The first slot from now within ``horizon_s`` where someone is usually there (probability
    at least ``ARRIVAL_PROBABILITY``). Unconfident slots never predict an arrival; ``confident``
    says whether every slot looked at was taught by enough days (so "nobody expected" can be
    trusted)."""
    start = local_now.replace(minute=(local_now.minute // 15) * 15, second=0, microsecond=0)
    # The answer depends only on the wall-clock slot now is in (not on the time zone: dates,
    # weekdays and slots are read off the wall clock), the horizon and the holidays.
    key = (start.replace(tzinfo=None, fold=0), horizon_s, holidays)
    found = profile.arrivals.get(key)
    if found is None:
        if len(profile.arrivals) >= ARRIVALS_KEPT:
            profile.arrivals.clear()
        found = profile.arrivals[key] = _first_arrival(profile, start, horizon_s, holidays)
    step, probability, confident = found
    if step is None:
        return Prediction(None, 0.0, confident)
    at = start + timedelta(seconds=step * SLOT_S)
    return Prediction(max(at, local_now), probability, True)


def _first_arrival(
    profile: OccupancyProfile, start: datetime, horizon_s: float, holidays: frozenset[date]
) -> tuple[int | None, float, bool]:
    """(slots from ``start`` to the first likely arrival or None, its probability, confident)."""
    confident = True
    steps = max(1, math.ceil(horizon_s / SLOT_S))
    for step in range(steps + 1):
        at = start + timedelta(seconds=step * SLOT_S)
        if at.date() in holidays:
            continue
        mean = profile.slot(at.weekday(), slot_of(at))
        if mean.days < CONFIDENT_DAYS:
            confident = False
            continue
        if mean.probability >= ARRIVAL_PROBABILITY:
            return step, mean.probability, True
    return None, 0.0, confident
