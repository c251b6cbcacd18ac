"""The MQTT bridge agent: what the building shows and accepts on the broker.

Out (under ``<prefix>/<site>/``): ``zone/<zone>/state`` (retained JSON: mode, temperature_c,
humidity_pct, occupied, illuminance_lux, heating_sp_c, cooling_sp_c, light_level_pct),
``events`` and ``alerts`` (severity error), and ``status`` (online/offline, retained, the will).

In: ``zone/<zone>/vote`` (``hot`` / ``cold``, answered on ``zone/<zone>/vote/result``),
``demand-response/request`` (``{"target_w": ..., "window_s": ...}``), and, with Home Assistant
discovery on, ``zone/<zone>/set/heating_sp`` and ``.../cooling_sp`` from the climate entity. A
setpoint request becomes a band offset that passes the same policy limits as a vote (at most
``vote_max_offset_k`` from the scheduled band, inside the safety band) or is refused with a
reason on ``zone/<zone>/set/result``. Invalid payloads are counted and logged, never raised.

Home Assistant MQTT discovery (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery):
per zone a ``climate`` entity and ``sensor``/``binary_sensor`` entities, published retained on
connect and again whenever Home Assistant announces ``homeassistant/status`` ``online``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from buildingd.agents.bus import Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    DEMAND_RESPONSE_TOPIC,
    EVENTS_TOPIC,
    ZONE_STATE_TOPIC,
    DemandResponseCall,
    EventMsg,
    ZoneStateMsg,
)
from buildingd.agents.runtime import Agent
from buildingd.control.zone import ZoneMode
from buildingd.coordinator.votes import VoteResult
from buildingd.mqtt.connection import MqttConnection

log = logging.getLogger(__name__)

VoteFn = Callable[[str, str], VoteResult]
OverrideFn = Callable[[str, str, float], dict[str, object]]
OBJECT_ID = re.compile(r"[^a-zA-Z0-9_-]")


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
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run async work asked for by a (synchronous) MQTT callback."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, started: Callable[[], None]) -> None:
        for topic in (ZONE_STATE_TOPIC, EVENTS_TOPIC):
            self.ctx.bus.subscribe(topic, self.inbox)
        self.conn.subscribe(f"{self.base}/zone/+/vote", self._on_vote, qos=1)
        self.conn.subscribe(f"{self.base}/demand-response/request", self._on_dr, qos=1)
        if self.settings.homeassistant_discovery:
            self.conn.subscribe(f"{self.base}/zone/+/set/+", self._on_setpoint, qos=1)
            self.conn.subscribe(f"{self.settings.homeassistant_prefix}/status", self._on_ha, qos=1)
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
                    if event.severity == "error":
                        await self.conn.publish(f"{self.base}/alerts", body,
                                                self.settings.qos_events)  # fmt: skip
        finally:
            for topic in (ZONE_STATE_TOPIC, EVENTS_TOPIC):
                self.ctx.bus.unsubscribe(topic, self.inbox)

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
            data = json.loads(payload)
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
