"""What the negotiation's fast path must not change (issue 18): a zone answers a cfp with the
offers its last decision worked out, kept only while what they are made of is the same; the
content of what is made once and shared (a zone's proposal, a round's awards, a confirmation) is
what a receiver behind a broker gets too; and what was refused in process or from outside is
still refused on both paths."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

from buildingd.agents.bus import Envelope, Performative
from buildingd.agents.content_check import checked_content
from buildingd.agents.messages import (
    COORDINATOR,
    DemandResponseAward,
    DemandResponseCall,
    DemandResponseDone,
    DemandResponseProposal,
    ReadingMsg,
    readings_topic,
    zone_address,
)
from buildingd.agents.zone import ZoneAgent
from buildingd.control.frozen import replace
from buildingd.control.zone import Band
from buildingd.points import PointKind, Quality
from tests.test_coordinator_logic import (
    SERVER,
    START,
    Coordinator,
    answer,
    demo_site,
    of,
    open_event,
    proposal,
    zone_agent,
)
from tests.test_message_trust import from_outside

ZONE = "f1-meeting"


def read(zone: ZoneAgent, kind: PointKind, value: float) -> None:
    msg = ReadingMsg(device_id="test", point_id=kind.value, zone_id=zone.zone_id, kind=kind,
                     unit="", value=value, quality=Quality.GOOD, timestamp=START)  # fmt: skip
    zone._handle(msg.envelope(Performative.INFORM, "device[test]", readings_topic(zone.zone_id)))


def cfp(zone: ZoneAgent) -> Envelope:
    """The zone's answer to a call for proposals."""
    call = DemandResponseCall(target_w=1000.0, window_s=1800.0, reason="test")
    env = call.envelope(Performative.CFP, COORDINATOR, zone.name, conversation_id="c1",
                        reply_with="c1.1")  # fmt: skip
    reply = zone._demand_response(env)
    assert reply is not None
    return reply


def worked_out_now(zone: ZoneAgent) -> list[dict[str, Any]]:
    """The offers the zone would propose if it worked them out afresh."""
    return [{"level": str(o.level), "shed_w": round(o.shed_w, 1)} for o in zone._work_out_offers()]


def proposed(reply: Envelope) -> list[dict[str, Any]]:
    return [{"level": o["level"], "shed_w": o["shed_w"]} for o in reply.content["offers"]]


def test_a_zones_answer_follows_its_inputs_decision_state_and_site() -> None:
    """Guards the kept offers: each step changes one thing the offers are made of and checks the
    answer against offers worked out afresh. Fails when the kept offers ignore any of the four
    (checked: each left out of ``made_of`` in turn fails its step)."""
    zone, clock = zone_agent(ZONE)
    read(zone, PointKind.OCCUPANCY, 1.0)
    read(zone, PointKind.TEMPERATURE, 20.5)  # below the occupied band (21-24 degC): heating
    asyncio.run(zone.control(clock.t))
    first = cfp(zone)
    assert first.performative is Performative.PROPOSE and proposed(first) == worked_out_now(zone)
    again = cfp(zone)  # nothing changed: the same answer, its model shared
    assert proposed(again) == proposed(first)
    assert DemandResponseProposal.parse(again) is DemandResponseProposal.parse(first)

    read(zone, PointKind.TEMPERATURE, 20.2)  # inputs: further from the band, more to shed
    colder = cfp(zone)
    assert proposed(colder) == worked_out_now(zone) != proposed(first)

    assert zone.decision is not None  # decision: a band 1 K lower, nothing to heat
    zone.decision = replace(zone.decision, band=Band(heating_c=20.0, cooling_c=24.0))
    lower = cfp(zone)
    assert proposed(lower) == worked_out_now(zone) != proposed(colder)

    zone.state = replace(zone.state, light_level_pct=0.0)  # state: lights off, nothing to dim
    dark = cfp(zone)
    assert proposed(dark) == worked_out_now(zone) != proposed(lower)
    assert not any("dim" in o["level"] for o in proposed(dark))

    site = demo_site()  # site: a reload puts the zone under the server room's exempt policy
    exempt = dict(site.zone_policy, **{ZONE: site.zone_policy[SERVER]})
    zone.ctx.site = dataclasses.replace(site, zone_policy=exempt)
    refused = cfp(zone)
    assert refused.performative is Performative.REFUSE
    assert refused.content["reason"] == "exempt by policy"


