"""``MqttConnection``: the daemon's one MQTT client (aiomqtt 2.x), kept connected.

* Reconnects with jittered exponential backoff (aiomqtt has no automatic reconnect) and
  subscribes again to every filter registered with ``subscribe``.
* Last will and an availability topic ``<prefix>/<site>/status`` (``.../gateway/<id>/status`` on
  a site over gateways): ``online`` retained on connect, ``offline`` retained by the will (and on
  a clean stop).
* Availability is logged once per change, not per attempt.
* Incoming messages go to the handlers whose filter matches as soon as paho has read them: the
  connection keeps no queue of its own (aiomqtt's bounded queue discards past its size and only
  logs), so under a flood the backlog waits in the socket and at the broker, and QoS 1 messages
  are acknowledged only once handled. Handlers are synchronous, cheap and keep bounded state (a
  driver keeps the latest value per point). A handler that raises is logged and counted, the
  connection goes on.
* Payloads above ``MAX_PAYLOAD`` are refused: logged with the topic, counted, and reported to the
  subscribers of that topic (``on_refused``), so the device it was meant for counts it too.
* ``publish`` while disconnected returns False (counted): the caller decides what to resend;
  retained state (availability, zone state, discovery) is re-published by its owners on connect.
* Counters reach the daemon's ``Metrics`` (``buildingd_mqtt_*``) once it is given, at construction
  or with ``use_metrics``; counts from before are carried over.
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
from typing import TYPE_CHECKING

import aiomqtt

from buildingd.settings import MqttSettings

if TYPE_CHECKING:
    from paho.mqtt.reasoncodes import ReasonCode

    from buildingd.metrics import Metrics

log = logging.getLogger(__name__)

MAX_PAYLOAD = 256 * 1024  # no sensor or request needs more; a 1 MB payload is refused
RECONNECT_MIN_S = 0.5

Handler = Callable[[str, bytes, bool], None]  # topic, payload, retained
Refused = Callable[[str, str], None]  # topic, reason: a message for this subscriber was refused
OnConnect = Callable[[], Awaitable[None]]


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7 topic filter matching (``+`` one level, ``#`` the rest); a shared
    subscription's ``$share/<group>/`` (MQTT 5 section 4.8.2) is not part of the filter."""
    if pattern.startswith(SHARE_PREFIX):
        pattern = pattern.split("/", 2)[2]
    pat, parts = pattern.split("/"), topic.split("/")
    for i, p in enumerate(pat):
        if p == "#":
            return True
        if i >= len(parts) or (p != "+" and p != parts[i]):
            return False
    return len(pat) == len(parts)


def status_topic(base: str, gateway: str | None) -> str:
    """Where a connection says ``online`` / ``offline`` (retained; ``offline`` is its will):
    ``<base>/status``, or per gateway on a site over several, so one gateway's death does not
    mark the others' entities unavailable."""
    return f"{base}/gateway/{gateway}/status" if gateway else f"{base}/status"


@dataclass
class MqttCounters:
    received: int = 0
    published: int = 0
    publish_failed: int = 0
    oversized: int = 0
    handler_errors: int = 0
    connects: int = 0
    subscribe_failed: int = 0  # a subscribe not acknowledged, or refused in the SUBACK
    by_reason: dict[str, int] = field(default_factory=dict)  # refused messages, by reason


# MqttCounters field -> Prometheus counter (refusals are ``buildingd_mqtt_refused_total{reason}``).
METRIC_NAMES = {
    "received": "buildingd_mqtt_received_total",
    "published": "buildingd_mqtt_published_total",
    "publish_failed": "buildingd_mqtt_publish_failed_total",
    "handler_errors": "buildingd_mqtt_handler_errors_total",
    "connects": "buildingd_mqtt_connects_total",
    "subscribe_failed": "buildingd_mqtt_subscribe_failed_total",
}
SUBSCRIBE_RETRIES = 5  # a failed live subscribe is tried again this often (backoff) per connection
REFUSED_METRIC = "buildingd_mqtt_refused_total"
SHARE_PREFIX = "$share/"


def suback_refusal(granted: tuple[int, ...] | list[ReasonCode]) -> str | None:
    """Why a SUBACK refused the subscription, or None. MQTT 3.1.1 grants a QoS (0-2) or answers
    0x80 (failure); MQTT 5 reason codes of 0x80 and above are failures."""
    for code in granted:
        value = code if isinstance(code, int) else code.value
        if value >= 0x80:
            return f"refused by the broker (SUBACK 0x{value:02x})"
    return None


