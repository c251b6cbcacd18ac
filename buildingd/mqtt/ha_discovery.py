"""Home Assistant MQTT discovery payloads (pure): what each zone and device is announced as, and
the payloads those entities read (zone state, rounded) and send (light commands).

Built from the validated site only; the bridge publishes them retained and clears the ones it no
longer announces. Schemas: homeassistant.components.mqtt.<platform> (checked by the tests against
Home Assistant 2024.3 itself). Units and precisions here are the ones the bridge rounds to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from buildingd import __version__
from buildingd.agents.messages import ZoneStateMsg
from buildingd.config.loader import Site
from buildingd.mqtt import payload as strict_json
from buildingd.mqtt.connection import status_topic
from buildingd.points import PointKind

OBJECT_ID = re.compile(r"[^a-zA-Z0-9_-]")
# Presets a person may ask for from Home Assistant (the G36 modes); the zone also reports
# "warmup" and "hold" (safe hold), listed so Home Assistant shows them, refused as commands.
COMMANDABLE_MODES = ("occupied", "standby", "unoccupied")
PRESETS = (*COMMANDABLE_MODES, "warmup", "hold")
TEMP_STEP_C = 0.1  # the resolution setpoint requests are rounded to (and written with)
# Decimals on the wire per quantity: the precision the sensors have, no float noise.
DECIMALS = {"temperature_c": 1, "humidity_pct": 1, "illuminance_lux": 0, "power_w": 0,
            "energy_kwh": 3, "light_level_pct": 0, "setpoint_c": 2}  # fmt: skip


# Meter points as sensors: label, device_class, state_class, decimals. Energy counters are
# total_increasing, so Home Assistant's Energy dashboard takes them.
METERS = {
    PointKind.POWER: ("Power", "power", "measurement", DECIMALS["power_w"]),
    PointKind.ENERGY: ("Energy", "energy", "total_increasing", DECIMALS["energy_kwh"]),
}


def object_id(text: str) -> str:
    return OBJECT_ID.sub("_", text)


@dataclass(frozen=True)
class Topics:
    """Where the bridge publishes and listens, under ``base`` (``<prefix>/<site>``)."""

    base: str

    def zone_state(self, zone_id: str) -> str:
        return f"{self.base}/zone/{zone_id}/state"

    def zone_set(self, zone_id: str, what: str) -> str:
        return f"{self.base}/zone/{zone_id}/set/{what}"

    def light_state(self, zone_id: str) -> str:
        return f"{self.base}/zone/{zone_id}/light"

    def last_request(self, zone_id: str) -> str:
        return f"{self.base}/zone/{zone_id}/request/last"

    def point_state(self, device_id: str, point_id: str) -> str:
        return f"{self.base}/device/{device_id}/{point_id}"

    def problem(self, subject: str) -> str:
        return f"{self.base}/problem/{subject}"


def setpoint_limits(site: Site, zone_id: str) -> tuple[float, float]:
    """(min, max) setpoint a request may ask for: the policy's scheduled bands widened by the
    vote/override offset limit, inside the safety band."""
    policy = site.policy_for(zone_id)
    comfort, limit = policy.comfort, policy.negotiation.vote_max_offset_k
    bands = (comfort.occupied, comfort.standby, comfort.unoccupied)
    low = max(policy.safety.min_c, min(b.heating_c for b in bands) - limit)
    high = min(policy.safety.max_c, max(b.cooling_c for b in bands) + limit)
    return round(low, 1), round(high, 1)


def zone_kinds(site: Site, zone_id: str) -> set[PointKind]:
    return {
        p.kind
        for d in site.devices.values()
        if d.enabled
        for p in d.points_list()
        if p.zone == zone_id
    }


@dataclass(frozen=True)
class Availability:
    """Whose status topic an entity's availability follows. On a site over gateways: the
    gateway running its zone or device, when that gateway's status is on this broker (a broker
    the gateways share); else this gateway's (a broker of its own, where only it says whether
    it is up). On a site of one gateway: the site's ``status``."""

    gateway: str | None = None  # this gateway; None on a site of one
    on_broker: frozenset[str] = frozenset()  # gateways whose status this broker has

    def topic(self, base: str, owner: str | None) -> str:
        if self.gateway is None:
            return status_topic(base, None)
        return status_topic(base, owner if owner in self.on_broker else self.gateway)


