"""Every negotiation is an explicit state machine with guardrails. Owns the states, the only
transitions allowed, which performatives each state accepts, and the break-glass rule; it sends
nothing and reads no clock (pure).

Transitions (two loops, both bounded by ``max_turns``)::

    OPEN ─▶ COLLECTING ─▶ AWARDING ─▶ EXECUTING ─▶ RESTORING ─▶ SETTLED
      ▲          │           ▲            │
      └──────────┘           └────────────┘
     new cfp round           re-award (a zone withdrew)

    any non-terminal state ─▶ FAILED | ESCALATED | CANCELLED

Guardrails: every ``advance`` counts a turn, every participant message is counted with
``count_message``; a negotiation past ``max_turns``, past ``max_messages`` or past its deadline
is forced to ESCALATED (break-glass: a human is called) instead of going where it asked, so no
negotiation loops forever. SETTLED, FAILED, ESCALATED and CANCELLED are terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from buildingd.control.contract_net import Offer
from buildingd.errors import BuildingdError

if TYPE_CHECKING:
    from buildingd.coordinator.commitments import Commitment


class NegotiationState(StrEnum):
    OPEN = "open"  # call for proposals sent
    COLLECTING = "collecting"  # proposals and refusals arriving until the reply deadline
    AWARDING = "awarding"  # accept/reject sent, waiting for the awarded zones to confirm
    EXECUTING = "executing"  # awarded zones shed until the window ends
    RESTORING = "restoring"  # window over: every awarded zone is putting things back
    SETTLED = "settled"
    FAILED = "failed"
    ESCALATED = "escalated"  # break-glass: a technician is called
    CANCELLED = "cancelled"


S = NegotiationState
TERMINAL: frozenset[NegotiationState] = frozenset({S.SETTLED, S.FAILED, S.ESCALATED, S.CANCELLED})
_ENDINGS = frozenset({S.FAILED, S.ESCALATED, S.CANCELLED})
TRANSITIONS: dict[NegotiationState, frozenset[NegotiationState]] = {
    S.OPEN: frozenset({S.COLLECTING}) | _ENDINGS,
    S.COLLECTING: frozenset({S.AWARDING, S.OPEN}) | _ENDINGS,  # OPEN: another cfp round
    S.AWARDING: frozenset({S.EXECUTING}) | _ENDINGS,
    S.EXECUTING: frozenset({S.RESTORING, S.AWARDING}) | _ENDINGS,  # AWARDING: replace a zone
    S.RESTORING: frozenset({S.SETTLED}) | _ENDINGS,
    S.SETTLED: frozenset(),
    S.FAILED: frozenset(),
    S.ESCALATED: frozenset(),
    S.CANCELLED: frozenset(),
}

# What a participant may send the initiator in each state (FIPA Contract Net, SC00029H), by
# performative name. Anything else is out of order and rejected by the caller: a proposal after
# the award, a confirmation before it, anything once the negotiation is over.
ACCEPTS: dict[NegotiationState, frozenset[str]] = {
    S.OPEN: frozenset(),
    S.COLLECTING: frozenset({"propose", "refuse"}),
    # inform-done confirms an award (or, with ``restored``, a restore); failure withdraws.
    S.AWARDING: frozenset({"inform-done", "failure"}),
    S.EXECUTING: frozenset({"inform-done", "failure"}),
    S.RESTORING: frozenset({"inform-done", "failure"}),
    S.SETTLED: frozenset(),
    S.FAILED: frozenset(),
    S.ESCALATED: frozenset(),
    S.CANCELLED: frozenset(),
}
PARTICIPANT_PERFORMATIVES: frozenset[str] = frozenset().union(*ACCEPTS.values())


class IllegalTransition(BuildingdError):
    """A transition that is not in ``TRANSITIONS`` (a bug in the caller, not a guardrail)."""

    def __init__(
        self, conversation_id: str, from_state: NegotiationState, to_state: NegotiationState
    ) -> None:
        self.conversation_id = conversation_id
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(f"negotiation {conversation_id}: {from_state} -> {to_state} not allowed")


@dataclass
class Negotiation:
    conversation_id: str
    kind: str  # "demand-response", "power-cap", ...
    opened_s: float
    deadline_s: float  # must have reached a terminal state by then
    max_turns: int = 10  # the straight path to SETTLED takes 5
    max_messages: int = 10_000  # participant messages counted with ``count_message``
    turns: int = 0
    messages: int = 0
    state: NegotiationState = S.OPEN
    # (time_s, from, to, reason), one entry per turn: the audit trail
    history: list[tuple[float, NegotiationState, NegotiationState, str]] = field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, not {self.max_turns}")
        if self.max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {self.max_messages}")
        if self.deadline_s < self.opened_s:
            raise ValueError(f"deadline {self.deadline_s} s is before opening {self.opened_s} s")

    @classmethod
    def resumed(
        cls,
        conversation_id: str,
        kind: str,
        state: NegotiationState,
        now_s: float,
        deadline_s: float,
        reason: str,
        *,
        max_turns: int = 10,
        max_messages: int = 10_000,
    ) -> Negotiation:
        """A negotiation taken up again in ``state`` after a restart (from persisted
        commitments); the history starts with that, from OPEN, and counts no turn."""
        if state in TERMINAL:
            raise ValueError(f"cannot resume a negotiation that is over ({state})")
        n = cls(conversation_id, kind, now_s, deadline_s, max_turns, max_messages, state=state)
        n.history.append((now_s, S.OPEN, state, reason))
        return n

    @property
    def over(self) -> bool:
        return self.state in TERMINAL

    @property
    def reason(self) -> str:
        """Why the negotiation is where it is (the last transition's reason)."""
        return self.history[-1][3] if self.history else ""

    def accepts(self, performative: str) -> bool:
        """Whether a participant's ``performative`` belongs to the current state."""
        return performative in ACCEPTS[self.state]

    def count_message(self) -> None:
        self.messages += 1

    def breach(self, now_s: float) -> str | None:
        """Why the guardrail must stop this negotiation now, or None."""
        if self.turns > self.max_turns:
            return f"guardrail: more than {self.max_turns} turns"
        if self.messages > self.max_messages:
            return f"guardrail: more than {self.max_messages} messages"
        if now_s > self.deadline_s:
            return f"guardrail: {now_s - self.deadline_s:.0f} s past the deadline"
        return None

    def advance(self, to: NegotiationState, now_s: float, reason: str) -> NegotiationState:
        """Move to ``to`` and return the state reached, which is ESCALATED instead when this turn
        breaks a guardrail. Raises ``IllegalTransition`` for a transition not in the table
        (including any transition out of a terminal state)."""
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.conversation_id, self.state, to)
        self.turns += 1
        breach = self.breach(now_s)
        # A requested ending (settled, failed, cancelled) already stops the negotiation, which is
        # all the guardrail wants; only a move that keeps it going is replaced by break-glass.
        if breach is not None and to not in TERMINAL:
            reason = f"{breach} (wanted {to}: {reason})"
            to = S.ESCALATED
        self.history.append((now_s, self.state, to, reason))
        self.state = to
        return to

    def check_guardrails(self, now_s: float) -> NegotiationState:
        """For a timer: escalate a negotiation still running past its deadline or its message
        limit even when no event arrives to advance it (a silent peer must not keep it open).
        Counts no turn."""
        breach = None if self.over else self.breach(now_s)
        if breach is not None:
            self.history.append((now_s, self.state, S.ESCALATED, breach))
            self.state = S.ESCALATED
        return self.state


