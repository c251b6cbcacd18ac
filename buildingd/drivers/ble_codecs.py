"""Pure decoders for BLE advertisement payloads: BTHome v2, RuuviTag RAWv2, Xiaomi LYWSD03MMC
custom firmware (atc1441 and pvvx layouts). Bytes in, ``Decoded`` or ``DecodeError`` out; no I/O,
no bleak: the BLE driver finds the payload in an advertisement and hands it here.

Value names and units (one table for every format, see ``UNITS``): temperature degC,
humidity %RH, illuminance lux, pressure_pa Pa, battery %, battery_mv mV, co2 ppm, voltage V;
binary sensors (motion, occupancy, ...) are 0.0 or 1.0.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Final

from buildingd import errors


class DecodeError(errors.DecodeError, ValueError):
    """A payload this module cannot turn into a reading (too short, wrong version or format).

    ``format_name`` is the decoder that refused it ("bthome", "ruuvi", "xiaomi").
    """

    def __init__(self, format_name: str, message: str) -> None:
        self.format_name = format_name
        super().__init__(f"{format_name}: {message}")


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded advertisement.

    ``values`` maps a name from ``UNITS`` to a number in that unit; a field the sender marks as
    "not available" is absent, never a placeholder. A quantity sent twice in one packet gets
    ``name``, ``name_2``, ... in order of appearance. ``packet_id`` is the sender's own counter
    (for de-duplication), ``mac`` the address carried inside the payload ("AA:BB:CC:DD:EE:FF"),
    and ``problems`` lists what was wrong but did not make the packet unusable.
    """

    values: dict[str, float]
    packet_id: int | None = None
    mac: str | None = None
    problems: list[str] = field(default_factory=list)


UNITS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "temperature": "degC",
        "dew_point": "degC",
        "humidity": "%",
        "moisture": "%",
        "battery": "%",
        "battery_mv": "mV",
        "voltage": "V",
        "current": "A",
        "power": "W",
        "energy": "kWh",
        "illuminance": "lux",
        "pressure_pa": "Pa",
        "co2": "ppm",
        "tvoc": "ug/m3",
        "pm25": "ug/m3",
        "pm10": "ug/m3",
        "mass_kg": "kg",
        "mass_lb": "lb",
        "distance_mm": "mm",
        "distance_m": "m",
        "duration": "s",
        "speed": "m/s",
        "acceleration": "m/s2",
        "gyroscope": "deg/s",
        "rotation": "deg",
        "direction": "deg",
        "rotational_speed": "rpm",
        "precipitation": "mm",
        "volume_l": "L",
        "volume_ml": "mL",
        "volume_storage": "L",
        "volume_flow_rate": "m3/h",
        "water": "L",
        "gas": "m3",
        "conductivity": "uS/cm",
        "uv_index": "",
        "count": "",
        "channel": "",
        "light_level": "",
        "timestamp": "s since the Unix epoch",
        "button": "event code",  # 0 none, 1 press, 2 double, 3 triple, 4 long, ...
        "dimmer": "steps",  # negative: rotated left
        "acceleration_x_mg": "mG",
        "acceleration_y_mg": "mG",
        "acceleration_z_mg": "mG",
        "tx_power_dbm": "dBm",
        "movement_counter": "",
        "reed_switch": "0/1",
        "trigger_output": "0/1",
        # binary sensors: 1.0 means detected / open / on / low / problem
        "generic_boolean": "0/1",
        "power_on": "0/1",
        "opening": "0/1",
        "battery_low": "0/1",
        "battery_charging": "0/1",
        "carbon_monoxide": "0/1",
        "cold": "0/1",
        "connectivity": "0/1",
        "door": "0/1",
        "garage_door": "0/1",
        "gas_detected": "0/1",
        "heat": "0/1",
        "light": "0/1",
        "lock": "0/1",
        "moisture_detected": "0/1",
        "motion": "0/1",
        "moving": "0/1",
        "occupancy": "0/1",
        "plug": "0/1",
        "presence": "0/1",
        "problem": "0/1",
        "running": "0/1",
        "safety": "0/1",
        "smoke": "0/1",
        "sound": "0/1",
        "tamper": "0/1",
        "vibration": "0/1",
        "window": "0/1",
    }
)


