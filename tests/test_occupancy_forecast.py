"""Occupancy prediction on known weekly patterns: arrival times learned, confidence reported,
holidays and nonsense ignored."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from buildingd.control.occupancy_forecast import (
    CONFIDENT_DAYS,
    SLOTS_PER_DAY,
    OccupancyProfile,
    SlotMean,
    observe,
    predict_arrival,
    slot_of,
)

TZ = ZoneInfo("Europe/Berlin")
NO_HOLIDAYS: frozenset[date] = frozenset()
MONDAY = date(2027, 1, 4)


def teach_days(
    profile: OccupancyProfile,
    days: list[date],
    occupied: tuple[int, int],
    holidays: frozenset[date] = NO_HOLIDAYS,
) -> OccupancyProfile:
    """Each day: occupied from slot ``occupied[0]`` to ``occupied[1]`` (exclusive)."""
    for day in days:
        for slot in range(SLOTS_PER_DAY):
            fraction = 1.0 if occupied[0] <= slot < occupied[1] else 0.0
            profile = observe(profile, day, slot, fraction, holidays)
    return profile


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=TZ)


def workdays(weeks: int) -> list[date]:
    return [MONDAY + timedelta(days=7 * w + d) for w in range(weeks) for d in range(5)]


def test_learns_the_usual_arrival_within_a_week() -> None:
    # People arrive at 08:30 (slot 34) and leave at 17:00 (slot 68), every workday.
    profile = teach_days(OccupancyProfile(), workdays(1), (34, 68))
    next_monday = MONDAY + timedelta(days=7)
    prediction = predict_arrival(profile, at(next_monday, 6, 0), 3 * 3600, NO_HOLIDAYS)
    assert prediction.confident
    assert prediction.arrival == at(next_monday, 8, 30)
    # Not within the next hour from 06:00.
    assert predict_arrival(profile, at(next_monday, 6, 0), 3600, NO_HOLIDAYS).arrival is None


def test_too_little_history_is_not_confident() -> None:
    profile = teach_days(OccupancyProfile(), workdays(1)[: CONFIDENT_DAYS - 1], (34, 68))
    prediction = predict_arrival(profile, at(MONDAY + timedelta(days=7), 6), 3 * 3600, NO_HOLIDAYS)
    assert prediction.arrival is None
    assert not prediction.confident


def test_usually_empty_meeting_room_is_confidently_empty_in_the_morning() -> None:
    # Used 14:00-16:00 only.
    profile = teach_days(OccupancyProfile(), workdays(1), (56, 64))
    prediction = predict_arrival(profile, at(MONDAY + timedelta(days=7), 8), 2 * 3600, NO_HOLIDAYS)
    assert prediction.arrival is None
    assert prediction.confident
    later = predict_arrival(profile, at(MONDAY + timedelta(days=7), 13), 2 * 3600, NO_HOLIDAYS)
    assert later.arrival == at(MONDAY + timedelta(days=7), 14)


def test_weekday_specific_habit_overrides_the_pooled_workday_mean() -> None:
    # Tuesdays busy from 07:00; other workdays from 10:00; three weeks.
    days = workdays(3)
    tuesdays = [d for d in days if d.weekday() == 1]
    others = [d for d in days if d.weekday() != 1]
    profile = teach_days(OccupancyProfile(), others, (40, 68))
    profile = teach_days(profile, tuesdays, (28, 68))
    tuesday = MONDAY + timedelta(days=22)
    assert predict_arrival(profile, at(tuesday, 6), 3 * 3600, NO_HOLIDAYS).arrival == at(tuesday, 7)
    wednesday = tuesday + timedelta(days=1)
    assert predict_arrival(profile, at(wednesday, 6), 3 * 3600, NO_HOLIDAYS).arrival is None
    assert predict_arrival(profile, at(wednesday, 9), 3 * 3600, NO_HOLIDAYS).arrival == at(
        wednesday, 10
    )


def test_holidays_teach_nothing_and_predict_nothing() -> None:
    holiday = MONDAY + timedelta(days=2)
    profile = teach_days(OccupancyProfile(), workdays(1), (34, 68), frozenset({holiday}))
    # The holiday (empty all day) did not lower the workday means.
    wednesday = MONDAY + timedelta(days=9)
    assert (wednesday.weekday(), 40) not in profile.by_weekday  # no Wednesday taught anything
    assert profile.slot(wednesday.weekday(), 40) == SlotMean(1.0, 4)  # pooled: four workdays
    next_holiday = frozenset({wednesday})
    assert predict_arrival(profile, at(wednesday, 6), 4 * 3600, next_holiday).arrival is None


def test_a_changed_habit_shows_within_a_week() -> None:
    profile = teach_days(OccupancyProfile(), workdays(2), (34, 68))  # 08:30
    third_week = [d + timedelta(days=14) for d in workdays(1)]
    profile = teach_days(profile, third_week, (28, 68))  # now 07:00
    monday = MONDAY + timedelta(days=21)
    assert predict_arrival(profile, at(monday, 6), 3 * 3600, NO_HOLIDAYS).arrival == at(monday, 7)


@settings(max_examples=200, deadline=None)
@given(
    observations=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=30),
            st.integers(min_value=-5, max_value=SLOTS_PER_DAY + 5),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        max_size=80,
    ),
    hour=st.integers(min_value=0, max_value=23),
    horizon_s=st.floats(min_value=0, max_value=86400),
)
def test_probabilities_stay_in_range_whatever_is_observed(
    observations: list[tuple[int, int, float]], hour: int, horizon_s: float
) -> None:
    profile = OccupancyProfile()
    for day_offset, slot, fraction in observations:
        profile = observe(profile, MONDAY + timedelta(days=day_offset), slot, fraction, NO_HOLIDAYS)
    for mean in [*profile.by_weekday.values(), *profile.by_day_type.values()]:
        assert 0.0 <= mean.probability <= 1.0
    now = at(MONDAY + timedelta(days=31), hour)
    prediction = predict_arrival(profile, now, horizon_s, NO_HOLIDAYS)
    if prediction.arrival is not None:
        assert now <= prediction.arrival <= now + timedelta(seconds=horizon_s + 900)
        assert prediction.confident


def test_slot_of() -> None:
    assert slot_of(at(MONDAY, 0, 0)) == 0
    assert slot_of(at(MONDAY, 8, 29)) == 33
    assert slot_of(at(MONDAY, 23, 59)) == SLOTS_PER_DAY - 1
