"""The simulated building served as real BACnet/IP devices (bacpypes3 applications on UDP).

Every ``driver: bacnet`` device marked ``simulated: true`` becomes one BACnet device at its
``address`` (127.0.0.1 and a port of its own), with one object per point: inputs follow the
simulated sensors, commandable objects (outputs, writable values) carry a 16-slot priority array
whose winning value drives the simulated actuator. Multi-state objects (modes: the building
model has none) hold their own state number 1..n, n from the point's ``limits`` or ``plausible``
maximum. Each device counts the requests it answers, and can be made silent or to refuse
ReadPropertyMultiple, as real devices do.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

from bacpypes3.apdu import AbortPDU, ComplexAckPDU
from bacpypes3.app import Application
from bacpypes3.errors import PropertyError, ServicesError
from bacpypes3.local.analog import (
    AnalogInputObject,
    AnalogOutputObject,
    AnalogValueObject,
    AnalogValueObjectCmd,
)
from bacpypes3.local.binary import (
    BinaryInputObject,
    BinaryOutputObject,
    BinaryValueObject,
    BinaryValueObjectCmd,
)
from bacpypes3.local.cmd import Commandable
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import (
    MultiStateInputObject,
    MultiStateOutputObject,
    MultiStateValueObject,
)
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.primitivedata import Enumerated

from buildingd.clock import Clock
from buildingd.config.bacnet import BacnetDevice, BacnetPoint, ObjectType, Segmentation
from buildingd.drivers.bacnet_codec import UNITS, decode_value
from buildingd.sim.building import Building

log = logging.getLogger(__name__)

VENDOR_ID = 999  # "reserved for testing" is not assigned by ASHRAE; 999 is unused by vendors
REFRESH_S = 1.0  # inputs follow the model this often (and then COV subscribers are told)


def _following(base: Any) -> Any:
    """``base`` that asks ``_on_read`` for the model's value before every read."""

    class Following(base):  # type: ignore[misc]
        _on_read: Any = None

        async def read_property(self, attr: Any, index: Any = None) -> Any:
            if self._on_read is not None:
                self._on_read()
            return await super().read_property(attr, index)

        async def write_property(
            self, attr: Any, value: Any, index: Any = None, priority: Any = None
        ) -> None:
            if attr in ("presentValue", 85):
                # The model's value, as a sensor's: read-only (135 12.2.4, unless out of service).
                raise PropertyError("writeAccessDenied")
            await super().write_property(attr, value, index, priority)

    Following.__name__ = f"Following{base.__name__}"
    return Following


_INPUTS: dict[ObjectType, Any] = {
    ObjectType.ANALOG_INPUT: _following(AnalogInputObject),
    ObjectType.ANALOG_VALUE: _following(AnalogValueObject),
    ObjectType.BINARY_INPUT: _following(BinaryInputObject),
    ObjectType.BINARY_VALUE: _following(BinaryValueObject),
}


def _driving(base: Any) -> Any:
    """``base`` whose winning priority-array value is handed to ``_on_change``."""

    class Driving(base):  # type: ignore[misc]
        _on_change: Any = None
        _range: tuple[float, float] | None = None  # what the device accepts (its min/max)

        async def write_property(
            self, attr: Any, value: Any, index: Any = None, priority: Any = None
        ) -> None:
            bounds = self._range
            # A REAL, or a multi-state's Unsigned state number (an int; binary's Enumerated too).
            number = isinstance(value, float | int) and not isinstance(value, bool | Enumerated)
            writes_value = attr in ("presentValue", 85) and number
            if writes_value and bounds is not None and not bounds[0] <= value <= bounds[1]:
                raise PropertyError("valueOutOfRange")
            await super().write_property(attr, value, index, priority)

        def recalculating(self) -> None:
            super().recalculating()
            if self._on_change is not None:
                self._on_change(self.presentValue)

    Driving.__name__ = f"Driving{base.__name__}"
    return Driving


class MultiStateValueObjectCmd(Commandable, MultiStateValueObject):  # type: ignore[misc]
    """A multi-state value with a priority array (bacpypes3 has the analog/binary ones only)."""

    _required = ("priorityArray", "relinquishDefault", "currentCommandPriority")


