"""ASHRAE Guideline 36 trim & respond reset of a shared setpoint (supply-air temperature, duct
static pressure), and the zone cooling requests that drive the supply-air temperature. Pure: the
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
