"""The coordinator's desks alone, without the agent or an event loop: each is given messages and
the time, and what it queued in the office's outbox is what it decided (break-glass, air-handler
resets, votes and overrides, demand response). The agent-level behaviour is in
test_coordinator_logic.py, test_static_pressure.py and test_escalation_daemon.py."""

from __future__ import annotations

import functools
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from buildingd.agents.bus import Envelope, InProcessBus, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    ALERTS_TOPIC,
    TELEMETRY,
    AdjustmentsMsg,
    AlertMsg,
    CommandMsg,
    CommandResultMsg,
    DemandResponseCall,
    EventMsg,
    ZoneStateMsg,
    zone_address,
)
from buildingd.config.loader import Site, load_site
from buildingd.coordinator import alerts_file, commitments
from buildingd.coordinator.air_handlers import STATIC_PRESSURE, SUPPLY_AIR, AirHandlerDesk
from buildingd.coordinator.break_glass import BreakGlassDesk
from buildingd.coordinator.demand_response import DemandResponseDesk
from buildingd.coordinator.escalation import BUILDING, Cause, IncidentKey
from buildingd.coordinator.negotiation import NegotiationState
from buildingd.coordinator.occupants import VOTE_MIN_INTERVAL_S, OccupantDesk
from buildingd.coordinator.office import Office
from buildingd.drivers.base import DriverContext
from buildingd.errors import RequestRefusedError
from buildingd.points import PointKind
from tests.conftest import REPO, ManualClock
from tests.test_coordinator_logic import answer, proposal

START = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)  # a Monday, 09:00 in Berlin


@functools.cache
def demo_site() -> Site:
    return load_site(REPO)


def office(site: Site | None = None, start: datetime = START) -> Office:
    clock = ManualClock(start)
    ctx = AgentContext(
        bus=InProcessBus(), clock=clock, site=site or demo_site(), drivers=DriverContext(clock)
    )
    return Office(ctx)


def clock_of(o: Office) -> ManualClock:
    assert isinstance(o.ctx.clock, ManualClock)
    return o.ctx.clock


def taken(o: Office) -> list[Envelope]:
    """What the desks queued since last asked."""
    out, o.outbox[:] = o.outbox[:], []
    return out


def alerts(envs: list[Envelope]) -> list[tuple[str, list[str]]]:
    """(action, subjects) of each alert message queued."""
    got: list[tuple[str, list[str]]] = []
    for env in envs:
        if env.receiver == ALERTS_TOPIC:
            msg = AlertMsg.parse(env)
            got.append((msg.action, sorted(msg.subjects)))
    return got


def zone_state(
    zone_id: str, temperature_c: float | None = 22.0, pressure_requests: int = 0, **kw: Any
) -> ZoneStateMsg:
    fields: dict[str, Any] = {
        "zone_id": zone_id, "mode": "occupied", "temperature_c": temperature_c,
        "humidity_pct": 40.0, "occupied": True, "illuminance_lux": 300.0, "heating_sp_c": 21.0,
        "cooling_sp_c": 24.0, "light_level_pct": 60.0, "dehumidifier_on": False,
        "timestamp": START, "hvac_w": 1000.0, "lighting_w": 200.0,
        "pressure_requests": pressure_requests,
    }  # fmt: skip
    return ZoneStateMsg.model_validate(fields | kw)


def event(source: str, severity: str, message: str, kind: str = "availability") -> EventMsg:
    return EventMsg(kind=kind, source=source, severity=severity, message=message, timestamp=START)


def run(o: Office, desk: Any, seconds: float, step_s: float = 10.0) -> None:
    clock = clock_of(o)
    end = clock.t + seconds
    while clock.t < end:
        clock.t += step_s
        desk.tick(clock.t)


# --- break-glass ---------------------------------------------------------------------------------


