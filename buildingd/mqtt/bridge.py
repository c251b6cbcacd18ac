"""The MQTT bridge agent: what the building shows and accepts on the broker.

Out (under ``<prefix>/<site>/``): ``zone/<zone>/state`` (retained JSON: mode, temperature_c,
humidity_pct, occupied, illuminance_lux, heating_sp_c, cooling_sp_c, light_level_pct),
``events``, ``alerts/<subject>`` (retained JSON: the open break-glass alerts of one zone, device,
agent or ``building``, each with its ``ack_topic``; an empty retained payload removes the topic
when the last one clears), and ``status`` (online/offline, retained, the will).

In: ``zone/<zone>/vote`` (``hot`` / ``cold``, answered on ``zone/<zone>/vote/result``),
``demand-response/request`` (``{"target_w": ..., "window_s": ...}``), ``alerts/<id>/ack`` and
``alerts/<id>/clear`` (payload: who, as text or ``{"by": ...}``; retained ones are ignored, so an
acknowledgement left on the broker never acts again), and, with Home Assistant discovery on,
``zone/<zone>/set/heating_sp`` and ``.../cooling_sp`` from the climate entity. A setpoint request
becomes a band offset that passes the same policy limits as a vote (at most ``vote_max_offset_k``
from the scheduled band, inside the safety band) or is refused with a reason on
``zone/<zone>/set/result``. Invalid payloads (not strict JSON, NaN or infinite numbers,
too large) are counted in ``buildingd_mqtt_invalid_total`` and logged, never raised.

The bridge also hands the daemon's ``Metrics`` to the connection (``use_metrics``), so its
``buildingd_mqtt_*`` counters reach ``/metrics``.

Home Assistant MQTT discovery (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery):
per zone a ``climate`` entity and ``sensor``/``binary_sensor`` entities, published retained on
connect and again whenever Home Assistant announces ``homeassistant/status`` ``online``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from buildingd.agents.bus import Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    COORDINATOR,
    DEMAND_RESPONSE_TOPIC,
    EVENTS_TOPIC,
    ZONE_STATE_TOPIC,
    DemandResponseCall,
    EventMsg,
    ZoneStateMsg,
)
from buildingd.agents.runtime import Agent
from buildingd.control.zone import ZoneMode
from buildingd.coordinator.escalation import ALERTS_TOPIC, AlertActionMsg, AlertMsg
from buildingd.coordinator.votes import VoteResult
from buildingd.mqtt import payload as strict_json
from buildingd.mqtt.connection import MqttConnection

log = logging.getLogger(__name__)

VoteFn = Callable[[str, str], VoteResult]
OverrideFn = Callable[[str, str, float], dict[str, object]]
OBJECT_ID = re.compile(r"[^a-zA-Z0-9_-]")
BUS_TOPICS = (ZONE_STATE_TOPIC, EVENTS_TOPIC, ALERTS_TOPIC)


def object_id(text: str) -> str:
    return OBJECT_ID.sub("_", text)


def discovery_configs(
    prefix: str, site_id: str, zone_id: str, zone_name: str, base: str
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) pairs announcing one zone to Home Assistant."""
    node = object_id(f"buildingd_{site_id}")
    zid = object_id(zone_id)
    state = f"{base}/zone/{zone_id}/state"
    common = {
        "availability_topic": f"{base}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [f"{node}_{zid}"],
            "name": zone_name,
            "manufacturer": "buildingd",
            "suggested_area": zone_name,
        },
    }
    climate = {
        **common,
        "name": None,
        "unique_id": f"{node}_{zid}_climate",
        "modes": ["heat_cool"],
        "mode_state_topic": state,
        "mode_state_template": "{{ 'heat_cool' }}",
        "current_temperature_topic": state,
        "current_temperature_template": "{{ value_json.temperature_c }}",
        "current_humidity_topic": state,
        "current_humidity_template": "{{ value_json.humidity_pct }}",
        "temperature_low_state_topic": state,
        "temperature_low_state_template": "{{ value_json.heating_sp_c }}",
        "temperature_high_state_topic": state,
        "temperature_high_state_template": "{{ value_json.cooling_sp_c }}",
        "temperature_low_command_topic": f"{base}/zone/{zone_id}/set/heating_sp",
        "temperature_high_command_topic": f"{base}/zone/{zone_id}/set/cooling_sp",
        "preset_mode_state_topic": state,
        "preset_mode_value_template": "{{ value_json.mode }}",
        # Home Assistant rejects a preset state that is not listed: the G36 zone modes.
        "preset_modes": [m.value for m in ZoneMode],
        "temperature_unit": "C",
        "precision": 0.1,
    }
    sensors: list[tuple[str, dict[str, Any]]] = [
        (f"{prefix}/climate/{node}/{zid}/config", climate),
        (
            f"{prefix}/binary_sensor/{node}/{zid}_occupancy/config",
            {**common, "name": "Occupancy", "unique_id": f"{node}_{zid}_occupancy",
             "device_class": "occupancy", "state_topic": state,
             "value_template": "{{ 'ON' if value_json.occupied else 'OFF' }}"},
        ),
        (
            f"{prefix}/sensor/{node}/{zid}_illuminance/config",
            {**common, "name": "Illuminance", "unique_id": f"{node}_{zid}_illuminance",
             "device_class": "illuminance", "unit_of_measurement": "lx", "state_topic": state,
             "value_template": "{{ value_json.illuminance_lux }}"},
        ),
        (
            f"{prefix}/sensor/{node}/{zid}_humidity/config",
            {**common, "name": "Humidity", "unique_id": f"{node}_{zid}_humidity",
             "device_class": "humidity", "unit_of_measurement": "%", "state_topic": state,
             "value_template": "{{ value_json.humidity_pct }}"},
        ),
    ]  # fmt: skip
    return sensors


