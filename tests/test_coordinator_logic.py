"""The coordinator's decisions: the negotiation state machine and its guardrails, contract-net
awards, G36 trim & respond and cooling requests, occupant votes (pure, buildingd.coordinator);
then the coordinator agent itself on a fake clock with scripted zones: out-of-order and forged
messages, cfp rounds and the clarification loop, a property test over any offers and any
pattern of silence, and commitments kept across a restart."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildingd.agents.bus import Envelope, Mailbox, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    COORDINATOR,
    ZONE_STATE_TOPIC,
    DemandResponseAward,
    DemandResponseCall,
    DemandResponseProposal,
    OfferMsg,
    ZoneStateMsg,
    zone_address,
)
from buildingd.agents.zone import ZoneAgent
from buildingd.config.loader import Site, load_site
from buildingd.config.policies import DemandResponseEvent
from buildingd.control.contract_net import (
    MAX_EXACT_ZONES,
    Level,
    Offer,
    award,
    zone_offers,
)
from buildingd.control.trim_respond import TrimRespond, TrimRespondParams, cooling_requests
from buildingd.coordinator import commitments
from buildingd.coordinator.agent import CoordinatorAgent
from buildingd.coordinator.negotiation import (
    ACCEPTS,
    TERMINAL,
    TRANSITIONS,
    DemandResponseRun,
    IllegalTransition,
    Negotiation,
    NegotiationState,
)
from buildingd.coordinator.office import TICK_S
from buildingd.coordinator.votes import VoteBox
from buildingd.drivers.base import DriverContext
from buildingd.errors import BuildingdError
from tests.conftest import REPO, ManualClock

S = NegotiationState
SHIFT_1 = Level(shift_k=1.0)
DIM = Level(dim_pct=30.0)

# --- negotiation -------------------------------------------------------------------------------


def test_a_negotiation_walks_the_straight_path_and_records_each_turn() -> None:
    n = Negotiation("c1", "demand-response", opened_s=0.0, deadline_s=3600.0)
    path = (S.COLLECTING, S.AWARDING, S.EXECUTING, S.RESTORING, S.SETTLED)
    for i, state in enumerate(path):
        assert n.advance(state, 10.0 * i, f"step {i}") is state
        assert n.reason == f"step {i}"
    assert n.over
    assert n.turns == 5
    assert [(f, t) for _, f, t, _ in n.history] == list(
        zip((S.OPEN, *path[:-1]), path, strict=True)
    )


def test_illegal_transitions_raise_and_change_nothing() -> None:
    n = Negotiation("c2", "demand-response", opened_s=0.0, deadline_s=3600.0)
    with pytest.raises(IllegalTransition, match="open -> executing") as info:
        n.advance(S.EXECUTING, 1.0, "skip ahead")
    assert isinstance(info.value, BuildingdError)
    assert (info.value.conversation_id, info.value.from_state) == ("c2", S.OPEN)
    assert (n.state, n.turns, n.history, n.reason) == (S.OPEN, 0, [], "")


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_accept_nothing(terminal: NegotiationState) -> None:
    n = Negotiation("c3", "demand-response", opened_s=0.0, deadline_s=3600.0)
    n.advance(terminal, 1.0, "end") if terminal is not S.SETTLED else _settle(n)
    assert n.state is terminal
    for to in NegotiationState:
        with pytest.raises(IllegalTransition):
            n.advance(to, 2.0, "after the end")
    assert not any(n.accepts(p) for p in Performative)  # and no participant message either


def _settle(n: Negotiation) -> None:
    for state in (S.COLLECTING, S.AWARDING, S.EXECUTING, S.RESTORING, S.SETTLED):
        n.advance(state, 1.0, "")


def test_each_state_accepts_only_its_own_performatives() -> None:
    assert ACCEPTS[S.COLLECTING] == {"propose", "refuse"}
    for state in (S.AWARDING, S.EXECUTING, S.RESTORING):
        assert ACCEPTS[state] == {"inform-done", "failure"}
    assert ACCEPTS[S.OPEN] == frozenset()
    n = Negotiation("c", "demand-response", opened_s=0.0, deadline_s=100.0)
    n.advance(S.COLLECTING, 1.0, "cfp")
    assert n.accepts(Performative.PROPOSE) and not n.accepts(Performative.INFORM_DONE)
    n.advance(S.AWARDING, 2.0, "award")
    assert n.accepts(Performative.INFORM_DONE) and not n.accepts(Performative.PROPOSE)


def test_more_turns_than_allowed_force_break_glass() -> None:
    n = Negotiation("c4", "demand-response", opened_s=0.0, deadline_s=3600.0, max_turns=3)
    assert n.advance(S.COLLECTING, 1.0, "round 1") is S.COLLECTING
    assert n.advance(S.OPEN, 2.0, "not enough: cfp again") is S.OPEN
    assert n.advance(S.COLLECTING, 3.0, "round 2") is S.COLLECTING
    assert n.advance(S.OPEN, 4.0, "cfp again") is S.ESCALATED  # 4th turn > 3
    when, frm, to, reason = n.history[-1]
    assert (when, frm, to) == (4.0, S.COLLECTING, S.ESCALATED)
    assert "more than 3 turns" in reason and "cfp again" in reason
    with pytest.raises(IllegalTransition):
        n.advance(S.COLLECTING, 5.0, "too late")


def test_more_messages_than_allowed_force_break_glass() -> None:
    n = Negotiation("c4", "demand-response", opened_s=0.0, deadline_s=3600.0, max_messages=3)
    n.advance(S.COLLECTING, 1.0, "cfp")
    for _ in range(3):
        n.count_message()
    assert n.breach(2.0) is None  # at the limit is not past it
    n.count_message()
    assert n.breach(2.0) == "guardrail: more than 3 messages"
    assert n.check_guardrails(2.0) is S.ESCALATED  # even with no transition asked for
    assert n.reason == "guardrail: more than 3 messages"


def test_a_turn_past_the_deadline_escalates_but_a_requested_ending_is_kept() -> None:
    late = Negotiation("c5", "power-cap", opened_s=0.0, deadline_s=100.0)
    assert late.advance(S.COLLECTING, 101.0, "slow") is S.ESCALATED
    assert "1 s past the deadline" in late.history[-1][3]
    cancelled = Negotiation("c6", "power-cap", opened_s=0.0, deadline_s=100.0)
    assert cancelled.advance(S.CANCELLED, 500.0, "operator cancelled") is S.CANCELLED


def test_a_silent_negotiation_escalates_on_the_deadline_timer() -> None:
    n = Negotiation("c7", "demand-response", opened_s=0.0, deadline_s=100.0)
    n.advance(S.COLLECTING, 1.0, "")
    assert n.check_guardrails(100.0) is S.COLLECTING  # on the deadline is not past it
    assert n.check_guardrails(130.0) is S.ESCALATED
    assert n.turns == 1  # a timer is not a turn
    assert n.check_guardrails(200.0) is S.ESCALATED
    assert len(n.history) == 2


def test_a_resumed_negotiation_starts_where_it_was() -> None:
    n = Negotiation.resumed("c8", "demand-response", S.EXECUTING, 50.0, 500.0, "after restart")
    assert (n.state, n.turns, n.opened_s, n.reason) == (S.EXECUTING, 0, 50.0, "after restart")
    assert n.history == [(50.0, S.OPEN, S.EXECUTING, "after restart")]
    assert n.advance(S.RESTORING, 60.0, "window over") is S.RESTORING
    with pytest.raises(ValueError, match="over"):
        Negotiation.resumed("c9", "demand-response", S.SETTLED, 0.0, 1.0, "")


def test_transition_table_lets_every_running_state_end() -> None:
    for state, targets in TRANSITIONS.items():
        if state in TERMINAL:
            assert targets == frozenset()
        else:
            assert {S.FAILED, S.ESCALATED, S.CANCELLED} <= targets


@given(
    choices=st.lists(st.integers(min_value=0, max_value=100), min_size=0, max_size=60),
    max_turns=st.integers(min_value=1, max_value=12),
)
def test_any_legal_walk_ends_within_max_turns_plus_one(choices: list[int], max_turns: int) -> None:
    n = Negotiation("p", "demand-response", opened_s=0.0, deadline_s=1e9, max_turns=max_turns)
    for i, c in enumerate(choices):
        if n.over:
            break
        # Prefer moves that keep it running: the walk a looping peer would take.
        running = sorted(TRANSITIONS[n.state] - TERMINAL) or sorted(TRANSITIONS[n.state])
        n.advance(running[c % len(running)], float(i), "")
    assert n.turns <= max_turns + 1
    assert len(n.history) == n.turns
    if len(choices) > max_turns:
        assert n.over
    for _, frm, to, _ in n.history:
        assert to in TRANSITIONS[frm]


# --- contract net ------------------------------------------------------------------------------


def _offer(zone: str, shed_w: float, cost: float, level: Level = SHIFT_1) -> Offer:
    return Offer(zone, level, shed_w, cost)


def test_award_picks_the_cheapest_set_meeting_the_target() -> None:
    a_small, a_big = _offer("a", 600, 1.0), _offer("a", 1000, 4.0)
    b = _offer("b", 500, 0.1, DIM)
    c = _offer("c", 450, 0.5)
    # Sets meeting 1000 W: a_big (4.0), a_small+b (1.1), a_small+c (1.5), all three (1.6) ...
    result = award([a_small, a_big, b, c], target_w=1000)
    assert sorted(result.accepted, key=lambda o: o.zone_id) == [a_small, b]
    assert result.committed_w == 1100
    assert result.met
    assert sorted(result.rejected, key=lambda o: (o.zone_id, o.shed_w)) == [a_big, c]


def test_award_is_exact_below_any_watt_granularity() -> None:
    # The audit's case: 50 W steps would round b's 10 W to nothing and pick c alone (cost 10).
    a, b, c = _offer("a", 90, 0.1), _offer("b", 10, 0.1), _offer("c", 100, 10.0)
    result = award([a, b, c], target_w=100)
    assert sorted(result.accepted, key=lambda o: o.zone_id) == [a, b]
    assert result.met and result.committed_w == 100


def test_the_cheapest_of_several_sets_and_the_most_when_short() -> None:
    offers = [
        _offer("a", 1000, 1.0), _offer("a", 2000, 4.0),
        _offer("b", 1500, 1.0),
        _offer("c", 2500, 3.0),
        _offer("server", 5000, 0.0),
    ]  # fmt: skip
    result = award(offers, target_w=2500, exempt_zones=["server"])
    # a-1000 + b-1500 (cost 2) beats c-2500 (3) and a-2000 + b (5)
    assert {(o.zone_id, o.shed_w) for o in result.accepted} == {("a", 1000), ("b", 1500)}
    assert result.met and result.committed_w == 2500
    short = award(offers, target_w=100_000, exempt_zones=["server"])
    assert not short.met
    assert short.committed_w == 2000 + 1500 + 2500  # the most it can get, one offer per zone


def test_award_never_accepts_an_exempt_zone_even_when_cheapest() -> None:
    server_room = _offer("server", 5000, 0.0)
    office = _offer("office", 1200, 2.0)
    result = award([server_room, office], 1000, exempt_zones=["server"])
    assert result.accepted == [office]
    assert server_room in result.rejected


def test_an_unmet_target_sheds_all_it_can_and_says_so() -> None:
    offers = [_offer("a", 300, 0.5), _offer("a", 700, 2.0), _offer("b", 200, 0.1)]
    result = award(offers, 5000)
    assert not result.met
    assert result.committed_w == 900
    assert sorted(o.shed_w for o in result.accepted) == [200, 700]


def test_no_target_accepts_nothing() -> None:
    offers = [_offer("a", 300, 0.5)]
    result = award(offers, 0)
    assert (result.accepted, result.rejected, result.committed_w, result.met) == (
        [], offers, 0, True,
    )  # fmt: skip


def test_offers_are_checked_at_the_edge() -> None:
    with pytest.raises(ValueError, match="shed_w"):
        Offer("a", SHIFT_1, -1.0, 0.0)
    with pytest.raises(ValueError, match="comfort_cost"):
        Offer("a", SHIFT_1, 1.0, math.nan)


def test_zone_offers_follow_the_policy_and_who_is_there() -> None:
    def offers(**kw: object) -> dict[str, Offer]:
        args: dict[str, object] = dict(
            hvac_w=2000.0,
            occupied=True,
            light_w=400.0,
            daylight_sufficient=False,
            max_shift_k=1.0,
            max_dim_pct=30.0,
        )
        args.update(kw)
        return {str(o.level): o for o in zone_offers("z", **args)}  # type: ignore[arg-type]

    occupied = offers()
    assert set(occupied) == {
        "shift-0.5K",
        "shift-1K",
        "dim-30%",
        "shift-0.5K+dim-30%",
        "shift-1K+dim-30%",
    }  # fmt: skip  (no 2 K: the policy allows 1 K)
    vacant = offers(occupied=False)
    assert vacant["dim-30%"].comfort_cost < 0.05  # nobody sees it
    assert occupied["dim-30%"].comfort_cost > 10 * vacant["dim-30%"].comfort_cost
    assert occupied["shift-1K"].comfort_cost > vacant["shift-1K"].comfort_cost
    assert offers(daylight_sufficient=True)["dim-30%"].comfort_cost < 0.1
    assert occupied["dim-30%"].shed_w == 120  # 30 % of 400 W
    # 15 %/K of the HVAC power: 2000 W * 0.15 * 1 K = 300 W, at 0.5 K 150 W
    assert (occupied["shift-1K"].shed_w, occupied["shift-0.5K"].shed_w) == (300, 150)
    assert all(o.shed_w == int(o.shed_w) for o in occupied.values())
    assert set(offers(hvac_w=0.0)) == {"dim-30%"}
    assert set(offers(light_w=0.0)) == {"shift-0.5K", "shift-1K"}
    assert offers(exempt=True) == {}
    assert offers(hvac_w=0.0, light_w=0.0) == {}


_offer_st = st.builds(
    Offer,
    zone_id=st.sampled_from(["a", "b", "c", "d", "e"]),
    level=st.sampled_from([SHIFT_1, DIM]),
    shed_w=st.integers(min_value=0, max_value=3000).map(float),
    comfort_cost=st.floats(min_value=0, max_value=10, allow_nan=False),
)


@settings(max_examples=300)
@given(
    offers=st.lists(_offer_st, max_size=14),
    target_w=st.integers(min_value=-100, max_value=8000).map(float),
    exempt=st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=2),
)
def test_award_is_the_brute_force_optimum(
    offers: list[Offer], target_w: float, exempt: set[str]
) -> None:
    result = award(offers, target_w, sorted(exempt))
    zones = [o.zone_id for o in result.accepted]
    assert len(zones) == len(set(zones))  # at most one offer per zone
    assert not set(zones) & exempt
    assert result.committed_w == sum(o.shed_w for o in result.accepted)
    assert result.met == (result.committed_w >= target_w)
    assert sorted(map(repr, result.accepted + result.rejected)) == sorted(map(repr, offers))

    by_zone: dict[str, list[Offer | None]] = {}
    for o in offers:
        if o.zone_id not in exempt and o.shed_w > 0:
            by_zone.setdefault(o.zone_id, [None]).append(o)
    best = math.inf
    most = 0.0
    for pick in itertools.product(*by_zone.values()):
        chosen = [o for o in pick if o is not None]
        shed = sum(o.shed_w for o in chosen)
        most = max(most, shed)
        if shed >= target_w:
            best = min(best, sum(o.comfort_cost for o in chosen))
    if best < math.inf:
        assert result.met
        assert sum(o.comfort_cost for o in result.accepted) == pytest.approx(best, abs=1e-9)
    else:
        assert not result.met
        assert result.committed_w == most  # everything useful


@settings(max_examples=50)
@given(
    sheds=st.lists(
        st.tuples(st.integers(1, 2000), st.floats(0, 5, allow_nan=False)),
        min_size=MAX_EXACT_ZONES + 1,
        max_size=80,
    ),
    share=st.floats(0, 1.2),
)
def test_greedy_award_for_many_zones_keeps_the_rules(
    sheds: list[tuple[int, float]], share: float
) -> None:
    offers = []
    for i, (shed, cost) in enumerate(sheds):
        offers += [Offer(f"z{i}", SHIFT_1, shed, cost), Offer(f"z{i}", DIM, shed // 2, cost / 3)]
    target = share * sum(s for s, _ in sheds)
    result = award(offers, target, exempt_zones=["z0"])
    zones = [o.zone_id for o in result.accepted]
    assert len(zones) == len(set(zones)) and "z0" not in zones
    assert result.committed_w == sum(o.shed_w for o in result.accepted)
    reachable = sum(s for s, _ in sheds[1:])
    assert result.met == (reachable >= target)


# --- trim & respond ----------------------------------------------------------------------------

# G36 SAT defaults: 18 degC in 12..18, Td 600 s, T 120 s, I 2, SPtrim/SPres/SPres_max
# +0.1/-0.2/-0.6 K.
# Worked by hand from Buildings.Controls.OBC.ASHRAE.G36.Generic.TrimAndRespond: the output holds
# SP0 until its timer passes delTim + samplePeriod (600 + 120 = 720 s); at each sample after that
# the change is SPtrim, plus, when R > I, the response SPres * (R - I) limited to SPres_max in
# magnitude (netRes = trim + capped response); the setpoint is then limited to [SPmin, SPmax].
SAT = TrimRespondParams()


def test_sat_holds_sp0_through_the_delay_then_trims_and_responds() -> None:
    tr = TrimRespond(SAT, started_s=0.0)
    assert tr.step(0.0, 10) == 18.0
    assert tr.step(719.0, 10) == 18.0  # Td + T: the first step comes one T after the delay
    # R=5, I=2: -0.2*3 = -0.6 (at the cap), plus the trim +0.1 -> -0.5: 18 - 0.5 = 17.5
    assert tr.step(720.0, 5) == pytest.approx(17.5)
    assert tr.step(800.0, 5) == pytest.approx(17.5)  # between steps: unchanged
    # R=10: -0.2*8 = -1.6 capped at SPres_max -0.6, plus trim -> -0.5: 17.0
    assert tr.step(840.0, 10) == pytest.approx(17.0)
    assert tr.step(960.0, 3) == pytest.approx(16.9)  # -0.2*1 + 0.1 = -0.1
    assert tr.step(1080.0, 2) == pytest.approx(17.0)  # R <= I: trim only, +0.1
    assert tr.step(1200.0, 0) == pytest.approx(17.1)


def test_response_alone_when_not_trimming_on_response() -> None:
    # The other reading (response replaces the trim): -0.6, -0.6 (capped), -0.2, then +0.1.
    tr = TrimRespond(TrimRespondParams(trim_with_response=False), started_s=0.0)
    assert [tr.step(720.0 + 120 * i, r) for i, r in enumerate((5, 10, 3, 0))] == pytest.approx(
        [17.4, 16.8, 16.6, 16.7]
    )


def test_setpoint_is_clamped_to_its_range() -> None:
    tr = TrimRespond(SAT, started_s=0.0)
    assert [tr.step(720.0 + 120 * i, 0) for i in range(3)] == [18.0, 18.0, 18.0]  # SPmax
    # SPmin 17.2: 18 - 0.5 = 17.5, then 17.0 is limited to 17.2, and stays there.
    low = TrimRespond(TrimRespondParams(sp_min=17.2), started_s=0.0)
    assert [low.step(720.0 + 120 * i, 9) for i in range(3)] == pytest.approx([17.5, 17.2, 17.2])


def test_a_late_call_steps_once_and_stays_on_the_grid() -> None:
    # Started at 100 s: steps at 820, 940, ...; a call at 1450 s has missed five steps but only
    # knows today's request count, so it changes the setpoint once (R=5: -0.5) and the next
    # step stays on the grid at 820 + 6 * 120 = 1540 s.
    tr = TrimRespond(SAT, started_s=100.0)
    assert tr.step(100.0 + 720 + 5 * 120 + 30, 5) == pytest.approx(17.5)
    assert tr.step(100.0 + 720 + 6 * 120 - 1, 5) == pytest.approx(17.5)
    assert tr.step(100.0 + 720 + 6 * 120, 5) == pytest.approx(17.0)


def test_restart_holds_sp0_again() -> None:
    tr = TrimRespond(SAT, started_s=0.0)
    tr.step(720.0, 10)
    tr.restart(1000.0)
    assert tr.step(1000.0 + 700, 10) == 18.0


def test_static_pressure_responds_upward() -> None:
    # Duct static pressure in Pa (the Modelica validation's numbers): requests raise it.
    p = TrimRespondParams(
        sp0=120, sp_min=25, sp_max=370, delay_s=300, step_s=120, ignored=2,
        trim=-10, respond=15, respond_max=37,
    )  # fmt: skip
    tr = TrimRespond(p, started_s=0.0)
    assert tr.step(420.0, 6) == pytest.approx(147.0)  # -10 + min(15*4, 37)
    assert tr.step(540.0, 3) == pytest.approx(152.0)  # -10 + 15
    assert tr.step(660.0, 0) == pytest.approx(142.0)


def test_inconsistent_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="opposite"):
        TrimRespondParams(trim=-0.1)
    with pytest.raises(ValueError, match="same sign"):
        TrimRespondParams(respond_max=0.6)
    with pytest.raises(ValueError, match="SP0"):
        TrimRespondParams(sp0=20.0)


@pytest.mark.parametrize(
    ("temp_c", "loop_pct", "above3_s", "above2_s", "previous", "expected"),
    [
        (27.5, 100, 150, 150, 0, 3),  # 3.5 K above for 2.5 min
        (27.5, 100, 60, 150, 0, 2),  # 3 K not long enough, 2 K is
        (26.5, 100, 0, 119, 0, 1),  # 2 K not long enough; loop saturated
        (24.5, 96, 0, 0, 0, 1),
        (24.5, 90, 0, 0, 1, 1),  # hysteresis: held between 85 and 95 %
        (24.5, 90, 0, 0, 0, 0),
        (24.5, 84, 0, 0, 1, 0),  # released below 85 %
    ],
)
def test_cooling_requests(
    temp_c: float, loop_pct: float, above3_s: float, above2_s: float, previous: int, expected: int
) -> None:
    got = cooling_requests(
        temp_c, 24.0, loop_pct, above_3k_for_s=above3_s, above_2k_for_s=above2_s, previous=previous
    )
    assert got == expected


# --- votes -------------------------------------------------------------------------------------


def _box() -> VoteBox:
    return VoteBox(window_s=900, min_votes=2, step_k=0.5, max_offset_k=1.5, min_interval_s=600)


def _settle_at(box: VoteBox, now_s: float, offset: float, setpoint_c: float = 22.0) -> float:
    return box.settle("r1", now_s, 20.0, 24.0, offset, setpoint_c=setpoint_c).offset_k


def test_a_vote_that_is_not_hot_or_cold_is_refused() -> None:
    box = _box()
    result = box.cast("r1", "warm", 0.0)
    assert not result.accepted and "unknown vote 'warm'" in result.reason
    assert result.offset_k == 0.0
    assert box.tally("r1", 0.0) == (0, 0)
    assert box.cast("r1", "cold", 0.0).accepted


def test_votes_nudge_once_per_interval_and_each_vote_counts_once() -> None:
    box = _box()
    box.cast("r1", "cold", 0.0)
    assert _settle_at(box, 5.0, 0.0) == 0.0  # one vote is not a majority of 2
    box.cast("r1", "cold", 10.0)
    s = box.settle("r1", 20.0, 20.0, 24.0, 0.0, setpoint_c=22.0)
    assert (s.offset_k, s.moved) == (0.5, True) and s.reason.startswith("warmer")
    assert box.offset("r1") == 0.5
    box.cast("r1", "cold", 30.0)
    counted = box.cast("r1", "cold", 40.0)
    assert counted.accepted and counted.offset_k == 0.5  # the voter hears the current offset
    limited = box.settle("r1", 50.0, 20.0, 24.0, 0.5, setpoint_c=22.0)
    assert (limited.offset_k, limited.moved) == (0.5, False)
    assert "rate limited: next change possible in 570 s" in limited.reason
    assert _settle_at(box, 620.0, 0.5) == 1.0  # the two votes after the first move
    assert _settle_at(box, 1300.0, 1.0) == 1.0  # no new votes: no further move


def test_votes_outside_the_window_expire() -> None:
    box = _box()
    box.cast("r1", "hot", 0.0)
    box.cast("r1", "hot", 950.0)
    assert box.tally("r1", 960.0) == (0, 1)
    assert _settle_at(box, 960.0, 0.0) == 0.0


def test_a_vote_pushing_out_of_the_band_is_refused() -> None:
    box = _box()
    for t in (0.0, 1.0):
        box.cast("r1", "cold", t)
    # Setpoint 23.5 in 20..24: at +0.5 the zone is at the band's top.
    s = box.settle("r1", 10.0, 20.0, 24.0, 0.5, setpoint_c=23.5)
    assert (s.offset_k, s.moved) == (0.5, False)
    assert "warmer refused" in s.reason and "leave the band 20..24" in s.reason
    partial = box.settle("r1", 10.0, 20.0, 24.0, 0.25, setpoint_c=23.5)
    assert partial.offset_k == 0.5 and "edge" in partial.reason  # clamped, not past the band


def test_a_vote_that_cannot_move_the_zone_is_refused_when_cast() -> None:
    box = _box()
    band = {"band_low_c": 20.0, "band_high_c": 24.0}
    # At the top of the band (23.5 + 0.5): warmer is refused at once, with the reason ...
    box.override("r1", 0.5, 0.0)
    refused = box.cast("r1", "cold", 10.0, setpoint_c=23.5, **band)
    assert not refused.accepted and refused.offset_k == 0.5
    assert "warmer refused" in refused.reason and "leave the band 20..24" in refused.reason
    assert box.tally("r1", 10.0) == (0, 0)  # ... and not counted
    assert box.cast("r1", "hot", 10.0, setpoint_c=23.5, **band).accepted  # cooler still can
    # At the offset limit: refused whatever the band.
    box.override("r2", -1.5, 0.0)
    limit = box.cast("r2", "hot", 10.0, setpoint_c=22.0, band_low_c=10.0, band_high_c=30.0)
    assert not limit.accepted and "already -1.5 K, the most votes may move it" in limit.reason
    with pytest.raises(ValueError, match="together"):
        box.cast("r1", "hot", 10.0, setpoint_c=22.0)


def test_a_setpoint_set_by_hand_becomes_the_offset_and_older_votes_lapse() -> None:
    box = _box()
    box.cast("r1", "cold", 0.0)
    box.cast("r1", "cold", 1.0)
    box.override("r1", -1.0, 5.0)
    assert box.offset("r1") == -1.0
    assert box.tally("r1", 6.0) == (0, 0)  # the votes before the override no longer count
    s = box.settle("r1", 700.0, 20.0, 24.0, setpoint_c=22.0)  # default: the box's own offset
    assert (s.offset_k, s.moved) == (-1.0, False)
    box.cast("r1", "cold", 710.0)
    box.cast("r1", "cold", 711.0)
    # A hand-set offset has no reversal rule: votes may move away from it after the interval.
    assert box.settle("r1", 720.0, 20.0, 24.0, setpoint_c=22.0).offset_k == -0.5


def test_the_offset_limit_is_kept() -> None:
    box = _box()
    for t in (0.0, 1.0):
        box.cast("r1", "hot", t)
    s = box.settle("r1", 10.0, 15.0, 30.0, -1.5, setpoint_c=22.0)
    assert (s.offset_k, s.moved) == (-1.5, False) and "the most votes may move it" in s.reason


def test_a_stale_offset_is_pulled_back_inside_a_narrower_band() -> None:
    s = _box().settle("r1", 0.0, 20.0, 24.0, 2.5, setpoint_c=23.0)
    assert (s.offset_k, s.moved) == (1.0, True) and "pulled back" in s.reason
    with pytest.raises(ValueError, match="outside its band"):
        _box().settle("r1", 0.0, 20.0, 24.0, 0.0, setpoint_c=25.0)


def test_reversal_needs_a_full_window() -> None:
    box = _box()
    box.cast("r1", "cold", 0.0)
    box.cast("r1", "cold", 1.0)
    assert _settle_at(box, 20.0, 0.0) == 0.5
    for t in (700.0, 710.0, 720.0):
        box.cast("r1", "hot", t)
    flip = box.settle("r1", 730.0, 20.0, 24.0, 0.5, setpoint_c=22.0)
    assert not flip.moved and "reverse" in flip.reason  # past the interval, not the window
    assert _settle_at(box, 920.0, 0.5) == 0.0  # a full window after the move


@settings(max_examples=200)
@given(
    events=st.lists(
        st.tuples(
            st.floats(0, 400, allow_nan=False),  # time since the previous event
            st.sampled_from(["hot", "cold", "settle"]),
        ),
        max_size=80,
    ),
    setpoint_c=st.floats(20.0, 24.0),
)
def test_votes_never_leave_the_band_nor_flap(
    events: list[tuple[float, str]], setpoint_c: float
) -> None:
    box = _box()
    now, offset = 0.0, 0.0
    moves: list[tuple[float, float]] = []  # (time, signed change)
    band = {"band_low_c": 20.0, "band_high_c": 24.0, "setpoint_c": setpoint_c}
    for dt, what in events:
        now += dt
        if what != "settle":
            result = box.cast("r1", what, now, **band)
            # Refused at cast time only when the zone has no room left that way.
            room = (24.0 - setpoint_c - offset) if what == "cold" else (setpoint_c + offset - 20.0)
            assert result.accepted or room <= 1e-9 or abs(offset) >= 1.5 - 1e-9
            continue
        new = box.settle("r1", now, 20.0, 24.0, offset, setpoint_c=setpoint_c).offset_k
        assert 20.0 - 1e-9 <= setpoint_c + new <= 24.0 + 1e-9
        assert abs(new) <= 1.5 + 1e-9
        if new != offset:
            moves.append((now, new - offset))
        offset = new
    for (t0, d0), (t1, d1) in itertools.pairwise(moves):
        assert t1 - t0 >= 600  # rate limit
        if d0 * d1 < 0:
            assert t1 - t0 >= 900  # reversal only after a full window


# --- the coordinator agent, on a fake clock ------------------------------------------------------

START = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)  # a Monday, 09:00 in Berlin
OFFICE_ZONES = [
    "f1-kitchen", "f1-meeting", "f1-open-office", "f1-reception",
    "f2-office-a", "f2-office-b", "f2-open-office",
]  # fmt: skip
SERVER = "f2-server"  # exempt by its policy


class RecordingBus:
    """A transport that keeps what is sent, so a test plays the zones."""

    def __init__(self) -> None:
        self.sent: list[Envelope] = []

    async def send(self, env: Envelope) -> None:
        self.sent.append(env)

    def subscribe(self, address: str, mailbox: Mailbox) -> None:
        return None

    def unsubscribe(self, address: str, mailbox: Mailbox) -> None:
        return None


@functools.cache
def demo_site() -> Site:
    return load_site(REPO)


class Coordinator:
    """A CoordinatorAgent on a fake clock with every zone's summary given."""

    def __init__(
        self,
        state_dir: Path | None = None,
        bands: dict[str, tuple[float, float]] | None = None,
        site: Site | None = None,
        start: datetime = START,
    ) -> None:
        self.clock = ManualClock(start)
        self.bus = RecordingBus()
        self.ctx = AgentContext(
            bus=self.bus,
            clock=self.clock,
            site=site or demo_site(),
            drivers=DriverContext(clock=self.clock),
        )
        self.agent = CoordinatorAgent(self.ctx, state_dir)
        self.bands = bands or {}
        for zone_id in self.ctx.site.zones:
            self.agent.take(self.summary(zone_id))

    def summary(self, zone_id: str) -> Envelope:
        heating, cooling = self.bands.get(zone_id, (21.0, 24.0))
        return ZoneStateMsg(
            zone_id=zone_id, mode="occupied", temperature_c=21.0, humidity_pct=40.0,
            occupied=True, illuminance_lux=300.0, heating_sp_c=heating, cooling_sp_c=cooling,
            light_level_pct=60.0, dehumidifier_on=False, timestamp=self.clock.now(),
            hvac_w=1000.0, lighting_w=200.0,
        ).envelope(Performative.INFORM, zone_address(zone_id), ZONE_STATE_TOPIC)  # fmt: skip

    def sent(self) -> list[Envelope]:
        """What the coordinator sent since last asked."""
        # The recording bus never waits, so the flush completes in its first step: no event
        # loop needed (a property test calls this thousands of times).
        flush = self.agent.flush()
        try:
            flush.send(None)
        except StopIteration:
            pass
        else:
            flush.close()
            raise AssertionError("the flush waited on something")
        out, self.bus.sent[:] = self.bus.sent[:], []
        return out

    def tick(self, dt: float = TICK_S) -> None:
        self.clock.t += dt
        self.agent.tick(self.clock.t)

    def run(self, conversation: str) -> DemandResponseRun:
        found = self.agent.negotiations.get(conversation) or next(
            r for r in self.agent.finished if r.negotiation.conversation_id == conversation
        )
        return found


