"""The simulated building's MQTT devices: ``driver: mqtt`` devices marked ``simulated: true`` are
published on the broker the way zigbee2mqtt and Tasmota publish real ones (retained state, an
availability topic, set/cmnd topics obeyed), so the demo runs the real MQTT driver end to end.

A device whose simulated sensor has failed stops publishing, as a dead battery would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any

from buildingd.clock import Clock
from buildingd.config.mqtt import MqttDevice, MqttPoint
from buildingd.drivers.mqtt_formats import Z2M_BRIGHTNESS_MAX
from buildingd.mqtt.connection import MqttConnection
from buildingd.points import PointKind
from buildingd.sim.building import Building

log = logging.getLogger(__name__)

NUMBER = re.compile(rb"-?\d+(?:\.\d+)?")


def _nest(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value


class SimulatedMqttDevices:
    def __init__(
        self, building: Building, clock: Clock, conn: MqttConnection, devices: list[MqttDevice]
    ) -> None:
        self.building, self.clock, self.conn, self.devices = building, clock, conn, devices
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for device in self.devices:
            for topic in self.command_topics(device):
                self.conn.subscribe(topic, self._on_command, qos=1)
        self.conn.on_connect(self._announce)
        if self.conn.connected.is_set():
            await self._announce()
        self._task = asyncio.create_task(self._publisher(), name="sim-mqtt-devices")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @staticmethod
    def command_topics(device: MqttDevice) -> list[str]:
        if device.adapter == "zigbee2mqtt":
            return [f"zigbee2mqtt/{device.topic}/set"]
        if device.adapter == "tasmota":
            return [f"cmnd/{device.topic}/+"]
        return [device.command_topic] if device.command_topic else []

    async def _announce(self) -> None:
        for device in self.devices:
            if device.adapter == "zigbee2mqtt":
                await self.conn.publish(f"zigbee2mqtt/{device.topic}/availability",
                                        b'{"state":"online"}', qos=1, retain=True)  # fmt: skip
            elif device.adapter == "tasmota":
                await self.conn.publish(f"tele/{device.topic}/LWT", b"Online", qos=1, retain=True)
            await self.publish_state(device)

    async def _publisher(self) -> None:
        interval = min(d.poll_interval_s for d in self.devices)
        while True:
            await asyncio.sleep(self.clock.to_loop_seconds(interval))
            for device in self.devices:
                await self.publish_state(device)

    def _value(self, point: MqttPoint) -> float | None:
        self.building.advance_to(self.clock.now())
        if self.building.sensor_failed(point.zone, point.kind):
            return None
        return float(self.building.read_point(point.zone, point.kind))

    async def publish_state(self, device: MqttDevice) -> None:
        values = {p.id: self._value(p) for p in device.points}
        if any(v is None for v in values.values()):
            return  # a dead sensor says nothing
        for topic, body in self.render(device, {k: v for k, v in values.items() if v is not None}):
            await self.conn.publish(topic, body, qos=0, retain=True)

    @staticmethod
    def render(device: MqttDevice, values: dict[str, float]) -> list[tuple[str, bytes]]:
        """State messages in the device's own format."""
        body: dict[str, Any] = {}
        power: dict[str, Any] = {}
        for point in device.points:
            value = values[point.id]
            raw: Any = round(value / point.scale, 2) if point.scale else value
            if point.kind is PointKind.OCCUPANCY:
                raw = value >= 0.5
            if device.adapter == "zigbee2mqtt" and point.kind is PointKind.LIGHT_LEVEL:
                body["state"] = "ON" if value > 0 else "OFF"
                raw = round(value * Z2M_BRIGHTNESS_MAX / 100)
            if device.adapter == "tasmota" and point.field in ("POWER", "Dimmer"):
                power[point.field] = ("ON" if value >= 0.5 else "OFF") if point.field == "POWER" \
                    else round(value)  # fmt: skip
                if point.field == "Dimmer":
                    power["POWER"] = "ON" if value > 0 else "OFF"
                continue
            _nest(body, point.field, raw)
        if device.adapter == "zigbee2mqtt":
            return [(f"zigbee2mqtt/{device.topic}", json.dumps(body).encode())]
        if device.adapter == "tasmota":
            out = []
            if body:
                out.append((f"tele/{device.topic}/SENSOR", json.dumps(body).encode()))
            if power:
                out.append((f"tele/{device.topic}/STATE", json.dumps(power).encode()))
            return out
        return [(device.topic, json.dumps(body).encode())]

    def _on_command(self, topic: str, payload: bytes, retained: bool) -> None:
        for device in self.devices:
            applied = self.apply_command(device, topic, payload)
            if applied:
                asyncio.get_running_loop().create_task(self.publish_state(device))

    def apply_command(self, device: MqttDevice, topic: str, payload: bytes) -> bool:
        """Write what a command asks to the simulated building; True if it was for ``device``."""
        writable = [p for p in device.points if p.writable]
        if device.adapter == "zigbee2mqtt" and topic == f"zigbee2mqtt/{device.topic}/set":
            try:
                body = json.loads(payload)
            except json.JSONDecodeError:
                return True
            for point in writable:
                if point.kind is PointKind.LIGHT_LEVEL and "brightness" in body:
                    level = float(body["brightness"]) * 100 / Z2M_BRIGHTNESS_MAX
                    if str(body.get("state", "ON")).upper() == "OFF":
                        level = 0.0
                    self._write(point, level)
                elif point.field in body:
                    value = body[point.field]
                    number = 1.0 if value == "ON" else 0.0 if value == "OFF" else float(value)
                    self._write(point, number * point.scale)
            return True
        if device.adapter == "tasmota" and topic.startswith(f"cmnd/{device.topic}/"):
            command = topic.rsplit("/", 1)[1]
            for point in writable:
                if point.field == command:
                    word = payload.decode(errors="replace").strip().upper()
                    value = {"ON": 1.0, "OFF": 0.0}.get(word)
                    if value is None:
                        match = NUMBER.search(payload)
                        value = float(match.group()) if match else None
                    if value is not None:
                        self._write(point, value)
            return True
        if device.command_topic == topic:
            match = NUMBER.search(payload)
            for point in writable[:1]:
                if match:
                    self._write(point, float(match.group()) * point.scale)
            return True
        return False

    def _write(self, point: MqttPoint, value: float) -> None:
        self.building.advance_to(self.clock.now())
        self.building.write_point(point.zone, point.kind, value)
        log.debug("sim mqtt: %s %s <- %s", point.zone, point.kind, value)
