"""The MQTT bridge agent: what the building shows and accepts on the broker.

Out (under ``<prefix>/<site>/``): ``zone/<zone>/state`` (retained JSON: mode, temperature_c,
humidity_pct, occupied, illuminance_lux, heating_sp_c, cooling_sp_c, light_level_pct,
hvac_action; rounded to each value's precision), ``events``, ``alerts/<subject>`` (retained JSON:
the open break-glass alerts of one zone, device, agent or ``building``, each with its
``ack_topic``; an empty retained payload removes the topic when the last one clears), and
``status`` (online/offline, retained, the will).

In: ``zone/<zone>/vote`` (``hot`` / ``cold``, answered on ``zone/<zone>/vote/result``),
``demand-response/request`` (``{"target_w": ..., "window_s": ...}``), ``alerts/<id>/ack`` and
``alerts/<id>/clear`` (payload: who, as text or ``{"by": ...}``; retained ones are ignored, so an
acknowledgement left on the broker never acts again). Invalid payloads (not strict JSON, NaN or
infinite numbers, too large) are counted in ``buildingd_mqtt_invalid_total`` and logged, never
raised.

With Home Assistant discovery on (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery;
the payloads in ``ha_discovery``): per zone and device the entities its points allow, published
retained on connect, whenever Home Assistant announces ``homeassistant/status`` ``online`` and
after a reload; a config of ours on the broker that the site no longer has is cleared. Requests
on ``zone/<zone>/set/<what>`` go through the coordinator's override path (policy limits, audit):
``heating_sp`` and ``cooling_sp`` (Home Assistant sends a range as two messages: settled for
``RANGE_SETTLE_S`` into one band request), ``mode`` (a preset; it times out back to the
schedule) and ``light`` (JSON light schema; the vacancy timeout ends it). Each is answered on
``zone/<zone>/set/result`` (ignored when read back) and, retained, on
``zone/<zone>/request/last``, which Home Assistant shows as the zone's "Last request" sensor.
Retained requests are ignored. Also published, retained: ``zone/<zone>/light`` (JSON light
state), ``device/<device>/<point>`` (power and energy readings) and ``problem/<subject>``
(ON/OFF: open break-glass alerts of a zone or device).

On a site over gateways (which may share one broker): demand-response requests and alert
actions are shared subscriptions on an external broker (``MqttConnection.shared``: one gateway
takes each and sends it on to the coordinator's queue), a vote or set request is answered by the
coordinator's gateway when its bridge is on this broker (``gateway/<id>/status`` online), as
are the site's ``events`` (once per site, not once per gateway); while the coordinator's gateway
is away, the first gateway online answers that it is being taken over. The entities'
availability is their gateway's (``ha_discovery``).

The bridge also hands the daemon's ``Metrics`` to the connection (``use_metrics``), so its
``buildingd_mqtt_*`` counters reach ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from buildingd.agents.bus import Performative, new_conversation_id
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    ALERTS_TOPIC,
    COORDINATOR,
    DEMAND_RESPONSE_TOPIC,
    EVENTS_TOPIC,
    ZONE_STATE_TOPIC,
    AlertActionMsg,
    AlertMsg,
    DemandResponseCall,
    EventMsg,
    ReadingMsg,
    VoteResult,
    ZoneStateMsg,
    readings_topic,
)
from buildingd.agents.requests import RETAINED_METRIC, record_refusal, request_error
from buildingd.agents.runtime import Agent
from buildingd.mqtt import payload as strict_json
from buildingd.mqtt.connection import MqttConnection, status_topic
from buildingd.mqtt.ha_discovery import (
    Availability,
    Topics,
    discovery_configs,
    light_request,
    object_id,
    rounded,
    zone_state_body,
)
from buildingd.points import PointKind

log = logging.getLogger(__name__)

VoteFn = Callable[[str, str], VoteResult]
BUS_TOPICS = (ZONE_STATE_TOPIC, EVENTS_TOPIC, ALERTS_TOPIC)
RANGE_SETTLE_S = 0.3  # Home Assistant sends a range's low and high as two messages, at once
MAX_ANSWER_CHARS = 240  # a Home Assistant sensor state holds 255
NO_COORDINATOR = "the coordinator is not running here"
TAKING_OVER = ("the coordinator's gateway is away and another gateway is taking over: send the "
               "request again in a few seconds")  # fmt: skip
RETAINED_LOGGED = 1000  # topics whose ignored retained request was logged (then only counted)


def demand_response_request(payload: bytes) -> DemandResponseCall:
    """``{"target_w": ..., "window_s": ..., "reason": ...}`` (strict JSON) as a call."""
    data = strict_json.loads(payload)
    if not isinstance(data, dict):
        raise TypeError("expected a JSON object")
    return DemandResponseCall(
        target_w=data["target_w"], window_s=data.get("window_s", 3600),
        reason=str(data.get("reason", "requested over MQTT"))[:200],
    )  # fmt: skip


def finite_number(payload: bytes) -> float:
    value = float(payload)
    if not math.isfinite(value):  # float() takes "nan" and "inf"
        raise ValueError(f"not a finite number: {payload[:40]!r}")
    return value


class Overrides(Protocol):
    """The coordinator's override path (policy limits, audit, timeout)."""

    def override_band(
        self, zone_id: str, heating_c: float, cooling_c: float
    ) -> dict[str, object]: ...

    def override_mode(self, zone_id: str, mode: str) -> dict[str, object]: ...

    def override_light(self, zone_id: str, level_pct: float) -> dict[str, object]: ...


