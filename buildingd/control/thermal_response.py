"""Learned thermal response of one zone: how fast it warms with heating at full output, cools with
cooling at full output and drifts with neither, identified online by recursive least squares with
forgetting. Pure: samples in, parameters out, and the times derived from them (optimal start,
coasting). No clock, no I/O; the zone agent feeds it and persists it.

Each regime is a first-order (single RC node) model of the room, linear in its parameters:

    dT/dt [K/h] = gain_k_per_h + loss_per_h * (T_outdoor - T_zone)

``gain`` is what the terminal unit (or, drifting, the internal and solar gains) adds, ``loss`` is
1/(R·C) of the envelope. Without an outdoor sensor the second regressor is zero and the model
reduces to a constant slope, the moving-average slope of the Modelica Buildings Library's
``Controls.OBC.Utilities.OptimalStart`` block (Zhang, Blum, Grahovac et al. 2021), learned the
same way. Estimation: RLS with exponential forgetting (Ljung, *System Identification*, 2nd ed.,
§11.2), bounded covariance against wind-up, residual gating against outliers (an open window, a
failed sensor, a holiday without HVAC), and parameters clamped to physical bounds so one bad day
never makes the model jump.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum

MAX_START_S = 3 * 3600.0  # G36 5.1.20.2: optimal start begins at most 3 h before occupancy
FORGETTING = 0.97  # per accepted sample; with 5-minute samples, memory of ~3 warm-ups
MIN_SAMPLES = 6  # accepted samples before the learned model replaces the policy's default
MAX_RATE_K_PER_H = 20.0  # a room changing faster is a sensor fault, not physics
P_INITIAL = 100.0  # prior covariance: the defaults are a rough guess, quickly overruled
P_MAX = 1000.0  # covariance cap (anti-wind-up while a regressor carries no information)
OUTLIER_SIGMAS = 4.0
OUTLIER_FLOOR_K_PER_H = 1.0  # residuals below this are never outliers, however tight the fit
# This many outliers in a row are no longer outliers but a changed room (a retrofit, a new
# terminal unit): the covariance is re-opened and the model re-learns from there.
STEP_CHANGE_SAMPLES = 8


class Regime(StrEnum):
    HEATING = "heating"  # terminal unit heating at full output (warm-up, recovery)
    COOLING = "cooling"  # cooling at full output (cool-down)
    FREE = "free"  # neither: the zone drifts (coasting, setback)


# Prior parameters (gain K/h, loss 1/h) and their physical bounds, per regime. The priors are a
# light office zone: ~2 K/h warm-up, a time constant of ~20 h.
PRIOR: dict[Regime, tuple[float, float]] = {
    Regime.HEATING: (2.0, 0.05),
    Regime.COOLING: (-2.0, 0.05),
    Regime.FREE: (0.0, 0.05),
}
GAIN_BOUNDS: dict[Regime, tuple[float, float]] = {
    Regime.HEATING: (0.05, MAX_RATE_K_PER_H),
    Regime.COOLING: (-MAX_RATE_K_PER_H, -0.05),
    Regime.FREE: (-5.0, 5.0),
}
LOSS_BOUNDS = (0.0, 2.0)


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(bounds[1], max(bounds[0], value))


@dataclass(frozen=True)
class RegimeModel:
    """One regime's estimate (gain K/h, loss 1/h), covariance (2x2, row-major) and fit
    statistics. The estimate itself is unconstrained (clamping inside the recursion would bias
    it); what the model answers with is clamped to physical bounds."""

    regime: Regime
    estimate: tuple[float, float]
    covariance: tuple[float, float, float, float] = (P_INITIAL, 0.0, 0.0, P_INITIAL)
    samples: int = 0  # accepted
    rejected: int = 0
    rejected_in_row: int = 0
    residual_var: float = 1.0  # (K/h)^2, exponentially weighted over accepted samples

    @property
    def learned(self) -> bool:
        return self.samples >= MIN_SAMPLES

    @property
    def gain_k_per_h(self) -> float:
        return _clamp(self.estimate[0], GAIN_BOUNDS[self.regime])

    @property
    def loss_per_h(self) -> float:
        return _clamp(self.estimate[1], LOSS_BOUNDS)

    def rate_k_per_h(self, zone_c: float, outdoor_c: float | None) -> float:
        drive = 0.0 if outdoor_c is None else outdoor_c - zone_c
        return self.gain_k_per_h + self.loss_per_h * drive


def prior(regime: Regime) -> RegimeModel:
    return RegimeModel(regime, PRIOR[regime])


def constant_rate(regime: Regime, rate_k_per_h: float) -> RegimeModel:
    """A trusted constant rate (no envelope term) for ``regime``, clamped to its bounds: what
    whole mornings measured, standing in for a regime its windows have not taught yet."""
    estimate = (_clamp(rate_k_per_h, GAIN_BOUNDS[regime]), 0.0)
    return RegimeModel(regime, estimate, samples=MIN_SAMPLES)


@dataclass(frozen=True)
class ZoneResponse:
    """A zone's learned response in every regime."""

    models: dict[Regime, RegimeModel] = field(
        default_factory=lambda: {regime: prior(regime) for regime in Regime}
    )

    def model(self, regime: Regime) -> RegimeModel:
        return self.models.get(regime) or prior(regime)