def answer(
    to: Envelope,
    performative: Performative,
    content: dict[str, Any] | None = None,
    *,
    sender: str | None = None,
    in_reply_to: str | None = "same",
) -> Envelope:
    """A zone's answer to ``to`` (a cfp, an award or a cancel the coordinator sent)."""
    return Envelope(
        performative=performative,
        sender=sender or to.receiver,
        receiver=COORDINATOR,
        ontology=DemandResponseCall.ontology,
        content=content or {},
        conversation_id=to.conversation_id,
        in_reply_to=to.reply_with if in_reply_to == "same" else in_reply_to,
    )


def proposal(*offers: tuple[float, float, float, float]) -> dict[str, Any]:
    """Content of a propose: offers as (shift_k, dim_pct, shed_w, comfort_cost)."""
    return DemandResponseProposal(
        offers=[
            OfferMsg(level=str(Level(k, d)), shift_k=k, dim_pct=d, shed_w=w, comfort_cost=c)
            for k, d, w, c in offers
        ]
    ).model_dump(mode="json")


def of(envs: list[Envelope], performative: Performative) -> list[Envelope]:
    return [e for e in envs if e.performative is performative]


def open_event(c: Coordinator, target_w: float = 1000.0, window_s: float = 1800.0) -> str:
    return c.agent.open_demand_response(target_w, window_s, "test")


