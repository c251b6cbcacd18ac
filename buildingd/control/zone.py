"""Zone control: mode (ASHRAE Guideline 36 occupied / standby / unoccupied, plus a safe hold),
heating/cooling setpoints inside the comfort band, lighting on occupancy and daylight with the
vacancy timeout, and humidity. Pure: ``decide(state, inputs, policy, local_now, now_s)``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from buildingd.config.policies import Band, Policy
from buildingd.control.frozen import replace
from buildingd.control.occupancy_forecast import SLOT_S
from buildingd.control.schedule import next_occupied_start, occupied_until, scheduled_occupied
from buildingd.control.thermal_response import MAX_START_S
from buildingd.control.zone_learning import ZoneOutlook
from buildingd.points import PointKind


class ZoneMode(StrEnum):
    OCCUPIED = "occupied"
    STANDBY = "standby"  # G36 occupied-standby: scheduled hours, zone vacant
    UNOCCUPIED = "unoccupied"  # setback outside scheduled hours
    WARMUP = "warmup"  # reaching the occupied band before scheduled or expected occupancy
    HOLD = "hold"  # no usable temperature sensor: safe fixed band, no optimisation


@dataclass(frozen=True)
class ZoneInputs:
    """What the zone knows now, from usable (GOOD) readings only; None means unknown."""

    temperature_c: float | None = None
    humidity_pct: float | None = None
    occupied: bool | None = None
    illuminance_lux: float | None = None


@dataclass(frozen=True)
class Adjustments:
    """Temporary offsets from the coordinator: demand response and occupant votes (K, %)."""

    dr_shift_k: float = 0.0  # widens the band: heating down, cooling up
    vote_offset_k: float = 0.0  # moves the whole band: + warmer
    dim_pct: float = 0.0  # lights dimmed by this many percentage points
    # Overrides by hand (coordinator-checked): the cooling setpoint's extra offset over
    # ``vote_offset_k`` (a range request narrows or widens the band), a mode until ``mode_until``
    # (UTC, the zone agent clears it then), a light level kept while people are there.
    cooling_extra_k: float = 0.0
    mode_override: str = ""
    mode_until: datetime | None = None
    light_override_pct: float = -1.0  # < 0: none; cleared by the vacancy timeout


@dataclass(frozen=True)
class ZoneState:
    mode: ZoneMode = ZoneMode.UNOCCUPIED
    last_occupied_s: float | None = None  # monotonic s of the last sensed occupancy
    light_level_pct: float = 0.0
    dehumidifier_on: bool = False
    humidifier_on: bool = False
    adjustments: Adjustments = field(default_factory=Adjustments)
    # Outer integral trim on the occupied setpoints (K, >= 0): heating raised, cooling lowered,
    # so that a proportional room thermostat settles at the band's edge, not short of it.
    heating_trim_k: float = 0.0
    cooling_trim_k: float = 0.0
    decided_s: float | None = None  # monotonic s of the last decision (the trim's time step)


@dataclass(frozen=True)
class ZoneDecision:
    state: ZoneState
    band: Band  # effective heating/cooling setpoints
    targets: dict[PointKind, float]  # actuator kind -> value to drive
    # Optimal stop: occupied, but set back because the zone coasts inside its band until the
    # end of occupied hours.
    coasting: bool = False


# Early setback only with this much margin on the learned coasting time: a zone that comes back
# from a setback too late makes people cold, one that stops a little later costs little.
COAST_MARGIN = 1.5


# The trim: this many K per K·h the zone spends short of its occupied band (with people there),
# at most TRIM_MAX_K; it winds down at the same rate while the zone is inside the band. Room
# thermostats with a 1 K proportional band settle 0.3-0.5 K short of their setpoint under load.
TRIM_GAIN_PER_H = 1.0
TRIM_MAX_K = 1.0
TRIM_MAX_STEP_S = 600.0  # a longer gap between decisions (a restart) counts as this long
# The setpoints move in steps of this much (a room thermostat's resolution): not a write on every
# decision as the trim integrates, and the device's read-back matches what was written.
TRIM_STEP_K = 0.1


def _applied(trim_k: float) -> float:
    return round(trim_k / TRIM_STEP_K) * TRIM_STEP_K


def with_trim(base: Band, state: ZoneState) -> Band:
    """``base`` with the zone's trims applied (in steps of ``TRIM_STEP_K``)."""
    return Band.model_construct(
        heating_c=base.heating_c + _applied(state.heating_trim_k),
        cooling_c=base.cooling_c - _applied(state.cooling_trim_k),
    )


def trimmed(state: ZoneState, inputs: ZoneInputs, band: Band, now_s: float) -> ZoneState:
    """The trims after one more decision in occupied mode: each integrates how far the zone is
    outside ``band`` on its side (negative inside it), clamped to [0, TRIM_MAX_K]."""
    t = inputs.temperature_c
    if t is None or state.decided_s is None:
        return state
    dt_h = min(TRIM_MAX_STEP_S, max(0.0, now_s - state.decided_s)) / 3600

    def step(trim: float, error_k: float) -> float:
        # Inside the band by more than the trim's own reach counts as at most that much.
        error_k = max(error_k, -TRIM_MAX_K)
        return min(TRIM_MAX_K, max(0.0, trim + TRIM_GAIN_PER_H * error_k * dt_h))

    return replace(
        state,
        heating_trim_k=step(state.heating_trim_k, band.heating_c - t),
        cooling_trim_k=step(state.cooling_trim_k, t - band.cooling_c),
    )