def update(
    response: ZoneResponse,
    regime: Regime,
    rate_k_per_h: float,
    zone_c: float,
    outdoor_c: float | None,
) -> tuple[ZoneResponse, bool]:
    """Take one observed rate of change in ``regime``. Returns the new response and whether the
    sample was accepted (a rejected sample leaves the parameters as they were)."""
    model = response.model(regime)
    values = (rate_k_per_h, zone_c, 0.0 if outdoor_c is None else outdoor_c)
    if not all(math.isfinite(v) for v in values) or abs(rate_k_per_h) > MAX_RATE_K_PER_H:
        rejected = replace(model, rejected=model.rejected + 1)  # not physics: not a step either
        return ZoneResponse({**response.models, regime: rejected}), False
    x0, x1 = 1.0, (0.0 if outdoor_c is None else outdoor_c - zone_c)
    error = rate_k_per_h - (model.estimate[0] + model.estimate[1] * x1)
    gate = max(OUTLIER_FLOOR_K_PER_H, OUTLIER_SIGMAS * math.sqrt(model.residual_var))
    if model.learned and abs(error) > gate:
        if model.rejected_in_row + 1 < STEP_CHANGE_SAMPLES:
            rejected = replace(
                model, rejected=model.rejected + 1, rejected_in_row=model.rejected_in_row + 1
            )
            return ZoneResponse({**response.models, regime: rejected}), False
        # A persistent change: forget the old fit's confidence, keep its parameters as a start.
        model = replace(
            model, covariance=(P_INITIAL, 0.0, 0.0, P_INITIAL), residual_var=error * error
        )
    p00, p01, p10, p11 = model.covariance
    # Gain vector k = P x / (lambda + x' P x); P <- (P - k x' P) / lambda.
    px0, px1 = p00 * x0 + p01 * x1, p10 * x0 + p11 * x1
    denom = FORGETTING + x0 * px0 + x1 * px1
    k0, k1 = px0 / denom, px1 / denom
    estimate = (model.estimate[0] + k0 * error, model.estimate[1] + k1 * error)
    # x' P is (px0, px1) since P is symmetric.
    n00 = (p00 - k0 * px0) / FORGETTING
    n01 = (p01 - k0 * px1) / FORGETTING
    n11 = (p11 - k1 * px1) / FORGETTING
    n00, n11 = min(n00, P_MAX), min(n11, P_MAX)
    n01 = _clamp(n01, (-math.sqrt(n00 * n11), math.sqrt(n00 * n11)))  # keep P positive
    residual_var = 0.9 * model.residual_var + 0.1 * error * error
    updated = RegimeModel(
        regime,
        estimate,
        covariance=(n00, n01, n01, n11),
        samples=model.samples + 1,
        rejected=model.rejected,
        residual_var=residual_var,
    )
    return ZoneResponse({**response.models, regime: updated}), True


def time_to_reach_s(
    model: RegimeModel, from_c: float, to_c: float, outdoor_c: float | None
) -> float:
    """Seconds the zone takes from ``from_c`` to ``to_c`` under ``model``; 0 when already there,
    ``math.inf`` when the model never gets there (its equilibrium is short of the target)."""
    gap = to_c - from_c
    if gap == 0:
        return 0.0
    direction = 1.0 if gap > 0 else -1.0
    loss = model.loss_per_h if outdoor_c is not None else 0.0
    if loss > 1e-4 and outdoor_c is not None:
        # Exponential approach to T_eq = T_out + gain / loss.
        equilibrium = outdoor_c + model.gain_k_per_h / loss
        if (equilibrium - to_c) * direction <= 0:
            return math.inf
        hours = math.log((equilibrium - from_c) / (equilibrium - to_c)) / loss
    else:
        rate = model.gain_k_per_h
        if rate * direction <= 0:
            return math.inf
        hours = gap / rate
    return max(0.0, hours * 3600.0)


def start_lead_s(
    response: ZoneResponse,
    zone_c: float,
    heating_c: float,
    cooling_c: float,
    outdoor_c: float | None,
    default_s: float,
    max_s: float = MAX_START_S,
) -> float:
    """How long before occupancy to start so that the zone is inside [heating_c, cooling_c] at
    the start: the learned warm-up or cool-down time, or ``default_s`` until the regime has been
    learned; always within [0, max_s]."""
    if heating_c <= zone_c <= cooling_c:
        return 0.0
    regime, target = (
        (Regime.HEATING, heating_c) if zone_c < heating_c else (Regime.COOLING, cooling_c)
    )
    model = response.model(regime)
    needed_s = time_to_reach_s(model, zone_c, target, outdoor_c)
    if not model.learned:
        # The policy's default until learned, but not longer than the prior rate says the gap
        # needs: a zone just outside its band on a summer morning does not need a whole hour.
        return _clamp(min(default_s, needed_s), (0.0, max_s))
    return _clamp(needed_s, (0.0, max_s))


def coast_s(
    response: ZoneResponse,
    zone_c: float,
    heating_c: float,
    cooling_c: float,
    outdoor_c: float | None,
) -> float:
    """How long the zone, with no heating or cooling, stays inside [heating_c, cooling_c]: the
    time its learned drift takes to reach the nearer edge it is heading for. 0 when outside the
    band or not learned yet (no early setback on a guess); ``math.inf`` when it never leaves."""
    model = response.model(Regime.FREE)
    if not model.learned or not heating_c <= zone_c <= cooling_c:
        return 0.0
    rate = model.rate_k_per_h(zone_c, outdoor_c)
    edge = heating_c if rate < 0 else cooling_c
    return time_to_reach_s(model, zone_c, edge, outdoor_c)


def slope_k_per_h(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope (K/h) of ``(t_s, temperature_c)`` samples; None with fewer than three
    samples or no time span. A window's slope, not a two-point difference, so sensor
    quantisation (0.1 K) does not dominate."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_y = sum(y for _, y in samples) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in samples)
    if var_t <= 0:
        return None
    cov = sum((t - mean_t) * (y - mean_y) for t, y in samples)
    return cov / var_t * 3600.0