def collect(c: Coordinator, cfps: list[Envelope], shed_w: float = 200.0) -> None:
    """Every office zone proposes a 1 K shift shedding ``shed_w``; the server room refuses."""
    for cfp in cfps:
        if cfp.receiver == zone_address(SERVER):
            c.agent.take(answer(cfp, Performative.REFUSE, {"reason": "exempt by policy"}))
        else:
            c.agent.take(answer(cfp, Performative.PROPOSE, proposal((1.0, 0.0, shed_w, 1.0))))


def to_executing(c: Coordinator, target_w: float = 500.0) -> tuple[str, list[Envelope]]:
    """An event through its award to EXECUTING; returns the conversation and the awards."""
    conversation = open_event(c, target_w)
    collect(c, of(c.sent(), Performative.CFP))
    c.tick()
    awards = of(c.sent(), Performative.ACCEPT_PROPOSAL)
    for accept in awards:
        c.agent.take(answer(accept, Performative.INFORM_DONE, {"level": "shift-1K"}))
    c.tick()
    assert c.run(conversation).negotiation.state is S.EXECUTING
    return conversation, awards


def rejected_as(c: Coordinator, reason: str, env: Envelope) -> None:
    before = dict(c.agent.rejected)
    c.agent.take(env)
    assert c.agent.rejected[reason] == before.get(reason, 0) + 1, c.agent.rejected
    key = f'buildingd_negotiation_rejected_total{{agent="coordinator",reason="{reason}"}}'
    assert c.ctx.metrics.counters[key] == c.agent.rejected[reason]