LIGHT_STEP_PCT = 5.0  # dimming resolution: avoids chatter from small illuminance changes


def band_for(mode: ZoneMode, policy: Policy, scheduled: bool) -> Band:
    comfort = policy.comfort
    if mode in (ZoneMode.OCCUPIED, ZoneMode.WARMUP):
        return comfort.occupied
    if mode is ZoneMode.STANDBY:
        return comfort.standby
    if mode is ZoneMode.HOLD:
        return comfort.occupied if scheduled else comfort.unoccupied
    return comfort.unoccupied


def decide_mode(
    policy: Policy,
    inputs: ZoneInputs,
    local_now: datetime,
    now_s: float,
    last_occupied_s: float | None,
    outlook: ZoneOutlook | None = None,
    previous: ZoneMode = ZoneMode.UNOCCUPIED,
) -> ZoneMode:
    """The zone's mode. Without an ``outlook`` warm-up takes the policy's fixed ``warmup_s``;
    with one, it starts when the learned response says (optimal start), a vacant zone is
    pre-conditioned before people usually arrive, and a zone confidently expected empty at the
    scheduled start is only brought to its standby band."""
    if inputs.temperature_c is None:
        return ZoneMode.HOLD
    if scheduled_occupied(policy.schedule, local_now):
        if inputs.occupied is None:  # occupancy unknown: assume people are there
            return ZoneMode.OCCUPIED
        vacant_for = math.inf if last_occupied_s is None else now_s - last_occupied_s
        if inputs.occupied or vacant_for < policy.comfort.standby_after_s:
            return ZoneMode.OCCUPIED
        if outlook is not None and _expected_within(outlook, local_now, outlook.occupied_lead_s):
            return ZoneMode.WARMUP  # pre-conditioning for people expected soon
        return ZoneMode.STANDBY
    if outlook is None:
        if policy.comfort.warmup_s > 0 and next_occupied_start(
            policy.schedule, local_now, policy.comfort.warmup_s
        ):
            return ZoneMode.WARMUP
        return ZoneMode.UNOCCUPIED
    start = next_occupied_start(policy.schedule, local_now, MAX_START_S)
    if start is None or policy.comfort.warmup_s <= 0:
        return ZoneMode.UNOCCUPIED
    to_start_s = (start - local_now).total_seconds()
    arrival = outlook.arrival
    # Nobody expected before the zone could be brought from standby to the occupied band after
    # the start: standby by the start is enough.
    empty_at_start = arrival.confident and (
        arrival.arrival is None
        or (arrival.arrival - start).total_seconds() > max(outlook.recovery_s, SLOT_S)
    )
    # Once started, a warm-up runs to the start: the lead shrinks as the zone warms, and a
    # model a little off must not make it stop and start again.
    if previous is ZoneMode.WARMUP or (
        not empty_at_start and to_start_s <= outlook.occupied_lead_s
    ):
        return ZoneMode.WARMUP
    if empty_at_start and to_start_s <= outlook.standby_lead_s:
        return ZoneMode.STANDBY  # reaching the standby band by the start, not more
    return ZoneMode.UNOCCUPIED


def _expected_within(outlook: ZoneOutlook, local_now: datetime, horizon_s: float) -> bool:
    arrival = outlook.arrival.arrival
    return arrival is not None and (arrival - local_now).total_seconds() <= horizon_s


def coasts_to_end(outlook: ZoneOutlook | None, policy: Policy, local_now: datetime) -> bool:
    """Optimal stop: the zone would stay inside its band with no heating or cooling until the
    end of occupied hours (with ``COAST_MARGIN`` on the learned time)."""
    if outlook is None or outlook.coast_s <= 0:
        return False
    end = occupied_until(policy.schedule, local_now)
    if end is None:
        return False
    remaining_s = (end - local_now).total_seconds()
    # Only towards the end of the day, as optimal start only before its beginning.
    return remaining_s <= MAX_START_S and outlook.coast_s >= COAST_MARGIN * remaining_s


def effective_band(base: Band, adj: Adjustments, policy: Policy) -> Band:
    """Apply coordinator offsets, never leaving the safety band (offsets are bounded upstream;
    this is the last line of defence and is reported by the caller's limit check)."""
    heating = base.heating_c + adj.vote_offset_k - adj.dr_shift_k
    cooling = base.cooling_c + adj.vote_offset_k + adj.cooling_extra_k + adj.dr_shift_k
    safety = policy.safety
    heating = max(safety.min_c, min(heating, safety.max_c - 0.5))
    cooling = min(safety.max_c, max(cooling, heating + 0.5))
    return Band(heating_c=round(heating, 2), cooling_c=round(cooling, 2))


