"""ASHRAE Guideline 36 trim & respond for a shared air handler's setpoint (pure).

G36-2018 section 5.1.14 (Trim & Respond set-point reset logic): while the system runs, after an
initial delay ``Td`` holding ``SP0``, every ``T`` seconds: if the zones send more requests ``R``
than ``I`` (ignored requests), respond by ``SPres * (R - I)``, otherwise trim by ``SPtrim``; the
setpoint stays inside ``[SPmin, SPmax]``.

The two public implementations differ in how they cap the response: the Modelica Buildings
Library (``Buildings.Controls.OBC.ASHRAE.G36.Generic.TrimAndRespond``) limits the response of one
step to ``SPres_max`` in magnitude, while the OpenBuildingControl reference sequences apply the
cap to the net change. We follow the Buildings Library: the response ``SPres * (R - I)`` is
clamped to ``SPres_max``; a trim is never capped (it is one ``SPtrim`` by definition).

For supply-air temperature the requests are zone cooling requests and the response lowers the
setpoint (``SPtrim`` > 0, ``SPres`` < 0). Defaults follow G36 Table 5.16.2.2 converted to SI:
SP0 = SPmax = 18 °C, SPmin = 12 °C, Td = 10 min, T = 2 min, I = 2, SPtrim = +0.1 K,
SPres = -0.2 K, SPres_max = -0.6 K.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrimRespondParams:
    sp0: float = 18.0
    sp_min: float = 12.0
    sp_max: float = 18.0
    delay_s: float = 600.0  # Td
    step_s: float = 120.0  # T
    ignored: int = 2  # I
    trim: float = 0.1  # SPtrim
    respond: float = -0.2  # SPres
    respond_max: float = -0.6  # SPres_max


class TrimRespond:
    def __init__(self, params: TrimRespondParams, started_s: float) -> None:
        self.p = params
        self.started_s = started_s
        self.setpoint = params.sp0
        self.next_step_s = started_s + params.delay_s

    def step(self, now_s: float, requests: int) -> float:
        """Advance to ``now_s`` with the zones' current request count; returns the setpoint."""
        p = self.p
        while now_s >= self.next_step_s:
            self.next_step_s += p.step_s
            extra = requests - p.ignored
            if extra > 0:
                change = p.respond * extra
                if abs(change) > abs(p.respond_max):
                    change = p.respond_max
            else:
                change = p.trim
            self.setpoint = min(p.sp_max, max(p.sp_min, self.setpoint + change))
        return round(self.setpoint, 3)


def cooling_requests(
    temperature_c: float,
    cooling_sp_c: float,
    above_3k_for_s: float,
    above_2k_for_s: float,
    cooling_loop_pct: float,
    previous: int,
) -> int:
    """Zone cooling supply-air-temperature requests, after G36 section 5.18.14 (VAV cooling-only
    zones; SI: 3 K and 2 K for the 5 °F and 3 °F thresholds, 2 minutes each)."""
    if temperature_c - cooling_sp_c >= 3.0 and above_3k_for_s >= 120:
        return 3
    if temperature_c - cooling_sp_c >= 2.0 and above_2k_for_s >= 120:
        return 2
    if cooling_loop_pct > 95.0:
        return 1
    if previous == 1 and cooling_loop_pct >= 85.0:
        return 1  # hysteresis: one request holds until the loop falls below 85 %
    return 0