def test_the_agent_runs_a_round_from_cfp_to_restore() -> None:
    c = Coordinator()
    conversation = open_event(c, target_w=500.0)
    cfps = of(c.sent(), Performative.CFP)
    assert {e.receiver for e in cfps} == {zone_address(z) for z in demo_site().zones}
    assert {e.reply_with for e in cfps} == {f"{conversation}.1"}
    collect(c, cfps)
    c.tick()
    out = c.sent()
    awards = of(out, Performative.ACCEPT_PROPOSAL)
    assert len(awards) == 3  # 3 x 200 W is the cheapest set meeting 500 W
    assert len(of(out, Performative.REJECT_PROPOSAL)) == 4
    ends_at = DemandResponseAward.model_validate(awards[0].content).ends_at
    assert ends_at == START + timedelta(seconds=1800)  # the window, fixed when the event opened
    for accept in awards:
        c.agent.take(answer(accept, Performative.INFORM_DONE, {"level": "shift-1K"}))
    c.tick()
    c.tick(1800)
    cancels = of(c.sent(), Performative.CANCEL)
    assert {e.receiver for e in cancels} == {e.receiver for e in awards}
    for cancel in cancels:
        c.agent.take(answer(cancel, Performative.INFORM_DONE, {"restored": True}))
    c.tick()
    run = c.run(conversation)
    assert [h[2] for h in run.negotiation.history] == [
        "collecting", "awarding", "executing", "restoring", "settled",
    ]  # fmt: skip
    assert not c.agent.rejected