class MqttBridgeAgent(Agent):
    mailbox_size = 5000

    def __init__(
        self,
        ctx: AgentContext,
        conn: MqttConnection,
        vote: VoteFn | None,
        overrides: Callable[[], Overrides | None] | None = None,
        flush: Callable[[], Awaitable[None]] | None = None,
        configuration_url: str | None = None,
        leader: Callable[[], str | None] | None = None,
    ) -> None:
        """``leader``: on a site over gateways, the gateway whose coordinator runs now."""
        super().__init__("mqtt-bridge")
        self.ctx, self.conn, self.vote_fn, self.overrides = ctx, conn, vote, overrides
        self.leader = leader
        # Gateways of the site whose status is on this broker (it is shared), and of those the
        # ones online now.
        self.gateways_seen: set[str] = {conn.gateway} if conn.gateway else set()
        self.gateways_online: set[str] = set()
        self._flush = flush
        self.configuration_url = configuration_url
        self.topics = Topics(conn.base)
        # Setpoint ends received and not yet settled into one request, by zone.
        self._pending: dict[str, dict[str, float]] = {}
        # The discovery configs announced now, by topic; a retained one on the broker that is
        # not among them (a zone or device removed while we were away or by a reload) is cleared.
        self.configs: dict[str, dict[str, Any]] = {}
        self.problems: set[str] = set()  # zones and devices with open break-glass alerts
        self.meter_values: dict[tuple[str, str], float | int | None] = {}  # (device, point)
        self._meter_subs: list[str] = []  # bus topics subscribed for meter readings
        self.base = conn.base
        self.settings = conn.settings
        self.invalid = 0
        self.states: dict[str, ZoneStateMsg] = {}
        # Retained alerts payload by subject, re-published on every connect (b"" until the
        # removal of a cleared subject's topic reached the broker).
        self.alerts: dict[str, bytes] = {}
        # Subjects with a retained alert on the broker (a previous run's) heard before the
        # coordinator's first snapshot; the snapshot says which are stale and get removed.
        self._retained_alerts: set[str] = set()
        self._snapshot_seen = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retained_seen: set[str] = set()  # request topics whose retained message was logged

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run async work asked for by a (synchronous) MQTT callback."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, started: Callable[[], None]) -> None:
        self.conn.use_metrics(self.ctx.metrics)
        for topic in BUS_TOPICS:
            self.ctx.bus.subscribe(topic, self.inbox)
        refused = self._on_refused
        self.conn.subscribe(f"{self.base}/zone/+/vote", self._on_vote, 1, refused)
        # Sent on to the coordinator wherever it runs: by one gateway of those on this broker.
        shared = self.conn.shared
        self.conn.subscribe(shared(f"{self.base}/demand-response/request"), self._on_dr, 1,
                            refused)  # fmt: skip
        for verb in ("ack", "clear"):
            self.conn.subscribe(shared(f"{self.base}/alerts/+/{verb}"), self._on_alert_action, 1,
                                refused)  # fmt: skip
        if self.conn.gateway is not None:
            self.conn.subscribe(status_topic(self.base, "+"), self._on_gateway_status, 1)
        self.conn.subscribe(f"{self.base}/alerts/+", self._on_retained_alert, 1)
        self.conn.on_connect(self._republish_alerts)
        # The open alerts, from the coordinator's book (a restarted bridge has lost them).
        await self.ctx.send(AlertActionMsg(action="snapshot").envelope(
            Performative.REQUEST, self.name, COORDINATOR))  # fmt: skip
        if self.settings.homeassistant_discovery:
            self.configs = self._discovery()
            node = object_id(f"buildingd_{self.ctx.site.site_id}")
            prefix = self.settings.homeassistant_prefix
            self.conn.subscribe(f"{self.base}/zone/+/set/+", self._on_setpoint, 1, refused)
            self.conn.subscribe(f"{prefix}/status", self._on_ha, 1)
            self.conn.subscribe(f"{prefix}/+/{node}/+/config", self._on_config, 1)
            self._subscribe_meters()
            self.conn.on_connect(self.announce)
            if self.conn.connected.is_set():
                await self.announce()
        started()
        try:
            while True:
                env = await self.inbox.get()
                if env.ontology == ZoneStateMsg.ontology:
                    await self._zone_state(ZoneStateMsg.parse(env))
                elif env.ontology == EventMsg.ontology:
                    event = EventMsg.parse(env)
                    if not self._answered_elsewhere():  # every gateway hears it: one publishes
                        body = event.model_dump_json().encode()
                        await self.conn.publish(f"{self.base}/events", body,
                                                self.settings.qos_events)  # fmt: skip
                    if event.kind == "reload" and self.settings.homeassistant_discovery:
                        await self._reannounce()
                elif env.ontology == ReadingMsg.ontology:
                    await self._meter_reading(ReadingMsg.parse(env))
                elif env.ontology == AlertMsg.ontology:
                    await self._alerts(AlertMsg.parse(env))
        finally:
            for topic in (*BUS_TOPICS, *self._meter_subs):
                self.ctx.bus.unsubscribe(topic, self.inbox)
            # A restarted bridge subscribes afresh; this one's handlers must not linger.
            for handler in (self._on_vote, self._on_dr, self._on_setpoint, self._on_ha,
                            self._on_alert_action, self._on_config,
                            self._on_retained_alert, self._on_gateway_status):  # fmt: skip
                self.conn.unsubscribe(handler)
            self.conn.remove_on_connect(self.announce)
            self.conn.remove_on_connect(self._republish_alerts)

    async def _alerts(self, msg: AlertMsg) -> None:
        """Retained per subject: a technician's client sees the open alerts on connect."""
        subjects: dict[str, dict[str, Any] | None] = dict(msg.subjects)
        if msg.action == "snapshot":  # what the coordinator no longer has is gone
            stale = (set(self.alerts) | self._retained_alerts) - set(subjects)
            subjects.update({s: None for s in sorted(stale)})
            self._retained_alerts.clear()
            self._snapshot_seen = True
        for subject, payload in subjects.items():
            body = b""
            if payload is not None:
                alerts = [
                    {**a, "ack_topic": f"{self.base}/alerts/{a['id']}/ack",
                     "clear_topic": f"{self.base}/alerts/{a['id']}/clear"}
                    for a in payload.get("alerts", [])
                ]  # fmt: skip
                body = json.dumps({**payload, "alerts": alerts}).encode()
            self.alerts[subject] = body
            await self._publish_alert(subject, body)
            open_now = bool(payload and payload.get("alerts"))
            if open_now != (subject in self.problems):
                (self.problems.add if open_now else self.problems.discard)(subject)
                await self._publish_problem(subject)

    async def _publish_alert(self, subject: str, body: bytes) -> None:
        topic = f"{self.base}/alerts/{subject}"
        if await self.conn.publish(topic, body, qos=1, retain=True) and not body:
            self.alerts.pop(subject, None)

    def _on_retained_alert(self, topic: str, payload: bytes, retained: bool) -> None:
        """A retained alert on the broker (at subscribe): one the coordinator does not have
        open (left by a run that was killed) is removed, never left dangling."""
        subject = topic.rsplit("/", 1)[-1]
        if not retained or not payload or not subject:
            return
        if not self._snapshot_seen:
            self._retained_alerts.add(subject)
        elif subject not in self.alerts:
            log.info("mqtt: removing stale retained alert %s", topic)
            self._spawn(self._publish_alert(subject, b""))

    async def _republish_alerts(self) -> None:
        for subject, body in list(self.alerts.items()):
            await self._publish_alert(subject, body)

    def _on_alert_action(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:  # left on the broker: acting on it at every connect would be wrong
            return self._retained(topic, "alert-" + topic.rsplit("/", 1)[-1])
        alert_id, _, verb = topic.removeprefix(f"{self.base}/alerts/").partition("/")
        text = payload.decode(errors="replace").strip()
        by = text
        if text.startswith("{"):
            try:
                data = strict_json.loads(payload)
            except ValueError as err:
                return self._bad(topic, f"invalid acknowledgement: {err}")
            by = str(data.get("by", "")) if isinstance(data, dict) else ""
        if not alert_id or len(alert_id) > 64:
            return self._bad(topic, "no alert id")
        action = AlertActionMsg(
            action="acknowledge" if verb == "ack" else "clear",
            alert_id=alert_id,
            by=(by.strip().strip('"') or "technician")[:80] + " (MQTT)",
        )
        self._spawn(self.ctx.send(action.envelope(Performative.REQUEST, self.name, COORDINATOR)))
        return None

    async def _publish_problem(self, subject: str) -> None:
        if self.settings.homeassistant_discovery and (
            subject in self.ctx.site.zones or subject in self.ctx.site.devices
        ):
            body = "ON" if subject in self.problems else "OFF"
            await self.conn.publish(self.topics.problem(subject), body, qos=1, retain=True)

    async def _zone_state(self, msg: ZoneStateMsg) -> None:
        self.states[msg.zone_id] = msg
        body = json.dumps(zone_state_body(msg))
        await self.conn.publish(self.topics.zone_state(msg.zone_id), body,
                                self.settings.qos_readings, retain=True)  # fmt: skip
        if self.settings.homeassistant_discovery:
            level = rounded(msg.light_level_pct, "light_level_pct")
            light = {"state": "ON" if level else "OFF", "brightness": level}
            await self.conn.publish(self.topics.light_state(msg.zone_id), json.dumps(light),
                                    self.settings.qos_readings, retain=True)  # fmt: skip

    def _subscribe_meters(self) -> None:
        """The bus topics carrying the readings of power and energy points (for their
        sensors), as the site has them now."""
        zones = {p.zone for d in self.ctx.site.devices.values() for p in d.points_list()
                 if p.kind in (PointKind.POWER, PointKind.ENERGY)}  # fmt: skip
        for topic in self._meter_subs:
            self.ctx.bus.unsubscribe(topic, self.inbox)
        self._meter_subs = sorted(readings_topic(z) for z in zones)
        for topic in self._meter_subs:
            self.ctx.bus.subscribe(topic, self.inbox)

    async def _meter_reading(self, msg: ReadingMsg) -> None:
        if msg.kind not in (PointKind.POWER, PointKind.ENERGY) or not msg.quality.usable:
            return
        field = "power_w" if msg.kind is PointKind.POWER else "energy_kwh"
        key, value = (msg.device_id, msg.point_id), rounded(msg.value, field)
        if self.meter_values.get(key) == value:
            return  # nothing new for Home Assistant
        self.meter_values[key] = value
        await self._publish_meter(key)

    async def _publish_meter(self, key: tuple[str, str]) -> None:
        await self.conn.publish(self.topics.point_state(*key), json.dumps(self.meter_values[key]),
                                self.settings.qos_readings, retain=True)  # fmt: skip

    def _discovery(self) -> dict[str, dict[str, Any]]:
        availability = Availability(self.conn.gateway, frozenset(self.gateways_seen))
        return discovery_configs(self.ctx.site, self.settings.homeassistant_prefix, self.base,
                                 self.configuration_url, availability)  # fmt: skip

    async def _reannounce(self) -> None:
        """After a reload: configs of removed zones and devices cleared, the rest announced."""
        old, self.configs = self.configs, self._discovery()
        self._subscribe_meters()
        for topic in old.keys() - self.configs.keys():
            await self.conn.publish(topic, b"", qos=1, retain=True)
        await self.announce()

    def _on_config(self, topic: str, payload: bytes, retained: bool) -> None:
        """A discovery config of ours on the broker that we no longer announce: cleared."""
        if payload and topic not in self.configs:
            log.info("mqtt: clearing Home Assistant discovery config %s (no longer in the site)",
                     topic)  # fmt: skip
            self._spawn(self.conn.publish(topic, b"", qos=1, retain=True))

    async def announce(self) -> None:
        """Home Assistant discovery for every zone and device (retained), then the states."""
        for topic, config in self.configs.items():
            await self.conn.publish(topic, json.dumps(config), qos=1, retain=True)
        for subject in (*self.ctx.site.zones, *self.ctx.site.devices):
            await self._publish_problem(subject)
        for msg in list(self.states.values()):
            await self._zone_state(msg)
        for key in list(self.meter_values):
            await self._publish_meter(key)

    def _bad(self, topic: str, why: str) -> None:
        self.invalid += 1
        self.ctx.metrics.inc("buildingd_mqtt_invalid_total", topic=topic.rsplit("/", 1)[-1])
        log.warning("mqtt: %s: %s", topic, why)

    def _on_refused(self, topic: str, reason: str) -> None:
        self.invalid += 1
        self.ctx.metrics.inc("buildingd_mqtt_invalid_total", topic=topic.rsplit("/", 1)[-1])

    def _zone_of(self, topic: str) -> str | None:
        rest = topic.removeprefix(f"{self.base}/zone/")
        zone_id = rest.split("/", 1)[0]
        return zone_id if zone_id in self.ctx.site.zones else None

    def _retained(self, topic: str, kind: str) -> None:
        """A request left retained on the broker: delivered again at every (re)connect and
        restart, so it never acts; counted, and logged once per topic."""
        self.ctx.metrics.inc(RETAINED_METRIC, kind=kind)
        if topic not in self._retained_seen and len(self._retained_seen) < RETAINED_LOGGED:
            self._retained_seen.add(topic)
            log.warning("mqtt: retained %s request on %s ignored: requests act once; publish "
                        "it without retain, and clear the retained one", kind, topic)  # fmt: skip

    def _on_gateway_status(self, topic: str, payload: bytes, retained: bool) -> None:
        gateway = topic.removeprefix(f"{self.base}/gateway/").partition("/")[0]
        if payload.strip() == b"online":
            self.gateways_online.add(gateway)
        else:
            self.gateways_online.discard(gateway)
        if gateway not in self.gateways_seen:  # the broker is shared with it: its entities'
            self.gateways_seen.add(gateway)  # availability is its own status from now on
            if self.settings.homeassistant_discovery:
                self._spawn(self._reannounce())

    def _answered_elsewhere(self) -> bool:
        """Whether another gateway's bridge on this broker speaks for the site (answers votes
        and set requests, publishes the site's ``events``): the coordinator's gateway when it
        is online here; while none is (its gateway died and another is taking over), the
        first of the gateways online here. A gateway alone on its broker speaks itself."""
        me = self.conn.gateway
        if me is None or (self.overrides is not None and self.overrides() is not None):
            return False
        leader = self.leader() if self.leader is not None else None
        if leader is not None and leader != me and leader in self.gateways_online:
            return True
        return any(other < me for other in self.gateways_online - {me})

    def _no_coordinator(self) -> str:
        """Why a request the coordinator answers is refused here: on a broker shared with the
        coordinator's gateway (seen here) or while none leads, it is being taken over."""
        leader = self.leader() if self.leader is not None else None
        shared = len(self.gateways_seen) > 1 and (leader is None or leader in self.gateways_seen)
        return TAKING_OVER if self.conn.gateway is not None and shared else NO_COORDINATOR

    def _on_vote(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            return self._retained(topic, "vote")
        if self._answered_elsewhere():
            return None
        zone_id = self._zone_of(topic)
        text = payload.decode(errors="replace").strip().strip('"').lower()
        if zone_id is None or self.vote_fn is None:
            return self._bad(topic, "unknown zone or no coordinator")
        answer: dict[str, object] = {"accepted": False, "reason": self._no_coordinator()}
        if self.overrides is None or self.overrides() is not None:
            result = self.vote_fn(zone_id, text)
            answer = {"accepted": result.accepted, "reason": result.reason}
        answer["vote"] = text[:20]
        self._spawn(self.conn.publish(f"{topic}/result", json.dumps(answer), qos=1))
        return None

    def _on_dr(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            return self._retained(topic, "demand-response")
        try:
            call = demand_response_request(payload)
        except (ValueError, TypeError, KeyError) as err:
            why = request_error(err)
            record_refusal(self.ctx.metrics, "demand-response", why, source="mqtt")
            return self._bad(topic, f"invalid demand-response request: {why}")
        # Its own conversation: the coordinator opens it once, however often it is delivered.
        env = call.envelope(Performative.REQUEST, self.name, DEMAND_RESPONSE_TOPIC,
                            conversation_id=new_conversation_id())  # fmt: skip
        self._spawn(self.ctx.send(env))
        return None

    def _on_setpoint(self, topic: str, payload: bytes, retained: bool) -> None:
        """Requests from Home Assistant: ``heating_sp`` / ``cooling_sp`` (settled into one band
        request), ``mode`` (a preset) and ``light`` (JSON schema light)."""
        what = topic.rsplit("/", 1)[-1]
        if what == "result":
            return None  # our own answer, not a request
        if retained:
            return self._retained(topic, "override")
        if self._answered_elsewhere():
            return None
        zone_id = self._zone_of(topic)
        if zone_id is None:
            return self._bad(topic, "unknown zone")
        overrides = self.overrides() if self.overrides is not None else None
        if overrides is None:
            refused: dict[str, object] = {"accepted": False, "reason": self._no_coordinator()}
            self._spawn(self._answer(zone_id, what[:20], refused))
            return None
        if what in ("heating_sp", "cooling_sp"):
            try:
                wanted = finite_number(payload)
            except ValueError as err:
                why = f"{what}: {err}"
                record_refusal(self.ctx.metrics, "override", why, source="mqtt", zone=zone_id)
                return self._bad(topic, why)
            pending = self._pending.setdefault(zone_id, {})
            if not pending:
                self._spawn(self._settle_band(zone_id))
            pending[what] = wanted
            return None
        if what == "mode":
            mode = payload.decode(errors="replace").strip().strip('"').lower()
            result = overrides.override_mode(zone_id, "schedule" if mode == "none" else mode)
            self._spawn(self._answer(zone_id, f"mode {mode[:20]}", result))
            return None
        if what == "light":
            try:
                level = light_request(payload, self.states.get(zone_id))
            except ValueError as err:
                return self._bad(topic, f"invalid light command: {err}")
            result = overrides.override_light(zone_id, level)
            self._spawn(self._answer(zone_id, f"lights {level:g} %", result))
            return None
        return self._bad(topic, f"unknown request {what[:20]!r}")

    async def _settle_band(self, zone_id: str) -> None:
        """Wait for the other end of the range, then one request for both (the end not sent
        keeps its current value)."""
        await asyncio.sleep(RANGE_SETTLE_S)
        pending = self._pending.pop(zone_id, {})
        overrides = self.overrides() if self.overrides is not None else None
        state = self.states.get(zone_id)
        if not pending:
            return
        result: dict[str, object]
        if overrides is None:
            result = {"accepted": False, "reason": self._no_coordinator()}
        elif state is None:
            result = {"accepted": False, "reason": "zone state not known yet"}
        else:
            heating = pending.get("heating_sp", state.heating_sp_c)
            cooling = pending.get("cooling_sp", state.cooling_sp_c)
            result = overrides.override_band(zone_id, heating, cooling)
        asked = ", ".join(f"{k}={v:g}" for k, v in sorted(pending.items()))
        await self._answer(zone_id, asked, result)

    async def _answer(self, zone_id: str, asked: str, result: dict[str, object]) -> None:
        """The answer on ``set/result`` and, retained, the zone's last request (a sensor in
        Home Assistant, so a refusal is seen there)."""
        await self._flush_coordinator()
        word = "accepted" if result.get("accepted") else "refused"
        if word == "refused":  # every refusal is audited with its reason, as over HTTP
            why = f"{asked}: {result.get('reason', '')}"
            record_refusal(self.ctx.metrics, "override", why, source="mqtt", zone=zone_id)
        summary = f"{word}: {asked}: {result.get('reason', '')}"[:MAX_ANSWER_CHARS]
        answer = {**result, "request": asked, "result": word, "summary": summary,
                  "at": self.ctx.clock.now().isoformat(timespec="seconds")}  # fmt: skip
        await self.conn.publish(self.topics.zone_set(zone_id, "result"), json.dumps(answer), qos=1)
        await self.conn.publish(self.topics.last_request(zone_id), json.dumps(answer), qos=1,
                                retain=True)  # fmt: skip

    async def _flush_coordinator(self) -> None:
        if self._flush is not None:
            await self._flush()

    def _on_ha(self, topic: str, payload: bytes, retained: bool) -> None:
        if payload.strip().lower() == b"online":
            log.info("mqtt: Home Assistant is online: re-announcing zones")
            self._spawn(self.announce())
