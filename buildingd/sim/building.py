"""RC thermal model of a building's zones, with moisture, daylight, lights and occupants.

Each zone is one node: ``C dT/dt = UA_ext (T_out - T) + sum UA_nb (T_nb - T) + Q_hvac + Q_int +
Q_sun``. Terminal units behave like room thermostats: proportional heating below the heating
setpoint and cooling above the cooling setpoint, up to the zone's capacity. Pure computation on
simulated time: ``advance_to`` is the only way time passes.

Devices read the building dozens of times per simulated second, so what depends only on the
zone (conductances, capacities) is computed once and what depends only on the moment (local
time, outdoor conditions) once per moment; neither changes a result.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from buildingd.config.site import Zone
from buildingd.points import PointKind
from buildingd.sim.occupancy import OccupancyModel
from buildingd.sim.weather import Outdoor, Scenario, Weather

AIR_DENSITY = 1.2  # kg/m3
AIR_CP = 1005.0  # J/(kg K)
LATENT_HEAT = 2.45e6  # J/kg, only to size moisture sources
SENSIBLE_PER_PERSON_W = 75.0  # seated office work (ASHRAE Fundamentals ch. 18)
MOISTURE_PER_PERSON_KG_S = 55e-3 / 3600  # ~55 g/h
PLUG_PER_PERSON_W = 90.0
COP_HEATING = 3.0  # heat pump, for electric power
COP_COOLING = 3.0
DEHUMIDIFIER_KG_S = 0.4 / 3600
DEHUMIDIFIER_W = 250.0
MAX_STEP_S = 60.0
# Reads closer together than this see the same state: every device reading the building would
# otherwise integrate all zones for a few milliseconds each time (O(devices x zones)).
MIN_STEP_S = 5.0


def saturation_pressure_pa(t_c: float) -> float:
    """Magnus formula over water (Alduchov & Eskridge 1996)."""
    return 610.94 * math.exp(17.625 * t_c / (t_c + 243.04))


def humidity_ratio(t_c: float, rh_pct: float, p_pa: float = 101_325.0) -> float:
    pw = saturation_pressure_pa(t_c) * rh_pct / 100.0
    return 0.622 * pw / (p_pa - pw)


def relative_humidity(t_c: float, w: float, p_pa: float = 101_325.0) -> float:
    pw = w * p_pa / (0.622 + w)
    return min(100.0, max(0.0, 100.0 * pw / saturation_pressure_pa(t_c)))


@dataclass(frozen=True, slots=True)
class _ZoneConstants:
    """What ``_step`` needs of a zone that never changes, computed with the very same
    expressions ``ZoneSim``'s properties use (bit-for-bit the same floats)."""

    capacitance_j_k: float
    ua_external_w_k: float
    air_mass_kg: float
    vent_occupied_kg_s: float  # 1.5 air changes per hour
    vent_empty_kg_s: float  # 0.5 air changes per hour
    neighbours: tuple[str, ...]  # those that are zones of this building
    solar_aperture_m2: float  # window area x 0.4 (shading and transmittance)
    base_plug_w: float
    kitchen: bool
    meeting: bool

    @classmethod
    def of(cls, zone: ZoneSim, zone_ids: set[str]) -> _ZoneConstants:
        spec = zone.spec
        return cls(
            capacitance_j_k=zone.capacitance_j_k,
            ua_external_w_k=zone.ua_external_w_k,
            air_mass_kg=zone.air_mass_kg,
            vent_occupied_kg_s=1.5 * spec.area_m2 * spec.height_m * AIR_DENSITY / 3600,
            vent_empty_kg_s=0.5 * spec.area_m2 * spec.height_m * AIR_DENSITY / 3600,
            neighbours=tuple(n for n in spec.neighbours if n in zone_ids),
            solar_aperture_m2=spec.windows.area_m2 * 0.4,
            base_plug_w=spec.area_m2 * 2.0,
            kitchen="kitchen" in spec.id,
            meeting="meeting" in spec.id,
        )


