"""G36 duct static pressure trim & respond: the reset against worked examples computed by hand
from G36-2018 5.16.1.2's defaults, the terminal units' static pressure requests (5.6.8.2) and
their 1-minute timers, the zone counting them in its summary (next to its flexibility, the same
numbers it proposes to a cfp), the coordinator writing the setpoint to the air handler's point
on a fake clock, and the demo daemon trimming the simulated air handler."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from buildingd.agents.bus import Envelope, Performative
from buildingd.agents.messages import (
    COORDINATOR,
    ZONE_STATE_TOPIC,
    CommandMsg,
    CommandResultMsg,
    DemandResponseCall,
    DemandResponseProposal,
    ReadingMsg,
    ZoneStateMsg,
    device_address,
    zone_address,
)
from buildingd.agents.zone import ZoneAgent
from buildingd.config.site import StaticPressureReset
from buildingd.control.trim_respond import (
    STATIC_PRESSURE,
    PressureRequestTimer,
    TrimRespond,
    static_pressure_requests,
    update_pressure_requests,
)
from buildingd.points import PointKind, Quality
from tests.conftest import run_virtual
from tests.test_coordinator_daemon import MONDAY_MORNING
from tests.test_coordinator_logic import START, Coordinator, RecordingBus, demo_site, zone_agent
from tests.test_daemon_sim import make_daemon, run_for

AHU = "ahu1"
AHU_DEVICE = "ahu1-controller"  # its duct_sp point: limits 50..500 Pa in devices/demo-modbus.yaml
VAV = "f1-meeting-vav"  # a terminal unit of the meeting room (readings only, in these tests)

# --- the reset ---------------------------------------------------------------------------------

# G36 defaults in Pa: SP0 120 in 25..400, Td 600 s, T 120 s, I 2, SPtrim -12, SPres +15,
# SPres_max +32. As for the supply-air temperature (Modelica's TrimAndRespond), the setpoint
# holds SP0 until Td + T = 720 s; each step then changes it by SPtrim, plus, with R > I, the
# response SPres * (R - I) capped at SPres_max; then it is limited to [SPmin, SPmax].


def test_static_pressure_defaults_are_g36s_and_the_site_files() -> None:
    site = StaticPressureReset()
    p = STATIC_PRESSURE
    assert (p.sp0, p.sp_min, p.sp_max) == (120.0, 25.0, 400.0)
    assert (p.delay_s, p.step_s, p.ignored) == (600.0, 120.0, 2)
    assert (p.trim, p.respond, p.respond_max) == (-12.0, 15.0, 32.0)
    assert (site.sp0_pa, site.min_pa, site.max_pa) == (p.sp0, p.sp_min, p.sp_max)
    assert (site.delay_s, site.step_s, site.ignored_requests) == (p.delay_s, p.step_s, p.ignored)
    assert (site.trim_pa, site.respond_pa, site.respond_max_pa) == (
        p.trim,
        p.respond,
        p.respond_max,
    )


def test_static_pressure_trims_and_responds_by_hand() -> None:
    tr = TrimRespond(STATIC_PRESSURE, started_s=0.0)
    assert tr.step(0.0, 9) == 120.0
    assert tr.step(719.0, 9) == 120.0  # still inside Td + T
    # R=6, I=2: 15 * 4 = 60 capped at 32, plus the trim -12 -> +20: 140
    assert tr.step(720.0, 6) == 140.0
    assert tr.step(800.0, 6) == 140.0  # between steps
    # R=3: 15 * 1 = 15, -12 -> +3: 143
    assert tr.step(840.0, 3) == 143.0
    # R=2 = I: trim only: 131, then 119
    assert tr.step(960.0, 2) == 131.0
    assert tr.step(1080.0, 0) == 119.0
    # R=4: 15 * 2 = 30 (under the cap), -12 -> +18: 137
    assert tr.step(1200.0, 4) == 137.0


def test_static_pressure_stays_in_its_range() -> None:
    # SPmax 400: from 390, R=10 adds +20 -> 410, limited to 400; from SPmin 25 the trim stops.
    high = TrimRespond(replace(STATIC_PRESSURE, sp0=390.0), started_s=0.0)
    assert [high.step(720.0 + 120 * i, 10) for i in range(2)] == [400.0, 400.0]
    low = TrimRespond(replace(STATIC_PRESSURE, sp0=30.0), started_s=0.0)
    assert [low.step(720.0 + 120 * i, 0) for i in range(2)] == [25.0, 25.0]


# --- the terminal units' requests ----------------------------------------------------------


@pytest.mark.parametrize(
    ("damper", "flow", "flow_sp", "below50_s", "below70_s", "previous", "expected"),
    [
        (96, None, None, 0, 0, 0, 1),  # damper only: above 95 %
        (95, None, None, 0, 0, 0, 0),  # not above
        (90, None, None, 0, 0, 1, 1),  # held between 85 and 95 %
        (90, None, None, 0, 0, 0, 0),
        (84, None, None, 0, 0, 1, 0),  # released below 85 %
        (98, 40, 100, 60, 60, 0, 3),  # below 50 % of setpoint for 1 min, damper wide open
        (98, 40, 100, 59, 59, 0, 1),  # not for a minute yet: the damper rule
        (98, 60, 100, 0, 60, 0, 2),  # below 70 % for 1 min
        (98, 40, 100, 0, 60, 0, 2),  # the 50 % timer only just started
        (98, 80, 100, 60, 60, 0, 1),  # airflow above 70 %: timers are the caller's, not enough
        (98, 0, 0, 60, 60, 0, 1),  # setpoint zero: no airflow request
        (90, 40, 100, 60, 60, 0, 0),  # damper not wide open: no airflow request either
    ],
)
def test_static_pressure_requests(
    damper: float,
    flow: float | None,
    flow_sp: float | None,
    below50_s: float,
    below70_s: float,
    previous: int,
    expected: int,
) -> None:
    got = static_pressure_requests(
        damper,
        flow,
        flow_sp,
        below_50_for_s=below50_s,
        below_70_for_s=below70_s,
        previous=previous,
    )
    assert got == expected


def test_request_timers_run_while_the_condition_holds() -> None:
    t = PressureRequestTimer()
    t = update_pressure_requests(t, 0.0, 98.0, 40.0, 100.0)
    assert (t.below_50_since_s, t.below_70_since_s, t.requests) == (0.0, 0.0, 1)
    t = update_pressure_requests(t, 59.0, 98.0, 40.0, 100.0)
    assert t.requests == 1
    t = update_pressure_requests(t, 60.0, 98.0, 40.0, 100.0)
    assert t.requests == 3
    # 60 % of setpoint: the 50 % condition ends, the 70 % one has held since 0 s.
    t = update_pressure_requests(t, 70.0, 98.0, 60.0, 100.0)
    assert (t.below_50_since_s, t.requests) == (None, 2)
    t = update_pressure_requests(t, 80.0, 92.0, 60.0, 100.0)  # the damper closes a bit
    assert (t.below_70_since_s, t.requests) == (None, 1)  # held by the damper hysteresis
    t = update_pressure_requests(t, 90.0, 98.0, 60.0, 100.0)  # wide open again: timer restarts
    assert (t.below_70_since_s, t.requests) == (90.0, 1)
    t = update_pressure_requests(t, 100.0, 80.0, 60.0, 100.0)
    assert t.requests == 0
    assert update_pressure_requests(t, 110.0, None) == PressureRequestTimer()


# --- the zone: requests and flexibility in its summary -----------------------------------------


def reading(
    kind: PointKind,
    value: float,
    device: str = VAV,
    quality: Quality = Quality.GOOD,
    zone_id: str = "f1-meeting",
) -> Envelope:
    msg = ReadingMsg(
        device_id=device, point_id=kind.value, zone_id=zone_id, kind=kind, unit="",
        value=value, quality=quality, timestamp=START,
    )  # fmt: skip
    return msg.envelope(Performative.INFORM, device_address(device), f"readings/{zone_id}")


def summaries(zone: ZoneAgent) -> list[ZoneStateMsg]:
    bus = zone.ctx.bus
    assert isinstance(bus, RecordingBus)
    got = [ZoneStateMsg.parse(e) for e in bus.sent if e.receiver == ZONE_STATE_TOPIC]
    bus.sent.clear()
    return got


async def test_a_zone_counts_its_terminal_units_requests_in_its_summary() -> None:
    zone, clock = zone_agent()
    zone._handle(reading(PointKind.TEMPERATURE, 25.5, device="f1-meeting-thermostat"))
    for kind, value in (
        (PointKind.DAMPER_POSITION, 98.0),
        (PointKind.AIRFLOW, 300.0),
        (PointKind.AIRFLOW_SETPOINT, 800.0),
    ):
        zone._handle(reading(kind, value))
    zone._handle(reading(PointKind.DAMPER_POSITION, 97.0, device="f1-meeting-vav2"))  # damper only
    await zone.control(clock.t)
    assert summaries(zone)[-1].pressure_requests == 2  # 1 + 1: not a minute below 50 % yet
    clock.t = 60.0
    await zone.control(clock.t)
    assert summaries(zone)[-1].pressure_requests == 4  # 3 + 1, sent at once: it changed
    zone._handle(reading(PointKind.DAMPER_POSITION, 97.0, "f1-meeting-vav2", Quality.STALE))
    clock.t = 70.0
    await zone.control(clock.t)
    assert summaries(zone)[-1].pressure_requests == 3  # a stale damper asks for nothing


async def test_the_summary_carries_the_1k_offer_the_zone_proposes() -> None:
    zone, clock = zone_agent()
    zone._handle(reading(PointKind.TEMPERATURE, 25.5, device="f1-meeting-thermostat"))
    zone._handle(reading(PointKind.OCCUPANCY, 1.0, device="f1-meeting-thermostat"))
    await zone.control(clock.t)
    state = summaries(zone)[-1]
    cfp = DemandResponseCall(target_w=1000, window_s=1800, reason="test")
    zone._handle(cfp.envelope(Performative.CFP, COORDINATOR, zone.name, reply_with="r1"))
    proposal = DemandResponseProposal.parse(zone._pending_replies[-1])
    one_k = next(o for o in proposal.offers if o.shift_k == 1.0 and o.dim_pct == 0)
    assert (state.shed_level, state.shed_w, state.shed_cost) == (
        "shift-1K",
        one_k.shed_w,
        one_k.comfort_cost,
    )
    assert state.shed_w > 0
    # The server room is exempt by its policy: it refuses a cfp, and its summary offers nothing.
    server, server_clock = zone_agent("f2-server")
    server._handle(reading(PointKind.TEMPERATURE, 26.0, "f2-server-sensor", zone_id="f2-server"))
    await server.control(server_clock.t)
    assert server.offers() == []
    flex = summaries(server)[-1]
    assert (flex.shed_w, flex.shed_cost, flex.shed_level) == (0.0, 0.0, "none")


def test_an_old_summary_without_the_new_fields_still_validates() -> None:
    old = {
        "zone_id": "f1-meeting", "mode": "occupied", "temperature_c": 22.0,
        "humidity_pct": None, "occupied": True, "illuminance_lux": None, "heating_sp_c": 21.0,
        "cooling_sp_c": 24.0, "light_level_pct": 0.0, "dehumidifier_on": False,
        "timestamp": START.isoformat(),
    }  # fmt: skip
    msg = ZoneStateMsg.model_validate(old)
    assert (msg.shed_w, msg.shed_cost, msg.shed_level, msg.pressure_requests) == (
        0.0,
        0.0,
        "none",
        0,
    )


# --- the coordinator writes the setpoint ---------------------------------------------------


def pressure_coordinator(requests: dict[str, int]) -> Coordinator:
    c = Coordinator()
    c.ctx.ready_s = 0.0
    c.agent.start_resets(0.0)
    for zone_id, count in requests.items():
        c.agent.take(summary(c, zone_id, count))
    return c


def summary(c: Coordinator, zone_id: str, pressure_requests: int) -> Envelope:
    base = ZoneStateMsg.parse(c.summary(zone_id))
    msg = base.model_copy(update={"pressure_requests": pressure_requests})
    return msg.envelope(Performative.INFORM, zone_address(zone_id), ZONE_STATE_TOPIC)


def duct_writes(c: Coordinator) -> list[float]:
    got = []
    for env in c.sent():
        if env.receiver == device_address(AHU_DEVICE) and env.ontology == CommandMsg.ontology:
            cmd = CommandMsg.parse(env)
            if cmd.point_id == "duct_sp":
                assert "static pressure requests" in cmd.reason
                got.append(cmd.value)
    return got


def run_to(c: Coordinator, until_s: float) -> list[float]:
    writes = []
    while c.clock.t < until_s:
        c.tick()
        writes += duct_writes(c)
    return writes


def test_the_coordinator_resets_the_duct_static_pressure_from_zone_requests() -> None:
    # Three zones of ahu1 send 2 requests each: R = 6.
    c = pressure_coordinator({"f1-meeting": 2, "f1-kitchen": 2, "f2-office-a": 2})
    reset = c.agent.static_pressure[AHU]
    # The G36 range 25..400 narrowed to the duct_sp point's write limits 50..500: 50..400.
    assert (reset.params.sp0, reset.params.sp_min, reset.params.sp_max) == (120.0, 50.0, 400.0)
    assert run_to(c, 710.0) == [120.0]  # SP0 written once, held through Td + T
    assert run_to(c, 720.0) == [140.0]  # +20, as by hand above
    # The zones' requests stop: trimmed by 12 Pa each step down to the point's minimum, 50.
    for zone_id in ("f1-meeting", "f1-kitchen", "f2-office-a"):
        c.agent.take(summary(c, zone_id, 0))
    assert run_to(c, 720.0 + 120 * 8) == [128.0, 116.0, 104.0, 92.0, 80.0, 68.0, 56.0, 50.0]
    # A zone outside the air handler (the server room) does not count.
    c.agent.take(summary(c, "f2-server", 9))
    assert run_to(c, c.clock.t + 120) == []


def test_a_refused_write_is_sent_again_at_the_next_tick() -> None:
    c = pressure_coordinator({})
    assert run_to(c, 10.0) == [120.0]
    refused = CommandResultMsg(
        device_id=AHU_DEVICE, point_id="duct_sp", zone_id=None,
        kind=PointKind.DUCT_STATIC_PRESSURE_SETPOINT, value=120.0, read_back=None, ok=False,
        reason="write failed", error="timeout", timestamp=c.clock.now(),
    )  # fmt: skip
    c.agent.take(refused.envelope(Performative.INFORM, device_address(AHU_DEVICE), COORDINATOR))
    assert run_to(c, 20.0) == [120.0]
    assert run_to(c, 30.0) == []


def test_no_static_pressure_reset_without_a_setpoint_point() -> None:
    site = demo_site()
    devices = {k: v for k, v in site.devices.items() if k != AHU_DEVICE}
    c = Coordinator(site=replace(site, devices=devices))
    c.ctx.ready_s = 0.0
    c.agent.start_resets(0.0)
    assert c.agent.static_pressure == {}
    assert AHU in c.agent.supply_air
    c.clock.t += timedelta(minutes=20).total_seconds()
    c.agent.tick(c.clock.t)
    assert duct_writes(c) == []


def test_the_daemon_trims_the_simulated_air_handler_to_its_floor(tmp_path: Path) -> None:
    # The demo's zones report no dampers: no requests, so from SP0 (120 Pa) every step trims
    # 12 Pa, down to the duct_sp point's minimum of 50 Pa within ten steps (Td + 10 T = 32 min),
    # each write through the device agent, its limits and its read-back.
    daemon, _ = make_daemon(tmp_path, MONDAY_MORNING)
    seen: list[float] = []

    async def main() -> None:
        task = await run_for(daemon, 3600)
        assert daemon.building is not None
        for _ in range(40):
            await asyncio.sleep(60)
            seen.append(daemon.building.duct_static_sp_pa)
        daemon.request_stop()
        await task

    run_virtual(main())
    assert seen[0] == 120.0
    assert seen[-1] == 50.0
    assert set(seen) <= {120.0 - 12 * i for i in range(6)} | {50.0}
    assert seen == sorted(seen, reverse=True)
