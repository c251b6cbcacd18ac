"""What a standby's coordinator takes over from the last leader besides its files: the occupants'
vote boxes and the air-handler resets, exported on one clock and restored on another (the
gateways' monotonic clocks share nothing; the export is in wall-clock seconds)."""

from __future__ import annotations

import pytest

from buildingd.coordinator.air_handlers import SUPPLY_AIR, AirHandlerDesk
from buildingd.coordinator.votes import VoteBox
from tests.test_coordinator_desks import air_desk, run, taken, writes, zone_state

SHIFT_S = 1_800_000_000.0  # the leader's monotonic -> wall clock
OTHER_SHIFT_S = SHIFT_S - 5_000.0  # the standby's monotonic clock is 5,000 s further on


def box() -> VoteBox:
    return VoteBox(window_s=900, min_votes=2, step_k=0.5, max_offset_k=1.5, min_interval_s=600)


def test_a_vote_box_carries_its_offset_votes_and_rate_limit_to_another_clock() -> None:
    leader = box()
    for t in (10.0, 20.0):
        assert leader.cast("room", "cold", t).accepted
    assert leader.settle("room", 30.0, 16.0, 26.0, setpoint_c=21.0).offset_k == 0.5
    leader.cast("room", "cold", 40.0)
    leader.cast("room", "cold", 50.0)  # two more, not yet settled (rate limited)

    standby = box()
    standby.restore(leader.export(SHIFT_S), OTHER_SHIFT_S)
    # The same moment on the standby's clock: 60 s on the leader's is 5,060 s here.
    now = 60.0 + 5_000.0
    assert standby.offset("room") == 0.5
    assert standby.tally("room", now) == leader.tally("room", 60.0) == (2, 0)
    settled = standby.settle("room", now, 16.0, 26.0, setpoint_c=21.0)
    assert (settled.offset_k, settled.moved) == (0.5, False)
    assert "rate limited" in settled.reason
    # Past the rate limit (600 s after the move at 30 s), the two votes move it once more.
    assert standby.settle("room", 30.0 + 600.0 + 5_000.0, 16.0, 26.0, setpoint_c=21.0).moved


@pytest.mark.parametrize(
    "bad",
    [
        {"room": {"votes": [[1.0, "warm"]], "last_move_s": None, "last_direction": 0,
                  "offset_k": 0.0}},
        {"room": {"votes": [], "last_move_s": None, "last_direction": 0, "offset_k": 9.0}},
        {"room": {"offset_k": 0.0}},
        {"room": "cold"},
    ],
)  # fmt: skip
def test_a_malformed_vote_export_is_refused_and_nothing_taken(bad: dict[str, object]) -> None:
    standby = box()
    standby.cast("other", "hot", 1.0)
    with pytest.raises(ValueError):
        standby.restore(bad, 0.0)
    assert standby.zones() == ["other"]


def test_an_air_handler_reset_goes_on_from_the_carried_setpoint_on_another_clock() -> None:
    hot = {z: zone_state(z, 28.0) for z in ("f1-meeting", "f1-kitchen", "f2-office-a")}
    o, desk = air_desk(hot)
    run(o, desk, 600 + 3 * 120)  # the delay, then steps responding to the hot zones
    sat = desk.loops(SUPPLY_AIR)["ahu1"]
    assert sat.setpoint < sat.params.sp0
    exported = desk.export(SHIFT_S)

    # The standby's desk starts (SP0, through its delay) at the same moment: its clock's
    # 5,960 s ...
    o2, standby = air_desk(hot)
    o2.ctx.clock.t = 5_960.0  # type: ignore[attr-defined]
    standby.start(5_960.0)
    assert standby.restore(exported, OTHER_SHIFT_S) == 2  # supply air and static pressure
    carried = standby.loops(SUPPLY_AIR)["ahu1"]
    assert carried.setpoint == sat.setpoint
    assert carried.next_step_s == pytest.approx(sat.next_step_s + 5_000.0)
    # ... and writes the carried setpoint at once (not SP0), then steps on from it.
    run(o2, standby, 10)
    assert ("sat_sp", sat.setpoint) in writes(taken(o2))
    run(o2, standby, 100)  # the leader's next step, at its 1,080 s, is not due yet
    assert carried.setpoint == sat.setpoint
    run(o2, standby, 10)
    assert carried.setpoint < sat.setpoint  # still hot: responded from there, not from SP0


def test_a_malformed_air_handler_export_is_refused() -> None:
    _, desk = air_desk({})
    assert isinstance(desk, AirHandlerDesk)
    with pytest.raises(ValueError):
        desk.restore([{"air_handler": "ahu1"}], 0.0)
    assert desk.loops(SUPPLY_AIR)["ahu1"].setpoint == desk.loops(SUPPLY_AIR)["ahu1"].params.sp0
