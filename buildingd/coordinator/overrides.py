"""Checks for requests made by hand (HTTP, Home Assistant) before the coordinator applies them
(pure): a setpoint range, a zone mode, a light level. Each returns the refusal's reason, or
``None`` when the request is within the policy."""

from __future__ import annotations

from buildingd.config.policies import Band, Policy
from buildingd.points import PointKind

MIN_DEADBAND_K = 0.5  # as the policy's bands: heating at least this far below cooling
MODES = ("occupied", "standby", "unoccupied", "schedule")


def check_band(heating_c: float, cooling_c: float, base: Band, policy: Policy) -> str | None:
    """Both ends within ``vote_max_offset_k`` of the scheduled band ``base`` and inside the
    safety band, at least ``MIN_DEADBAND_K`` apart."""
    safety, limit = policy.safety, policy.negotiation.vote_max_offset_k
    if min(heating_c, cooling_c) < safety.min_c or max(heating_c, cooling_c) > safety.max_c:
        return f"{heating_c:g}..{cooling_c:g} °C is outside the safety band " \
            f"{safety.min_c:g}..{safety.max_c:g} °C"  # fmt: skip
    if cooling_c - heating_c < MIN_DEADBAND_K:
        return f"heating {heating_c:g} °C must be at least {MIN_DEADBAND_K} K below cooling " \
            f"{cooling_c:g} °C"  # fmt: skip
    for end, wanted, scheduled in (("heating", heating_c, base.heating_c),
                                   ("cooling", cooling_c, base.cooling_c)):  # fmt: skip
        if abs(wanted - scheduled) > limit + 1e-9:
            return f"{end} {wanted:g} °C is more than {limit:g} K from the scheduled " \
                f"{scheduled:g} °C"  # fmt: skip
    return None


def check_mode(mode: str) -> str | None:
    if mode not in MODES:
        return f"mode {mode[:20]!r} cannot be set by hand: use one of {', '.join(MODES)}"
    return None


def check_light(level_pct: float, kinds: set[PointKind], *, vacant: bool = False) -> str | None:
    """A level the zone's lights can take; none but off for a ``vacant`` zone (the vacancy
    timeout stays in force: a level set by hand lasts only while people are there)."""
    if not kinds & {PointKind.LIGHT_LEVEL, PointKind.LIGHT_SWITCH}:
        return "the zone has no lighting"
    if not 0 <= level_pct <= 100:
        return f"light level {level_pct:g} % is outside 0..100 %"
    if PointKind.LIGHT_LEVEL not in kinds and level_pct not in (0, 100):
        return "the zone's lights are switched, not dimmed: 0 or 100 %"
    if vacant and level_pct > 0:
        return "nobody in the zone: its lights stay off (vacancy timeout)"
    return None