def test_a_shortfall_alert_clears_only_for_a_negotiation_opened_after_it() -> None:
    o = office()
    desk = BreakGlassDesk(o)
    clock_of(o).t = 100.0
    desk.escalate("demand response c1: zones can shed only 0 W", 100.0, ref="c1")
    assert alerts(taken(o)) == [("raised", [BUILDING])]
    desk.negotiation_met("c0", opened_s=50.0)  # opened before the shortfall: says nothing
    run(o, desk, 10)
    assert alerts(taken(o)) == [] and desk.incidents()
    desk.negotiation_met("c2", opened_s=105.0)
    run(o, desk, 10)
    assert alerts(taken(o)) == [("cleared", [BUILDING])]
    (cleared,) = desk.book.history
    assert cleared.cleared_by == "negotiation c2 met its target"
    assert desk.incidents() == []


def test_telemetry_down_alerts_after_the_policy_limit_and_clears_when_delivered() -> None:
    o = office()
    desk = BreakGlassDesk(o)
    desk.event(event(TELEMETRY, "warning", "telemetry unavailable: connection refused"))
    run(o, desk, 890)
    assert alerts(taken(o)) == []  # device_unavailable_s is 900 in every demo policy
    run(o, desk, 20)
    assert alerts(taken(o)) == [("raised", [TELEMETRY])]
    (incident,) = desk.incidents()
    assert incident.cause is Cause.TELEMETRY_DOWN and "connection refused" in incident.summary
    desk.event(event(TELEMETRY, "info", "telemetry delivered again"))
    assert alerts(taken(o)) == [("cleared", [TELEMETRY])]


def test_another_gateways_device_is_not_watched() -> None:
    o = office()
    desk = BreakGlassDesk(o)
    desk.event(event("device[elsewhere]", "warning", "device elsewhere unavailable: timeout"))
    run(o, desk, 3600)
    assert alerts(taken(o)) == [] and desk.book.conditions(Cause.DEVICE_DOWN) == {}


def test_open_alerts_and_their_acknowledgement_are_kept_across_a_restart(tmp_path: Path) -> None:
    first_office = office()
    first = BreakGlassDesk(first_office, tmp_path)
    failed = "agent telemetry stopped after too many restarts: OSError"
    first.event(event("supervisor", "error", failed, kind="agent-failed"))
    (incident,) = first.incidents()
    assert first.acknowledge(incident.id, "Jo")
    saved = json.loads((tmp_path / alerts_file.FILE_NAME).read_text())
    assert [(a["id"], a["acknowledged_by"]) for a in saved["alerts"]] == [(incident.id, "Jo")]

    later = office(start=START + timedelta(hours=1))
    second = BreakGlassDesk(later, tmp_path)
    second.resume(0.0)
    (again,) = second.incidents()
    assert (again.id, again.key, again.acknowledged_by) == (incident.id, incident.key, "Jo")
    assert second.open_escalations() == []  # acknowledged: nobody is paged again
    assert alerts(taken(later)) == []  # taken up, not raised a second time
    run(later, second, 7200)
    assert alerts(taken(later)) == []  # and no reminders for an acknowledged alert


def test_an_unreadable_alerts_file_is_set_aside_counted_and_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / alerts_file.FILE_NAME).write_text('{"version": 1, "alerts": [{"id": 1}]}')
    o = office()
    desk = BreakGlassDesk(o, tmp_path)
    with caplog.at_level(logging.ERROR, "buildingd.statefile"):
        desk.resume(0.0)
    assert f"{alerts_file.FILE_NAME} is unreadable" in caplog.text
    assert list(tmp_path.glob(f"{alerts_file.FILE_NAME}.corrupt-*"))
    counted = f'buildingd_state_files_set_aside_total{{file="{alerts_file.FILE_NAME}"}}'
    assert o.metrics.counters[counted] == 1
    (told,) = [EventMsg.parse(e) for e in taken(o)]
    assert told.kind == "state-file" and told.severity == "error"
    desk.escalate("still works", 1.0, subject="x", cause=Cause.AGENT_FAILED)
    assert desk.book.open_for(IncidentKey("x", Cause.AGENT_FAILED)) is not None


