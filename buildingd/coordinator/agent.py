"""The coordinator agent: settles what zones compete for, within hard limits, and calls a human
when it cannot.

* Listens to zone summaries (``zone-state``: mode, temperature vs band, occupancy, demand and
  flexibility), never raw readings, plus building-level power readings.
* Demand response by Contract Net: an event (scheduled in the policy file, requested on the
  ``demand-response`` topic from MQTT/HTTP, or the building meter above ``power_cap_w``) sends a
  cfp to every zone; proposals and refusals are collected until ``reply_by`` (silence counts as a
  refusal); the cheapest set meeting the target is accepted, the rest rejected; awarded zones
  apply and confirm (inform-done); at the end of the window every awarded zone gets ``cancel``
  and restores. Each negotiation is a ``Negotiation`` state machine with guardrails.
* G36 trim & respond of each air handler's supply-air temperature setpoint from the zones'
  cooling requests, written to the air handler's setpoint point when the site has one.
* Occupant votes nudge a zone's band (``VoteBox``), sent to the zone as an adjustment.
* Break-glass: a negotiation that fails or breaks a guardrail raises an alert naming the contacts
  of the zones' policies; it stays open (and is re-announced every reminder interval) until a
  technician acknowledges it.

Every decision is logged as an audit line and published as an event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from zoneinfo import ZoneInfo

from buildingd.agents.bus import Envelope, Performative, new_conversation_id
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    COORDINATOR,
    DEMAND_RESPONSE_TOPIC,
    EVENTS_TOPIC,
    ZONE_STATE_TOPIC,
    AdjustmentsMsg,
    CommandMsg,
    CommandResultMsg,
    DemandResponseAward,
    DemandResponseCall,
    DemandResponseProposal,
    EventMsg,
    ReadingMsg,
    ZoneStateMsg,
    device_address,
    readings_topic,
    zone_address,
)
from buildingd.agents.runtime import Agent
from buildingd.coordinator.contract_net import Offer, award
from buildingd.coordinator.negotiation import Negotiation, NegotiationState
from buildingd.coordinator.trim_respond import TrimRespond, TrimRespondParams, cooling_requests
from buildingd.coordinator.votes import VoteBox, VoteResult, VoteRules
from buildingd.points import PointKind
from buildingd.service.journal import audit_decision

log = logging.getLogger(__name__)

TICK_S = 10.0  # simulated seconds between coordinator decisions
CONFIRM_S = 60.0  # awarded zones must confirm within this
S = NegotiationState


@dataclass
class DemandResponseRun:
    negotiation: Negotiation
    target_w: float
    window_s: float
    reason: str
    reply_by_s: float
    ends_s: float = 0.0
    invited: set[str] = field(default_factory=set)
    offers: dict[str, list[Offer]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    awarded: dict[str, Offer] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)
    restored: set[str] = field(default_factory=set)
    committed_w: float = 0.0
    confirm_by_s: float = 0.0


@dataclass
class Escalation:
    id: str
    message: str
    contacts: list[str]
    raised_s: float
    last_notice_s: float
    acknowledged_by: str | None = None


class CoordinatorAgent(Agent):
    mailbox_size = 5000
    overflow = "block"  # negotiation messages must not be lost

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(COORDINATOR)
        self.ctx = ctx
        self.zones: dict[str, ZoneStateMsg] = {}
        self.building_power_w: float | None = None
        self.negotiations: dict[str, DemandResponseRun] = {}
        self.finished: list[DemandResponseRun] = []
        self.escalations: dict[str, Escalation] = {}
        self.outcomes: dict[str, int] = {}
        rules = [p.negotiation for p in ctx.site.policies.values()]
        first = rules[0] if rules else None
        self.votes = VoteBox(
            VoteRules(
                window_s=first.vote_window_s if first else 900.0,
                step_k=first.vote_step_k if first else 0.5,
                max_offset_k=first.vote_max_offset_k if first else 1.5,
            )
        )
        self._vote_offsets: dict[str, float] = {}
        self.supply_air: dict[str, TrimRespond] = {}
        self.supply_air_sp: dict[str, float] = {}
        self._requests: dict[str, int] = {}
        self._hot_since: dict[str, tuple[float | None, float | None]] = {}
        self._scheduled_done: set[int] = set()
        self._outbox: list[Envelope] = []

    # -- the loop ------------------------------------------------------------------------------

    def topics(self) -> list[str]:
        return [self.name, ZONE_STATE_TOPIC, DEMAND_RESPONSE_TOPIC, readings_topic(None)]

    async def run(self, started: Callable[[], None]) -> None:
        for topic in self.topics():
            self.ctx.bus.subscribe(topic, self.inbox)
        started()
        now = self.ctx.clock.monotonic()
        for ahu_id, reset in self.ctx.site.supply_air_reset.items():
            params = TrimRespondParams(
                sp0=reset.sp0_c,
                sp_min=reset.min_c,
                sp_max=reset.max_c,
                delay_s=reset.delay_s,
                step_s=reset.step_s,
                ignored=reset.ignored_requests,
                trim=reset.trim_k,
                respond=reset.respond_k,
                respond_max=reset.respond_max_k,
            )
            self.supply_air[ahu_id] = TrimRespond(params, now)
        try:
            next_tick = now
            while True:
                wait = max(0.0, next_tick - self.ctx.clock.monotonic())
                try:
                    async with asyncio.timeout(self.ctx.clock.to_loop_seconds(wait)):
                        env = await self.inbox.get()
                    self.take(env)
                except TimeoutError:
                    pass
                now = self.ctx.clock.monotonic()
                if now >= next_tick:
                    self.tick(now)
                    next_tick = now + TICK_S
                await self._flush()
        finally:
            for topic in self.topics():
                self.ctx.bus.unsubscribe(topic, self.inbox)

    async def flush(self) -> None:
        """Send what decisions queued (the loop does this after every step)."""
        await self._flush()

    async def _flush(self) -> None:
        while self._outbox:
            await self.ctx.send(self._outbox.pop(0))

    def _send(self, env: Envelope) -> None:
        self._outbox.append(env)

    # -- input ---------------------------------------------------------------------------------

    def take(self, env: Envelope) -> None:
        """Take in one message; a malformed or unexpected one is counted and logged."""
        try:
            self._take(env)
        except ValueError as err:
            self.ctx.metrics.inc("buildingd_messages_rejected_total", agent="coordinator")
            log.warning("coordinator: rejected %s from %s: %s", env.performative, env.sender, err)

    def _take(self, env: Envelope) -> None:
        if env.ontology == ZoneStateMsg.ontology:
            msg = ZoneStateMsg.parse(env)
            self.zones[msg.zone_id] = msg
        elif env.ontology == ReadingMsg.ontology:
            self._building_reading(ReadingMsg.parse(env))
        elif env.ontology == CommandResultMsg.ontology:
            result = CommandResultMsg.parse(env)
            if not result.ok:
                self.supply_air_sp.clear()  # write again at the next step
                why = result.error or result.reason
                log.warning("coordinator: %s.%s refused %s: %s",
                            result.device_id, result.point_id, result.value, why)  # fmt: skip
        elif env.ontology != DemandResponseCall.ontology:
            raise ValueError(f"unexpected ontology {env.ontology!r}")
        elif env.receiver == DEMAND_RESPONSE_TOPIC:
            call = DemandResponseCall.parse(env)
            self.open_demand_response(call.target_w, call.window_s, call.reason)
        else:
            self._participant_reply(env)

    def _building_reading(self, msg: ReadingMsg) -> None:
        meter = self.ctx.site.demand_response.meter
        if msg.kind is not PointKind.POWER or not msg.quality.usable:
            return
        if meter is None or meter == f"{msg.device_id}.{msg.point_id}":
            self.building_power_w = msg.value

    def _participant_reply(self, env: Envelope) -> None:
        run = self.negotiations.get(env.conversation_id or "")
        if run is None:
            raise ValueError(f"no open negotiation {env.conversation_id!r}")
        zone_id = env.sender.removeprefix("zone[").removesuffix("]")
        if zone_id not in run.invited:
            raise ValueError(f"{env.sender} was not invited to {env.conversation_id}")
        run.negotiation.count_message()
        if env.performative is Performative.PROPOSE:
            proposal = DemandResponseProposal.parse(env)
            run.offers[zone_id] = [
                Offer(zone_id, o.level, o.shift_k, o.dim_pct, o.shed_w, o.comfort_cost)
                for o in proposal.offers
            ]
        elif env.performative is Performative.REFUSE:
            run.refused[zone_id] = str(env.content.get("reason", "refused"))
        elif env.performative is Performative.INFORM_DONE:
            (run.restored if env.content.get("restored") else run.confirmed).add(zone_id)
        elif env.performative is Performative.FAILURE:
            run.refused[zone_id] = str(env.content.get("reason", "failure"))
            run.awarded.pop(zone_id, None)
        else:
            raise ValueError(f"unexpected {env.performative} in a negotiation")

    # -- decisions -----------------------------------------------------------------------------

    def tick(self, now_s: float) -> None:
        self._scheduled_events(now_s)
        self._power_cap(now_s)
        for run in list(self.negotiations.values()):
            self._progress(run, now_s)
        self._settle_votes(now_s)
        self._trim_and_respond(now_s)
        self._remind(now_s)

    def _scheduled_events(self, now_s: float) -> None:
        dr = self.ctx.site.demand_response
        tz = ZoneInfo(self.ctx.site.timezone)
        wall = self.ctx.clock.now()
        for i, event in enumerate(dr.events):
            start = event.start if event.start.tzinfo else event.start.replace(tzinfo=tz)
            end = start + timedelta(seconds=event.duration_s)
            if i not in self._scheduled_done and start <= wall < end:
                self._scheduled_done.add(i)
                left = (end - wall).total_seconds()
                self.open_demand_response(event.target_w, left, f"scheduled event {i + 1}")

    def _power_cap(self, now_s: float) -> None:
        dr = self.ctx.site.demand_response
        power = self.building_power_w
        if dr.power_cap_w is None or power is None or power <= dr.power_cap_w:
            return
        if any(not r.negotiation.over for r in self.negotiations.values()):
            return
        why = f"building power {power:.0f} W above the cap {dr.power_cap_w:.0f} W"
        self.open_demand_response(power - dr.power_cap_w, dr.window_s, why)

    def open_demand_response(self, target_w: float, window_s: float, reason: str) -> str:
        now = self.ctx.clock.monotonic()
        dr = self.ctx.site.demand_response
        limits = [p.negotiation for p in self.ctx.site.policies.values()]
        max_turns = min((n.max_rounds for n in limits), default=3) * 4
        max_messages = min((n.max_messages for n in limits), default=10_000)
        conversation = new_conversation_id()
        negotiation = Negotiation(
            conversation,
            "demand-response",
            now,
            deadline_s=now + dr.reply_s + window_s + 600,
            max_turns=max_turns,
            max_messages=max_messages,
        )
        run = DemandResponseRun(negotiation, target_w, window_s, reason, now + dr.reply_s)
        run.invited = set(self.ctx.site.zones)
        self.negotiations[conversation] = run
        call = DemandResponseCall(target_w=round(target_w, 1), window_s=window_s, reason=reason)
        reply_by = self.ctx.clock.now() + timedelta(seconds=dr.reply_s)
        for zone_id in sorted(run.invited):
            self._send(
                call.envelope(
                    Performative.CFP,
                    self.name,
                    zone_address(zone_id),
                    conversation_id=conversation,
                    reply_by=reply_by,
                    protocol="fipa-contract-net",
                )
            )
        why = f"cfp to {len(run.invited)} zones: shed {target_w:.0f} W ({reason})"
        self._transition(run, S.COLLECTING, now, why)
        return conversation

    def _progress(self, run: DemandResponseRun, now_s: float) -> None:
        n = run.negotiation
        breach = n.guardrail_breach(now_s)
        if breach is not None:
            self._transition(run, S.ESCALATED, now_s, breach)
        elif n.state is S.COLLECTING and (
            now_s >= run.reply_by_s or set(run.offers) | set(run.refused) >= run.invited
        ):
            self._award(run, now_s)
        elif n.state is S.AWARDING and (
            run.confirmed >= set(run.awarded) or now_s >= run.confirm_by_s
        ):
            missing = set(run.awarded) - run.confirmed
            if missing:
                self._transition(run, S.FAILED, now_s, f"no confirmation from {sorted(missing)}")
            else:
                self._transition(
                    run,
                    S.EXECUTING,
                    now_s,
                    f"{len(run.confirmed)} zones shedding {run.committed_w:.0f} W",
                )
        elif n.state is S.EXECUTING and now_s >= run.ends_s:
            self._cancel_all(run)
            self._transition(run, S.RESTORING, now_s, "window over: restoring")
        elif n.state is S.RESTORING and run.restored >= set(run.awarded):
            self._transition(run, S.SETTLED, now_s, "all zones restored")
        if n.over:
            self.negotiations.pop(n.conversation_id, None)
            self.finished = [*self.finished[-49:], run]

    def _award(self, run: DemandResponseRun, now_s: float) -> None:
        silent = run.invited - set(run.offers) - set(run.refused)
        for zone_id in silent:  # unanswered cfps count as refusals at reply_by
            run.refused[zone_id] = "no answer by reply_by"
        exempt = [z for z in self.ctx.site.zones if self.ctx.site.policy_for(z).negotiation.exempt]
        all_offers = [o for offers in run.offers.values() for o in offers]
        result = award(all_offers, run.target_w, exempt)
        run.awarded = {o.zone_id: o for o in result.accepted}
        run.committed_w = result.committed_w
        for zone_id in run.offers:
            chosen = run.awarded.get(zone_id)
            address = zone_address(zone_id)
            if chosen is None:
                self._send(
                    DemandResponseProposal(reason="not needed").envelope(
                        Performative.REJECT_PROPOSAL,
                        self.name,
                        address,
                        conversation_id=run.negotiation.conversation_id,
                    )
                )
                continue
            accept = DemandResponseAward(
                level=chosen.level, shift_k=chosen.shift_k, dim_pct=chosen.dim_pct
            )
            conversation = run.negotiation.conversation_id
            self._send(
                accept.envelope(
                    Performative.ACCEPT_PROPOSAL, self.name, address, conversation_id=conversation
                )
            )
        run.confirm_by_s = now_s + CONFIRM_S
        run.ends_s = now_s + run.window_s
        levels = ", ".join(f"{z}:{o.level}" for z, o in sorted(run.awarded.items())) or "none"
        self._transition(
            run,
            S.AWARDING,
            now_s,
            f"awarded {levels} = {result.committed_w:.0f} W of {run.target_w:.0f} W "
            f"({len(run.refused)} refused)",
        )
        if not result.met:
            self.escalate(
                f"demand response {run.negotiation.conversation_id}: zones can shed only "
                f"{result.committed_w:.0f} W of the {run.target_w:.0f} W asked ({run.reason})",
                now_s,
            )

    def _cancel_all(self, run: DemandResponseRun) -> None:
        for zone_id in run.awarded:
            self._send(
                Envelope(
                    performative=Performative.CANCEL,
                    sender=self.name,
                    receiver=zone_address(zone_id),
                    ontology=DemandResponseCall.ontology,
                    conversation_id=run.negotiation.conversation_id,
                )
            )

    def _transition(
        self, run: DemandResponseRun, to: NegotiationState, now_s: float, reason: str
    ) -> None:
        n = run.negotiation
        state = n.advance(to, now_s, reason)
        if state in (S.ESCALATED, S.FAILED):
            self._cancel_all(run)  # nobody stays shed after a failed negotiation
            self.escalate(f"negotiation {n.conversation_id} {state}: {n.reason}", now_s)
        if n.over:
            self.outcomes[state.value] = self.outcomes.get(state.value, 0) + 1
            self.ctx.metrics.inc("buildingd_negotiations_total", outcome=state.value)
        audit_decision(
            "demand-response", state.value, conversation=n.conversation_id, detail=n.reason
        )
        self._event(
            "negotiation",
            "warning" if state in (S.FAILED, S.ESCALATED) else "info",
            f"demand response {n.conversation_id}: {state} ({n.reason})",
        )

    # -- votes, air handlers, escalation --------------------------------------------------------

    def vote(self, zone_id: str, vote: str) -> VoteResult:
        """An occupant's vote (HTTP or MQTT); refused with a reason when it cannot count."""
        state = self.zones.get(zone_id)
        if zone_id not in self.ctx.site.zones:
            return VoteResult(False, f"unknown zone {zone_id!r}", 0.0)
        safety = self.ctx.site.policy_for(zone_id).safety
        heating = state.heating_sp_c if state else 21.0
        cooling = state.cooling_sp_c if state else 24.0
        result = self.votes.cast(
            zone_id, vote, self.ctx.clock.monotonic(), heating, safety.max_c, cooling, safety.min_c
        )
        self.ctx.metrics.inc("buildingd_votes_total", accepted=str(result.accepted).lower())
        return result

    def override(self, zone_id: str, what: str, wanted_c: float) -> dict[str, object]:
        """A setpoint asked for by hand (HTTP override, Home Assistant): applied as a band offset
        within the same limits as votes (``vote_max_offset_k``, the safety band) or refused."""
        if zone_id not in self.ctx.site.zones:
            return {"accepted": False, "reason": f"unknown zone {zone_id!r}"}
        state = self.zones.get(zone_id)
        if state is None:
            return {"accepted": False, "reason": "zone state not known yet"}
        if what not in ("heating_sp", "cooling_sp"):
            return {"accepted": False, "reason": "only heating_sp and cooling_sp can be set"}
        policy = self.ctx.site.policy_for(zone_id)
        if not policy.safety.min_c <= wanted_c <= policy.safety.max_c:
            return {"accepted": False, "reason": f"{wanted_c} °C is outside the safety band"}
        current = state.heating_sp_c if what == "heating_sp" else state.cooling_sp_c
        offset = round(self._vote_offsets.get(zone_id, 0.0) + wanted_c - current, 2)
        limit = policy.negotiation.vote_max_offset_k
        if abs(offset) > limit:
            return {"accepted": False, "reason": f"more than {limit} K from the scheduled band"}
        self.votes.override(zone_id, offset, self.ctx.clock.monotonic())
        self._vote_offsets[zone_id] = offset
        audit_decision("override", "offset", zone=zone_id, detail=f"{what}={wanted_c}")
        self._send(AdjustmentsMsg(vote_offset_k=offset).envelope(
            Performative.REQUEST, self.name, zone_address(zone_id)))  # fmt: skip
        return {"accepted": True, "reason": f"band moved {offset:+.1f} K", "offset_k": offset}

    def _settle_votes(self, now_s: float) -> None:
        for zone_id in self.ctx.site.zones:
            offset = self.votes.settle(zone_id, now_s)
            if offset != self._vote_offsets.get(zone_id, 0.0):
                self._vote_offsets[zone_id] = offset
                audit_decision("vote", "offset", zone=zone_id, detail=f"{offset:+.1f} K")
                self._send(
                    AdjustmentsMsg(vote_offset_k=offset).envelope(
                        Performative.REQUEST, self.name, zone_address(zone_id)
                    )
                )

    def _trim_and_respond(self, now_s: float) -> None:
        if self.ctx.ready_s is None:
            return  # the air handlers' device agents may not be listening yet
        for ahu_id, reset in self.supply_air.items():
            requests = 0
            for zone_id in self.ctx.site.air_handlers.get(ahu_id, []):
                requests += self._zone_requests(zone_id, now_s)
            setpoint = reset.step(now_s, requests)
            if self.supply_air_sp.get(ahu_id) != setpoint:
                self.supply_air_sp[ahu_id] = setpoint
                self._write_air_handler(ahu_id, setpoint, requests)

    def _zone_requests(self, zone_id: str, now_s: float) -> int:
        state = self.zones.get(zone_id)
        if state is None or state.temperature_c is None:
            return 0
        excess = state.temperature_c - state.cooling_sp_c
        since3, since2 = self._hot_since.get(zone_id, (None, None))
        since3 = (since3 if since3 is not None else now_s) if excess >= 3 else None
        since2 = (since2 if since2 is not None else now_s) if excess >= 2 else None
        self._hot_since[zone_id] = (since3, since2)
        spec = self.ctx.site.zones[zone_id]
        loop_pct = 100 * min(1.0, max(0.0, excess)) if spec.cooling_capacity_w else 0.0
        count = cooling_requests(
            state.temperature_c,
            state.cooling_sp_c,
            now_s - since3 if since3 is not None else 0.0,
            now_s - since2 if since2 is not None else 0.0,
            loop_pct,
            self._requests.get(zone_id, 0),
        )
        self._requests[zone_id] = count
        return count

    def _write_air_handler(self, ahu_id: str, setpoint: float, requests: int) -> None:
        reason = f"G36 trim & respond: {requests} cooling requests"
        audit_decision(
            "trim-respond", "setpoint", detail=reason, air_handler=ahu_id, setpoint_c=setpoint
        )
        for device in self.ctx.site.devices.values():
            for point in device.points_list():
                if point.kind is PointKind.SUPPLY_AIR_TEMPERATURE_SETPOINT and (
                    device.id == ahu_id or device.id.startswith(f"{ahu_id}-")
                ):
                    cmd = CommandMsg(point_id=point.id, value=setpoint, zone_id=None, reason=reason)
                    self._send(
                        cmd.envelope(Performative.REQUEST, self.name, device_address(device.id))
                    )

    def escalate(self, message: str, now_s: float) -> None:
        """Break-glass: an alert for a technician, naming the contacts, until acknowledged."""
        contacts = sorted(
            {
                f"{c.name} <{c.email or c.phone or '?'}>"
                for p in self.ctx.site.policies.values()
                for c in p.escalation.contacts
            }
        )
        esc_id = new_conversation_id()[:8]
        self.escalations[esc_id] = Escalation(esc_id, message, contacts, now_s, now_s)
        self.ctx.metrics.inc("buildingd_escalations_total")
        log.error("BREAK-GLASS %s: %s; call %s", esc_id, message, ", ".join(contacts) or "nobody")
        self._event("escalation", "error", f"{message}; contacts: {', '.join(contacts) or 'none'}")

    def acknowledge(self, esc_id: str, who: str) -> bool:
        esc = self.escalations.get(esc_id)
        if esc is None or esc.acknowledged_by is not None:
            return False
        esc.acknowledged_by = who
        audit_decision("escalation", "acknowledged", detail=esc.message, id=esc_id, by=who)
        return True

    def open_escalations(self) -> list[Escalation]:
        return [e for e in self.escalations.values() if e.acknowledged_by is None]

    def _remind(self, now_s: float) -> None:
        interval = min(
            (p.escalation.reminder_interval_s for p in self.ctx.site.policies.values()),
            default=3600.0,
        )
        for esc in self.open_escalations():
            if now_s - esc.last_notice_s >= interval:
                esc.last_notice_s = now_s
                self._event("escalation", "error", f"still unacknowledged: {esc.message}")

    def _event(self, kind: str, severity: str, message: str) -> None:
        env = EventMsg(
            kind=kind,
            source=self.name,
            severity=severity,
            message=message,
            timestamp=self.ctx.clock.now(),
        )
        self._send(env.envelope(Performative.INFORM, self.name, EVENTS_TOPIC))
