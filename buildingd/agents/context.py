"""What every agent is built with: the bus, the clock, the current site and shared counters.

``site`` is replaced as a whole on a successful reload, so agents always read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from buildingd.agents.bus import Envelope, InProcessBus, Transport
from buildingd.clock import Clock
from buildingd.config.loader import Site
from buildingd.drivers.base import DriverContext
from buildingd.metrics import Metrics


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

    async def send(self, env: Envelope) -> None:
        await self.bus.send(env)

    @property
    def local_bus(self) -> InProcessBus | None:
        return self.bus if isinstance(self.bus, InProcessBus) else None
