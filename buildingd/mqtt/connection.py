"""``MqttConnection``: the daemon's one MQTT client (aiomqtt 2.x), kept connected.

* Reconnects with jittered exponential backoff (aiomqtt has no automatic reconnect) and
  subscribes again to every filter registered with ``subscribe``.
* Last will and an availability topic ``<prefix>/<site>/status``: ``online`` retained on connect,
  ``offline`` retained by the will (and on a clean stop).
* Availability is logged once per change, not per attempt.
* Incoming messages go to the handlers whose filter matches; a handler that raises is logged and
  counted, the connection goes on. Payloads above ``MAX_PAYLOAD`` are dropped and counted.
* ``publish`` while disconnected returns False (counted): the caller decides what to resend;
  retained state (availability, zone state, discovery) is re-published by its owners on connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiomqtt

from buildingd.settings import MqttSettings

log = logging.getLogger(__name__)

MAX_PAYLOAD = 256 * 1024  # no sensor or envelope needs more; a 1 MB payload is refused
RECONNECT_MIN_S = 0.5

Handler = Callable[[str, bytes, bool], None]  # topic, payload, retained
OnConnect = Callable[[], Awaitable[None]]


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7 topic filter matching (``+`` one level, ``#`` the rest)."""
    pat, parts = pattern.split("/"), topic.split("/")
    for i, p in enumerate(pat):
        if p == "#":
            return True
        if i >= len(parts) or (p != "+" and p != parts[i]):
            return False
    return len(pat) == len(parts)


@dataclass
class MqttCounters:
    received: int = 0
    published: int = 0
    publish_failed: int = 0
    oversized: int = 0
    handler_errors: int = 0
    connects: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class MqttConnection:
    def __init__(self, settings: MqttSettings, site_id: str, host: str, port: int) -> None:
        self.settings = settings
        self.site_id = site_id
        self.host, self.port = host, port
        self.base = f"{settings.topic_prefix}/{site_id}"
        self.status_topic = f"{self.base}/status"
        self.client_id = settings.client_id or f"buildingd-{site_id}"
        self.counters = MqttCounters()
        self.connected = asyncio.Event()
        self._handlers: list[tuple[str, int, Handler]] = []
        self._on_connect: list[OnConnect] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._available: bool | None = None

    # -- registration --------------------------------------------------------------------------

    def subscribe(self, pattern: str, handler: Handler, qos: int = 0) -> None:
        """Register a handler; subscribed now if connected, and again on every reconnect."""
        self._handlers.append((pattern, qos, handler))
        client = self._client
        if client is not None and self.connected.is_set():
            task = asyncio.get_running_loop().create_task(self._subscribe_now(client, pattern, qos))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def unsubscribe(self, handler: Handler) -> None:
        self._handlers = [h for h in self._handlers if h[2] is not handler]

    def on_connect(self, callback: OnConnect) -> None:
        """Called after every (re)connect and resubscribe: re-publish retained state here."""
        self._on_connect.append(callback)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-connection")

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self.connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        client = self._client
        if client is not None and self.connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self.status_topic, b"offline", qos=1, retain=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> bool:
        client = self._client
        if client is None or not self.connected.is_set():
            self.counters.publish_failed += 1
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as err:
            self.counters.publish_failed += 1
            log.debug("mqtt: publish to %s failed: %s", topic, err)
            return False
        self.counters.published += 1
        return True

    # -- internals -----------------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        password = None
        if s.password_file is not None:
            password = s.password_file.read_text(encoding="utf-8").strip()
        elif s.password is not None:
            password = s.password.get_secret_value()
        tls = None
        if s.tls:
            tls = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
            if s.cert_file is not None:
                tls.load_cert_chain(str(s.cert_file), str(s.key_file) if s.key_file else None)
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=s.username,
            password=password,
            keepalive=s.keepalive_s,
            tls_context=tls,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            max_queued_incoming_messages=10_000,
            timeout=10,
            # Small packets go out at once: without this, Nagle's algorithm held a command
            # behind an unacknowledged packet for the peer's 40 ms delayed ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def _subscribe_now(self, client: aiomqtt.Client, pattern: str, qos: int) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.subscribe(pattern, qos=qos)

    async def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        while True:
            client = self._make_client()
            try:
                async with client:
                    self._client = client
                    for pattern in dict.fromkeys(p for p, _, _ in self._handlers):
                        qos = max(q for p, q, _ in self._handlers if p == pattern)
                        await client.subscribe(pattern, qos=qos)
                    await client.publish(self.status_topic, b"online", qos=1, retain=True)
                    self.connected.set()
                    self.counters.connects += 1
                    self._set_available(True, "")
                    backoff = RECONNECT_MIN_S
                    for callback in self._on_connect:
                        try:
                            await callback()
                        except Exception:
                            log.exception("mqtt: on-connect callback failed")
                    async for message in client.messages:
                        self._dispatch(message)
            except aiomqtt.MqttError as err:
                self._set_available(False, str(err))
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, self.settings.reconnect_max_s)

    def _dispatch(self, message: aiomqtt.Message) -> None:
        self.counters.received += 1
        topic = message.topic.value
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        if len(payload) > MAX_PAYLOAD:
            self.counters.oversized += 1
            log.warning("mqtt: %s: payload of %d bytes dropped (limit %d)", topic, len(payload),
                        MAX_PAYLOAD)  # fmt: skip
            return
        for pattern, _, handler in tuple(self._handlers):
            if topic_matches(pattern, topic):
                try:
                    handler(topic, bytes(payload), bool(message.retain))
                except Exception:
                    self.counters.handler_errors += 1
                    log.exception("mqtt: handler for %s failed on %s", pattern, topic)

    def _set_available(self, up: bool, reason: str) -> None:
        if self._available == up:
            return
        self._available = up
        if up:
            log.info("mqtt: connected to %s:%d as %s", self.host, self.port, self.client_id)
        else:
            log.warning("mqtt: broker %s:%d unavailable: %s; reconnecting with backoff",
                        self.host, self.port, reason)  # fmt: skip