def people_present(
    state: ZoneState, inputs: ZoneInputs, policy: Policy, scheduled: bool, now_s: float
) -> bool:
    """Lights may be on: occupied now or within the vacancy timeout (scheduled hours when the
    sensor is unknown or the policy lights the whole schedule)."""
    lighting = policy.lighting
    if inputs.occupied is None:
        present = scheduled  # sensor unknown: light the scheduled hours (fail-safe)
    else:
        recent = (
            state.last_occupied_s is not None
            and now_s - state.last_occupied_s < lighting.vacancy_timeout_s
        )
        present = bool(inputs.occupied) or recent
    return present or (lighting.on_through_schedule and scheduled)


def light_level(
    state: ZoneState,
    inputs: ZoneInputs,
    policy: Policy,
    scheduled: bool,
    now_s: float,
) -> float:
    """Target light level (%): off after the vacancy timeout, else just enough for the
    daylight target (closed loop on measured illuminance)."""
    lighting = policy.lighting
    if not people_present(state, inputs, policy, scheduled, now_s):
        return 0.0
    if state.adjustments.light_override_pct >= 0:  # set by hand, kept while people are there
        return float(state.adjustments.light_override_pct)
    current = state.light_level_pct
    if inputs.illuminance_lux is None:
        level = 100.0
    else:
        daylight = max(0.0, inputs.illuminance_lux - current * lighting.full_output_lux / 100)
        needed = lighting.daylight_target_lux - daylight
        if needed <= 0.1 * lighting.daylight_target_lux:
            level = 0.0  # daylight is enough
        else:
            level = max(lighting.min_level_pct, min(100.0, 100 * needed / lighting.full_output_lux))
    level = max(0.0, level - state.adjustments.dim_pct) if level > 0 else 0.0
    level = round(level / LIGHT_STEP_PCT) * LIGHT_STEP_PCT
    if level > 0 and abs(level - current) < LIGHT_STEP_PCT and current > 0:
        return current
    return float(level)


def decide(
    state: ZoneState,
    inputs: ZoneInputs,
    policy: Policy,
    local_now: datetime,
    now_s: float,
    outlook: ZoneOutlook | None = None,
) -> ZoneDecision:
    last_occupied = now_s if inputs.occupied else state.last_occupied_s
    scheduled = scheduled_occupied(policy.schedule, local_now)
    mode = decide_mode(policy, inputs, local_now, now_s, last_occupied, outlook, state.mode)
    override = state.adjustments.mode_override
    if override and mode is not ZoneMode.HOLD:  # no sensor: the safe hold wins over a person
        mode = ZoneMode(override)
    adjustments = state.adjustments if mode is not ZoneMode.HOLD else Adjustments()
    # A zone put in occupied mode by hand is not set back early.
    coasting = (
        mode is ZoneMode.OCCUPIED and not override and coasts_to_end(outlook, policy, local_now)
    )
    base = policy.comfort.unoccupied if coasting else band_for(mode, policy, scheduled)
    # The trim belongs to the learning controller (with an outlook) in occupied mode; the
    # baseline (no outlook) drives the policy's band as written.
    trim = outlook is not None and mode is ZoneMode.OCCUPIED and not coasting
    if trim:
        state = trimmed(state, inputs, effective_band(base, adjustments, policy), now_s)
        base = with_trim(base, state)
    band = effective_band(base, adjustments, policy)
    state = replace(state, mode=mode, last_occupied_s=last_occupied, decided_s=now_s)
    if state.adjustments.light_override_pct >= 0 and not people_present(
        state, inputs, policy, scheduled, now_s
    ):  # the vacancy timeout ends a light override
        state = replace(state, adjustments=replace(state.adjustments, light_override_pct=-1.0))
    level = light_level(state, inputs, policy, scheduled, now_s)

    hum = policy.humidity
    dehum, humid = state.dehumidifier_on, state.humidifier_on
    if inputs.humidity_pct is not None:
        if inputs.humidity_pct > hum.max_pct:
            dehum = True
        elif inputs.humidity_pct < hum.max_pct - hum.hysteresis_pct:
            dehum = False
        if inputs.humidity_pct < hum.min_pct:
            humid = True
        elif inputs.humidity_pct > hum.min_pct + hum.hysteresis_pct:
            humid = False
    else:
        dehum = humid = False  # unknown humidity: do not run moisture equipment blind

    state = replace(state, light_level_pct=level, dehumidifier_on=dehum, humidifier_on=humid)
    targets = {
        PointKind.HEATING_SETPOINT: band.heating_c,
        PointKind.COOLING_SETPOINT: band.cooling_c,
        PointKind.LIGHT_LEVEL: level,
        PointKind.LIGHT_SWITCH: 1.0 if level > 0 else 0.0,
        PointKind.DEHUMIDIFIER: 1.0 if dehum else 0.0,
        PointKind.HUMIDIFIER: 1.0 if humid else 0.0,
    }
    return ZoneDecision(state, band, targets, coasting)