_COMMANDABLE: dict[ObjectType, Any] = {
    ObjectType.ANALOG_OUTPUT: _driving(AnalogOutputObject),
    ObjectType.ANALOG_VALUE: _driving(AnalogValueObjectCmd),
    ObjectType.BINARY_OUTPUT: _driving(BinaryOutputObject),
    ObjectType.BINARY_VALUE: _driving(BinaryValueObjectCmd),
    ObjectType.MULTI_STATE_OUTPUT: _driving(MultiStateOutputObject),
    ObjectType.MULTI_STATE_VALUE: _driving(MultiStateValueObjectCmd),
}
# Held by the object itself: an input's state is set by whoever runs the simulator (a test).
_HOLDING: dict[ObjectType, Any] = {
    ObjectType.MULTI_STATE_INPUT: MultiStateInputObject,
    ObjectType.MULTI_STATE_VALUE: MultiStateValueObject,
}


class SimulatedDeviceApp(Application):  # type: ignore[misc]
    """A bacpypes3 application that counts what it is asked and can play dead."""

    requests: collections.Counter[str]
    silent: bool
    rpm: bool
    arrived: asyncio.Event  # set on every request answered (tests wait on it)
    unsegmented_max_apdu: int | None  # the device cannot segment: its answers' limit

    async def indication(self, apdu: Any) -> None:
        if self.silent:
            return  # a device off the network: no answer at all
        self.requests[type(apdu).__name__] += 1
        self.arrived.set()
        await super().indication(apdu)

    async def response(self, apdu: Any) -> None:
        """A device that cannot segment cannot send an answer longer than its buffer (its
        max-APDU-length-accepted): it aborts with segmentation-not-supported (135 5.4.5.3)."""
        if self.unsegmented_max_apdu is not None and isinstance(apdu, ComplexAckPDU):
            size = 3 + len(apdu.encode().pduData)  # header: type, invoke id, service
            if size > self.unsegmented_max_apdu:
                abort = AbortPDU(srv=True, invoke_id=apdu.apduInvokeID,
                                 reason="segmentationNotSupported")  # fmt: skip
                abort.pduDestination = apdu.pduDestination
                apdu = abort
        await super().response(apdu)

    async def do_ReadPropertyMultipleRequest(self, apdu: Any) -> None:
        if not self.rpm:
            # Small controllers implement ReadProperty only (135 Annex A, PICS).
            raise ServicesError("service-request-denied")
        await super().do_ReadPropertyMultipleRequest(apdu)


def _raw(point: BacnetPoint, value: float) -> Any:
    if point.object_type.value.startswith("binary-"):
        return "active" if value >= 0.5 else "inactive"
    return float(value)


