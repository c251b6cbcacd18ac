"""The exit summary ``buildingd run`` prints when it stops: per zone hours, comfort, energy and
commands, from the zone agents' accumulated stats and the simulated building."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from buildingd.agents.zone import ZoneStats

if TYPE_CHECKING:
    from buildingd.service.app import Daemon


@dataclass
class ZoneTotals:
    zone_id: str
    hours: float
    in_band_pct: float | None
    heating_kwh: float | None
    cooling_kwh: float | None
    light_on_h: float
    lighting_kwh: float | None
    commands_sent: int
    commands_failed: int


@dataclass
class RunSummary:
    zones: list[ZoneTotals] = field(default_factory=list)
    bus_messages: int = 0
    bus_by_kind: dict[str, int] = field(default_factory=dict)
    simulated_hours: float = 0.0

    def lines(self) -> list[str]:
        head = (
            f"{'zone':<18}{'hours':>7}{'in band':>9}{'heat kWh':>10}{'cool kWh':>10}"
            f"{'light h':>9}{'light kWh':>10}{'commands':>10}"
        )
        out = [head, "-" * len(head)]

        def fmt(v: float | None, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        for z in self.zones:
            band = "-" if z.in_band_pct is None else f"{z.in_band_pct:.0f}%"
            out.append(
                f"{z.zone_id:<18}{z.hours:>7.1f}{band:>9}{fmt(z.heating_kwh, '.2f'):>10}"
                f"{fmt(z.cooling_kwh, '.2f'):>10}{z.light_on_h:>9.1f}"
                f"{fmt(z.lighting_kwh, '.2f'):>10}{z.commands_sent:>10}"
            )
        out.append(f"messages on the bus: {self.bus_messages}")
        return out


def run_summary(daemon: Daemon) -> RunSummary:
    out = RunSummary(
        bus_messages=daemon.bus.stats.total, bus_by_kind=dict(daemon.bus.stats.by_kind)
    )
    if daemon.building is not None:
        out.simulated_hours = daemon.clock.monotonic() / 3600
    for zone_id in daemon.site.zones:
        agent = daemon.zone_agents.get(zone_id)
        stats = agent.stats if agent is not None else ZoneStats()
        sim = daemon.building.zones.get(zone_id) if daemon.building is not None else None
        out.zones.append(
            ZoneTotals(
                zone_id=zone_id,
                hours=stats.seconds / 3600,
                in_band_pct=100 * stats.seconds_in_band / stats.seconds if stats.seconds else None,
                heating_kwh=sim.heating_j / 3.6e6 if sim is not None else None,
                cooling_kwh=sim.cooling_j / 3.6e6 if sim is not None else None,
                light_on_h=stats.light_on_s / 3600,
                lighting_kwh=sim.lighting_j / 3.6e6 if sim is not None else None,
                commands_sent=stats.commands_sent,
                commands_failed=stats.commands_failed,
            )
        )
    return out
