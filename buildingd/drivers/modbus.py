"""``driver: modbus-tcp`` and ``modbus-rtu`` on pymodbus 3.x (async clients).

* One ``ModbusLine`` per TCP endpoint or serial port, shared by every device on it (a
  ``SharedResources`` entry): requests are serialised, RTU frames are separated by the 3.5
  character silent interval the serial line protocol requires (Modbus over Serial Line v1.02,
  section 2.5.1.1; 1.75 ms above 19,200 baud), a lost connection is re-opened with jittered
  exponential backoff, and availability is logged once per change.
* Reads follow the device's poll plan (``modbus_plan``); a block the device refuses with
  exception 02 (illegal data address) is split and re-read, and the plan keeps the split.
* Writes go only to writable points (limits were checked by the device agent), multi-register
  values in one request (function 16), a bit inside a register by read-modify-write; then the
  point is read back and returned, so the agent can compare.
* Per-device timeout and retries. A unit that does not answer in time fails its own request
  only: the line stays open for its neighbours (on an RS-485 bus or behind a TCP gateway, one
  dead device must not take the others down), and the silent device is polled again only after
  its own jittered backoff. The line is closed only when the connection itself is lost, or on
  TCP when no unit at all has answered for a while (a socket that only looks connected).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import termios
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from buildingd.clock import answer_timeout_s
from buildingd.config.modbus import (
    DataType,
    ModbusDeviceBase,
    ModbusPoint,
    ModbusRtuDevice,
    ModbusTcpDevice,
    RegisterTable,
    SerialConnection,
)
from buildingd.drivers.base import Driver, DriverContext
from buildingd.drivers.modbus_codec import BIT_TABLES, CodecError, decode, encode, encode_bit
from buildingd.drivers.modbus_codec import register_count as width
from buildingd.drivers.modbus_plan import (
    Block,
    Refused,
    atoms,
    describe_plan,
    plan_reads,
    refused_between,
    refused_point,
    split_block,
    wire_cost,
)
from buildingd.errors import DeviceRejectedError, DeviceUnavailableError
from buildingd.points import Sample

log = logging.getLogger(__name__)

ILLEGAL_DATA_ADDRESS = 2
FUNCTION_CODE = {
    "read_coils": 1, "read_discrete_inputs": 2, "read_holding_registers": 3,
    "read_input_registers": 4, "write_coil": 5, "write_register": 6, "write_registers": 16,
}  # fmt: skip
READ_FN = {
    RegisterTable.COIL: "read_coils",
    RegisterTable.DISCRETE_INPUT: "read_discrete_inputs",
    RegisterTable.HOLDING_REGISTER: "read_holding_registers",
    RegisterTable.INPUT_REGISTER: "read_input_registers",
}
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0  # for a line that is down, and for a silent device
# On TCP, a connection on which no unit has answered for this long (and at least a few requests
# in a row went unanswered) is re-opened: a firewall or NAT that dropped its state, or a gateway
# that lost power, leaves a socket that looks connected but on which nothing will be answered.
# A line where any unit still answers is never re-opened for another unit's silence.
SILENT_LINE_RECONNECT_S = 30.0
SILENT_LINE_MIN_REQUESTS = 3
YIELD_EVERY_POINTS = 50  # decoding gives the event loop a turn after each block past this


def inter_frame_s(baudrate: int) -> float:
    """3.5 character times of 11 bits; fixed at 1.75 ms above 19,200 baud."""
    return 0.00175 if baudrate > 19200 else 3.5 * 11 / baudrate


def serial_settings_refused(serial: SerialConnection, err: BaseException) -> str:
    """One line for a serial port that will not open: missing, busy, or refusing its settings
    (``termios.error`` EINVAL, with the hint for the usual cause: a pty (socat) takes no parity)."""
    args = getattr(err, "args", ())
    detail = " ".join(str(a) for a in args) or type(err).__name__
    if isinstance(err, OSError) and err.errno != errno.EINVAL:
        return f"serial port {serial.port} cannot be opened: {err.strerror or detail}"
    settings = (f"{serial.baudrate} baud, parity {serial.parity}, {serial.bytesize} data bits, "
                f"{serial.stopbits} stop bit{'s' if serial.stopbits > 1 else ''}")  # fmt: skip
    out = f"serial port {serial.port} refuses its settings ({settings}): {detail}"
    if serial.parity != "N":
        out += "; ptys (socat) refuse parity: use parity: N"
    return out


class LineDown(Exception):
    """The line is down (connection lost or refused, or waiting out its backoff)."""


class NoAnswer(Exception):
    """The addressed unit did not answer this request in time (or its answer was unusable); the
    line itself is up, and the other units on it are not affected."""


class PriorityLock:
    """One request on the line at a time; when it is done, a waiting write (``urgent``) goes
    before every waiting read, so a command never waits for the rest of a poll in progress."""

    def __init__(self) -> None:
        self._held = False
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    async def acquire(self, urgent: bool) -> None:
        if not self._held:
            self._held = True
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[0 if urgent else 1].append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over as we were cancelled
                self.release()
            raise

    def release(self) -> None:
        """Hand the line to the next waiter (writes first), or free it."""
        for queue in self._waiting:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():  # a cancelled waiter has given up its turn
                    waiter.set_result(None)
                    return
        self._held = False


def _backoff(now: float, backoff_s: float) -> tuple[float, float]:
    """(when to try again, the next backoff): jittered exponential, capped."""
    return now + backoff_s * random.uniform(0.5, 1.5), min(backoff_s * 2, BACKOFF_MAX_S)


class ModbusLine:
    """One connection (TCP endpoint or serial line) and the lock that serialises it."""

    def __init__(
        self,
        name: str,
        client: Any,
        gap_s: float,
        *,
        reconnect_when_silent: bool = False,
        serial: SerialConnection | None = None,
    ) -> None:
        self.name, self.client, self.gap_s = name, client, gap_s
        self.reconnect_when_silent = reconnect_when_silent
        self.serial = serial
        self.lock = PriorityLock()
        self.available: bool | None = None
        self._backoff_s = BACKOFF_MIN_S
        self._retry_at = 0.0
        self._unanswered = 0  # requests in a row that no unit answered
        self._answered_at = 0.0  # loop time of the last answer (or of connecting)

    async def request(
        self, fn: str, timeout_s: float, *args: Any, urgent: bool = False, **kw: Any
    ) -> Any:
        """One request, serialised with the others on the line; ``urgent`` (a write and its
        read-back) goes before the reads waiting for the line.

        Raises ``LineDown`` when the connection is lost or cannot be opened (the line then backs
        off), ``NoAnswer`` when the unit stays silent past ``timeout_s`` or answers with a frame
        that is not the answer to this request (the line stays open).
        """
        loop = asyncio.get_running_loop()
        await self.lock.acquire(urgent)
        try:
            return await self._request(loop, fn, timeout_s, *args, **kw)
        finally:
            self.lock.release()

    async def _request(
        self, loop: asyncio.AbstractEventLoop, fn: str, timeout_s: float, *args: Any, **kw: Any
    ) -> Any:
        from pymodbus.exceptions import ConnectionException, ModbusException

        if not self.client.connected:
            if loop.time() < self._retry_at:
                raise LineDown(f"{self.name} down; next attempt after backoff")
            why = "cannot connect"
            try:
                async with asyncio.timeout(timeout_s):
                    ok = await self.client.connect()
            except TimeoutError:
                ok = False
            except OSError as err:
                ok, why = False, f"cannot connect: {err}"
                if self.serial is not None:
                    why = serial_settings_refused(self.serial, err)
            except termios.error as err:  # not an OSError: a port that refuses its settings
                ok, why = False, str(err)
                if self.serial is not None:
                    why = serial_settings_refused(self.serial, err)
            if not ok:
                self._down(loop.time(), why)
                raise LineDown(f"cannot connect to {self.name}")
            self._answered_at, self._unanswered = loop.time(), 0
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(timeout_s):
                response = await getattr(self.client, fn)(*args, **kw)
            if task is not None and task.cancelling() > cancels:
                # pymodbus awaits the answer with ``asyncio.wait_for``, which on Python 3.11
                # drops a cancellation that arrives with the answer (CPython gh-86296): the
                # stop that asked for it would wait for a poll loop that never ends.
                raise asyncio.CancelledError
        except ConnectionException as err:
            raise self._lost(loop.time(), err) from err
        except (TimeoutError, ModbusException) as err:
            # Before OSError: TimeoutError is one. pymodbus raises ModbusIOException for its
            # own timeout and for a garbled or stray frame: like our timeout, a failure of
            # this request, unless the connection went away meanwhile.
            if not self.client.connected:
                raise self._lost(loop.time(), err) from err
            raise self._unanswered_request(loop.time(), timeout_s, err) from err
        except OSError as err:
            raise self._lost(loop.time(), err) from err
        finally:
            if self.gap_s:
                await asyncio.sleep(self.gap_s)
        if response.function_code & 0x7F != FUNCTION_CODE[fn]:
            # A late answer to an earlier request of the same unit (RTU has no transaction
            # id to tell them apart): not this request's answer.
            raise NoAnswer(f"{self.name}: answer of function {response.function_code}")
        self._answered_at, self._unanswered = loop.time(), 0
        self._up()
        return response

    def _lost(self, now: float, err: BaseException) -> LineDown:
        self.client.close()
        why = f"{type(err).__name__}: {err}"
        self._down(now, why)
        return LineDown(f"{self.name}: {why}")

    def _unanswered_request(self, now: float, timeout_s: float, err: BaseException) -> NoAnswer:
        self._unanswered += 1
        silent_s = now - self._answered_at
        if (
            self.reconnect_when_silent
            and self._unanswered >= SILENT_LINE_MIN_REQUESTS
            and silent_s >= SILENT_LINE_RECONNECT_S
        ):
            log.info("modbus: %s: no unit answered for %.0f s (%d requests); reconnecting",
                     self.name, silent_s, self._unanswered)  # fmt: skip
            self.client.close()  # the next request connects again (and backs off if it cannot)
        if isinstance(err, TimeoutError):
            return NoAnswer(f"{self.name}: no answer within {timeout_s:g} s (timeout)")
        return NoAnswer(f"{self.name}: {type(err).__name__}: {err}")

    def _down(self, now: float, why: str) -> None:
        self._retry_at, self._backoff_s = _backoff(now, self._backoff_s)
        if self.available is not False:
            log.warning("modbus: %s unavailable: %s", self.name, why)
        self.available = False

    def _up(self) -> None:
        self._backoff_s = BACKOFF_MIN_S
        if self.available is not True:
            log.info("modbus: %s connected", self.name)
        self.available = True

    async def close(self) -> None:
        self.client.close()


def _make_line(device: ModbusDeviceBase) -> tuple[str, Any]:
    """The shared-resource key and a factory for the device's line."""
    if isinstance(device, ModbusTcpDevice):
        conn = device.connection
        key = f"modbus-tcp:{conn.host}:{conn.port}"

        async def tcp() -> ModbusLine:
            from pymodbus.client import AsyncModbusTcpClient

            client = AsyncModbusTcpClient(conn.host, port=conn.port, timeout=10, retries=0,
                                          reconnect_delay=0)  # fmt: skip
            return ModbusLine(f"{conn.host}:{conn.port}", client, 0.0, reconnect_when_silent=True)

        return key, tcp
    assert isinstance(device, ModbusRtuDevice)
    serial = device.connection
    key = f"modbus-rtu:{serial.port}"

    async def rtu() -> ModbusLine:
        from pymodbus.client import AsyncModbusSerialClient

        client = AsyncModbusSerialClient(
            serial.port, baudrate=serial.baudrate, parity=serial.parity, stopbits=serial.stopbits,
            bytesize=serial.bytesize, timeout=10, retries=0, reconnect_delay=0,
        )  # fmt: skip
        return ModbusLine(serial.port, client, inter_frame_s(serial.baudrate), serial=serial)

    return key, rtu