# Each zone's offers (level, shed, cost) and who refused: two rounds answered alike are a loop.
Answers = tuple[frozenset[tuple[str, tuple[tuple[str, float, float], ...]]], frozenset[str]]


@dataclass
class DemandResponseRun:
    """One demand-response event: its negotiation and what the zones answered and were awarded."""

    negotiation: Negotiation
    target_w: float
    window_s: float
    reason: str
    ends_s: float  # monotonic: the window ends (fixed when the event opens)
    ends_at: datetime  # the same instant on the wall clock (UTC), for the zones and the file
    max_rounds: int = 1
    round: int = 0  # cfp rounds sent so far
    round_id: str = ""  # reply_with of this round's cfps: an answer must carry it
    reply_by_s: float = 0.0
    invited: set[str] = field(default_factory=set)  # asked in this round
    answered: int = 0  # proposals and refusals taken in this round (one per zone asked)
    offers: dict[str, list[Offer]] = field(default_factory=dict)  # this round's proposals
    refused: dict[str, str] = field(default_factory=dict)  # each zone's latest refusal
    last_answers: Answers | None = None  # the previous round's, to spot a clarification loop
    awarded: dict[str, Offer] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)
    restored: set[str] = field(default_factory=set)
    committed_w: float = 0.0
    confirm_by_s: float = 0.0
    restore_by_s: float = 0.0
    # The commitments file's record of this run as last made, with the awards and committed watts
    # it was made from (``commitments.to_file``): not made again while they are the same.
    kept_record: tuple[dict[str, Offer], float, Commitment] | None = field(
        default=None, repr=False, compare=False
    )
