"""Nightly re-identification of a zone's thermal response: a batch least-squares fit of each regime
over the last days' window slopes (a bounded ring kept with the learned state), which replaces
the online (RLS) estimate when it explains those windows better. Pure; when it runs is a cron
expression whose fire times come from apscheduler's ``CronTrigger`` on the daemon's clock.

Why both: RLS with forgetting follows the latest windows and can be dragged off by a run of
unusual ones it could not reject (a few cold mornings with a window left open, a sensor
drifting before it failed); the batch fit weighs every kept window equally and drops outliers
by their distance from the median fit (a robust refit), so it is the better summary of days.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

from buildingd.control.recurrence import next_fire
from buildingd.control.thermal_response import (
    MAX_RATE_K_PER_H,
    MIN_SAMPLES,
    P_INITIAL,
    Regime,
    RegimeModel,
    ZoneResponse,
)

NIGHTLY_CRON = "0 2 * * *"  # 02:00 local time: no warm-up running, the day's windows all in
KEEP_WINDOWS = 96  # per regime: about a week of warm-ups, or a day of drifting
# Replaced only when the batch fit's mean squared residual over the kept windows is below this
# share of the online estimate's: a fit as good as the running one changes nothing.
BETTER_BY = 0.8
OUTLIER_MADS = 4.0  # a window this many median absolute deviations off the first fit is dropped
MIN_SPREAD_K = 1.0  # outdoor-minus-zone spread needed before the loss term is fitted


@dataclass(frozen=True)
class WindowSample:
    """One window's slope (K/h) in ``regime`` at a mean zone temperature, with the outdoor
    temperature when it was known."""

    regime: Regime
    rate_k_per_h: float
    zone_c: float
    outdoor_c: float | None = None

    @property
    def drive_k(self) -> float:
        return 0.0 if self.outdoor_c is None else self.outdoor_c - self.zone_c


@dataclass(frozen=True)
class Refit:
    """What one night's refit of one regime found: mean squared residuals (K/h)² of the online
    and the batch estimate over the kept windows, and whether the batch one replaced it."""

    regime: Regime
    windows: int
    online_mse: float
    batch_mse: float
    replaced: bool


def keep(history: tuple[WindowSample, ...], sample: WindowSample) -> tuple[WindowSample, ...]:
    """``history`` with ``sample`` added, at most ``KEEP_WINDOWS`` per regime (oldest dropped)."""
    same = [s for s in history if s.regime is sample.regime]
    if len(same) < KEEP_WINDOWS:
        return (*history, sample)
    oldest = same[0]
    kept = list(history)
    kept.remove(oldest)
    return (*kept, sample)


def next_run(after: datetime) -> datetime | None:
    """When the nightly refit runs next after ``after`` (aware, in the zone's local time)."""
    assert after.tzinfo is not None
    return next_fire(NIGHTLY_CRON, after, after.tzinfo)


def _fit(samples: list[WindowSample]) -> tuple[float, float]:
    """Least squares of ``rate = gain + loss * drive``; the loss is fitted only when the drive
    varies (else it stays 0 and the fit is the mean rate, the OptimalStart slope)."""
    n = len(samples)
    mean_x = sum(s.drive_k for s in samples) / n
    mean_y = sum(s.rate_k_per_h for s in samples) / n
    sxx = sum((s.drive_k - mean_x) ** 2 for s in samples)
    if sxx < n * MIN_SPREAD_K**2 / 4:
        return mean_y, 0.0
    sxy = sum((s.drive_k - mean_x) * (s.rate_k_per_h - mean_y) for s in samples)
    loss = sxy / sxx
    return mean_y - loss * mean_x, loss


def _mse(samples: list[WindowSample], gain: float, loss: float) -> float:
    return sum((s.rate_k_per_h - gain - loss * s.drive_k) ** 2 for s in samples) / len(samples)


def _robust_fit(samples: list[WindowSample]) -> tuple[float, float, list[WindowSample]]:
    gain, loss = _fit(samples)
    residuals = sorted(abs(s.rate_k_per_h - gain - loss * s.drive_k) for s in samples)
    mad = max(residuals[len(residuals) // 2], 0.05)
    inliers = [
        s for s in samples if abs(s.rate_k_per_h - gain - loss * s.drive_k) <= OUTLIER_MADS * mad
    ]
    if len(inliers) >= MIN_SAMPLES and len(inliers) < len(samples):
        gain, loss = _fit(inliers)
    return gain, loss, inliers


def refit(
    response: ZoneResponse, history: tuple[WindowSample, ...]
) -> tuple[ZoneResponse, tuple[Refit, ...]]:
    """Each regime with at least ``MIN_SAMPLES`` kept windows fitted in one batch; the batch
    estimate replaces the online one when its residuals over the (inlier) windows are clearly
    smaller. The replaced model keeps its sample count and starts its recursion afresh."""
    models = dict(response.models)
    found: list[Refit] = []
    for regime in Regime:
        samples = [
            s
            for s in history
            if s.regime is regime
            and math.isfinite(s.rate_k_per_h)
            and abs(s.rate_k_per_h) <= MAX_RATE_K_PER_H
        ]
        if len(samples) < MIN_SAMPLES:
            continue
        online = response.model(regime)
        gain, loss, inliers = _robust_fit(samples)
        batch = RegimeModel(regime, (gain, loss))  # clamped to physical bounds like any model
        online_mse = _mse(inliers, online.gain_k_per_h, online.loss_per_h)
        batch_mse = _mse(inliers, batch.gain_k_per_h, batch.loss_per_h)
        replaced = batch_mse < BETTER_BY * online_mse
        if replaced:
            models[regime] = replace(
                online,
                estimate=(gain, loss),
                covariance=(P_INITIAL / 10, 0.0, 0.0, P_INITIAL / 10),
                samples=max(online.samples, len(inliers)),
                rejected_in_row=0,
                residual_var=batch_mse,
            )
        found.append(Refit(regime, len(samples), online_mse, batch_mse, replaced))
    return ZoneResponse(models), tuple(found)
