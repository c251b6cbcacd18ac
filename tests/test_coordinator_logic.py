"""Pure coordinator logic: negotiation state machine and guardrails, contract-net awards,
G36 trim & respond, occupant votes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.coordinator.contract_net import Offer, ZoneFlexibility, award, zone_offers
from buildingd.coordinator.negotiation import (
    IllegalTransition,
    Negotiation,
    NegotiationState,
)
from buildingd.coordinator.trim_respond import TrimRespond, TrimRespondParams, cooling_requests
from buildingd.coordinator.votes import VoteBox, VoteRules

S = NegotiationState


def test_a_negotiation_only_moves_along_its_transitions() -> None:
    n = Negotiation("c1", "demand-response", opened_s=0.0, deadline_s=3600.0)
    for state in (S.COLLECTING, S.AWARDING, S.EXECUTING, S.RESTORING, S.SETTLED):
        assert n.advance(state, 10.0, "next") is state
    assert n.over
    with pytest.raises(IllegalTransition):
        n.advance(S.OPEN, 11.0, "again")
    m = Negotiation("c2", "demand-response", opened_s=0.0, deadline_s=3600.0)
    with pytest.raises(IllegalTransition, match="open -> executing"):
        m.advance(S.EXECUTING, 1.0, "skipping the award")


def test_guardrails_force_break_glass_escalation() -> None:
    n = Negotiation("c1", "dr", opened_s=0.0, deadline_s=100.0, max_turns=2)
    n.advance(S.COLLECTING, 1.0, "cfp sent")
    n.advance(S.AWARDING, 2.0, "proposals in")
    assert n.advance(S.EXECUTING, 3.0, "confirmed") is S.ESCALATED
    assert "more than 2 turns" in n.reason
    late = Negotiation("c2", "dr", opened_s=0.0, deadline_s=100.0)
    assert late.advance(S.COLLECTING, 150.0, "cfp sent") is S.ESCALATED
    assert "deadline" in late.reason
    chatty = Negotiation("c3", "dr", opened_s=0.0, deadline_s=100.0, max_messages=3)
    for _ in range(4):
        chatty.count_message()
    assert chatty.guardrail_breach(1.0) == "more than 3 messages"
    # An ending is always allowed, even past the guardrails.
    assert late.history[-1][1:3] == (S.OPEN, S.ESCALATED)


def offer(zone: str, shed: float, cost: float) -> Offer:
    return Offer(zone, f"{zone}-{shed}", 1.0, 0.0, shed, cost)


def test_the_cheapest_set_meeting_the_target_is_awarded() -> None:
    offers = [
        offer("a", 1000, 1.0), offer("a", 2000, 4.0),
        offer("b", 1500, 1.0),
        offer("c", 2500, 3.0),
        offer("server", 5000, 0.0),
    ]  # fmt: skip
    result = award(offers, target_w=2500, exempt=["server"])
    # a-1000 + b-1500 (cost 2) beats c-2500 (3) and a-2000 + b (5)
    assert {o.level for o in result.accepted} == {"a-1000", "b-1500"}
    assert result.met and result.committed_w == 2500
    assert all(o.zone_id != "server" for o in result.accepted)
    short = award(offers, target_w=100_000, exempt=["server"])
    assert not short.met
    assert short.committed_w == 2000 + 1500 + 2500  # the most it can get, one offer per zone


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.floats(0, 5000), st.floats(0, 10)), max_size=20
    ),
    st.floats(0, 20_000),
)
def test_awards_respect_one_offer_per_zone_and_exemptions(
    raw: list[tuple[str, float, float]], target: float
) -> None:
    offers = [offer(z, shed, cost) for z, shed, cost in raw]
    result = award(offers, target, exempt=["f"])
    zones = [o.zone_id for o in result.accepted]
    assert len(zones) == len(set(zones))
    assert "f" not in zones
    assert result.committed_w == pytest.approx(sum(o.shed_w for o in result.accepted))
    assert result.met == (result.committed_w >= target)


def test_zone_offers_follow_policy_limits_and_occupancy() -> None:
    busy = ZoneFlexibility("a", hvac_w=4000, lighting_w=400, occupied=True,
                           daylight_sufficient=False, max_shift_k=1.0, max_dim_pct=30)  # fmt: skip
    levels = {o.level: o for o in zone_offers(busy)}
    assert set(levels) == {"shift-0.5K", "shift-1.0K", "dim-30%"}  # 2 K is beyond the policy
    assert levels["shift-1.0K"].shed_w == 1000 and levels["dim-30%"].shed_w == 120
    empty = ZoneFlexibility("b", 4000, 400, False, False, 2.0, 30)
    assert min(o.comfort_cost for o in zone_offers(empty)) < levels["shift-0.5K"].comfort_cost
    assert zone_offers(ZoneFlexibility("s", 4000, 400, True, False, 2.0, 30, exempt=True)) == []


def test_trim_and_respond_by_hand() -> None:
    p = TrimRespondParams(sp0=18.0, sp_min=12.0, sp_max=18.0, delay_s=600, step_s=120, ignored=2,
                          trim=0.1, respond=-0.2, respond_max=-0.6)  # fmt: skip
    tr = TrimRespond(p, started_s=0.0)
    assert tr.step(500, requests=10) == 18.0  # inside Td: SP0 held
    assert tr.step(600, requests=3) == 17.8  # 0.2 * (3 - 2)
    assert tr.step(720, requests=10) == 17.2  # 0.2 * 8 = 1.6, capped at 0.6
    assert tr.step(840, requests=2) == 17.3  # no excess request: trim up 0.1
    assert tr.step(1080, requests=0) == 17.5  # two steps elapsed: two trims
    for t in range(1200, 12000, 120):
        tr.step(t, requests=0)
    assert tr.setpoint == 18.0  # trimmed back to SPmax, never beyond
    for t in range(12000, 40000, 120):
        tr.step(t, requests=20)
    assert tr.setpoint == 12.0  # never below SPmin


def test_zone_cooling_requests_follow_g36() -> None:
    assert cooling_requests(27.5, 24.0, 180, 180, 100, 0) == 3
    assert cooling_requests(27.5, 24.0, 60, 180, 100, 0) == 2  # 3 K not yet held 2 min
    assert cooling_requests(24.5, 24.0, 0, 0, 96, 0) == 1
    assert cooling_requests(24.5, 24.0, 0, 0, 90, 1) == 1  # held until the loop < 85 %
    assert cooling_requests(24.5, 24.0, 0, 0, 80, 1) == 0


def box() -> VoteBox:
    return VoteBox(VoteRules(window_s=900, min_votes=2, step_k=0.5, max_offset_k=1.0,
                             min_interval_s=600))  # fmt: skip


def cast(b: VoteBox, vote: str, t: float) -> bool:
    return b.cast("z", vote, t, heating_sp_c=21, safety_max_c=32, cooling_sp_c=24,
                  safety_min_c=10).accepted  # fmt: skip


def test_votes_nudge_with_rate_limits_bounds_and_no_flapping() -> None:
    b = box()
    assert cast(b, "cold", 0) and b.settle("z", 1) == 0.0  # one vote is not enough
    assert cast(b, "cold", 10) and b.settle("z", 11) == 0.5
    assert cast(b, "cold", 20) and cast(b, "cold", 30)
    assert b.settle("z", 40) == 0.5  # rate limit: 600 s between moves
    assert b.settle("z", 700) == 1.0
    assert not cast(b, "cold", 710)  # at the policy's limit: refused with a reason
    cast(b, "hot", 720)
    assert b.settle("z", 1400) == 1.0  # one hot vote does not reverse it
    cast(b, "hot", 1410)
    cast(b, "hot", 1420)
    assert b.settle("z", 1430) == 0.5
    result = b.cast("z", "freezing", 1500, 21, 32, 24, 10)
    assert not result.accepted and "unknown vote" in result.reason


def test_a_vote_that_would_leave_the_safety_band_is_refused() -> None:
    b = box()
    result = b.cast("z", "cold", 0, heating_sp_c=31.2, safety_max_c=32, cooling_sp_c=32,
                    safety_min_c=10)  # fmt: skip
    assert not result.accepted and "safety band" in result.reason
