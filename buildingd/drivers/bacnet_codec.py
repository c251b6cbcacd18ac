"""BACnet values and units <-> buildingd values (pure; imports no BACnet library).

Object identifiers, engineering units (ASHRAE 135-2020, 21 ``BACnetEngineeringUnits``), present
values per object type, who holds a priority array, and BACnet errors, rejects and aborts mapped
to the error tree.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from buildingd.config.bacnet import BacnetPoint, ObjectType
from buildingd.errors import DeviceError, DeviceRejectedError, DeviceUnavailableError


class CodecError(ValueError):
    """A value that cannot be carried by the point's object type (or read from it)."""


# Our unit names -> BACnetEngineeringUnits names, as bacpypes3 spells them (135, clause 21).
UNITS: dict[str, str] = {
    "degC": "degrees-celsius",
    "degF": "degrees-fahrenheit",
    "K": "degrees-kelvin",
    "%": "percent",
    "%RH": "percent-relative-humidity",
    "lx": "luxes",
    "ppm": "parts-per-million",
    "W": "watts",
    "kW": "kilowatts",
    "kWh": "kilowatt-hours",
    "Pa": "pascals",
    "kPa": "kilopascals",
    "m3/h": "cubic-meters-per-hour",
    "l/s": "liters-per-second",
    "m3/s": "cubic-meters-per-second",
    "": "no-units",
}
BACNET_TO_UNIT = {v: k for k, v in UNITS.items()}


def object_id(point: BacnetPoint) -> str:
    """``analog-value,3``: the form bacpypes3 parses and prints."""
    return f"{point.object_type.value},{point.instance}"


def units_problem(point: BacnetPoint, device_units: str) -> str | None:
    """Why the device's ``units`` disagree with the point's unit, or None when they agree (or
    when the point's unit has no BACnet name here, so nothing can be compared)."""
    ours = point.effective_unit
    if ours not in UNITS or ours == "bool":
        return None
    if UNITS[ours] == device_units:
        return None
    theirs = BACNET_TO_UNIT.get(device_units, device_units)
    return f"device reports units {theirs!r}, the point declares {ours!r}"


def decode_value(object_type: ObjectType, raw: object) -> float:
    """A present value as a number: analog as is, binary 0/1 (``inactive``/``active``),
    multi-state its state number (1..n, 135 12.18.4)."""
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if object_type.value.startswith("binary-"):
        if raw in ("active", 1):
            return 1.0
        if raw in ("inactive", 0):
            return 0.0
        raise CodecError(f"{object_type.value}: not a binary value: {raw!r}")
    if isinstance(raw, int | float) and math.isfinite(raw):
        return float(raw)
    raise CodecError(f"{object_type.value}: not a number: {raw!r}")


def encode_value(object_type: ObjectType, value: float) -> float | int | str:
    """The value to write: a finite real, ``active``/``inactive``, or a state number >= 1.

    Never rounds or clamps: a value the type cannot hold exactly is refused.
    """
    if not math.isfinite(value):
        raise CodecError(f"{object_type.value}: cannot write {value!r}")
    if object_type.value.startswith("binary-"):
        if value in (0.0, 1.0):
            return "active" if value == 1.0 else "inactive"
        raise CodecError(f"{object_type.value}: a binary point takes 0 or 1, not {value!r}")
    if object_type.value.startswith("multi-state-"):
        if value != int(value) or value < 1:
            raise CodecError(f"{object_type.value}: a state number is an integer >= 1: {value!r}")
        return int(value)
    return float(value)


def representable(object_type: ObjectType, value: float) -> float:
    """What the point holds once ``value`` is written: analog values are REALs, IEEE 754 single
    precision (135, 20.2.6), so 21.1 comes back as 21.100000381..."""
    raw = encode_value(object_type, value)
    if isinstance(raw, float):
        return float(struct.unpack(">f", struct.pack(">f", raw))[0])
    return decode_value(object_type, raw)


