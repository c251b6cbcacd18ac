"""Composition root: the ``Daemon`` holds what runs (settings, site, agents, connections) and
hands the work to one module per job: ``wiring`` builds the parts, ``lifecycle`` runs and stops
them in order, ``reloading`` applies a reload, ``health`` answers what is wrong. Constructors do
no network I/O."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from buildingd.agents.bus import Performative
from buildingd.agents.device import DeviceAgent
from buildingd.agents.messages import EVENTS_TOPIC, EventMsg
from buildingd.agents.runtime import Supervisor
from buildingd.agents.zone import ZoneAgent
from buildingd.clock import Clock
from buildingd.config.loader import Site
from buildingd.service import lifecycle
from buildingd.service.health import Health
from buildingd.service.http import HttpServer
from buildingd.service.reloading import Reloader
from buildingd.service.run_summary import RunSummary, run_summary
from buildingd.service.sdnotify import Notifier, WatchdogGuard
from buildingd.service.wiring import wire
from buildingd.settings import Settings
from buildingd.telemetry.sink import TelemetrySink

if TYPE_CHECKING:
    from buildingd.coordinator.agent import CoordinatorAgent
    from buildingd.mqtt.broker import EmbeddedBroker
    from buildingd.sim.servers import Moves

log = logging.getLogger(__name__)


class Daemon:
    """The running daemon. ``run`` returns a summary when stopped.

    ``settings_loader`` re-reads the settings on reload exactly as they were read at start (the
    same file, environment and command-line options); without one, a reload re-reads only the
    site's device and policy files."""

    # Real (event-loop) seconds a zone or a poller may lag behind its own interval before the
    # watchdog counts it as stuck: room for driver timeouts, retries and backoff.
    zone_slack_s = 60.0
    poll_slack_s = 120.0

    def __init__(
        self,
        settings: Settings,
        site: Site,
        clock: Clock | None = None,
        sink_factory: Callable[[], TelemetrySink] | None = None,
        baseline: bool = False,
        settings_loader: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.site = site
        self.baseline = baseline
        self.settings_loader = settings_loader
        self._sink_factory = sink_factory
        parts = wire(settings, site, clock, self._is_local_agent, lambda: self.ctx.site)
        self.clock = parts.clock
        self.building = parts.building
        self.mqtt = parts.mqtt
        self.bus = parts.bus
        self.nats = parts.nats
        self.election = parts.election
        self.metrics = parts.metrics
        self.ctx = parts.ctx
        self.notifier = Notifier()
        self.healthcheck = Health(self)
        self.reloading = Reloader(self)
        self.sink: TelemetrySink | None = None
        self.http: HttpServer | None = None
        self.supervisor: Supervisor | None = None
        self.coordinator: CoordinatorAgent | None = None
        self.broker: EmbeddedBroker | None = None  # the embedded one, when it runs
        # Simulated devices moved to another port ([sim] modbus_port, bacnet_port): old -> new.
        self.sim_gateways: Moves = {}
        self.zone_agents: dict[str, ZoneAgent] = {}
        self.device_agents: dict[str, DeviceAgent] = {}
        self.accepting_external_commands = True
        self.loop_started = 0.0
        self.stop_requested = asyncio.Event()
        self.ready = asyncio.Event()
        self.on_ready: list[Callable[[], None]] = []
        self.on_stopping: list[Callable[[], None]] = []  # called once a stop begins
        self.on_reloaded: list[Callable[[], None]] = []  # after a reload's changes are applied

    # -- run and stop (lifecycle) --------------------------------------------------------------

    async def run(self, duration_s: float | None = None) -> RunSummary:
        await lifecycle.run(self, duration_s)
        return self.summary()

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def start_zone(self, zone_id: str) -> None:
        await lifecycle.start_zone(self, zone_id)

    async def start_device(self, device_id: str) -> None:
        await lifecycle.start_device(self, device_id)

    async def give_up(self, name: str, err: BaseException) -> None:
        await lifecycle.give_up(self, name, err)

    _give_up = give_up  # the supervisor's hook, as tests call it

    def make_sink(self) -> TelemetrySink:
        if self._sink_factory is not None:
            return self._sink_factory()
        from buildingd.telemetry.sink import create_sink

        return create_sink(self.settings.influx, self.settings.state_dir)

    def _is_local_agent(self, name: str) -> bool:
        return self.supervisor is not None and name in self.supervisor.children

    async def event(self, kind: str, severity: str, message: str) -> None:
        """A daemon event on the bus (journal, telemetry, MQTT, Home Assistant)."""
        env = EventMsg(
            kind=kind,
            source="daemon",
            severity=severity,
            message=message[:2000],
            timestamp=self.clock.now(),
        ).envelope(Performative.INFORM, "daemon", EVENTS_TOPIC)
        await self.bus.send(env)

    # -- reload ---------------------------------------------------------------------------------

    def request_reload(self) -> None:
        self.reloading.request()

    async def reload(self) -> dict[str, object]:
        return await self.reloading.reload()

    @property
    def reloads(self) -> dict[str, int]:
        return self.reloading.counts

    @property
    def reload_problem(self) -> str | None:
        return self.reloading.problem

    @property
    def restart_needed(self) -> list[str]:
        return self.reloading.restart_needed

    # -- health ---------------------------------------------------------------------------------

    @property
    def watchdog(self) -> WatchdogGuard | None:
        return self.healthcheck.watchdog

    def health(self) -> dict[str, float | None]:
        return self.healthcheck.measurement()

    def stuck_agents(self) -> dict[str, str]:
        return self.healthcheck.stuck_agents()

    def _control_alive(self) -> bool:
        return self.healthcheck.control_alive()

    def status_summary(self) -> str:
        return self.healthcheck.status_summary()

    def open_alerts(self) -> list[dict[str, object]]:
        return self.healthcheck.open_alerts()

    def summary(self) -> RunSummary:
        return run_summary(self)


def state_dir_usable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".probe"
        probe.write_text("")
        probe.unlink()
    except OSError:
        return False
    return True
