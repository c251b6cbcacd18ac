"""Every negotiation is an explicit state machine with guardrails (pure; times are floats in s).

States and the only transitions allowed::

    OPEN ──▶ COLLECTING ──▶ AWARDING ──▶ EXECUTING ──▶ RESTORING ──▶ SETTLED
      │          │             │            │             │
      └──────────┴─────────────┴────────────┴─────────────┴──▶ FAILED | ESCALATED | CANCELLED

Guardrails: a negotiation that takes more than ``max_turns`` transitions, more than
``max_messages`` messages, or runs past its deadline is forced to ESCALATED (break-glass: a human
is called) instead of looping. SETTLED, FAILED, ESCALATED and CANCELLED are terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class NegotiationState(StrEnum):
    OPEN = "open"  # call for proposals sent
    COLLECTING = "collecting"  # proposals and refusals arriving until reply_by
    AWARDING = "awarding"  # accept/reject sent, waiting for confirmations
    EXECUTING = "executing"  # awarded zones shed until the window ends
    RESTORING = "restoring"  # window over: everything is being put back
    SETTLED = "settled"
    FAILED = "failed"
    ESCALATED = "escalated"
    CANCELLED = "cancelled"


S = NegotiationState
TERMINAL = frozenset({S.SETTLED, S.FAILED, S.ESCALATED, S.CANCELLED})
_ENDINGS = frozenset({S.FAILED, S.ESCALATED, S.CANCELLED})
TRANSITIONS: dict[NegotiationState, frozenset[NegotiationState]] = {
    S.OPEN: frozenset({S.COLLECTING}) | _ENDINGS,
    S.COLLECTING: frozenset({S.AWARDING}) | _ENDINGS,
    S.AWARDING: frozenset({S.EXECUTING}) | _ENDINGS,
    S.EXECUTING: frozenset({S.RESTORING}) | _ENDINGS,
    S.RESTORING: frozenset({S.SETTLED}) | _ENDINGS,
    **{t: frozenset() for t in TERMINAL},
}


class IllegalTransition(ValueError):
    pass


@dataclass
class Negotiation:
    conversation_id: str
    kind: str  # demand-response, ...
    opened_s: float
    deadline_s: float  # the negotiation must be over (SETTLED) by then
    max_turns: int = 12
    max_messages: int = 10_000
    state: NegotiationState = S.OPEN
    turns: int = 0
    messages: int = 0
    reason: str = ""
    history: list[tuple[float, NegotiationState, NegotiationState, str]] = field(
        default_factory=list
    )

    @property
    def over(self) -> bool:
        return self.state in TERMINAL

    def advance(self, to: NegotiationState, now_s: float, reason: str) -> NegotiationState:
        """Move to ``to``; a guardrail may send it to ESCALATED instead. Returns the new state."""
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.conversation_id}: {self.state} -> {to} not allowed")
        self.turns += 1
        breach = self.guardrail_breach(now_s)
        if breach and to not in TERMINAL:
            to, reason = S.ESCALATED, breach
        self.history.append((now_s, self.state, to, reason))
        self.state, self.reason = to, reason
        return to

    def count_message(self) -> None:
        self.messages += 1

    def guardrail_breach(self, now_s: float) -> str | None:
        """Why this negotiation must stop now, or None."""
        if self.over:
            return None
        if self.turns > self.max_turns:
            return f"more than {self.max_turns} turns"
        if self.messages > self.max_messages:
            return f"more than {self.max_messages} messages"
        if now_s > self.deadline_s:
            return f"past its deadline by {now_s - self.deadline_s:.0f} s"
        return None