@dataclass
class ZoneSim:
    spec: Zone
    temperature_c: float = 20.0
    humidity_ratio: float = 0.007
    heating_sp_c: float = 20.0
    cooling_sp_c: float = 26.0
    light_level_pct: float = 0.0
    dehumidifier: float = 0.0
    occupants: int = 0
    heating_w: float = 0.0
    cooling_w: float = 0.0
    # Cumulative energy, J (thermal for heating/cooling, electric for lights).
    heating_j: float = 0.0
    cooling_j: float = 0.0
    lighting_j: float = 0.0
    sensor_faults: dict[PointKind, str] = field(default_factory=dict)
    frozen_values: dict[PointKind, float] = field(default_factory=dict)

    @property
    def capacitance_j_k(self) -> float:
        # Air plus furnishings and the inner layer of the structure (~60 kJ/K per m2 floor).
        return self.spec.area_m2 * 60e3

    @property
    def ua_external_w_k(self) -> float:
        return self.spec.area_m2 * 0.8 + self.spec.windows.area_m2 * 2.0

    @property
    def air_mass_kg(self) -> float:
        return self.spec.area_m2 * self.spec.height_m * AIR_DENSITY

    @property
    def electric_light_lux(self) -> float:
        # ~100 lm/W LED luminaires, utilisation factor 0.5.
        return self.spec.lighting_power_w * 50.0 / self.spec.area_m2 * self.light_level_pct / 100