# Out-of-order and forged messages: each state accepts only its own performatives, from the
# zones it concerns; anything else is rejected, logged and counted, and changes nothing.


def test_a_proposal_after_the_award_is_out_of_order(caplog: pytest.LogCaptureFixture) -> None:
    c = Coordinator()
    conversation = open_event(c, target_w=500.0)
    cfps = of(c.sent(), Performative.CFP)
    collect(c, cfps[1:])
    c.tick(31)  # reply_by passes: the first zone is silent, the round is awarded
    run = c.run(conversation)
    assert run.negotiation.state is S.AWARDING
    late = answer(cfps[0], Performative.PROPOSE, proposal((1.0, 0.0, 5000.0, 0.0)))
    with caplog.at_level(logging.WARNING, "buildingd.coordinator.demand_response"):
        rejected_as(c, "out_of_order", late)
    assert cfps[0].receiver.removeprefix("zone[").removesuffix("]") not in run.offers
    line = next(r.getMessage() for r in caplog.records if "rejected" in r.getMessage())
    assert conversation in line and cfps[0].receiver in line and "awarding" in line


def test_a_confirmation_before_any_award_is_out_of_order() -> None:
    c = Coordinator()
    open_event(c)
    cfp = of(c.sent(), Performative.CFP)[0]
    rejected_as(c, "out_of_order", answer(cfp, Performative.INFORM_DONE, {"level": "x"}))
    rejected_as(c, "out_of_order", answer(cfp, Performative.FAILURE, {"reason": "x"}))


