"""Policy file schema: what facilities staff edit (schedules, bands, lighting, limits, contacts)."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator

from buildingd.config.common import Id, Strict


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"

    @property
    def number(self) -> int:
        """Monday is 0, as ``datetime.weekday()``."""
        return _WEEKDAY_NUMBER[self]


_WEEKDAY_NUMBER = {day: n for n, day in enumerate(Weekday)}  # read at every zone decision


class OccupiedHours(Strict):
    days: list[Weekday] = Field(min_length=1)
    start: time
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


class Schedule(Strict):
    occupied_hours: list[OccupiedHours] = Field(default_factory=list)
    holidays: list[date] = Field(default_factory=list)


class Band(Strict):
    """Zone temperature band: heat below ``heating_c``, cool above ``cooling_c``."""

    heating_c: float = Field(ge=0, le=40)
    cooling_c: float = Field(ge=0, le=40)

    @model_validator(mode="after")
    def _deadband(self) -> Self:
        if self.cooling_c - self.heating_c < 0.5:
            raise ValueError(
                f"cooling_c ({self.cooling_c}) must be at least 0.5 K above heating_c "
                f"({self.heating_c})"
            )
        return self


class Comfort(Strict):
    """ASHRAE Guideline 36 zone modes: occupied, occupied-standby and unoccupied setback."""

    occupied: Band = Band(heating_c=21.0, cooling_c=24.0)
    standby: Band = Band(heating_c=20.0, cooling_c=25.0)
    unoccupied: Band = Band(heating_c=16.0, cooling_c=30.0)
    standby_after_s: float = Field(default=900.0, ge=0)  # vacant this long in occupied hours
    # Start heating/cooling to the occupied band this long before scheduled occupancy.
    warmup_s: float = Field(default=3600.0, ge=0)

    @model_validator(mode="after")
    def _nested(self) -> Self:
        if not (self.unoccupied.heating_c <= self.standby.heating_c <= self.occupied.heating_c):
            raise ValueError("heating_c must not increase from occupied to standby to unoccupied")
        if not (self.occupied.cooling_c <= self.standby.cooling_c <= self.unoccupied.cooling_c):
            raise ValueError("cooling_c must not decrease from occupied to standby to unoccupied")
        return self


class Safety(Strict):
    """Hard limits: no setpoint is ever written outside; a zone outside for too long escalates."""

    min_c: float = 10.0
    max_c: float = 32.0
    max_outside_s: float = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_c - self.min_c < 1.0:
            raise ValueError("max_c must be at least 1 K above min_c")
        return self


class Humidity(Strict):
    min_pct: float = Field(default=30.0, ge=0, le=100)
    max_pct: float = Field(default=60.0, ge=0, le=100)
    hysteresis_pct: float = Field(default=5.0, ge=0, le=30)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_pct - self.min_pct < 2 * self.hysteresis_pct:
            raise ValueError("max_pct - min_pct must be at least twice hysteresis_pct")
        return self


class Lighting(Strict):
    vacancy_timeout_s: float = Field(default=900.0, ge=0)
    daylight_target_lux: float = Field(default=500.0, ge=0)
    full_output_lux: float = Field(default=500.0, gt=0)  # illuminance the lights add at 100 %
    min_level_pct: float = Field(default=10.0, ge=0, le=100)
    # Lights stay on through scheduled hours even when vacant (e.g. corridors); default off.
    on_through_schedule: bool = False


class Negotiation(Strict):
    """Limits for the coordinator (demand response, votes) in zones under this policy."""

    exempt: bool = False  # e.g. a server room: never offered for shedding
    max_shift_k: float = Field(default=2.0, ge=0, le=5)
    max_dim_pct: float = Field(default=30.0, ge=0, le=100)
    max_rounds: int = Field(default=3, ge=1, le=20)
    max_messages: int = Field(default=10_000, ge=1)
    reply_timeout_s: float = Field(default=10.0, gt=0)
    vote_window_s: float = Field(default=900.0, gt=0)
    vote_step_k: float = Field(default=0.5, gt=0, le=2)
    vote_max_offset_k: float = Field(default=1.5, ge=0, le=5)
    mode_override_s: float = Field(default=7200.0, gt=0)  # a zone mode set by hand lasts this long


class Contact(Strict):
    name: str
    email: str | None = None
    phone: str | None = None


class Escalation(Strict):
    contacts: list[Contact] = Field(default_factory=list)
    reminder_interval_s: float = Field(default=3600.0, gt=0)
    # Each alert (raised, reminder, acknowledged, cleared) is POSTed here as JSON.
    webhook_url: str | None = None
    device_unavailable_s: float = Field(default=900.0, gt=0)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("webhook_url must be an http:// or https:// URL with a host")
        return value


class Shutdown(Strict):
    """What actuators are left at when the daemon stops: ``hold`` keeps them, ``safe`` sets the
    unoccupied band and switches lights off, ``release`` gives back what buildingd commanded on
    devices that can (BACnet: null at its priority, the BAS takes over) and holds the others."""

    action: Literal["hold", "safe", "release"] = "hold"


class SeasonMode(StrEnum):
    BOTH = "heating-and-cooling"
    HEATING_ONLY = "heating-only"  # no cooling short of the safety band (winter)
    COOLING_ONLY = "cooling-only"  # no heating short of the safety band (summer)


def _month_day(value: str) -> str:
    """``MM-DD`` of a day that exists every year (02-29 does not)."""
    parts = value.split("-")
    if len(parts) != 2 or not all(len(p) == 2 and p.isdigit() for p in parts):
        raise ValueError(f"{value!r}: want MM-DD, e.g. 10-01")
    try:
        date(2001, int(parts[0]), int(parts[1]))  # 2001: not a leap year
    except ValueError as err:
        raise ValueError(f"{value!r}: no such day every year ({err})") from None
    return value


class Season(Strict):
    """Summer and winter modes by date: from ``start`` to ``end`` (``MM-DD``, both included,
    may wrap past the new year) the zones run in ``mode`` with these bands instead of
    ``comfort``'s. A day in no season runs ``comfort`` as written."""

    name: Id
    start: str
    end: str
    mode: SeasonMode = SeasonMode.BOTH
    occupied: Band | None = None
    standby: Band | None = None
    unoccupied: Band | None = None

    @field_validator("start", "end")
    @classmethod
    def _month_day(cls, value: str) -> str:
        return _month_day(value)

    def days(self) -> set[tuple[int, int]]:
        """Every (month, day) of a non-leap year in the season."""
        first = date(2001, *map(int, self.start.split("-")))
        last = date(2001, *map(int, self.end.split("-")))
        span = (last - first).days % 365
        return {((first + timedelta(days=i)).month, (first + timedelta(days=i)).day)
                for i in range(span + 1)}  # fmt: skip


