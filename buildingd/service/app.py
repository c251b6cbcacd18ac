"""Composition root: builds the daemon from validated settings and site, runs it, stops it.

Constructors do no I/O; ``Daemon.run`` starts everything in order (telemetry, devices, zones),
waits for a stop request or the duration, and stops in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from buildingd.agents.bus import InProcessBus, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.device import DeviceAgent
from buildingd.agents.messages import EVENTS_TOPIC, EventMsg
from buildingd.agents.runtime import ChildState, RestartPolicy, Supervisor
from buildingd.agents.telemetry import TelemetryAgent
from buildingd.agents.zone import CONTROL_INTERVAL_S, ZoneAgent, ZoneStats
from buildingd.clock import Clock, ScaledClock, SystemClock
from buildingd.config.loader import Site, load_site
from buildingd.drivers.base import BacnetClient, DriverContext
from buildingd.errors import ConfigError, StartupError
from buildingd.metrics import Metrics
from buildingd.service.gateway import runs_coordinator, runs_device, runs_zone
from buildingd.service.http import HttpServer
from buildingd.service.reload import diff_settings, plan_reload
from buildingd.service.sdnotify import Notifier, WatchdogGuard
from buildingd.service.stopping import SERVICE_STOP_DEADLINE_S, BoundedExitStack, bounded
from buildingd.settings import Settings, bus_key_path
from buildingd.sim.building import Building
from buildingd.telemetry.schema import daemon_line

if TYPE_CHECKING:
    from buildingd.coordinator.agent import CoordinatorAgent
    from buildingd.mqtt.broker import EmbeddedBroker
    from buildingd.mqtt.connection import MqttConnection
    from buildingd.nats.bus import NatsBus
from buildingd.telemetry.sink import TelemetrySink

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 60.0  # daemon health to telemetry, real seconds


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


def mqtt_needed(settings: Settings, site: Site) -> bool:
    """MQTT runs when configured, or when the site has MQTT devices that need a broker (the
    embedded one when no host is set)."""
    if settings.mqtt.enabled:
        return True
    direct = not settings.sim.protocols
    return any(d.driver == "mqtt" and not (d.simulated and direct) for d in site.devices.values())


def uses_simulator(site: Site) -> bool:
    from buildingd.sim.servers import site_needs_simulator

    return site_needs_simulator(site)


def sim_start(settings: Settings, site: Site) -> datetime:
    from buildingd.sim.servers import resolve_start

    return resolve_start(settings.sim.start, site.timezone)


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
        self.baseline = baseline
        self.settings_loader = settings_loader
        # Changed settings that only a restart applies (shown in STATUS= until then).
        self.restart_needed: list[str] = []
        self._stuck_reported: set[str] = set()
        self.sink: TelemetrySink | None = None
        self._loop_started = 0.0
        self.notifier = Notifier()
        self.watchdog: WatchdogGuard | None = None
        self.http: HttpServer | None = None
        self.reloads = {"ok": 0, "failed": 0}
        # The first problem of the last refused reload, shown in STATUS= until one succeeds.
        self.reload_problem: str | None = None
        self.accepting_external_commands = True
        self._reload_requested = asyncio.Event()
        self._sink_factory = sink_factory
        self.site = site
        self.building: Building | None = None
        if uses_simulator(site):
            # A given scaled clock (tests, evaluate) says when the simulation starts.
            start = clock.start if isinstance(clock, ScaledClock) else sim_start(settings, site)
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
        self.supervisor: Supervisor | None = None
        self.coordinator: CoordinatorAgent | None = None
        # Simulated Modbus gateways moved to another port ([sim] modbus_port): old -> new.
        self.sim_gateways: dict[tuple[str, int], int] = {}
        self.mqtt: MqttConnection | None = None
        self.bus: InProcessBus = InProcessBus()
        self.nats: NatsBus | None = None  # the bus between gateways, when [nats] is enabled
        self.metrics = Metrics()
        self.metrics.set("buildingd_config_reload_ok", 1.0)
        if mqtt_needed(settings, site):
            from buildingd.mqtt.connection import MqttConnection

            mqtt = settings.mqtt
            host = mqtt.host or "127.0.0.1"
            self.mqtt = MqttConnection(mqtt, site.site_id, host, mqtt.port, metrics=self.metrics)
            if mqtt.bus:
                from buildingd.agents.hearing import hearing_problem
                from buildingd.mqtt.bus import MqttBus
                from buildingd.mqtt.bus_auth import load_or_create_key

                self.bus = MqttBus(
                    self.mqtt,
                    self._is_local_agent,
                    load_or_create_key(bus_key_path(settings)),
                    lambda env: hearing_problem(env, self.ctx.site),
                )
        if settings.nats.enabled:  # the bus between the site's gateways (service/gateway)
            from buildingd.service.gateway import nats_bus

            self.nats = nats_bus(settings, site, self._is_local_agent, lambda: self.ctx.site,
                                 self.metrics)  # fmt: skip
            self.bus = self.nats
        self.ctx = AgentContext(
            bus=self.bus,
            clock=self.clock,
            site=site,
            drivers=DriverContext(
                clock=self.clock,
                building=self.building,
                mqtt=self.mqtt,
                metrics=self.metrics,
                serve_protocols=settings.sim.protocols,
                ble_scanning=settings.ble.scanning,
                bacnet=BacnetClient(**settings.bacnet.model_dump()),
            ),
            metrics=self.metrics,
        )
        self.zone_agents: dict[str, ZoneAgent] = {}
        self.device_agents: dict[str, DeviceAgent] = {}
        self.stop_requested = asyncio.Event()
        self.ready = asyncio.Event()
        self.on_ready: list[Callable[[], None]] = []
        self.on_stopping: list[Callable[[], None]] = []  # called once a stop begins
        self._services: contextlib.AsyncExitStack | None = None
        self.broker: EmbeddedBroker | None = None  # the embedded one, when it runs

    async def _start_coordinator(self, sup: Supervisor) -> None:
        from buildingd.coordinator.agent import CoordinatorAgent

        def make() -> CoordinatorAgent:
            # Commitments in force are kept in the state directory across restarts.
            agent = CoordinatorAgent(self.ctx, state_dir=self.settings.state_dir)
            if self.coordinator is not None:  # a restarted coordinator keeps open escalations
                agent.escalations = self.coordinator.escalations
            self.coordinator = agent
            return agent

        await sup.start("coordinator", make)

    async def _start_mqtt_bridge(self, sup: Supervisor, conn: MqttConnection) -> None:
        from buildingd.coordinator.votes import VoteResult
        from buildingd.mqtt.bridge import MqttBridgeAgent

        def vote(zone_id: str, vote: str) -> VoteResult:
            if self.coordinator is None:
                return VoteResult(False, "the coordinator is not running", 0.0)
            return self.coordinator.vote(zone_id, vote, "mqtt")

        async def flush() -> None:
            if self.coordinator is not None:
                await self.coordinator.flush()

        http = self.settings.http
        host = socket.gethostname() if http.bind in ("0.0.0.0", "::") else http.bind
        url = f"http://{host}:{http.port}" if http.enabled else None
        await sup.start(
            "mqtt-bridge",
            lambda: MqttBridgeAgent(self.ctx, conn, vote, lambda: self.coordinator, flush, url),
        )

    def _is_local_agent(self, name: str) -> bool:
        return self.supervisor is not None and name in self.supervisor.children

    async def _start_mqtt(self, services: contextlib.AsyncExitStack) -> None:
        """The broker connection (and the embedded broker when no host is configured)."""
        if self.mqtt is None:
            return
        if self.settings.mqtt.host is None:
            from buildingd.mqtt.broker import EmbeddedBroker

            mqtt = self.settings.mqtt
            broker = EmbeddedBroker(
                mqtt.port,
                mqtt.broker_password_file,
                mqtt.broker_max_payload_bytes,
                mqtt.broker_max_retained_bytes,
            )
            await broker.start()
            self.broker = broker
            services.push_async_callback(broker.stop)
            self.mqtt.host, self.mqtt.port = broker.host, broker.port
        await self.mqtt.start()
        services.push_async_callback(self.mqtt.stop)
        if not await self.mqtt.wait_connected(10.0):
            log.warning("mqtt: not connected yet; MQTT devices stay unavailable until it is")

    def request_stop(self) -> None:
        self.stop_requested.set()

    def _make_sink(self) -> TelemetrySink:
        if self._sink_factory is not None:
            return self._sink_factory()
        from buildingd.telemetry.sink import create_sink

        return create_sink(self.settings.influx, self.settings.state_dir)

    async def _give_up(self, name: str, err: BaseException) -> None:
        self.metrics.inc("buildingd_agents_failed_total")
        # What the agent owned is degraded for STATUS=, /metrics and the API until a reload.
        inner = name[name.find("[") + 1 : -1]
        if name.startswith("zone[") and inner in self.zone_agents:
            self.zone_agents[inner].degraded.add("agent")
        elif name.startswith("device[") and inner in self.device_agents:
            self.device_agents[inner].available = False
            self.metrics.set("buildingd_device_up", 0.0, device=inner)
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

        def make() -> DeviceAgent:
            # A restart after a crash makes a new agent: the API, STATUS= and the watchdog
            # must look at that one, not at the one that crashed.
            agent = DeviceAgent(device, self.ctx)
            self.device_agents[device_id] = agent
            return agent

        await self.supervisor.start(f"device[{device_id}]", make)

    async def start_zone(self, zone_id: str) -> None:
        assert self.supervisor is not None

        def make() -> ZoneAgent:
            agent = ZoneAgent(
                zone_id, self.ctx, baseline=self.baseline, state_dir=self.settings.state_dir
            )
            old = self.zone_agents.get(zone_id)
            if old is not None:  # a restarted zone keeps its adjustments and commitments
                agent.set_adjustments(old.state.adjustments)
                agent.commitments = old.commitments  # so it still restores at their window end
                agent.stats = old.stats
            self.zone_agents[zone_id] = agent
            return agent

        await self.supervisor.start(f"zone[{zone_id}]", make)

    async def run(self, duration_s: float | None = None) -> RunSummary:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        sink = self.sink = self._make_sink()
        await sink.start()
        loop = asyncio.get_running_loop()
        self._loop_started = loop.time()
        installed: list[signal.Signals] = []
        handlers = {
            signal.SIGTERM: self.request_stop,
            signal.SIGINT: self.request_stop,
            signal.SIGHUP: self.request_reload,
        }
        for sig, handler in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
        try:
            async with BoundedExitStack() as services:
                self._services = services
                await self._start_mqtt(services)
                if self.nats is not None:
                    await self.nats.start()
                    services.push_async_callback(self.nats.stop)
                await self._start_simulator_servers(services)
                async with (
                    Supervisor(self.clock, RestartPolicy(), on_give_up=self._give_up) as sup,
                    asyncio.TaskGroup() as tasks,
                ):
                    self.supervisor = sup
                    await sup.start("telemetry", lambda: TelemetryAgent(self.ctx, sink))
                    # Zones first, so they hear the devices' first readings; on a site over
                    # several gateways, only this one's (service/gateway).
                    for zone_id in self.site.zones:
                        if runs_zone(self.site, self.settings, zone_id):
                            await self.start_zone(zone_id)
                    if not self.baseline and runs_coordinator(self.site, self.settings):
                        await self._start_coordinator(sup)
                    if self.mqtt is not None:
                        await self._start_mqtt_bridge(sup, self.mqtt)
                    for device_id in self.site.devices:
                        if runs_device(self.site, self.settings, device_id):
                            await self.start_device(device_id)
                    if self.nats is not None:  # commands once the agents listen
                        tasks.create_task(self.nats.run(), name="nats-bus")
                    await self._start_http()
                    self.ctx.ready_s = self.clock.monotonic()
                    self.ready.set()
                    for callback in self.on_ready:
                        callback()
                    log.info("%s; running", self.site.summary())
                    await self._report_set_aside(sink)
                    self.notifier.ready(self.status_summary())
                    housekeeping = tasks.create_task(self._housekeeping(), name="housekeeping")
                    reloader = tasks.create_task(self._reloader(), name="reloader")
                    # A run of ``duration_s`` ends by the timeout as a requested stop does.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(duration_s):
                            await self.stop_requested.wait()
                    self.notifier.stopping()
                    log.info("stopping")
                    for callback in self.on_stopping:
                        callback()
                    housekeeping.cancel()
                    reloader.cancel()
                    await self._shutdown(sup)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            if self.http is not None:
                await bounded("http", self.http.stop, SERVICE_STOP_DEADLINE_S)
            await bounded("drivers", self.ctx.drivers.resources.close_all, SERVICE_STOP_DEADLINE_S)
            # Telemetry last, so what the stop did is flushed too (to disk or the server).
            await bounded("telemetry", sink.stop, SERVICE_STOP_DEADLINE_S * 2)
        return self.summary()

    async def _shutdown(self, sup: Supervisor) -> None:
        """Graceful stop: safe states where the policy asks, then zones, then devices (each
        finishing its in-flight write), then the rest."""
        self.accepting_external_commands = False
        await self._apply_shutdown_states()
        # Each group at once: every agent has its own stop deadline, and a slow one must not
        # add its deadline to every other's.
        await sup.stop_many([f"zone[{zone_id}]" for zone_id in self.site.zones])
        self.ctx.accepting_commands = False
        await sup.stop_many([f"device[{device_id}]" for device_id in self.site.devices])
        await sup.stop_all()

    async def _apply_shutdown_states(self) -> None:
        agents = [
            a
            for z, a in self.zone_agents.items()
            if z in self.site.zones and self.site.policy_for(z).shutdown.action == "safe"
        ]
        for agent in agents:
            await agent.drive_safe_state()
        deadline = self.clock.monotonic() + 10.0
        while any(a.pending_commands() for a in agents) and self.clock.monotonic() < deadline:
            await self.clock.sleep(0.1)

    def request_reload(self) -> None:
        """SIGHUP: the reloader task (owned by the daemon's task group) does the work."""
        self._reload_requested.set()

    async def _reloader(self) -> None:
        """Runs each requested reload. Nothing a reload raises may reach the daemon's task
        group (that would stop the daemon and leave the building uncontrolled)."""
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            try:
                await self.reload()
            except Exception as err:
                log.exception("reload failed while applying it")
                await self._reload_failed([f"reload: {type(err).__name__}: {err}"])

    async def reload(self) -> dict[str, object]:
        """Re-read settings and site; apply only what changed, or keep everything as it was.

        Everything is validated before anything is applied. Settings that can change live
        (``reload.LIVE_SETTINGS``: the log level, the HTTP token) are applied; other changed
        settings are reported as needing a restart and keep their running values, the site
        directory included (the site is re-read from the running one)."""
        self.notifier.reloading()
        try:
            settings = self.settings if self.settings_loader is None else self.settings_loader()
            token = self._read_token(settings) if self.http is not None else None
            site = load_site(self.settings.site_dir)
        except ConfigError as err:
            return await self._reload_failed([str(p) for p in err.problems])
        except (ValueError, OSError) as err:
            return await self._reload_failed([f"settings: {err}"])
        except Exception as err:  # noqa: BLE001  load_site raises only ConfigError; last guard
            return await self._reload_failed([f"reload: {type(err).__name__}: {err}"])
        change = diff_settings(self.settings, settings)
        applied = self._apply_live_settings(change.merged(self.settings, settings), token)
        self.restart_needed = change.restart
        if change.restart:
            log.warning(
                "settings changed that need a restart to take effect (running with the "
                "previous values): %s",
                ", ".join(change.restart),
            )
        if self.building is not None:
            from buildingd.sim.servers import relocate_simulated

            relocate_simulated(site, self.sim_gateways)
        plan = plan_reload(self.site, site)
        self.site = site
        self.ctx.site = site
        sup = self.supervisor
        assert sup is not None
        for device_id in plan.devices_stop:
            await sup.stop(f"device[{device_id}]")
            self.device_agents.pop(device_id, None)
        for zone_id in plan.zones_stop:
            await sup.stop(f"zone[{zone_id}]")
            self.zone_agents.pop(zone_id, None)
        for zone_id in plan.zones_start:
            if runs_zone(site, self.settings, zone_id):  # this gateway's share (service/gateway)
                await self.start_zone(zone_id)
        for agent in self.zone_agents.values():
            agent.rebind()
        for device_id in plan.devices_start:
            if runs_device(site, self.settings, device_id):
                await self.start_device(device_id)
        self.reloads["ok"] += 1
        self.metrics.inc("buildingd_reloads_total", result="ok")
        self.metrics.set("buildingd_config_reload_ok", 1.0)
        self.reload_problem = None
        described = plan.describe()
        if applied:
            described += f"; settings applied: {', '.join(applied)}"
        if change.restart:
            described += f"; restart needed for: {', '.join(change.restart)}"
        log.info("reloaded: %s", described)
        await self._event(
            "reload", "warning" if change.restart else "info", f"reloaded: {described}"
        )
        self.notifier.ready(self.status_summary())
        return {
            "ok": True,
            "changes": plan.describe(),
            "settings_applied": applied,
            "restart_needed": change.restart,
        }

    def _apply_live_settings(self, settings: Settings, token: str | None) -> list[str]:
        """Switch to ``settings`` (only live keys differ from the running ones); returns what
        changed, for the journal."""
        applied = []
        if settings.log_level != self.settings.log_level:
            set_log_level(settings.log_level)
            applied.append(f"log_level={settings.log_level}")
        if self.http is not None and token != self.http.token:
            self.http.token = token  # a rotated token file takes effect at once
            applied.append("http token" if token is not None else "http token (writes off)")
        self.settings = settings
        return applied

    @staticmethod
    def _read_token(settings: Settings) -> str | None:
        path = settings.http.token_file
        if path is None:
            return None
        return path.read_text(encoding="utf-8").strip() or None

    async def _reload_failed(self, problems: list[str]) -> dict[str, object]:
        self.reloads["failed"] += 1
        self.metrics.inc("buildingd_reloads_total", result="failed")
        self.metrics.set("buildingd_config_reload_ok", 0.0)
        self.reload_problem = problems[0] if problems else "unknown problem"
        for problem in problems:
            log.error("reload refused, keeping the running configuration: %s", problem)
        await self._event("reload-failed", "error", "reload refused: " + "; ".join(problems[:5]))
        self.notifier.ready(f"reload failed: {problems[0]}"[:200])
        return {"ok": False, "errors": problems}

    async def _report_set_aside(self, sink: TelemetrySink) -> None:
        """Once, at start: telemetry state files that were unreadable and set aside."""
        count = sink.stats().get("state_files_set_aside", 0.0)
        if count:
            self.metrics.inc("buildingd_state_files_set_aside_total", count, file="telemetry")
            message = f"{count:.0f} unreadable telemetry state file(s) set aside (*.corrupt-*)"
            await self._event("state-file", "error", message)

    async def _event(self, kind: str, severity: str, message: str) -> None:
        env = EventMsg(
            kind=kind,
            source="daemon",
            severity=severity,
            message=message[:2000],
            timestamp=self.clock.now(),
        ).envelope(Performative.INFORM, "daemon", EVENTS_TOPIC)
        await self.bus.send(env)

    async def _start_http(self) -> None:
        http = self.settings.http
        if not http.enabled:
            return
        from buildingd.service.api import install_routes

        server = HttpServer(http.bind, http.port, self._read_token(self.settings))
        install_routes(server, self)
        try:
            await server.start()
        except OSError as err:
            why = "already in use" if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
            raise StartupError(
                f"HTTP port {http.bind}:{http.port}: {why} (set [http] port in the settings "
                "or BUILDINGD_HTTP__PORT; another buildingd running?)"
            ) from err
        self.http = server

    async def _housekeeping(self) -> None:
        """Every few real seconds: STATUS= for systemd, and WATCHDOG=1 while alive."""
        interval = self.notifier.watchdog_interval_s()
        if interval is not None:
            self.watchdog = WatchdogGuard(self.notifier, interval)
            # The control loop must tick: the slowest zone decides at least every
            # CONTROL_INTERVAL_S simulated seconds; allow three intervals plus slack.
            self.watchdog.register(
                "control", 3 * self.clock.to_loop_seconds(CONTROL_INTERVAL_S) + 2 * interval
            )
        next_health = 0.0
        while True:
            if self.watchdog is not None:
                if self._control_alive():
                    self.watchdog.heartbeat("control")
                self.watchdog.tick()
            self.notifier.status(self.status_summary())
            now = asyncio.get_running_loop().time()
            if self.sink is not None and now >= next_health:
                next_health = now + HEALTH_INTERVAL_S
                self.sink.submit([daemon_line(self.site.site_id, self.health(), self.clock.now())])
            await asyncio.sleep(interval if interval is not None else 5.0)

    def health(self) -> dict[str, float | None]:
        """The ``daemon`` telemetry measurement (see ``telemetry.schema``)."""
        sink = self.sink.stats() if self.sink is not None else {}
        return {
            "uptime_s": asyncio.get_running_loop().time() - self._loop_started,
            "zones_degraded": sum(1 for a in self.zone_agents.values() if a.degraded),
            "devices_up": sum(1 for a in self.device_agents.values() if a.available),
            "devices_down": sum(1 for a in self.device_agents.values() if a.available is False),
            "alerts": len(self.open_alerts()),
            "bus_messages": self.bus.stats.total,
            "telemetry_pending": sink.get("pending"),
            "telemetry_buffered": sink.get("buffer_points"),
            "telemetry_dropped": sum(v for k, v in sink.items() if k.startswith("dropped")),
            "rss_mb": resident_mb(),
        }

    def stuck_agents(self) -> dict[str, str]:
        """Running agents that stopped making progress, by name, with why: a zone that has not
        decided for three control intervals plus ``zone_slack_s``, a device agent that has
        not started a poll for three poll intervals plus ``poll_slack_s`` (a read or a write
        that never returns, or a wedged agent loop). Intervals are in the daemon's clock
        (simulated under ``--speed``), slacks in real seconds (driver timeouts are real).

        Only agents the supervisor has running count: one restarting after a crash is not
        stuck, and one it gave up on is already an open alert (``open_alerts``); restarting
        the whole daemon over it would stop every other zone too. Agents that have not
        decided or polled yet count as alive: both do so as soon as they are started."""
        sup = self.supervisor
        if sup is None:
            return {}

        def running(name: str) -> bool:
            child = sup.children.get(name)
            return child is not None and child.state is ChildState.RUNNING

        now = self.clock.monotonic()
        loop_s = self.clock.to_loop_seconds
        out: dict[str, str] = {}
        for zone_id, zone in self.zone_agents.items():
            name = f"zone[{zone_id}]"
            if zone.last_control_s is None or not running(name):
                continue
            age_s = loop_s(now - zone.last_control_s)
            allowed_s = loop_s(3 * CONTROL_INTERVAL_S) + self.zone_slack_s
            if age_s > allowed_s:
                out[name] = f"no decision for {age_s:.1f} s (allowed {allowed_s:.1f} s)"
        for device_id, dev in self.device_agents.items():
            name = f"device[{device_id}]"
            if dev.last_poll_s is None or not running(name):
                continue
            age_s = loop_s(now - dev.last_poll_s)
            allowed_s = loop_s(3 * dev.device.poll_interval_s) + self.poll_slack_s
            if age_s > allowed_s:
                what = "a read in flight" if dev.poll_stuck_since(now) > 0 else "no poll started"
                out[name] = f"{what} for {age_s:.1f} s (allowed {allowed_s:.1f} s)"
        return out

    def _control_alive(self) -> bool:
        """True when no zone or poller is stuck (see ``stuck_agents``). Logs each stuck agent
        once when first seen and once when it makes progress again, so the journal says what
        the watchdog restart was about."""
        stuck = self.stuck_agents()
        for name, why in stuck.items():
            if name not in self._stuck_reported:
                log.error("watchdog: %s stuck: %s; withholding WATCHDOG=1", name, why)
        for name in sorted(self._stuck_reported - stuck.keys()):
            log.info("watchdog: %s is making progress again", name)
        self._stuck_reported = set(stuck)
        return not stuck

    def status_summary(self) -> str:
        zones = len(self.site.zones)
        degraded = sum(1 for a in self.zone_agents.values() if a.degraded)
        up = sum(1 for a in self.device_agents.values() if a.available)
        down = sum(1 for a in self.device_agents.values() if a.available is False)
        alerts = len(self.open_alerts())
        line = (
            f"{zones} zones ({degraded} degraded), devices {up} up/{down} down, "
            f"{alerts} alerts open"
        )
        if self.restart_needed:
            line += f"; restart needed for {', '.join(self.restart_needed)}"
        if self.reload_problem is not None:
            line += f"; reload failed, running the previous configuration: {self.reload_problem}"
        return line[:400]

    def open_alerts(self) -> list[dict[str, object]]:
        """Current problems: degraded zones, unavailable devices, agents given up on."""
        out: list[dict[str, object]] = []
        for zone_id, agent in self.zone_agents.items():
            for what in sorted(agent.degraded):
                out.append({"zone": zone_id, "cause": f"{what} unavailable"})
        for device_id, dev in self.device_agents.items():
            if dev.available is False:
                out.append({"device": device_id, "cause": "device unavailable"})
        if self.supervisor is not None:
            for child in self.supervisor.children.values():
                if child.state is ChildState.FAILED:
                    out.append({"agent": child.name, "cause": child.last_error})
        if self.coordinator is not None:
            for esc in self.coordinator.open_escalations():
                out.append({"id": esc.id, "escalation": esc.message, "contacts": esc.contacts,
                            "acknowledge": f"POST /api/alerts/{esc.id}/ack"})  # fmt: skip
        return out

    async def _start_simulator_servers(self, services: contextlib.AsyncExitStack) -> None:
        if self.building is None:
            return
        from buildingd.sim.servers import start_simulator_servers

        self.sim_gateways = await start_simulator_servers(
            self.building, self.clock, self.site, self.settings.sim, self.mqtt, services
        )

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


def set_log_level(level: str) -> None:
    """Change the log level of a running daemon, as ``journal.setup_logging`` sets it at start
    (chatty libraries stay at warnings above debug; audit lines pass whatever the level)."""
    from buildingd.audit import audit_log
    from buildingd.service.journal import LEVELS, QUIET_LOGGERS

    levelno = LEVELS[level]
    logging.getLogger().setLevel(levelno)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if levelno <= logging.DEBUG else logging.WARNING
        )
    audit_log.setLevel(logging.INFO)


def resident_mb() -> float | None:
    """Current resident set size (Linux), for the health measurement."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def state_dir_usable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".probe"
        probe.write_text("")
        probe.unlink()
    except OSError:
        return False
    return True