# --- air-handler resets -------------------------------------------------------------------------


def writes(envs: list[Envelope]) -> list[tuple[str, float]]:
    """(point, value) of each setpoint write queued, checking each names its requests."""
    got = []
    for env in envs:
        cmd = CommandMsg.parse(env)
        assert env.receiver == "device[ahu1-controller]" and "requests" in cmd.reason
        got.append((cmd.point_id, cmd.value))
    return got


def air_desk(zones: dict[str, ZoneStateMsg]) -> tuple[Office, AirHandlerDesk]:
    o = office()
    o.ctx.ready_s = 0.0
    o.zones.update(zones)
    desk = AirHandlerDesk(o)
    desk.start(0.0)
    return o, desk


def test_both_resets_run_in_one_loop_from_their_own_requests() -> None:
    # Three zones of ahu1 are 4 K above their cooling setpoint (24 degC) and report 2 duct
    # static pressure requests each; the server room, on no air handler, is hotter still.
    hot = {z: zone_state(z, 28.0, 2) for z in ("f1-meeting", "f1-kitchen", "f2-office-a")}
    o, desk = air_desk(hot | {"f2-server": zone_state("f2-server", 35.0, 9)})
    sat, duct = desk.loops(SUPPLY_AIR)["ahu1"], desk.loops(STATIC_PRESSURE)["ahu1"]
    run(o, desk, 10)
    assert writes(taken(o)) == [("sat_sp", sat.params.sp0), ("duct_sp", duct.params.sp0)]
    run(o, desk, 710)  # to Td + T: the first step of each
    # G36: R = 3 zones x 3 cooling requests (held more than 2 min) and 3 x 2 static pressure
    # requests; I = 2; the response is capped at SPres_max and added to the trim.
    p, q = sat.params, duct.params
    expected_sat = p.sp0 + p.trim + max(p.respond * (9 - p.ignored), p.respond_max)
    expected_duct = q.sp0 + q.trim + min(q.respond * (6 - q.ignored), q.respond_max)
    points, values = zip(*writes(taken(o)), strict=True)
    assert points == ("sat_sp", "duct_sp")
    assert values == pytest.approx((expected_sat, expected_duct))


def test_a_zone_hot_for_less_than_two_minutes_sends_one_cooling_request() -> None:
    o, desk = air_desk({})
    run(o, desk, 600)  # through the delay at SP0
    taken(o)
    zones = ("f1-meeting", "f1-kitchen", "f2-office-a")
    o.zones.update({z: zone_state(z, 28.0) for z in zones})  # hot only from now
    run(o, desk, 120)  # seen hot at 610 s, 110 s by the step at Td + T: only the loop request
    p = desk.loops(SUPPLY_AIR)["ahu1"].params
    (value,) = [v for point, v in writes(taken(o)) if point == "sat_sp"]
    assert value == pytest.approx(p.sp0 + p.trim + p.respond * (3 - p.ignored))


def test_a_refused_write_is_sent_again_for_that_setpoint_only() -> None:
    o, desk = air_desk({})
    run(o, desk, 10)
    assert len(writes(taken(o))) == 2
    desk.refused(
        CommandResultMsg(
            device_id="ahu1-controller",
            point_id="sat_sp",
            zone_id=None,
            kind=PointKind.SUPPLY_AIR_TEMPERATURE_SETPOINT,
            value=18.0,
            read_back=None,
            ok=False,
            reason="write failed",
            error="timeout",
            timestamp=START,
        )  # fmt: skip
    )
    run(o, desk, 10)
    assert writes(taken(o)) == [("sat_sp", 18.0)]
    run(o, desk, 10)
    assert writes(taken(o)) == []


def test_no_reset_writes_before_every_agent_has_started() -> None:
    o, desk = air_desk({})
    o.ctx.ready_s = None
    run(o, desk, 1800)
    assert taken(o) == []


