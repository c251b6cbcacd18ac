"""BACnet codec and read planning (pure): values per object type, units, priority arrays, error
classes, ReadPropertyMultiple batches within the device's APDU, and what ``check`` reports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.config.bacnet import BacnetDevice, BacnetPoint, ObjectType, Reads
from buildingd.drivers import bacnet_codec as codec
from buildingd.drivers.bacnet_plan import (
    Read,
    answer_budget,
    answer_octets,
    plan_reads,
    point_read,
    split_batch,
)
from buildingd.errors import DeviceRejectedError, DeviceUnavailableError
from buildingd.service.cli import main
from tests.test_config_check import _line_of

OBJECT_TYPES = list(ObjectType)


def read(i: int, object_type: ObjectType = ObjectType.ANALOG_INPUT, prop: str = "present-value"
         ) -> Read:  # fmt: skip
    return Read(object_type, i, prop, f"p{i}-{object_type.value}-{prop}")


def device(**kw: Any) -> BacnetDevice:
    data: dict[str, Any] = {"id": "vav1", "driver": "bacnet", "device_instance": 1001,
                            "points": [{"id": "t", "kind": "temperature",
                                        "object_type": "analog-input", "instance": 1}]}  # fmt: skip
    return BacnetDevice.model_validate({**data, **kw})


def test_values_per_object_type() -> None:
    assert codec.decode_value(ObjectType.ANALOG_INPUT, 21.5) == 21.5
    assert codec.decode_value(ObjectType.BINARY_VALUE, "active") == 1.0
    assert codec.decode_value(ObjectType.BINARY_INPUT, "inactive") == 0.0
    assert codec.decode_value(ObjectType.MULTI_STATE_VALUE, 3) == 3.0
    assert codec.encode_value(ObjectType.BINARY_OUTPUT, 1.0) == "active"
    assert codec.encode_value(ObjectType.BINARY_OUTPUT, 0.0) == "inactive"
    assert codec.encode_value(ObjectType.MULTI_STATE_OUTPUT, 2.0) == 2
    assert codec.encode_value(ObjectType.ANALOG_VALUE, 21.25) == 21.25
    for bad_type, bad in [(ObjectType.BINARY_VALUE, 0.5), (ObjectType.MULTI_STATE_VALUE, 0.0),
                          (ObjectType.MULTI_STATE_VALUE, 1.5), (ObjectType.ANALOG_VALUE, math.nan)
                          ]:  # fmt: skip
        with pytest.raises(codec.CodecError):
            codec.encode_value(bad_type, bad)
    with pytest.raises(codec.CodecError):
        codec.decode_value(ObjectType.BINARY_INPUT, "maybe")
    with pytest.raises(codec.CodecError):
        codec.decode_value(ObjectType.ANALOG_INPUT, math.inf)


@given(st.sampled_from(OBJECT_TYPES), st.floats(allow_nan=False, allow_infinity=False))
def test_encode_then_decode_is_identity_or_refused(object_type: ObjectType, value: float) -> None:
    """Never rounded or clamped: a value the type holds comes back as it was, others refused."""
    try:
        raw = codec.encode_value(object_type, value)
    except codec.CodecError:
        return
    assert codec.decode_value(object_type, raw) == value


def test_units_checked_against_the_device() -> None:
    point = BacnetPoint.model_validate(
        {"id": "t", "kind": "temperature", "object_type": "analog-input", "instance": 1}
    )
    assert codec.units_problem(point, "degrees-celsius") is None
    assert codec.units_problem(point, "degrees-fahrenheit") == (
        "device reports units 'degF', the point declares 'degC'"
    )
    odd = point.model_copy(update={"unit": "furlongs"})
    assert codec.units_problem(odd, "degrees-fahrenheit") is None  # nothing to compare with


def test_priority_array_says_who_holds_the_point() -> None:
    empty: list[float | None] = [None] * 16
    assert codec.control(empty, 8).active_priority is None
    ours = list(empty)
    ours[7] = 21.0
    c = codec.control(ours, 8)
    assert (c.active_priority, c.our_value, c.held_above_us) == (8, 21.0, False)
    bas = list(ours)
    bas[4] = 18.0  # critical equipment control
    c = codec.control(bas, 8)
    assert c.held_above_us and c.active_priority == 5
    assert "priority 5, above ours (8)" in c.describe()
    below = list(empty)
    below[15] = 19.0
    assert not codec.control(below, 8).held_above_us
    with pytest.raises(codec.CodecError):
        codec.control(empty[:15], 8)


def test_error_classes_map_into_the_error_tree() -> None:
    silent = codec.BacnetFailure("timeout", "no-response")
    assert isinstance(silent.to_error(device_id="d"), DeviceUnavailableError)
    abort = codec.BacnetFailure("abort", "segmentation-not-supported")
    assert abort.too_big and isinstance(abort.to_error(device_id="d"), DeviceRejectedError)
    unknown = codec.BacnetFailure("error", "unknown-object", "object")
    err = unknown.to_error(device_id="d", point_id="t")
    assert isinstance(err, DeviceRejectedError)
    assert str(err) == "d.t: BACnet error (object): unknown-object"
    assert unknown.counter == "error:unknown-object"
    assert codec.BacnetFailure("reject", "unrecognized-service").service_unsupported
    assert not codec.BacnetFailure("error", "write-access-denied", "property").transient


def test_one_request_when_everything_fits() -> None:
    batches = plan_reads([read(i) for i in range(20)], Reads())
    assert len(batches) == 1 and len(batches[0].reads) == 20


def test_small_apdu_without_segmentation_splits_requests() -> None:
    limits = Reads(max_apdu=206)  # the smallest BACnet MS/TP-era devices
    batches = plan_reads([read(i) for i in range(40)], limits)
    assert len(batches) > 1
    assert all(b.answer_octets() <= 206 for b in batches)
    # Each request is as full as it can be: adding the next read would overflow it.
    for b, nxt in zip(batches, batches[1:], strict=False):
        assert answer_octets([*b.reads, nxt.reads[0]]) > 206


def test_segmentation_lets_one_answer_span_segments() -> None:
    reads = [read(i) for i in range(200)]
    flat = plan_reads(reads, Reads(max_apdu=480))
    segmented = plan_reads(reads, Reads(max_apdu=480, segmentation="segmented-both"))
    assert len(segmented) < len(flat)
    assert answer_budget(Reads(max_apdu=480, segmentation="segmented-receive")) == 480


@given(
    st.lists(
        st.tuples(
            st.sampled_from(OBJECT_TYPES),
            st.integers(0, 50),
            st.sampled_from(["present-value", "units", "status-flags"]),
        ),
        unique=True,
        max_size=300,
    ),  # fmt: skip
    st.integers(50, 1476),
    st.sampled_from(["no-segmentation", "segmented-both"]),
)
def test_every_read_planned_once_within_budget(
    keys: list[tuple[ObjectType, int, str]], max_apdu: int, segmentation: str
) -> None:
    reads = [Read(t, i, p, f"{t.value}-{i}-{p}") for t, i, p in keys]
    limits = Reads(max_apdu=max_apdu, segmentation=segmentation)
    batches = plan_reads(reads, limits)
    planned = [r for b in batches for r in b.reads]
    assert sorted(planned, key=str) == sorted(reads, key=str)
    assert all(b.answer_octets() <= answer_budget(limits) for b in batches)
    for b in batches:
        assert sum(len(h.reads) for h in split_batch(b)) == len(b.reads)


def test_config_defaults_and_refusals() -> None:
    d = device()
    assert d.write_priority == 8 and d.reads.max_apdu == 1476
    assert point_read(d.points[0]).prop == "present-value"
    with pytest.raises(ValueError, match="reserved for minimum on/off"):
        device(write_priority=6)
    with pytest.raises(ValueError):
        device(write_priority=17)


def test_check_names_file_line_and_key(site_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = site_copy / "devices" / "bad-bacnet.yaml"
    path.write_text(
        "devices:\n"
        "  - id: ahu9\n"
        "    driver: bacnet\n"
        "    device_instance: 9\n"
        "    points:\n"
        "      - {id: a, kind: temperature, object_type: analog-input, instance: 1}\n"
        "      - {id: b, kind: temperature, object_type: analog-input, instance: 1}\n"
        "      - {id: c, kind: heating_setpoint, object_type: analog-input, instance: 2,\n"
        "         writable: true, limits: {min: 10, max: 30}}\n"
        "      - {id: d, kind: occupancy, object_type: binary-value, instance: 3,\n"
        "         property: status-flags, cov: true}\n"
    )
    schema = site_copy / "devices" / "bad-bacnet-schema.yaml"
    schema.write_text(
        "devices:\n"
        "  - id: ahu10\n"
        "    driver: bacnet\n"
        "    device_instance: 10\n"
        "    write_priority: 6\n"
        "    relinquish_on_close: false\n"
        "    points:\n"
        "      - {id: e, kind: temperature, object_type: analog-thing, instance: 1}\n"
    )
    rc = main(["check", "--site", str(site_copy)])
    err = capsys.readouterr().err
    assert rc == 1
    prefix = f"{path}:"
    assert f"{prefix}{_line_of(path, 'id: b')}: devices[0].points[1].instance: " in err
    assert "is also point 'a'" in err
    assert f"{prefix}{_line_of(path, 'writable: true')}: devices[0].points[2].writable: " in err
    assert f"{prefix}{_line_of(path, 'cov: true')}: devices[0].points[3].cov: " in err
    assert f"{schema}:{_line_of(schema, 'write_priority')}: devices[0].write_priority: " in err
    assert "reserved for minimum on/off" in err
    flag = _line_of(schema, "relinquish_on_close")
    assert f"{schema}:{flag}: devices[0].relinquish_on_close: " in err  # removed: says what now
    assert "shutdown: {action: release}" in err
    assert f"{schema}:{_line_of(schema, 'id: e')}: devices[0].points[0].object_type: " in err


def test_bacpypes3_error_reject_abort_pdus_reduced_to_names() -> None:
    from bacpypes3.apdu import AbortPDU, Error, RejectPDU
    from bacpypes3.basetypes import BinaryPV, EngineeringUnits
    from bacpypes3.primitivedata import Real, Unsigned

    error = Error(service_choice=15, errorClass="property", errorCode="writeAccessDenied")
    assert codec.failure_of(error) == codec.BacnetFailure(
        "error", "write-access-denied", "property"
    )
    reject = codec.failure_of(RejectPDU(reason="unrecognizedService"))
    assert reject == codec.BacnetFailure("reject", "unrecognized-service")
    assert reject.service_unsupported
    abort = codec.failure_of(AbortPDU(reason="segmentationNotSupported"))
    assert abort.too_big and abort.kind == "abort"
    assert codec.plain(BinaryPV("active")) == "active"
    assert codec.plain(EngineeringUnits("degreesCelsius")) == "degrees-celsius"
    assert codec.plain(Real(21.5)) == 21.5 and codec.plain(Unsigned(3)) == 3
