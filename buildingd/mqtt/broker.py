"""The embedded MQTT broker (amqtt 0.12): what ``[mqtt] enabled`` with no ``host`` starts, so the
demo and MQTT devices work with nothing installed. Production points ``host`` at mosquitto.

Bound to 127.0.0.1 only (amqtt's default listener is 0.0.0.0:1883), anonymous, MQTT 3.1.1 only,
without the $SYS publisher and the per-packet logger.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger(__name__)

ANONYMOUS = "amqtt.plugins.authentication.AnonymousAuthPlugin"


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    def __init__(self, port: int = 0) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_local_port()
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {ANONYMOUS: {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        await self._broker.start()
        log.info("mqtt: embedded broker listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
