"""``driver: mqtt``: devices that publish their state on the broker (zigbee2mqtt, Tasmota, generic
JSON) and take commands on a set topic.

The driver subscribes to the device's state topics on the daemon's shared ``MqttConnection``;
retained state counts at start-up. ``read`` returns the latest value of each point with the time
it arrived, so a sensor that stops publishing goes stale in its device agent (``stale_after_s``).
State topics are subscribed with ``[mqtt] qos_readings``. A payload that cannot be used (not
JSON, a string or NaN/Infinity where a number belongs, too large for the connection) is logged
with topic and reason and counted in ``buildingd_bad_payloads_total{device}``, and the last good
values stay. Every message on the device's topics is counted (``messages``,
``buildingd_device_messages_total``), so a flood can be accounted for. A write
publishes the command and waits for the device to report the new state (the read-back); no
confirmation within the device's timeout is an error, not a silent success.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from buildingd.clock import answer_timeout_s
from buildingd.config.mqtt import MqttDevice, MqttPoint
from buildingd.drivers.base import Driver, DriverContext
from buildingd.drivers.mqtt_formats import CommandError, parse, state_topics
from buildingd.drivers.mqtt_formats import command as command_for
from buildingd.errors import DeviceError, DeviceRejectedError, DeviceUnavailableError
from buildingd.mqtt.connection import MqttConnection
from buildingd.points import Sample

log = logging.getLogger(__name__)


class MqttDriver(Driver):
    def __init__(self, device: MqttDevice, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        self.spec = device
        self.latest: dict[str, Sample] = {}
        self.reported_available: bool | None = None
        self.bad_payloads = 0
        self.messages = 0  # messages received on the device's state topics
        self._update = asyncio.Event()
        self._changed: dict[str, asyncio.Event] = {}

    def _conn(self) -> MqttConnection:
        if self.ctx.mqtt is None:
            raise DeviceError("MQTT is off: set [mqtt] enabled = true", device_id=self.device.id)
        return self.ctx.mqtt

    async def open(self) -> None:
        conn = self._conn()
        if self.ctx.metrics is not None:
            conn.use_metrics(self.ctx.metrics)
        qos = conn.settings.qos_readings
        for topic in state_topics(self.spec):
            conn.subscribe(topic, self._on_message, qos, self._on_refused)

    async def close(self) -> None:
        if self.ctx.mqtt is not None:
            self.ctx.mqtt.unsubscribe(self._on_message)

    def _bad(self, topic: str, problem: str) -> None:
        self.bad_payloads += 1
        if self.ctx.metrics is not None:
            self.ctx.metrics.inc("buildingd_bad_payloads_total", device=self.device.id)
        log.warning("device %s: %s: %s", self.device.id, topic, problem)

    def _received(self) -> None:
        self.messages += 1
        if self.ctx.metrics is not None:
            self.ctx.metrics.inc("buildingd_device_messages_total", device=self.device.id)

    def _on_refused(self, topic: str, reason: str) -> None:
        self._received()
        self._bad(topic, f"payload refused by the connection ({reason})")

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self._received()
        parsed = parse(self.spec, topic, payload)
        for problem in parsed.problems:
            self._bad(topic, problem)
        if parsed.available is not None:
            if parsed.available != self.reported_available:
                log.info("device %s reports %s", self.device.id,
                         "online" if parsed.available else "offline")  # fmt: skip
            self.reported_available = parsed.available
        now = self.ctx.clock.monotonic()
        for point_id, value in parsed.values.items():
            self.latest[point_id] = Sample(value, now)
            event = self._changed.get(point_id)
            if event is not None:
                event.set()
        if parsed.values or parsed.available is not None:
            self._update.set()

    async def read(self) -> Mapping[str, Sample]:
        conn = self._conn()
        if not conn.connected.is_set():
            raise DeviceUnavailableError("MQTT broker not connected", device_id=self.device.id)
        if self.reported_available is False:
            raise DeviceUnavailableError("device reports offline", device_id=self.device.id)
        return dict(self.latest)

    @property
    def streams_updates(self) -> bool:
        return True

    async def wait_update(self) -> None:
        await self._update.wait()
        self._update.clear()

    async def write(self, point_id: str, value: float) -> float:
        point = next(p for p in self.spec.points if p.id == point_id)
        try:
            topic, payload = command_for(self.spec, point, value)
        except CommandError as err:
            raise DeviceRejectedError(
                str(err), device_id=self.device.id, point_id=point_id
            ) from err
        changed = self._changed.setdefault(point_id, asyncio.Event())
        changed.clear()
        qos = self._conn().settings.qos_commands
        if not await self._conn().publish(topic, payload, qos=qos):
            raise DeviceUnavailableError("MQTT broker not connected", device_id=self.device.id)
        return await self._read_back(point, value, changed)

    async def _read_back(self, point: MqttPoint, value: float, changed: asyncio.Event) -> float:
        """Wait for the device to report ``value``; a report of something else (an older state
        still in flight) is kept waiting on until the timeout, then returned as the read-back."""
        reported: float | None = None
        try:
            async with asyncio.timeout(answer_timeout_s(self.ctx.clock, self.device.timeout_s)):
                while True:
                    await changed.wait()
                    changed.clear()
                    reported = self.latest[point.id].value
                    if abs(reported - value) <= 1e-6 + 0.005 * abs(value):
                        return reported
        except TimeoutError:
            if reported is not None:
                return reported  # the device agent reports the mismatch
            raise DeviceUnavailableError(
                f"no state report within {self.device.timeout_s:g} s of the command",
                device_id=self.device.id,
                point_id=point.id,
            ) from None