class MqttBridgeAgent(Agent):
    mailbox_size = 5000

    def __init__(
        self,
        ctx: AgentContext,
        conn: MqttConnection,
        vote: VoteFn | None,
        override: OverrideFn | None = None,
        flush: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__("mqtt-bridge")
        self.ctx, self.conn, self.vote_fn, self.override_fn = ctx, conn, vote, override
        self._flush = flush
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
        self.conn.subscribe(f"{self.base}/demand-response/request", self._on_dr, 1, refused)
        for verb in ("ack", "clear"):
            self.conn.subscribe(f"{self.base}/alerts/+/{verb}", self._on_alert_action, 1, refused)
        self.conn.subscribe(f"{self.base}/alerts/+", self._on_retained_alert, 1)
        self.conn.on_connect(self._republish_alerts)
        # The open alerts, from the coordinator's book (a restarted bridge has lost them).
        await self.ctx.send(AlertActionMsg(action="snapshot").envelope(
            Performative.REQUEST, self.name, COORDINATOR))  # fmt: skip
        if self.settings.homeassistant_discovery:
            self.conn.subscribe(f"{self.base}/zone/+/set/+", self._on_setpoint, 1, refused)
            self.conn.subscribe(f"{self.settings.homeassistant_prefix}/status", self._on_ha, 1)
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
                    body = event.model_dump_json().encode()
                    await self.conn.publish(f"{self.base}/events", body, self.settings.qos_events)
                elif env.ontology == AlertMsg.ontology:
                    await self._alerts(AlertMsg.parse(env))
        finally:
            for topic in BUS_TOPICS:
                self.ctx.bus.unsubscribe(topic, self.inbox)
            # A restarted bridge subscribes afresh; this one's handlers must not linger.
            for handler in (self._on_vote, self._on_dr, self._on_setpoint, self._on_ha,
                            self._on_alert_action, self._on_retained_alert):  # fmt: skip
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
        if retained:
            return None  # left on the broker: acting on it at every connect would be wrong
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

    async def _zone_state(self, msg: ZoneStateMsg) -> None:
        self.states[msg.zone_id] = msg
        body = {
            "mode": msg.mode, "temperature_c": msg.temperature_c, "humidity_pct": msg.humidity_pct,
            "occupied": msg.occupied, "illuminance_lux": msg.illuminance_lux,
            "heating_sp_c": msg.heating_sp_c, "cooling_sp_c": msg.cooling_sp_c,
            "light_level_pct": msg.light_level_pct, "timestamp": msg.timestamp.isoformat(),
        }  # fmt: skip
        await self.conn.publish(f"{self.base}/zone/{msg.zone_id}/state", json.dumps(body),
                                self.settings.qos_readings, retain=True)  # fmt: skip

    async def announce(self) -> None:
        """Home Assistant discovery for every zone (retained), then the current states."""
        for zone_id, zone in self.ctx.site.zones.items():
            for topic, config in discovery_configs(
                self.settings.homeassistant_prefix, self.ctx.site.site_id, zone_id,
                zone.name or zone_id, self.base,
            ):  # fmt: skip
                await self.conn.publish(topic, json.dumps(config), qos=1, retain=True)
        for msg in list(self.states.values()):
            await self._zone_state(msg)

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

    def _on_vote(self, topic: str, payload: bytes, retained: bool) -> None:
        zone_id = self._zone_of(topic)
        text = payload.decode(errors="replace").strip().strip('"').lower()
        if zone_id is None or self.vote_fn is None:
            return self._bad(topic, "unknown zone or no coordinator")
        result = self.vote_fn(zone_id, text)
        answer = {"accepted": result.accepted, "reason": result.reason, "vote": text[:20]}
        self._spawn(self.conn.publish(f"{topic}/result", json.dumps(answer), qos=1))
        return None

    def _on_dr(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            data = strict_json.loads(payload)
            call = DemandResponseCall(
                target_w=data["target_w"], window_s=data.get("window_s", 3600),
                reason=str(data.get("reason", "requested over MQTT"))[:200],
            )  # fmt: skip
        except (ValueError, TypeError, KeyError) as err:
            return self._bad(topic, f"invalid demand-response request: {err}")
        self._spawn(self.ctx.send(call.envelope(Performative.REQUEST, self.name,
                                                DEMAND_RESPONSE_TOPIC)))  # fmt: skip
        return None

    def _on_setpoint(self, topic: str, payload: bytes, retained: bool) -> None:
        zone_id = self._zone_of(topic)
        what = topic.rsplit("/", 1)[-1]
        try:
            wanted = float(payload)
        except ValueError:
            return self._bad(topic, f"not a number: {payload[:40]!r}")
        if not math.isfinite(wanted):  # float() takes "nan" and "inf"
            return self._bad(topic, f"not a finite number: {payload[:40]!r}")
        if zone_id is None or what not in ("heating_sp", "cooling_sp"):
            return self._bad(topic, "unknown zone or setpoint")
        if self.override_fn is None:
            return self._bad(topic, "no coordinator to take setpoint requests")
        result = self.override_fn(zone_id, what, wanted)
        self._spawn(self._flush_coordinator())
        answer = f"{self.base}/zone/{zone_id}/set/result"
        self._spawn(self.conn.publish(answer, json.dumps(result), qos=1))
        return None

    async def _flush_coordinator(self) -> None:
        if self._flush is not None:
            await self._flush()

    def _on_ha(self, topic: str, payload: bytes, retained: bool) -> None:
        if payload.strip().lower() == b"online":
            log.info("mqtt: Home Assistant is online: re-announcing zones")
            self._spawn(self.announce())
