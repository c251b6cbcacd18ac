"""The demand-response desk: opens events and keeps them. An event is scheduled or recurring in
the site file, requested on the ``demand-response`` topic (MQTT, HTTP; refused, audited and
counted beyond the site's limits) or opened when the building meter is above ``power_cap_w``.
Each event's talk with the zones is ``conversation`` (cfp rounds, award, confirmation, restore);
here every zone's reply is checked first: a message its negotiation's state does not accept, or
from a zone that was not asked, is rejected, logged and counted
(``buildingd_negotiation_rejected_total{reason}``).

Owns the negotiations (the last 50 finished kept for the API) and
``<state_dir>/commitments.json``: awards in force and scheduled events opened, taken up after a
restart (zones told again, shedding until the window's end), never awarded or opened twice.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn
from zoneinfo import ZoneInfo

from buildingd.agents.bus import Envelope, Performative, new_conversation_id
from buildingd.agents.messages import (
    DemandResponseCall,
    DemandResponseProposal,
    ReadingMsg,
)
from buildingd.agents.requests import record_refusal
from buildingd.audit import audit_decision
from buildingd.config.policies import DemandResponseEvent, RecurringEvent
from buildingd.control.contract_net import Offer, level
from buildingd.control.recurrence import running_occurrence
from buildingd.coordinator import commitments
from buildingd.coordinator.conversation import CONFIRM_S, Alarm, Conversation
from buildingd.coordinator.negotiation import (
    PARTICIPANT_PERFORMATIVES,
    DemandResponseRun,
    Negotiation,
    NegotiationState,
)
from buildingd.coordinator.office import TICK_S, KeptFile, Office
from buildingd.errors import RequestRefusedError
from buildingd.points import PointKind

log = logging.getLogger(__name__)
REJECTIONS_LOGGED = 20  # per conversation; further rejected messages are only counted
S = NegotiationState
# A request that named its conversation is remembered this long (what it asked, as a digest):
# sent again, it is the event it opened; its name on another request is refused.
REQUEST_KEPT_S = 24 * 3600.0


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
        # Requests that named their conversation, by it (``request``); kept in the state file.
        self._requests: dict[str, commitments.TakenRequest] = {}
        self._replied: set[str] = set()  # conversations that took an answer since ``answered``
        self.talk = Conversation(
            office, alarm, self.rejected, self.outcomes, self._save_commitments
        )

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
                    Offer(zone_id, level(o.shift_k, o.dim_pct), o.shed_w, o.comfort_cost)
                    for o in proposal.offers
                ]
            reason = str(env.content.get("reason") or performative)[:200]
        except ValueError as err:
            self._reject(env, "malformed", str(err).splitlines()[0])
            return
        n.count_message()
        self._replied.add(n.conversation_id)
        if performative in (Performative.PROPOSE, Performative.REFUSE):
            run.answered += 1
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

    def answered(self, now_s: float) -> None:
        """After the agent took a burst of messages: move on at once every negotiation whose
        step has all its answers in (the round's award, the confirmations, the restores), as
        its next tick would, instead of waiting up to ``TICK_S`` for it."""
        for conversation in self._replied:
            run = self.negotiations.get(conversation)
            if run is not None and self.talk.answers_in(run):
                self._progress(run, now_s)
        self._replied.clear()

    def _progress(self, run: DemandResponseRun, now_s: float) -> None:
        self.talk.progress(run, now_s)
        n = run.negotiation
        if n.over:
            if n.state is S.SETTLED and run.committed_w >= run.target_w:
                self.alarm.negotiation_met(n.conversation_id, n.opened_s)
            self.negotiations.pop(n.conversation_id, None)
            self._rejections_logged.pop(n.conversation_id, None)
            self.finished = [*self.finished[-49:], run]

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

    def request(
        self, call: DemandResponseCall, source: str, conversation_id: str | None = None
    ) -> str:
        """A demand-response request from outside (MQTT, HTTP): opened (its conversation id)
        when it is within the site's ``max_target_w`` and ``max_window_s``, else refused:
        audited, counted, and ``RequestRefusedError`` raised with the reason. A request that
        names its conversation (one sent over the bus, one with an HTTP Idempotency-Key) opens
        it once: the same one again (a redelivery after a failover, a client's retry) is the
        event already open, not a second one; what it asked is kept ``REQUEST_KEPT_S`` (in the
        state file), and another request naming the same conversation is refused."""
        digest = hashlib.sha256(call.model_dump_json().encode()).hexdigest()
        taken = self._requests.get(conversation_id or "")
        if taken is not None and taken.digest != digest:
            self._refuse(source, f"conversation {conversation_id} was opened by a different "
                                 "request (target_w, window_s or reason): a request's key names "
                                 "one request only")  # fmt: skip
        if conversation_id is not None and (taken is not None or self._known(conversation_id)):
            log.info("coordinator: demand-response request %s from %s already taken",
                     conversation_id, source)  # fmt: skip
            return conversation_id
        problem = self.office.site.demand_response.request_problem(call.target_w, call.window_s)
        if problem is not None:
            self._refuse(source, problem)
        if conversation_id is not None:  # kept with the event it opens (saved with its cfp)
            wall = self.office.clock.now().astimezone(UTC)
            self._requests = {c: r for c, r in self._requests.items() if r.kept_until > wall}
            self._requests[conversation_id] = commitments.TakenRequest(
                conversation_id=conversation_id,
                digest=digest,
                kept_until=wall + timedelta(seconds=REQUEST_KEPT_S),
            )
        return self.open(call.target_w, call.window_s, call.reason, conversation_id)

    def _refuse(self, source: str, problem: str) -> NoReturn:
        record_refusal(self.office.metrics, "demand-response", problem, source=source)
        log.warning("coordinator: demand-response request from %s refused: %s", source, problem)
        raise RequestRefusedError("demand-response", problem)

    def _known(self, conversation_id: str) -> bool:
        return conversation_id in self.negotiations or any(
            r.negotiation.conversation_id == conversation_id for r in self.finished
        )

    def open(
        self, target_w: float, window_s: float, reason: str, conversation_id: str | None = None
    ) -> str:
        """Open a demand-response event: shed ``target_w`` for ``window_s`` from now, in
        ``conversation_id`` (a new one unless given). Returns the conversation id."""
        now = self.office.clock.monotonic()
        ends_at = self.office.clock.now().astimezone(UTC) + timedelta(seconds=window_s)
        conversation = conversation_id or new_conversation_id()
        run = self._new_run(conversation, target_w, window_s, reason, now, ends_at)
        self.talk.cfp(run, now, sorted(self.office.site.zones))
        return run.negotiation.conversation_id

    def _new_run(
        self,
        conversation: str,
        target_w: float,
        window_s: float,
        reason: str,
        now_s: float,
        ends_at: datetime,
        left_s: float | None = None,
    ) -> DemandResponseRun:
        """A run asking the zones to shed ``target_w`` until ``ends_at`` (``left_s`` from now,
        the whole ``window_s`` unless given), registered as open."""
        dr = self.office.site.demand_response
        limits = [p.negotiation for p in self.office.site.policies.values()]
        max_rounds = min((n.max_rounds for n in limits), default=3)
        max_messages = min((n.max_messages for n in limits), default=10_000)
        ends_s = now_s + (window_s if left_s is None else left_s)
        # Every step has its own limit: rounds by reply_s, the award's confirmation and the
        # restore by CONFIRM_S, each seen at a tick. The deadline is their sum, plus two ticks:
        # a negotiation still running then is stuck, and the guardrail calls a human.
        collected_s = max_rounds * (dr.reply_s + TICK_S)
        deadline = max(ends_s, now_s + collected_s + CONFIRM_S + TICK_S) + CONFIRM_S + 3 * TICK_S
        negotiation = Negotiation(
            conversation,
            "demand-response",
            now_s,
            deadline_s=deadline,
            # The straight path takes 5 turns; each extra round 2 (back to OPEN, COLLECTING).
            max_turns=5 + 2 * (max_rounds - 1),
            max_messages=max_messages,
        )
        run = DemandResponseRun(
            negotiation, target_w, window_s, reason, ends_s, ends_at, max_rounds=max_rounds
        )
        self.negotiations[conversation] = run
        return run

    # -- commitments across restarts -------------------------------------------------------------

    def _save_commitments(self) -> None:
        """Write the awards in force (and the scheduled events opened) when they changed."""
        if self.file.path is not None:  # not built for nothing (unit tests keep no files)
            kept = commitments.to_file(self.negotiations.values(), self._scheduled_started,
                                       self._requests.values())  # fmt: skip
            self.file.save(kept)

    def resume(self, now_s: float) -> None:
        """At start: take up the awards a previous run left in force. Their zones are told
        again (the same conversation: applying it twice is applying it once) and shed until the
        window's end, then restore; nothing is awarded on top. Ended ones are dropped. Then
        ask the zones again for every event opened and not awarded (``_reopen``)."""
        saved = self.file.load()
        if saved is None:
            return
        self._scheduled_started |= set(saved.scheduled_started)
        self._requests |= {r.conversation_id: r for r in saved.requests}
        self._take_up(saved, now_s)
        self._reopen(saved, now_s)
        self._save_commitments()

    def _take_up(self, saved: commitments.CommitmentsFile, now_s: float) -> None:
        """The awards in force: each zone told again, shedding until the window's end."""
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
                self.talk.send_award(run, zone_id, offer)
            log.info("coordinator: demand response %s %s", record.conversation_id, why)
            audit_decision("demand-response", "resumed", conversation=record.conversation_id,
                           detail=why)  # fmt: skip
            self.office.event(
                "negotiation", "info", f"demand response {record.conversation_id}: {why}"
            )

    def _reopen(self, saved: commitments.CommitmentsFile, now_s: float) -> None:
        """Each event a previous coordinator (this process before a restart, or another
        gateway before a failover) opened and had not awarded: asked again, in the same
        conversation and with the same end, in a new cfp round (answers to the old rounds are
        stale). Once: a conversation already here (awarded, taken up) is not asked again; the
        zones key their commitments by conversation, so an award the last coordinator sent
        and could not record is replaced by this one, never added to."""
        wall = self.office.clock.now()
        for record in saved.opened:
            conversation = record.conversation_id
            left_s = (record.ends_at - wall).total_seconds()
            if conversation in self.negotiations:
                continue
            if left_s <= 0:
                log.info("coordinator: demand response %s (not awarded) ended at %s while "
                         "stopped", conversation, record.ends_at.isoformat())  # fmt: skip
                continue
            # A wall clock set back (a Pi without RTC before NTP) cannot stretch the window.
            left_s = min(left_s, record.window_s)
            run = self._new_run(conversation, record.target_w, record.window_s, record.reason,
                                now_s, record.ends_at, left_s)  # fmt: skip
            run.round = record.round
            why = f"re-opened by a new coordinator: asking the zones again ({record.reason})"
            log.info("coordinator: demand response %s %s", conversation, why)
            audit_decision("demand-response", "reopened", conversation=conversation, detail=why)
            self.office.event("negotiation", "info", f"demand response {conversation}: {why}")
            self.talk.cfp(run, now_s, sorted(self.office.site.zones))


def _zone_of(sender: str) -> str | None:
    """The zone id of a zone agent's address (``zone[f1-meeting]``), else None."""
    if sender.startswith("zone[") and sender.endswith("]") and len(sender) > 6:
        return sender[5:-1]
    return None
