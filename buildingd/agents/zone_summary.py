"""The one zone summary: what a zone is doing now, from its inputs and last decision. The zone
agent publishes it (``ZoneStateMsg``, which Home Assistant's bridge renders) and the HTTP API
serves it; nothing else builds one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from buildingd.agents.messages import ZoneSummary
from buildingd.control.zone import ZoneDecision, ZoneInputs


def zone_summary(
    zone_id: str, inputs: ZoneInputs, decision: ZoneDecision, degraded: Iterable[str]
) -> ZoneSummary:
    return ZoneSummary(**summary_fields(zone_id, inputs, decision, degraded))


def summary_fields(
    zone_id: str, inputs: ZoneInputs, decision: ZoneDecision, degraded: Iterable[str]
) -> dict[str, Any]:
    """``zone_summary``'s fields, for a model that has them too (``ZoneStateMsg``): validated
    once, by that model."""
    return {
        "zone_id": zone_id,
        "mode": decision.state.mode.value,
        "temperature_c": inputs.temperature_c,
        "humidity_pct": inputs.humidity_pct,
        "occupied": inputs.occupied,
        "illuminance_lux": inputs.illuminance_lux,
        "heating_sp_c": decision.band.heating_c,
        "cooling_sp_c": decision.band.cooling_c,
        "light_level_pct": decision.state.light_level_pct,
        "dehumidifier_on": decision.state.dehumidifier_on,
        "degraded": sorted(degraded),
    }
