"""One demand-response event's conversation with the zones (FIPA Contract Net, SC00029H), from
its first cfp to the last restore: rounds of calls for proposals, the award, the confirmations,
the cancel at the end of the window. Each step is a transition of the event's ``Negotiation``:
audited, told as an event, and a failure or a shortfall told to break-glass. Holds no state of
its own: the demand-response desk keeps the runs and is told when one changed (``changed``).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from buildingd.agents.bus import Envelope, Performative
from buildingd.agents.messages import (
    Content,
    DemandResponseAward,
    DemandResponseCall,
    DemandResponseProposal,
    with_json,
    zone_address,
)
from buildingd.audit import audit_decision
from buildingd.config.policies import Policy
from buildingd.control.contract_net import Award, Level, Offer, award
from buildingd.coordinator.escalation import negotiation_story
from buildingd.coordinator.negotiation import Answers, DemandResponseRun, NegotiationState
from buildingd.coordinator.office import TICK_S, Office

log = logging.getLogger(__name__)
CONTRACT_NET = "fipa-contract-net"  # the FIPA protocol name every negotiation message carries
CONFIRM_S = 60.0  # awarded zones must confirm an award, and a restore, within this
S = NegotiationState


_Made = tuple[Content, dict[str, Any]]  # a content model and its JSON form (``with_json``)
_NOT_NEEDED = with_json(DemandResponseProposal(reason="not needed"))  # a reject-proposal's


@functools.lru_cache(maxsize=64)
def _award_content(level: Level, ends_at: datetime) -> _Made:
    """An award's content: the same for every zone awarded ``level`` in one event (a thousand
    zones share a few levels), so made once per level."""
    return with_json(DemandResponseAward(
        level=str(level), shift_k=level.shift_k, dim_pct=level.dim_pct, ends_at=ends_at
    ))  # fmt: skip


class Alarm(Protocol):
    """Where a negotiation that cannot meet its target is told (the break-glass desk)."""

    def escalate(
        self, message: str, now_s: float, *, tried: str = "", left_state: str = "",
        ref: str | None = None,
    ) -> object: ...  # fmt: skip

    def negotiation_met(self, conversation_id: str, opened_s: float) -> None: ...


class Conversation:
    def __init__(
        self,
        office: Office,
        alarm: Alarm,
        rejected: Counter[str],
        outcomes: dict[str, int],
        changed: Callable[[], None],
    ) -> None:
        self.office, self.alarm = office, alarm
        self.rejected, self.outcomes = rejected, outcomes  # the desk's counters
        self.changed = changed

    def cfp(self, run: DemandResponseRun, now_s: float, zones: list[str]) -> None:
        """Send one round's calls for proposals to ``zones`` and start collecting."""
        dr = self.office.site.demand_response
        conversation = run.negotiation.conversation_id
        run.round += 1
        run.round_id = f"{conversation}.{run.round}"
        run.invited = set(zones)
        run.answered = 0
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
        self.office.outbox += call.envelopes(
            Performative.CFP, self.office.name, [zone_address(z) for z in zones],
            conversation_id=run.negotiation.conversation_id, protocol=CONTRACT_NET,
            reply_with=run.round_id, reply_by=reply_by,
        )  # fmt: skip
        why = (
            f"round {run.round}: cfp to {len(zones)} zones: shed {run.target_w:.0f} W "
            f"({run.reason})"
        )
        self._transition(run, S.COLLECTING, now_s, why)

    def progress(self, run: DemandResponseRun, now_s: float) -> None:
        """Move ``run`` on at a tick: each step ends when its answers are in or its time is up;
        past a guardrail the negotiation escalates."""
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

    def answers_in(self, run: DemandResponseRun) -> bool:
        """Whether the step under way has every answer it waits for: counted, not compared (the
        desk takes one answer per zone asked in a round, confirmations and restores only from
        zones awarded), so it costs nothing per message."""
        state = run.negotiation.state
        if state is S.COLLECTING:
            return run.answered >= len(run.invited)
        if state is S.AWARDING:
            return len(run.confirmed) >= len(run.awarded)
        if state is S.RESTORING:
            return len(run.restored) >= len(run.awarded)
        return False

    def _round_over(self, run: DemandResponseRun, now_s: float) -> None:
        """A round's answers are in (or its reply_by passed): award, or ask again."""
        dr = self.office.site.demand_response
        silent = run.invited - set(run.offers) - set(run.refused)
        for zone_id in silent:  # unanswered cfps count as refusals at reply_by
            run.refused[zone_id] = "no answer by reply_by"
        result = award(self._admissible_offers(run), run.target_w, self._exempt_zones())
        answers: Answers | None = None
        if not result.met:  # only a round that falls short is compared with the last one
            answers = (
                frozenset(
                    (z, tuple(sorted((str(o.level), o.shed_w, o.comfort_cost) for o in offers)))
                    for z, offers in run.offers.items()
                ),
                frozenset(run.refused),
            )
        looping = answers is not None and answers == run.last_answers
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
            self.cfp(run, now_s, sorted(z for z in self.office.site.zones if z not in exempt))

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
            heating_c, cooling_c = self._current_band(zone_id, policy)
            for offer in offers:
                level = offer.level
                if not limits.exempt and (
                    level.shift_k <= limits.max_shift_k
                    and level.dim_pct <= limits.max_dim_pct
                    and heating_c - level.shift_k >= safety.min_c
                    and cooling_c + level.shift_k <= safety.max_c
                ):
                    admissible.append(offer)
                else:
                    self.rejected["outside_limits"] += 1
                    self.office.metrics.inc("buildingd_negotiation_rejected_total",
                                         agent="coordinator", reason="outside_limits")  # fmt: skip
                    log.warning("coordinator: %s offered %s in %s, outside its policy's limits",
                                zone_id, level, run.negotiation.conversation_id)  # fmt: skip
        return admissible

    def _current_band(self, zone_id: str, policy: Policy) -> tuple[float, float]:
        """The zone's (heating, cooling) setpoints as it last reported them, or its policy's
        occupied band."""
        state = self.office.zones.get(zone_id)
        if state is None:
            band = policy.comfort.occupied
            return band.heating_c, band.cooling_c
        return state.heating_sp_c, state.cooling_sp_c

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
        # The first award of each level (None: the rejection) readdressed to every other zone
        # given the same: a thousand zones share a few.
        made: dict[Level | None, Envelope] = {}
        for zone_id in run.offers:
            chosen = run.awarded.get(zone_id)
            key = None if chosen is None else chosen.level
            first = made.get(key)
            if first is not None:
                env = first.to(zone_address(zone_id))
            elif chosen is None:
                env = made[key] = self._rejection(run, zone_id)
            else:
                env = made[key] = self._award_to(run, zone_id, chosen)
            self.office.outbox.append(env)
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

    def send_award(self, run: DemandResponseRun, zone_id: str, offer: Offer) -> None:
        self.office.outbox.append(self._award_to(run, zone_id, offer))

    def _award_to(self, run: DemandResponseRun, zone_id: str, offer: Offer) -> Envelope:
        accept = _award_content(offer.level, run.ends_at)
        return self._to_zone(run, zone_id, Performative.ACCEPT_PROPOSAL, accept)

    def _reject_proposal(self, run: DemandResponseRun, zone_id: str) -> None:
        self.office.outbox.append(self._rejection(run, zone_id))

    def _rejection(self, run: DemandResponseRun, zone_id: str) -> Envelope:
        return self._to_zone(run, zone_id, Performative.REJECT_PROPOSAL, _NOT_NEEDED)

    def _to_zone(
        self,
        run: DemandResponseRun,
        zone_id: str,
        performative: Performative,
        content: _Made | None = None,
    ) -> Envelope:
        """A contract-net message to one zone in ``run``'s conversation, carrying ``content``
        (a model and its JSON form, shared by every zone sent the same) or none (a cancel)."""
        conversation = run.negotiation.conversation_id
        receiver = zone_address(zone_id)
        if content is not None:
            model, dumped = content
            return model.envelope(performative, self.office.name, receiver, dumped=dumped,
                                  conversation_id=conversation, protocol=CONTRACT_NET)  # fmt: skip
        ontology = DemandResponseCall.ontology  # a cancel carries no content
        return Envelope(
            performative=performative,
            sender=self.office.name,
            receiver=receiver,
            ontology=ontology,
            conversation_id=conversation,
            protocol=CONTRACT_NET,
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
        self.changed()

    def _escalate_negotiation(
        self, run: DemandResponseRun, message: str, now_s: float, cancelled: bool = False
    ) -> None:
        awarded = {z: str(o.level) for z, o in run.awarded.items()}
        tried, left = negotiation_story(
            run.invited, run.offers, run.refused, awarded, run.committed_w, run.target_w, cancelled
        )
        conversation = run.negotiation.conversation_id
        self.alarm.escalate(message, now_s, tried=tried, left_state=left, ref=conversation)
