"""The demand-response desk: Contract Net rounds with the zones (FIPA SC00029H), awards and
their commitments. An event (scheduled or recurring in the site file, requested on the
``demand-response`` topic from MQTT/HTTP, or the building meter above ``power_cap_w``) sends a cfp
to every zone; proposals and refusals are collected until ``reply_by`` (silence counts as a
refusal). Offers short of the target ask again, up to the policies' ``max_rounds``; a round
answered exactly like the one before (a clarification loop) stops the asking. Then the cheapest
set meeting the target (or, short of it, shedding the most, with a break-glass alert) is
accepted, the rest rejected; awarded zones confirm (inform-done); at the end of the window, fixed
when the event opens, each awarded zone gets ``cancel`` and restores (and restores by itself at
the award's ``ends_at`` if no cancel comes).

Each event is a ``Negotiation`` state machine with guardrails; a message its state does not
accept, or from a zone that was not asked, is rejected, logged and counted
(``buildingd_negotiation_rejected_total{reason}``). Owns the negotiations and
``<state_dir>/commitments.json`` (awards in force and scheduled events opened, taken up after a
restart, never awarded twice); the award itself is ``control.contract_net`` (pure).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from buildingd.agents.bus import Envelope, Performative, new_conversation_id
from buildingd.agents.messages import (
    Content,
    DemandResponseAward,
    DemandResponseCall,
    DemandResponseProposal,
    ReadingMsg,
    zone_address,
)
from buildingd.agents.requests import record_refusal
from buildingd.audit import audit_decision
from buildingd.config.policies import Band, DemandResponseEvent, Policy, RecurringEvent
from buildingd.control.contract_net import Award, Level, Offer, award
from buildingd.control.recurrence import running_occurrence
from buildingd.coordinator import commitments
from buildingd.coordinator.escalation import negotiation_story
from buildingd.coordinator.negotiation import (
    PARTICIPANT_PERFORMATIVES,
    Answers,
    DemandResponseRun,
    Negotiation,
    NegotiationState,
)
from buildingd.coordinator.office import TICK_S, KeptFile, Office
from buildingd.errors import RequestRefusedError
from buildingd.points import PointKind

log = logging.getLogger(__name__)
CONTRACT_NET = "fipa-contract-net"  # the FIPA protocol name every negotiation message carries
CONFIRM_S = 60.0  # awarded zones must confirm an award, and a restore, within this
REJECTIONS_LOGGED = 20  # per conversation; further rejected messages are only counted
S = NegotiationState


class Alarm(Protocol):
    """Where a negotiation that cannot meet its target is told (the break-glass desk)."""

    def escalate(
        self, message: str, now_s: float, *, tried: str = "", left_state: str = "",
        ref: str | None = None,
    ) -> object: ...  # fmt: skip

    def negotiation_met(self, conversation_id: str, opened_s: float) -> None: ...


class DemandResponseDesk:
    def __init__(self, office: Office, alarm: Alarm, state_dir: Path | None = None) -> None:
        self.office, self.alarm = office, alarm
        # Awards in force kept across restarts (None: not kept, as in unit tests).
        path = state_dir / commitments.FILE_NAME if state_dir else None
        self.file = KeptFile(office, path, commitments.load, commitments.save)
        self.negotiations: dict[str, DemandResponseRun] = {}
        self.finished: list[DemandResponseRun] = []  # the last 50
        self.outcomes: dict[str, int] = {}
        self.rejected: Counter[str] = Counter()  # negotiation messages rejected, by reason
        self._rejections_logged: Counter[str] = Counter()
        self.building_power_w: float | None = None
        self._scheduled_started: set[str] = set()  # keys of scheduled events opened

    def reading(self, msg: ReadingMsg) -> None:
        """A power reading: the building meter's, for the power cap."""
        meter = self.office.site.demand_response.meter
        if msg.kind is not PointKind.POWER or not msg.quality.usable:
            return
        if meter is None or meter == f"{msg.device_id}.{msg.point_id}":
            self.building_power_w = msg.value

    def reply(self, env: Envelope) -> None:
        """A zone's answer in a negotiation. Each state accepts only its own performatives, from
        the zones it concerns (asked in this round, or awarded); anything else is rejected."""
        run = self.negotiations.get(env.conversation_id or "")
        if run is None:
            self._reject(env, "unknown_conversation", "no open negotiation")
            return
        n, performative = run.negotiation, env.performative
        if performative not in PARTICIPANT_PERFORMATIVES:
            self._reject(env, "unexpected_performative", f"a zone does not send {performative}")
            return
        if not n.accepts(performative):
            self._reject(env, "out_of_order", f"{performative} while {n.state}")
            return
        zone_id = _zone_of(env.sender)
        offers: list[Offer] = []
        if performative in (Performative.PROPOSE, Performative.REFUSE):
            if zone_id is None or zone_id not in run.invited:
                self._reject(env, "not_invited", f"round {run.round} did not ask {env.sender}")
                return
            if env.in_reply_to != run.round_id:
                self._reject(env, "stale_round", f"answers {env.in_reply_to!r}, not round "
                                                 f"{run.round} ({run.round_id})")  # fmt: skip
                return
            if zone_id in run.offers or zone_id in run.refused:
                self._reject(env, "duplicate", f"{zone_id} already answered round {run.round}")
                return
        elif zone_id is None or zone_id not in run.awarded:
            self._reject(env, "not_awarded", f"{env.sender} has no award in this negotiation")
            return
        try:
            if performative is Performative.PROPOSE:
                proposal = DemandResponseProposal.parse(env)
                offers = [
                    Offer(zone_id, Level(o.shift_k, o.dim_pct), o.shed_w, o.comfort_cost)
                    for o in proposal.offers
                ]
            reason = str(env.content.get("reason") or performative)[:200]
        except ValueError as err:
            self._reject(env, "malformed", str(err).splitlines()[0])
            return
        n.count_message()
        if performative is Performative.PROPOSE:
            if offers:
                run.offers[zone_id] = offers
            else:
                run.refused[zone_id] = "proposed nothing"
        elif performative is Performative.REFUSE:
            run.refused[zone_id] = reason
        elif performative is Performative.INFORM_DONE:
            (run.restored if env.content.get("restored") else run.confirmed).add(zone_id)
        elif n.state is S.RESTORING:  # failure to restore: it stays missing, the timer escalates
            run.refused[zone_id] = reason
        else:  # failure: the zone withdraws from its award
            run.refused[zone_id] = reason
            run.awarded.pop(zone_id, None)
            run.confirmed.discard(zone_id)
            run.committed_w = sum(o.shed_w for o in run.awarded.values())
            audit_decision("demand-response", "withdrawn", conversation=n.conversation_id,
                           zone=zone_id, detail=reason)  # fmt: skip
            self._save_commitments()

    def _reject(self, env: Envelope, reason: str, detail: str) -> None:
        """A negotiation message that is refused: counted by reason, logged with its
        conversation and sender (the first few per conversation: a flood is only counted)."""
        self.rejected[reason] += 1
        self.office.metrics.inc(
            "buildingd_negotiation_rejected_total", agent="coordinator", reason=reason
        )
        key = env.conversation_id or "-"
        if len(self._rejections_logged) > 1000:
            self._rejections_logged.clear()  # bounded: forgotten conversations log again
        self._rejections_logged[key] += 1
        seen = self._rejections_logged[key]
        if seen <= REJECTIONS_LOGGED:
            log.warning("coordinator: rejected %s from %s in conversation %s (%s): %s",
                        env.performative, env.sender, key, reason, detail)  # fmt: skip
        if seen == REJECTIONS_LOGGED:
            log.warning("coordinator: conversation %s: further rejected messages are only "
                        "counted (buildingd_negotiation_rejected_total)", key)  # fmt: skip

    # -- decisions -----------------------------------------------------------------------------

    def tick(self, now_s: float) -> None:
        """Open what is due (scheduled and recurring events, the power cap), then move every
        open negotiation on: each step has its own deadline, seen here."""
        self._scheduled_events(now_s)
        self._power_cap(now_s)
        for run in list(self.negotiations.values()):
            self._progress(run, now_s)

    def _scheduled_events(self, now_s: float) -> None:
        dr = self.office.site.demand_response
        tz = ZoneInfo(self.office.site.timezone)
        wall = self.office.clock.now()
        live: set[str] = set()
        windows: list[tuple[datetime, DemandResponseEvent | RecurringEvent, str]] = [
            (e.start if e.start.tzinfo else e.start.replace(tzinfo=tz), e, f"scheduled event {i}")
            for i, e in enumerate(dr.events, 1)
        ]
        for i, rec in enumerate(dr.recurring, 1):
            begun = running_occurrence(rec.cron, rec.duration_s, wall, tz)
            if begun is not None:
                windows.append((begun, rec, f"recurring event {i} ({rec.cron})"))
        for start, event, reason in windows:
            end = start + timedelta(seconds=event.duration_s)
            key = f"{start.astimezone(UTC).isoformat()}+{event.duration_s:g}s:{event.target_w:g}W"
            if wall < end:
                live.add(key)
            # Opened once, ever: the key is persisted, so a restart inside the window does not
            # open the event again (its award, if any, was taken up from the commitments).
            if key not in self._scheduled_started and start <= wall < end:
                self._scheduled_started.add(key)
                left = (end - wall).total_seconds()
                self.open(event.target_w, left, reason)
        if self._scheduled_started - live:
            self._scheduled_started &= live  # ended events need no memory
            self._save_commitments()

    def _power_cap(self, now_s: float) -> None:
        dr = self.office.site.demand_response
        power = self.building_power_w
        if dr.power_cap_w is None or power is None or power <= dr.power_cap_w:
            return
        if any(not r.negotiation.over for r in self.negotiations.values()):
            return
        why = f"building power {power:.0f} W above the cap {dr.power_cap_w:.0f} W"
        # A meter gone mad (1e12 W) asks for no more than the building can shed.
        self.open(min(power - dr.power_cap_w, dr.max_target_w), dr.window_s, why)

    def request(self, call: DemandResponseCall, source: str) -> str:
        """A demand-response request from outside (MQTT, HTTP): opened (its conversation id)
        when it is within the site's ``max_target_w`` and ``max_window_s``, else refused:
        audited, counted, and ``RequestRefusedError`` raised with the reason."""
        problem = self.office.site.demand_response.request_problem(call.target_w, call.window_s)
        if problem is not None:
            record_refusal(self.office.metrics, "demand-response", problem, source=source)
            log.warning("coordinator: demand-response request from %s refused: %s", source, problem)
            raise RequestRefusedError("demand-response", problem)
        return self.open(call.target_w, call.window_s, call.reason)

    def open(self, target_w: float, window_s: float, reason: str) -> str:
        """Open a demand-response event: shed ``target_w`` for ``window_s`` from now. Returns
        the conversation id."""
        now = self.office.clock.monotonic()
        dr = self.office.site.demand_response
        limits = [p.negotiation for p in self.office.site.policies.values()]
        max_rounds = min((n.max_rounds for n in limits), default=3)
        max_messages = min((n.max_messages for n in limits), default=10_000)
        conversation = new_conversation_id()
        ends_s = now + window_s
        # Every step has its own limit: rounds by reply_s, the award's confirmation and the
        # restore by CONFIRM_S, each seen at a tick. The deadline is their sum, plus two ticks:
        # a negotiation still running then is stuck, and the guardrail calls a human.
        collected_s = max_rounds * (dr.reply_s + TICK_S)
        deadline = max(ends_s, now + collected_s + CONFIRM_S + TICK_S) + CONFIRM_S + 3 * TICK_S
        negotiation = Negotiation(
            conversation,
            "demand-response",
            now,
            deadline_s=deadline,
            # The straight path takes 5 turns; each extra round 2 (back to OPEN, COLLECTING).
            max_turns=5 + 2 * (max_rounds - 1),
            max_messages=max_messages,
        )
        ends_at = self.office.clock.now().astimezone(UTC) + timedelta(seconds=window_s)
        run = DemandResponseRun(
            negotiation, target_w, window_s, reason, ends_s, ends_at, max_rounds=max_rounds
        )
        self.negotiations[conversation] = run
        self._cfp(run, now, sorted(self.office.site.zones))
        return conversation

    def _cfp(self, run: DemandResponseRun, now_s: float, zones: list[str]) -> None:
        """Send one round's calls for proposals to ``zones`` and start collecting."""
        dr = self.office.site.demand_response
        conversation = run.negotiation.conversation_id
        run.round += 1
        run.round_id = f"{conversation}.{run.round}"
        run.invited = set(zones)
        for zone_id in zones:  # a new round: earlier answers of the zones asked do not count
            run.offers.pop(zone_id, None)
            run.refused.pop(zone_id, None)
        run.reply_by_s = now_s + dr.reply_s
        call = DemandResponseCall(
            target_w=round(run.target_w, 1),
            window_s=max(1.0, run.ends_s - now_s),
            reason=run.reason,
            round=run.round,
        )
        reply_by = self.office.clock.now() + timedelta(seconds=dr.reply_s)
        for zone_id in zones:
            self.office.outbox.append(
                self._to_zone(
                    run, zone_id, Performative.CFP, call, reply_with=run.round_id, reply_by=reply_by
                )
            )
        why = (
            f"round {run.round}: cfp to {len(zones)} zones: shed {run.target_w:.0f} W "
            f"({run.reason})"
        )
        self._transition(run, S.COLLECTING, now_s, why)

    def _progress(self, run: DemandResponseRun, now_s: float) -> None:
        n = run.negotiation
        breach = n.breach(now_s)
        if breach is not None:
            self._transition(run, S.ESCALATED, now_s, breach)
        elif n.state is S.COLLECTING and (
            now_s >= run.reply_by_s or set(run.offers) | set(run.refused) >= run.invited
        ):
            self._round_over(run, now_s)
        elif n.state is S.AWARDING and (
            run.confirmed >= set(run.awarded) or now_s >= run.confirm_by_s
        ):
            self._confirmed(run, now_s)
        elif n.state is S.EXECUTING and now_s >= run.ends_s:
            self._cancel_all(run)
            run.restore_by_s = now_s + CONFIRM_S
            self._transition(run, S.RESTORING, now_s, "window over: restoring")
        elif n.state is S.RESTORING and (
            run.restored >= set(run.awarded) or now_s >= run.restore_by_s
        ):
            missing = sorted(set(run.awarded) - run.restored)
            if missing:
                # The zones restore by themselves at ends_at; a human should still look.
                self._transition(run, S.FAILED, now_s, f"no restore confirmation from {missing}")
            else:
                self._transition(run, S.SETTLED, now_s, "all zones restored")
        if n.over:
            if n.state is S.SETTLED and run.committed_w >= run.target_w:
                self.alarm.negotiation_met(n.conversation_id, n.opened_s)
            self.negotiations.pop(n.conversation_id, None)
            self._rejections_logged.pop(n.conversation_id, None)
            self.finished = [*self.finished[-49:], run]

    def _round_over(self, run: DemandResponseRun, now_s: float) -> None:
        """A round's answers are in (or its reply_by passed): award, or ask again."""
        dr = self.office.site.demand_response
        silent = run.invited - set(run.offers) - set(run.refused)
        for zone_id in silent:  # unanswered cfps count as refusals at reply_by
            run.refused[zone_id] = "no answer by reply_by"
        result = award(self._admissible_offers(run), run.target_w, self._exempt_zones())
        answers: Answers = (
            frozenset(
                (z, tuple(sorted((str(o.level), o.shed_w, o.comfort_cost) for o in offers)))
                for z, offers in run.offers.items()
            ),
            frozenset(run.refused),
        )
        looping = answers == run.last_answers
        no_time = now_s + dr.reply_s + TICK_S >= run.ends_s
        if result.met or looping or no_time or run.round >= run.max_rounds:
            if result.met:
                why = ""
            elif looping:
                why = (
                    f"clarification loop: round {run.round} was answered exactly like round "
                    f"{run.round - 1}"
                )
            elif no_time:
                why = "no time left in the window for another round"
            else:
                why = f"after {run.round} of {run.max_rounds} rounds"
            self._award(run, now_s, result, why)
            return
        run.last_answers = answers
        self._transition(
            run,
            S.OPEN,
            now_s,
            f"round {run.round}: offers reach {result.committed_w:.0f} W of "
            f"{run.target_w:.0f} W: asking again",
        )
        if run.negotiation.state is S.OPEN:  # the guardrail may have stopped it instead
            exempt = set(self._exempt_zones())
            self._cfp(run, now_s, sorted(z for z in self.office.site.zones if z not in exempt))

    def _exempt_zones(self) -> list[str]:
        site = self.office.site
        return [z for z in site.zones if site.policy_for(z).negotiation.exempt]

    def _admissible_offers(self, run: DemandResponseRun) -> list[Offer]:
        """This round's offers that keep the zone inside its policy: not exempt, within its
        ``max_shift_k`` and ``max_dim_pct``, and no setpoint pushed out of its safety band. A
        zone only offers such; anything else is wrong or forged and is rejected here."""
        site, admissible = self.office.site, []
        for zone_id, offers in sorted(run.offers.items()):
            if zone_id not in site.zones:
                continue
            policy = site.policy_for(zone_id)
            limits, safety = policy.negotiation, policy.safety
            band = self._current_band(zone_id, policy)
            for offer in offers:
                level = offer.level
                if not limits.exempt and (
                    level.shift_k <= limits.max_shift_k
                    and level.dim_pct <= limits.max_dim_pct
                    and band.heating_c - level.shift_k >= safety.min_c
                    and band.cooling_c + level.shift_k <= safety.max_c
                ):
                    admissible.append(offer)
                else:
                    self.rejected["outside_limits"] += 1
                    self.office.metrics.inc("buildingd_negotiation_rejected_total",
                                         agent="coordinator", reason="outside_limits")  # fmt: skip
                    log.warning("coordinator: %s offered %s in %s, outside its policy's limits",
                                zone_id, level, run.negotiation.conversation_id)  # fmt: skip
        return admissible

    def _current_band(self, zone_id: str, policy: Policy) -> Band:
        """The zone's setpoints as it last reported them, or its policy's occupied band."""
        state = self.office.zones.get(zone_id)
        if state is None:
            return policy.comfort.occupied
        return Band(heating_c=state.heating_sp_c, cooling_c=state.cooling_sp_c)

    def _award(self, run: DemandResponseRun, now_s: float, result: Award, short_why: str) -> None:
        conversation = run.negotiation.conversation_id
        run.awarded = {o.zone_id: o for o in result.accepted}
        run.committed_w = result.committed_w
        if not run.awarded or now_s >= run.ends_s:
            for zone_id in run.offers:
                self._reject_proposal(run, zone_id)
            run.awarded = {}
            run.committed_w = 0.0
            why = "the window ended before an award" if now_s >= run.ends_s else short_why
            self._transition(
                run,
                S.FAILED,
                now_s,
                f"zones can shed only 0 W of the {run.target_w:.0f} W asked ({run.reason}); "
                f"{len(run.refused)} refused; {why}",
            )
            return
        for zone_id in run.offers:
            chosen = run.awarded.get(zone_id)
            if chosen is None:
                self._reject_proposal(run, zone_id)
            else:
                self._send_award(run, zone_id, chosen)
        run.confirm_by_s = now_s + CONFIRM_S
        awarded = sorted(run.awarded.items())
        levels = ", ".join(f"{z}:{o.level}" for z, o in awarded[:10]) or "none"
        if len(awarded) > 10:  # a reason is for a human to read, and events are bounded
            levels += f" and {len(awarded) - 10} more"
        self._transition(
            run,
            S.AWARDING,
            now_s,
            f"round {run.round}: awarded {levels} = {result.committed_w:.0f} W of "
            f"{run.target_w:.0f} W ({len(run.refused)} refused)",
        )
        if not result.met:
            self._escalate_negotiation(
                run,
                f"demand response {conversation}: zones can shed only "
                f"{result.committed_w:.0f} W of the {run.target_w:.0f} W asked ({run.reason}); "
                f"{short_why}",
                now_s,
            )

    def _send_award(self, run: DemandResponseRun, zone_id: str, offer: Offer) -> None:
        accept = DemandResponseAward(
            level=str(offer.level),
            shift_k=offer.level.shift_k,
            dim_pct=offer.level.dim_pct,
            ends_at=run.ends_at,
        )
        self.office.outbox.append(self._to_zone(run, zone_id, Performative.ACCEPT_PROPOSAL, accept))

    def _reject_proposal(self, run: DemandResponseRun, zone_id: str) -> None:
        reject = DemandResponseProposal(reason="not needed")
        self.office.outbox.append(self._to_zone(run, zone_id, Performative.REJECT_PROPOSAL, reject))

    def _to_zone(
        self,
        run: DemandResponseRun,
        zone_id: str,
        performative: Performative,
        content: Content | None = None,
        **kw: Any,
    ) -> Envelope:
        """A contract-net message to one zone in ``run``'s conversation."""
        kw |= {"conversation_id": run.negotiation.conversation_id, "protocol": CONTRACT_NET}
        receiver = zone_address(zone_id)
        if content is not None:
            return content.envelope(performative, self.office.name, receiver, **kw)
        ontology = DemandResponseCall.ontology  # a cancel carries no content
        return Envelope(
            performative=performative,
            sender=self.office.name,
            receiver=receiver,
            ontology=ontology,
            **kw,
        )

    def _confirmed(self, run: DemandResponseRun, now_s: float) -> None:
        """The award's confirmation time is over: a zone that did not confirm is treated as a
        refusal (told to restore, in case it applied late); the others shed."""
        missing = sorted(set(run.awarded) - run.confirmed)
        for zone_id in missing:
            run.refused[zone_id] = "no confirmation of the award"
            self.office.outbox.append(self._cancel(run, zone_id))
            del run.awarded[zone_id]
        run.committed_w = sum(o.shed_w for o in run.awarded.values())
        if not run.awarded:
            self._transition(run, S.FAILED, now_s, f"no confirmation from {missing}")
            return
        why = f"{len(run.awarded)} zones shedding {run.committed_w:.0f} W"
        if missing:
            why += f" (no confirmation from {missing})"
        self._transition(run, S.EXECUTING, now_s, why)
        if missing and run.committed_w < run.target_w and run.negotiation.state is S.EXECUTING:
            self._escalate_negotiation(
                run,
                f"demand response {run.negotiation.conversation_id}: zones shed only "
                f"{run.committed_w:.0f} W of the {run.target_w:.0f} W asked ({run.reason}); "
                f"no confirmation from {missing}",
                now_s,
            )

    def _cancel(self, run: DemandResponseRun, zone_id: str) -> Envelope:
        return self._to_zone(run, zone_id, Performative.CANCEL)

    def _cancel_all(self, run: DemandResponseRun) -> None:
        for zone_id in run.awarded:
            self.office.outbox.append(self._cancel(run, zone_id))

    def _transition(
        self, run: DemandResponseRun, to: NegotiationState, now_s: float, reason: str
    ) -> None:
        n = run.negotiation
        state = n.advance(to, now_s, reason)
        if state in (S.ESCALATED, S.FAILED):
            self._cancel_all(run)  # nobody stays shed after a failed negotiation
            message = f"negotiation {n.conversation_id} {state}: {n.reason}"
            self._escalate_negotiation(run, message, now_s, cancelled=True)
        if n.over:
            self.outcomes[state.value] = self.outcomes.get(state.value, 0) + 1
            self.office.metrics.inc("buildingd_negotiations_total", outcome=state.value)
        audit_decision(
            "demand-response", state.value, conversation=n.conversation_id, detail=n.reason
        )
        self.office.event(
            "negotiation",
            "warning" if state in (S.FAILED, S.ESCALATED) else "info",
            f"demand response {n.conversation_id}: {state} ({n.reason})"[:2000],
        )
        self._save_commitments()

    # -- commitments across restarts -------------------------------------------------------------

    def _save_commitments(self) -> None:
        """Write the awards in force (and the scheduled events opened) when they changed."""
        self.file.save(commitments.to_file(self.negotiations.values(), self._scheduled_started))

    def resume(self, now_s: float) -> None:
        """At start: take up the awards a previous run left in force. Their zones are told
        again (the same conversation: applying it twice is applying it once) and shed until the
        window's end, then restore; nothing is awarded on top. Ended ones are dropped."""
        saved = self.file.load()
        if saved is None:
            return
        self._scheduled_started |= set(saved.scheduled_started)
        wall = self.office.clock.now()
        limits = [p.negotiation for p in self.office.site.policies.values()]
        max_messages = min((n.max_messages for n in limits), default=10_000)
        for record in saved.commitments:
            left_s = (record.ends_at - wall).total_seconds()
            if left_s <= 0:
                log.info("coordinator: demand response %s ended at %s while stopped",
                         record.conversation_id, record.ends_at.isoformat())  # fmt: skip
                continue
            # A wall clock set back (a Pi without RTC before NTP) cannot stretch the window.
            left_s = min(left_s, record.window_s)
            awarded = commitments.awarded_offers(record, self.office.site.zones)
            if not awarded:
                continue
            why = (
                f"resumed after a restart: {len(awarded)} zones shedding "
                f"{sum(o.shed_w for o in awarded.values()):.0f} W until {record.ends_at}"
            )
            negotiation = Negotiation.resumed(
                record.conversation_id,
                "demand-response",
                S.EXECUTING,
                now_s,
                now_s + left_s + 2 * CONFIRM_S + 3 * TICK_S,
                why,
                max_turns=3,  # to RESTORING, SETTLED, and one spare
                max_messages=max_messages,
            )
            run = DemandResponseRun(
                negotiation,
                record.target_w,
                record.window_s,
                record.reason,
                now_s + left_s,
                record.ends_at,
                round=1,
                awarded=awarded,
                committed_w=sum(o.shed_w for o in awarded.values()),
            )
            run.invited = set(awarded)
            self.negotiations[record.conversation_id] = run
            for zone_id, offer in sorted(awarded.items()):
                self._send_award(run, zone_id, offer)
            log.info("coordinator: demand response %s %s", record.conversation_id, why)
            audit_decision("demand-response", "resumed", conversation=record.conversation_id,
                           detail=why)  # fmt: skip
            self.office.event(
                "negotiation", "info", f"demand response {record.conversation_id}: {why}"
            )
        self._save_commitments()

    def _escalate_negotiation(
        self, run: DemandResponseRun, message: str, now_s: float, cancelled: bool = False
    ) -> None:
        awarded = {z: str(o.level) for z, o in run.awarded.items()}
        tried, left = negotiation_story(
            run.invited, run.offers, run.refused, awarded, run.committed_w, run.target_w, cancelled
        )
        conversation = run.negotiation.conversation_id
        self.alarm.escalate(message, now_s, tried=tried, left_state=left, ref=conversation)


def _zone_of(sender: str) -> str | None:
    """The zone id of a zone agent's address (``zone[f1-meeting]``), else None."""
    if sender.startswith("zone[") and sender.endswith("]") and len(sender) > 6:
        return sender[5:-1]
    return None