class Policy(Strict):
    id: Id
    zones: list[str] = Field(min_length=1)  # zone ids or globs ("f1-*")
    timezone: str | None = None  # default: the site's timezone
    schedule: Schedule = Schedule()
    comfort: Comfort = Comfort()
    safety: Safety = Safety()
    humidity: Humidity = Humidity()
    lighting: Lighting = Lighting()
    negotiation: Negotiation = Negotiation()
    escalation: Escalation = Escalation()
    shutdown: Shutdown = Shutdown()
    seasons: list[Season] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as err:
                raise ValueError(f"unknown timezone {value!r}") from err
        return value

    @model_validator(mode="after")
    def _bands_inside_safety(self) -> Self:
        for mode in ("occupied", "standby", "unoccupied"):
            band: Band = getattr(self.comfort, mode)
            if band.heating_c < self.safety.min_c or band.cooling_c > self.safety.max_c:
                raise ValueError(
                    f"comfort.{mode} ({band.heating_c}..{band.cooling_c} degC) is outside the "
                    f"safety band ({self.safety.min_c}..{self.safety.max_c} degC)"
                )
        return self

    @field_validator("seasons")
    @classmethod
    def _seasons_apart(cls, seasons: list[Season]) -> list[Season]:
        taken: dict[tuple[int, int], str] = {}
        for season in seasons:
            for day in sorted(season.days()):
                if day in taken:
                    raise ValueError(f"season {season.name!r} overlaps season {taken[day]!r} "
                                     f"on {day[0]:02d}-{day[1]:02d}")  # fmt: skip
                taken[day] = season.name
        return seasons

    @model_validator(mode="after")
    def _seasons_sound(self) -> Self:
        for season in self.seasons:
            bands = {m: getattr(season, m) or getattr(self.comfort, m)
                     for m in ("occupied", "standby", "unoccupied")}  # fmt: skip
            try:
                Comfort.model_validate(
                    {**self.comfort.model_dump(), **{m: b.model_dump() for m, b in bands.items()}}
                )
            except ValidationError as err:
                why = err.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(f"seasons: {season.name!r}: {why}") from None
            for mode, band in bands.items():
                if band.heating_c < self.safety.min_c or band.cooling_c > self.safety.max_c:
                    raise ValueError(
                        f"seasons: {season.name!r}: {mode} ({band.heating_c}..{band.cooling_c} "
                        f"degC) is outside the safety band ({self.safety.min_c}.."
                        f"{self.safety.max_c} degC)"
                    )
        return self


