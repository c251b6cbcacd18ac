"""Bounds on what the embedded amqtt (0.12) broker reads and keeps; amqtt has none of its own
(mosquitto's are ``message_size_limit`` and ``retain_available``/ACLs).

* A PUBLISH packet longer than ``max_payload_bytes`` is refused before its payload is read: the
  client is disconnected, as mosquitto does past ``message_size_limit`` (``limit_publish_size``;
  amqtt offers plugins no hook before a message is read and broadcast, so this wraps its
  fixed-header decoder, the one place that sees the length first).
* A retained payload larger than ``max_payload_bytes`` is not kept, and retained payloads
  together stay within ``max_retained_bytes`` (``RetainedLimitsPlugin``).

Each refusal is logged once per topic (per client for oversized packets) and counted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from amqtt.plugins.base import BasePlugin

log = logging.getLogger(__name__)
LOGGED_TOPICS = 1000


PUBLISH = 3  # MQTT 3.1.1 section 2.2.1, control packet type
_publish_limit = {"max_bytes": 0}
# What the broker refused, for /metrics: oversized publishes, retained payloads not kept.
REFUSED: dict[str, int] = {"publish": 0, "retained": 0}


def limit_publish_size(max_bytes: int) -> None:
    """Refuse PUBLISH packets whose remaining length (MQTT 3.1.1 section 2.2.3: variable header
    plus payload) is above ``max_bytes``, for every amqtt broker in this process (there is one).
    The decoder then reports end of stream, so amqtt closes that client's connection without
    reading the payload. Idempotent; the newest bound applies."""
    from amqtt.mqtt.packet import MQTTFixedHeader

    _publish_limit["max_bytes"] = max_bytes
    if getattr(MQTTFixedHeader.from_stream, "_buildingd_bounded", False):
        return
    decode = MQTTFixedHeader.from_stream

    async def bounded(reader: Any) -> Any:
        header = await decode(reader)
        limit = _publish_limit["max_bytes"]
        if (
            header is not None
            and header.packet_type == PUBLISH
            and 0 < limit < (header.remaining_length)
        ):
            REFUSED["publish"] += 1
            if REFUSED["publish"] <= LOGGED_TOPICS:
                log.warning("mqtt broker: a %d-byte PUBLISH is above max_payload_bytes (%d): "
                            "client disconnected", header.remaining_length, limit)  # fmt: skip
            return None
        return header

    bounded._buildingd_bounded = True  # type: ignore[attr-defined]
    MQTTFixedHeader.from_stream = staticmethod(bounded)


class RetainedLimitsPlugin(BasePlugin[Any]):  # type: ignore[misc]  # amqtt is untyped
    @dataclass
    class Config:
        max_payload_bytes: int = 256 * 1024
        max_retained_bytes: int = 16 * 1024 * 1024

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.refused = 0
        self._logged: set[str] = set()

    async def on_broker_retained_message(self, *, client_id: Any, retained_message: Any) -> None:
        retained: dict[str, Any] = self.context.retained_messages
        topic = retained_message.topic
        size = len(retained_message.data or b"")
        config = self.context.config
        why = None
        if size > config.max_payload_bytes:
            why = f"{size} bytes is above max_payload_bytes ({config.max_payload_bytes})"
        else:
            total = sum(len(m.data or b"") for m in retained.values())
            if total > config.max_retained_bytes:
                why = f"retained payloads would take {total} bytes, above max_retained_bytes " \
                      f"({config.max_retained_bytes})"  # fmt: skip
        if why is None or retained.get(topic) is not retained_message:
            return
        del retained[topic]
        self.refused += 1
        REFUSED["retained"] += 1
        if topic not in self._logged and len(self._logged) < LOGGED_TOPICS:
            self._logged.add(topic)
            log.warning("mqtt broker: retained message on %s not kept: %s", topic[:200], why)