@dataclass(frozen=True)
class _Subscription:
    pattern: str
    qos: int
    handler: Handler
    on_refused: Refused | None


class MqttConnection:
    def __init__(
        self,
        settings: MqttSettings,
        site_id: str,
        host: str,
        port: int,
        metrics: Metrics | None = None,
        gateway: str | None = None,
        share: bool = False,
    ) -> None:
        """``gateway``: this process's gateway on a site over several, which then has its own
        client id and its own availability topic (``gateway/<id>/status``). ``share``: the
        site's gateways may share this broker, so requests are subscribed to as a shared
        subscription (``shared``)."""
        self.settings = settings
        self.site_id = site_id
        self.host, self.port = host, port
        self.base = f"{settings.topic_prefix}/{site_id}"
        self.gateway = gateway
        self.status_topic = status_topic(self.base, gateway)
        self.client_id = settings.client_id or "-".join(filter(None, ("buildingd", site_id,
                                                                       gateway)))  # fmt: skip
        self.share_group = f"buildingd-{site_id}" if share else None
        self.counters = MqttCounters()
        self.metrics: Metrics | None = None
        self.connected = asyncio.Event()
        self._subs: list[_Subscription] = []
        self._on_connect: list[OnConnect] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._available: bool | None = None
        self._subscribing: set[asyncio.Task[None]] = set()
        if metrics is not None:
            self.use_metrics(metrics)

    def use_metrics(self, metrics: Metrics) -> None:
        """Count into the daemon's metrics from now on, carrying over what was counted before."""
        if metrics is self.metrics:
            return
        self.metrics = metrics
        for attr, name in METRIC_NAMES.items():
            if count := getattr(self.counters, attr):
                metrics.inc(name, count)
        for reason, count in self.counters.by_reason.items():
            metrics.inc(REFUSED_METRIC, count, reason=reason)
        metrics.set("buildingd_mqtt_connected", 1.0 if self.connected.is_set() else 0.0)

    def _count(self, attr: str) -> None:
        setattr(self.counters, attr, getattr(self.counters, attr) + 1)
        if self.metrics is not None:
            self.metrics.inc(METRIC_NAMES[attr])

    # -- registration --------------------------------------------------------------------------

    def subscribe(
        self, pattern: str, handler: Handler, qos: int = 0, on_refused: Refused | None = None
    ) -> None:
        """Register a handler; subscribed now if connected, and again on every reconnect.
        ``on_refused`` hears of messages on a matching topic that were refused before any
        handler saw them (too large), so their owner can count them as its own bad input."""
        self._subs.append(_Subscription(pattern, qos, handler, on_refused))
        client = self._client
        if client is not None and self.connected.is_set():
            task = asyncio.get_running_loop().create_task(self._subscribe_now(client, pattern, qos))
            self._subscribing.add(task)
            task.add_done_callback(self._subscribing.discard)

    def shared(self, pattern: str) -> str:
        """``pattern`` as a subscription the broker gives to one of the site's gateways only
        (MQTT 5 section 4.8.2 shared subscriptions; mosquitto has them for MQTT 3.1.1 too), when
        they may share this broker; a shared subscription gets no retained messages."""
        if self.share_group is None:
            return pattern
        return f"{SHARE_PREFIX}{self.share_group}/{pattern}"

    def unsubscribe(self, handler: Handler) -> None:
        # ``==``, not ``is``: each ``obj.method`` access makes a new bound-method object.
        self._subs = [s for s in self._subs if s.handler != handler]

    def on_connect(self, callback: OnConnect) -> None:
        """Called after every (re)connect and resubscribe: re-publish retained state here."""
        self._on_connect.append(callback)

    def remove_on_connect(self, callback: OnConnect) -> None:
        self._on_connect = [c for c in self._on_connect if c != callback]

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
        for task in list(self._subscribing):
            task.cancel()  # a subscribe retrying with backoff ends with the connection
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
            self._count("publish_failed")
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as err:
            self._count("publish_failed")
            log.debug("mqtt: publish to %s failed: %s", topic, err)
            return False
        self._count("published")
        return True

    # -- internals -----------------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        conn = self

        class HandOver(asyncio.Queue[aiomqtt.Message]):
            """aiomqtt's incoming queue (its documented ``queue_type``), replaced by a hand-over:
            paho's read callback gives each message straight to the handlers, so nothing is
            discarded in the daemon and paho acknowledges a QoS 1 message only after that."""

            def put_nowait(self, item: aiomqtt.Message) -> None:
                conn._dispatch(item)

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
            queue_type=HandOver,
            timeout=10,
            # Small packets go out at once: without this, Nagle's algorithm held a command
            # behind an unacknowledged packet for the peer's 40 ms delayed ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def _subscribe_now(self, client: aiomqtt.Client, pattern: str, qos: int) -> None:
        """Subscribe on a live connection, awaiting the SUBACK; a failure is counted, logged and
        tried again with backoff while this connection lasts (a reconnect subscribes anew)."""
        delay_s = RECONNECT_MIN_S
        for _attempt in range(SUBSCRIBE_RETRIES):
            if client is not self._client or not self.connected.is_set():
                return
            problem = await self._subscribe_acked(client, pattern, qos)
            if problem is None:
                return
            self._count("subscribe_failed")
            log.warning("mqtt: subscribe to %s failed: %s; retrying", pattern, problem)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, self.settings.reconnect_max_s)
        log.error("mqtt: subscribe to %s failed %d times; next try on reconnect", pattern,
                  SUBSCRIBE_RETRIES)  # fmt: skip

    async def _subscribe_acked(self, client: aiomqtt.Client, pattern: str, qos: int) -> str | None:
        """Subscribe and wait for the broker's SUBACK: None when granted, else why not."""
        try:
            granted = await client.subscribe(pattern, qos=qos)
        except aiomqtt.MqttError as err:
            return str(err)
        return suback_refusal(granted)

    async def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        while True:
            client = self._make_client()
            try:
                async with client:
                    self._client = client
                    for pattern in dict.fromkeys(sub.pattern for sub in self._subs):
                        qos = max(sub.qos for sub in self._subs if sub.pattern == pattern)
                        try:
                            granted = await client.subscribe(pattern, qos=qos)
                        except aiomqtt.MqttError:
                            self._count("subscribe_failed")
                            raise  # no SUBACK: reconnect and subscribe again
                        if (problem := suback_refusal(granted)) is not None:
                            self._count("subscribe_failed")
                            log.warning("mqtt: subscribe to %s failed: %s", pattern, problem)
                    await client.publish(self.status_topic, b"online", qos=1, retain=True)
                    self.connected.set()
                    self._count("connects")
                    self._set_available(True, "")
                    backoff = RECONNECT_MIN_S
                    for callback in self._on_connect:
                        try:
                            await callback()
                        except Exception:
                            log.exception("mqtt: on-connect callback failed")
                    # Messages are handed over as paho reads them (``HandOver``): this loop only
                    # waits for the connection to end, which aiomqtt raises as MqttError.
                    async for message in client.messages:
                        self._dispatch(message)
            except aiomqtt.MqttError as err:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # The client's exit turned our stop's CancelledError into an MqttError (or
                    # its asyncio.wait_for dropped it, CPython gh-86296): a stop, not a drop to
                    # reconnect from, or stop() would wait for a loop that never ends.
                    raise asyncio.CancelledError from err
                self._set_available(False, str(err))
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, self.settings.reconnect_max_s)

    def _dispatch(self, message: aiomqtt.Message) -> None:
        """Runs inside paho's read callback: must never raise (aiomqtt would disconnect)."""
        self._count("received")
        topic = message.topic.value
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        if len(payload) > MAX_PAYLOAD:
            self.counters.oversized += 1
            self._refuse(topic, "oversized", f"payload of {len(payload)} bytes refused "
                         f"(limit {MAX_PAYLOAD})")  # fmt: skip
            return
        body = bytes(payload)
        for sub in tuple(self._subs):
            if topic_matches(sub.pattern, topic):
                try:
                    sub.handler(topic, body, bool(message.retain))
                except Exception:
                    self._count("handler_errors")
                    log.exception("mqtt: handler for %s failed on %s", sub.pattern, topic)

    def _refuse(self, topic: str, reason: str, detail: str) -> None:
        self.counters.by_reason[reason] = self.counters.by_reason.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.inc(REFUSED_METRIC, reason=reason)
        log.warning("mqtt: %s: %s", topic, detail)
        for sub in tuple(self._subs):
            if sub.on_refused is not None and topic_matches(sub.pattern, topic):
                try:
                    sub.on_refused(topic, reason)
                except Exception:
                    self._count("handler_errors")
                    log.exception("mqtt: refusal handler for %s failed on %s", sub.pattern, topic)

    def _set_available(self, up: bool, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.set("buildingd_mqtt_connected", 1.0 if up else 0.0)
        if self._available == up:
            return
        self._available = up
        if up:
            log.info("mqtt: connected to %s:%d as %s", self.host, self.port, self.client_id)
        else:
            log.warning("mqtt: broker %s:%d unavailable: %s; reconnecting with backoff",
                        self.host, self.port, reason)  # fmt: skip