def test_what_is_made_once_and_shared_is_what_a_broker_carries() -> None:
    """Guards the JSON forms made once and shared (a proposal built from its JSON form, the
    awards and confirmations per level): each is its model's own dump, so a receiver behind a
    broker validates the same content into an equal model. Fails when a hand-built form leaves
    out a field (checked: the proposal without its empty ``reason``)."""
    zone, clock = zone_agent(ZONE)
    read(zone, PointKind.OCCUPANCY, 1.0)
    read(zone, PointKind.TEMPERATURE, 19.0)
    asyncio.run(zone.control(clock.t))
    c = Coordinator()
    open_event(c, target_w=500.0)  # two zones' offers: two awards of one level, five rejections
    for call in of(c.sent(), Performative.CFP):  # every zone but the server offers 1 K
        if call.receiver == zone_address(SERVER):
            c.agent.take(answer(call, Performative.REFUSE, {"reason": "exempt by policy"}))
        else:
            c.agent.take(answer(call, Performative.PROPOSE, proposal((1.0, 0.0, 300.0, 1.0))))
    c.tick()
    sent = c.sent()
    awards = of(sent, Performative.ACCEPT_PROPOSAL)
    rejections = of(sent, Performative.REJECT_PROPOSAL)
    assert awards and rejections
    zone._handle(awards[0].model_copy(update={"receiver": zone.name}))
    done = zone._pending_replies[-1]
    shared = [cfp(zone), awards[0], rejections[0], done]
    for env in shared:
        content, problem = checked_content(from_outside(env))
        assert problem is None
        assert env.content == env._model.model_dump(mode="json")
        assert content == env._model
    assert DemandResponseAward.parse(awards[1]) is DemandResponseAward.parse(awards[0])
    assert DemandResponseDone.parse(done).level == "shift-1K"


def test_an_award_a_zone_cannot_apply_is_refused_on_both_paths() -> None:
    """Issue 18 asks that trusted and untrusted paths still refuse what they refused: an award
    shared by many zones (one model per level) is checked by each zone against its own policy,
    whether it comes with its model (in process) or as JSON (from a broker). Fails if a zone
    took an award's attached model as already checked (checked: ``_refuse_award`` skipped for
    an award with its model attached)."""
    ends_at = START + timedelta(hours=1)
    beyond = DemandResponseAward(level="shift-4K", shift_k=4.0, dim_pct=0.0, ends_at=ends_at)
    env = beyond.envelope(Performative.ACCEPT_PROPOSAL, COORDINATOR, zone_address(ZONE),
                          conversation_id="c1")  # fmt: skip
    for path in (env, from_outside(env)):
        zone, _ = zone_agent(ZONE)
        zone._handle(path)
        reply = zone._pending_replies[-1]
        assert reply.performative is Performative.FAILURE
        assert reply.content["reason"] == "outside policy limits"
        assert zone.state.adjustments.dr_shift_k == 0.0 and not zone.commitments
        forged = path.model_copy(update={"sender": "zone[f1-kitchen]"})
        zone._handle(forged)
        assert len(zone._pending_replies) == 1 and not zone.commitments


def test_an_offer_outside_the_policy_is_rejected_on_both_paths() -> None:
    """The coordinator's side: an offer beyond the zone's policy (3 K where it allows 2 K) is
    rejected and never awarded whether the proposal comes with its model (in process) or as
    JSON; one beyond what any model allows (6 K) cannot be made in process and is rejected as
    malformed from outside."""
    for outside in (False, True):
        c = Coordinator()
        conversation = open_event(c, target_w=100.0)
        calls = {e.receiver: e for e in of(c.sent(), Performative.CFP)}
        kitchen = calls.pop(zone_address("f1-kitchen"))
        offer = DemandResponseProposal.model_validate(proposal((3.0, 0.0, 5000.0, 0.0)))
        env = offer.envelope(Performative.PROPOSE, kitchen.receiver, COORDINATOR,
                             conversation_id=kitchen.conversation_id,
                             in_reply_to=kitchen.reply_with)  # fmt: skip
        c.agent.take(from_outside(env) if outside else env)
        for receiver, call in calls.items():
            if receiver == zone_address(SERVER):
                c.agent.take(answer(call, Performative.REFUSE, {"reason": "exempt by policy"}))
            else:
                c.agent.take(answer(call, Performative.PROPOSE, proposal((1.0, 0.0, 50.0, 9.0))))
        c.tick()
        awarded = {e.receiver for e in of(c.sent(), Performative.ACCEPT_PROPOSAL)}
        assert zone_address("f1-kitchen") not in awarded and awarded
        assert c.agent.rejected["outside_limits"] == 1
        assert c.run(conversation).negotiation.state.value == "awarding"
    c = Coordinator()
    open_event(c)
    call = of(c.sent(), Performative.CFP)[0]
    too_far = proposal((1.0, 0.0, 50.0, 1.0))
    too_far["offers"][0]["shift_k"] = 6.0
    c.agent.take(answer(call, Performative.PROPOSE, too_far))
    assert c.agent.rejected["malformed"] == 1