# --- occupants: votes and overrides --------------------------------------------------------------


def adjustments(envs: list[Envelope]) -> list[tuple[str, dict[str, Any]]]:
    """(zone address, the adjustments set) of each message queued."""
    return [
        (e.receiver, AdjustmentsMsg.parse(e).model_dump(exclude_none=True, mode="json"))
        for e in envs
    ]


def test_two_cold_votes_warm_the_zone_one_step_at_the_next_tick_and_no_faster() -> None:
    o = office()
    o.zones["f1-meeting"] = zone_state("f1-meeting")
    desk = OccupantDesk(o)
    step_k = o.site.policy_for("f1-meeting").negotiation.vote_step_k
    assert desk.vote("f1-meeting", "cold").accepted
    run(o, desk, 10)
    assert adjustments(taken(o)) == []  # one vote is no majority
    assert desk.vote("f1-meeting", "cold").accepted
    assert taken(o) == []  # a vote is counted, the zone moves only when the desk settles
    run(o, desk, 10)
    assert adjustments(taken(o)) == [("zone[f1-meeting]", {"vote_offset_k": step_k})]
    moved_s = clock_of(o).t
    run(o, desk, 400)
    desk.vote("f1-meeting", "cold")
    desk.vote("f1-meeting", "cold")
    run(o, desk, moved_s + VOTE_MIN_INTERVAL_S - clock_of(o).t - 10)
    assert adjustments(taken(o)) == []  # rate limited
    run(o, desk, 10)
    assert adjustments(taken(o)) == [("zone[f1-meeting]", {"vote_offset_k": 2 * step_k})]


def test_a_refused_override_sends_nothing_and_is_counted() -> None:
    o = office()
    o.zones["f1-meeting"] = zone_state("f1-meeting")  # heating 21, cooling 24 degC
    desk = OccupantDesk(o)
    limit_k = o.site.policy_for("f1-meeting").negotiation.vote_max_offset_k
    too_far = desk.override("f1-meeting", "heating_sp", 21.0 + limit_k + 0.5, source="http")
    assert too_far == {
        "accepted": False,
        "reason": f"more than {limit_k} K from the scheduled band",
    }
    unknown = desk.override("nowhere", "heating_sp", 21.0, source="mqtt")
    assert not unknown["accepted"]
    assert taken(o) == []
    counters = o.metrics.counters
    assert counters['buildingd_requests_refused_total{kind="override",source="http"}'] == 1
    assert counters['buildingd_requests_refused_total{kind="override",source="mqtt"}'] == 1
    ok = desk.override("f1-meeting", "heating_sp", 21.5)
    assert ok["accepted"] and adjustments(taken(o)) == [
        ("zone[f1-meeting]", {"vote_offset_k": 0.5})
    ]
    assert desk.votes.offset("f1-meeting") == 0.5  # votes start from the setpoint set by hand


def test_a_mode_set_by_hand_lasts_the_policys_time_and_schedule_ends_it() -> None:
    o = office()
    o.zones["f1-meeting"] = zone_state("f1-meeting")
    desk = OccupantDesk(o)
    hold_s = o.site.policy_for("f1-meeting").negotiation.mode_override_s
    assert desk.override_mode("f1-meeting", "standby")["accepted"]
    until = (START + timedelta(seconds=hold_s)).isoformat().replace("+00:00", "Z")
    assert adjustments(taken(o)) == [
        ("zone[f1-meeting]", {"mode_override": "standby", "mode_until": until})
    ]
    assert desk.override_mode("f1-meeting", "schedule")["accepted"]
    (sent,) = adjustments(taken(o))
    assert sent[1]["mode_override"] == ""
    refused = desk.override_mode("f1-meeting", "party")
    assert not refused["accepted"] and taken(o) == []
    o.zones["f1-meeting"] = zone_state("f1-meeting", mode="hold")
    assert "safe hold" in str(desk.override_mode("f1-meeting", "occupied")["reason"])


