"""Nightly re-identification: a batch fit over the kept windows corrects an online estimate that a
run of unusual windows dragged off, leaves a good one alone, recovers a two-parameter model,
runs when its cron fires on the zone's (virtual) clock, and is kept with the learned state."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from buildingd.agents import learning_file
from buildingd.config.loader import load_site
from buildingd.control.nightly_refit import KEEP_WINDOWS, WindowSample, keep, refit
from buildingd.control.thermal_response import Regime, ZoneResponse, update
from buildingd.control.zone_learning import ZoneLearning, observe

TZ = ZoneInfo("Europe/Berlin")
TRUE_GAIN_K_PER_H = 3.0


def drifted_history() -> tuple[ZoneResponse, tuple[WindowSample, ...]]:
    """60 warm-up windows of a zone that warms at 3 K/h (0.1 K/h noise), then 12 from mornings
    with a window left open (1.2 K/h): the online estimate follows the last ones."""
    rng = random.Random(7)
    rates = [rng.gauss(TRUE_GAIN_K_PER_H, 0.1) for _ in range(60)]
    rates += [rng.gauss(1.2, 0.1) for _ in range(12)]
    response, history = ZoneResponse(), ()
    for rate in rates:
        response, _ = update(response, Regime.HEATING, rate, 18.0, None)
        history = keep(history, WindowSample(Regime.HEATING, rate, 18.0))
    return response, history


def test_a_drifted_online_estimate_is_corrected_by_the_refit() -> None:
    response, history = drifted_history()
    online = response.model(Regime.HEATING).gain_k_per_h
    assert online < 2.0  # dragged off by the open-window mornings
    refitted, found = refit(response, history)
    gain = refitted.model(Regime.HEATING).gain_k_per_h
    assert gain == pytest.approx(TRUE_GAIN_K_PER_H, rel=0.05)
    (heating,) = found
    assert heating.replaced and heating.windows == 72
    assert heating.batch_mse < heating.online_mse
    # The corrected model keeps learning online from there.
    after, accepted = update(refitted, Regime.HEATING, 3.05, 18.0, None)
    assert accepted
    assert after.model(Regime.HEATING).gain_k_per_h == pytest.approx(3.0, rel=0.05)


def test_a_good_online_estimate_is_left_alone() -> None:
    rng = random.Random(3)
    response, history = ZoneResponse(), ()
    for _ in range(40):
        rate = rng.gauss(2.5, 0.1)
        response, _ = update(response, Regime.HEATING, rate, 18.0, None)
        history = keep(history, WindowSample(Regime.HEATING, rate, 18.0))
    refitted, found = refit(response, history)
    assert not found[0].replaced
    assert refitted == response


def test_too_few_windows_change_nothing() -> None:
    history = tuple(WindowSample(Regime.COOLING, -9.0, 27.0) for _ in range(3))
    assert refit(ZoneResponse(), history) == (ZoneResponse(), ())


def test_the_batch_fit_recovers_gain_and_loss_with_outdoor_temperatures() -> None:
    rng = random.Random(11)
    gain, loss = 1.5, 0.08
    history: tuple[WindowSample, ...] = ()
    for _ in range(KEEP_WINDOWS):
        zone_c, outdoor_c = rng.uniform(18, 24), rng.uniform(-5, 15)
        rate = gain + loss * (outdoor_c - zone_c) + rng.gauss(0, 0.05)
        history = keep(history, WindowSample(Regime.FREE, rate, zone_c, outdoor_c))
    refitted, found = refit(ZoneResponse(), history)
    model = refitted.model(Regime.FREE)
    assert found[0].replaced
    assert model.gain_k_per_h == pytest.approx(gain, abs=0.1)
    assert model.loss_per_h == pytest.approx(loss, abs=0.01)


def test_the_ring_of_windows_is_bounded_per_regime() -> None:
    history: tuple[WindowSample, ...] = ()
    for i in range(KEEP_WINDOWS + 10):
        history = keep(history, WindowSample(Regime.HEATING, 2.0 + i / 1000, 18.0))
    history = keep(history, WindowSample(Regime.FREE, 0.1, 21.0))
    heating = [w for w in history if w.regime is Regime.HEATING]
    assert len(heating) == KEEP_WINDOWS
    assert heating[0].rate_k_per_h == pytest.approx(2.010)  # the oldest ten were dropped
    assert len(history) == KEEP_WINDOWS + 1


def test_the_refit_runs_at_two_on_the_zones_clock_and_is_kept(
    demo_site: Path, tmp_path: Path
) -> None:
    policy = load_site(demo_site).policy_for("f1-open-office")
    response, history = drifted_history()
    learning = ZoneLearning(response=response, windows=history)
    start = datetime(2027, 1, 12, 1, 30, tzinfo=TZ)  # a Tuesday night, virtual time
    band = policy.comfort.unoccupied
    gains = []
    for step in range(13):  # 01:30 to 02:30 every 5 minutes
        local = start + timedelta(minutes=5 * step)
        learning = observe(learning, step * 300.0, local, 17.0, False, band, policy)
        gains.append(learning.response.model(Regime.HEATING).gain_k_per_h)
    assert max(gains[:6]) < 2.0  # before 02:00: the online estimate
    assert gains[6] == pytest.approx(TRUE_GAIN_K_PER_H, rel=0.05)  # 02:00: refitted
    assert learning.refit_at == datetime(2027, 1, 12, 2, 0, tzinfo=TZ)
    assert [r.replaced for r in learning.refits] == [True]
    # Kept with the learned state: a restart does not refit again before the next night.
    learning_file.save(tmp_path, "f1-open-office", learning)
    loaded = learning_file.load(tmp_path, "f1-open-office")
    assert loaded.windows == learning.windows
    assert loaded.refit_at == learning.refit_at
    drifted = replace(loaded, response=response)
    later = observe(drifted, 0.0, datetime(2027, 1, 12, 9, 0, tzinfo=TZ), 21.0, True,
                    policy.comfort.occupied, policy)  # fmt: skip
    later = observe(later, 300.0, datetime(2027, 1, 12, 9, 5, tzinfo=TZ), 21.0, True,
                    policy.comfort.occupied, policy)  # fmt: skip
    assert later.response.model(Regime.HEATING).gain_k_per_h < 2.0
    # A daemon that was off at 02:00 refits at its first decision after it.
    next_night = observe(drifted, 0.0, datetime(2027, 1, 13, 7, 0, tzinfo=TZ), 21.0, True,
                         policy.comfort.occupied, policy)  # fmt: skip
    next_night = observe(next_night, 300.0, datetime(2027, 1, 13, 7, 5, tzinfo=TZ), 21.0, True,
                         policy.comfort.occupied, policy)  # fmt: skip
    assert next_night.response.model(Regime.HEATING).gain_k_per_h == pytest.approx(3.0, rel=0.05)
