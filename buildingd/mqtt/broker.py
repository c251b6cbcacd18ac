"""The embedded MQTT broker (amqtt 0.12): what ``[mqtt] enabled`` with no ``host`` starts, so the
demo and MQTT devices work with nothing installed. Production points ``host`` at mosquitto.

Bound to 127.0.0.1 only (amqtt's default listener is 0.0.0.0:1883), MQTT 3.1.1 only, without the
$SYS publisher and the per-packet logger. Anonymous unless given a password file (amqtt's
``FileAuthPlugin``: ``user:<argon2 or bcrypt hash>`` lines); a publish above the payload limit
disconnects its client and retained payloads are bounded (``broker_limits``).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ANONYMOUS = "amqtt.plugins.authentication.AnonymousAuthPlugin"
PASSWORD_FILE = "amqtt.plugins.authentication.FileAuthPlugin"
LIMITS = "buildingd.mqtt.broker_limits.RetainedLimitsPlugin"


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    def __init__(
        self,
        port: int = 0,
        password_file: Path | None = None,
        max_payload_bytes: int = 256 * 1024,
        max_retained_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_local_port()
        self.password_file = password_file
        self.limits = {"max_payload_bytes": max_payload_bytes,
                       "max_retained_bytes": max_retained_bytes}  # fmt: skip
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        from buildingd.mqtt.broker_limits import limit_publish_size

        limit_publish_size(self.limits["max_payload_bytes"])
        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        auth: dict[str, Any] = (
            {PASSWORD_FILE: {"password_file": str(self.password_file)}}
            if self.password_file is not None
            else {ANONYMOUS: {"allow_anonymous": True}}
        )
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {**auth, LIMITS: self.limits},
        }
        self._broker = Broker(config)
        await self._broker.start()
        log.info("mqtt: embedded broker listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
