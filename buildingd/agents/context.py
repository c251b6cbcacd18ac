"""What every agent is built with: the bus, the clock, the current site and shared counters.

``site`` is replaced as a whole on a successful reload, so agents always read it from here.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from buildingd.agents.bus import Envelope, InProcessBus, Transport
from buildingd.clock import Clock
from buildingd.config.loader import Site
from buildingd.drivers.base import DriverContext


@dataclass
class Metrics:
    """Counters and gauges for /metrics and the exit summary (names are Prometheus-style)."""

    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    gauges: dict[str, float] = field(default_factory=dict)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self.counters[_key(name, labels)] += amount  # type: ignore[assignment]

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[_key(name, labels)] = value


def _key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


@dataclass
class AgentContext:
    bus: Transport
    clock: Clock
    site: Site
    drivers: DriverContext
    metrics: Metrics = field(default_factory=Metrics)
    accepting_commands: bool = True
    ready_s: float | None = None  # monotonic time every agent had started

    async def send(self, env: Envelope) -> None:
        await self.bus.send(env)

    @property
    def local_bus(self) -> InProcessBus | None:
        return self.bus if isinstance(self.bus, InProcessBus) else None