class Building:
    """The simulated building. ``read_point``/``write_point`` are what simulated devices see."""

    NEIGHBOUR_UA_W_K = 40.0

    def __init__(
        self,
        zones: list[Zone],
        start: datetime,
        timezone: str = "UTC",
        seed: int = 1,
        scenario: Scenario | None = None,
    ) -> None:
        from buildingd.sim.weather import scenario_for

        self.tz = ZoneInfo(timezone)
        self.now = start
        self.seed = seed
        self.weather = Weather(scenario or scenario_for(start.astimezone(self.tz)), seed)
        self.occupancy = OccupancyModel(seed)
        self.noise = random.Random(f"noise:{seed}")
        self.zones = {z.id: ZoneSim(z) for z in zones}
        self._constants = {
            zid: _ZoneConstants.of(zone, set(self.zones)) for zid, zone in self.zones.items()
        }
        # The moment ``self.now`` was last looked at: its local time and outdoor conditions.
        self._moment: datetime | None = None
        self._local = start
        self._outdoor: Outdoor | None = None
        self._w_out = 0.0
        outdoor = self.weather.at(start.astimezone(self.tz))
        for zone in self.zones.values():
            # Start near a plausible indoor state for the season.
            zone.temperature_c = 19.0 if outdoor.temperature_c < 15 else 24.0
            zone.humidity_ratio = humidity_ratio(zone.temperature_c, 45.0)
        self.supply_air_sp_c = 14.0
        self.duct_static_sp_pa = 250.0
        self._update_occupancy()

    # --- devices' view -------------------------------------------------------------------
    def read_point(self, zone_id: str | None, kind: PointKind) -> float:
        if zone_id is None:
            return self._building_point(kind)
        zone = self.zones[zone_id]
        fault = zone.sensor_faults.get(kind)
        if fault == "frozen":
            return zone.frozen_values.setdefault(kind, self._zone_point(zone, kind))
        if fault == "out_of_range":
            return -99.9 if kind is PointKind.TEMPERATURE else 9999.0
        return self._zone_point(zone, kind)

    def sensor_failed(self, zone_id: str | None, kind: PointKind) -> bool:
        """True when the sensor is dead (stops answering): the sim driver reports unavailable."""
        return zone_id is not None and self.zones[zone_id].sensor_faults.get(kind) == "dead"

    def write_point(self, zone_id: str | None, kind: PointKind, value: float) -> None:
        if zone_id is None:
            if kind is PointKind.SUPPLY_AIR_TEMPERATURE_SETPOINT:
                self.supply_air_sp_c = value
            elif kind is PointKind.DUCT_STATIC_PRESSURE_SETPOINT:
                self.duct_static_sp_pa = value
            else:
                raise KeyError(f"no writable building point of kind {kind}")
            return
        zone = self.zones[zone_id]
        if kind is PointKind.HEATING_SETPOINT:
            zone.heating_sp_c = value
        elif kind is PointKind.COOLING_SETPOINT:
            zone.cooling_sp_c = value
        elif kind is PointKind.LIGHT_LEVEL:
            zone.light_level_pct = value
        elif kind is PointKind.LIGHT_SWITCH:
            zone.light_level_pct = 100.0 if value >= 0.5 else 0.0
        elif kind is PointKind.DEHUMIDIFIER:
            zone.dehumidifier = 1.0 if value >= 0.5 else 0.0
        else:
            raise KeyError(f"no writable zone point of kind {kind}")

    def inject_fault(self, zone_id: str, kind: PointKind, fault: str | None) -> None:
        """``dead`` (no answer), ``frozen`` (stuck value), ``out_of_range``, or None to repair."""
        zone = self.zones[zone_id]
        if fault is None:
            zone.sensor_faults.pop(kind, None)
            zone.frozen_values.pop(kind, None)
        else:
            zone.sensor_faults[kind] = fault

    def _zone_point(self, zone: ZoneSim, kind: PointKind) -> float:
        if kind is PointKind.TEMPERATURE:
            return round(zone.temperature_c + self.noise.gauss(0.0, 0.03), 2)
        if kind is PointKind.HUMIDITY:
            rh = relative_humidity(zone.temperature_c, zone.humidity_ratio)
            return round(rh + self.noise.gauss(0.0, 0.2), 1)
        if kind is PointKind.OCCUPANCY:
            return 1.0 if zone.occupants > 0 else 0.0
        if kind is PointKind.ILLUMINANCE:
            return round(self._daylight_lux(zone) + zone.electric_light_lux, 0)
        if kind is PointKind.CO2:
            return 420.0 + 450.0 * zone.occupants / max(1.0, zone.spec.area_m2 / 8)
        if kind is PointKind.HEATING_SETPOINT:
            return zone.heating_sp_c
        if kind is PointKind.COOLING_SETPOINT:
            return zone.cooling_sp_c
        if kind is PointKind.LIGHT_LEVEL:
            return zone.light_level_pct
        if kind is PointKind.LIGHT_SWITCH:
            return 1.0 if zone.light_level_pct > 0 else 0.0
        if kind is PointKind.DEHUMIDIFIER:
            return zone.dehumidifier
        if kind is PointKind.POWER:
            return self.zone_power_w(zone)
        raise KeyError(f"zone {zone.spec.id} has no simulated {kind}")

    def _building_point(self, kind: PointKind) -> float:
        if kind is PointKind.POWER:
            return round(self.total_power_w(), 1)
        if kind is PointKind.OUTDOOR_TEMPERATURE:
            return round(self.outdoor().temperature_c, 2)
        if kind is PointKind.SUPPLY_AIR_TEMPERATURE_SETPOINT:
            return self.supply_air_sp_c
        if kind is PointKind.SUPPLY_AIR_TEMPERATURE:
            return self.supply_air_sp_c
        if kind is PointKind.DUCT_STATIC_PRESSURE_SETPOINT:
            return self.duct_static_sp_pa
        if kind is PointKind.DUCT_STATIC_PRESSURE:
            return self.duct_static_sp_pa
        raise KeyError(f"the building has no simulated {kind}")

    # --- physics -------------------------------------------------------------------------
    def local_now(self) -> datetime:
        if self._moment != self.now:
            self._moment, self._local, self._outdoor = self.now, self.now.astimezone(self.tz), None
        return self._local

    def outdoor(self) -> Outdoor:
        local = self.local_now()
        if self._outdoor is None:
            out = self._outdoor = self.weather.at(local)
            self._w_out = humidity_ratio(out.temperature_c, out.humidity_pct)
        return self._outdoor

    def _daylight_lux(self, zone: ZoneSim) -> float:
        if zone.spec.windows.area_m2 <= 0:
            return 0.0
        out = self.outdoor()
        # Daylight factor ~ 0.2 * glazing-to-floor ratio (rule of thumb for side-lit rooms).
        return out.horizontal_lux * 0.2 * zone.spec.windows.area_m2 / zone.spec.area_m2

    def zone_power_w(self, zone: ZoneSim) -> float:
        """Electric power attributable to the zone (heat pump share, lights, plugs)."""
        return (
            zone.heating_w / COP_HEATING
            + zone.cooling_w / COP_COOLING
            + zone.spec.lighting_power_w * zone.light_level_pct / 100
            + zone.occupants * PLUG_PER_PERSON_W
            + zone.dehumidifier * DEHUMIDIFIER_W
        )

    def total_power_w(self) -> float:
        return sum(self.zone_power_w(z) for z in self.zones.values())

    def _update_occupancy(self) -> None:
        local = self.local_now()
        for zid, zone in self.zones.items():
            zone.occupants = self.occupancy.occupants(
                zid, zone.spec.design_occupants, self._constants[zid].meeting, local
            )

    def advance_to(self, moment: datetime) -> None:
        """Integrate up to ``moment`` in steps of at most a minute (explicit Euler is stable
        here: the smallest zone time constant is hours); less than ``MIN_STEP_S`` is left for
        the next call."""
        remaining = (moment - self.now).total_seconds()
        while remaining >= MIN_STEP_S:
            dt = min(MAX_STEP_S, remaining)
            self._step(dt)
            self.now += timedelta(seconds=dt)
            remaining = (moment - self.now).total_seconds()

    def _step(self, dt: float) -> None:
        self._update_occupancy()
        out = self.outdoor()
        w_out = self._w_out
        temps = {zid: z.temperature_c for zid, z in self.zones.items()}
        neighbour_ua = self.NEIGHBOUR_UA_W_K
        for zid, zone in self.zones.items():
            t = zone.temperature_c
            spec = zone.spec
            k = self._constants[zid]
            # Terminal unit: proportional band of 1 K, like a room thermostat.
            zone.heating_w = min(
                spec.heating_capacity_w, max(0.0, (zone.heating_sp_c - t)) * spec.heating_capacity_w
            )
            zone.cooling_w = min(
                spec.cooling_capacity_w, max(0.0, (t - zone.cooling_sp_c)) * spec.cooling_capacity_w
            )
            if zone.heating_sp_c >= zone.cooling_sp_c:  # never fight: heating wins
                zone.cooling_w = 0.0
            q = (
                k.ua_external_w_k * (out.temperature_c - t)
                + sum(neighbour_ua * (temps[n] - t) for n in k.neighbours)
                + zone.heating_w
                - zone.cooling_w
                + zone.occupants * (SENSIBLE_PER_PERSON_W + PLUG_PER_PERSON_W)
                + spec.lighting_power_w * zone.light_level_pct / 100
                + k.solar_aperture_m2 * out.irradiance_w_m2[spec.windows.orientation]
                + k.base_plug_w
            )
            zone.temperature_c = t + q * dt / k.capacitance_j_k
            # Moisture: ventilation (0.5 ach unoccupied, 1.5 ach occupied), people, dehumidifier.
            vent_kg_s = k.vent_occupied_kg_s if zone.occupants else k.vent_empty_kg_s
            source = zone.occupants * MOISTURE_PER_PERSON_KG_S
            if k.kitchen and zone.occupants:
                source += 0.3 / 3600  # cooking and dishwashing
            sink = zone.dehumidifier * DEHUMIDIFIER_KG_S
            dw = (vent_kg_s * (w_out - zone.humidity_ratio) + source - sink) / k.air_mass_kg
            zone.humidity_ratio = max(1e-4, zone.humidity_ratio + dw * dt)
            zone.heating_j += zone.heating_w * dt
            zone.cooling_j += zone.cooling_w * dt
            zone.lighting_j += spec.lighting_power_w * zone.light_level_pct / 100 * dt