@dataclass
class _Poll:
    """What one poll gathered: answers to decode, points refused, refusals learned or gone."""

    answers: list[tuple[Block, list[Any]]] = field(default_factory=list)
    faults: dict[str, str] = field(default_factory=dict)
    learned: set[Refused] = field(default_factory=set)
    recovered: set[Refused] = field(default_factory=set)


def _ranges(refused: frozenset[Refused]) -> str:
    def one(r: Refused) -> str:
        where = f"{r.start}-{r.end - 1}" if r.end > r.start else f"across {r.start - 1}/{r.start}"
        return f"{r.table.value} {where}"

    return ", ".join(one(r) for r in sorted(refused, key=lambda r: (r.table.value, r.start)))


class ModbusDriver(Driver):
    def __init__(self, device: ModbusTcpDevice | ModbusRtuDevice, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        self.spec = device
        self.cost = wire_cost(device)
        self.refused: frozenset[Refused] = frozenset()  # learned from exception 02 answers
        self.plan: list[Block] = self._plan()
        # Points the device refused at the last poll, with why (the device agent reports each
        # change once).
        self.point_faults: dict[str, str] = {}
        self.line: ModbusLine | None = None
        self.requests = 0
        self._points = {p.id: p for p in device.points}
        self._silent_backoff_s = BACKOFF_MIN_S
        self._silent_until = 0.0  # loop time: a silent device is not polled before this

    def describe(self) -> list[str]:
        return describe_plan(self.plan, self.cost, self.spec.points)

    async def open(self) -> None:
        key, factory = _make_line(self.spec)
        self.line = await self.ctx.resources.get(key, factory, lambda line: line.close())

    async def close(self) -> None:
        return None  # the line is shared; SharedResources closes it with the daemon

    async def _call(self, fn: str, *args: Any, urgent: bool = False, **kw: Any) -> Any:
        """One request with the device's timeout and retries; ``DeviceUnavailableError`` when the
        line is down (no retry: it is backing off) or the unit does not answer any attempt."""
        assert self.line is not None
        timeout = answer_timeout_s(self.ctx.clock, self.spec.timeout_s)
        last: NoAnswer | None = None
        for _ in range(self.spec.retries + 1):
            self.requests += 1
            try:
                response = await self.line.request(
                    fn, timeout, *args, urgent=urgent, device_id=self.spec.unit_id, **kw
                )
            except LineDown as err:
                raise DeviceUnavailableError(str(err), device_id=self.device.id) from err
            except NoAnswer as err:
                last = err
                continue
            self._silent_backoff_s, self._silent_until = BACKOFF_MIN_S, 0.0
            return response
        # Silent: skip this device's polls for a while, so its timeouts do not keep eating the
        # line time its neighbours need (an RTU bus carries one request at a time).
        now = asyncio.get_running_loop().time()
        self._silent_until, self._silent_backoff_s = _backoff(now, self._silent_backoff_s)
        raise DeviceUnavailableError(
            f"unit {self.spec.unit_id} did not answer: {last}", device_id=self.device.id
        ) from last

    async def read(self) -> Mapping[str, Sample]:
        wait_s = self._silent_until - asyncio.get_running_loop().time()
        if wait_s > 0:
            raise DeviceUnavailableError(
                f"unit {self.spec.unit_id} not answering; next attempt in {wait_s:.1f} s",
                device_id=self.device.id,
            )
        poll = _Poll()
        for block in self.plan:
            await self._read_block(block, poll)
        if poll.learned or poll.recovered:
            self.refused = (self.refused | poll.learned) - poll.recovered
            self.plan = self._plan()
            refused = _ranges(self.refused) or "nothing now"
            log.info("device %s: the device refuses %s; poll re-planned: %d requests",
                     self.device.id, refused, len(self.plan))  # fmt: skip
        self.point_faults = poll.faults
        # Decoded once the poll's requests are done: the poll keeps the line no longer than
        # its requests take (a write waiting for the line goes before the next one anyway).
        out: dict[str, Sample] = {}
        now = self.ctx.clock.monotonic()
        for block, data in poll.answers:
            if len(out) >= YIELD_EVERY_POINTS:
                # Let a command waiting on the loop go to the line meanwhile: decoding 2,000
                # points takes ~10 ms of CPU, many round trips.
                await asyncio.sleep(0)
            for point in block.points:
                first = point.address - block.start
                try:
                    out[point.id] = Sample(decode(point, data[first : first + width(point)]), now)
                except CodecError as err:
                    log.warning("device %s: %s", self.device.id, err)
        if not out and self.plan:
            raise DeviceRejectedError("every read was refused", device_id=self.device.id)
        return out

    async def _read_block(self, block: Block, poll: _Poll) -> bool:
        """Read ``block`` into ``poll``; refused with exception 02, read it in two parts and
        learn what the device refuses. True when every point of it was read."""
        response = await self._call(READ_FN[block.table], block.start, count=block.count)
        if not response.isError():
            poll.answers.append(
                (block, response.bits if block.table in BIT_TABLES else response.registers)
            )
            one = refused_point(block)
            if one in self.refused:
                poll.recovered.add(one)  # a refused point reads again: plan it with the others
            return True
        code = getattr(response, "exception_code", None)
        parts = split_block(block) if len(atoms(block.points, block.count)) > 1 else [block]
        if code != ILLEGAL_DATA_ADDRESS or len(parts) == 1:
            if code == ILLEGAL_DATA_ADDRESS and refused_point(block) not in self.refused:
                poll.learned.add(refused_point(block))
            for point in block.points:
                poll.faults[point.id] = (
                    f"refused by the device: exception {code} ({block.describe()})"
                )
            return False
        results = [await self._read_block(part, poll) for part in parts]
        if all(results):
            poll.learned.add(refused_between(parts))
        return False

    def _plan(self) -> list[Block]:
        return plan_reads(self.spec.points, self.spec.planning, self.cost, self.refused)

    def representable(self, point_id: str, value: float) -> float:
        """The value the point holds once ``value`` is written: what its encoding can represent
        (an int16 of scale 0.1 holds 16.4 for 16.37, a float32 the nearest binary32). The device
        agent compares the read-back with this, so quantisation is not taken for a mismatch."""
        point = self._points[point_id]
        try:
            if point.type is DataType.BIT and point.table not in BIT_TABLES:
                return decode(point, [encode_bit(point, 0, value)])
            return decode(point, encode(point, value))
        except CodecError as err:
            raise DeviceRejectedError(
                str(err), device_id=self.device.id, point_id=point_id
            ) from err

    async def write(self, point_id: str, value: float) -> float:
        # Not held back by a silent device's poll backoff: a command is worth one more try.
        point = self._points[point_id]
        try:
            if point.table is RegisterTable.COIL:
                response = await self._call(
                    "write_coil", point.address, bool(encode(point, value)[0]), urgent=True
                )
            elif point.type is DataType.BIT:
                current = await self._read_point_registers(point)
                word = encode_bit(point, int(current[0]), value)
                response = await self._call("write_register", point.address, word, urgent=True)
            else:
                words = encode(point, value)
                if len(words) == 1:
                    response = await self._call(
                        "write_register", point.address, words[0], urgent=True
                    )
                else:  # one request for the whole value: never half-written
                    response = await self._call(
                        "write_registers", point.address, words, urgent=True
                    )
        except CodecError as err:
            raise DeviceRejectedError(
                str(err), device_id=self.device.id, point_id=point_id
            ) from err
        if response.isError():
            raise DeviceRejectedError(
                f"write refused: exception {getattr(response, 'exception_code', '?')}",
                device_id=self.device.id, point_id=point_id,
            )  # fmt: skip
        return decode(point, await self._read_point_registers(point))

    async def _read_point_registers(self, point: ModbusPoint) -> list[Any]:
        # Part of a write (read-modify-write, read-back): as urgent as the write itself.
        response = await self._call(
            READ_FN[point.table], point.address, count=width(point), urgent=True
        )
        if response.isError():
            raise DeviceRejectedError(
                f"read-back refused: exception {getattr(response, 'exception_code', '?')}",
                device_id=self.device.id, point_id=point.id,
            )  # fmt: skip
        data = response.bits if point.table in BIT_TABLES else response.registers
        return list(data[: width(point)])