# --- demand response -----------------------------------------------------------------------------


class Alarm:
    """The break-glass desk's side of the seam, recorded."""

    def __init__(self) -> None:
        self.raised: list[tuple[str, str, str | None]] = []  # (message, tried, ref)
        self.met: list[tuple[str, float]] = []

    def escalate(
        self, message: str, now_s: float, *, tried: str = "", left_state: str = "",
        ref: str | None = None,
    ) -> object:  # fmt: skip
        self.raised.append((message, tried, ref))
        return None

    def negotiation_met(self, conversation_id: str, opened_s: float) -> None:
        self.met.append((conversation_id, opened_s))


def dr_desk(state_dir: Path | None = None) -> tuple[Office, DemandResponseDesk, Alarm]:
    o = office()
    alarm = Alarm()
    return o, DemandResponseDesk(o, alarm, state_dir), alarm


def sent(o: Office, performative: Performative) -> list[Envelope]:
    return [e for e in taken(o) if e.performative is performative]


def test_a_negotiation_that_meets_its_target_tells_break_glass_when_it_settles() -> None:
    o, desk, alarm = dr_desk()
    clock_of(o).t = 5.0
    conversation = desk.open(400.0, 600.0, "test")
    cfps = sent(o, Performative.CFP)
    assert len(cfps) == len(o.site.zones)
    for cfp in cfps[:2]:
        desk.reply(answer(cfp, Performative.PROPOSE, proposal((1.0, 0.0, 200.0, 1.0))))
    run(o, desk, 40)  # the others are silent: refusals at reply_by
    awards = sent(o, Performative.ACCEPT_PROPOSAL)
    assert {e.receiver for e in awards} == {e.receiver for e in cfps[:2]}
    for accept in awards:
        desk.reply(answer(accept, Performative.INFORM_DONE, {"level": "shift-1K"}))
    run(o, desk, 600)
    for cancel in sent(o, Performative.CANCEL):
        desk.reply(answer(cancel, Performative.INFORM_DONE, {"restored": True}))
    run(o, desk, 10)
    (done,) = desk.finished
    assert done.negotiation.state is NegotiationState.SETTLED
    assert alarm.raised == [] and alarm.met == [(conversation, 5.0)]


def test_a_shortfall_is_told_to_break_glass_with_what_was_tried() -> None:
    o, desk, alarm = dr_desk()
    conversation = desk.open(5000.0, 600.0, "grid operator")
    cfps = sent(o, Performative.CFP)
    first, second = cfps[0].receiver, cfps[1].receiver
    rounds = 0
    while cfps:  # each round one zone offers 300 W, one refuses, the others stay silent
        rounds += 1
        by_zone = {e.receiver: e for e in cfps}
        offer = proposal((1.0, 0.0, 300.0, 1.0))
        desk.reply(answer(by_zone[first], Performative.PROPOSE, offer))
        desk.reply(answer(by_zone[second], Performative.REFUSE, {"reason": "too warm already"}))
        run(o, desk, 40)
        cfps = sent(o, Performative.CFP)
    assert rounds == 2  # round 2 was answered like round 1: a clarification loop
    (message, tried, ref) = alarm.raised[0]
    assert ref == conversation and "300 W of the 5000 W" in message
    assert "1 offered" in tried and "too warm already" in tried
    assert alarm.met == []


def test_a_request_beyond_the_site_limits_is_refused_counted_and_opens_nothing() -> None:
    o, desk, _ = dr_desk()
    limit_w = o.site.demand_response.max_target_w
    with pytest.raises(RequestRefusedError):
        desk.request(DemandResponseCall(target_w=limit_w * 2, window_s=600, reason="x"), "mqtt")
    assert taken(o) == [] and desk.negotiations == {}
    counted = 'buildingd_requests_refused_total{kind="demand-response",source="mqtt"}'
    assert o.metrics.counters[counted] == 1


