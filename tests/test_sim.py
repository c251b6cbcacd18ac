"""The simulated building: the RC model's equations, its caches, faults and determinism."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from buildingd.config.loader import Site, load_site
from buildingd.points import PointKind
from buildingd.sim.building import (
    AIR_DENSITY,
    DEHUMIDIFIER_KG_S,
    MOISTURE_PER_PERSON_KG_S,
    PLUG_PER_PERSON_W,
    SENSIBLE_PER_PERSON_W,
    Building,
    humidity_ratio,
    relative_humidity,
)
from tests.conftest import REPO

TZ = ZoneInfo("Europe/Berlin")
MONDAY = datetime(2027, 1, 11, 6, 0, tzinfo=TZ)


@functools.cache
def demo_site() -> Site:
    return load_site(REPO)  # parsed once: loading checks every file and takes a moment


def demo_building(seed: int = 1, start: datetime = MONDAY) -> Building:
    site = demo_site()
    return Building(list(site.zones.values()), start, site.timezone, seed=seed)


def reference_step(building: Building, dt: float) -> dict[str, tuple[float, float]]:
    """The model's equations written out plainly (as in the module docstring), with nothing
    precomputed or cached: the new (temperature, humidity ratio) of every zone after ``dt``."""
    local = building.now.astimezone(building.tz)
    out = building.weather.at(local)
    w_out = humidity_ratio(out.temperature_c, out.humidity_pct)
    temps = {zid: z.temperature_c for zid, z in building.zones.items()}
    new = {}
    for zid, zone in building.zones.items():
        spec, t = zone.spec, zone.temperature_c
        occupants = building.occupancy.occupants(
            zid, spec.design_occupants, "meeting" in zid, local
        )
        heating = min(
            spec.heating_capacity_w, max(0.0, zone.heating_sp_c - t) * spec.heating_capacity_w
        )
        cooling = min(
            spec.cooling_capacity_w, max(0.0, t - zone.cooling_sp_c) * spec.cooling_capacity_w
        )
        if zone.heating_sp_c >= zone.cooling_sp_c:
            cooling = 0.0
        q = (
            (spec.area_m2 * 0.8 + spec.windows.area_m2 * 2.0) * (out.temperature_c - t)
            + sum(40.0 * (temps[n] - t) for n in spec.neighbours if n in temps)
            + heating
            - cooling
            + occupants * (SENSIBLE_PER_PERSON_W + PLUG_PER_PERSON_W)
            + spec.lighting_power_w * zone.light_level_pct / 100
            + spec.windows.area_m2 * 0.4 * out.irradiance_w_m2[spec.windows.orientation]
            + spec.area_m2 * 2.0
        )
        ach = 1.5 if occupants else 0.5
        vent = ach * spec.area_m2 * spec.height_m * AIR_DENSITY / 3600
        source = occupants * MOISTURE_PER_PERSON_KG_S
        if "kitchen" in zid and occupants:
            source += 0.3 / 3600
        air = spec.area_m2 * spec.height_m * AIR_DENSITY
        sink = zone.dehumidifier * DEHUMIDIFIER_KG_S
        dw = (vent * (w_out - zone.humidity_ratio) + source - sink) / air
        new[zid] = (
            t + q * dt / (spec.area_m2 * 60e3),
            max(1e-4, zone.humidity_ratio + dw * dt),
        )
    return new


def test_a_step_computes_exactly_the_equations_of_the_model() -> None:
    # Bit for bit: what the simulator precomputes and caches must not change a single result.
    building = demo_building()
    building.zones["f1-open-office"].heating_sp_c = 22.0
    building.zones["f1-reception"].cooling_sp_c = 18.0  # cooling at once
    building.zones["f2-office-a"].light_level_pct = 60.0
    building.zones["f1-kitchen"].dehumidifier = 1.0
    for _ in range(240):  # 4 hours of morning, through arrival and sunrise
        expected = reference_step(building, 60.0)
        building.advance_to(building.now + timedelta(seconds=60))
        got = {zid: (z.temperature_c, z.humidity_ratio) for zid, z in building.zones.items()}
        assert got == expected


def test_the_outdoor_cache_follows_the_clock() -> None:
    building = demo_building()
    first = building.outdoor()
    assert building.outdoor() is first  # the same moment: computed once
    building.advance_to(building.now + timedelta(hours=3))
    later = building.outdoor()
    assert later == building.weather.at(building.now.astimezone(TZ))
    assert later.temperature_c != first.temperature_c
    assert building.local_now() == building.now.astimezone(TZ)
    # Daylight reaches the sensors only after sunrise (08:00 in the heating scenario).
    lux = building.read_point("f1-open-office", PointKind.ILLUMINANCE)
    assert lux == round(building._daylight_lux(building.zones["f1-open-office"]), 0) > 0


def test_advancing_in_small_reads_leaves_short_remainders_for_later() -> None:
    building = demo_building()
    start = building.now
    building.advance_to(start + timedelta(seconds=3))  # below MIN_STEP_S: no step yet
    assert building.now == start
    building.advance_to(start + timedelta(seconds=150))
    assert building.now == start + timedelta(seconds=150)  # 60 + 60 + 30


def test_the_same_seed_gives_the_same_building_and_another_seed_another() -> None:
    def run(seed: int) -> list[float]:
        building = demo_building(seed)
        readings = []
        for _ in range(120):
            building.advance_to(building.now + timedelta(seconds=30))
            readings.append(building.read_point("f1-open-office", PointKind.TEMPERATURE))
            readings.append(building.read_point("f1-open-office", PointKind.HUMIDITY))
        return readings

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_sensor_faults_dead_frozen_out_of_range_and_repaired() -> None:
    building = demo_building()
    zone = "f1-meeting"
    building.inject_fault(zone, PointKind.TEMPERATURE, "dead")
    assert building.sensor_failed(zone, PointKind.TEMPERATURE)
    assert not building.sensor_failed(zone, PointKind.HUMIDITY)
    building.inject_fault(zone, PointKind.TEMPERATURE, "frozen")
    stuck = building.read_point(zone, PointKind.TEMPERATURE)
    building.zones[zone].heating_sp_c = 30.0
    building.advance_to(building.now + timedelta(hours=1))
    assert building.zones[zone].temperature_c > stuck + 1  # the room warms up...
    assert building.read_point(zone, PointKind.TEMPERATURE) == stuck  # ...the sensor does not
    building.inject_fault(zone, PointKind.HUMIDITY, "out_of_range")
    assert building.read_point(zone, PointKind.HUMIDITY) == 9999.0
    building.inject_fault(zone, PointKind.TEMPERATURE, None)
    building.inject_fault(zone, PointKind.HUMIDITY, None)
    assert not building.zones[zone].sensor_faults
    assert building.read_point(zone, PointKind.TEMPERATURE) == pytest.approx(
        building.zones[zone].temperature_c, abs=0.2
    )


def test_relative_humidity_inverts_the_humidity_ratio() -> None:
    for t_c, rh in ((0.0, 80.0), (21.0, 45.0), (30.0, 60.0)):
        assert relative_humidity(t_c, humidity_ratio(t_c, rh)) == pytest.approx(rh)
