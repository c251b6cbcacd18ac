"""What every agent is built with: the bus, the clock, the current site and shared counters.

``site`` is replaced as a whole on a successful reload, so agents always read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from buildingd.agents.bus import Envelope, InProcessBus, Transport
from buildingd.clock import Clock
from buildingd.config.loader import Site
from buildingd.control.thermal_response import Regime
from buildingd.control.zone_learning import building_median
from buildingd.drivers.base import DriverContext
from buildingd.metrics import Metrics


@dataclass
class MorningRates:
    """Each zone's median morning rates per regime (``zone_learning.morning_medians``), shared
    by the zone agents of this process: a zone with no mornings of its own starts from the
    others' median. Zones on other gateways are not counted (each gateway has its own)."""

    by_zone: dict[str, dict[Regime, float]] = field(default_factory=dict)
    _median: dict[Regime, float] | None = None  # cached until a zone's rates change

    def set(self, zone_id: str, rates: dict[Regime, float]) -> None:
        if self.by_zone.get(zone_id, {}) != rates:
            self.by_zone[zone_id] = rates
            self._median = None

    def median(self) -> dict[Regime, float]:
        if self._median is None:
            self._median = building_median(self.by_zone)
        return self._median


@dataclass
class AgentContext:
    bus: Transport
    clock: Clock
    site: Site
    drivers: DriverContext
    metrics: Metrics = field(default_factory=Metrics)
    accepting_commands: bool = True
    ready_s: float | None = None  # monotonic time every agent had started
    # Points written at buildingd's priority and not given back, by device id: kept here so a
    # device agent restarted (a crash, a reload that changed the device) still gives them back.
    commanded: dict[str, set[str]] = field(default_factory=dict)
    morning_rates: MorningRates = field(default_factory=MorningRates)

    async def send(self, env: Envelope) -> None:
        await self.bus.send(env)

    @property
    def local_bus(self) -> InProcessBus | None:
        return self.bus if isinstance(self.bus, InProcessBus) else None
