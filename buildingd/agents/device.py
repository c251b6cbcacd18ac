"""Device agent: owns one driver connection; polls or streams points, validates them, reports by
exception, and executes commands (limits checked, written, read back) before the next poll.

Giving points back (drivers with ``relinquishes``, BACnet): a command with ``release`` (a zone's
hand override ended) relinquishes the point instead of writing it; at stop, ``release`` gives
back what was commanded (``AgentContext.commanded``, kept across agent restarts) in the zones
whose policy says ``shutdown: {action: release}`` (lifecycle calls it); a device removed from
the site by a reload gives back everything. Other drivers write the command's value, and hold
their points at stop (logged once)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

from buildingd.agents.bus import Envelope, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    COMMANDS_TOPIC,
    EVENTS_TOPIC,
    CommandMsg,
    CommandResultMsg,
    EventMsg,
    ReadingMsg,
    device_address,
    readings_topic,
)
from buildingd.agents.runtime import Agent
from buildingd.audit import audit_command
from buildingd.config.base import PointBase
from buildingd.config.devices import DeviceSpec
from buildingd.control.validation import FrozenTracker, check_command, judge
from buildingd.drivers.base import Driver, create_driver
from buildingd.errors import (
    BuildingdError,
    CommandRejectedError,
    DeviceError,
    ReadBackMismatchError,
)
from buildingd.points import PointKind, Quality, Sample

log = logging.getLogger(__name__)

HEARTBEAT_S = 300.0  # a reading is re-published at least this often even when unchanged
YIELD_EVERY_POINTS = 50  # the poll's checks give the event loop a turn this often


@runtime_checkable
class QuantisingDriver(Protocol):
    """A driver that knows which values a point can hold (Modbus: an integer register holds a
    multiple of its scale, a float32 the nearest binary32). Drivers need not import this: having
    the method is enough."""

    def representable(self, point_id: str, value: float) -> float:
        """The value the point holds once ``value`` is written."""
        ...


@runtime_checkable
class PointFaultDriver(Protocol):
    """A driver that tells which points the device refused at the last read, and why (Modbus:
    exception 02, illegal data address). The agent reports each change once."""

    point_faults: dict[str, str]


@dataclass
class _Published:
    value: float
    quality: Quality
    at_s: float


class DeviceAgent(Agent):
    overflow = "block"  # commands must not be dropped
    mailbox_size = 100
    # Publish only changes beyond the deadband (and a heartbeat); False publishes every poll
    # (kept for the benchmark that measures what report-by-exception saves).
    report_by_exception = True

    def __init__(self, device: DeviceSpec, ctx: AgentContext) -> None:
        super().__init__(device_address(device.id))
        self.device = device
        self.ctx = ctx
        self.points: dict[str, PointBase] = {p.id: p for p in device.points_list()}
        self.available: bool | None = None
        self.driver: Driver | None = None
        self._frozen: dict[str, FrozenTracker] = {}
        self._published: dict[str, _Published] = {}
        self._last_good_s: dict[str, float] = {}
        self.last_poll_s: float | None = None
        self._poll_started_s: float | None = None  # set while a read is in flight
        self._writing = asyncio.Lock()  # held while a command is executed
        self._point_faults: dict[str, str] = {}  # reported by the driver, as last reported on
        self._reports_point_faults = False  # the driver is a PointFaultDriver (set once: slow)
        # The driver last checked against QuantisingDriver, and the answer (a protocol check
        # costs tens of microseconds: once per driver, not twice per command).
        self._quantising: tuple[object, bool] = (None, False)
        # Points written and not given back (shared with this device's earlier agents).
        self.commanded: set[str] = ctx.commanded.setdefault(device.id, set())

    async def run(self, started: Callable[[], None]) -> None:
        self.ctx.bus.subscribe(self.name, self.inbox)
        self.driver = create_driver(self.device, self.ctx.drivers)
        self._reports_point_faults = isinstance(self.driver, PointFaultDriver)
        started_at = self.ctx.clock.monotonic()
        for pid in self.points:
            self._last_good_s[pid] = started_at
        try:
            opened = await self._open()
            started()
            inbox_get: asyncio.Task[Envelope] | None = None
            update: asyncio.Task[None] | None = None
            # The poll is a task of its own, so commands are taken while it runs: on a line that
            # serialises requests (Modbus) the write then goes before the poll's next request.
            polling: asyncio.Task[None] | None = None
            poll_due = False  # a streaming driver reported new data during a poll
            next_poll = self.ctx.clock.monotonic() if opened else started_at
            try:
                while True:
                    if inbox_get is None:
                        inbox_get = asyncio.ensure_future(self.inbox.get())
                    if update is None and self.driver.streams_updates:
                        update = asyncio.ensure_future(self.driver.wait_update())
                    waits: set[asyncio.Future[Any]] = {inbox_get}
                    if update is not None:
                        waits.add(update)
                    timeout_s: float | None = None
                    if polling is not None:
                        waits.add(polling)
                    elif not poll_due:
                        wait_s = max(0.0, next_poll - self.ctx.clock.monotonic())
                        timeout_s = self.ctx.clock.to_loop_seconds(wait_s)
                    done, _ = await asyncio.wait(
                        waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    if inbox_get in done:
                        env = inbox_get.result()
                        inbox_get = None
                        await self._handle(env)
                    if polling is not None and polling in done:
                        finished, polling = polling, None
                        finished.result()  # a bug in a poll crashes the agent
                    if update is not None and update in done:
                        update.result()
                        update = None
                        poll_due = True
                    if polling is None and (poll_due or self.ctx.clock.monotonic() >= next_poll):
                        if not poll_due:
                            next_poll = self.ctx.clock.monotonic() + self.device.poll_interval_s
                        poll_due = False
                        polling = asyncio.create_task(self.poll(), name=f"{self.name}.poll")
            finally:
                for task in (inbox_get, update, polling):
                    if task is not None:
                        task.cancel()
                if polling is not None:
                    await asyncio.wait({polling})
        finally:
            self.ctx.bus.unsubscribe(self.name, self.inbox)
            if self.device.id not in self.ctx.site.devices:  # removed by a reload
                await self.release(set(self.commanded), "device removed from the site")
                self.ctx.commanded.pop(self.device.id, None)
            await self.driver.close()

    async def _open(self) -> bool:
        assert self.driver is not None
        try:
            await self.driver.open()
        except DeviceError as err:
            await self._set_available(False, str(err))
            return False
        return True

    async def _set_available(self, up: bool, why: str = "") -> None:
        if self.available is up:
            return
        was = self.available
        self.available = up
        self.ctx.metrics.set("buildingd_device_up", 1.0 if up else 0.0, device=self.device.id)
        if up and was is not None:
            log.info("device %s back", self.device.id)
        elif not up:
            log.warning("device %s unavailable: %s", self.device.id, why)
        if was is not None or not up:
            await self._event(
                "availability",
                "warning" if not up else "info",
                f"device {self.device.id} {'back' if up else 'unavailable: ' + why}",
            )

    async def _event(
        self, kind: str, severity: str, message: str, zone_id: str | None = None
    ) -> None:
        env = EventMsg(
            kind=kind,
            source=self.name,
            zone_id=zone_id,
            severity=severity,
            message=message,
            timestamp=self.ctx.clock.now(),
        ).envelope(Performative.INFORM, self.name, EVENTS_TOPIC)
        await self.ctx.send(env)

    def poll_stuck_since(self, now_s: float) -> float:
        """How long the read in flight has taken (0 when none is): a wedged driver shows here."""
        return 0.0 if self._poll_started_s is None else now_s - self._poll_started_s

    async def on_stop(self) -> None:
        # Graceful stop: let the write in flight finish (it is verified by read-back) before
        # the task is cancelled, so no actuator is left half-written.
        async with self._writing:
            pass

    async def release(self, point_ids: set[str], reason: str) -> None:
        """Give back the commanded points among ``point_ids`` (stop, removal); a driver that
        cannot relinquish holds them (logged once). A failure is logged, the others go on."""
        assert self.driver is not None
        wanted = sorted(point_ids & self.commanded & self.points.keys())
        if not wanted:
            return
        if not self.driver.relinquishes:
            log.info("device %s: %s cannot relinquish; %d point(s) held (%s)", self.device.id,
                     self.device.driver, len(wanted), reason)  # fmt: skip
            return
        async with self._writing:
            for pid in wanted:
                try:
                    now_value = await self.driver.relinquish(pid)
                except DeviceError as err:
                    log.warning("device %s: relinquish %s failed: %s", self.device.id, pid, err)
                    continue
                self.commanded.discard(pid)
                audit_command(self.device.id, pid, now_value, source="buildingd",
                              outcome="relinquished", zone=self._zone_of(pid), reason=reason,
                              read_back=now_value)  # fmt: skip

    async def poll(self) -> None:
        assert self.driver is not None
        now = self.ctx.clock.monotonic()
        self.last_poll_s = now
        self._poll_started_s = now
        started = asyncio.get_running_loop().time()
        try:
            samples = await self.driver.read()
            elapsed = asyncio.get_running_loop().time() - started
            self.ctx.metrics.set("buildingd_poll_seconds", round(elapsed, 6), device=self.device.id)
        except DeviceError as err:
            self.ctx.metrics.inc("buildingd_poll_errors_total", device=self.device.id)
            await self._set_available(False, str(err))
            samples = {}
        else:
            await self._set_available(True)
        finally:
            self._poll_started_s = None
        if self._reports_point_faults:
            await self._report_point_faults(self.driver.point_faults)  # type: ignore[attr-defined]
        now = self.ctx.clock.monotonic()
        for n, (pid, point) in enumerate(self.points.items(), 1):
            if n % YIELD_EVERY_POINTS == 0:
                await asyncio.sleep(0)  # a command waiting on the loop goes first (poll is a task)
            sample = samples.get(pid)
            if sample is not None:
                await self._consider(point, sample, now)
            elif now - self._last_good_s[pid] > self.device.stale_after(point):
                await self._publish(point, self._published_value(pid), Quality.STALE, now)

    async def _report_point_faults(self, faults: dict[str, str]) -> None:
        """A point the device refuses is a device fault: logged and raised once when it starts,
        once when it ends (not at every poll)."""
        before, self._point_faults = self._point_faults, dict(faults)
        for pid, why in faults.items():
            if before.get(pid) != why:
                message = f"device {self.device.id} point {pid}: {why}"
                log.warning("%s", message)
                self.ctx.metrics.inc("buildingd_point_faults_total", device=self.device.id)
                await self._event("point-fault", "warning", message, self._zone_of(pid))
        for pid in before.keys() - faults.keys():
            message = f"device {self.device.id} point {pid}: read again"
            log.info("%s", message)
            await self._event("point-fault", "info", message, self._zone_of(pid))

    def _zone_of(self, pid: str) -> str | None:
        point = self.points.get(pid)
        return point.zone if point is not None else None

    def _published_value(self, pid: str) -> float:
        last = self._published.get(pid)
        return last.value if last is not None else float("nan")

    async def _consider(self, point: PointBase, sample: Sample, now: float) -> None:
        tracker = self._frozen.get(point.id, FrozenTracker()).update(
            sample.value, sample.received_s
        )
        self._frozen[point.id] = tracker
        quality = judge(
            point, sample.value, sample.received_s, now, self.device.stale_after(point), tracker
        )
        if quality is Quality.GOOD:
            self._last_good_s[point.id] = sample.received_s
        else:
            self.ctx.metrics.inc(
                "buildingd_readings_flagged_total", device=self.device.id, quality=quality.value
            )
        await self._publish(point, sample.value, quality, now)

    async def _publish(self, point: PointBase, value: float, quality: Quality, now: float) -> None:
        last = self._published.get(point.id)
        if (
            self.report_by_exception
            and last is not None
            and last.quality is quality
            and now - last.at_s < HEARTBEAT_S
        ):
            same = value == last.value or (value != value and last.value != last.value)
            if same or abs(value - last.value) < point.effective_deadband:
                self.ctx.metrics.inc("buildingd_readings_suppressed_total")
                return
        if last is None or last.quality is not quality:
            if quality is not Quality.GOOD:
                log.warning(
                    "device %s point %s is %s (value %s)", self.device.id, point.id, quality, value
                )
            elif last is not None:
                log.info("device %s point %s is good again", self.device.id, point.id)
        self._published[point.id] = _Published(value, quality, now)
        msg = ReadingMsg(
            device_id=self.device.id,
            point_id=point.id,
            zone_id=point.zone,
            kind=point.kind,
            unit=point.effective_unit,
            value=value if value == value else 0.0,
            quality=quality if value == value else Quality.UNAVAILABLE,
            timestamp=self.ctx.clock.now(),
        )
        self.ctx.metrics.inc("buildingd_readings_published_total")
        await self.ctx.send(
            msg.envelope(Performative.INFORM, self.name, readings_topic(point.zone))
        )

    async def _handle(self, env: Envelope) -> None:
        if env.performative is not Performative.REQUEST or env.ontology != CommandMsg.ontology:
            self.ctx.metrics.inc("buildingd_messages_rejected_total", agent="device")
            return
        try:
            cmd = CommandMsg.parse(env)
        except ValueError as err:
            self.ctx.metrics.inc("buildingd_messages_rejected_total", agent="device")
            log.warning("device %s: malformed command from %s: %s", self.device.id, env.sender, err)
            return
        async with self._writing:
            result = await self.execute(cmd, env.sender)
        reply = result.envelope(
            Performative.INFORM_DONE if result.ok else Performative.FAILURE,
            self.name,
            env.sender,
            conversation_id=env.conversation_id,
            in_reply_to=env.reply_with,
        )
        await self.ctx.send(reply)
        await self.ctx.send(result.envelope(Performative.INFORM, self.name, COMMANDS_TOPIC))

    async def execute(self, cmd: CommandMsg, sender: str = "local") -> CommandResultMsg:
        point = self.points.get(cmd.point_id)
        read_back: float | None = None
        error: str | None = None
        assert self.driver is not None
        released = cmd.release and self.driver.relinquishes
        if point is None:
            error = f"unknown point {cmd.point_id!r}"
        elif not self.ctx.accepting_commands:
            error = "daemon is stopping"
        else:
            policy = (
                self.ctx.site.policy_for(point.zone)
                if point.zone in self.ctx.site.zone_policy
                else None
            )
            try:
                if released:  # null at our priority: the device's own control takes over
                    read_back = await self.driver.relinquish(point.id)
                    self.commanded.discard(point.id)
                else:
                    check_command(self.device.id, point, cmd.value,
                                  policy.safety if policy else None)  # fmt: skip
                    # Before the write: a failed one may still have been stored at our priority.
                    self.commanded.add(point.id)
                    read_back = await self._write_verified(point, cmd.value)
            except CommandRejectedError as err:
                error = str(err)
                self.ctx.metrics.inc("buildingd_commands_rejected_total", device=self.device.id)
            except BuildingdError as err:
                error = str(err)
                self.ctx.metrics.inc("buildingd_command_errors_total", device=self.device.id)
        ok = error is None
        audit_command(
            self.device.id,
            cmd.point_id,
            cmd.value,
            source=sender,
            outcome=("relinquished" if released else "written") if ok else "rejected",
            zone=cmd.zone_id,
            reason=error or cmd.reason,
            read_back=read_back,
        )
        if not ok:
            await self._event("command-rejected", "warning", str(error), cmd.zone_id)
        return CommandResultMsg(
            device_id=self.device.id,
            point_id=cmd.point_id,
            zone_id=cmd.zone_id,
            kind=point.kind if point is not None else PointKind.OTHER,
            value=cmd.value,
            read_back=read_back,
            ok=ok,
            reason=cmd.reason,
            error=error,
            timestamp=self.ctx.clock.now(),
            released=released and ok,
        )

    async def _write_verified(self, point: PointBase, value: float) -> float:
        assert self.driver is not None
        last: BuildingdError | None = None
        for _attempt in range(self.device.retries + 1):
            try:
                read_back = await self.driver.write(point.id, value)
                expected = self._expected_read_back(point, value)
            except DeviceError as err:
                last = err
                continue
            if self._read_back_matches(expected, read_back):
                self.ctx.metrics.inc("buildingd_commands_total", device=self.device.id)
                return read_back
            # The device holds something else than what was written (it clamped to a limit of
            # its own, or something else wrote it): an error and a retry, never a success.
            # Rounded for the message only: 21.4, not 21.400000000000002.
            held = "" if expected == value else f" (held as {round(expected, 10)})"
            last = ReadBackMismatchError(
                f"wrote {value}{held}, read back {round(read_back, 10)}",
                device_id=self.device.id,
                point_id=point.id,
            )
            self.ctx.metrics.inc("buildingd_readback_mismatch_total", device=self.device.id)
            log.error("%s", last)
        assert last is not None
        raise last

    def _expected_read_back(self, point: PointBase, value: float) -> float:
        """What the device should hold after the write: the value as its encoding represents it
        when the driver knows the encoding, else the value itself."""
        driver = self._quantiser()
        return driver.representable(point.id, value) if driver is not None else value

    def _quantiser(self) -> QuantisingDriver | None:
        """The driver, when it is a ``QuantisingDriver``."""
        driver = self.driver
        checked, answer = self._quantising
        if checked is not driver:
            answer = isinstance(driver, QuantisingDriver)
            self._quantising = (driver, answer)
        return cast(QuantisingDriver, driver) if answer else None

    def _read_back_matches(self, expected: float, read_back: float) -> bool:
        if self._quantiser() is not None:
            # Same encoding both ways: equal but for float arithmetic, so one step of the
            # register (0.1 on a scale-0.1 int16) already counts as a mismatch.
            return math.isclose(read_back, expected, rel_tol=1e-9, abs_tol=1e-9)
        # Other drivers report what the device says (JSON numbers, GATT values): a small
        # tolerance for their formatting.
        return abs(read_back - expected) <= max(1e-6, abs(expected) * 1e-4)
