"""Payload formats of MQTT devices (pure): zigbee2mqtt, Tasmota and generic JSON.

* zigbee2mqtt (https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html): state as
  one JSON object on ``zigbee2mqtt/<name>`` (``occupancy``, ``temperature``, ``humidity``,
  ``illuminance``, ``battery``, ``linkquality``, ``state``, ``brightness`` 0-254), availability on
  ``zigbee2mqtt/<name>/availability``, commands as JSON to ``zigbee2mqtt/<name>/set``. Before 2.0
  ``illuminance`` was a raw value and ``illuminance_lux`` the lux; 2.x reports lux in
  ``illuminance``; when ``illuminance_lux`` is present it wins.
* Tasmota (https://tasmota.github.io/docs/MQTT/): ``tele/<topic>/SENSOR`` (nested JSON such
  as ``{"AM2301": {"Temperature": 21.3}}``, addressed as ``AM2301.Temperature``),
  ``tele/<topic>/STATE`` and ``stat/<topic>/RESULT`` (``POWER``, ``Dimmer``),
  ``stat/<topic>/POWER`` (plain ``ON``/``OFF``), ``tele/<topic>/LWT`` (``Online``/``Offline``);
  commands on ``cmnd/<topic>/POWER`` and ``cmnd/<topic>/Dimmer``.
* generic JSON: any topic, a dotted path per point (list indices allowed: ``sensors.0.t``), an
  optional scale, and a command topic with a payload template where ``{value}`` is replaced.

``parse`` never raises: what cannot be used is returned as a problem naming the field and why.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from buildingd.config.mqtt import MqttDevice, MqttPoint
from buildingd.errors import BuildingdError
from buildingd.points import PointKind

TRUE_WORDS = {"on": 1.0, "true": 1.0, "online": 1.0, "occupied": 1.0, "open": 1.0}
FALSE_WORDS = {"off": 0.0, "false": 0.0, "offline": 0.0, "clear": 0.0, "closed": 0.0}
Z2M_BRIGHTNESS_MAX = 254.0


class CommandError(BuildingdError, ValueError):
    """The device format has no way to command this point."""


@dataclass
class Parsed:
    values: dict[str, float] = field(default_factory=dict)
    available: bool | None = None
    problems: list[str] = field(default_factory=list)


def state_topics(device: MqttDevice) -> list[str]:
    t = device.topic
    if device.adapter == "zigbee2mqtt":
        return [f"zigbee2mqtt/{t}", f"zigbee2mqtt/{t}/availability"]
    if device.adapter == "tasmota":
        return [f"tele/{t}/SENSOR", f"tele/{t}/STATE", f"stat/{t}/RESULT", f"stat/{t}/POWER",
                f"tele/{t}/LWT"]  # fmt: skip
    return [t]


def lookup(data: Any, path: str) -> tuple[bool, Any]:
    """Follow a dotted path (``a.b.0.c``) through dicts and lists; (found, value)."""
    node = data
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def to_number(value: Any) -> float:
    """A payload value as a float: numbers, booleans and on/off-like words; ValueError else."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # a JSON integer beyond float range
            raise ValueError("not finite: integer too large") from None
    elif isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return TRUE_WORDS[word]
        if word in FALSE_WORDS:
            return FALSE_WORDS[word]
        try:
            number = float(word)
        except ValueError:
            raise ValueError(f"not a number: {value[:40]!r}") from None
    else:
        raise ValueError(f"not a number: {type(value).__name__}")  # noqa: TRY004 - bad data
    if not math.isfinite(number):
        raise ValueError(f"not finite: {number}")
    return number


def parse(device: MqttDevice, topic: str, payload: bytes) -> Parsed:
    out = Parsed()
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        out.problems.append("payload is not UTF-8")
        return out
    if topic.endswith(("/availability", "/LWT")):
        try:
            found = json.loads(text) if text.startswith("{") else text
        except (ValueError, RecursionError):  # JSONDecodeError, int digit limit, deep nesting
            found = text
        state = found.get("state", "") if isinstance(found, dict) else found
        out.available = str(state).lower() == "online"
        return out
    if device.adapter == "tasmota" and topic.endswith("/POWER"):
        data: Any = {"POWER": text}
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            out.problems.append(f"not JSON: {err.msg} at {err.pos}")
            return out
        except (ValueError, RecursionError) as err:  # int over 4300 digits, nesting too deep
            out.problems.append(f"not JSON: {type(err).__name__}")
            return out
        if not isinstance(data, dict | list):
            out.problems.append(f"JSON of the wrong shape: a {type(data).__name__}")
            return out
    for point in device.points:
        path = point.field
        z2m_lux = device.adapter == "zigbee2mqtt" and isinstance(data, dict)
        if z2m_lux and path == "illuminance" and "illuminance_lux" in data:
            path = "illuminance_lux"  # zigbee2mqtt 1.x: raw + lux
        found, raw = lookup(data, path)
        if not found:
            continue
        try:
            value = to_number(raw) * point.scale
        except ValueError as err:
            out.problems.append(f"{point.id} ({path}): {err}")
            continue
        out.values[point.id] = _from_device(device, point, value, data)
    return out


def _from_device(device: MqttDevice, point: MqttPoint, value: float, data: Any) -> float:
    """Device units to buildingd's: zigbee2mqtt brightness 0-254 to %, and off means 0 %."""
    if device.adapter == "zigbee2mqtt" and point.kind is PointKind.LIGHT_LEVEL:
        if point.field == "brightness":
            value = round(value * 100 / Z2M_BRIGHTNESS_MAX, 1)
        if isinstance(data, dict) and str(data.get("state", "")).upper() == "OFF":
            value = 0.0
    return value


def command(device: MqttDevice, point: MqttPoint, value: float) -> tuple[str, bytes]:
    """Topic and payload that set ``point`` to ``value`` (engineering units)."""
    raw = value / point.scale if point.scale else value
    if device.adapter == "zigbee2mqtt":
        body: dict[str, Any]
        if point.kind is PointKind.LIGHT_LEVEL and point.field == "brightness":
            level = round(value * Z2M_BRIGHTNESS_MAX / 100)
            body = {"state": "ON" if level > 0 else "OFF", "brightness": level}
        elif point.field == "state":
            body = {"state": "ON" if value >= 0.5 else "OFF"}
        else:
            body = {point.field: raw}
        return f"zigbee2mqtt/{device.topic}/set", json.dumps(body).encode()
    if device.adapter == "tasmota":
        if point.field.upper().startswith("POWER"):
            return f"cmnd/{device.topic}/{point.field}", (b"ON" if value >= 0.5 else b"OFF")
        if point.field == "Dimmer":
            return f"cmnd/{device.topic}/Dimmer", str(round(value)).encode()
        raise CommandError(f"{point.id}: Tasmota commands exist for POWER and Dimmer only")
    if device.command_topic is None or device.payload_template is None:
        raise CommandError(f"{point.id}: the device has no command_topic and payload_template")
    number = int(raw) if float(raw).is_integer() else raw
    return device.command_topic, device.payload_template.replace("{value}", str(number)).encode()
