"""Point kinds, quality flags and the frozen Reading/Command values that flow between agents."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class PointKind(StrEnum):
    """What a point measures or drives. Sensors first, then actuators."""

    TEMPERATURE = "temperature"  # degC, room air
    HUMIDITY = "humidity"  # %RH
    OCCUPANCY = "occupancy"  # 0/1 (presence or motion)
    ILLUMINANCE = "illuminance"  # lux at the work plane
    CO2 = "co2"  # ppm
    POWER = "power"  # W, electric power of a meter or a load
    ENERGY = "energy"  # kWh, counter
    BATTERY = "battery"  # %
    SUPPLY_AIR_TEMPERATURE = "supply_air_temperature"  # degC, at an air handler
    DUCT_STATIC_PRESSURE = "duct_static_pressure"  # Pa
    OUTDOOR_TEMPERATURE = "outdoor_temperature"  # degC
    # A VAV terminal unit's damper and airflow, for G36 duct static pressure reset requests.
    DAMPER_POSITION = "damper_position"  # % open
    AIRFLOW = "airflow"  # m3/h, measured by the terminal unit
    AIRFLOW_SETPOINT = "airflow_setpoint"  # m3/h, the terminal unit's current setpoint (read)
    HEATING_SETPOINT = "heating_setpoint"  # degC, writable on a thermostat or VAV
    COOLING_SETPOINT = "cooling_setpoint"  # degC
    LIGHT_LEVEL = "light_level"  # % of full output, dimmer
    LIGHT_SWITCH = "light_switch"  # 0/1, relay
    FAN = "fan"  # 0/1 or % speed
    DEHUMIDIFIER = "dehumidifier"  # 0/1
    HUMIDIFIER = "humidifier"  # 0/1
    SUPPLY_AIR_TEMPERATURE_SETPOINT = "supply_air_temperature_setpoint"  # degC, air handler
    DUCT_STATIC_PRESSURE_SETPOINT = "duct_static_pressure_setpoint"  # Pa, air handler
    OTHER = "other"

    @property
    def is_actuator(self) -> bool:
        return self in ACTUATOR_KINDS


ACTUATOR_KINDS = frozenset(
    {
        PointKind.HEATING_SETPOINT,
        PointKind.COOLING_SETPOINT,
        PointKind.LIGHT_LEVEL,
        PointKind.LIGHT_SWITCH,
        PointKind.FAN,
        PointKind.DEHUMIDIFIER,
        PointKind.HUMIDIFIER,
        PointKind.SUPPLY_AIR_TEMPERATURE_SETPOINT,
        PointKind.DUCT_STATIC_PRESSURE_SETPOINT,
    }
)

# Physically plausible ranges per kind (a reading outside is a broken sensor, not a hot room).
# Device files may narrow them per point.
PLAUSIBLE_RANGE: dict[PointKind, tuple[float, float]] = {
    PointKind.TEMPERATURE: (-30.0, 70.0),
    PointKind.HUMIDITY: (0.0, 100.0),
    PointKind.OCCUPANCY: (0.0, 1.0),
    PointKind.ILLUMINANCE: (0.0, 150_000.0),
    PointKind.CO2: (0.0, 40_000.0),
    PointKind.POWER: (-1e7, 1e7),
    PointKind.ENERGY: (0.0, 1e12),
    PointKind.BATTERY: (0.0, 100.0),
    PointKind.SUPPLY_AIR_TEMPERATURE: (-20.0, 70.0),
    PointKind.DUCT_STATIC_PRESSURE: (-100.0, 3000.0),
    PointKind.OUTDOOR_TEMPERATURE: (-60.0, 60.0),
    PointKind.DAMPER_POSITION: (0.0, 100.0),
    PointKind.AIRFLOW: (0.0, 1e6),
    PointKind.AIRFLOW_SETPOINT: (0.0, 1e6),
    PointKind.HEATING_SETPOINT: (0.0, 40.0),
    PointKind.COOLING_SETPOINT: (0.0, 40.0),
    PointKind.LIGHT_LEVEL: (0.0, 100.0),
    PointKind.LIGHT_SWITCH: (0.0, 1.0),
    PointKind.FAN: (0.0, 100.0),
    PointKind.DEHUMIDIFIER: (0.0, 1.0),
    PointKind.HUMIDIFIER: (0.0, 1.0),
    PointKind.SUPPLY_AIR_TEMPERATURE_SETPOINT: (5.0, 40.0),
    PointKind.DUCT_STATIC_PRESSURE_SETPOINT: (0.0, 2500.0),
}

DEFAULT_UNIT: dict[PointKind, str] = {
    PointKind.TEMPERATURE: "degC",
    PointKind.HUMIDITY: "%RH",
    PointKind.OCCUPANCY: "bool",
    PointKind.ILLUMINANCE: "lx",
    PointKind.CO2: "ppm",
    PointKind.POWER: "W",
    PointKind.ENERGY: "kWh",
    PointKind.BATTERY: "%",
    PointKind.SUPPLY_AIR_TEMPERATURE: "degC",
    PointKind.DUCT_STATIC_PRESSURE: "Pa",
    PointKind.OUTDOOR_TEMPERATURE: "degC",
    PointKind.DAMPER_POSITION: "%",
    PointKind.AIRFLOW: "m3/h",
    PointKind.AIRFLOW_SETPOINT: "m3/h",
    PointKind.HEATING_SETPOINT: "degC",
    PointKind.COOLING_SETPOINT: "degC",
    PointKind.LIGHT_LEVEL: "%",
    PointKind.LIGHT_SWITCH: "bool",
    PointKind.FAN: "%",
    PointKind.DEHUMIDIFIER: "bool",
    PointKind.HUMIDIFIER: "bool",
    PointKind.SUPPLY_AIR_TEMPERATURE_SETPOINT: "degC",
    PointKind.DUCT_STATIC_PRESSURE_SETPOINT: "Pa",
    PointKind.OTHER: "",
}


class Quality(StrEnum):
    """Why a reading can or cannot be used for control."""

    GOOD = "good"
    STALE = "stale"  # no fresh value within the point's timeout
    OUT_OF_RANGE = "out_of_range"  # outside the plausible range
    FROZEN = "frozen"  # identical value for longer than the point's frozen_after_s
    UNAVAILABLE = "unavailable"  # the device cannot be reached

    @property
    def usable(self) -> bool:
        return self is Quality.GOOD


@dataclass(frozen=True, slots=True)
class Sample:
    """A raw value from a driver in engineering units, with when it was received (monotonic s)."""

    value: float
    received_s: float


@dataclass(frozen=True, slots=True)
class Reading:
    """A validated point value as device agents publish it."""

    device_id: str
    point_id: str
    zone_id: str | None
    kind: PointKind
    value: float
    quality: Quality
    timestamp: datetime  # wall clock, UTC


@dataclass(frozen=True, slots=True)
class Command:
    """A request to drive an actuator point of a zone to a value (engineering units)."""

    zone_id: str
    kind: PointKind
    value: float
    reason: str
