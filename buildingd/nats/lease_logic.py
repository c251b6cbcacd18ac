"""The coordinator lease's decisions, pure (no I/O, time handed in): when to renew, when a lease
is lost, when a candidate may try to take it. ``nats/lease.py`` does the KV writes.

Fencing: the holder counts its lease from the moment it *sent* the write that the server
accepted, so its own deadline (``sent + ttl - margin``) falls before the server ages the key out
(``stored + ttl``, and ``stored >= sent``). Past that deadline it stops acting as coordinator,
whether or not it could reach the cluster; only then may the key expire and another take it.
The KV revision of the holder's last accepted write is its fencing token.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    ACQUIRE = "acquire"  # the key looked free (or never looked at): create it
    RENEW = "renew"  # held: compare-and-set on our last revision
    WAIT = "wait"  # another holds it, or our lease is fresh


@dataclass(frozen=True)
class LeaseTiming:
    """``ttl_s`` is the bucket's max age; the holder renews every ``ttl_s / 3`` and gives up
    ``margin_s`` before its lease could expire on the server (time to stop the coordinator,
    and clock rate differences between hosts)."""

    ttl_s: float
    margin_s: float

    @classmethod
    def for_ttl(cls, ttl_s: float) -> LeaseTiming:
        return cls(ttl_s, ttl_s / 4)

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3


class Lease:
    """One candidate's view of its site's coordinator lease."""

    def __init__(self, holder: str, timing: LeaseTiming) -> None:
        self.holder = holder
        self.timing = timing
        self.revision: int | None = None  # fencing token while held
        self.sent_at_s: float | None = None  # monotonic, when the accepted write was sent
        self.other: str | None = None  # who holds it when we do not, as last seen
        self.next_try_s = 0.0  # a candidate's next look at the key

    def holds(self, now_s: float) -> bool:
        """True while this candidate may act as coordinator."""
        return self.sent_at_s is not None and now_s < self.expires_s()

    def expires_s(self) -> float:
        assert self.sent_at_s is not None
        return self.sent_at_s + self.timing.ttl_s - self.timing.margin_s

    def action(self, now_s: float) -> Action:
        if self.sent_at_s is not None:
            due = now_s >= self.sent_at_s + self.timing.renew_every_s
            return Action.RENEW if due else Action.WAIT
        return Action.ACQUIRE if now_s >= self.next_try_s else Action.WAIT

    def wake_s(self, now_s: float) -> float:
        """When to look again (monotonic): the next renewal or try, at the latest the fence."""
        if self.sent_at_s is None:
            return max(now_s, self.next_try_s)
        renew = self.sent_at_s + self.timing.renew_every_s
        return renew if renew > now_s else min(now_s + self.timing.renew_every_s / 4,
                                               self.expires_s())  # fmt: skip

    def written(self, revision: int, sent_at_s: float) -> bool:
        """The server accepted our create or renewal sent at ``sent_at_s``. True when this
        makes us the holder (it was an acquisition)."""
        acquired = self.sent_at_s is None
        self.revision, self.sent_at_s, self.other = revision, sent_at_s, None
        return acquired

    def taken(self, other: str | None, now_s: float) -> None:
        """The key is someone else's (our create or compare-and-set was refused): look again
        in a third of the TTL, the soonest it could have expired unrenewed."""
        self.revision, self.sent_at_s, self.other = None, None, other
        self.next_try_s = now_s + self.timing.renew_every_s

    def lapse(self, now_s: float) -> bool:
        """Give the lease up if its fence has passed (renewals failed or were too slow). True
        when it was held until now: the caller must stop the coordinator."""
        if self.sent_at_s is None or now_s < self.expires_s():
            return False
        self.revision, self.sent_at_s = None, None
        self.next_try_s = now_s
        return True
