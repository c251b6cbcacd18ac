"""What one zone learns while it runs, and the outlook it gives the controller. Pure: the zone agent
calls ``observe`` at every decision with what it saw, and ``outlook`` before deciding.

It cuts the temperature history into 15-minute windows of one regime (heating or cooling at full
output, or drifting inside the band), feeds each window's slope to the thermal response model,
teaches the occupancy profile each finished 15-minute slot, and measures every morning how late
or early the zone reached its band against the scheduled start: that error corrects the next
start (a feedback term on top of the model, so a model that is slightly wrong still arrives on
time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from buildingd.config.policies import Band, Comfort, Policy
from buildingd.control.frozen import replace
from buildingd.control.nightly_refit import Refit, WindowSample, keep, next_run, refit
from buildingd.control.occupancy_forecast import (
    SLOT_S,
    OccupancyProfile,
    Prediction,
    predict_arrival,
    slot_of,
)
from buildingd.control.occupancy_forecast import (
    observe as observe_slot,
)
from buildingd.control.schedule import next_occupied_start, scheduled_occupied
from buildingd.control.thermal_response import (
    GAIN_BOUNDS,
    MAX_START_S,
    Regime,
    ZoneResponse,
    coast_s,
    constant_rate,
    slope_k_per_h,
    start_lead_s,
    time_to_reach_s,
    update,
)

WINDOW_S = 900.0  # one slope per 15 minutes of one regime
FULL_OUTPUT_GAP_K = 1.0  # terminal units run at full output this far below/above the setpoint
FREE_MARGIN_K = 0.5  # drifting: at least this far inside the band (the unit is idle)
# A zone within this of its band counts as arrived: a terminal unit with a proportional band
# (most room thermostats) settles short of its setpoint by about this much under load.
ARRIVED_TOLERANCE_K = 0.5
BIAS_WEIGHT = 0.3
MAX_BIAS_S = 3600.0
KEEP_STARTS = 28  # mornings kept for the report
# A judged morning's mean rate (from the gap when conditioning began to entering the band) is
# kept when the gap and the time were long enough to measure; the median of the last few
# stands in for a regime its 15-minute windows have not taught yet (a cool-down is often
# shorter than one window at full output).
MORNING_MIN_GAP_K = 0.5
MORNING_MIN_S = 600.0
KEEP_MORNING_RATES = 5  # per regime


@dataclass(frozen=True)
class ZoneOutlook:
    """What the zone's history says now, for ``decide``: how long it needs to reach the occupied
    and the standby band, when people will likely arrive, and how long it would coast inside
    its band with no heating or cooling."""

    occupied_lead_s: float
    standby_lead_s: float
    arrival: Prediction
    coast_s: float
    # From the standby band to the occupied band: how long before an expected arrival a vacant
    # zone must start (independent of where the zone is now, so decisions on it do not flap).
    recovery_s: float = 0.0


@dataclass(frozen=True)
class _Window:
    regime: Regime
    band: tuple[float, float]
    samples: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class _Slot:
    day: date
    slot: int
    occupied_s: float = 0.0
    seen_s: float = 0.0


@dataclass(frozen=True)
class _Morning:
    """A scheduled start being watched: when the zone entered the occupied and the standby band
    (and stayed in), so that the start is judged against whichever band it was sent to."""

    start: datetime
    entered_occupied: datetime | None = None
    entered_standby: datetime | None = None
    aim: Band | None = None  # the band the zone was driven to last before the start
    # When and where conditioning began, and towards which band (for the morning's mean rate).
    began: datetime | None = None
    began_c: float | None = None
    began_aim: Band | None = None


@dataclass(frozen=True)
class MorningRate:
    """One judged morning's mean rate (K/h) in ``regime``: the gap to the band edge when
    conditioning began over the time it took to enter the band."""

    regime: Regime
    rate_k_per_h: float


@dataclass(frozen=True)
class JudgedStart:
    """One morning's optimal start error: seconds late (+) or early (-) on ``day``."""

    day: date
    error_s: float


