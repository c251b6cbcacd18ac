"""What the decision path keeps between decisions gives the answers it would compute afresh: the
arrival forecast kept with its occupancy profile, the zone's inputs kept until a reading comes in,
and the cheap copy of frozen state. A zone decides on a burst of readings as a whole."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildingd.agents.bus import Envelope, InProcessBus, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import ZONE_LEARNING_TOPIC, ReadingMsg
from buildingd.agents.zone import ZoneAgent
from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.control.frozen import replace
from buildingd.control.occupancy_forecast import (
    ARRIVALS_KEPT,
    SLOTS_PER_DAY,
    OccupancyProfile,
    observe,
    predict_arrival,
)
from buildingd.control.zone import ZoneInputs, ZoneState
from buildingd.control.zone_learning import ZoneLearning
from buildingd.drivers.base import DriverContext
from buildingd.points import PointKind, Quality
from tests.conftest import REPO, until

BERLIN = ZoneInfo("Europe/Berlin")
NONE: frozenset[date] = frozenset()
MONDAY = date(2027, 1, 4)


def taught(weeks: int, arrive_slot: int = 34, leave_slot: int = 68) -> OccupancyProfile:
    """Every workday of ``weeks`` weeks: occupied from 08:30 to 17:00 (slots 34 to 68)."""
    profile = OccupancyProfile()
    for day in (MONDAY + timedelta(days=7 * w + d) for w in range(weeks) for d in range(5)):
        for slot in range(SLOTS_PER_DAY):
            fraction = 1.0 if arrive_slot <= slot < leave_slot else 0.0
            profile = observe(profile, day, slot, fraction, NONE)
    return profile


def fresh(profile: OccupancyProfile) -> OccupancyProfile:
    """The same history in a profile that has answered nothing yet."""
    return OccupancyProfile(dict(profile.by_weekday), dict(profile.by_day_type))


def test_new_history_is_not_answered_from_the_old_profiles_forecast() -> None:
    monday = MONDAY + timedelta(days=28)
    six = datetime(monday.year, monday.month, monday.day, 6, 0, tzinfo=BERLIN)
    early = taught(3, arrive_slot=40)  # people came at 10:00: nobody before 09:00
    first = predict_arrival(early, six, 3 * 3600, NONE)
    assert first.arrival is None and first.confident
    # One Monday with people from 08:30; the answer at the same moment changes at once.
    later = early
    for slot in range(SLOTS_PER_DAY):
        later = observe(later, MONDAY + timedelta(days=21), slot, float(34 <= slot < 68), NONE)
    second = predict_arrival(later, six, 3 * 3600, NONE)
    assert second.confident
    assert second.arrival == datetime(monday.year, monday.month, monday.day, 8, 30, tzinfo=BERLIN)
    # The older profile still answers for its own history.
    assert predict_arrival(early, six, 3 * 3600, NONE) == first


def test_a_new_holiday_changes_the_answer_of_the_same_profile() -> None:
    profile = taught(3)
    monday = MONDAY + timedelta(days=28)
    six = datetime(monday.year, monday.month, monday.day, 6, 0, tzinfo=BERLIN)
    assert predict_arrival(profile, six, 3 * 3600, NONE).arrival is not None
    assert predict_arrival(profile, six, 3 * 3600, frozenset({monday})).arrival is None


def test_each_moment_in_an_occupied_slot_gets_its_own_now() -> None:
    profile = taught(3)
    monday = MONDAY + timedelta(days=28)
    for minute in (31, 35, 44):
        now = datetime(monday.year, monday.month, monday.day, 8, minute, tzinfo=BERLIN)
        assert predict_arrival(profile, now, 3600, NONE).arrival == now


def test_the_same_instant_in_another_time_zone_is_read_off_its_own_wall_clock() -> None:
    profile = taught(3)
    monday = MONDAY + timedelta(days=28)
    berlin = datetime(monday.year, monday.month, monday.day, 8, 0, tzinfo=BERLIN)
    utc = berlin.astimezone(UTC)  # 07:00 on the wall: the arrival is 90 minutes away, not 30
    assert predict_arrival(profile, berlin, 3600, NONE).arrival == berlin + timedelta(minutes=30)
    assert predict_arrival(profile, utc, 3600, NONE).arrival is None
    assert predict_arrival(profile, utc, 2 * 3600, NONE).arrival == utc + timedelta(minutes=90)


PROFILE = taught(3)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.datetimes(datetime(2027, 1, 1), datetime(2027, 12, 31)),
            st.sampled_from([BERLIN, UTC, ZoneInfo("America/New_York")]),
            st.sampled_from([900.0, 3600.0, 3 * 3600.0, 12 * 3600.0]),
            st.sampled_from([NONE, frozenset({date(2027, 2, 1)}), frozenset({date(2027, 3, 29)})]),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_kept_answers_equal_answers_computed_afresh(
    asks: list[tuple[datetime, ZoneInfo, float, frozenset[date]]],
) -> None:
    for naive, tz, horizon_s, holidays in asks:
        now = naive.replace(tzinfo=tz)
        kept = predict_arrival(PROFILE, now, horizon_s, holidays)
        assert kept == predict_arrival(fresh(PROFILE), now, horizon_s, holidays)
        assert len(PROFILE.arrivals) <= ARRIVALS_KEPT


@dataclass(frozen=True)
class _Checked:
    value: float

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("negative")


@dataclass(frozen=True)
class _WithDerived:
    value: float
    derived: list[float] = field(default_factory=list, init=False)


def test_frozen_replace_is_dataclasses_replace() -> None:
    state = ZoneState(light_level_pct=40.0)
    assert replace(state, light_level_pct=0.0) == dataclasses.replace(state, light_level_pct=0.0)
    assert replace(state, light_level_pct=0.0).light_level_pct == 0.0
    assert state.light_level_pct == 40.0  # the original is untouched
    learning = ZoneLearning(start_bias_s=60.0)
    assert replace(learning, last_s=5.0) == dataclasses.replace(learning, last_s=5.0)
    with pytest.raises(TypeError):
        replace(state, no_such_field=1)
    # A class that checks itself is still checked; a field __init__ does not set is reset.
    with pytest.raises(ValueError, match="negative"):
        replace(_Checked(1.0), value=-1.0)
    derived = _WithDerived(1.0)
    derived.derived.append(2.0)
    assert replace(derived, value=3.0).derived == []


def reading(kind: PointKind, device: str, point: str, value: float, quality: Quality) -> object:
    return ReadingMsg(
        device_id=device, point_id=point, zone_id="f1-meeting", kind=kind, unit="",
        value=value, quality=quality, timestamp=datetime(2027, 1, 11, 9, 0, tzinfo=UTC),
    ).envelope(Performative.INFORM, device, "readings/f1-meeting")  # fmt: skip


def meeting_room() -> ZoneAgent:
    clock = ScaledClock(datetime(2027, 1, 11, 9, 0, tzinfo=UTC), 1.0)
    ctx = AgentContext(
        bus=InProcessBus(), clock=clock, site=load_site(REPO), drivers=DriverContext(clock=clock)
    )
    return ZoneAgent("f1-meeting", ctx)


def test_zone_inputs_follow_every_reading() -> None:
    zone = meeting_room()
    assert zone.inputs().temperature_c is None
    steps = [
        (PointKind.TEMPERATURE, "f1-meeting-thermostat", "temperature", 20.5, Quality.GOOD),
        (PointKind.OCCUPANCY, "f1-meeting-presence", "occupancy", 1.0, Quality.GOOD),
        (PointKind.TEMPERATURE, "f1-meeting-thermostat", "temperature", 21.0, Quality.GOOD),
        (PointKind.OCCUPANCY, "f1-meeting-presence", "occupancy", 0.0, Quality.GOOD),
        (PointKind.TEMPERATURE, "f1-meeting-thermostat", "temperature", 21.0, Quality.STALE),
    ]
    expected = [(20.5, None), (20.5, True), (21.0, True), (21.0, False), (None, False)]
    for (kind, device, point, value, quality), (temperature_c, occupied) in zip(
        steps, expected, strict=True
    ):
        zone.inputs()  # asked before the reading: what it keeps must not outlive the reading
        zone._handle(reading(kind, device, point, value, quality))  # type: ignore[arg-type]
        inputs = zone.inputs()
        assert (inputs.temperature_c, inputs.occupied) == (temperature_c, occupied)


async def test_a_zone_decides_on_a_devices_whole_poll() -> None:
    zone = meeting_room()
    seen: list[ZoneInputs] = []
    decide = zone.control

    async def counted(now_s: float) -> None:
        seen.append(zone.inputs())
        await decide(now_s)

    zone.control = counted  # type: ignore[method-assign]
    # One poll of the thermostat and the presence sensor, waiting together in the inbox.
    for args in (
        (PointKind.TEMPERATURE, "f1-meeting-thermostat", "temperature", 21.0, Quality.GOOD),
        (PointKind.OCCUPANCY, "f1-meeting-thermostat", "occupancy", 1.0, Quality.GOOD),
        (PointKind.OCCUPANCY, "f1-meeting-presence", "occupancy", 1.0, Quality.GOOD),
        (PointKind.ILLUMINANCE, "f1-meeting-presence", "illuminance", 80.0, Quality.GOOD),
    ):
        zone.inbox.put_nowait(reading(*args))  # type: ignore[arg-type]
    task = asyncio.create_task(zone.run(lambda: None))
    try:
        await until(lambda: seen, "the zone's first decision")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # The first decision already saw the whole poll (not the temperature alone).
    assert seen[0] == ZoneInputs(
        temperature_c=21.0, humidity_pct=None, occupied=True, illuminance_lux=80.0
    )


async def test_a_zone_commands_its_lights_before_it_saves_and_publishes_what_it_learned(
    tmp_path: Path,
) -> None:
    """The occupancy -> light path does not wait for the learning bookkeeping (a file write)."""
    zone = meeting_room()
    zone.state_dir = tmp_path
    zone.ctx.ready_s = 0.0
    order: list[str] = []
    send = zone.ctx.send

    async def recorded(env: Envelope) -> None:
        order.append(f"{env.ontology}->{env.receiver}")
        await send(env)

    zone.ctx.send = recorded  # type: ignore[method-assign]
    save = zone._save_learning_soon
    zone._save_learning_soon = lambda: (order.append("save"), save())[1]  # type: ignore[method-assign]
    for args in (
        (PointKind.TEMPERATURE, "f1-meeting-thermostat", "temperature", 21.0, Quality.GOOD),
        (PointKind.OCCUPANCY, "f1-meeting-presence", "occupancy", 1.0, Quality.GOOD),
        (PointKind.ILLUMINANCE, "f1-meeting-presence", "illuminance", 10.0, Quality.GOOD),
    ):
        zone._handle(reading(*args))  # type: ignore[arg-type]
    now = zone.ctx.clock.monotonic()
    zone._learning_saved_s = now - 2 * 3600  # the learned state is due to be written now
    await zone.control(now)
    light = next(i for i, what in enumerate(order) if what.startswith("command->device[") and
                 "light" in what)  # fmt: skip
    assert "save" in order and f"{ZONE_LEARNING_TOPIC}" in " ".join(order)
    assert light < order.index("save")
    assert light < next(i for i, what in enumerate(order) if what.endswith(ZONE_LEARNING_TOPIC))
