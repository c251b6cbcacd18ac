"""Telemetry agent: owns the telemetry sink; records readings, commands, zone states and events
as line protocol. It never blocks the bus: the sink's ``submit`` is non-blocking and bounded, and
its own mailbox drops the oldest when full (counted in ``buildingd_telemetry_dropped_total``).
On a graceful stop it hands what is still in its mailbox to the sink, which the daemon then
flushes to disk or the server."""

from __future__ import annotations

import logging
from collections.abc import Callable

from buildingd.agents.bus import Envelope, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    COMMANDS_TOPIC,
    EVENTS_TOPIC,
    NEGOTIATIONS_TOPIC,
    TELEMETRY,
    ZONE_LEARNING_TOPIC,
    ZONE_STATE_TOPIC,
    CommandResultMsg,
    EventMsg,
    NegotiationMsg,
    ReadingMsg,
    ZoneLearningMsg,
    ZoneStateMsg,
    readings_topic,
)
from buildingd.agents.runtime import Agent
from buildingd.telemetry import schema
from buildingd.telemetry.sink import TelemetrySink

log = logging.getLogger(__name__)


class TelemetryAgent(Agent):
    name_ = "telemetry"
    mailbox_size = 20_000
    overflow = "drop_oldest"  # telemetry must never hold up control

    def __init__(self, ctx: AgentContext, sink: TelemetrySink) -> None:
        super().__init__(TELEMETRY)
        self.ctx = ctx
        self.sink = sink
        self._dropped_counted = 0
        self._down = False  # the sink's outage, reported once per change

    async def _watch_outage(self) -> None:
        """An availability event when the sink cannot deliver (InfluxDB away: data waits on
        disk) and when it can again; the coordinator escalates an outage that lasts."""
        outage = self.sink.outage()
        if (outage is not None) == self._down:
            return
        self._down = outage is not None
        severity, message = ("warning", f"unavailable: {outage}") if outage else ("info", "back")
        env = EventMsg(
            kind="availability", source=TELEMETRY, zone_id=None, severity=severity,
            message=f"telemetry {message}", timestamp=self.ctx.clock.now(),
        ).envelope(Performative.INFORM, self.name, EVENTS_TOPIC)  # fmt: skip
        await self.ctx.send(env)

    def topics(self) -> list[str]:
        zones = [readings_topic(z) for z in self.ctx.site.zones]
        return [
            *zones,
            readings_topic(None),
            ZONE_STATE_TOPIC,
            ZONE_LEARNING_TOPIC,
            EVENTS_TOPIC,
            COMMANDS_TOPIC,
            NEGOTIATIONS_TOPIC,
        ]

    async def run(self, started: Callable[[], None]) -> None:
        topics = self.topics()
        for topic in topics:
            self.ctx.bus.subscribe(topic, self.inbox)
        started()
        try:
            while True:
                self._record(await self.inbox.get())
                await self._watch_outage()
        finally:
            for topic in topics:
                self.ctx.bus.unsubscribe(topic, self.inbox)

    async def on_stop(self) -> None:
        # Messages sent by agents stopped just before (their last readings, commands and
        # events) may still wait here; get() returns at once while any is queued.
        while len(self.inbox):
            self._record(await self.inbox.get())

    def _record(self, env: Envelope) -> None:
        if self.inbox.dropped != self._dropped_counted:
            self.ctx.metrics.inc(
                "buildingd_telemetry_dropped_total", self.inbox.dropped - self._dropped_counted
            )
            self._dropped_counted = self.inbox.dropped
        line = self.to_line(env)
        if line is not None:
            self.sink.submit([line])

    def to_line(self, env: Envelope) -> str | None:
        site = self.ctx.site.site_id
        try:
            if env.ontology == ReadingMsg.ontology:
                r = ReadingMsg.parse(env)
                return schema.reading_line(
                    site,
                    r.device_id,
                    r.point_id,
                    r.zone_id,
                    r.kind.value,
                    r.unit,
                    r.value,
                    r.quality.value,
                    r.timestamp,
                )
            if env.ontology == CommandResultMsg.ontology:
                c = CommandResultMsg.parse(env)
                return schema.command_line(
                    site,
                    c.device_id,
                    c.point_id,
                    c.zone_id,
                    c.kind.value,
                    c.value,
                    c.ok,
                    c.reason,
                    c.error,
                    c.timestamp,
                )
            if env.ontology == ZoneLearningMsg.ontology:
                learned = ZoneLearningMsg.parse(env)
                figures = learned.model_dump(exclude={"zone_id", "timestamp"})
                return schema.zone_learning_line(site, learned.zone_id, figures, learned.timestamp)
            if env.ontology == ZoneStateMsg.ontology:
                z = ZoneStateMsg.parse(env)
                zone = self.ctx.site.zones.get(z.zone_id)
                building = self.ctx.drivers.building
                sim_zone = building.zones.get(z.zone_id) if building is not None else None
                return schema.zone_state_line(
                    site,
                    z.zone_id,
                    z.mode,
                    z.temperature_c,
                    z.humidity_pct,
                    z.occupied,
                    z.heating_sp_c,
                    z.cooling_sp_c,
                    z.heating_sp_c,
                    z.cooling_sp_c,
                    z.light_level_pct,
                    sim_zone.heating_w if sim_zone is not None else None,
                    sim_zone.cooling_w if sim_zone is not None else None,
                    (zone.lighting_power_w * z.light_level_pct / 100) if zone is not None else None,
                    z.timestamp,
                )
            if env.ontology == NegotiationMsg.ontology:
                n = NegotiationMsg.parse(env)
                figures = {
                    "target_w": n.target_w,
                    "committed_w": n.committed_w,
                    "zones_awarded": n.zones_awarded,
                    "turns": n.turns,
                    "messages": n.messages,
                }
                return schema.negotiation_line(
                    site, n.kind, n.state, n.conversation_id, n.reason, figures, n.timestamp
                )
            if env.ontology == EventMsg.ontology:
                e = EventMsg.parse(env)
                return schema.event_line(
                    site, e.kind, e.severity, e.source, e.zone_id, e.message, e.timestamp
                )
        except ValueError as err:
            self.ctx.metrics.inc("buildingd_telemetry_invalid_total")
            log.warning("telemetry: cannot record %s from %s: %s", env.ontology, env.sender, err)
        return None