def test_only_awarded_zones_may_confirm_or_withdraw() -> None:
    c = Coordinator()
    conversation, awards = to_executing(c)
    awarded = {e.receiver for e in awards}
    other = next(z for z in OFFICE_ZONES if zone_address(z) not in awarded)
    fake = answer(awards[0], Performative.FAILURE, {"reason": "x"}, sender=zone_address(other))
    rejected_as(c, "not_awarded", fake)
    restored = answer(awards[0], Performative.INFORM_DONE, {"restored": True}, sender="grid")
    rejected_as(c, "not_awarded", restored)
    run = c.run(conversation)
    assert set(run.awarded) == {e.receiver[5:-1] for e in awards}  # nothing withdrawn


def test_a_sender_that_was_not_asked_is_rejected() -> None:
    c = Coordinator()
    conversation = open_event(c)
    cfp = of(c.sent(), Performative.CFP)[0]
    offer = proposal((1.0, 0.0, 5000.0, 0.0))
    rejected_as(c, "not_invited", answer(cfp, Performative.PROPOSE, offer, sender="zone[nowhere]"))
    rejected_as(c, "not_invited", answer(cfp, Performative.PROPOSE, offer, sender="grid-operator"))
    assert not c.run(conversation).offers


def test_an_answer_to_an_earlier_round_is_stale() -> None:
    c = Coordinator()
    conversation = open_event(c, target_w=5000.0)
    first = of(c.sent(), Performative.CFP)
    collect(c, first, shed_w=100.0)  # 700 W: short of 5000 W, so a second round asks again
    c.tick()
    second = of(c.sent(), Performative.CFP)
    assert {e.reply_with for e in second} == {f"{conversation}.2"}
    assert zone_address(SERVER) not in {e.receiver for e in second}  # exempt: not asked twice
    stale = answer(first[1], Performative.PROPOSE, proposal((2.0, 0.0, 4000.0, 0.1)))
    rejected_as(c, "stale_round", stale)
    no_id = answer(second[1], Performative.PROPOSE, proposal((2.0, 0.0, 4000.0, 0.1)),
                   in_reply_to=None)  # fmt: skip
    rejected_as(c, "stale_round", no_id)
    assert not c.run(conversation).offers


def test_a_second_answer_in_the_same_round_is_a_duplicate() -> None:
    c = Coordinator()
    conversation = open_event(c)
    cfp = of(c.sent(), Performative.CFP)[0]
    c.agent.take(answer(cfp, Performative.PROPOSE, proposal((1.0, 0.0, 100.0, 1.0))))
    rejected_as(c, "duplicate", answer(cfp, Performative.PROPOSE, proposal((2, 0, 9000, 0))))
    rejected_as(c, "duplicate", answer(cfp, Performative.REFUSE, {"reason": "changed my mind"}))
    assert [o.shed_w for o in c.run(conversation).offers[cfp.receiver[5:-1]]] == [100.0]


def test_unknown_conversations_unexpected_acts_and_malformed_content_are_rejected() -> None:
    c = Coordinator()
    open_event(c)
    cfp = of(c.sent(), Performative.CFP)[0]
    ghost = cfp.model_copy(update={"conversation_id": "no-such-negotiation"})
    rejected_as(c, "unknown_conversation", answer(ghost, Performative.PROPOSE, proposal()))
    rejected_as(c, "unexpected_performative", answer(cfp, Performative.CFP, {}))
    rejected_as(c, "unexpected_performative", answer(cfp, Performative.ACCEPT_PROPOSAL, {}))
    bad = proposal((1.0, 0.0, 100.0, 1.0))
    bad["offers"][0]["shed_w"] = -5
    rejected_as(c, "malformed", answer(cfp, Performative.PROPOSE, bad))
    rejected_as(c, "malformed", answer(cfp, Performative.PROPOSE, {"offers": "lots"}))


def test_an_offer_outside_the_policy_is_never_awarded() -> None:
    # f1-reception reports heating at 12.5 degC: a 1 K shift would take it to 11.5, below its
    # safety band's 12; f1-kitchen offers 3 K, beyond its policy's 2 K; the server room is exempt.
    c = Coordinator(bands={"f1-reception": (12.5, 24.0)})
    conversation = open_event(c, target_w=300.0)
    cfps = {e.receiver[5:-1]: e for e in of(c.sent(), Performative.CFP)}
    cheap = {"f1-reception": (1.0, 0.0, 5000.0, 0.0), "f1-kitchen": (3.0, 0.0, 5000.0, 0.0),
             SERVER: (1.0, 0.0, 5000.0, 0.0), "f2-office-a": (1.0, 0.0, 400.0, 5.0)}  # fmt: skip
    for zone_id, cfp in cfps.items():
        c.agent.take(
            answer(cfp, Performative.PROPOSE, proposal(cheap.get(zone_id, (0.5, 0, 1, 9))))
        )
    c.tick()
    awarded = {e.receiver[5:-1] for e in of(c.sent(), Performative.ACCEPT_PROPOSAL)}
    assert awarded == {"f2-office-a"}
    assert c.agent.rejected["outside_limits"] == 3  # an exempt zone has nothing to offer
    assert c.run(conversation).negotiation.state is S.AWARDING


# Rounds and the clarification loop.


def test_a_short_round_asks_again_and_a_better_answer_meets_the_target() -> None:
    c = Coordinator()
    conversation = open_event(c, target_w=1000.0)
    collect(c, of(c.sent(), Performative.CFP), shed_w=100.0)  # 700 W
    c.tick()
    second = of(c.sent(), Performative.CFP)
    assert DemandResponseCall.model_validate(second[0].content).round == 2
    for cfp in second:  # vacant rooms now: each can shed more
        c.agent.take(answer(cfp, Performative.PROPOSE, proposal((1.0, 0.0, 250.0, 1.0))))
    c.tick()
    assert len(of(c.sent(), Performative.ACCEPT_PROPOSAL)) == 4
    run = c.run(conversation)
    assert (run.round, run.negotiation.state, run.committed_w) == (2, S.AWARDING, 1000.0)
    assert [h[2] for h in run.negotiation.history] == ["collecting", "open", "collecting",
                                                       "awarding"]  # fmt: skip
    assert not c.agent.open_escalations()


def test_a_round_answered_like_the_last_one_is_a_clarification_loop() -> None:
    c = Coordinator()
    conversation = open_event(c, target_w=5000.0)
    collect(c, of(c.sent(), Performative.CFP), shed_w=100.0)
    c.tick()
    collect(c, of(c.sent(), Performative.CFP), shed_w=100.0)  # the very same offers
    c.tick()
    out = c.sent()
    assert not of(out, Performative.CFP)  # no third round: it would be answered the same
    assert len(of(out, Performative.ACCEPT_PROPOSAL)) == 7  # safe outcome: shed what it can
    run = c.run(conversation)
    assert (run.round, run.committed_w, run.negotiation.state) == (2, 700.0, S.AWARDING)
    (alert,) = c.agent.open_escalations()
    assert "clarification loop" in alert.summary and "700 W of the 5000 W" in alert.summary


def test_rounds_stop_at_the_policy_limit() -> None:
    c = Coordinator()
    conversation = open_event(c, target_w=50_000.0)
    for shed in (100.0, 150.0, 200.0):  # better each time, never enough
        cfps = of(c.sent(), Performative.CFP)
        assert cfps
        collect(c, cfps, shed_w=shed)
        c.tick()
    run = c.run(conversation)
    assert run.round == run.max_rounds == 3
    assert not of(c.sent(), Performative.CFP)
    assert "after 3 of 3 rounds" in c.agent.open_escalations()[0].summary


def test_silent_zones_end_the_negotiation_within_its_rounds_and_deadline() -> None:
    c = Coordinator()
    conversation = open_event(c, target_w=1000.0)
    run = c.run(conversation)
    while not run.negotiation.over and c.clock.t <= run.negotiation.deadline_s + TICK_S:
        c.sent()  # nobody answers anything
        c.tick()
    n = run.negotiation
    assert n.state is S.FAILED  # nothing to award: failed, and a human is told
    assert run.round == 2  # round 2's silence repeated round 1's: a loop, not a third round
    assert n.history[-1][0] <= 2 * (30 + TICK_S)  # two reply windows, seen at a tick
    assert "0 W of the 1000 W" in n.reason
    assert len(c.agent.open_escalations()) == 1


