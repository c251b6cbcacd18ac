"""Composition root: builds the daemon from validated settings and site, runs it, stops it.

Constructors do no I/O; ``Daemon.run`` starts everything in order (telemetry, devices, zones),
waits for a stop request or the duration, and stops in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from buildingd.agents.bus import InProcessBus, Performative
from buildingd.agents.context import AgentContext, Metrics
from buildingd.agents.device import DeviceAgent
from buildingd.agents.messages import EVENTS_TOPIC, EventMsg
from buildingd.agents.runtime import RestartPolicy, Supervisor
from buildingd.agents.telemetry import TelemetryAgent
from buildingd.agents.zone import ZoneAgent, ZoneStats
from buildingd.clock import Clock, ScaledClock, SystemClock
from buildingd.config.loader import Site
from buildingd.drivers.base import DriverContext
from buildingd.settings import Settings
from buildingd.sim.building import Building
from buildingd.telemetry.sink import TelemetrySink

log = logging.getLogger(__name__)


@dataclass
class ZoneSummary:
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
    zones: list[ZoneSummary] = field(default_factory=list)
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


def uses_simulator(site: Site) -> bool:
    from buildingd.sim.servers import site_needs_simulator

    return site_needs_simulator(site)


def sim_start(settings: Settings, site: Site) -> datetime:
    from buildingd.sim.servers import resolve_start

    return resolve_start(settings.sim.start, site.timezone)


class Daemon:
    """The running daemon. ``run`` returns a summary when stopped."""

    def __init__(
        self,
        settings: Settings,
        site: Site,
        clock: Clock | None = None,
        sink_factory: Callable[[], TelemetrySink] | None = None,
    ) -> None:
        self.settings = settings
        self._sink_factory = sink_factory
        self.site = site
        self.building: Building | None = None
        if uses_simulator(site):
            start = sim_start(settings, site)
            self.clock: Clock = clock or ScaledClock(start, settings.speed)
            self.building = Building(
                list(site.zones.values()),
                start,
                site.timezone,
                seed=settings.sim.seed,
                scenario=settings.sim.weather,
            )
        else:
            self.clock = clock or SystemClock()
        self.bus = InProcessBus()
        self.metrics = Metrics()
        self.ctx = AgentContext(
            bus=self.bus,
            clock=self.clock,
            site=site,
            drivers=DriverContext(clock=self.clock, building=self.building),
            metrics=self.metrics,
        )
        self.supervisor: Supervisor | None = None
        self.zone_agents: dict[str, ZoneAgent] = {}
        self.device_agents: dict[str, DeviceAgent] = {}
        self.stop_requested = asyncio.Event()
        self.ready = asyncio.Event()
        self.on_ready: list[Callable[[], None]] = []
        self._services: contextlib.AsyncExitStack | None = None

    def request_stop(self) -> None:
        self.stop_requested.set()

    def _make_sink(self) -> TelemetrySink:
        if self._sink_factory is not None:
            return self._sink_factory()
        from buildingd.telemetry.sink import create_sink

        return create_sink(self.settings.influx, self.settings.state_dir, self.clock)

    async def _give_up(self, name: str, err: BaseException) -> None:
        self.metrics.inc("buildingd_agents_failed_total")
        env = EventMsg(
            kind="agent-failed",
            source="supervisor",
            zone_id=name[5:-1] if name.startswith("zone[") else None,
            severity="error",
            message=f"agent {name} stopped after too many restarts: {err}",
            timestamp=self.clock.now(),
        ).envelope(Performative.INFORM, "supervisor", EVENTS_TOPIC)
        await self.bus.send(env)

    async def start_device(self, device_id: str) -> None:
        assert self.supervisor is not None
        device = self.ctx.site.devices[device_id]
        agent = await self.supervisor.start(
            f"device[{device_id}]", lambda: DeviceAgent(device, self.ctx)
        )
        assert isinstance(agent, DeviceAgent)
        self.device_agents[device_id] = agent

    async def start_zone(self, zone_id: str) -> None:
        assert self.supervisor is not None

        def make() -> ZoneAgent:
            agent = ZoneAgent(zone_id, self.ctx)
            old = self.zone_agents.get(zone_id)
            if old is not None:  # a restarted zone keeps its coordinator adjustments
                agent.set_adjustments(old.state.adjustments)
                agent.stats = old.stats
            self.zone_agents[zone_id] = agent
            return agent

        await self.supervisor.start(f"zone[{zone_id}]", make)

    async def run(self, duration_s: float | None = None) -> RunSummary:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        sink = self._make_sink()
        await sink.start()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop)
                installed.append(sig)
        try:
            async with contextlib.AsyncExitStack() as services:
                self._services = services
                await self._start_simulator_servers(services)
                async with Supervisor(self.clock, RestartPolicy(), on_give_up=self._give_up) as sup:
                    self.supervisor = sup
                    await sup.start("telemetry", lambda: TelemetryAgent(self.ctx, sink))
                    # Zones first, so they hear the devices' first readings.
                    for zone_id in self.site.zones:
                        await self.start_zone(zone_id)
                    for device_id in self.site.devices:
                        await self.start_device(device_id)
                    self.ready.set()
                    for callback in self.on_ready:
                        callback()
                    log.info("%s; running", self.site.summary())
                    try:
                        async with asyncio.timeout(duration_s):
                            await self.stop_requested.wait()
                    except TimeoutError:
                        pass
                    log.info("stopping")
                    self.ctx.accepting_commands = False
                    for zone_id in list(self.site.zones):
                        await sup.stop(f"zone[{zone_id}]")
                    for device_id in list(self.site.devices):
                        await sup.stop(f"device[{device_id}]")
                    await sup.stop_all()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.ctx.drivers.resources.close_all()
            await sink.stop()
        return self.summary()

    async def _start_simulator_servers(self, services: contextlib.AsyncExitStack) -> None:
        if self.building is None:
            return
        from buildingd.sim.servers import start_simulator_servers

        await start_simulator_servers(self, services)

    def summary(self) -> RunSummary:
        out = RunSummary(
            bus_messages=self.bus.stats.total, bus_by_kind=dict(self.bus.stats.by_kind)
        )
        if self.building is not None:
            out.simulated_hours = self.clock.monotonic() / 3600
        for zone_id in self.site.zones:
            agent = self.zone_agents.get(zone_id)
            stats = agent.stats if agent is not None else ZoneStats()
            sim = self.building.zones.get(zone_id) if self.building is not None else None
            out.zones.append(
                ZoneSummary(
                    zone_id=zone_id,
                    hours=stats.seconds / 3600,
                    in_band_pct=100 * stats.seconds_in_band / stats.seconds
                    if stats.seconds
                    else None,
                    heating_kwh=sim.heating_j / 3.6e6 if sim is not None else None,
                    cooling_kwh=sim.cooling_j / 3.6e6 if sim is not None else None,
                    light_on_h=stats.light_on_s / 3600,
                    lighting_kwh=sim.lighting_j / 3.6e6 if sim is not None else None,
                    commands_sent=stats.commands_sent,
                    commands_failed=stats.commands_failed,
                )
            )
        return out


def state_dir_usable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".probe"
        probe.write_text("")
        probe.unlink()
    except OSError:
        return False
    return True