@dataclass(frozen=True)
class ZoneLearning:
    response: ZoneResponse = field(default_factory=ZoneResponse)
    occupancy: OccupancyProfile = field(default_factory=OccupancyProfile)
    start_bias_s: float = 0.0
    starts: tuple[JudgedStart, ...] = ()  # the latest mornings
    morning_rates: tuple[MorningRate, ...] = ()  # the latest, per regime
    # The last days' window slopes, refitted in one batch every night (``nightly_refit``), and
    # when that last ran (local time).
    windows: tuple[WindowSample, ...] = ()
    refit_at: datetime | None = None
    # Working state, not persisted: the open window, slot and morning.
    window: _Window | None = None
    slot: _Slot | None = None
    morning: _Morning | None = None
    last_s: float | None = None
    refit_due: datetime | None = None
    refits: tuple[Refit, ...] = ()  # what the last refit found


def regime_of(temperature_c: float, band: Band) -> Regime | None:
    if band.heating_c - temperature_c >= FULL_OUTPUT_GAP_K:
        return Regime.HEATING
    if temperature_c - band.cooling_c >= FULL_OUTPUT_GAP_K:
        return Regime.COOLING
    if band.heating_c + FREE_MARGIN_K <= temperature_c <= band.cooling_c - FREE_MARGIN_K:
        return Regime.FREE
    return None


def _learn_window(
    learning: ZoneLearning,
    now_s: float,
    temperature_c: float | None,
    band: Band,
    scheduled: bool,
) -> ZoneLearning:
    regime = None if temperature_c is None else regime_of(temperature_c, band)
    if scheduled and regime is not Regime.FREE:
        # Warm-up and cool-down rates are learned where optimal start uses them, before
        # occupied hours: an afternoon's sun and people make a unit at full output look weak.
        regime = None
    window = learning.window
    key = (band.heating_c, band.cooling_c)
    if regime is None or temperature_c is None:
        return replace(learning, window=None)
    if window is None or window.regime is not regime or window.band != key:
        return replace(learning, window=_Window(regime, key, ((now_s, temperature_c),)))
    samples = (*window.samples, (now_s, temperature_c))
    if now_s - samples[0][0] < WINDOW_S:
        return replace(learning, window=replace(window, samples=samples))
    response, windows = learning.response, learning.windows
    rate = slope_k_per_h(list(samples))
    if rate is not None:
        mean_c = sum(t for _, t in samples) / len(samples)
        response, _ = update(response, regime, rate, mean_c, None)
        windows = keep(windows, WindowSample(regime, rate, mean_c))
    # The next window starts where this one ended.
    return replace(
        learning,
        response=response,
        windows=windows,
        window=replace(window, samples=(samples[-1],)),
    )


def _nightly(learning: ZoneLearning, local: datetime) -> ZoneLearning:
    """The nightly re-identification, when its cron has fired since it last ran (or, the first
    time, since the zone started learning)."""
    if learning.refit_due is None:
        return replace(learning, refit_due=next_run(learning.refit_at or local))
    if local < learning.refit_due:
        return learning
    response, found = refit(learning.response, learning.windows)
    return replace(
        learning, response=response, refit_at=local, refit_due=next_run(local), refits=found
    )


def _learn_slot(
    learning: ZoneLearning,
    dt_s: float,
    local: datetime,
    occupied: bool | None,
    holidays: frozenset[date],
) -> ZoneLearning:
    here = (local.date(), slot_of(local))
    current = learning.slot
    profile = learning.occupancy
    if current is not None and (current.day, current.slot) != here:
        # A slot is taught only when it was watched for most of its length.
        if current.seen_s >= 0.5 * SLOT_S:
            fraction = current.occupied_s / current.seen_s
            profile = observe_slot(profile, current.day, current.slot, fraction, holidays)
        current = None
    if current is None:
        current = _Slot(*here)
    if occupied is not None and dt_s > 0:
        current = replace(
            current,
            seen_s=current.seen_s + dt_s,
            occupied_s=current.occupied_s + (dt_s if occupied else 0.0),
        )
    return replace(learning, occupancy=profile, slot=current)


