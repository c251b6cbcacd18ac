"""Sensor validation (plausible range, staleness, frozen values) and actuator limit checks."""

from __future__ import annotations

from dataclasses import dataclass

from buildingd.config.base import PointBase
from buildingd.config.policies import Safety
from buildingd.errors import CommandRejectedError
from buildingd.points import PointKind, Quality

SETPOINT_KINDS = frozenset({PointKind.HEATING_SETPOINT, PointKind.COOLING_SETPOINT})


@dataclass(frozen=True)
class FrozenTracker:
    """When the value last changed (monotonic s), to flag a sensor stuck on one value."""

    value: float | None = None
    since_s: float = 0.0

    def update(self, value: float, now_s: float) -> FrozenTracker:
        if self.value is None or value != self.value:
            return FrozenTracker(value, now_s)
        return self


def judge(
    point: PointBase,
    value: float,
    received_s: float,
    now_s: float,
    stale_after_s: float,
    frozen: FrozenTracker,
) -> Quality:
    if now_s - received_s > stale_after_s:
        return Quality.STALE
    bounds = point.plausible_range
    if value != value or (bounds is not None and not bounds[0] <= value <= bounds[1]):
        return Quality.OUT_OF_RANGE
    frozen_after = point.effective_frozen_after_s
    if frozen_after is not None and now_s - frozen.since_s > frozen_after:
        return Quality.FROZEN
    return Quality.GOOD


def check_command(device_id: str, point: PointBase, value: float, safety: Safety | None) -> None:
    """Refuse (never clamp) a value outside the device's limits or the policy's safety band."""
    if not point.writable:
        raise CommandRejectedError(
            "point is not writable", device_id=device_id, point_id=point.id, value=value
        )
    if value != value or value in (float("inf"), float("-inf")):
        raise CommandRejectedError(
            "not a finite number", device_id=device_id, point_id=point.id, value=value
        )
    limits = point.limits
    assert limits is not None  # schema: writable points have limits
    if not limits.min <= value <= limits.max:
        raise CommandRejectedError(
            f"outside the device limits {limits.min}..{limits.max} {point.effective_unit}",
            device_id=device_id,
            point_id=point.id,
            value=value,
        )
    if (
        safety is not None
        and point.kind in SETPOINT_KINDS
        and not (safety.min_c <= value <= safety.max_c)
    ):
        raise CommandRejectedError(
            f"outside the policy safety band {safety.min_c}..{safety.max_c} degC",
            device_id=device_id,
            point_id=point.id,
            value=value,
        )
