"""BLE device files in `buildingd check`, and the GATT value codec (pure, no BlueZ)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.drivers.ble_codecs import DecodeError, decode_gatt, encode_gatt
from buildingd.service.cli import main
from tests.test_config_check import _line_of

REPO = Path(__file__).resolve().parent.parent


def test_the_ble_example_passes_check(site_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site_copy / "devices" / "ble.yaml").write_text(
        (REPO / "devices" / "demo-ble.yaml.example").read_text()
    )
    assert main(["check", "--site", str(site_copy)]) == 0, capsys.readouterr().err


def test_broken_ble_devices_name_file_line_and_key(
    site_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = site_copy / "devices" / "bad-ble.yaml"
    bad.write_text(
        "devices:\n"
        "  - id: ruuvi-1\n"
        "    driver: ble\n"
        "    format: ruuvi\n"
        "    address: C8:25:2D:00:00:02\n"
        "    points:\n"
        "      - {id: lux, zone: f1-kitchen, kind: illuminance}\n"
        "      - {id: t, zone: f1-kitchen, kind: temperature, writable: true, "
        "limits: {min: 0, max: 1}}\n"
        "  - id: dimmer-1\n"
        "    driver: ble\n"
        "    format: gatt\n"
        "    address: D0:00:00:00:00:03\n"
        "    points:\n"
        "      - {id: level, zone: f1-kitchen, kind: light_level, type: uint8}\n"
        "  - id: th-3\n"
        "    driver: ble\n"
        "    format: bthome\n"
        "    name_pattern: SBHT-.*\n"
        "    points:\n"
        "      - {id: warm, zone: f1-kitchen, kind: temperature, field: warmth}\n"
    )
    schema = site_copy / "devices" / "bad-ble-schema.yaml"
    schema.write_text(
        "devices:\n"
        "  - id: th-1\n"
        "    driver: ble\n"
        "    format: bthome\n"
        "    address: not-a-mac\n"
        "    points:\n"
        "      - {id: t, zone: f1-kitchen, kind: temperature}\n"
        "  - id: th-2\n"
        "    driver: ble\n"
        "    format: bthome\n"
        "    address: A4:C1:38:00:00:01\n"
        "    name_pattern: ATC_.*\n"
        "    points:\n"
        "      - {id: t, zone: f1-kitchen, kind: temperature}\n"
    )
    assert main(["check", "--site", str(site_copy)]) == 1
    err = capsys.readouterr().err
    assert (
        f"{bad}:{_line_of(bad, 'id: lux')}: devices[0].points[0].field: ruuvi has no "
        "'illuminance'" in err
    )
    assert (
        f"{bad}:{_line_of(bad, 'id: t, zone: f1-kitchen, kind: temperature, writable')}: "
        "devices[0].points[1].writable: advertisements are read-only" in err
    )
    assert (
        f"{bad}:{_line_of(bad, 'id: level')}: devices[1].points[0].characteristic: "
        "a GATT point needs characteristic" in err
    )
    assert (
        f"{bad}:{_line_of(bad, 'id: warm')}: devices[2].points[0].field: BTHome defines no "
        "'warmth'" in err
    )
    assert f"{schema}:{_line_of(schema, 'not-a-mac')}: devices[0].address:" in err
    assert (
        f"{schema}:{_line_of(schema, 'id: th-2')}: devices[1]: "
        "give exactly one of address or name_pattern" in err
    )


@pytest.mark.parametrize(
    ("data", "type_name", "scale", "expected"),
    [
        (b"\x01", "bool", 1.0, 1.0),
        (b"\xff", "int8", 1.0, -1.0),
        (b"\x80", "uint8", 1.0, 128.0),
        (b"\x34\x08", "int16", 0.01, 21.0),  # 0x0834 = 2100: a SIG temperature, 0.01 degC
        (b"\xcc\xf6", "int16", 0.01, -23.56),  # two's complement, little-endian
        (b"\x10\x27", "uint16", 1.0, 10000.0),
        (b"\x00\x00\xac\x41", "float32", 1.0, 21.5),  # IEEE 754 binary32, little-endian
        (b"\xff\xff\xff\xff", "uint32", 1.0, 4294967295.0),
    ],
)
def test_gatt_values_decode_little_endian(
    data: bytes, type_name: str, scale: float, expected: float
) -> None:
    assert decode_gatt(data, type_name, scale) == pytest.approx(expected)
    assert encode_gatt(expected, type_name, scale) == data


@pytest.mark.parametrize(
    ("value", "type_name", "scale", "why"),
    [
        (256.0, "uint8", 1.0, "outside the range"),
        (-1.0, "uint16", 1.0, "outside the range"),
        (0.5, "bool", 1.0, "0 or 1"),
        (1e39, "float32", 1.0, "outside the range"),
    ],
)
def test_values_a_type_cannot_hold_are_refused(
    value: float, type_name: str, scale: float, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        encode_gatt(value, type_name, scale)


def test_values_between_steps_are_quantised_to_the_scale() -> None:
    assert encode_gatt(21.337, "int16", 0.01) == (2134).to_bytes(2, "little")
    assert decode_gatt(encode_gatt(21.337, "int16", 0.01), "int16", 0.01) == pytest.approx(21.34)


def test_wrong_lengths_and_nan_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="int16 needs 2 bytes, got 3"):
        decode_gatt(b"\x00\x01\x02", "int16")
    with pytest.raises(DecodeError, match="not a finite number"):
        decode_gatt(b"\x00\x00\xc0\x7f", "float32")
    with pytest.raises(DecodeError, match="0 or 1"):
        decode_gatt(b"\x02", "bool")


TYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "float32")


@given(st.binary(max_size=8), st.sampled_from(TYPES))
def test_any_bytes_decode_or_raise_decode_error(data: bytes, type_name: str) -> None:
    try:
        value = decode_gatt(data, type_name, 0.5)
    except DecodeError:
        return
    assert math.isfinite(value)


@given(st.integers(min_value=-32768, max_value=32767))
def test_int16_round_trips_through_its_scale(raw: int) -> None:
    value = raw * 0.01
    assert decode_gatt(encode_gatt(value, "int16", 0.01), "int16", 0.01) == pytest.approx(value)