def _entered(
    entered: datetime | None, local: datetime, temperature_c: float | None, band: Band
) -> datetime | None:
    tolerance = ARRIVED_TOLERANCE_K
    inside = (
        temperature_c is not None
        and band.heating_c - tolerance <= temperature_c <= band.cooling_c + tolerance
    )
    if not inside:
        return None
    return entered or local


def _still_needed_s(learning: ZoneLearning, temperature_c: float | None, band: Band) -> float:
    """How long the zone would still need to within the arrival tolerance of ``band``, by its
    model (the prior while not learned), at most three hours."""
    if temperature_c is None:
        return MAX_START_S
    low, high = band.heating_c - ARRIVED_TOLERANCE_K, band.cooling_c + ARRIVED_TOLERANCE_K
    if low <= temperature_c <= high:
        return 0.0
    regime, target = (Regime.HEATING, low) if temperature_c < low else (Regime.COOLING, high)
    needed = time_to_reach_s(_effective(learning).model(regime), temperature_c, target, None)
    return min(MAX_START_S, needed)


def _nearest(band: Band, comfort: Comfort, among: tuple[Band, ...] | None = None) -> Band:
    """Which of the policy's bands (occupied, standby, unoccupied) ``band`` is closest to: the
    one the zone is being driven to (offsets such as demand response move it a little)."""

    def distance(other: Band) -> float:
        return abs(band.heating_c - other.heating_c) + abs(band.cooling_c - other.cooling_c)

    candidates = among or (comfort.occupied, comfort.standby, comfort.unoccupied)
    return min(candidates, key=distance)


def _morning_rate(
    morning: _Morning, target: Band, entered: datetime, comfort: Comfort
) -> MorningRate | None:
    """The morning's mean rate towards ``target``, when it was driven there from the moment
    conditioning began and the gap and time were long enough to say something."""
    if morning.began is None or morning.began_c is None or morning.began_aim is None:
        return None
    if _nearest(morning.began_aim, comfort, (comfort.occupied, comfort.standby)) is not target:
        return None  # sent to the standby band first, then on: the time says little
    elapsed_h = (entered - morning.began).total_seconds() / 3600
    if morning.began_c < target.heating_c:
        regime, gap_k = Regime.HEATING, target.heating_c - morning.began_c
    else:
        regime, gap_k = Regime.COOLING, target.cooling_c - morning.began_c
    if abs(gap_k) < MORNING_MIN_GAP_K or elapsed_h * 3600 < MORNING_MIN_S:
        return None
    rate = gap_k / elapsed_h
    low, high = GAIN_BOUNDS[regime]
    return MorningRate(regime, rate) if low <= rate <= high else None


def _keep_rate(rates: tuple[MorningRate, ...], new: MorningRate | None) -> tuple[MorningRate, ...]:
    if new is None:
        return rates
    same = [r for r in rates if r.regime is new.regime][-(KEEP_MORNING_RATES - 1) :]
    return (*[r for r in rates if r.regime is not new.regime], *same, new)


def _median(values: list[float]) -> float:
    ranked = sorted(values)
    middle = len(ranked) // 2
    return ranked[middle] if len(ranked) % 2 else (ranked[middle - 1] + ranked[middle]) / 2


def morning_medians(learning: ZoneLearning) -> dict[Regime, float]:
    """The median of the zone's own judged mornings' mean rates, per regime that has any: what
    the zone offers the other zones of the building (``building_median``)."""
    found: dict[Regime, float] = {}
    for regime in (Regime.HEATING, Regime.COOLING):
        rates = [r.rate_k_per_h for r in learning.morning_rates if r.regime is regime]
        if rates:
            found[regime] = _median(rates)
    return found


