"""BACnet read planning and point-list checks (pure).

A device's polled points are read with ReadPropertyMultiple in as few requests as its answer
allows. An answer longer than one APDU must be segmented (135-2020, 5.2); a device that cannot
segment answers longer than its ``max_apdu`` with an abort (segmentation-not-supported), and
small controllers cannot build longer ones even when the requester would accept them. So the
ComplexACK is kept within one APDU of the device's ``max_apdu`` (at most 1,476 octets on
BACnet/IP, Annex J) unless the device sends segmented answers, then within ``max_segments`` of
them. Answer sizes are bounded from above (a property that comes back as an error takes more
octets than a REAL), so a planned request is not refused for its size; a device that still
refuses one gets it split, and the plan keeps the split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from buildingd.config.bacnet import BacnetDevice, BacnetPoint, ObjectType, Reads, Segmentation
from buildingd.config.devices import DeviceSpec
from buildingd.drivers.checks import Problem, register_check

# Octets in a ReadPropertyMultiple-ACK (135, 21 ASN.1 encoding; 20.2 tags):
ACK_HEADER = 3  # PDU type, invoke id, service choice (unsegmented; segmented adds 2)
SEGMENT_HEADER = 5
OBJECT_OCTETS = 5 + 2  # context-tagged object identifier + opening/closing tag of the results
# Per property: identifier (2, or 3 above 255), opening/closing tag (2) and the value or the
# error: an error is two enumerations in an opening/closing tag, at most 2 + 2 * 5 octets; a
# REAL is 5, an enumerated or unsigned at most 5. 12 bounds both.
PROPERTY_OCTETS = 3 + 2 + 12


@dataclass(frozen=True)
class Read:
    """One property of one object."""

    object_type: ObjectType
    instance: int
    prop: str  # the property's name, ``present-value`` by default
    point_id: str

    @property
    def object_key(self) -> tuple[ObjectType, int]:
        return (self.object_type, self.instance)


@dataclass(frozen=True)
class Batch:
    """One ReadPropertyMultiple request."""

    reads: tuple[Read, ...]

    def answer_octets(self) -> int:
        return answer_octets(self.reads)

    def describe(self) -> str:
        objects = len({r.object_key for r in self.reads})
        return (f"{len(self.reads)} properties of {objects} objects "
                f"(answer <= {self.answer_octets()} octets): "
                + ", ".join(r.point_id for r in self.reads))  # fmt: skip


def point_read(point: BacnetPoint) -> Read:
    return Read(point.object_type, point.instance, point.property, point.id)


def answer_octets(reads: Sequence[Read]) -> int:
    """Upper bound of the ACK's size: properties of one object share its identifier."""
    objects = len({r.object_key for r in reads})
    return ACK_HEADER + objects * OBJECT_OCTETS + len(reads) * PROPERTY_OCTETS


def answer_budget(reads: Reads) -> int:
    """Octets one answer may take: one APDU, or ``max_segments`` of them when the device
    can send segmented answers."""
    if reads.segmentation in (Segmentation.BOTH, Segmentation.TRANSMIT):
        return reads.max_segments * (reads.max_apdu - SEGMENT_HEADER)
    return reads.max_apdu


def plan_reads(reads: Iterable[Read], limits: Reads) -> list[Batch]:
    """Requests covering every read, each answer within the budget; properties of one object
    kept together (their identifier is then sent once) and in a stable order."""
    budget = answer_budget(limits)
    ordered = sorted(reads, key=lambda r: (r.object_type.value, r.instance, r.prop))
    batches: list[Batch] = []
    current: list[Read] = []
    for read in ordered:
        if current and answer_octets([*current, read]) > budget:
            batches.append(Batch(tuple(current)))
            current = []
        current.append(read)
    if current:
        batches.append(Batch(tuple(current)))
    return batches


def split_batch(batch: Batch) -> list[Batch]:
    """Two halves (one read: nothing left to split)."""
    if len(batch.reads) <= 1:
        return [batch]
    half = len(batch.reads) // 2
    return [Batch(batch.reads[:half]), Batch(batch.reads[half:])]


def describe_plan(batches: Sequence[Batch]) -> list[str]:
    return [f"read-property-multiple {b.describe()}" for b in batches]


def check_points(device: BacnetDevice) -> list[Problem]:
    """Point-list mistakes the schema cannot see alone, keyed ``("points", i, field)``."""
    problems: list[Problem] = []
    seen: dict[tuple[str, int, str], str] = {}
    for i, point in enumerate(device.points):
        where: tuple[str | int, ...] = ("points", i)
        key = (point.object_type.value, point.instance, point.property)
        if key in seen:
            message = f"{point.object_type.value},{point.instance} {point.property} is also "
            problems.append(((*where, "instance"), message + f"point {seen[key]!r}"))
        seen.setdefault(key, point.id)
        if point.writable and not point.object_type.commandable:
            problems.append(((*where, "writable"), f"{point.object_type.value} is not commandable"))
        if point.writable and point.property != "present-value":
            problems.append(
                ((*where, "property"), "only present-value is written (with a priority)")
            )
        if point.cov and point.property != "present-value":
            problems.append(((*where, "cov"), "SubscribeCOV reports present-value only"))
        if point.cov_confirmed and not point.cov:
            problems.append(((*where, "cov_confirmed"), "only with cov: true"))
    return problems


@register_check("bacnet")
def _check(device: DeviceSpec) -> list[Problem]:
    return check_points(device) if isinstance(device, BacnetDevice) else []
