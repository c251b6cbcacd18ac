"""Occupant "too hot / too cold" votes per zone, turned into a bounded setpoint offset (pure).

Votes are counted over a sliding window. When one side leads by at least ``min_votes``, the
zone's offset moves one ``step_k`` toward it (cold votes warm the zone), at most once per
``min_interval_s`` (rate limit), never beyond ``max_offset_k`` and never out of the policy's
safety band. No flapping: after a move, the opposite direction needs a lead built from votes cast
after that move. A vote that is neither hot nor cold, or that would push a zone already at its
limit, is refused with a reason.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Vote = Literal["hot", "cold"]


@dataclass(frozen=True)
class VoteResult:
    accepted: bool
    reason: str
    offset_k: float


@dataclass
class _ZoneVotes:
    votes: deque[tuple[float, Vote]] = field(default_factory=deque)
    offset_k: float = 0.0
    last_move_s: float | None = None


@dataclass(frozen=True)
class VoteRules:
    window_s: float = 900.0
    min_votes: int = 2
    step_k: float = 0.5
    max_offset_k: float = 1.5
    min_interval_s: float = 900.0


class VoteBox:
    def __init__(self, rules: VoteRules) -> None:
        self.rules = rules
        self._zones: dict[str, _ZoneVotes] = {}

    def offset(self, zone_id: str) -> float:
        return self._zones[zone_id].offset_k if zone_id in self._zones else 0.0

    def cast(
        self, zone_id: str, vote: str, now_s: float, heating_sp_c: float, safety_max_c: float,
        cooling_sp_c: float, safety_min_c: float,
    ) -> VoteResult:  # fmt: skip
        """Record a vote; refused (with the reason) when it cannot change anything."""
        zone = self._zones.setdefault(zone_id, _ZoneVotes())
        if vote not in ("hot", "cold"):
            return VoteResult(False, f"unknown vote {vote!r}: use 'hot' or 'cold'", zone.offset_k)
        direction = 1 if vote == "cold" else -1
        at_limit = abs(zone.offset_k) >= self.rules.max_offset_k and direction * zone.offset_k > 0
        if at_limit:
            return VoteResult(False, f"already {zone.offset_k:+.1f} K, the most the policy allows",
                              zone.offset_k)  # fmt: skip
        if direction > 0 and heating_sp_c + self.rules.step_k > safety_max_c - 0.5:
            return VoteResult(False, "warmer would leave the safety band", zone.offset_k)
        if direction < 0 and cooling_sp_c - self.rules.step_k < safety_min_c + 0.5:
            return VoteResult(False, "cooler would leave the safety band", zone.offset_k)
        zone.votes.append((now_s, "cold" if direction > 0 else "hot"))
        return VoteResult(True, "counted", zone.offset_k)

    def override(self, zone_id: str, offset_k: float, now_s: float) -> None:
        """A setpoint set by hand (HTTP, Home Assistant): it becomes the offset; votes cast
        before it no longer count."""
        zone = self._zones.setdefault(zone_id, _ZoneVotes())
        zone.offset_k = offset_k
        zone.last_move_s = now_s

    def settle(self, zone_id: str, now_s: float) -> float:
        """Apply the window's verdict; returns the zone's offset (K, + warmer)."""
        zone = self._zones.get(zone_id)
        if zone is None:
            return 0.0
        r = self.rules
        while zone.votes and zone.votes[0][0] < now_s - r.window_s:
            zone.votes.popleft()
        if zone.last_move_s is not None and now_s - zone.last_move_s < r.min_interval_s:
            return zone.offset_k
        since = zone.last_move_s if zone.last_move_s is not None else float("-inf")
        cold = sum(1 for t, v in zone.votes if v == "cold" and t > since)
        hot = sum(1 for t, v in zone.votes if v == "hot" and t > since)
        lead = cold - hot
        if abs(lead) < r.min_votes:
            return zone.offset_k
        direction = 1 if lead > 0 else -1
        new = max(-r.max_offset_k, min(r.max_offset_k, zone.offset_k + direction * r.step_k))
        if new != zone.offset_k:
            zone.offset_k = round(new, 3)
            zone.last_move_s = now_s
        return zone.offset_k