# The property: any offers, any pattern of silence.


@dataclass(frozen=True)
class ZonePlan:
    rounds: list[tuple[str, list[tuple[float, float, int, float]]]]  # per round: (how, offers)
    confirm: str  # to an award: "confirm", "silent", "failure"
    restore: str  # to a cancel: "restore", "silent"
    heating_c: float


# (shift_k, dim_pct): 3 K and 60 % are beyond the demo policy's limits (2 K, 30 %).
_LEVELS = [(k, d) for k in (0.0, 0.5, 1.0, 2.0, 3.0) for d in (0.0, 30.0, 60.0) if k or d]
_plan_offer = st.builds(
    lambda level, shed, cost: (*level, shed, cost),
    st.sampled_from(_LEVELS),
    st.integers(1, 4000),
    st.sampled_from([0.0, 0.05, 0.5, 1.0, 4.0]),
)
_plan = st.builds(
    ZonePlan,
    rounds=st.lists(
        st.tuples(
            st.sampled_from(["propose", "refuse", "silent", "late", "repeat"]),
            st.lists(_plan_offer, min_size=1, max_size=2),
        ),
        min_size=3,
        max_size=3,
    ),
    confirm=st.sampled_from(["confirm", "silent", "failure"]),
    restore=st.sampled_from(["restore", "silent"]),
    heating_c=st.sampled_from([12.0, 12.6, 16.0, 21.0]),  # near 12 degC some shifts leave the band
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=st.fixed_dictionaries({z: _plan for z in [*OFFICE_ZONES, SERVER]}),
    target_w=st.floats(50, 20_000),
    window_s=st.sampled_from([60.0, 300.0, 1800.0]),
)
def test_any_offers_and_silence_end_within_rounds_and_deadline_inside_the_band(
    plans: dict[str, ZonePlan], target_w: float, window_s: float
) -> None:
    site = demo_site()
    c = Coordinator(bands={z: (p.heating_c, p.heating_c + 3.0) for z, p in plans.items()})
    conversation = open_event(c, target_w, window_s)
    run = c.run(conversation)
    n = run.negotiation
    pending: list[tuple[float, Envelope]] = []
    previous: dict[str, Any] = {}
    cfp_rounds: set[str] = set()
    accepted: dict[str, float] = {}  # zone -> when
    withdrawn: set[str] = set()
    cancelled: dict[str, float] = {}
    while True:
        now = c.clock.t
        for env in c.sent():
            zone_id = env.receiver[5:-1]
            plan = plans.get(zone_id)
            if plan is None or env.conversation_id != conversation:
                continue
            if env.performative is Performative.CFP:
                cfp_rounds.add(str(env.reply_with))
                how, offers = plan.rounds[DemandResponseCall.model_validate(env.content).round - 1]
                content: dict[str, Any] = proposal(*offers)
                if how == "repeat" and zone_id in previous:
                    how, content = "propose", previous[zone_id]
                previous[zone_id] = content
                if how == "refuse":
                    pending.append((now, answer(env, Performative.REFUSE, {"reason": "no"})))
                elif how in ("propose", "repeat"):
                    pending.append((now, answer(env, Performative.PROPOSE, content)))
                elif how == "late":  # after reply_by: out of order or stale by then
                    pending.append((now + 45, answer(env, Performative.PROPOSE, content)))
            elif env.performative is Performative.ACCEPT_PROPOSAL:
                award_ = DemandResponseAward.model_validate(env.content)
                policy = site.policy_for(zone_id)
                # No awarded setpoint leaves the policy: not exempt, within its limits, and the
                # shifted setpoints inside its safety band.
                assert not policy.negotiation.exempt
                assert award_.shift_k <= policy.negotiation.max_shift_k
                assert award_.dim_pct <= policy.negotiation.max_dim_pct
                assert plan.heating_c - award_.shift_k >= policy.safety.min_c
                assert plan.heating_c + 3.0 + award_.shift_k <= policy.safety.max_c
                assert award_.ends_at == START + timedelta(seconds=window_s)
                accepted[zone_id] = now
                if plan.confirm == "confirm":
                    pending.append((now, answer(env, Performative.INFORM_DONE, {"level": "x"})))
                elif plan.confirm == "failure":
                    withdrawn.add(zone_id)
                    pending.append((now, answer(env, Performative.FAILURE, {"reason": "no"})))
            elif env.performative is Performative.CANCEL:
                cancelled[zone_id] = now
                if plan.restore == "restore":
                    pending.append((now, answer(env, Performative.INFORM_DONE, {"restored": 1})))
        for item in [p for p in pending if p[0] <= now]:
            pending.remove(item)
            c.agent.take(item[1])
        if n.over:
            break
        assert now <= n.deadline_s + 2 * TICK_S, "the guardrail did not stop it"
        c.tick(5.0)
    # It ended within its rounds and its deadline (seen at the first tick past it) ...
    assert n.history[-1][0] <= n.deadline_s + TICK_S
    assert run.round <= run.max_rounds and len(cfp_rounds) == run.round
    assert n.turns <= n.max_turns + 1
    # ... and nobody stays shed: every zone awarded (that did not withdraw) was told to restore.
    for zone_id, when in accepted.items():
        assert zone_id in withdrawn or cancelled.get(zone_id, -1.0) >= when
    assert conversation not in c.agent.negotiations


# Commitments survive a restart: persisted on change, taken up again, never doubled.


def test_commitments_are_persisted_and_taken_up_after_a_restart(tmp_path: Path) -> None:
    first = Coordinator(state_dir=tmp_path)
    conversation, awards = to_executing(first)
    path = tmp_path / commitments.FILE_NAME
    saved = json.loads(path.read_text())
    (record,) = saved["commitments"]
    assert record["conversation_id"] == conversation
    assert record["ends_at"] == (START + timedelta(seconds=1800)).isoformat().replace("+00:00", "Z")
    assert set(record["awarded"]) == {e.receiver[5:-1] for e in awards}

    # The daemon restarts 10 minutes later: a new coordinator, a new monotonic clock.
    second = Coordinator(state_dir=tmp_path, start=START + timedelta(seconds=600))
    second.agent.resume_commitments(0.0)
    out = second.sent()
    assert not of(out, Performative.CFP)  # nothing negotiated, nothing awarded on top
    again = of(out, Performative.ACCEPT_PROPOSAL)
    assert {(e.receiver, e.conversation_id) for e in again} == {
        (e.receiver, conversation) for e in awards
    }
    assert {DemandResponseAward.model_validate(e.content).ends_at for e in again} == {
        START + timedelta(seconds=1800)
    }
    run = second.run(conversation)
    assert run.negotiation.state is S.EXECUTING and run.ends_s == 1200.0
    for accept in again:  # zones confirm again: accepted while executing
        second.agent.take(answer(accept, Performative.INFORM_DONE, {"level": "shift-1K"}))
    assert not second.agent.rejected
    second.tick(1200.0)
    cancels = of(second.sent(), Performative.CANCEL)
    assert {e.receiver for e in cancels} == {e.receiver for e in awards}
    assert json.loads(path.read_text())["commitments"] == []  # window over: nothing committed
    for cancel in cancels:
        second.agent.take(answer(cancel, Performative.INFORM_DONE, {"restored": True}))
    second.tick()
    assert run.negotiation.state is S.SETTLED


