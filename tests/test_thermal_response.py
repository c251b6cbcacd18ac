"""Learned zone response: identification on synthetic rooms with known parameters, start and coast
times against hand-worked cases, and bounds whatever the history."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildingd.control.thermal_response import (
    GAIN_BOUNDS,
    LOSS_BOUNDS,
    MAX_START_S,
    MIN_SAMPLES,
    Regime,
    RegimeModel,
    ZoneResponse,
    coast_s,
    slope_k_per_h,
    start_lead_s,
    time_to_reach_s,
    update,
)


def room_rate(gain: float, loss: float, zone_c: float, outdoor_c: float) -> float:
    return gain + loss * (outdoor_c - zone_c)


def teach(
    response: ZoneResponse,
    regime: Regime,
    gain: float,
    loss: float,
    n: int,
    rng: random.Random,
    noise: float = 0.0,
) -> ZoneResponse:
    for _ in range(n):
        zone_c = rng.uniform(14, 22)
        outdoor_c = rng.uniform(-10, 12)
        rate = room_rate(gain, loss, zone_c, outdoor_c) + rng.gauss(0, noise)
        response, _ = update(response, regime, rate, zone_c, outdoor_c)
    return response


def test_recovers_known_parameters_without_noise() -> None:
    learned = teach(ZoneResponse(), Regime.HEATING, 3.5, 0.12, 60, random.Random(1))
    model = learned.model(Regime.HEATING)
    assert model.gain_k_per_h == pytest.approx(3.5, abs=0.02)
    assert model.loss_per_h == pytest.approx(0.12, abs=0.002)
    assert model.learned


def test_recovers_known_parameters_with_noise_within_tolerance() -> None:
    # Sensor noise of 0.3 K/h on the slope (a 15-minute window of 0.1 K readings): within 10 %.
    learned = teach(ZoneResponse(), Regime.HEATING, 3.5, 0.12, 200, random.Random(2), noise=0.3)
    model = learned.model(Regime.HEATING)
    assert model.gain_k_per_h == pytest.approx(3.5, rel=0.1)
    assert model.loss_per_h == pytest.approx(0.12, abs=0.03)


def test_follows_a_step_change_of_the_room() -> None:
    rng = random.Random(3)
    before = teach(ZoneResponse(), Regime.HEATING, 3.0, 0.1, 80, rng, noise=0.1)
    # A terminal unit twice as strong: every sample is now an "outlier" of the old fit.
    after = teach(before, Regime.HEATING, 6.0, 0.1, 80, rng, noise=0.1)
    assert before.model(Regime.HEATING).gain_k_per_h == pytest.approx(3.0, rel=0.1)
    assert after.model(Regime.HEATING).gain_k_per_h == pytest.approx(6.0, rel=0.1)


def test_outliers_are_rejected_and_do_not_move_the_model() -> None:
    learned = teach(ZoneResponse(), Regime.HEATING, 3.0, 0.1, 40, random.Random(4), noise=0.1)
    before = learned.model(Regime.HEATING)
    # An open window: the room cools at 6 K/h while heating at full, twice.
    for _ in range(2):
        learned, accepted = update(learned, Regime.HEATING, -6.0, 18.0, 0.0)
        assert not accepted
    after = learned.model(Regime.HEATING)
    assert (after.gain_k_per_h, after.loss_per_h) == (before.gain_k_per_h, before.loss_per_h)
    assert after.rejected == before.rejected + 2


@pytest.mark.parametrize("rate", [math.nan, math.inf, -math.inf, 25.0, -1e9])
def test_nonsense_rates_are_refused(rate: float) -> None:
    response, accepted = update(ZoneResponse(), Regime.FREE, rate, 20.0, 5.0)
    assert not accepted
    assert response.model(Regime.FREE).samples == 0
    assert response.model(Regime.FREE).rejected == 1


def test_without_outdoor_sensor_learns_a_constant_slope() -> None:
    response = ZoneResponse()
    for _ in range(30):
        response, _ = update(response, Regime.HEATING, 2.5, 18.0, None)
    model = response.model(Regime.HEATING)
    assert model.gain_k_per_h == pytest.approx(2.5, abs=0.01)
    # 3 K at 2.5 K/h is 72 minutes.
    assert time_to_reach_s(model, 18.0, 21.0, None) == pytest.approx(72 * 60, rel=0.01)


def test_time_to_reach_hand_worked_exponential() -> None:
    # gain 4 K/h, loss 0.2 /h, outdoor 0 degC: equilibrium 20 K above outdoor = 20 degC... no: the
    # equilibrium is T_out + gain/loss = 0 + 4/0.2 = 20 degC. From 16 to 18 degC:
    # t = ln((20-16)/(20-18)) / 0.2 h = ln 2 / 0.2 h = 3.4657 h.
    model = RegimeModel(Regime.HEATING, (4.0, 0.2))
    assert time_to_reach_s(model, 16.0, 18.0, 0.0) == pytest.approx(math.log(2) / 0.2 * 3600)
    # 21 degC is above the equilibrium: never reached.
    assert time_to_reach_s(model, 16.0, 21.0, 0.0) == math.inf
    assert time_to_reach_s(model, 18.0, 18.0, 0.0) == 0.0


def test_start_lead_uses_default_until_learned_then_the_model() -> None:
    response = ZoneResponse()
    assert start_lead_s(response, 17.0, 21.0, 24.0, 0.0, default_s=3600) == 3600
    # Until learned, a zone just outside its band needs no more than the prior rate says:
    # 0.6 K above the cooling setpoint at the prior 2 K/h is 18 minutes, not the default hour.
    assert start_lead_s(response, 24.6, 21.0, 24.0, None, default_s=3600) == pytest.approx(1080)
    response = teach(response, Regime.HEATING, 4.0, 0.0, MIN_SAMPLES + 20, random.Random(5))
    # 4 K at 4 K/h with no losses: one hour.
    assert start_lead_s(response, 17.0, 21.0, 24.0, 0.0, default_s=600) == pytest.approx(
        3600, rel=0.02
    )
    # Inside the band: no lead; a hopeless gap: at most three hours (G36).
    assert start_lead_s(response, 22.0, 21.0, 24.0, 0.0, default_s=600) == 0.0
    assert start_lead_s(response, 0.0, 21.0, 24.0, 0.0, default_s=600) == MAX_START_S


def test_cool_down_lead_from_the_cooling_model() -> None:
    response = teach(ZoneResponse(), Regime.COOLING, -3.0, 0.0, 30, random.Random(6))
    # 27 -> 24 degC at 3 K/h: one hour.
    assert start_lead_s(response, 27.0, 21.0, 24.0, 30.0, default_s=0) == pytest.approx(
        3600, rel=0.02
    )


def test_coast_time_hand_worked() -> None:
    response = ZoneResponse()
    assert coast_s(response, 22.0, 21.0, 24.0, 0.0) == 0.0  # not learned: no early setback
    response = teach(response, Regime.FREE, 0.0, 0.1, 40, random.Random(7))
    # Drift towards 0 degC with loss 0.1/h: from 22 to 21 degC takes ln(22/21)/0.1 h.
    assert coast_s(response, 22.0, 21.0, 24.0, 0.0) == pytest.approx(
        math.log(22 / 21) / 0.1 * 3600, rel=0.02
    )


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([(0.0, 20.0), (900.0, 20.5), (1800.0, 21.0)], 2.0),
        ([(0.0, 20.0), (600.0, 20.0), (1200.0, 20.0)], 0.0),
        ([(0.0, 20.0), (600.0, 20.0)], None),
        ([(5.0, 20.0), (5.0, 21.0), (5.0, 22.0)], None),
    ],
)
def test_window_slope(samples: list[tuple[float, float]], expected: float | None) -> None:
    got = slope_k_per_h(samples)
    assert got == (None if expected is None else pytest.approx(expected))


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
anything = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(
        st.tuples(
            st.sampled_from(list(Regime)),
            anything,
            finite,
            st.one_of(st.none(), finite),
        ),
        max_size=60,
    ),
    zone_c=st.floats(min_value=-30, max_value=60),
    outdoor_c=st.one_of(st.none(), st.floats(min_value=-40, max_value=50)),
)
def test_model_stays_bounded_and_start_stays_in_window(
    history: list[tuple[Regime, float, float, float | None]],
    zone_c: float,
    outdoor_c: float | None,
) -> None:
    response = ZoneResponse()
    for regime, rate, zone, outdoor in history:
        response, _ = update(response, regime, rate, zone, outdoor)
    for regime in Regime:
        model = response.model(regime)
        low, high = GAIN_BOUNDS[regime]
        assert low <= model.gain_k_per_h <= high
        assert LOSS_BOUNDS[0] <= model.loss_per_h <= LOSS_BOUNDS[1]
        assert all(math.isfinite(p) for p in model.covariance)
    lead = start_lead_s(response, zone_c, 21.0, 24.0, outdoor_c, default_s=3600)
    assert 0.0 <= lead <= MAX_START_S
    assert coast_s(response, zone_c, 21.0, 24.0, outdoor_c) >= 0.0
