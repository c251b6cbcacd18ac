"""The InfluxDB schema as line protocol: one function per measurement, pure.

Tags are low-cardinality identifiers only (site, zone, device, point, kind, ...); values, free
text and qualities that change often are fields. Timestamps are written in seconds precision
(``s``): readings are reported by exception at most every few seconds, and seconds keep the
lines short on an SD card and in the buffer.
"""

from __future__ import annotations

import functools
import math
from datetime import datetime

# measurement -> (tags, fields) as documented in the README.
SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "reading": (("site", "zone", "device", "point", "kind", "unit"), ("value", "quality")),
    "command": (
        ("site", "zone", "device", "point", "kind"),
        ("value", "ok", "reason", "error"),
    ),
    "zone_state": (
        ("site", "zone", "mode"),
        (
            "temperature_c",
            "humidity_pct",
            "occupied",
            "heating_sp_c",
            "cooling_sp_c",
            "band_low_c",
            "band_high_c",
            "light_level_pct",
            "heating_w",
            "cooling_w",
            "lighting_w",
        ),
    ),
    "zone_learning": (
        ("site", "zone"),
        (
            "heating_k_per_h",
            "cooling_k_per_h",
            "drift_k_per_h",
            "warmup_lead_s",
            "start_bias_s",
            "start_error_s",
            "arrival_in_s",
        ),
    ),
    "event": (("site", "kind", "severity", "source", "zone"), ("level", "message")),
    "negotiation": (
        ("site", "kind", "state"),
        ("conversation", "reason", "target_w", "committed_w", "zones_awarded", "turns", "messages"),
    ),
    "daemon": (
        ("site", "gateway"),
        (
            "uptime_s",
            "zones_degraded",
            "devices_up",
            "devices_down",
            "alerts",
            "bus_messages",
            "telemetry_pending",
            "telemetry_buffered",
            "telemetry_dropped",
            "rss_mb",
        ),
    ),
}

# Event severities as a number too: string fields are not kept by every backend
# (VictoriaMetrics drops them), and Grafana can threshold a number.
SEVERITY_LEVEL = {"info": 0, "warning": 1, "error": 2}


@functools.lru_cache(maxsize=65536)
def _escape_key(text: str) -> str:
    # Line protocol: commas, equals signs and spaces are escaped in tag keys/values and field
    # keys; measurements escape commas and spaces. Cached: the same few thousand keys and ids
    # recur in every line.
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _field(value: float | bool | str) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _escape_string(value)
    if not math.isfinite(value):
        return None  # line protocol has no NaN or infinity
    return repr(float(value))


def line(
    measurement: str,
    tags: dict[str, str | None],
    fields: dict[str, float | bool | str | None],
    ts: datetime,
) -> str:
    tag_text = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(tags.items()) if v)
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = _field(value)
        if text is not None:
            parts.append(f"{_escape_key(key)}={text}")
    if not parts:
        raise ValueError(f"{measurement}: no finite field to write")
    return f"{_escape_key(measurement)}{tag_text} {','.join(parts)} {int(ts.timestamp())}"


def reading_line(
    site: str,
    device_id: str,
    point_id: str,
    zone_id: str | None,
    kind: str,
    unit: str,
    value: float,
    quality: str,
    ts: datetime,
) -> str:
    tags = {"site": site, "zone": zone_id, "device": device_id, "point": point_id}
    tags |= {"kind": kind, "unit": unit}
    return line("reading", tags, {"value": value, "quality": quality}, ts)


def command_line(
    site: str,
    device_id: str,
    point_id: str,
    zone_id: str | None,
    kind: str,
    value: float,
    ok: bool,
    reason: str,
    error: str | None,
    ts: datetime,
) -> str:
    tags = {"site": site, "zone": zone_id, "device": device_id, "point": point_id, "kind": kind}
    fields: dict[str, float | bool | str | None] = {
        "value": value,
        "ok": ok,
        "reason": reason,
        "error": error,
    }
    return line("command", tags, fields, ts)


def zone_state_line(
    site: str,
    zone_id: str,
    mode: str,
    temperature_c: float | None,
    humidity_pct: float | None,
    occupied: bool | None,
    heating_sp_c: float | None,
    cooling_sp_c: float | None,
    band_low_c: float,
    band_high_c: float,
    light_level_pct: float | None,
    heating_w: float | None,
    cooling_w: float | None,
    lighting_w: float | None,
    ts: datetime,
) -> str:
    fields: dict[str, float | bool | str | None] = {
        "temperature_c": temperature_c,
        "humidity_pct": humidity_pct,
        "occupied": occupied,
        "heating_sp_c": heating_sp_c,
        "cooling_sp_c": cooling_sp_c,
        "band_low_c": band_low_c,
        "band_high_c": band_high_c,
        "light_level_pct": light_level_pct,
        "heating_w": heating_w,
        "cooling_w": cooling_w,
        "lighting_w": lighting_w,
    }
    return line("zone_state", {"site": site, "zone": zone_id, "mode": mode}, fields, ts)


def zone_learning_line(
    site: str, zone_id: str, figures: dict[str, float | None], ts: datetime
) -> str:
    """A zone's learned response; ``figures`` holds the schema's fields (None: not learned)."""
    fields: dict[str, float | bool | str | None] = {
        name: figures.get(name) for name in SCHEMA["zone_learning"][1]
    }
    return line("zone_learning", {"site": site, "zone": zone_id}, fields, ts)


def event_line(
    site: str,
    kind: str,
    severity: str,
    source: str,
    zone_id: str | None,
    message: str,
    ts: datetime,
) -> str:
    tags = {"site": site, "kind": kind, "severity": severity, "source": source, "zone": zone_id}
    fields: dict[str, float | bool | str | None] = {
        "level": SEVERITY_LEVEL.get(severity, 0),
        "message": message,
    }
    return line("event", tags, fields, ts)


def negotiation_line(
    site: str,
    kind: str,
    state: str,
    conversation: str,
    reason: str,
    figures: dict[str, float],
    ts: datetime,
) -> str:
    """One line per negotiation transition; ``figures``: target_w, committed_w, zones_awarded,
    turns, messages. The conversation id is a field: it is unique per negotiation."""
    fields: dict[str, float | bool | str | None] = {
        "conversation": conversation,
        "reason": reason,
        **{k: figures.get(k) for k in SCHEMA["negotiation"][1][2:]},
    }
    return line("negotiation", {"site": site, "kind": kind, "state": state}, fields, ts)


def daemon_line(
    site: str, health: dict[str, float | None], ts: datetime, gateway: str | None = None
) -> str:
    """Daemon health; ``health`` keys are the ``daemon`` fields of ``SCHEMA``. ``gateway`` on a
    site over several: each gateway's health is its own series, not one overwriting another."""
    fields: dict[str, float | bool | str | None] = {
        key: health.get(key) for key in SCHEMA["daemon"][1]
    }
    return line("daemon", {"site": site, "gateway": gateway}, fields, ts)
