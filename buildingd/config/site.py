"""Site file schema (``site.yaml``): the site id, its timezone and its zones as built."""

from __future__ import annotations

from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from buildingd.config.common import Id, Strict


class Windows(Strict):
    area_m2: float = Field(default=0.0, ge=0)
    orientation: Literal["north", "east", "south", "west", "none"] = "south"


class Zone(Strict):
    id: Id
    name: str | None = None
    floor: int = 0
    area_m2: float = Field(default=20.0, gt=0)
    height_m: float = Field(default=3.0, gt=0)
    design_occupants: int = Field(default=2, ge=0)
    windows: Windows = Windows()
    neighbours: list[Id] = Field(default_factory=list)
    # Heating and cooling capacity of the zone's terminal unit (W); used by the simulator and
    # for demand-response flexibility estimates.
    heating_capacity_w: float = Field(default=2000.0, ge=0)
    cooling_capacity_w: float = Field(default=2000.0, ge=0)
    lighting_power_w: float = Field(default=200.0, ge=0)


class SupplyAirReset(Strict):
    """G36 trim & respond of the supply-air temperature setpoint (section 5.16.2.2; SI)."""

    sp0_c: float = 18.0
    min_c: float = 12.0
    max_c: float = 18.0
    delay_s: float = Field(default=600.0, ge=0)  # Td
    step_s: float = Field(default=120.0, gt=0)  # T
    ignored_requests: int = Field(default=2, ge=0)  # I
    trim_k: float = 0.1  # SPtrim
    respond_k: float = -0.2  # SPres (per request above I)
    respond_max_k: float = -0.6  # SPres_max

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.min_c <= self.sp0_c <= self.max_c:
            raise ValueError("need min_c <= sp0_c <= max_c")
        return self


class StaticPressureReset(Strict):
    """G36 trim & respond of the duct static pressure setpoint (section 5.16.1.2; Pa). Used
    only when the air handler's device file has a ``duct_static_pressure_setpoint`` point; the
    range is narrowed to that point's write limits."""

    sp0_pa: float = 120.0
    min_pa: float = 25.0
    max_pa: float = 400.0  # G36 leaves SPmax to the project: the design duct pressure
    delay_s: float = Field(default=600.0, ge=0)  # Td
    step_s: float = Field(default=120.0, gt=0)  # T
    ignored_requests: int = Field(default=2, ge=0)  # I
    trim_pa: float = Field(default=-12.0, le=0)  # SPtrim: lowers the pressure ...
    respond_pa: float = Field(default=15.0, ge=0)  # SPres (per request above I): ... raises it
    respond_max_pa: float = Field(default=32.0, ge=0)  # SPres_max

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.min_pa <= self.sp0_pa <= self.max_pa:
            raise ValueError("need min_pa <= sp0_pa <= max_pa")
        return self


class AirHandler(Strict):
    id: Id
    zones: list[Id] = Field(min_length=1)
    supply_air_reset: SupplyAirReset = SupplyAirReset()
    static_pressure_reset: StaticPressureReset = StaticPressureReset()


class Gateway(Strict):
    """One buildingd process of a site spread over several machines (``config/gateways.py``):
    the zones whose agents it runs (ids or globs; zones nobody lists go where most of their
    devices are) and whether it may run the site's coordinator."""

    id: Id
    name: str | None = None
    zones: list[str] = Field(default_factory=list)
    coordinator: bool = False


class SiteFile(Strict):
    site: Id = "site"
    timezone: str = "UTC"
    zones: list[Zone] = Field(min_length=1)
    air_handlers: list[AirHandler] = Field(default_factory=list)
    # Empty (the default): one gateway runs everything, as a single Pi does.
    gateways: list[Gateway] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown timezone {value!r}") from err
        return value
