"""The coordinator inside the running daemon on simulated time: a demand-response event by
contract net from cfp to restore, an impossible target escalating to a human, occupant votes."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from buildingd.agents.bus import Performative
from buildingd.agents.messages import DEMAND_RESPONSE_TOPIC, DemandResponseCall
from buildingd.coordinator.negotiation import NegotiationState
from tests.conftest import run_virtual
from tests.test_daemon_sim import make_daemon, run_for

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY_MORNING = datetime(2026, 1, 12, 9, 0, tzinfo=BERLIN)


def test_demand_response_from_cfp_to_restore(tmp_path: Path) -> None:
    daemon, sink = make_daemon(tmp_path, MONDAY_MORNING)
    seen: dict[str, object] = {}

    async def main() -> None:
        task = await run_for(daemon, 4 * 3600)
        await asyncio.sleep(1800)  # zones warm up and report their demand
        coordinator = daemon.coordinator
        assert coordinator is not None
        bands_before = {z: a.decision.band for z, a in daemon.zone_agents.items() if a.decision}
        # A request arriving on the bus (as from MQTT or HTTP) opens the event.
        call = DemandResponseCall(target_w=300, window_s=1800, reason="grid operator")
        await daemon.bus.send(call.envelope(Performative.REQUEST, "grid", DEMAND_RESPONSE_TOPIC))
        await asyncio.sleep(120)
        (run,) = coordinator.negotiations.values()
        seen["state_during"] = run.negotiation.state
        seen["awarded"] = dict(run.awarded)
        seen["refused"] = dict(run.refused)
        seen["committed"] = run.committed_w
        seen["shifted"] = {
            z: daemon.zone_agents[z].state.adjustments.dr_shift_k for z in run.awarded
        }
        seen["band_during"] = {
            z: daemon.zone_agents[z].decision.band  # type: ignore[union-attr]
            for z in run.awarded
        }
        seen["before"] = bands_before
        conversation = run.negotiation.conversation_id
        await asyncio.sleep(1800 + 120)
        seen["finished"] = coordinator.finished[-1]
        seen["messages"] = daemon.bus.stats.messages_in(conversation)
        seen["restored"] = {z: daemon.zone_agents[z].state.adjustments for z in daemon.site.zones}
        daemon.request_stop()
        await task

    run_virtual(main())
    assert seen["state_during"] is NegotiationState.EXECUTING
    awarded = seen["awarded"]
    assert isinstance(awarded, dict) and awarded
    assert "f2-server" not in awarded  # exempt by policy
    refused = seen["refused"]
    assert isinstance(refused, dict) and refused.get("f2-server") == "exempt by policy"
    assert isinstance(seen["committed"], float) and seen["committed"] >= 300
    for zone_id, offer in awarded.items():
        if offer.shift_k:
            before = seen["before"][zone_id]  # type: ignore[index]
            during = seen["band_during"][zone_id]  # type: ignore[index]
            assert during.heating_c < before.heating_c  # shed: heating setpoint lowered
    finished = seen["finished"]
    assert finished.negotiation.state is NegotiationState.SETTLED  # type: ignore[attr-defined]
    states = [h[2] for h in finished.negotiation.history]  # type: ignore[attr-defined]
    assert states == ["collecting", "awarding", "executing", "restoring", "settled"]
    restored = seen["restored"]
    assert isinstance(restored, dict)
    assert all(a.dr_shift_k == 0 and a.dim_pct == 0 for a in restored.values())
    # Summaries, not chatter: the whole negotiation is a handful of messages per zone.
    assert isinstance(seen["messages"], int) and seen["messages"] <= 6 * len(daemon.site.zones)
    assert any(line.startswith("event,") and "negotiation" in line for line in sink.lines)


def test_an_impossible_target_breaks_glass_until_acknowledged(tmp_path: Path) -> None:
    daemon, _ = make_daemon(tmp_path, MONDAY_MORNING)
    result: dict[str, object] = {}

    async def main() -> None:
        task = await run_for(daemon, 3 * 3600)
        await asyncio.sleep(1800)
        coordinator = daemon.coordinator
        assert coordinator is not None
        coordinator.open_demand_response(1_000_000, 900, "test: far beyond the building")
        await asyncio.sleep(120)
        result["alerts"] = daemon.open_alerts()
        (esc,) = coordinator.open_escalations()
        result["acked"] = coordinator.acknowledge(esc.id, "Jo Technician")
        result["again"] = coordinator.acknowledge(esc.id, "Jo Technician")
        result["after"] = daemon.open_alerts()
        daemon.request_stop()
        await task

    run_virtual(main())
    escalations = [a for a in result["alerts"] if "escalation" in a]  # type: ignore[attr-defined]
    assert len(escalations) == 1
    assert "can shed only" in escalations[0]["escalation"]
    assert any("Facilities on call" in c for c in escalations[0]["contacts"])
    assert result["acked"] is True and result["again"] is False
    assert not [a for a in result["after"] if "escalation" in a]  # type: ignore[attr-defined]


def test_occupant_votes_nudge_the_band_within_limits(tmp_path: Path) -> None:
    daemon, _ = make_daemon(tmp_path, MONDAY_MORNING)
    out: dict[str, object] = {}

    async def main() -> None:
        task = await run_for(daemon, 3 * 3600)
        await asyncio.sleep(1800)
        coordinator = daemon.coordinator
        assert coordinator is not None
        zone = daemon.zone_agents["f1-meeting"]
        assert zone.decision is not None
        out["before"] = zone.decision.band.heating_c
        assert coordinator.vote("f1-meeting", "cold").accepted
        assert coordinator.vote("f1-meeting", "cold").accepted
        await asyncio.sleep(60)
        out["after"] = zone.decision.band.heating_c
        out["offset"] = zone.state.adjustments.vote_offset_k
        out["refused"] = coordinator.vote("f1-meeting", "sauna")
        daemon.request_stop()
        await task

    run_virtual(main())
    assert out["offset"] == 0.5
    assert out["after"] == out["before"] + 0.5  # type: ignore[operator]
    refused = out["refused"]
    assert not refused.accepted and "unknown vote" in refused.reason  # type: ignore[attr-defined]
