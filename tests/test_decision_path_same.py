"""The zone decision path keeps what did not change between decisions (the demand-response offers
while ``zone_offers``' arguments are the same values, the one-pass inputs, the schedule's answer
for the same time): its answers are the ones worked out afresh, on random sequences of readings,
decisions and demand-response shifts, and the offers are not worked out again for the same
values. (A recorded run, every envelope of 8 h of the demo site and 3 h of 30 zones with
demand-response rounds, was identical before and after: see the issue 18 note.)"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from buildingd.agents import zone as zone_module
from buildingd.agents.zone import ZoneAgent
from buildingd.config.policies import OccupiedHours, Schedule
from buildingd.control.contract_net import Offer, zone_offers
from buildingd.control.frozen import replace
from buildingd.control.schedule import _scheduled_occupied, scheduled_occupied
from buildingd.control.zone import ZoneInputs
from buildingd.points import PointKind, Quality
from tests.test_decision_caches import meeting_room, reading

# The meeting room's sensors (and a power meter of its own, so the offers follow a reading).
POINTS = [
    (PointKind.TEMPERATURE, "f1-meeting-thermostat", "temperature"),
    (PointKind.TEMPERATURE, "f1-meeting-spare", "temperature"),
    (PointKind.HUMIDITY, "f1-meeting-thermostat", "humidity"),
    (PointKind.OCCUPANCY, "f1-meeting-presence", "occupancy"),
    (PointKind.ILLUMINANCE, "f1-meeting-presence", "illuminance"),
    (PointKind.POWER, "f1-meeting-meter", "power"),
]
VALUES = {
    PointKind.TEMPERATURE: st.sampled_from([14.0, 19.5, 20.5, 21.0, 22.25, 26.0, 31.0]),
    PointKind.HUMIDITY: st.sampled_from([20.0, 45.0, 70.0]),
    PointKind.OCCUPANCY: st.sampled_from([0.0, 1.0]),
    PointKind.ILLUMINANCE: st.sampled_from([0.0, 80.0, 600.0]),
    PointKind.POWER: st.sampled_from([0.0, 350.0, 1200.0]),
}
QUALITIES = st.sampled_from([Quality.GOOD, Quality.GOOD, Quality.STALE])

step = st.one_of(
    st.tuples(st.just("reading"), st.integers(0, len(POINTS) - 1), st.data()),
    st.tuples(st.just("decide"), st.sampled_from([0.0, 10.0, 600.0, 3600.0]), st.none()),
    st.tuples(st.just("shift"), st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.none()),
)


def inputs_afresh(zone: ZoneAgent) -> ZoneInputs:
    """The zone's inputs as worked out before (one scan of the sensors per kind)."""

    def good(kind: PointKind) -> list[float]:
        return [s.value for k, s in zone.sensors.values() if k is kind and s.quality.usable]

    temps, hums = good(PointKind.TEMPERATURE), good(PointKind.HUMIDITY)
    occ, lux = good(PointKind.OCCUPANCY), good(PointKind.ILLUMINANCE)
    return ZoneInputs(
        temperature_c=statistics.median(temps) if temps else None,
        humidity_pct=statistics.median(hums) if hums else None,
        occupied=any(v >= 0.5 for v in occ) if occ else None,
        illuminance_lux=statistics.fmean(lux) if lux else None,
    )


def offers_afresh(zone: ZoneAgent) -> list[Offer]:
    limits, safety = zone.policy.negotiation, zone.policy.safety
    hvac_w, lighting_w, daylight = zone._demand()
    max_shift_k = limits.max_shift_k
    if zone.decision is not None:
        band, shift = zone.decision.band, zone.state.adjustments.dr_shift_k
        room = min(band.heating_c + shift - safety.min_c, safety.max_c - band.cooling_c - shift)
        max_shift_k = min(max_shift_k, max(0.0, room))
    return zone_offers(
        zone.zone_id, hvac_w=hvac_w, occupied=bool(inputs_afresh(zone).occupied),
        light_w=lighting_w, daylight_sufficient=daylight, max_shift_k=max_shift_k,
        max_dim_pct=limits.max_dim_pct, exempt=limits.exempt,
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=30))
async def test_what_a_decision_keeps_is_what_it_would_work_out_afresh(
    steps: list[tuple[str, Any, Any]],
) -> None:
    zone = meeting_room()
    zone.ctx.ready_s = 0.0
    now = zone.ctx.clock.monotonic()
    for what, arg, data in steps:
        if what == "reading":
            kind, device, point = POINTS[arg]
            value, quality = data.draw(VALUES[kind]), data.draw(QUALITIES)
            zone._handle(reading(kind, device, point, value, quality))  # type: ignore[arg-type]
        elif what == "shift":
            zone.set_adjustments(replace(zone.state.adjustments, dr_shift_k=arg))
        else:
            now += arg
            await zone.control(now)
        assert zone.inputs() == inputs_afresh(zone)
        assert zone.pressure_requests(now) == 0  # no terminal unit in this zone
        if zone.decision is not None:
            offers = offers_afresh(zone)
            assert zone.offers() == offers
            assert zone.flexibility() == zone_module._flexibility(offers)  # moved as it was


async def test_a_decision_with_the_same_values_keeps_the_offers(monkeypatch: Any) -> None:
    calls: list[dict[str, Any]] = []

    def counted(zone_id: str, **args: Any) -> list[Offer]:
        calls.append(args)
        return zone_offers(zone_id, **args)

    monkeypatch.setattr(zone_module, "zone_offers", counted)
    zone = meeting_room()
    zone.ctx.ready_s = 0.0
    for kind, device, point, value in (
        (PointKind.TEMPERATURE, "f1-meeting-thermostat", "temperature", 19.0),
        (PointKind.OCCUPANCY, "f1-meeting-presence", "occupancy", 1.0),
        (PointKind.POWER, "f1-meeting-meter", "power", 1200.0),
    ):
        zone._handle(reading(kind, device, point, value, Quality.GOOD))  # type: ignore[arg-type]
    now = zone.ctx.clock.monotonic()
    await zone.control(now)
    first = zone.offers()
    assert first and len(calls) == 1
    # A new decision (new state and decision objects), on the same values: the same offers.
    await zone.control(now + 10.0)
    assert zone.offers() is first and len(calls) == 1
    # The meter moves: worked out again, and different.
    zone._handle(reading(PointKind.POWER, "f1-meeting-meter", "power", 400.0, Quality.GOOD))  # type: ignore[arg-type]
    await zone.control(now + 20.0)
    assert len(calls) == 2 and zone.offers() != first


SCHEDULES = [
    Schedule(occupied_hours=[OccupiedHours(days=["mon", "tue"], start="07:00", end="19:00")]),
    Schedule(
        occupied_hours=[OccupiedHours(days=["mon"], start="10:00", end="12:00")],
        holidays=[datetime(2027, 1, 11).date()],
    ),
]


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 7 * 96), st.booleans()), max_size=40))
def test_the_schedules_kept_answer_is_its_answer(asks: list[tuple[int, int, bool]]) -> None:
    monday = datetime(2027, 1, 11, tzinfo=UTC)
    local = monday
    for schedule, quarter, same_time in asks:
        local = local if same_time else monday + timedelta(minutes=15 * quarter)
        expected = _scheduled_occupied(SCHEDULES[schedule], local)
        assert scheduled_occupied(SCHEDULES[schedule], local) is expected