def discovery_configs(
    site: Site,
    prefix: str,
    base: str,
    configuration_url: str | None = None,
    availability: Availability = Availability(),
) -> dict[str, dict[str, Any]]:
    """Every discovery config of the site by topic (zones and devices)."""
    configs: dict[str, dict[str, Any]] = {}
    node = object_id(f"buildingd_{site.site_id}")
    for zone_id, zone in site.zones.items():
        for topic, config in zone_configs(site, prefix, base, zone_id, zone.name or zone_id,
                                          configuration_url, availability):  # fmt: skip
            configs[topic] = config
    for device_id, device in site.devices.items():
        if not device.enabled:
            continue
        did = object_id(device_id)
        dev = {
            "identifiers": [f"{node}_dev_{did}"],
            "name": device.name or device_id,
            "manufacturer": "buildingd",
            "model": f"{device.driver} device",
            "sw_version": __version__,
        }
        if configuration_url:
            dev["configuration_url"] = f"{configuration_url}/api/devices"
        owner = site.gateways.device_gateway.get(device_id)
        common = _availability(availability.topic(base, owner)) | {"device": dev}
        for point in device.points_list():
            if point.kind not in METERS:
                continue
            label, device_class, state_class, digits = METERS[point.kind]
            pid = object_id(point.id)
            configs[f"{prefix}/sensor/{node}/{did}_{pid}/config"] = {
                **common, "name": _meter_name(label, point.id),
                "unique_id": f"{node}_{did}_{pid}", "device_class": device_class,
                "state_class": state_class,
                "state_topic": Topics(base).point_state(device_id, point.id),
                "unit_of_measurement": point.effective_unit,  # as the readings come (W, kWh)
                "suggested_display_precision": digits,
            }  # fmt: skip
        configs[f"{prefix}/binary_sensor/{node}/{did}_problem/config"] = {
            **common, "name": "Open alert", "unique_id": f"{node}_{did}_problem",
            "device_class": "problem", "entity_category": "diagnostic",
            "state_topic": Topics(base).problem(device_id),
        }  # fmt: skip
    return configs


def _meter_name(label: str, point_id: str) -> str:
    """ "Power" for a point called power, "Power hvac" for one called hvac."""
    return label if point_id == label.lower() else f"{label} {point_id}"


