"""Protocol-neutral part of the device schema: what every point and every device declares."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from buildingd.config.common import Id, Range, Strict
from buildingd.points import DEFAULT_UNIT, PLAUSIBLE_RANGE, PointKind

# Report-by-exception deadbands per kind, in the kind's unit: changes smaller than this are not
# published unless the heartbeat is due.
DEFAULT_DEADBAND: dict[PointKind, float] = {
    PointKind.TEMPERATURE: 0.1,
    PointKind.HUMIDITY: 0.5,
    PointKind.ILLUMINANCE: 10.0,
    PointKind.CO2: 20.0,
    PointKind.POWER: 10.0,
}

# A sensor stuck on one value longer than this is flagged FROZEN (only for noisy quantities).
DEFAULT_FROZEN_AFTER_S: dict[PointKind, float] = {
    PointKind.TEMPERATURE: 4 * 3600.0,
    PointKind.HUMIDITY: 4 * 3600.0,
}


class PointBase(Strict):
    """What every point declares, whatever the protocol."""

    id: Id
    zone: Id | None = None  # None for building-level points (air handler, main meter)
    kind: PointKind
    unit: str | None = None
    writable: bool = False
    limits: Range | None = None  # device's accepted range for writes, required when writable
    plausible: Range | None = None  # narrower physical range for validation, default per kind
    stale_after_s: float | None = Field(default=None, gt=0)
    frozen_after_s: float | None = Field(default=None, gt=0)
    deadband: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _writable_needs_limits(self) -> Self:
        if self.writable and self.limits is None:
            raise ValueError("a writable point needs limits: {min: ..., max: ...}")
        return self

    @property
    def effective_unit(self) -> str:
        return self.unit if self.unit is not None else DEFAULT_UNIT[self.kind]

    @property
    def plausible_range(self) -> tuple[float, float] | None:
        if self.plausible is not None:
            return (self.plausible.min, self.plausible.max)
        return PLAUSIBLE_RANGE.get(self.kind)

    @property
    def effective_deadband(self) -> float:
        return self.deadband if self.deadband is not None else DEFAULT_DEADBAND.get(self.kind, 0.0)

    @property
    def effective_frozen_after_s(self) -> float | None:
        if self.frozen_after_s is not None:
            return self.frozen_after_s
        return DEFAULT_FROZEN_AFTER_S.get(self.kind)


class DeviceBase(Strict):
    """What every device declares."""

    id: Id
    name: str | None = None
    enabled: bool = True
    # Served by the simulated building over the device's own protocol (Modbus, MQTT) when the
    # daemon runs the simulator: the demo exercises the real drivers against it.
    simulated: bool = False
    poll_interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=3.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    # How long without a fresh value before points are STALE; default 3 poll intervals.
    stale_after_s: float | None = Field(default=None, gt=0)
    # The gateway (site.yaml ``gateways:``) the device is attached to; default: its file's.
    gateway: Id | None = None

    def stale_after(self, point: PointBase) -> float:
        if point.stale_after_s is not None:
            return point.stale_after_s
        if self.stale_after_s is not None:
            return self.stale_after_s
        return max(3 * self.poll_interval_s, 30.0)

    @model_validator(mode="after")
    def _unique_points(self) -> Self:
        seen: set[str] = set()
        for point in self.points_list():
            if point.id in seen:
                raise ValueError(f"duplicate point id {point.id!r}")
            seen.add(point.id)
        return self

    def points_list(self) -> list[PointBase]:
        return list(getattr(self, "points", []))
