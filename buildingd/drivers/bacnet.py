"""``driver: bacnet``: BACnet/IP on bacpypes3 (the only module, with the simulator, importing it).

* One client application per daemon (a ``SharedResources`` entry) on ``[bacnet] address``,
  optionally registered as a foreign device with a BBMD for routed networks.
* A device is found by its ``address`` or, without one, by Who-Is / I-Am on its instance.
  Analog points' ``units`` are read once and checked against the point's unit: a point whose
  device reports another unit is not read (a Fahrenheit value never passes for Celsius).
* Reads follow the ReadPropertyMultiple plan (``bacnet_plan``); a device that does not implement
  it is read with ReadProperty per point from then on; a request refused for its size is split.
* Writes go to present-value at the device's ``write_priority``; present-value and the priority
  array are read back: a higher priority holding the point is reported (``PriorityHeldError``),
  never overwritten. ``relinquishes``: what buildingd commanded is given back (null at its
  priority) on request; the device agent decides when (a hand override ended, a zone policy's
  ``shutdown: {action: release}``, the device removed from the site). ``close`` never writes.
* Points with ``cov: true`` are subscribed (``bacnet_cov``) and not polled.
* Every BACnet error, reject, abort and timeout is counted per device
  (``buildingd_bacnet_failures_total{device,failure}``) and raised in the error tree; a silent
  device fails only its own reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

from buildingd.clock import answer_timeout_s
from buildingd.config.bacnet import BacnetDevice, BacnetPoint, Segmentation
from buildingd.drivers.bacnet_codec import (
    BacnetFailure,
    CodecError,
    control,
    decode_value,
    encode_value,
    failure_of,
    object_id,
    plain,
    representable,
    units_problem,
)
from buildingd.drivers.bacnet_cov import CovSubscriptions
from buildingd.drivers.bacnet_plan import Batch, describe_plan, plan_reads, point_read, split_batch
from buildingd.drivers.base import Driver, DriverContext
from buildingd.errors import (
    DeviceRejectedError,
    DeviceUnavailableError,
    PriorityHeldError,
)
from buildingd.points import Sample

log = logging.getLogger(__name__)

T = TypeVar("T")
CLIENT_KEY = "bacnet:client"
WHO_IS_TIMEOUT_S = 3.0


def _client_class() -> Any:
    """bacpypes3's Application that also hands every I-Am to the waiters of a directed Who-Is.

    ``who_is(low, high, address)`` keeps only I-Ams whose source is ``address``: fine for a
    Who-Is sent to the device itself, but one sent to a (directed) broadcast address is answered
    from the device's own address, and bacpypes3 drops that answer. ``i_am_waiters`` (device
    instance -> futures) catch it instead."""
    from bacpypes3.app import Application

    class Client(Application):  # type: ignore[misc]
        i_am_waiters: dict[int, list[asyncio.Future[Any]]]

        async def do_IAmRequest(self, apdu: Any) -> None:
            await super().do_IAmRequest(apdu)
            for waiter in self.i_am_waiters.pop(apdu.iAmDeviceIdentifier[1], []):
                if not waiter.done():
                    waiter.set_result(apdu.pduSource)

    return Client


async def _make_client(ctx: DriverContext) -> Any:
    from bacpypes3.basetypes import HostNPort, IPMode
    from bacpypes3.local.device import DeviceObject
    from bacpypes3.local.networkport import NetworkPortObject

    device = DeviceObject(
        objectIdentifier=("device", ctx.bacnet.device_instance),
        objectName="buildingd",
        vendorIdentifier=999,
        # Our own deadline per request (the device's timeout_s, with its retries) governs; the
        # stack's retries would multiply it (3 s x 4 by default).
        apduTimeout=60_000,
        numberOfApduRetries=0,
    )
    port = NetworkPortObject(
        ctx.bacnet.address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
    )
    if ctx.bacnet.bbmd is not None:
        port.bacnetIPMode = IPMode.foreign
        port.fdBBMDAddress = HostNPort(ctx.bacnet.bbmd)
        port.fdSubscriptionLifetime = ctx.bacnet.bbmd_ttl_s
    app = _client_class().from_object_list([device, port])
    app.i_am_waiters = {}
    log.info("bacnet: client device %d on %s", ctx.bacnet.device_instance, ctx.bacnet.address)
    return app


async def _close_client(app: Any) -> None:
    app.close()


class BacnetDriver(Driver):
    relinquishes = True

    def __init__(self, device: BacnetDevice, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        self.spec = device
        self._points = {p.id: p for p in device.points}
        self.plan: list[Batch] = plan_reads(
            [point_read(p) for p in device.points if not p.cov], device.reads
        )
        self.rpm = device.reads.rpm  # False once the device refused ReadPropertyMultiple
        self.requests = 0
        self.app: Any = None
        self.peer: Any = None  # bacpypes3 Address of the device
        self.excluded: dict[str, str] = {}  # point id -> why it is not read (units mismatch)
        self.commanded: set[str] = set()  # points holding a value at our priority
        self.cov: CovSubscriptions | None = None  # once opened, when points have ``cov: true``
        self._cov_task: asyncio.Task[None] | None = None
        self.last_failure: BacnetFailure | None = None

    def describe(self) -> list[str]:
        return describe_plan(self.plan)

    # -- requests ------------------------------------------------------------------------------

    def _count(self, failure: BacnetFailure) -> None:
        if self.ctx.metrics is not None:
            self.ctx.metrics.inc(
                "buildingd_bacnet_failures_total", device=self.device.id, failure=failure.counter
            )

    async def _call(self, request: Callable[[], Awaitable[T]], point_id: str | None = None) -> T:
        """One confirmed request with the device's timeout and retries."""
        from bacpypes3.apdu import ErrorRejectAbortNack

        timeout_s = answer_timeout_s(self.ctx.clock, self.spec.timeout_s)
        failure = BacnetFailure("timeout", "no-response")
        cause: BaseException | None = None
        for _ in range(self.spec.retries + 1):
            self.requests += 1
            try:
                async with asyncio.timeout(timeout_s):
                    return await request()
            except TimeoutError as err:
                failure, cause = BacnetFailure("timeout", "no-response"), err
            except ErrorRejectAbortNack as err:
                failure, cause = failure_of(err), err
            self._count(failure)
            if not failure.transient:
                break  # the device answered: asking again gets the same answer
        self.last_failure = failure
        raise failure.to_error(device_id=self.device.id, point_id=point_id) from cause

    async def open(self) -> None:
        self.app = await self.ctx.resources.get(
            CLIENT_KEY, lambda: _make_client(self.ctx), _close_client
        )
        from bacpypes3.pdu import Address

        if self.spec.address is not None:
            self.peer = Address(self.spec.address)
        else:
            self.peer = await self._discover()
        await self._learn_limits()
        await self._check_units()
        cov_points = [p for p in self.spec.points if p.cov and p.id not in self.excluded]
        if cov_points and self._cov_task is None:
            self.cov = CovSubscriptions(
                self.device.id, self.app, self.peer, cov_points, self.spec.cov_lifetime_s,
                self.ctx.clock, self._count,
            )  # fmt: skip
            self._cov_task = asyncio.create_task(
                self.cov.run(), name=f"bacnet[{self.device.id}].cov"
            )

    async def _learn_limits(self) -> None:
        """Plan with what the device object declares (max-apdu-length-accepted,
        segmentation-supported; 135 12.11), when it is less than the device file allows."""
        from bacpypes3.primitivedata import ObjectIdentifier

        oid = ObjectIdentifier(f"device,{self.spec.device_instance}")
        try:
            max_apdu = int(await self._call(
                partial(self.app.read_property, self.peer, oid, "max-apdu-length-accepted")
            ))  # fmt: skip
            segmentation = str(await self._call(
                partial(self.app.read_property, self.peer, oid, "segmentation-supported")
            ))  # fmt: skip
        except DeviceRejectedError as err:
            log.info("device %s: limits not readable (%s); planning with the device file's",
                     self.device.id, err)  # fmt: skip
            return
        limits = self.spec.reads
        declared = Segmentation(segmentation) if segmentation in set(Segmentation) else None
        # A segmentation set in the device file wins (a device that declares more than it
        # does); otherwise the device's own declaration.
        keep = "segmentation" in limits.model_fields_set or declared is None
        learned = limits.model_copy(
            update={
                "max_apdu": min(limits.max_apdu, max(50, max_apdu)),
                "segmentation": limits.segmentation if keep else declared,
            }
        )
        if learned != limits:
            log.info("device %s: max APDU %d, %s: re-planned", self.device.id,
                     learned.max_apdu, learned.segmentation.value)  # fmt: skip
        self.plan = plan_reads([point_read(p) for p in self.spec.points if not p.cov], learned)

    async def _discover(self) -> Any:
        instance = self.spec.device_instance
        try:
            async with asyncio.timeout(answer_timeout_s(self.ctx.clock, WHO_IS_TIMEOUT_S)):
                if self.ctx.bacnet.who_is_to:
                    found = await self._who_is_to(instance, self.ctx.bacnet.who_is_to)
                else:
                    i_ams = await self.app.who_is(instance, instance)
                    found = i_ams[0].pduSource if i_ams else None
        except TimeoutError:
            found = None
        if found is None:
            raise DeviceUnavailableError(
                f"no I-Am from device {instance} (Who-Is)", device_id=self.device.id
            )
        log.info("bacnet: device %d found at %s", instance, found)
        return found

    async def _who_is_to(self, instance: int, to: str) -> Any:
        """Who-Is sent to one address (a device, or a directed broadcast such as
        ``10.0.1.255``); the I-Am is taken from whichever address it comes."""
        from bacpypes3.apdu import WhoIsRequest
        from bacpypes3.pdu import Address

        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.app.i_am_waiters.setdefault(instance, []).append(waiter)
        try:
            self.app.request(WhoIsRequest(
                deviceInstanceRangeLowLimit=instance, deviceInstanceRangeHighLimit=instance,
                destination=Address(to),
            ))  # fmt: skip
            return await waiter
        finally:
            waiters = self.app.i_am_waiters.get(instance, [])
            if waiter in waiters:
                waiters.remove(waiter)

    async def _check_units(self) -> None:
        analog = [p for p in self.spec.points if p.object_type.has_units]
        for point in analog:
            from bacpypes3.primitivedata import ObjectIdentifier

            oid = ObjectIdentifier(object_id(point))
            try:
                units = await self._call(
                    partial(self.app.read_property, self.peer, oid, "units"), point.id
                )
            except DeviceRejectedError as err:  # its reads fail (and are counted) on their own
                log.warning("device %s: units of %s: %s", self.device.id, point.id, err)
                continue
            problem = units_problem(point, str(units))
            if problem is not None:
                self.excluded[point.id] = problem
                log.error("device %s: point %s not read: %s", self.device.id, point.id, problem)
                if self.ctx.metrics is not None:
                    self.ctx.metrics.inc("buildingd_bacnet_units_mismatch_total",
                                         device=self.device.id)  # fmt: skip

    async def close(self) -> None:
        if self._cov_task is not None:
            self._cov_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cov_task
            self._cov_task = None

    # -- reads ---------------------------------------------------------------------------------

    async def read(self) -> Mapping[str, Sample]:
        # A subscribed value that did not change is still current while its subscription is
        # in force (the device would have told us); once it lapses, the value ages and goes stale.
        now = self.ctx.clock.monotonic()
        out: dict[str, Sample] = {} if self.cov is None else self.cov.current(now)
        if self.rpm:
            await self._read_multiple(out)
        else:
            await self._read_each(out)
        return out

    def _sample(self, point_id: str, raw: Any, out: dict[str, Sample]) -> None:
        point = self._points[point_id]
        try:
            value = decode_value(point.object_type, plain(raw))
        except CodecError as err:
            log.warning("device %s: %s: %s", self.device.id, point_id, err)
            return
        out[point_id] = Sample(value, self.ctx.clock.monotonic())

    async def _read_multiple(self, out: dict[str, Sample]) -> None:
        from bacpypes3.basetypes import ErrorType
        from bacpypes3.primitivedata import ObjectIdentifier

        plan: list[Batch] = []
        pending = list(self.plan)
        while pending:
            batch = pending.pop(0)
            reads = [r for r in batch.reads if r.point_id not in self.excluded]
            if not reads:
                plan.append(batch)
                continue
            args: list[Any] = []
            for r in reads:
                args += [ObjectIdentifier(f"{r.object_type.value},{r.instance}"), [r.prop]]
            try:
                results = await self._call(
                    partial(self.app.read_property_multiple, self.peer, args)
                )
            except DeviceRejectedError:
                failure = self.last_failure
                if failure is not None and failure.service_unsupported:
                    log.info("device %s: no ReadPropertyMultiple; reading point by point",
                             self.device.id)  # fmt: skip
                    self.rpm = False
                    await self._read_each(out)
                    return
                if failure is not None and failure.too_big and len(batch.reads) > 1:
                    pending[:0] = split_batch(batch)
                    continue
                raise
            plan.append(batch)
            by_key = {(f"{r.object_type.value},{r.instance}", r.prop): r for r in reads}
            for oid, prop, _index, value in results:
                read = by_key.get((f"{oid[0]},{oid[1]}", str(prop)))
                if read is None:
                    continue
                if isinstance(value, ErrorType):
                    failure = BacnetFailure("error", str(value.errorCode), str(value.errorClass))
                    self._count(failure)
                    log.warning("device %s: %s: %s", self.device.id, read.point_id,
                                failure.counter)  # fmt: skip
                    continue
                self._sample(read.point_id, value, out)
        self.plan = plan

    async def _read_each(self, out: dict[str, Sample]) -> None:
        from bacpypes3.primitivedata import ObjectIdentifier

        for batch in self.plan:
            for r in batch.reads:
                if r.point_id in self.excluded:
                    continue
                oid = ObjectIdentifier(f"{r.object_type.value},{r.instance}")
                try:
                    value = await self._call(
                        partial(self.app.read_property, self.peer, oid, r.prop), r.point_id
                    )
                except DeviceRejectedError as err:
                    log.warning("device %s: %s", self.device.id, err)
                    continue
                self._sample(r.point_id, value, out)

    # -- writes --------------------------------------------------------------------------------

    def representable(self, point_id: str, value: float) -> float:
        point = self._points[point_id]
        try:
            return representable(point.object_type, value)
        except CodecError as err:
            raise DeviceRejectedError(str(err), device_id=self.device.id,
                                      point_id=point_id) from err  # fmt: skip

    async def write(self, point_id: str, value: float) -> float:
        point = self._points[point_id]
        try:
            raw = encode_value(point.object_type, value)
        except CodecError as err:
            raise DeviceRejectedError(str(err), device_id=self.device.id,
                                      point_id=point_id) from err  # fmt: skip
        await self._write(point, raw)
        self.commanded.add(point_id)
        present, slots = await self.read_control(point)
        summary = control(slots, self.spec.write_priority)
        if summary.held_above_us:
            assert summary.active_priority is not None
            raise PriorityHeldError(
                f"stored {value} at priority {self.spec.write_priority}, but priority "
                f"{summary.active_priority} holds the point at {present}: not overridden",
                device_id=self.device.id, point_id=point_id,
                priority=summary.active_priority,
            )  # fmt: skip
        return present

    async def relinquish(self, point_id: str) -> float:
        """Write null at our priority: control goes back to the next priority (or the
        relinquish default). Returns the present value afterwards."""
        from bacpypes3.primitivedata import Null

        point = self._points[point_id]
        await self._write(point, Null(()))
        self.commanded.discard(point_id)
        log.info("device %s: %s relinquished at priority %d", self.device.id, point_id,
                 self.spec.write_priority)  # fmt: skip
        present, _slots = await self.read_control(point)
        return present

    async def _write(self, point: BacnetPoint, raw: Any) -> None:
        from bacpypes3.primitivedata import ObjectIdentifier

        oid = ObjectIdentifier(object_id(point))
        await self._call(
            partial(
                self.app.write_property,
                self.peer,
                oid,
                "present-value",
                raw,
                priority=self.spec.write_priority,
            ),
            point.id,
        )

    async def read_control(self, point: BacnetPoint) -> tuple[float, list[float | None]]:
        """Present value and the 16 priority slots (None where null)."""
        from bacpypes3.primitivedata import ObjectIdentifier

        oid = ObjectIdentifier(object_id(point))
        present = await self._call(
            partial(self.app.read_property, self.peer, oid, "present-value"), point.id
        )
        array = await self._call(
            partial(self.app.read_property, self.peer, oid, "priority-array"), point.id
        )
        slots: list[float | None] = []
        for slot in array:
            choice = slot._choice
            if choice == "null":
                slots.append(None)
            else:
                slots.append(decode_value(point.object_type, plain(getattr(slot, choice))))
        value = decode_value(point.object_type, plain(present))
        return value, slots

    # -- change of value -----------------------------------------------------------------------

    @property
    def streams_updates(self) -> bool:
        return self.cov is not None  # change-of-value subscriptions, once open

    async def wait_update(self) -> None:
        if self.cov is None:
            await super().wait_update()
            return
        await self.cov.wait_update()