def test_only_awards_in_force_are_kept() -> None:
    o, desk, _ = dr_desk()
    desk.open(400.0, 600.0, "kept")
    cfps = sent(o, Performative.CFP)
    desk.reply(answer(cfps[0], Performative.PROPOSE, proposal((1.0, 0.0, 500.0, 1.0))))
    desk.open(400.0, 600.0, "still collecting")
    run(o, desk, 40)
    kept = commitments.to_file([*desk.negotiations.values(), *desk.finished], ["k1"])
    assert [c.reason for c in kept.commitments] == ["kept"]
    assert list(kept.commitments[0].awarded) == [cfps[0].receiver[5:-1]]
    assert kept.scheduled_started == ["k1"]


def test_a_new_coordinator_asks_again_for_events_not_awarded_and_never_doubles_an_award(
    tmp_path: Path,
) -> None:
    """A coordinator stops (restart, or failover to another gateway) with one event awarded
    and one still collecting. The next, on the same commitments file (the failover's copy comes
    from the site's KV bucket), takes the award up without asking anyone, asks the zones again
    for the other in the same conversation and a new round, once; an event whose window ended
    meanwhile is dropped. Guards that an accepted event is neither lost nor opened twice."""
    o, desk, _ = dr_desk(tmp_path)
    kept = desk.open(400.0, 600.0, "awarded")
    cfps = sent(o, Performative.CFP)
    desk.reply(answer(cfps[0], Performative.PROPOSE, proposal((1.0, 0.0, 500.0, 1.0))))
    run(o, desk, 40)
    (award,) = sent(o, Performative.ACCEPT_PROPOSAL)
    asking = desk.open(300.0, 1800.0, "still collecting")
    first_round = sent(o, Performative.CFP)
    short = desk.open(300.0, 60.0, "ends before the restart")
    saved = json.loads((tmp_path / commitments.FILE_NAME).read_text())
    assert [r["conversation_id"] for r in saved["commitments"]] == [kept]
    assert sorted(r["conversation_id"] for r in saved["opened"]) == sorted([asking, short])

    later = office(start=START + timedelta(seconds=120))
    second = DemandResponseDesk(later, Alarm(), tmp_path)
    second.resume(0.0)
    again = taken(later)
    awards = [e for e in again if e.performative is Performative.ACCEPT_PROPOSAL]
    assert [(e.receiver, e.conversation_id) for e in awards] == [(award.receiver, kept)]
    asked = [e for e in again if e.performative is Performative.CFP]
    assert sorted(e.receiver for e in asked) == sorted(zone_address(z) for z in o.site.zones)
    assert {(e.conversation_id, e.reply_with) for e in asked} == {(asking, f"{asking}.2")}
    assert set(second.negotiations) == {kept, asking}
    # An answer to the old round is stale (rejected, counted); one to the new round counts.
    second.reply(answer(first_round[0], Performative.PROPOSE, proposal((1.0, 0.0, 500.0, 1.0))))
    assert second.rejected["stale_round"] == 1
    new_round = next(e for e in asked if e.receiver == first_round[0].receiver)
    second.reply(answer(new_round, Performative.PROPOSE, proposal((1.0, 0.0, 500.0, 1.0))))
    assert list(second.negotiations[asking].offers) == [first_round[0].receiver[5:-1]]


def test_a_request_delivered_again_opens_its_event_once() -> None:
    """A request over the bus names its conversation; delivered again (handed back by a
    leader that lost its lease, taken by the next that had the event from the bucket) it is
    the event already open, not a second one. Guards the 'never doubled' of a failover."""
    o, desk, _ = dr_desk()
    call = DemandResponseCall(target_w=400.0, window_s=600.0, reason="grid")
    assert desk.request(call, "mqtt-bridge", "r1") == "r1"
    assert len(sent(o, Performative.CFP)) == len(o.site.zones)
    assert desk.request(call, "mqtt-bridge", "r1") == "r1"
    assert sent(o, Performative.CFP) == [] and list(desk.negotiations) == ["r1"]