class SimulatedBacnetDevice:
    """One simulated BACnet device: its application, its objects by point id and the task that
    keeps its inputs following the model."""

    def __init__(self, building: Building, clock: Clock, device: BacnetDevice) -> None:
        assert device.address is not None
        self.building, self.clock, self.device = building, clock, device
        self.address = device.address
        self.objects: dict[str, Any] = {}
        objects: list[Any] = [
            DeviceObject(
                objectIdentifier=("device", device.device_instance),
                objectName=device.name or device.id,
                vendorIdentifier=VENDOR_ID,
                maxApduLengthAccepted=device.reads.max_apdu,
                segmentationSupported=device.reads.segmentation.value,
            ),
            NetworkPortObject(
                self.address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
            ),
        ]
        building.advance_to(clock.now())
        for point in device.points:
            try:
                obj = self._make_object(point)
            except (ValueError, KeyError) as err:
                # Not in the model (a quantity the simulated building does not compute): served
                # without it, so reading it answers unknown-object, as a real device would for
                # a wrong device file.
                log.warning("sim: BACnet device %s: point %s not simulated: %s", device.id,
                            point.id, err)  # fmt: skip
                continue
            self.objects[point.id] = obj
            objects.append(obj)
        self.app: SimulatedDeviceApp = SimulatedDeviceApp.from_object_list(objects)
        self.app.requests, self.app.silent, self.app.rpm = collections.Counter(), False, True
        self.app.arrived = asyncio.Event()
        cannot_segment = device.reads.segmentation in (Segmentation.NONE, Segmentation.RECEIVE)
        self.app.unsegmented_max_apdu = device.reads.max_apdu if cannot_segment else None
        self._task: asyncio.Task[None] | None = None

    def _make_object(self, point: BacnetPoint) -> Any:
        if point.object_type.value.startswith("multi-state-"):
            return self._make_multi_state(point)
        value = _raw(point, self.building.read_point(point.zone, point.kind))
        kwargs: dict[str, Any] = {
            "objectIdentifier": (point.object_type.value, point.instance),
            "objectName": point.id,
            "presentValue": value,
            "statusFlags": [0, 0, 0, 0],
            "outOfService": False,
            "eventState": "normal",
        }
        if point.object_type.has_units:
            kwargs["units"] = UNITS.get(point.effective_unit, "no-units")
            kwargs["covIncrement"] = 0.1
        if point.writable:
            cls = _COMMANDABLE[point.object_type]
            kwargs["relinquishDefault"] = value
            obj = cls(**kwargs)
            obj._on_change = lambda raw, point=point: self._drive(point, raw)
            if point.limits is not None:
                obj._range = (point.limits.min, point.limits.max)
            return obj
        if point.object_type not in _INPUTS:
            raise ValueError(f"{point.id}: {point.object_type.value} is not simulated")
        obj = _INPUTS[point.object_type](**kwargs)
        obj._on_read = lambda point=point: self._follow_point(point)
        return obj

    def _make_multi_state(self, point: BacnetPoint) -> Any:
        """State 1 of n (135 12.18.4: present-value is 1..number-of-states); a commandable one
        refuses a state outside 1..n with value-out-of-range, its winning state held by itself."""
        top = point.limits or point.plausible
        if top is None or top.max < 1:
            raise ValueError("a multi-state point needs limits or plausible {max: states}")
        states = int(top.max)
        kwargs: dict[str, Any] = {
            "objectIdentifier": (point.object_type.value, point.instance),
            "objectName": point.id,
            "presentValue": 1,
            "numberOfStates": states,
            "stateText": [f"state {n}" for n in range(1, states + 1)],
            "statusFlags": [0, 0, 0, 0],
            "outOfService": False,
            "eventState": "normal",
        }
        if point.writable:
            obj = _COMMANDABLE[point.object_type](relinquishDefault=1, **kwargs)
            obj._range = (1, states)
            return obj
        return _HOLDING[point.object_type](**kwargs)

    def _drive(self, point: BacnetPoint, raw: Any) -> None:
        """The winning value of a priority array reaches the simulated actuator."""
        value = decode_value(point.object_type, str(raw) if not isinstance(raw, float) else raw)
        self.building.advance_to(self.clock.now())
        self.building.write_point(point.zone, point.kind, value)

    def refresh(self) -> None:
        """Inputs take the model's current values (a change notifies COV subscribers)."""
        for point in self.device.points:
            multi_state = point.object_type.value.startswith("multi-state-")
            if not point.writable and not multi_state and point.id in self.objects:
                self._follow_point(point)

    def _follow_point(self, point: BacnetPoint) -> None:
        self.building.advance_to(self.clock.now())
        value = self.building.read_point(point.zone, point.kind)
        self.objects[point.id].presentValue = _raw(point, value)

    async def _follow(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(REFRESH_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name=f"sim-bacnet[{self.device.id}]")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.app.close()


async def start_bacnet_devices(
    building: Building, clock: Clock, devices: list[BacnetDevice]
) -> list[SimulatedBacnetDevice]:
    """Serve each device at its own address; returns them running (``await .stop()``)."""
    served = []
    for device in devices:
        sim = SimulatedBacnetDevice(building, clock, device)
        sim.start()
        served.append(sim)
        log.info("sim: BACnet device %d (%s) on %s", device.device_instance, device.id,
                 sim.address)  # fmt: skip
    return served