def building_median(by_zone: Mapping[str, Mapping[Regime, float]]) -> dict[Regime, float]:
    """Per regime, the median over the zones of their morning medians (``morning_medians``): the
    rate a zone with no mornings of its own starts from, rather than the generic prior (the
    terminal units of one building are sized alike: a zone's first cool-down on the prior of
    2 K/h, where the units cool at 4.5-7 K/h, began 26 minutes too early). A zone's own rates
    are among them only where it has mornings of its own, and there it uses those."""
    found: dict[Regime, float] = {}
    for regime in (Regime.HEATING, Regime.COOLING):
        rates = [r[regime] for r in by_zone.values() if regime in r]
        if rates:
            found[regime] = _median(rates)
    return found


def _effective(learning: ZoneLearning, peers: Mapping[Regime, float] | None = None) -> ZoneResponse:
    """The response used for start times: a regime its windows have not taught yet is the
    median of its judged mornings' mean rates, when there are any (robust to one odd morning:
    an open window, a holiday); then the other zones' median (``peers``, from
    ``building_median``); otherwise the learned model or the prior."""
    models = dict(learning.response.models)
    own = morning_medians(learning)
    for regime in (Regime.HEATING, Regime.COOLING):
        if learning.response.model(regime).learned:
            continue
        rate = own.get(regime, (peers or {}).get(regime))
        if rate is not None:
            models[regime] = constant_rate(regime, rate)
    return ZoneResponse(models)


def _learn_start(
    learning: ZoneLearning,
    local: datetime,
    temperature_c: float | None,
    band: Band,
    policy: Policy,
) -> ZoneLearning:
    comfort = policy.comfort
    morning = learning.morning
    if morning is None:
        start = next_occupied_start(policy.schedule, local, MAX_START_S)
        outside = _entered(None, local, temperature_c, comfort.occupied) is None
        # Watched from the moment warm-up (or cool-down) begins, in a zone outside its band: a
        # zone that drifts into its band by itself, or is in it already, says nothing about
        # when its conditioning started.
        driven = _nearest(band, comfort) is not comfort.unoccupied
        watch = start is not None and outside and driven
        began = (
            _Morning(start, began=local, began_c=temperature_c, began_aim=band) if start else None
        )
        return replace(learning, morning=began if watch else None)
    morning = replace(
        morning,
        entered_occupied=_entered(morning.entered_occupied, local, temperature_c, comfort.occupied),
        entered_standby=_entered(morning.entered_standby, local, temperature_c, comfort.standby),
    )
    if local < morning.start:
        return replace(learning, morning=replace(morning, aim=band))
    # Before the start the zone was warmed to the occupied band (people expected, or nothing
    # known) or only to its standby band: judged against the one it was sent to.
    target = _nearest(morning.aim or band, comfort, (comfort.occupied, comfort.standby))
    entered = morning.entered_occupied if target is comfort.occupied else morning.entered_standby
    rates, weight = learning.morning_rates, BIAS_WEIGHT
    if entered is not None:
        error_s = (entered - morning.start).total_seconds()  # early: negative
        measured = _morning_rate(morning, target, entered, comfort)
        if measured is not None and not _effective(learning).model(measured.regime).learned:
            # The start came from the prior (or the other zones' rate), and this morning's rate
            # replaces it from now on: its error is theirs, not one the correction should carry
            # forward.
            weight = 0.0
        rates = _keep_rate(rates, measured)
    else:
        # Judged at the start, whatever the zone is driven to next (people may not come): late
        # by the time it would still have needed, by its model.
        error_s = _still_needed_s(learning, temperature_c, target)
    bias = learning.start_bias_s + weight * error_s
    return replace(
        learning,
        morning=None,
        morning_rates=rates,
        start_bias_s=max(-MAX_BIAS_S, min(MAX_BIAS_S, bias)),
        starts=(*learning.starts, JudgedStart(morning.start.date(), error_s))[-KEEP_STARTS:],
    )