def _availability(topic: str) -> dict[str, Any]:
    return {
        "availability_topic": topic,
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def zone_configs(
    site: Site,
    prefix: str,
    base: str,
    zone_id: str,
    zone_name: str,
    configuration_url: str | None = None,
    availability: Availability = Availability(),
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) pairs announcing one zone: the entities its points allow."""
    node = object_id(f"buildingd_{site.site_id}")
    zid = object_id(zone_id)
    topics = Topics(base)
    state = topics.zone_state(zone_id)
    kinds = zone_kinds(site, zone_id)
    device: dict[str, Any] = {
        "identifiers": [f"{node}_{zid}"],
        "name": zone_name,
        "manufacturer": "buildingd",
        "model": "zone",
        "sw_version": __version__,
        "suggested_area": zone_name,
    }
    if configuration_url:
        device["configuration_url"] = f"{configuration_url}/api/zones/{zone_id}"
    owner = site.gateways.zone_gateway.get(zone_id)
    common = _availability(availability.topic(base, owner)) | {"device": device}
    low, high = setpoint_limits(site, zone_id)
    out: list[tuple[str, dict[str, Any]]] = []
    has_climate = bool(kinds & {PointKind.TEMPERATURE, PointKind.HEATING_SETPOINT,
                                PointKind.COOLING_SETPOINT})  # fmt: skip
    if has_climate:
        climate: dict[str, Any] = {
            **common,
            "name": None,
            "unique_id": f"{node}_{zid}_climate",
            "modes": ["heat_cool"],
            "mode_state_topic": state,
            "mode_state_template": "{{ 'heat_cool' }}",
            "action_topic": state,
            "action_template": "{{ value_json.hvac_action }}",
            "current_temperature_topic": state,
            "current_temperature_template": "{{ value_json.temperature_c }}",
            "temperature_low_state_topic": state,
            "temperature_low_state_template": "{{ value_json.heating_sp_c }}",
            "temperature_high_state_topic": state,
            "temperature_high_state_template": "{{ value_json.cooling_sp_c }}",
            # Home Assistant sends low and high as two messages; the bridge settles them into
            # one request (see bridge.RANGE_SETTLE_S).
            "temperature_low_command_topic": topics.zone_set(zone_id, "heating_sp"),
            "temperature_high_command_topic": topics.zone_set(zone_id, "cooling_sp"),
            "preset_mode_state_topic": state,
            "preset_mode_value_template": "{{ value_json.mode }}",
            "preset_mode_command_topic": topics.zone_set(zone_id, "mode"),
            "preset_modes": list(PRESETS),
            "min_temp": low,
            "max_temp": high,
            "temp_step": TEMP_STEP_C,
            "precision": 0.1,
            "temperature_unit": "C",
        }
        if PointKind.HUMIDITY in kinds:
            climate["current_humidity_topic"] = state
            climate["current_humidity_template"] = "{{ value_json.humidity_pct }}"
        out.append((f"{prefix}/climate/{node}/{zid}/config", climate))

    def sensor(key: str, name: str, device_class: str, unit: str, field: str, digits: int) -> None:
        out.append((f"{prefix}/sensor/{node}/{zid}_{key}/config", {
            **common, "name": name, "unique_id": f"{node}_{zid}_{key}",
            "device_class": device_class, "state_class": "measurement",
            "unit_of_measurement": unit, "state_topic": state,
            "value_template": f"{{{{ value_json.{field} }}}}",
            "suggested_display_precision": digits,
        }))  # fmt: skip

    if PointKind.TEMPERATURE in kinds:
        sensor("temperature", "Temperature", "temperature", "°C", "temperature_c", 1)
    if PointKind.HUMIDITY in kinds:
        sensor("humidity", "Humidity", "humidity", "%", "humidity_pct", 1)
    if PointKind.ILLUMINANCE in kinds:
        sensor("illuminance", "Illuminance", "illuminance", "lx", "illuminance_lux", 0)
    if PointKind.OCCUPANCY in kinds:
        out.append((f"{prefix}/binary_sensor/{node}/{zid}_occupancy/config", {
            **common, "name": "Occupancy", "unique_id": f"{node}_{zid}_occupancy",
            "device_class": "occupancy", "state_topic": state,
            "value_template": "{{ 'ON' if value_json.occupied else 'OFF' }}",
        }))  # fmt: skip
    if kinds & {PointKind.LIGHT_LEVEL, PointKind.LIGHT_SWITCH}:
        light: dict[str, Any] = {
            **common, "name": "Lights", "unique_id": f"{node}_{zid}_light",
            "schema": "json",  # one command message carries state and brightness together
            "state_topic": topics.light_state(zone_id),
            "command_topic": topics.zone_set(zone_id, "light"),
        }  # fmt: skip
        if PointKind.LIGHT_LEVEL in kinds:
            light |= {"brightness": True, "brightness_scale": 100}  # percent, as the zone's
        out.append((f"{prefix}/light/{node}/{zid}/config", light))
    out.append((f"{prefix}/sensor/{node}/{zid}_last_request/config", {
        **common, "name": "Last request", "unique_id": f"{node}_{zid}_last_request",
        "icon": "mdi:message-reply-text", "entity_category": "diagnostic",
        "state_topic": topics.last_request(zone_id),
        "value_template": "{{ value_json.summary }}",
        "json_attributes_topic": topics.last_request(zone_id),
    }))  # fmt: skip
    out.append((f"{prefix}/binary_sensor/{node}/{zid}_problem/config", {
        **common, "name": "Open alert", "unique_id": f"{node}_{zid}_problem",
        "device_class": "problem", "entity_category": "diagnostic",
        "state_topic": topics.problem(zone_id),
    }))  # fmt: skip
    return out


def rounded(value: float | None, field: str) -> float | int | None:
    """``value`` with the decimals ``field`` has on the wire (an int when none)."""
    if value is None:
        return None
    digits = DECIMALS[field]
    return round(value, digits) if digits else round(value)


def hvac_action(msg: ZoneStateMsg) -> str:
    """Home Assistant's hvac_action from the terminal unit's state: heating below the heating
    setpoint and cooling above the cooling setpoint while it draws power, idle otherwise."""
    t = msg.temperature_c
    if t is None or not msg.hvac_w:
        return "idle"
    if t < msg.heating_sp_c:
        return "heating"
    if t > msg.cooling_sp_c:
        return "cooling"
    return "idle"


def zone_state_body(msg: ZoneStateMsg) -> dict[str, Any]:
    """The retained zone state, rounded to the precision each value has."""
    return {
        "mode": msg.mode,
        "temperature_c": rounded(msg.temperature_c, "temperature_c"),
        "humidity_pct": rounded(msg.humidity_pct, "humidity_pct"),
        "occupied": msg.occupied,
        "illuminance_lux": rounded(msg.illuminance_lux, "illuminance_lux"),
        "heating_sp_c": rounded(msg.heating_sp_c, "setpoint_c"),
        "cooling_sp_c": rounded(msg.cooling_sp_c, "setpoint_c"),
        "light_level_pct": rounded(msg.light_level_pct, "light_level_pct"),
        "hvac_action": hvac_action(msg),
        "timestamp": msg.timestamp.isoformat(),
    }


def light_request(payload: bytes, state: ZoneStateMsg | None) -> float:
    """The level (%) a JSON-schema light command asks for: ``{"state": "ON"|"OFF",
    "brightness": 0..100}``; ON without brightness keeps the current level (full when off)."""
    data = strict_json.loads(payload)
    if not isinstance(data, dict) or data.get("state") not in ("ON", "OFF"):
        raise ValueError('expected {"state": "ON" or "OFF", ...}')
    if data["state"] == "OFF":
        return 0.0
    brightness = data.get("brightness")
    if brightness is None:
        current = state.light_level_pct if state is not None else 0.0
        return current if current > 0 else 100.0
    if isinstance(brightness, bool) or not isinstance(brightness, int | float):
        raise ValueError("brightness must be a number")  # noqa: TRY004 (bad input, one type)
    return float(brightness)