@dataclass(frozen=True)
class Control:
    """Who commands a point, from its priority array (slot 1 is the highest priority)."""

    active_priority: int | None  # the highest non-null slot; None: relinquish default
    ours: int  # the priority buildingd writes at
    our_value: float | None  # what sits in our slot

    @property
    def held_above_us(self) -> bool:
        return self.active_priority is not None and self.active_priority < self.ours

    def describe(self) -> str:
        if self.active_priority is None:
            return "relinquish default (no priority holds it)"
        if self.held_above_us:
            return f"held at priority {self.active_priority}, above ours ({self.ours})"
        return f"priority {self.active_priority}"


def control(slots: Sequence[float | None], ours: int) -> Control:
    """Summarise a 16-slot priority array (None for a null slot)."""
    if len(slots) != 16:
        raise CodecError(f"a priority array has 16 slots, not {len(slots)}")
    active = next((i + 1 for i, v in enumerate(slots) if v is not None), None)
    return Control(active, ours, slots[ours - 1])


# Transient failures (the device or the path did not answer, or is busy); everything else the
# device answered with is a refusal that repeating will not change.
_UNAVAILABLE = frozenset(
    {"no-response", "timeout", "busy", "communication", "out-of-resources", "tsm-timeout"}
)


_TOO_BIG = frozenset({"segmentation-not-supported", "buffer-overflow", "apdu-too-long"})


@dataclass(frozen=True)
class BacnetFailure:
    """An Error, Reject or Abort PDU (or a timeout), reduced to names."""

    kind: str  # "error", "reject", "abort", "timeout"
    reason: str  # error code, reject or abort reason ("unknown-object", "no-response")
    error_class: str | None = None  # for errors: device, object, property, ...

    @property
    def counter(self) -> str:
        """The label it is counted under per device (``error:unknown-object``)."""
        return f"{self.kind}:{self.reason}"

    @property
    def transient(self) -> bool:
        return (
            self.kind == "timeout"
            or self.reason in _UNAVAILABLE
            or self.error_class in _UNAVAILABLE
        )

    def to_error(
        self, *, device_id: str, point_id: str | None = None, address: str | None = None
    ) -> DeviceError:
        cls = DeviceUnavailableError if self.transient else DeviceRejectedError
        what = self.kind if self.error_class is None else f"{self.kind} ({self.error_class})"
        return cls(f"BACnet {what}: {self.reason}", device_id=device_id, point_id=point_id,
                   address=address)  # fmt: skip

    @property
    def service_unsupported(self) -> bool:
        """The device does not implement the service (read point by point instead)."""
        return self.reason in ("unrecognized-service", "service-request-denied")

    @property
    def too_big(self) -> bool:
        """The answer would not fit what the device can send (split the request)."""
        return self.reason in _TOO_BIG


def failure_of(pdu: BaseException) -> BacnetFailure:
    """An Error, Reject or Abort PDU (bacpypes3 raises them), reduced to names. Read by duck
    typing: Error PDUs carry ``errorClass``/``errorCode``, the others a reason."""
    if hasattr(pdu, "errorCode"):
        return BacnetFailure("error", str(pdu.errorCode), str(getattr(pdu, "errorClass", "")))
    reason = str(getattr(pdu, "apduAbortRejectReason", "other"))
    return BacnetFailure("reject" if "Reject" in type(pdu).__name__ else "abort", reason)


def plain(raw: object) -> object:
    """A decoded BACnet primitive as a Python value: REAL -> float, an enumeration (binary
    present values) -> its name, unsigned -> int."""
    if isinstance(raw, float):
        return float(raw)
    if hasattr(raw, "_enum_map"):  # bacpypes3 enumerations (int subclasses) name themselves
        name = str(raw)
        return int(name) if name.isdigit() else name  # a bare enumerated (priority slot): 0/1
    if isinstance(raw, int):
        return int(raw)
    return raw