def observe(
    learning: ZoneLearning,
    now_s: float,
    local: datetime,
    temperature_c: float | None,
    occupied: bool | None,
    band: Band,
    policy: Policy,
) -> ZoneLearning:
    """Take what the zone saw at one decision: its temperature (None when unusable), occupancy
    (None when unknown) and the band it was driven to."""
    if temperature_c is not None and not math.isfinite(temperature_c):
        temperature_c = None
    dt_s = 0.0 if learning.last_s is None else max(0.0, now_s - learning.last_s)
    learning = _nightly(replace(learning, last_s=now_s), local)
    scheduled = scheduled_occupied(policy.schedule, local)
    learning = _learn_window(learning, now_s, temperature_c, band, scheduled)
    holidays = frozenset(policy.schedule.holidays)
    learning = _learn_slot(learning, dt_s, local, occupied, holidays)
    return _learn_start(learning, local, temperature_c, band, policy)


def outlook(
    learning: ZoneLearning,
    local: datetime,
    temperature_c: float,
    policy: Policy,
    peers: Mapping[Regime, float] | None = None,
) -> ZoneOutlook:
    """``peers``: the other zones' median morning rates (``building_median``), for a regime
    this zone has learned nothing of yet."""
    comfort = policy.comfort
    response = _effective(learning, peers)

    def lead(band: Band, from_c: float = temperature_c) -> float:
        base = start_lead_s(
            response, from_c, band.heating_c, band.cooling_c, None,
            default_s=comfort.warmup_s,
        )  # fmt: skip
        if base == 0.0:
            return 0.0
        return max(0.0, min(MAX_START_S, base + learning.start_bias_s))

    band, standby = comfort.occupied, comfort.standby
    # From the standby band's edge on the side the zone is on; none inside the occupied band.
    if temperature_c < band.heating_c:
        recovery_s = lead(band, standby.heating_c)
    elif temperature_c > band.cooling_c:
        recovery_s = lead(band, standby.cooling_c)
    else:
        recovery_s = 0.0
    return ZoneOutlook(
        recovery_s=recovery_s,
        occupied_lead_s=lead(band),
        standby_lead_s=lead(standby),
        arrival=predict_arrival(
            learning.occupancy, local, MAX_START_S, frozenset(policy.schedule.holidays)
        ),
        coast_s=coast_s(learning.response, temperature_c, band.heating_c, band.cooling_c, None),
    )


def summary(
    learning: ZoneLearning, look: ZoneOutlook | None, local: datetime, policy: Policy
) -> dict[str, object]:
    """What the zone has learned and expects, for people (API, ``buildingd status``): rates
    per regime (None until learned), the start correction, recent start errors, the next
    optimal start and the expected arrival."""
    rates: dict[str, float | None] = {}
    effective = _effective(learning)
    for regime in Regime:
        model = effective.model(regime)
        rates[f"{regime}_k_per_h"] = round(model.gain_k_per_h, 2) if model.learned else None
    next_start = None
    start = next_occupied_start(policy.schedule, local, 86400 * 7)
    if start is not None and look is not None:
        next_start = (start - timedelta(seconds=look.occupied_lead_s)).isoformat()
    arrival = look.arrival if look is not None else None
    return {
        **rates,
        "samples": {str(r): m.samples for r, m in learning.response.models.items()},
        "start_bias_min": round(learning.start_bias_s / 60, 1),
        "start_errors_min": {
            s.day.isoformat(): round(s.error_s / 60, 1) for s in learning.starts[-10:]
        },
        "warmup_lead_min": None if look is None else round(look.occupied_lead_s / 60, 1),
        "next_optimal_start": next_start,
        "expected_arrival": (
            arrival.arrival.isoformat() if arrival is not None and arrival.arrival else None
        ),
        "arrival_confident": arrival.confident if arrival is not None else False,
        "nightly_refit_at": learning.refit_at.isoformat() if learning.refit_at else None,
        "nightly_refit_replaced": [str(r.regime) for r in learning.refits if r.replaced],
    }