def test_an_ended_or_unreadable_commitment_is_not_taken_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Coordinator(state_dir=tmp_path)
    to_executing(first)
    late = Coordinator(state_dir=tmp_path, start=START + timedelta(hours=1))
    late.agent.resume_commitments(0.0)
    assert not late.sent() and not late.agent.negotiations
    assert json.loads((tmp_path / commitments.FILE_NAME).read_text())["commitments"] == []

    (tmp_path / commitments.FILE_NAME).write_text('{"version": 1, "commitments": [{"x": 1}]}')
    broken = Coordinator(state_dir=tmp_path)
    with caplog.at_level(logging.ERROR, "buildingd.statefile"):
        broken.agent.resume_commitments(0.0)
    assert f"{commitments.FILE_NAME} is unreadable" in caplog.text
    assert list(tmp_path.glob(f"{commitments.FILE_NAME}.corrupt-*"))  # kept for a human
    open_event(broken)  # and the coordinator goes on
    assert of(broken.sent(), Performative.CFP)


def test_nothing_is_sent_before_the_state_that_sent_it_is_durable(tmp_path: Path) -> None:
    """Write-ahead (a site whose coordinator can fail over): the calls for proposals go out
    only after ``office.durable`` has returned, and then the event is in the commitments file
    it mirrors; ``flush`` says when the state could not be made durable (the lease lost: the
    HTTP API then answers 503, not 202). Guards that a new leader knows of every cfp sent."""
    c = Coordinator(state_dir=tmp_path)
    c.sent()
    seen: list[tuple[int, list[str]]] = []
    durable = [True, False]

    async def make_durable() -> bool:
        kept = json.loads((tmp_path / "commitments.json").read_text())
        seen.append((len(c.bus.sent), [e["conversation_id"] for e in kept["opened"]]))
        return durable.pop(0)

    c.agent.office.durable = make_durable
    conversation = c.agent.open_demand_response(400.0, 600.0, "test")
    assert asyncio.run(c.agent.flush()) is True
    assert seen == [(0, [conversation])]  # nothing sent yet, the event already kept
    assert len(of(c.bus.sent, Performative.CFP)) == len(c.ctx.site.zones)
    c.agent.open_demand_response(300.0, 600.0, "lease lost before it was stored")
    assert asyncio.run(c.agent.flush()) is False


def test_a_scheduled_event_is_opened_once_even_across_a_restart(tmp_path: Path) -> None:
    site = demo_site()
    event = DemandResponseEvent(start=datetime(2026, 1, 12, 9, 0), duration_s=3600, target_w=500)
    site = replace(
        site, demand_response=site.demand_response.model_copy(update={"events": [event]})
    )
    first = Coordinator(state_dir=tmp_path, site=site)
    first.tick()
    cfps = of(first.sent(), Performative.CFP)
    assert len(cfps) == 8
    first.tick()
    assert not of(first.sent(), Performative.CFP)
    # Restarted inside the event's window before its award: not opened again as a new event,
    # but not forgotten either: the zones are asked again, once, in the same conversation and
    # a new round (an answer to the first round is stale).
    second = Coordinator(state_dir=tmp_path, site=site, start=START + timedelta(seconds=300))
    second.agent.resume_commitments(0.0)
    second.tick()
    again = of(second.sent(), Performative.CFP)
    assert sorted(e.receiver for e in again) == sorted(e.receiver for e in cfps)
    assert {(e.conversation_id, e.reply_with) for e in again} == {
        (cfps[0].conversation_id, f"{cfps[0].conversation_id}.2")
    }
    second.tick()
    assert not of(second.sent(), Performative.CFP)


# The zone's side: only the coordinator negotiates; an award ends by itself at ends_at.


def zone_agent(zone_id: str = "f1-meeting") -> tuple[ZoneAgent, ManualClock]:
    clock = ManualClock(START)
    ctx = AgentContext(
        bus=RecordingBus(), clock=clock, site=demo_site(), drivers=DriverContext(clock=clock)
    )
    return ZoneAgent(zone_id, ctx), clock


def award_env(ends_at: datetime, sender: str = COORDINATOR, shift_k: float = 1.0) -> Envelope:
    content = DemandResponseAward(level="shift-1K", shift_k=shift_k, dim_pct=0, ends_at=ends_at)
    return content.envelope(
        Performative.ACCEPT_PROPOSAL, sender, zone_address("f1-meeting"), conversation_id="c1"
    )


def test_a_zone_takes_negotiation_messages_from_the_coordinator_only() -> None:
    zone, _ = zone_agent()
    zone._handle(award_env(START + timedelta(hours=1), sender="zone[f1-kitchen]"))
    assert zone.state.adjustments.dr_shift_k == 0.0 and not zone.commitments
    counters = zone.ctx.metrics.counters
    assert counters['buildingd_negotiation_rejected_total{agent="zone",reason="not_coordinator"}']
    zone._handle(award_env(START + timedelta(hours=1), shift_k=4.0))  # beyond its 2 K
    assert zone.state.adjustments.dr_shift_k == 0.0
    assert zone._pending_replies[-1].performative is Performative.FAILURE


def test_a_zone_restores_by_itself_at_the_end_of_the_window() -> None:
    zone, clock = zone_agent()
    zone._handle(award_env(START + timedelta(seconds=600)))
    assert zone.state.adjustments.dr_shift_k == 1.0
    assert zone._pending_replies[-1].performative is Performative.INFORM_DONE
    zone._handle(award_env(START + timedelta(seconds=600)))  # told again: applied once
    assert zone.state.adjustments.dr_shift_k == 1.0 and len(zone.commitments) == 1
    clock.t = 599.0
    assert not zone.expire_commitments()
    clock.t = 600.0  # no cancel came (the coordinator is gone): the zone restores itself
    assert zone.expire_commitments()
    assert zone.state.adjustments.dr_shift_k == 0.0 and not zone.commitments
    zone._handle(award_env(START + timedelta(seconds=300)))  # a window already over
    assert zone.state.adjustments.dr_shift_k == 0.0
    assert zone._pending_replies[-1].content["reason"] == "the window is already over"


def test_a_zones_confirmations_pass_the_bus_content_check() -> None:
    # Between gateways every envelope's content is checked against its ontology's models before
    # an agent sees it: a confirmation no model accepts would be dropped and no award confirmed.
    from buildingd.agents.content_check import content_problem

    zone, _ = zone_agent()
    award = award_env(START + timedelta(hours=1))
    zone._handle(award)
    applied = zone._pending_replies[-1]
    assert applied.performative is Performative.INFORM_DONE
    assert content_problem(applied) is None and applied.content["level"] == "shift-1K"
    cancel = award.model_copy(update={"performative": Performative.CANCEL, "content": {}})
    zone._handle(cancel)
    restored = zone._pending_replies[-1]
    assert restored.performative is Performative.INFORM_DONE
    assert content_problem(restored) is None and restored.content["restored"] is True


def test_the_building_meter_over_its_cap_opens_one_event_for_the_excess() -> None:
    from buildingd.agents.messages import ReadingMsg, readings_topic
    from buildingd.points import PointKind, Quality

    site = demo_site()
    dr = site.demand_response.model_copy(update={"power_cap_w": 5000.0, "meter": "main.power"})
    c = Coordinator(site=replace(site, demand_response=dr))

    def meter(watts: float, device: str = "main", quality: Quality = Quality.GOOD) -> None:
        c.agent.take(
            ReadingMsg(
                device_id=device, point_id="power", zone_id=None, kind=PointKind.POWER,
                unit="W", value=watts, quality=quality, timestamp=c.clock.now(),
            ).envelope(Performative.INFORM, f"device[{device}]", readings_topic(None))
        )  # fmt: skip

    meter(4800.0)
    c.tick()
    assert not of(c.sent(), Performative.CFP)  # under the cap
    meter(9000.0, device="sub-meter")  # not the building meter the policy names
    meter(7000.0, quality=Quality.STALE)  # not usable
    c.tick()
    assert not of(c.sent(), Performative.CFP)
    meter(6200.0)
    c.tick()
    cfps = of(c.sent(), Performative.CFP)
    assert len(cfps) == 8  # every zone asked
    assert DemandResponseCall.parse(cfps[0]).target_w == pytest.approx(1200.0)  # the excess
    c.tick()
    assert not of(c.sent(), Performative.CFP)  # one event at a time, not one per tick