def uuid16(short: int) -> str:
    """The 128-bit form of a 16-bit Bluetooth SIG UUID, as BlueZ and bleak spell it."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


# Where each payload travels in an advertisement (keys of bleak's service_data and
# manufacturer_data; those values exclude the UUID and the company id).
BTHOME_SERVICE_UUID: Final = uuid16(0xFCD2)
ENVIRONMENTAL_SENSING_UUID: Final = uuid16(0x181A)  # atc1441 and pvvx custom formats
RUUVI_COMPANY_ID: Final = 0x0499


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def _scaled(raw: int, scale: Fraction) -> float:
    # Exact rational arithmetic, then one rounding: 2506 * 0.01 in floats is 25.060000000000002,
    # float(Fraction(2506, 100)) is the float nearest 25.06.
    return float(raw * scale)


# ---------------------------------------------------------------------------------------------
# BTHome v2, service data UUID 0xFCD2 (https://bthome.io/format/)
#
#   byte 0   device information: bit 0 encrypted, bit 1 MAC included (6 bytes follow, least
#            significant byte first), bit 2 trigger based (sends on change, irregularly; not
#            surfaced: silence from such a sender is normal), bits 5-7 BTHome version (must be 2)
#   then     objects: an object id byte, then a little-endian value whose length the id fixes
#            (0x53 text and 0x54 raw carry a length byte first). An id this table does not know
#            has an unknown length, so nothing after it can be parsed.
#   encrypted: AES-CCM payload + 4-byte counter + 4-byte MIC; needs a key, not supported here.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Obj:
    name: str | None  # None: sized and skipped (device information)
    length: int
    signed: bool
    scale: Fraction


def _o(name: str | None, length: int = 1, scale: str = "1", *, signed: bool = False) -> _Obj:
    return _Obj(name, length, signed, Fraction(scale))


# Object ids, lengths and factors from the bthome.io/format tables (sensor data, binary sensor
# data, events, device information). Several ids measure one quantity at another resolution;
# they share a name (temperature is 0x02, 0x45, 0x57 or 0x58).
_BTHOME: Final[Mapping[int, _Obj]] = MappingProxyType(
    {
        0x00: _o(None),  # packet id, uint8: goes to Decoded.packet_id
        0x01: _o("battery"),
        0x02: _o("temperature", 2, "0.01", signed=True),
        0x03: _o("humidity", 2, "0.01"),
        0x04: _o("pressure_pa", 3),  # sent in 0.01 hPa, which is 1 Pa
        0x05: _o("illuminance", 3, "0.01"),
        0x06: _o("mass_kg", 2, "0.01"),
        0x07: _o("mass_lb", 2, "0.01"),
        0x08: _o("dew_point", 2, "0.01", signed=True),
        0x09: _o("count"),
        0x0A: _o("energy", 3, "0.001"),
        0x0B: _o("power", 3, "0.01"),
        0x0C: _o("voltage", 2, "0.001"),
        0x0D: _o("pm25", 2),
        0x0E: _o("pm10", 2),
        0x0F: _o("generic_boolean"),  # binary sensors: one byte, 0 or 1
        0x10: _o("power_on"),
        0x11: _o("opening"),
        0x12: _o("co2", 2),
        0x13: _o("tvoc", 2),
        0x14: _o("moisture", 2, "0.01"),
        0x15: _o("battery_low"),
        0x16: _o("battery_charging"),
        0x17: _o("carbon_monoxide"),
        0x18: _o("cold"),
        0x19: _o("connectivity"),
        0x1A: _o("door"),
        0x1B: _o("garage_door"),
        0x1C: _o("gas_detected"),
        0x1D: _o("heat"),
        0x1E: _o("light"),
        0x1F: _o("lock"),
        0x20: _o("moisture_detected"),
        0x21: _o("motion"),
        0x22: _o("moving"),
        0x23: _o("occupancy"),
        0x24: _o("plug"),
        0x25: _o("presence"),
        0x26: _o("problem"),
        0x27: _o("running"),
        0x28: _o("safety"),
        0x29: _o("smoke"),
        0x2A: _o("sound"),
        0x2B: _o("tamper"),
        0x2C: _o("vibration"),
        0x2D: _o("window"),
        0x2E: _o("humidity"),
        0x2F: _o("moisture"),
        0x3A: _o("button"),
        0x3C: _o("dimmer", 2),  # event byte then steps byte: decoded in decode_bthome_v2
        0x3D: _o("count", 2),
        0x3E: _o("count", 4),
        0x3F: _o("rotation", 2, "0.1", signed=True),
        0x40: _o("distance_mm", 2),
        0x41: _o("distance_m", 2, "0.1"),
        0x42: _o("duration", 3, "0.001"),
        0x43: _o("current", 2, "0.001"),
        0x44: _o("speed", 2, "0.01"),
        0x45: _o("temperature", 2, "0.1", signed=True),
        0x46: _o("uv_index", 1, "0.1"),
        0x47: _o("volume_l", 2, "0.1"),
        0x48: _o("volume_ml", 2),
        0x49: _o("volume_flow_rate", 2, "0.001"),
        0x4A: _o("voltage", 2, "0.1"),
        0x4B: _o("gas", 3, "0.001"),
        0x4C: _o("gas", 4, "0.001"),
        0x4D: _o("energy", 4, "0.001"),
        0x4E: _o("volume_l", 4, "0.001"),
        0x4F: _o("water", 4, "0.001"),
        0x50: _o("timestamp", 4),
        0x51: _o("acceleration", 2, "0.001"),
        0x52: _o("gyroscope", 2, "0.001"),
        0x53: _o(None, 0),  # text: length byte, UTF-8; not a number
        0x54: _o(None, 0),  # raw: length byte, bytes; not a number
        0x55: _o("volume_storage", 4, "0.001"),
        0x56: _o("conductivity", 2),
        0x57: _o("temperature", 1, signed=True),
        0x58: _o("temperature", 1, "0.35", signed=True),
        0x59: _o("count", 1, signed=True),
        0x5A: _o("count", 2, signed=True),
        0x5B: _o("count", 4, signed=True),
        0x5C: _o("power", 4, "0.01", signed=True),
        0x5D: _o("current", 2, "0.001", signed=True),
        0x5E: _o("direction", 2, "0.01"),
        0x5F: _o("precipitation", 2, "0.1"),
        0x60: _o("channel"),
        0x61: _o("rotational_speed", 2),
        0x62: _o("speed", 4, "0.000001", signed=True),
        0x63: _o("acceleration", 4, "0.000001", signed=True),
        0x64: _o("light_level"),
        0xF0: _o(None, 2),  # device type id
        0xF1: _o(None, 4),  # firmware version, 4 parts
        0xF2: _o(None, 3),  # firmware version, 3 parts
    }
)
_BTHOME_VARIABLE: Final = frozenset({0x53, 0x54})


def _put(values: dict[str, float], name: str, value: float) -> None:
    key, n = name, 2
    while key in values:
        key, n = f"{name}_{n}", n + 1
    values[key] = value


def decode_bthome_v2(service_data: bytes) -> Decoded:
    """Decode BTHome v2 service data (the bytes after the 0xFCD2 UUID)."""
    if not service_data:
        raise DecodeError("bthome", "empty service data")
    info = service_data[0]
    version = info >> 5
    if version != 2:
        raise DecodeError("bthome", f"BTHome version {version}, only version 2 is decoded")
    if info & 0x01:
        raise DecodeError("bthome", "unsupported: encrypted (no key configured)")
    pos = 1
    mac: str | None = None
    if info & 0x02:
        if len(service_data) < 7:
            raise DecodeError("bthome", "MAC-included flag set but fewer than 6 MAC bytes")
        mac = _mac(service_data[6:0:-1])  # sent least significant byte first
        pos = 7
    values: dict[str, float] = {}
    packet_id: int | None = None
    problems: list[str] = []
    while pos < len(service_data):
        object_id = service_data[pos]
        obj = _BTHOME.get(object_id)
        if obj is None:
            problems.append(
                f"unknown object id 0x{object_id:02X} at byte {pos}: its size is unknown, "
                f"{len(service_data) - pos} bytes not decoded"
            )
            break
        start = pos + 1
        length = obj.length
        if object_id in _BTHOME_VARIABLE:
            if start >= len(service_data):
                problems.append(f"object 0x{object_id:02X} at byte {pos} has no length byte")
                break
            length = service_data[start]
            start += 1
        end = start + length
        if end > len(service_data):
            problems.append(
                f"object 0x{object_id:02X} at byte {pos} needs {length} bytes, "
                f"{len(service_data) - start} left"
            )
            break
        chunk = service_data[start:end]
        pos = end
        if object_id == 0x00:
            packet_id = chunk[0]
        elif object_id == 0x3C:
            event, steps = chunk  # event 1 rotate left, 2 rotate right
            _put(values, "dimmer", float(-steps if event == 1 else steps if event == 2 else 0))
        elif obj.name is not None:
            raw = int.from_bytes(chunk, "little", signed=obj.signed)
            _put(values, obj.name, _scaled(raw, obj.scale))
    return Decoded(values=values, packet_id=packet_id, mac=mac, problems=problems)


# ---------------------------------------------------------------------------------------------
# RuuviTag data format 5 "RAWv2", manufacturer data of company 0x0499, 24 bytes, big-endian
# (https://docs.ruuvi.com/communication/bluetooth-advertisements/data-format-5-rawv2):
#
#   offset  field                                               not available
#   0       data format = 5
#   1-2     temperature, int16, 0.005 degC                      0x8000
#   3-4     humidity, uint16, 0.0025 %RH                        0xFFFF
#   5-6     pressure, uint16, 1 Pa above 50 000 Pa              0xFFFF
#   7-12    acceleration x, y, z, int16 each, mG                0x8000
#   13-14   power info: top 11 bits battery mV above 1600,      2047
#           low 5 bits TX power in 2 dBm steps above -40 dBm    31
#   15      movement counter, uint8                             255
#   16-17   measurement sequence number, uint16                 0xFFFF
#   18-23   MAC address, most significant byte first            FF:FF:FF:FF:FF:FF
# ---------------------------------------------------------------------------------------------

_RUUVI: Final = struct.Struct(">BhHHhhhHBH6s")
_RUUVI_COMPANY_PREFIX: Final = RUUVI_COMPANY_ID.to_bytes(2, "little")


def decode_ruuvi_rawv2(manufacturer_data: bytes) -> Decoded:
    """Decode RuuviTag RAWv2 manufacturer data (the bytes after the 0x0499 company id).

    The payload with the company id still in front (``99 04 05 ...``) is accepted too.
    """
    data = manufacturer_data
    if len(data) >= 2 and data[:2] == _RUUVI_COMPANY_PREFIX:
        data = data[2:]
    if not data:
        raise DecodeError("ruuvi", "empty manufacturer data")
    if data[0] != 5:
        raise DecodeError(
            "ruuvi", f"data format {data[0]}, only format 5 (RAWv2) is decoded; update the tag"
        )
    if len(data) < _RUUVI.size:
        raise DecodeError("ruuvi", f"RAWv2 needs {_RUUVI.size} bytes, got {len(data)}")
    problems: list[str] = []
    if len(data) > _RUUVI.size:
        problems.append(f"{len(data) - _RUUVI.size} bytes after the 24-byte RAWv2 payload ignored")
    (_, temp, hum, pres, ax, ay, az, power, movement, seq, mac_raw) = _RUUVI.unpack_from(data)
    battery, tx = power >> 5, power & 0x1F
    candidates: dict[str, float | None] = {
        "temperature": None if temp == -0x8000 else temp / 200,
        "humidity": None if hum == 0xFFFF else hum / 400,
        "pressure_pa": None if pres == 0xFFFF else float(pres + 50_000),
        "acceleration_x_mg": None if ax == -0x8000 else float(ax),
        "acceleration_y_mg": None if ay == -0x8000 else float(ay),
        "acceleration_z_mg": None if az == -0x8000 else float(az),
        "battery_mv": None if battery == 0x7FF else float(battery + 1600),
        "tx_power_dbm": None if tx == 0x1F else float(tx * 2 - 40),
        "movement_counter": None if movement == 0xFF else float(movement),
    }
    return Decoded(
        values={k: v for k, v in candidates.items() if v is not None},
        packet_id=None if seq == 0xFFFF else seq,
        mac=None if mac_raw == b"\xff" * 6 else _mac(mac_raw),
        problems=problems,
    )


# ---------------------------------------------------------------------------------------------
# Xiaomi LYWSD03MMC with custom firmware, service data UUID 0x181A, told apart by length.
# ---------------------------------------------------------------------------------------------

_ATC1441: Final = struct.Struct(">6shBBHB")  # 13 bytes
_PVVX: Final = struct.Struct("<6shHHBBB")  # 15 bytes


def decode_xiaomi_custom(service_data: bytes) -> Decoded:
    """Decode LYWSD03MMC custom-firmware service data (the bytes after the 0x181A UUID).

    atc1441 format, 13 bytes, big-endian
    (https://github.com/atc1441/ATC_MiThermometer#advertising-format-of-the-custom-firmware):
    0-5 MAC (most significant byte first), 6-7 temperature int16 0.1 degC, 8 humidity uint8 %,
    9 battery uint8 %, 10-11 battery uint16 mV, 12 frame counter uint8.

    pvvx custom format, 15 bytes, little-endian
    (https://github.com/pvvx/ATC_MiThermometer#custom-format-all-data-little-endian):
    0-5 MAC (least significant byte first), 6-7 temperature int16 0.01 degC,
    8-9 humidity uint16 0.01 %, 10-11 battery uint16 mV, 12 battery uint8 %,
    13 measurement counter uint8, 14 flags (bit 0 reed switch input, bit 1 GPIO_TRG output,
    bits 2-4 trigger settings and events).
    """
    if len(service_data) == _ATC1441.size:
        mac_raw, temp, hum, battery, battery_mv, counter = _ATC1441.unpack(service_data)
        values = {
            "temperature": temp / 10,
            "humidity": float(hum),
            "battery": float(battery),
            "battery_mv": float(battery_mv),
        }
        return Decoded(values=values, packet_id=counter, mac=_mac(mac_raw))
    if len(service_data) == _PVVX.size:
        mac_raw, temp, hum, battery_mv, battery, counter, flags = _PVVX.unpack(service_data)
        values = {
            "temperature": temp / 100,
            "humidity": hum / 100,
            "battery": float(battery),
            "battery_mv": float(battery_mv),
            "reed_switch": float(flags & 0x01),
            "trigger_output": float((flags >> 1) & 0x01),
        }
        return Decoded(values=values, packet_id=counter, mac=_mac(mac_raw[::-1]))
    raise DecodeError(
        "xiaomi",
        f"{len(service_data)} bytes of 0x181A service data; expected 13 (atc1441 format) or "
        "15 (pvvx custom format); encrypted and other layouts are not supported",
    )


_DECODERS: Final = MappingProxyType(
    {"bthome": decode_bthome_v2, "ruuvi": decode_ruuvi_rawv2, "xiaomi": decode_xiaomi_custom}
)
FORMATS: Final = tuple(_DECODERS)
_SUFFIX: Final = re.compile(r"_\d+$")


def base_name(value_name: str) -> str:
    """The ``UNITS`` key of a value name: "temperature_2" -> "temperature"."""
    return _SUFFIX.sub("", value_name) if value_name not in UNITS else value_name


def decode(format_name: str, data: bytes) -> Decoded:
    """Decode ``data`` as ``format_name`` ("bthome", "ruuvi" or "xiaomi").

    Raises ``DecodeError`` and nothing else, whatever the bytes (property-tested).
    """
    decoder = _DECODERS.get(format_name)
    if decoder is None:
        raise DecodeError(format_name, f"unknown format, expected one of {', '.join(FORMATS)}")
    return decoder(data)


# ---------------------------------------------------------------------------------------------
# GATT characteristic values: numbers little-endian, as the Bluetooth Core Specification sends
# multi-octet values (Vol 3, Part G, 3.3.3.5 and the GATT Specification Supplement); float32 is
# IEEE 754 binary32 (devices with the SIG's medfloat types are declared as integers + scale).
# ---------------------------------------------------------------------------------------------

_GATT_STRUCT: Final = MappingProxyType(
    {
        "bool": struct.Struct("<B"),
        "int8": struct.Struct("<b"),
        "uint8": struct.Struct("<B"),
        "int16": struct.Struct("<h"),
        "uint16": struct.Struct("<H"),
        "int32": struct.Struct("<i"),
        "uint32": struct.Struct("<I"),
        "float32": struct.Struct("<f"),
    }
)


def decode_gatt(data: bytes, type_name: str, scale: float = 1.0) -> float:
    """A characteristic value in engineering units (raw × ``scale``); ``DecodeError`` otherwise."""
    layout = _GATT_STRUCT[type_name]
    if len(data) != layout.size:
        raise DecodeError("gatt", f"{type_name} needs {layout.size} bytes, got {len(data)}")
    (raw,) = layout.unpack(data)
    if type_name == "bool":
        if raw > 1:
            raise DecodeError("gatt", f"bool must be 0 or 1, got {raw}")
        return float(raw)
    value = float(raw) * scale
    if value != value or value in (float("inf"), float("-inf")):
        raise DecodeError("gatt", f"{type_name} value is not a finite number")
    return value


def encode_gatt(value: float, type_name: str, scale: float = 1.0) -> bytes:
    """The bytes that carry ``value`` (engineering units, rounded to the nearest step of
    ``scale``), or ``ValueError`` when the type cannot hold it: refused, not wrapped or clamped."""
    layout = _GATT_STRUCT[type_name]
    raw = value / scale
    if type_name == "float32":
        try:
            return layout.pack(raw)
        except OverflowError:
            raise ValueError(f"{value} is outside the range of float32") from None
    if type_name == "bool" and raw not in (0.0, 1.0):
        raise ValueError(f"a bool takes 0 or 1, not {value}")
    whole = round(raw)  # quantised to the scale, as the device holds it (see ``representable``)
    try:
        return layout.pack(whole)
    except struct.error:
        raise ValueError(f"{value} is outside the range of {type_name}") from None
