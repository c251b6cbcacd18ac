"""Device schema for ``mqtt`` devices: payload adapter, topics and per-point fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from buildingd.config.base import DeviceBase, PointBase


class MqttPoint(PointBase):
    # zigbee2mqtt / Tasmota: the payload key ("temperature", "AM2301.Temperature");
    # generic JSON: a dotted path into the payload ("sensors.0.t").
    field: str
    scale: float = 1.0


class MqttDevice(DeviceBase):
    driver: Literal["mqtt"]
    adapter: Literal["zigbee2mqtt", "tasmota", "json"]
    topic: str  # zigbee2mqtt friendly name, Tasmota topic, or the generic state topic
    command_topic: str | None = None  # generic JSON only
    payload_template: str | None = None  # generic JSON only: "{\"value\": {value}}"
    points: list[MqttPoint] = Field(min_length=1)