class DemandResponseEvent(Strict):
    """A scheduled event (a utility's day-ahead call): shed ``target_w`` for ``duration_s``."""

    start: datetime  # naive: the site's timezone
    duration_s: float = Field(gt=0, le=24 * 3600)
    target_w: float = Field(gt=0, le=10_000_000, allow_inf_nan=False)


class RecurringEvent(Strict):
    """A demand-response window that comes back: ``cron`` is a five-field crontab expression
    (minute hour day month weekday) in the site's timezone, e.g. ``"0 17 * * mon-fri"``."""

    cron: str
    duration_s: float = Field(gt=0, le=24 * 3600)
    target_w: float = Field(gt=0, le=10_000_000, allow_inf_nan=False)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from buildingd.control.recurrence import check_cron

        return check_cron(value)


class DemandResponse(Strict):
    """Site-wide: when zones are asked to shed load (one ``demand_response`` for the site)."""

    power_cap_w: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # above: shed
    meter: str | None = None  # "device.point" of the building meter; default: any building power
    window_s: float = Field(default=3600.0, gt=0)  # how long a cap-triggered event lasts
    reply_s: float = Field(default=30.0, gt=0)  # zones answer a call for proposals within this
    events: list[DemandResponseEvent] = Field(default_factory=list)
    recurring: list[RecurringEvent] = Field(default_factory=list)
    # Limits on requests from outside (MQTT ``demand-response/request``, POST
    # /api/demand-response): a larger one is refused with its reason, audited and counted.
    max_window_s: float = Field(default=4 * 3600.0, gt=0, le=24 * 3600, allow_inf_nan=False)
    max_target_w: float = Field(default=100_000.0, gt=0, le=10_000_000, allow_inf_nan=False)

    @model_validator(mode="after")
    def _window_inside_limit(self) -> Self:
        if self.window_s > self.max_window_s:
            raise ValueError(f"window_s ({self.window_s:g} s) is above max_window_s "
                             f"({self.max_window_s:g} s)")  # fmt: skip
        return self

    def request_problem(self, target_w: float, window_s: float) -> str | None:
        """Why a demand-response request from outside is refused, or None when it is within
        the limits (finite, positive, at most ``max_target_w`` and ``max_window_s``)."""
        if not (math.isfinite(target_w) and 0 < target_w <= self.max_target_w):
            return f"target_w {target_w:g} W is not in (0, {self.max_target_w:g}] W (max_target_w)"
        if not (math.isfinite(window_s) and 0 < window_s <= self.max_window_s):
            return f"window_s {window_s:g} s is not in (0, {self.max_window_s:g}] s (max_window_s)"
        return None


class PolicyFile(Strict):
    policies: list[Policy] = Field(default_factory=list)
    demand_response: DemandResponse | None = None
