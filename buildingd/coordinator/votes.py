"""Occupant "too hot / too cold" votes per zone, turned into a bounded setpoint offset. Owns the
vote windows, the nudging rules and the last offset it decided; the caller sends the offset to
the zone (pure, no clock: times are passed in).

Votes count over a sliding window. When one side leads by at least ``min_votes``, the offset
moves one ``step_k`` toward it (cold votes warm the zone: + is warmer), at most once per
``min_interval_s`` (rate limit), never beyond ``max_offset_k`` and never taking the setpoint out
of the band the caller gives (the policy's safety band). Each vote moves the offset at most once
(only votes cast after the last move count). No flapping: reversing direction needs a full
window since the last move, i.e. a whole window of votes with the majority the other way.

A vote is refused at ``cast`` time, with the reason, when it is neither hot nor cold or when the
zone has no room left in its direction (at the offset limit or at the edge of the band), so the
occupant hears at once that it cannot count. A setpoint set by hand (``override``) becomes the
offset, and votes cast before it no longer count.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from buildingd.agents.messages import VoteResult

Vote = Literal["hot", "cold"]
__all__ = ["Settlement", "VoteBox", "VoteResult"]  # VoteResult: for service/ until it moves

MAX_VOTES_KEPT = 1000  # per zone: a flood of votes drops the oldest, memory stays bounded


@dataclass(frozen=True)
class Settlement:
    offset_k: float  # the zone's new offset (K, + warmer)
    moved: bool  # offset_k differs from the current offset given
    reason: str  # why it moved or did not: for the audit line and the voter


@dataclass
class _ZoneVotes:
    votes: deque[tuple[float, Vote]] = field(default_factory=lambda: deque(maxlen=MAX_VOTES_KEPT))
    last_move_s: float | None = None
    last_direction: int = 0  # +1 warmer, -1 cooler, 0 never moved (or set by hand)
    offset_k: float = 0.0  # the last offset settled or set by hand


class VoteBox:
    def __init__(
        self,
        window_s: float,
        min_votes: int,
        step_k: float,
        max_offset_k: float,
        min_interval_s: float,
    ) -> None:
        if window_s <= 0 or min_votes < 1 or step_k <= 0 or max_offset_k < 0 or min_interval_s < 0:
            raise ValueError(
                "VoteBox needs window_s > 0, min_votes >= 1, step_k > 0, max_offset_k >= 0 and "
                "min_interval_s >= 0"
            )
        self.window_s = window_s
        self.min_votes = min_votes
        self.step_k = step_k
        self.max_offset_k = max_offset_k
        self.min_interval_s = min_interval_s
        self._zones: dict[str, _ZoneVotes] = {}

    def zones(self) -> list[str]:
        """The zones that have had votes or a setpoint set by hand (the only ones ``settle``
        can move)."""
        return list(self._zones)

    def offset(self, zone_id: str) -> float:
        """The zone's offset as last settled or set by hand (0 when never)."""
        zone = self._zones.get(zone_id)
        return zone.offset_k if zone is not None else 0.0

    def cast(
        self,
        zone_id: str,
        vote: str,
        now_s: float,
        *,
        band_low_c: float | None = None,
        band_high_c: float | None = None,
        setpoint_c: float | None = None,
    ) -> VoteResult:
        """Record one vote; refused with the reason when it is not "hot" or "cold", or, given
        the band and the setpoint before any vote offset (as for ``settle``), when the zone
        cannot move that way any more."""
        zone = self._zones.get(zone_id)
        current = zone.offset_k if zone is not None else 0.0
        if vote not in ("hot", "cold"):
            return VoteResult(False, f"unknown vote {vote!r}: use 'hot' or 'cold'", current)
        given = (band_low_c, band_high_c, setpoint_c)
        if any(v is not None for v in given):
            if band_low_c is None or band_high_c is None or setpoint_c is None:
                raise ValueError("give band_low_c, band_high_c and setpoint_c together")
            low, high = self._room(band_low_c, band_high_c, setpoint_c)
            current = min(high, max(low, current))
            if vote == "cold" and current >= high:
                why = self._why_no_room(+1, current, high, band_low_c, band_high_c)
                return VoteResult(False, f"warmer refused: {why}", current)
            if vote == "hot" and current <= low:
                why = self._why_no_room(-1, current, low, band_low_c, band_high_c)
                return VoteResult(False, f"cooler refused: {why}", current)
        zone = self._zones.setdefault(zone_id, _ZoneVotes())
        self._expire(zone, now_s)
        zone.votes.append((now_s, "hot" if vote == "hot" else "cold"))
        return VoteResult(True, f"counted ({len(zone.votes)} vote(s) in the window)", current)

    def override(self, zone_id: str, offset_k: float, now_s: float) -> None:
        """A setpoint set by hand (HTTP, Home Assistant) becomes the offset; votes cast before
        it no longer count, and the next vote-driven move waits ``min_interval_s``. The caller
        has checked ``offset_k`` against the policy."""
        zone = self._zones.setdefault(zone_id, _ZoneVotes())
        zone.offset_k = offset_k
        zone.last_move_s = now_s
        zone.last_direction = 0  # a human decided: no reversal rule against it

    def tally(self, zone_id: str, now_s: float) -> tuple[int, int]:
        """(cold, hot) votes in the window that have not moved the offset yet."""
        zone = self._zones.get(zone_id)
        if zone is None:
            return 0, 0
        self._expire(zone, now_s)
        since = zone.last_move_s if zone.last_move_s is not None else float("-inf")
        cold = sum(1 for t, v in zone.votes if v == "cold" and t > since)
        hot = sum(1 for t, v in zone.votes if v == "hot" and t > since)
        return cold, hot

    def settle(
        self,
        zone_id: str,
        now_s: float,
        band_low_c: float,
        band_high_c: float,
        current_offset_k: float | None = None,
        *,
        setpoint_c: float,
    ) -> Settlement:
        """The zone's offset after the window's verdict. ``setpoint_c`` is the setpoint before
        any vote offset; ``setpoint_c + offset`` must stay inside ``[band_low_c, band_high_c]``
        (a current offset outside, after a band change, is pulled back in). A verdict that
        would push outside the band or past ``max_offset_k`` is refused with the reason.
        ``current_offset_k`` defaults to the offset this box last decided."""
        if not band_low_c <= setpoint_c <= band_high_c:
            raise ValueError(
                f"{zone_id}: setpoint {setpoint_c} degC outside its band "
                f"{band_low_c}..{band_high_c} degC"
            )
        zone = self._zones.get(zone_id)
        if current_offset_k is None:
            current_offset_k = zone.offset_k if zone is not None else 0.0
        given_offset_k = current_offset_k
        low, high = self._room(band_low_c, band_high_c, setpoint_c)
        current = min(high, max(low, given_offset_k))
        clamped = current != given_offset_k

        def result(offset: float, reason: str) -> Settlement:
            # Rounded so repeated steps do not accumulate float noise, then clamped again so the
            # rounding cannot step over the band's edge.
            offset = min(high, max(low, round(offset, 6)))
            if clamped:
                reason = f"{reason}; offset {given_offset_k:+g} K pulled back inside the band"
            if zone is not None:
                zone.offset_k = offset
            return Settlement(offset, offset != given_offset_k, reason)

        if zone is None:
            return result(current, "no votes")
        if zone.last_move_s is not None and now_s - zone.last_move_s < self.min_interval_s:
            wait_s = self.min_interval_s - (now_s - zone.last_move_s)
            return result(current, f"rate limited: next change possible in {wait_s:.0f} s")
        cold, hot = self.tally(zone_id, now_s)
        lead = cold - hot
        if abs(lead) < self.min_votes:
            return result(current, f"no majority: {cold} cold, {hot} hot, need a lead of "
                                   f"{self.min_votes}")  # fmt: skip
        direction = 1 if lead > 0 else -1
        word = "warmer" if direction > 0 else "cooler"
        if (
            direction == -zone.last_direction
            and zone.last_move_s is not None
            and now_s - zone.last_move_s < self.window_s
        ):
            return result(current, f"{word} would reverse the last change: needs a full "
                                   f"{self.window_s:.0f} s window after it")  # fmt: skip
        wanted = current + direction * self.step_k
        new = min(high, max(low, wanted))
        if (new - current) * direction <= 0:
            edge = high if direction > 0 else low
            why = self._why_no_room(direction, current, edge, band_low_c, band_high_c)
            return result(current, f"{word} refused: {why}")
        zone.last_move_s = now_s
        zone.last_direction = direction
        note = "" if new == wanted else " (stopped at the edge of the band or the offset limit)"
        return result(new, f"{word}: {cold} cold, {hot} hot{note}")

    def _room(
        self, band_low_c: float, band_high_c: float, setpoint_c: float
    ) -> tuple[float, float]:
        """The offsets allowed: inside ``max_offset_k`` and keeping the setpoint in the band."""
        return (
            max(-self.max_offset_k, band_low_c - setpoint_c),
            min(self.max_offset_k, band_high_c - setpoint_c),
        )

    def _why_no_room(
        self, direction: int, current: float, edge: float, band_low_c: float, band_high_c: float
    ) -> str:
        if edge == direction * self.max_offset_k:
            return f"already {current:+g} K, the most votes may move it"
        return f"the setpoint would leave the band {band_low_c:g}..{band_high_c:g} degC"

    def export(self, shift_s: float) -> dict[str, Any]:
        """What a standby needs to carry on (``restore``): each zone's votes, last move and
        offset, times shifted by ``shift_s`` (from this box's clock to a shared one)."""
        return {
            zone_id: {
                "votes": [[round(t + shift_s, 3), v] for t, v in zone.votes],
                "last_move_s": None if zone.last_move_s is None
                else round(zone.last_move_s + shift_s, 3),
                "last_direction": zone.last_direction,
                "offset_k": zone.offset_k,
            }
            for zone_id, zone in self._zones.items()
        }  # fmt: skip

    def restore(self, data: dict[str, Any], shift_s: float) -> None:
        """Take over an ``export`` (times shifted back by ``shift_s``); ``ValueError`` when it is
        not one (nothing is taken then)."""
        zones: dict[str, _ZoneVotes] = {}
        try:
            for zone_id, z in data.items():
                zone = _ZoneVotes(offset_k=float(z["offset_k"]),
                                  last_direction=int(z["last_direction"]))  # fmt: skip
                if abs(zone.offset_k) > self.max_offset_k or zone.last_direction not in (-1, 0, 1):
                    raise ValueError(f"{zone_id}: offset or direction out of range")
                last = z["last_move_s"]
                zone.last_move_s = None if last is None else float(last) - shift_s
                for t, v in z["votes"]:
                    if v not in ("hot", "cold"):
                        raise ValueError(f"{zone_id}: vote {v!r}")
                    zone.votes.append((float(t) - shift_s, v))
                zones[str(zone_id)] = zone
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a vote box export: {err!r}") from err
        self._zones = zones

    def _expire(self, zone: _ZoneVotes, now_s: float) -> None:
        while zone.votes and zone.votes[0][0] <= now_s - self.window_s:
            zone.votes.popleft()
