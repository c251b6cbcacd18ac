"""The coordinator lease's decisions without a server (nats/lease_logic.py): renewals every
third of the TTL, a holder that could not renew gives up before the server could let the key
expire, and a candidate refused the key looks again no sooner than a renewal period."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from buildingd.nats.lease_logic import Action, Lease, LeaseTiming

TIMING = LeaseTiming.for_ttl(6.0)


def test_a_fresh_candidate_tries_at_once_and_renews_every_third_of_the_ttl() -> None:
    lease = Lease("a", TIMING)
    assert lease.action(100.0) is Action.ACQUIRE
    assert lease.written(7, sent_at_s=100.0) is True  # an acquisition
    assert lease.holds(100.1) and lease.revision == 7
    assert lease.action(101.9) is Action.WAIT
    assert lease.wake_s(100.1) == 102.0
    assert lease.action(102.0) is Action.RENEW
    assert lease.written(8, sent_at_s=102.0) is False  # a renewal, not a new acquisition
    assert lease.revision == 8


def test_a_holder_that_cannot_renew_stops_before_the_key_can_expire() -> None:
    lease = Lease("a", TIMING)
    lease.written(1, sent_at_s=0.0)  # the server stored it at 0.0 or later: expires >= 6.0
    for now in (2.0, 3.0, 4.0):  # renewals failing: still due, still held
        assert lease.action(now) is Action.RENEW and lease.holds(now)
        assert lease.lapse(now) is False
    assert lease.expires_s() == 6.0 - TIMING.margin_s < 6.0
    assert lease.wake_s(4.4) <= lease.expires_s()  # it wakes up in time to give up
    fence = lease.expires_s()
    assert lease.lapse(fence) is True
    assert not lease.holds(fence) and lease.revision is None
    assert lease.lapse(7.0) is False  # given up once


def test_a_candidate_refused_the_key_waits_a_renewal_period() -> None:
    lease = Lease("b", TIMING)
    lease.taken("a", now_s=10.0)
    assert lease.other == "a" and not lease.holds(10.0)
    assert lease.action(11.0) is Action.WAIT
    assert lease.wake_s(11.0) == 12.0
    assert lease.action(12.0) is Action.ACQUIRE


@given(
    sent=st.floats(0, 1e6),
    store_delay=st.floats(0, 5),
    ttl=st.floats(0.5, 60),
)
def test_the_fence_always_falls_before_the_server_expiry(
    sent: float, store_delay: float, ttl: float
) -> None:
    """Whatever the write's delay to the server, the holder's own deadline is earlier than
    the key's expiry there (measured on the same clock): two coordinators never overlap."""
    lease = Lease("a", LeaseTiming.for_ttl(ttl))
    lease.written(1, sent_at_s=sent)
    server_expiry = sent + store_delay + ttl
    assert lease.expires_s() < server_expiry
    assert not lease.holds(server_expiry)
