"""An amqtt (0.12) broker plugin bounding what the embedded broker keeps: a retained payload
larger than ``max_payload_bytes`` is not kept, and retained payloads together stay within
``max_retained_bytes`` (a new one that would pass the bound is not kept). amqtt has no such
limits of its own; mosquitto's are ``message_size_limit`` and ``retain_available``/ACLs.

Each refusal is logged once per topic and counted in ``refused``; a message that is not kept is
still delivered to the clients subscribed at that moment (amqtt gives plugins no say there)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from amqtt.plugins.base import BasePlugin

log = logging.getLogger(__name__)
LOGGED_TOPICS = 1000


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
        if topic not in self._logged and len(self._logged) < LOGGED_TOPICS:
            self._logged.add(topic)
            log.warning("mqtt broker: retained message on %s not kept: %s", topic[:200], why)
