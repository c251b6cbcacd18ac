"""Device schema for ``driver: bacnet`` (BACnet/IP): device instance, address, write priority and
the points as object type, instance and property."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator

from buildingd.config.base import DeviceBase, PointBase
from buildingd.config.common import Strict

# ASHRAE 135-2020, 12.1.1.4.1 and Table 12-4: 1 manual life safety, 2 automatic life safety,
# 5 critical equipment control, 6 minimum on/off (reserved: never written by a client),
# 8 manual operator, 16 the lowest (default when a write carries none).
MINIMUM_ON_OFF_PRIORITY = 6
# buildingd acts as the operator's hand: priority 8 ("manual operator") overrides the building
# automation system's schedules and programs (usually 10-16) but never life safety or critical
# equipment control (1-5), which it then reports instead of fighting. Sites where buildingd must
# stay below the BAS choose 16.
DEFAULT_WRITE_PRIORITY = 8

# ANSI/ASHRAE 135 Annex J.2: a BACnet/IP APDU carries at most 1,476 octets.
MAX_APDU_BACNET_IP = 1476


class ObjectType(StrEnum):
    ANALOG_INPUT = "analog-input"
    ANALOG_OUTPUT = "analog-output"
    ANALOG_VALUE = "analog-value"
    BINARY_INPUT = "binary-input"
    BINARY_OUTPUT = "binary-output"
    BINARY_VALUE = "binary-value"
    MULTI_STATE_INPUT = "multi-state-input"
    MULTI_STATE_OUTPUT = "multi-state-output"
    MULTI_STATE_VALUE = "multi-state-value"

    @property
    def commandable(self) -> bool:
        """Outputs always have a priority array; values may (135, 12.4.x / 12.7.x)."""
        return not self.value.endswith("-input")

    @property
    def has_units(self) -> bool:
        return self.value.startswith("analog-")


class Segmentation(StrEnum):
    """What the device declares in ``segmentation-supported`` (135, 12.11.19)."""

    BOTH = "segmented-both"
    TRANSMIT = "segmented-transmit"
    RECEIVE = "segmented-receive"
    NONE = "no-segmentation"


class BacnetPoint(PointBase):
    object_type: ObjectType
    instance: int = Field(ge=0, le=4194302)  # 22 bits; 4194303 is "uninitialised" (135, 12.1)
    property: str = Field(default="present-value", pattern=r"^[a-z][a-z0-9\-]*$")
    # Subscribe to changes instead of polling (SubscribeCOV); ``cov_confirmed``: the device
    # repeats a notification until buildingd acknowledges it.
    cov: bool = False
    cov_confirmed: bool = False


class Reads(Strict):
    """What the device can take in one request; the plan fills requests up to these. The driver
    reads the device object's own max-apdu-length-accepted and segmentation-supported when it
    opens the device and plans with the smaller APDU; a ``segmentation`` given here overrides
    the device's declaration."""

    max_apdu: int = Field(default=MAX_APDU_BACNET_IP, ge=50, le=MAX_APDU_BACNET_IP)
    segmentation: Segmentation = Segmentation.NONE
    max_segments: int = Field(default=16, ge=2, le=64)
    # Start with ReadPropertyMultiple; a device that rejects it is read point by point (and
    # remembered), so this is only to skip the first failed try.
    rpm: bool = True


class BacnetDevice(DeviceBase):
    driver: Literal["bacnet"]
    device_instance: int = Field(ge=0, le=4194302)
    # "192.168.1.20" or "192.168.1.20:47808" for a device on this subnet or behind a BBMD;
    # "<network>:<mac>" style routed addresses as bacpypes3 writes them ("2001:0x0a").
    # Without it the device is found by its instance with Who-Is / I-Am.
    address: str | None = None
    write_priority: int = Field(default=DEFAULT_WRITE_PRIORITY, ge=1, le=16)
    # Removed: what buildingd commanded is relinquished when the device is removed from the site
    # (always), and at shutdown when the zone's policy says ``shutdown: {action: release}``.
    relinquish_on_close: bool | None = None
    cov_lifetime_s: int = Field(default=600, ge=60, le=86400)
    reads: Reads = Reads()
    points: list[BacnetPoint] = Field(min_length=1)

    @field_validator("relinquish_on_close")
    @classmethod
    def _flag_removed(cls, value: bool | None) -> None:
        if value is not None:
            raise ValueError(
                "no longer used: set the zone policy's `shutdown: {action: release}` to give "
                "points back at shutdown (a removed device always gives them back)"
            )
        return None

    @field_validator("write_priority")
    @classmethod
    def _priority_allowed(cls, value: int) -> int:
        if value == MINIMUM_ON_OFF_PRIORITY:
            raise ValueError("priority 6 is reserved for minimum on/off (ASHRAE 135, 19.2)")
        return value
