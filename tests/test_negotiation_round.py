"""The pace of a contract-net round (issue 18): the coordinator moves on as soon as a step's
answers are all in, without waiting for its tick, and a zone confirms an award before it decides
and commands its devices, so a thousand zones' device commands do not hold up the round. What
each step decides is tested in test_coordinator_logic.py; these tests are about when."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from buildingd.agents.bus import InProcessBus, Mailbox, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import COORDINATOR, DemandResponseAward, zone_address
from buildingd.coordinator.agent import CoordinatorAgent
from buildingd.coordinator.negotiation import NegotiationState
from buildingd.drivers.base import DriverContext
from tests.conftest import ManualClock, run_virtual
from tests.test_coordinator_logic import START, answer, demo_site, proposal
from tests.test_daemon_sim import make_daemon, run_for

S = NegotiationState
WAIT_S = 10.0  # real seconds: generous on a loaded machine, never reached when it works


def test_the_coordinator_awards_and_executes_as_soon_as_the_answers_are_in() -> None:
    """Guards the round's pace: the clock never moves, so no tick after the first can come;
    without the coordinator moving on when a step's last answer is in, no award would be sent
    (the test fails on the timeout) and the confirmations would leave it AWARDING."""
    clock = ManualClock(START)
    bus = InProcessBus()
    site = demo_site()
    ctx = AgentContext(bus=bus, clock=clock, site=site, drivers=DriverContext(clock=clock))
    agent = CoordinatorAgent(ctx)
    zones = {z: Mailbox(z, 100) for z in site.zones}
    for zone_id, box in zones.items():
        bus.subscribe(zone_address(zone_id), box)

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(agent.run(started.set))
        await started.wait()
        await asyncio.sleep(0)  # its first tick, at start
        conversation = agent.open_demand_response(500.0, 1800.0, "test")
        await agent.flush()
        run = agent.negotiations[conversation]
        for box in zones.values():
            cfp = await asyncio.wait_for(box.get(), WAIT_S)
            await bus.send(answer(cfp, Performative.PROPOSE, proposal((1.0, 0.0, 200.0, 1.0))))
        awards = []
        for box in zones.values():
            env = await asyncio.wait_for(box.get(), WAIT_S)  # an award or a rejection
            if env.performative is Performative.ACCEPT_PROPOSAL:
                awards.append(env)
        assert run.negotiation.state is S.AWARDING and len(awards) == len(run.awarded) == 3
        for award in awards:
            await bus.send(answer(award, Performative.INFORM_DONE, {"level": "shift-1K"}))
        for _ in range(100):
            if run.negotiation.state is not S.AWARDING:
                break
            await asyncio.sleep(0.01)
        assert run.negotiation.state is S.EXECUTING
        assert clock.t == 0.0  # no tick moved it
        task.cancel()

    asyncio.run(main())


def test_a_zone_confirms_an_award_before_it_commands_its_devices(tmp_path: Path) -> None:
    """Guards the order on the loop: whoever waits for the confirmation runs before the zone's
    own decision and its device commands. Without the zone stepping aside after its answer, the
    commands would already be sent when the confirmation is seen."""
    start = datetime(2026, 1, 12, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # occupied
    daemon, _ = make_daemon(tmp_path, start)
    zone_id = "f1-meeting"
    seen: dict[str, int] = {}

    async def main() -> None:
        task = await run_for(daemon, 3600)
        await asyncio.sleep(600)  # the zone decides and its first commands are confirmed
        zone = daemon.zone_agents[zone_id]
        assert zone.decision is not None and not zone.pending_commands()
        devices = {act.device_id for acts in zone.actuators.values() for act in acts}
        commands = Mailbox("test-devices", 1000)
        for device_id in devices:
            daemon.bus.subscribe(f"device[{device_id}]", commands)
        confirmations = Mailbox("test-coordinator", 1000)
        daemon.bus.subscribe(COORDINATOR, confirmations)
        ends_at = daemon.ctx.clock.now() + timedelta(hours=1)
        award = DemandResponseAward(level="shift-1K", shift_k=1.0, dim_pct=0.0, ends_at=ends_at)
        await daemon.bus.send(award.envelope(Performative.ACCEPT_PROPOSAL, COORDINATOR,
                                             zone.name, conversation_id="c1"))  # fmt: skip
        done = await confirmations.get()
        seen["commands_when_confirmed"] = len(commands)
        assert done.performative is Performative.INFORM_DONE and done.sender == zone.name
        await asyncio.sleep(10)
        seen["commands_after"] = len(commands)
        daemon.request_stop()
        await task

    run_virtual(main())
    assert seen["commands_when_confirmed"] == 0
    assert seen["commands_after"] >= 2  # the shift moved both setpoints, on the zone's own path
