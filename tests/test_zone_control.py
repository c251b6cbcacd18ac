"""Pure zone control on simulated time: modes, setback, vacancy timeout, daylight, humidity."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.config.policies import Policy
from buildingd.control.zone import Adjustments, ZoneInputs, ZoneMode, ZoneState, decide
from buildingd.points import PointKind

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=BERLIN)
MONDAY_23 = datetime(2026, 11, 23, 23, 0, tzinfo=BERLIN)


@pytest.fixture
def policy() -> Policy:
    return Policy.model_validate(
        {
            "id": "office",
            "zones": ["*"],
            "schedule": {
                "occupied_hours": [
                    {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "07:00", "end": "19:00"}
                ]
            },
            "comfort": {
                "occupied": {"heating_c": 21, "cooling_c": 24},
                "standby": {"heating_c": 19.5, "cooling_c": 25.5},
                "unoccupied": {"heating_c": 16, "cooling_c": 29},
                "standby_after_s": 600,
                "warmup_s": 3600,
            },
            "lighting": {
                "vacancy_timeout_s": 900,
                "daylight_target_lux": 500,
                "full_output_lux": 500,
            },
        }
    )


def test_lights_go_off_after_the_vacancy_timeout(policy: Policy) -> None:
    state = ZoneState()
    dark = ZoneInputs(temperature_c=21.0, occupied=True, illuminance_lux=0.0)
    d = decide(state, dark, policy, MONDAY_10, now_s=0.0)
    assert d.targets[PointKind.LIGHT_LEVEL] == 100.0
    vacant = ZoneInputs(temperature_c=21.0, occupied=False, illuminance_lux=500.0)
    state = d.state
    for t in range(60, 900, 60):  # still on inside the timeout
        d = decide(state, vacant, policy, MONDAY_10 + timedelta(seconds=t), now_s=float(t))
        state = d.state
        assert d.targets[PointKind.LIGHT_LEVEL] > 0, t
    d = decide(state, vacant, policy, MONDAY_10 + timedelta(seconds=901), now_s=901.0)
    assert d.targets[PointKind.LIGHT_LEVEL] == 0.0
    assert d.targets[PointKind.LIGHT_SWITCH] == 0.0


def test_daylight_dims_the_lights(policy: Policy) -> None:
    bright = ZoneInputs(temperature_c=21.0, occupied=True, illuminance_lux=300.0)
    d = decide(ZoneState(), bright, policy, MONDAY_10, now_s=0.0)
    # 300 lx of daylight, 500 lx target, 500 lx at full output: 40 %.
    assert d.targets[PointKind.LIGHT_LEVEL] == 40.0
    sunny = ZoneInputs(temperature_c=21.0, occupied=True, illuminance_lux=900.0)
    assert decide(ZoneState(), sunny, policy, MONDAY_10, 0.0).targets[PointKind.LIGHT_LEVEL] == 0


def test_unoccupied_hours_use_the_setback_band(policy: Policy) -> None:
    d = decide(ZoneState(), ZoneInputs(temperature_c=20.0, occupied=False), policy, MONDAY_23, 0.0)
    assert d.state.mode is ZoneMode.UNOCCUPIED
    assert (d.band.heating_c, d.band.cooling_c) == (16.0, 29.0)


def test_standby_after_vacancy_then_occupied_again(policy: Policy) -> None:
    state = decide(ZoneState(), ZoneInputs(21.0, occupied=True), policy, MONDAY_10, 0.0).state
    assert state.mode is ZoneMode.OCCUPIED
    d = decide(state, ZoneInputs(21.0, occupied=False), policy, MONDAY_10, 599.0)
    assert d.state.mode is ZoneMode.OCCUPIED
    d = decide(d.state, ZoneInputs(21.0, occupied=False), policy, MONDAY_10, 601.0)
    assert d.state.mode is ZoneMode.STANDBY
    assert (d.band.heating_c, d.band.cooling_c) == (19.5, 25.5)
    d = decide(d.state, ZoneInputs(21.0, occupied=True), policy, MONDAY_10, 700.0)
    assert d.state.mode is ZoneMode.OCCUPIED


def test_warmup_before_scheduled_occupancy(policy: Policy) -> None:
    early = datetime(2026, 11, 23, 6, 15, tzinfo=BERLIN)
    d = decide(ZoneState(), ZoneInputs(17.0, occupied=False), policy, early, 0.0)
    assert d.state.mode is ZoneMode.WARMUP
    assert d.band.heating_c == 21.0
    assert d.targets[PointKind.LIGHT_LEVEL] == 0.0  # nobody there yet


def test_no_temperature_means_safe_hold(policy: Policy) -> None:
    state = ZoneState(adjustments=Adjustments(dr_shift_k=2.0))
    d = decide(state, ZoneInputs(None, occupied=True), policy, MONDAY_10, 0.0)
    assert d.state.mode is ZoneMode.HOLD
    # Scheduled hours: hold the occupied band, ignoring demand-response shifts.
    assert (d.band.heating_c, d.band.cooling_c) == (21.0, 24.0)


def test_dehumidifier_hysteresis(policy: Policy) -> None:
    s = ZoneState()
    s = decide(s, ZoneInputs(21.0, humidity_pct=62.0), policy, MONDAY_10, 0).state
    assert s.dehumidifier_on
    s = decide(s, ZoneInputs(21.0, humidity_pct=57.0), policy, MONDAY_10, 10).state
    assert s.dehumidifier_on  # inside the 5 % hysteresis
    s = decide(s, ZoneInputs(21.0, humidity_pct=54.0), policy, MONDAY_10, 20).state
    assert not s.dehumidifier_on


@given(
    temp=st.one_of(st.none(), st.floats(-10, 45)),
    occupied=st.one_of(st.none(), st.booleans()),
    lux=st.one_of(st.none(), st.floats(0, 5000)),
    shift=st.floats(0, 2),
    vote=st.floats(-1.5, 1.5),
    minutes=st.integers(0, 7 * 24 * 60),
)
def test_setpoints_never_leave_the_safety_band(
    temp: float | None,
    occupied: bool | None,
    lux: float | None,
    shift: float,
    vote: float,
    minutes: int,
) -> None:
    policy = Policy.model_validate(
        {"id": "p", "zones": ["*"], "safety": {"min_c": 12, "max_c": 30}}
    )
    state = ZoneState(adjustments=Adjustments(dr_shift_k=shift, vote_offset_k=vote))
    now = MONDAY_10 + timedelta(minutes=minutes)
    d = decide(
        state, ZoneInputs(temp, occupied=occupied, illuminance_lux=lux), policy, now, minutes * 60
    )
    assert 12 <= d.targets[PointKind.HEATING_SETPOINT] < d.targets[PointKind.COOLING_SETPOINT] <= 30
    assert 0 <= d.targets[PointKind.LIGHT_LEVEL] <= 100
