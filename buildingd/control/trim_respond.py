"""ASHRAE Guideline 36 trim & respond reset of a shared setpoint (supply-air temperature, duct
static pressure), and the zone requests that drive them (cooling, static pressure). Pure: the
caller passes the time and the request count, and writes the setpoint itself.

G36-2018 section 5.1.14 (Trim & Respond set-point reset logic): while the device runs, the
setpoint holds ``SP0`` for the delay ``Td`` after start; then every time step ``T`` it is trimmed
by ``SPtrim`` and, when the zones send more requests ``R`` than ``I`` (ignored requests), it also
responds by ``SPres * (R - I)``; it always stays inside ``[SPmin, SPmax]``.

We follow the public implementation in the Modelica Buildings Library,
``Buildings.Controls.OBC.ASHRAE.G36.Generic.TrimAndRespond``:
* the response ``SPres * (R - I)`` is capped at ``SPres_max`` in magnitude (the trim is not
  part of the cap);
* with ``R > I`` the net change of a step is ``SPtrim + response`` (its ``netRes`` adds the trim
  amount to the capped response), otherwise ``SPtrim``. ``trim_with_response=False`` gives the
  other common reading, response alone;
* the first change comes one time step after the delay (its timer runs ``delTim + samplePeriod``).

For supply-air temperature the requests are zone cooling requests and the response lowers the
setpoint (``SPtrim`` > 0, ``SPres`` < 0). The defaults are G36-2018 section 5.16.2.2's, with the SI
values the guideline prints: SP0 = SPmax = 18 degC, SPmin = 12 degC, Td = 10 min, T = 2 min,
I = 2, SPtrim = +0.1 K, SPres = -0.2 K, SPres_max = -0.6 K.

For duct static pressure the requests are the VAV terminal units' static pressure reset requests
(``static_pressure_requests``) and the response raises the setpoint (``SPtrim`` < 0, ``SPres`` >
0); the defaults (``STATIC_PRESSURE``) are G36-2018 section 5.16.1.2's, in Pa.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# G36 VAV terminal-unit cooling SAT reset requests, the SI thresholds rounded to whole kelvin (the
# guideline's 5 and 3 degF; the Modelica Buildings Library's G36_PR1 SystemRequests block uses
# 2.8 and 1.7 K, and 120 s).
REQUEST_3_ABOVE_K = 3.0
REQUEST_2_ABOVE_K = 2.0
REQUEST_HOLD_S = 120.0  # "for 2 minutes"
LOOP_REQUEST_PCT = 95.0  # one request above this ...
LOOP_RELEASE_PCT = 85.0  # ... held until the loop falls below this

# G36 VAV terminal-unit static pressure reset requests (section 5.6.8.2; the Modelica Buildings
# Library's SystemRequests blocks use the same 95 / 85 % damper thresholds and durTimFlo = 60 s).
DAMPER_REQUEST_PCT = 95.0  # damper nearly wide open: the duct pressure may be too low
DAMPER_RELEASE_PCT = 85.0  # one request is held until the damper closes below this
AIRFLOW_3_BELOW_SHARE = 0.5  # 3 requests below 50 % of the airflow setpoint ...
AIRFLOW_2_BELOW_SHARE = 0.7  # ... 2 below 70 % (with the damper above 95 %)
AIRFLOW_HOLD_S = 60.0  # "for 1 minute"


@dataclass(frozen=True)
class TrimRespondParams:
    sp0: float = 18.0  # SP0, also the setpoint while the device is off
    sp_min: float = 12.0  # SPmin
    sp_max: float = 18.0  # SPmax
    delay_s: float = 600.0  # Td
    step_s: float = 120.0  # T
    ignored: int = 2  # I
    trim: float = 0.1  # SPtrim
    respond: float = -0.2  # SPres, opposite sign to SPtrim
    respond_max: float = -0.6  # SPres_max, same sign as SPres
    trim_with_response: bool = True  # Modelica: a responding step also trims

    def __post_init__(self) -> None:
        if not self.sp_min <= self.sp0 <= self.sp_max:
            raise ValueError(f"SP0 {self.sp0} outside [{self.sp_min}, {self.sp_max}]")
        if self.step_s <= 0 or self.delay_s < 0 or self.ignored < 0:
            raise ValueError("T must be > 0, Td and I >= 0")
        if self.trim * self.respond > 0:  # the same check as the Modelica block's assertion
            raise ValueError("SPtrim and SPres must have opposite signs")
        if self.respond * self.respond_max < 0:
            raise ValueError("SPres and SPres_max must have the same sign")


# G36-2018 section 5.16.1.2, duct static pressure trim & respond, in Pa (the guideline's
# 0.5 / 0.1 inch of water and -0.05 / +0.06 / +0.13 inch of water, rounded): SP0 120, SPmin 25,
# Td 10 min, T 2 min, I 2, SPtrim -12, SPres +15, SPres_max +32. G36 leaves SPmax to the
# project (the design duct pressure); 400 Pa here, and the site file or the setpoint point's
# write limits narrow it.
STATIC_PRESSURE = TrimRespondParams(
    sp0=120.0, sp_min=25.0, sp_max=400.0, delay_s=600.0, step_s=120.0, ignored=2,
    trim=-12.0, respond=15.0, respond_max=32.0,
)  # fmt: skip


class TrimRespond:
    """One reset loop. ``step`` may be called as often as wanted; it changes the setpoint once
    per time step."""

    def __init__(self, params: TrimRespondParams, started_s: float) -> None:
        self.params = params
        self.restart(started_s)

    def restart(self, started_s: float) -> None:
        """The device (re)started: back to SP0, and the delay runs again."""
        self.setpoint = self.params.sp0
        self.next_step_s = started_s + self.params.delay_s + self.params.step_s

    def step(self, now_s: float, requests: int) -> float:
        """The setpoint at ``now_s`` given the zones' current request count.

        A call that comes several time steps late changes the setpoint once, not once per
        missed step: the request count is only known now, and replaying it would respond to
        the same requests several times."""
        p = self.params
        if now_s < self.next_step_s:
            return self.setpoint
        missed = math.floor((now_s - self.next_step_s) / p.step_s)
        self.next_step_s += (missed + 1) * p.step_s
        extra = requests - p.ignored
        if extra > 0:
            response = p.respond * extra
            if abs(response) > abs(p.respond_max):
                response = p.respond_max
            change = p.trim + response if p.trim_with_response else response
        else:
            change = p.trim
        # Rounded to µK so long runs do not accumulate float noise in a written setpoint.
        self.setpoint = round(min(p.sp_max, max(p.sp_min, self.setpoint + change)), 6)
        return self.setpoint


def cooling_requests(
    zone_temp_c: float,
    cooling_sp_c: float,
    cooling_loop_pct: float,
    *,
    above_3k_for_s: float,
    above_2k_for_s: float,
    previous: int = 0,
) -> int:
    """Cooling supply-air-temperature reset requests of one zone, after G36's VAV terminal-unit
    system requests (3 above sp + 3 K for 2 min, else 2 above sp + 2 K for 2 min, else 1 while
    the cooling loop is above 95 %, held until it falls below 85 %, else 0).

    The guideline's timers are the caller's: ``above_3k_for_s`` and ``above_2k_for_s`` are how
    long the zone has been more than 3 K and 2 K above its cooling setpoint. ``previous`` is the
    count sent last time, for the loop hysteresis (one request from above 95 % is held until the
    loop falls below 85 %). The guideline also suppresses requests for a while after a setpoint
    change (its section 5.1.20); the caller does that by resetting the timers."""
    above_k = zone_temp_c - cooling_sp_c
    if above_k > REQUEST_3_ABOVE_K and above_3k_for_s >= REQUEST_HOLD_S:
        return 3
    if above_k > REQUEST_2_ABOVE_K and above_2k_for_s >= REQUEST_HOLD_S:
        return 2
    if cooling_loop_pct > LOOP_REQUEST_PCT:
        return 1
    if previous >= 1 and cooling_loop_pct >= LOOP_RELEASE_PCT:
        return 1
    return 0


def static_pressure_requests(
    damper_pct: float,
    airflow: float | None = None,
    airflow_sp: float | None = None,
    *,
    below_50_for_s: float = 0.0,
    below_70_for_s: float = 0.0,
    previous: int = 0,
) -> int:
    """Duct static pressure reset requests of one VAV terminal unit, after G36 section 5.6.8.2:
    3 while the airflow has been below 50 % of a setpoint above zero, with the damper above
    95 %, for 1 minute; else 2 for the same below 70 %; else 1 while the damper is above 95 %,
    held until it closes below 85 %; else 0.

    ``airflow`` and ``airflow_sp`` (any one unit) are None when the unit does not report them:
    then only the damper rule applies. The 1-minute timers are the caller's:
    ``below_50_for_s`` and ``below_70_for_s`` are how long the unit has met the whole condition
    (airflow below the share of its setpoint and damper above 95 %, see ``low_airflow``).
    ``previous`` is the count sent last time, for the damper hysteresis."""
    if airflow is not None and airflow_sp is not None and damper_pct > DAMPER_REQUEST_PCT:
        if below_50_for_s >= AIRFLOW_HOLD_S and low_airflow(
            airflow, airflow_sp, AIRFLOW_3_BELOW_SHARE
        ):
            return 3
        if below_70_for_s >= AIRFLOW_HOLD_S and low_airflow(
            airflow, airflow_sp, AIRFLOW_2_BELOW_SHARE
        ):
            return 2
    if damper_pct > DAMPER_REQUEST_PCT:
        return 1
    if previous >= 1 and damper_pct >= DAMPER_RELEASE_PCT:
        return 1
    return 0


def low_airflow(airflow: float, airflow_sp: float, share: float) -> bool:
    """The airflow is below ``share`` of a setpoint above zero (a closed box asks for nothing)."""
    return airflow_sp > 0 and airflow < share * airflow_sp


@dataclass(frozen=True)
class PressureRequestTimer:
    """One terminal unit's static pressure request state: since when (monotonic s) each of the
    low-airflow conditions holds, and the count sent last time."""

    below_50_since_s: float | None = None
    below_70_since_s: float | None = None
    requests: int = 0


def update_pressure_requests(
    timer: PressureRequestTimer,
    now_s: float,
    damper_pct: float | None,
    airflow: float | None = None,
    airflow_sp: float | None = None,
) -> PressureRequestTimer:
    """The terminal unit's state at ``now_s`` from its current readings (None: no usable
    reading). No damper reading, no request: a unit that cannot tell how open it is does not
    push the fan."""
    if damper_pct is None:
        return PressureRequestTimer()
    wide_open = damper_pct > DAMPER_REQUEST_PCT

    def since(was: float | None, share: float) -> float | None:
        if (
            wide_open
            and airflow is not None
            and airflow_sp is not None
            and low_airflow(airflow, airflow_sp, share)
        ):
            return was if was is not None else now_s
        return None

    since50 = since(timer.below_50_since_s, AIRFLOW_3_BELOW_SHARE)
    since70 = since(timer.below_70_since_s, AIRFLOW_2_BELOW_SHARE)
    count = static_pressure_requests(
        damper_pct,
        airflow,
        airflow_sp,
        below_50_for_s=now_s - since50 if since50 is not None else 0.0,
        below_70_for_s=now_s - since70 if since70 is not None else 0.0,
        previous=timer.requests,
    )
    return PressureRequestTimer(since50, since70, count)
