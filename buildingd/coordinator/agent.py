"""The coordinator agent: takes in what the building-level jobs listen to and routes each message
to the desk that owns the job, ticks every desk, and sends what they queued. The jobs are:

* demand response (``demand_response``): Contract Net rounds with the zones, awards, and the
  commitments kept across restarts;
* air-handler resets (``air_handlers``): G36 trim & respond of the supply-air temperature and
  duct static pressure setpoints;
* occupants (``occupants``): votes, and setpoints, modes and light levels set by hand;
* break-glass (``break_glass``): one alert per incident, reminded until acknowledged.

The desks share the zones' latest summaries and one outbox (``office``); each keeps its own state
(demand response and break-glass also their state files). Listens to zone summaries
(``zone-state``: mode, temperature vs band, occupancy, demand and flexibility), never raw
readings, plus building-level power readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buildingd.agents.bus import Envelope
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    COORDINATOR,
    DEMAND_RESPONSE_TOPIC,
    EVENTS_TOPIC,
    ZONE_STATE_TOPIC,
    AlertActionMsg,
    CommandResultMsg,
    DemandResponseCall,
    EventMsg,
    ReadingMsg,
    VoteResult,
    ZoneStateMsg,
    readings_topic,
)
from buildingd.agents.runtime import Agent
from buildingd.control.trim_respond import TrimRespond
from buildingd.coordinator.air_handlers import STATIC_PRESSURE, SUPPLY_AIR, AirHandlerDesk
from buildingd.coordinator.break_glass import BreakGlassDesk
from buildingd.coordinator.demand_response import DemandResponseDesk
from buildingd.coordinator.escalation import Incident, IncidentBook
from buildingd.coordinator.negotiation import DemandResponseRun
from buildingd.coordinator.occupants import OccupantDesk
from buildingd.coordinator.office import TICK_S, Office
from buildingd.coordinator.votes import VoteBox
from buildingd.coordinator.webhook import WebhookSender
from buildingd.errors import RequestRefusedError

log = logging.getLogger(__name__)


class CoordinatorAgent(Agent):
    mailbox_size = 5000
    overflow = "block"  # negotiation messages must not be lost

    def __init__(self, ctx: AgentContext, state_dir: Path | None = None) -> None:
        super().__init__(COORDINATOR)
        self.ctx = ctx
        self.office = Office(ctx)
        self.zones = self.office.zones
        self.alarms = BreakGlassDesk(self.office, state_dir)
        self.demand = DemandResponseDesk(self.office, self.alarms, state_dir)
        self.air = AirHandlerDesk(self.office)
        self.occupants = OccupantDesk(self.office)
        # Votes and resets another gateway's coordinator left (``carried``), taken at start.
        self.carried_in: dict[str, Any] | None = None

    # -- the loop ------------------------------------------------------------------------------

    def topics(self) -> list[str]:
        return [
            self.name, ZONE_STATE_TOPIC, DEMAND_RESPONSE_TOPIC, readings_topic(None), EVENTS_TOPIC
        ]  # fmt: skip

    async def run(self, started: Callable[[], None]) -> None:
        for topic in self.topics():
            self.ctx.bus.subscribe(topic, self.inbox)
        started()
        now = self.ctx.clock.monotonic()
        self.air.start(now)
        if self.carried_in is not None:
            self.carry_on(self.carried_in)
        self.demand.resume(now)
        self.alarms.resume(now)
        try:
            self.webhooks.start()  # owned: stopped in the finally below
            next_tick = now
            while True:
                wait = max(0.0, next_tick - self.ctx.clock.monotonic())
                # No message before the next tick is no failure: the timeout is the tick.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.ctx.clock.to_loop_seconds(wait)):
                        env = await self.inbox.get()
                    self.take(env)
                    # The rest of a burst (a round's answers) without a timer per message.
                    while (waiting := self.inbox.get_nowait()) is not None:
                        self.take(waiting)
                    self.demand.answered(self.ctx.clock.monotonic())
                now = self.ctx.clock.monotonic()
                if now >= next_tick:
                    self.tick(now)
                    next_tick = now + TICK_S
                await self.flush()
        finally:
            for topic in self.topics():
                self.ctx.bus.unsubscribe(topic, self.inbox)
            await self.webhooks.stop()

    async def flush(self) -> bool:
        """Send what the desks queued (the loop does this after every step), once the state
        that queued it is durable (``office.durable``): a coordinator that dies after a cfp or
        an award went out leaves its successor the negotiation that sent it. False when it
        could not be made durable (this gateway lost its lease first: the bus drops what its
        coordinator sends, and a new leader will not know of it)."""
        outbox = self.office.outbox
        durable = True
        if outbox and self.office.durable is not None:
            durable = await self.office.durable()
        while outbox:
            await self.ctx.send(outbox.pop(0))
        return durable

    def tick(self, now_s: float) -> None:
        """Every desk's timers. Demand response first: a negotiation that met its target there
        clears a shortfall alert at break-glass's turn in the same tick."""
        self.demand.tick(now_s)
        self.occupants.tick(now_s)
        self.air.tick(now_s)
        self.alarms.tick(now_s)

    # -- routing -------------------------------------------------------------------------------

    def take(self, env: Envelope) -> None:
        """Take in one message; a malformed or unexpected one is counted and logged. No content
        may crash the coordinator (an overflow included): it would stop every building job."""
        try:
            self._route(env)
        except (ValueError, ArithmeticError) as err:
            self.ctx.metrics.inc("buildingd_messages_rejected_total", agent="coordinator")
            log.warning("coordinator: rejected %s from %s: %s", env.performative, env.sender, err)

    def _route(self, env: Envelope) -> None:
        if env.ontology == ZoneStateMsg.ontology:
            msg = ZoneStateMsg.parse(env)
            self.zones[msg.zone_id] = msg
        elif env.ontology == ReadingMsg.ontology:
            self.demand.reading(ReadingMsg.parse(env))
        elif env.ontology == CommandResultMsg.ontology:
            result = CommandResultMsg.parse(env)
            if not result.ok:
                self.air.refused(result)
        elif env.ontology == EventMsg.ontology:
            self.alarms.event(EventMsg.parse(env))
        elif env.ontology == AlertActionMsg.ontology:
            self.alarms.action(AlertActionMsg.parse(env), env.sender)
        elif env.ontology != DemandResponseCall.ontology:
            raise ValueError(f"unexpected ontology {env.ontology!r}")
        elif env.receiver == DEMAND_RESPONSE_TOPIC:
            with contextlib.suppress(RequestRefusedError):  # audited, counted and logged
                self.demand.request(DemandResponseCall.parse(env), env.sender, env.conversation_id)
        else:
            self.demand.reply(env)

    # -- what the service, the API and the MQTT bridge call: each desk's own ----------------------

    def request_demand_response(
        self, call: DemandResponseCall, source: str, conversation_id: str | None = None
    ) -> str:
        """Opened (its conversation id), or ``RequestRefusedError`` with the reason."""
        return self.demand.request(call, source, conversation_id)

    def open_demand_response(self, target_w: float, window_s: float, reason: str) -> str:
        return self.demand.open(target_w, window_s, reason)

    def resume_commitments(self, now_s: float) -> None:
        self.demand.resume(now_s)

    @property
    def negotiations(self) -> dict[str, DemandResponseRun]:
        return self.demand.negotiations

    @property
    def finished(self) -> list[DemandResponseRun]:
        return self.demand.finished

    @property
    def outcomes(self) -> dict[str, int]:
        return self.demand.outcomes

    @property
    def rejected(self) -> Counter[str]:
        return self.demand.rejected

    def vote(self, zone_id: str, vote: str, source: str = "api") -> VoteResult:
        return self.occupants.vote(zone_id, vote, source)

    def override(
        self, zone_id: str, what: str, wanted_c: float, source: str = "api"
    ) -> dict[str, object]:
        return self.occupants.override(zone_id, what, wanted_c, source)

    def override_band(self, zone_id: str, heating_c: float, cooling_c: float) -> dict[str, object]:
        return self.occupants.override_band(zone_id, heating_c, cooling_c)

    def override_mode(self, zone_id: str, mode: str) -> dict[str, object]:
        return self.occupants.override_mode(zone_id, mode)

    def override_light(self, zone_id: str, level_pct: float) -> dict[str, object]:
        return self.occupants.override_light(zone_id, level_pct)

    @property
    def votes(self) -> VoteBox:
        return self.occupants.votes

    def _wall_shift_s(self) -> float:
        """Add to this clock's monotonic seconds to get wall-clock (epoch) seconds."""
        return self.ctx.clock.now().timestamp() - self.ctx.clock.monotonic()

    def carried(self) -> dict[str, Any]:
        """The votes and air-handler resets, times in wall-clock seconds, for a standby on
        another gateway (the rest of the state is in the desks' files)."""
        shift = round(self._wall_shift_s(), 1)  # the same bytes while nothing changes
        return {"votes": self.occupants.votes.export(shift), "air_handlers": self.air.export(shift)}

    def carry_on(self, state: dict[str, Any]) -> None:
        """Take over ``carried`` from the last leader (``saved_at``: its wall clock then; a
        snapshot from a clock ahead of ours is taken as made now). A malformed part is logged
        and left out."""
        shift = self._wall_shift_s()
        ahead_s = float(state.get("saved_at", 0.0)) - self.ctx.clock.now().timestamp()
        shift += max(0.0, ahead_s)
        try:
            self.occupants.votes.restore(state.get("votes", {}), shift)
            loops = self.air.restore(state.get("air_handlers", []), shift)
        except (ValueError, AttributeError) as err:
            log.error("coordinator: votes or air-handler resets not taken over: %s", err)  # noqa: TRY400
            return
        log.info("coordinator: took over %d zone vote box(es) and %d air-handler reset(s)",
                 len(self.occupants.votes.zones()), loops)  # fmt: skip

    def start_resets(self, now_s: float) -> None:
        self.air.start(now_s)

    @property
    def supply_air(self) -> dict[str, TrimRespond]:
        return self.air.loops(SUPPLY_AIR)

    @property
    def static_pressure(self) -> dict[str, TrimRespond]:
        return self.air.loops(STATIC_PRESSURE)

    @property
    def escalations(self) -> IncidentBook:
        return self.alarms.book

    @escalations.setter
    def escalations(self, book: IncidentBook) -> None:
        self.alarms.book = book  # a restarted coordinator keeps the open incidents

    @property
    def webhooks(self) -> WebhookSender:
        return self.alarms.webhooks

    def acknowledge(self, esc_id: str, who: str) -> bool:
        return self.alarms.acknowledge(esc_id, who)

    def clear_alert(self, esc_id: str, who: str) -> bool:
        return self.alarms.clear_alert(esc_id, who)

    def open_escalations(self) -> list[Incident]:
        return self.alarms.open_escalations()

    def incidents(self) -> list[Incident]:
        return self.alarms.incidents()

    def resume_alerts(self, now_s: float) -> None:
        self.alarms.resume(now_s)
