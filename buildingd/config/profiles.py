"""Register maps of common Modbus device classes, reusable from device files by name::

    - id: f1-meeting-thermostat
      driver: modbus-tcp
      profile: room-thermostat
      zone: f1-meeting
      connection: {host: 192.0.2.10}

``room-thermostat``: a wall thermostat/room controller of the kind sold for fan-coil and VAV
zones (temperature and humidity as input registers in tenths, heating/cooling setpoints as
holding registers in tenths, PIR presence as a discrete input).
``lighting-dimmer``: a DALI/0-10 V lighting gateway channel (level in % as a holding register,
0 = off).
Addresses are 0-based protocol addresses (register 30001 in 1-based "Modicon" notation is
input register 0).
"""

from __future__ import annotations

from typing import Any

PROFILES: dict[str, list[dict[str, Any]]] = {
    "room-thermostat": [
        {"id": "temperature", "kind": "temperature", "table": "input_register", "address": 0,
         "type": "int16", "scale": 0.1, "unit": "degC"},
        {"id": "humidity", "kind": "humidity", "table": "input_register", "address": 1,
         "type": "uint16", "scale": 0.1, "unit": "%"},
        {"id": "heating_sp", "kind": "heating_setpoint", "table": "holding_register", "address": 0,
         "type": "int16", "scale": 0.1, "unit": "degC", "writable": True,
         "limits": {"min": 5, "max": 35}},
        {"id": "cooling_sp", "kind": "cooling_setpoint", "table": "holding_register", "address": 1,
         "type": "int16", "scale": 0.1, "unit": "degC", "writable": True,
         "limits": {"min": 15, "max": 35}},
        {"id": "occupancy", "kind": "occupancy", "table": "discrete_input", "address": 0,
         "type": "bool"},
    ],
    "lighting-dimmer": [
        {"id": "level", "kind": "light_level", "table": "holding_register", "address": 0,
         "type": "uint16", "unit": "%", "writable": True, "limits": {"min": 0, "max": 100}},
    ],
}  # fmt: skip


def profile_points(name: str, zone: str | None) -> list[dict[str, Any]]:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}")
    return [{**point, "zone": zone} for point in PROFILES[name]]
