"""BLE advertisement codecs against published vectors (bthome.io, docs.ruuvi.com) and hand-built
atc1441 / pvvx packets; a property test feeds arbitrary bytes to every format."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.drivers.ble_codecs import (
    FORMATS,
    UNITS,
    Decoded,
    DecodeError,
    base_name,
    decode,
    decode_bthome_v2,
    decode_ruuvi_rawv2,
    decode_xiaomi_custom,
)
from buildingd.errors import BuildingdError


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- BTHome v2: device info 0x40 = version 2, unencrypted, regular sender ----------------------


@pytest.mark.parametrize(
    ("objects", "name", "expected"),
    [
        # examples of the bthome.io/format object tables
        ("01 61", "battery", 97),
        ("02 CA 09", "temperature", 25.06),
        ("03 BF 13", "humidity", 50.55),
        ("04 13 8A 01", "pressure_pa", 100883),  # 1008.83 hPa
        ("05 13 8A 14", "illuminance", 13460.67),
        ("08 CA 06", "dew_point", 17.38),
        ("0C 02 0C", "voltage", 3.074),
        ("0F 01", "generic_boolean", 1),
        ("12 E2 04", "co2", 1250),
        ("21 01", "motion", 1),
        ("23 01", "occupancy", 1),
        ("2E 23", "humidity", 35),
        ("3D 09 60", "count", 24585),
        ("42 4E 34 00", "duration", 13.39),
        ("45 11 01", "temperature", 27.3),
        ("4C 41 01 8A 01", "gas", 25821.505),
    ],
)
def test_bthome_published_objects(objects: str, name: str, expected: float) -> None:
    decoded = decode_bthome_v2(h("40" + objects))
    assert decoded.values == {name: expected}
    assert decoded.problems == []


def test_bthome_packet_id() -> None:
    decoded = decode_bthome_v2(h("40 00 09 02 CA 09"))
    assert decoded.packet_id == 9
    assert decoded.values == {"temperature": 25.06}


def test_bthome_format_page_example() -> None:
    # bthome.io/format walks through service data D2FC 40 02C409 03BF13.
    decoded = decode_bthome_v2(h("40 02 C4 09 03 BF 13"))
    assert decoded == Decoded(values={"temperature": 25.0, "humidity": 50.55})


def test_bthome_real_sensor_packet() -> None:
    # A sensor's advertisement decoded by hand in Bluetooth-Devices/bthome-ble issue #118.
    decoded = decode_bthome_v2(h("40 003f 015e 028208 03ac17 0c830b"))
    assert decoded.packet_id == 63
    assert decoded.values == {
        "battery": 94,
        "temperature": 21.78,
        "humidity": 60.6,
        "voltage": 2.947,
    }


def test_bthome_unknown_object_keeps_what_came_before() -> None:
    decoded = decode_bthome_v2(h("40 02 CA 09 FE 01 02 03 BF 13"))
    assert decoded.values == {"temperature": 25.06}
    assert len(decoded.problems) == 1
    assert "0xFE" in decoded.problems[0]


def test_bthome_truncated_object_is_a_problem_not_a_value() -> None:
    decoded = decode_bthome_v2(h("40 01 61 02 CA"))
    assert decoded.values == {"battery": 97}
    assert "needs 2 bytes, 1 left" in decoded.problems[0]


def test_bthome_repeated_quantity_gets_suffixes() -> None:
    decoded = decode_bthome_v2(h("40 02 CA 09 02 C4 09 45 11 01"))
    assert decoded.values == {"temperature": 25.06, "temperature_2": 25.0, "temperature_3": 27.3}
    assert {base_name(k) for k in decoded.values} == {"temperature"}


def test_bthome_mac_included_is_least_significant_byte_first() -> None:
    decoded = decode_bthome_v2(h("42 4F 88 4C 33 B8 CB 02 CA 09"))
    assert decoded.mac == "CB:B8:33:4C:88:4F"
    assert decoded.values == {"temperature": 25.06}


def test_bthome_text_is_skipped_by_its_length_byte() -> None:
    decoded = decode_bthome_v2(h("40 02 CA 09 53 03 41 42 43 60 02"))
    assert decoded.values == {"temperature": 25.06, "channel": 2}
    assert decoded.problems == []


def test_bthome_dimmer_left_is_negative() -> None:
    assert decode_bthome_v2(h("40 3C 01 03")).values == {"dimmer": -3}
    assert decode_bthome_v2(h("40 3C 02 05")).values == {"dimmer": 5}


def test_bthome_encrypted_is_refused() -> None:
    with pytest.raises(DecodeError, match=r"unsupported: encrypted \(no key configured\)"):
        decode_bthome_v2(h("41 A4 72 66 C9 5F 73 00 11 22 33 78 23 72 14"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "empty"),
        ("20 02 CA 09", "version 1"),
        ("60 02 CA 09", "version 3"),
        ("42 01 02", "MAC"),
    ],
)
def test_bthome_unusable_packets(data: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_bthome_v2(h(data))


# --- RuuviTag RAWv2: the test vectors of docs.ruuvi.com data format 5 --------------------------

RUUVI_VALID = "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"


def test_ruuvi_valid_vector() -> None:
    decoded = decode_ruuvi_rawv2(h(RUUVI_VALID))
    assert decoded.values == {
        "temperature": 24.3,
        "humidity": 53.49,
        "pressure_pa": 100044,
        "acceleration_x_mg": 4,
        "acceleration_y_mg": -4,
        "acceleration_z_mg": 1036,
        "battery_mv": 2977,
        "tx_power_dbm": 4,
        "movement_counter": 66,
    }
    assert decoded.packet_id == 205
    assert decoded.mac == "CB:B8:33:4C:88:4F"
    assert decoded.problems == []


def test_ruuvi_maximum_vector() -> None:
    decoded = decode_ruuvi_rawv2(h("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F"))
    assert decoded.values == {
        "temperature": 163.835,
        "humidity": 163.835,
        "pressure_pa": 115534,
        "acceleration_x_mg": 32767,
        "acceleration_y_mg": 32767,
        "acceleration_z_mg": 32767,
        "battery_mv": 3646,
        "tx_power_dbm": 20,
        "movement_counter": 254,
    }
    assert decoded.packet_id == 65534


def test_ruuvi_minimum_vector() -> None:
    # The corrected vector (ruuvi/ruuvi-sensor-protocols#30): temperature 0x8001 = -32767.
    decoded = decode_ruuvi_rawv2(h("058001000000008001800180010000000000CBB8334C884F"))
    assert decoded.values == {
        "temperature": -163.835,
        "humidity": 0,
        "pressure_pa": 50000,
        "acceleration_x_mg": -32767,
        "acceleration_y_mg": -32767,
        "acceleration_z_mg": -32767,
        "battery_mv": 1600,
        "tx_power_dbm": -40,
        "movement_counter": 0,
    }
    assert decoded.packet_id == 0


def test_ruuvi_invalid_vector_gives_no_values() -> None:
    decoded = decode_ruuvi_rawv2(h("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF"))
    assert decoded == Decoded(values={}, packet_id=None, mac=None, problems=[])


def test_ruuvi_accepts_the_company_id_in_front() -> None:
    assert decode_ruuvi_rawv2(h("9904" + RUUVI_VALID)) == decode_ruuvi_rawv2(h(RUUVI_VALID))


def test_ruuvi_trailing_bytes_are_a_problem() -> None:
    decoded = decode_ruuvi_rawv2(h(RUUVI_VALID + "00"))
    assert decoded.values["temperature"] == 24.3
    assert decoded.problems == ["1 bytes after the 24-byte RAWv2 payload ignored"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "empty"),
        ("03291A1ECE1EFC18F94202CA0B53", "data format 3"),  # RAWv1 valid vector
        (RUUVI_VALID[:-2], "needs 24 bytes, got 23"),
    ],
)
def test_ruuvi_unusable_packets(data: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_ruuvi_rawv2(h(data))


# --- Xiaomi LYWSD03MMC custom firmware, packets built by hand from the documented layouts ------


def test_xiaomi_atc1441() -> None:
    # atc1441, big-endian: MAC A4C138123456 | temp 0x00D7 = 215 -> 21.5 degC | humidity 0x30 = 48
    # | battery 0x57 = 87 % | battery 0x0B86 = 2950 mV | frame counter 0x2A = 42
    decoded = decode_xiaomi_custom(h("A4C138123456 00D7 30 57 0B86 2A"))
    assert decoded.values == {
        "temperature": 21.5,
        "humidity": 48,
        "battery": 87,
        "battery_mv": 2950,
    }
    assert decoded.packet_id == 42
    assert decoded.mac == "A4:C1:38:12:34:56"


def test_xiaomi_atc1441_below_zero() -> None:
    # temp 0xFFCB = -53 -> -5.3 degC (two's complement, big-endian)
    decoded = decode_xiaomi_custom(h("A4C138123456 FFCB 30 57 0B86 2A"))
    assert decoded.values["temperature"] == -5.3


def test_xiaomi_pvvx() -> None:
    # pvvx, little-endian: MAC EFCDAB38C1A4 (reversed A4:C1:38:AB:CD:EF) | temp 0x08C7 = 2247
    # -> 22.47 degC | humidity 0x11A0 = 4512 -> 45.12 % | battery 0x0BC4 = 3012 mV
    # | battery 0x60 = 96 % | counter 0x07 | flags 0x01 (reed switch closed)
    decoded = decode_xiaomi_custom(h("EFCDAB38C1A4 C708 A011 C40B 60 07 01"))
    assert decoded.values == {
        "temperature": 22.47,
        "humidity": 45.12,
        "battery": 96,
        "battery_mv": 3012,
        "reed_switch": 1,
        "trigger_output": 0,
    }
    assert decoded.packet_id == 7
    assert decoded.mac == "A4:C1:38:AB:CD:EF"


def test_xiaomi_pvvx_below_zero() -> None:
    # temp 0xFC13 = -1005 -> -10.05 degC (two's complement, little-endian "13 FC")
    decoded = decode_xiaomi_custom(h("EFCDAB38C1A4 13FC A011 C40B 60 07 02"))
    assert decoded.values["temperature"] == -10.05
    assert decoded.values["trigger_output"] == 1


@pytest.mark.parametrize("length", [0, 11, 12, 14, 16])
def test_xiaomi_other_lengths_are_refused(length: int) -> None:
    with pytest.raises(DecodeError, match=f"{length} bytes of 0x181A"):
        decode_xiaomi_custom(bytes(length))


# --- Dispatcher and error type ------------------------------------------------------------------


def test_decode_dispatches_by_format_name() -> None:
    assert decode("ruuvi", h(RUUVI_VALID)).packet_id == 205
    assert decode("bthome", h("40 02 CA 09")).values == {"temperature": 25.06}
    assert decode("xiaomi", h("A4C138123456 00D7 30 57 0B86 2A")).packet_id == 42


def test_decode_error_is_in_the_buildingd_tree_and_a_value_error() -> None:
    with pytest.raises(DecodeError) as info:
        decode("eddystone", b"\x00")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, BuildingdError)
    assert info.value.format_name == "eddystone"
    assert "unknown format" in str(info.value)


def _plausible(fmt: str) -> st.SearchStrategy[bytes]:
    """Bytes that get past the first checks of ``fmt`` as well as arbitrary ones."""
    anything = st.binary(max_size=40)
    if fmt == "bthome":
        header = st.sampled_from([b"\x40", b"\x42", b"\x44", b"\x46"])
        return st.one_of(anything, st.builds(bytes.__add__, header, anything))
    if fmt == "ruuvi":
        return st.one_of(anything, st.builds(bytes.__add__, st.just(b"\x05"), anything))
    return st.one_of(
        anything, st.binary(min_size=13, max_size=13), st.binary(min_size=15, max_size=15)
    )


@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data())
def test_decode_returns_decoded_or_raises_decode_error(fmt: str, data: st.DataObject) -> None:
    payload = data.draw(_plausible(fmt))
    try:
        decoded = decode(fmt, payload)
    except DecodeError:
        return
    assert isinstance(decoded, Decoded)
    assert all(type(v) is float and math.isfinite(v) for v in decoded.values.values())
    assert all(base_name(k) in UNITS for k in decoded.values)
    assert all(isinstance(p, str) for p in decoded.problems)
