"""Run and stop order: start telemetry, MQTT, simulator servers, zones, the coordinator, the
bridge, devices and HTTP in that order; wait for a stop; stop zones (after their safe states),
then devices, then the rest, each within its deadline. Also how one agent is (re)started."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from buildingd.agents.bus import Performative
from buildingd.agents.device import DeviceAgent
from buildingd.agents.messages import DEMAND_RESPONSE_TOPIC, EVENTS_TOPIC, EventMsg
from buildingd.agents.runtime import RestartPolicy, Supervisor
from buildingd.agents.telemetry import TelemetryAgent
from buildingd.agents.zone import ZoneAgent
from buildingd.errors import StartupError
from buildingd.service.gateway import runs_coordinator, runs_device, runs_zone
from buildingd.service.http import HttpServer
from buildingd.service.reloading import read_token
from buildingd.service.stopping import SERVICE_STOP_DEADLINE_S, BoundedExitStack, bounded

if TYPE_CHECKING:
    from buildingd.coordinator.agent import CoordinatorAgent
    from buildingd.mqtt.connection import MqttConnection
    from buildingd.service.app import Daemon

log = logging.getLogger(__name__)
# A new leader waits this long for the last leader's state (a NATS stream leader's election
# takes 4-9 s) before its coordinator starts on its own files.
TAKE_OVER_S = 30.0
SETTLE_LOOK_S = 1.0  # how often the bus looks whether the coordinator it waits for still runs


async def run(daemon: Daemon, duration_s: float | None) -> None:
    """Start everything in order, wait for a stop request (or ``duration_s``), stop in reverse."""
    daemon.settings.state_dir.mkdir(parents=True, exist_ok=True)
    sink = daemon.sink = daemon.make_sink()
    await sink.start()
    loop = asyncio.get_running_loop()
    daemon.loop_started = loop.time()
    installed: list[signal.Signals] = []
    handlers = {
        signal.SIGTERM: daemon.request_stop,
        signal.SIGINT: daemon.request_stop,
        signal.SIGHUP: daemon.request_reload,
    }
    for sig, handler in handlers.items():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
    try:
        async with BoundedExitStack() as services:
            await _start_mqtt(daemon, services)
            if daemon.nats is not None:
                await daemon.nats.start()
                services.push_async_callback(daemon.nats.stop)
            await _start_simulator_servers(daemon, services)
            async with (
                Supervisor(daemon.clock, RestartPolicy(), on_give_up=daemon.give_up) as sup,
                asyncio.TaskGroup() as tasks,
            ):
                daemon.supervisor = sup
                await sup.start("telemetry", lambda: TelemetryAgent(daemon.ctx, sink))
                # Zones first, so they hear the devices' first readings; on a site over
                # several gateways, only this one's (service/gateway).
                site, settings = daemon.site, daemon.settings
                for zone_id in site.zones:
                    if runs_zone(site, settings, zone_id):
                        await start_zone(daemon, zone_id)
                if not daemon.baseline and runs_coordinator(site, settings):
                    await _start_coordinator(daemon, sup)
                if daemon.mqtt is not None:
                    await _start_mqtt_bridge(daemon, sup, daemon.mqtt)
                for device_id in site.devices:
                    if runs_device(site, settings, device_id):
                        await start_device(daemon, device_id)
                bus_tasks = []  # run until the agents have stopped, then cancelled
                if daemon.nats is not None:  # commands once the agents listen
                    bus_tasks.append(tasks.create_task(daemon.nats.run(), name="nats-bus"))
                    if not site.gateways.single:
                        bus_tasks.append(tasks.create_task(_watch_partition(daemon),
                                                           name="nats-partition"))  # fmt: skip
                election = _elect_coordinator(daemon, sup, tasks)
                await _start_http(daemon)
                daemon.ctx.ready_s = daemon.clock.monotonic()
                daemon.ready.set()
                for callback in daemon.on_ready:
                    callback()
                log.info("%s; running", daemon.site.summary())
                await _report_set_aside(daemon)
                daemon.notifier.ready(daemon.status_summary())
                housekeeping = tasks.create_task(
                    daemon.healthcheck.housekeeping(), name="housekeeping"
                )
                reloader = tasks.create_task(daemon.reloading.serve(), name="reloader")
                # A run of ``duration_s`` ends by the timeout as a requested stop does.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(duration_s):
                        await daemon.stop_requested.wait()
                daemon.notifier.stopping()
                log.info("stopping")
                for callback in daemon.on_stopping:
                    callback()
                housekeeping.cancel()
                reloader.cancel()
                if election is not None:  # gives the lease up: stops the coordinator here
                    election.cancel()
                    await asyncio.wait({election})
                await _shutdown(daemon, sup)
                for task in bus_tasks:  # else the task group would wait for them for ever
                    task.cancel()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if daemon.http is not None:
            await bounded("http", daemon.http.stop, SERVICE_STOP_DEADLINE_S)
        await bounded("drivers", daemon.ctx.drivers.resources.close_all, SERVICE_STOP_DEADLINE_S)
        # Telemetry last, so what the stop did is flushed too (to disk or the server).
        await bounded("telemetry", sink.stop, SERVICE_STOP_DEADLINE_S * 2)


async def _shutdown(daemon: Daemon, sup: Supervisor) -> None:
    """Graceful stop: safe states where the policy asks, then zones, then devices (each
    finishing its in-flight write), then the rest."""
    daemon.accepting_external_commands = False
    await _apply_shutdown_states(daemon)
    # Each group at once: every agent has its own stop deadline, and a slow one must not
    # add its deadline to every other's.
    await sup.stop_many([f"zone[{zone_id}]" for zone_id in daemon.site.zones])
    daemon.ctx.accepting_commands = False
    await _release_points(daemon)
    await sup.stop_many([f"device[{device_id}]" for device_id in daemon.site.devices])
    await sup.stop_all()


async def _apply_shutdown_states(daemon: Daemon) -> None:
    site = daemon.site
    agents = [
        a
        for z, a in daemon.zone_agents.items()
        if z in site.zones and site.policy_for(z).shutdown.action == "safe"
    ]
    for agent in agents:
        await agent.drive_safe_state()
    deadline = daemon.clock.monotonic() + 10.0
    while any(a.pending_commands() for a in agents) and daemon.clock.monotonic() < deadline:
        await daemon.clock.sleep(0.1)


async def _release_points(daemon: Daemon) -> None:
    """Policy ``shutdown: {action: release}``: once the zones have stopped, each device agent
    gives back what it commanded in those zones (drivers that cannot, hold)."""
    site = daemon.site
    zones = {z for z in site.zones if site.policy_for(z).shutdown.action == "release"}
    if not zones:
        return
    # All devices at once: each is bounded by its own timeout and retries.
    await asyncio.gather(*(
        agent.release({p.id for p in agent.points.values() if p.zone in zones},
                      "shutdown: policy releases")
        for agent in list(daemon.device_agents.values()) if agent.driver is not None
    ))  # fmt: skip


async def start_device(daemon: Daemon, device_id: str) -> None:
    assert daemon.supervisor is not None
    device = daemon.ctx.site.devices[device_id]

    def make() -> DeviceAgent:
        # A restart after a crash makes a new agent: the API, STATUS= and the watchdog
        # must look at that one, not at the one that crashed.
        agent = DeviceAgent(device, daemon.ctx)
        daemon.device_agents[device_id] = agent
        return agent

    await daemon.supervisor.start(f"device[{device_id}]", make)


async def start_zone(daemon: Daemon, zone_id: str) -> None:
    assert daemon.supervisor is not None

    def make() -> ZoneAgent:
        agent = ZoneAgent(
            zone_id, daemon.ctx, baseline=daemon.baseline, state_dir=daemon.settings.state_dir
        )
        old = daemon.zone_agents.get(zone_id)
        if old is not None:  # a restarted zone keeps its adjustments and commitments
            agent.set_adjustments(old.state.adjustments)
            agent.commitments = old.commitments  # so it still restores at their window end
            agent.stats = old.stats
        daemon.zone_agents[zone_id] = agent
        return agent

    await daemon.supervisor.start(f"zone[{zone_id}]", make)


async def give_up(daemon: Daemon, name: str, err: BaseException) -> None:
    """The supervisor stopped restarting ``name``: what it owned is degraded for STATUS=,
    /metrics and the API until a reload, and an event says so."""
    daemon.metrics.inc("buildingd_agents_failed_total")
    inner = name[name.find("[") + 1 : -1]
    if name.startswith("zone[") and inner in daemon.zone_agents:
        daemon.zone_agents[inner].degraded.add("agent")
    elif name.startswith("device[") and inner in daemon.device_agents:
        daemon.device_agents[inner].available = False
        daemon.metrics.set("buildingd_device_up", 0.0, device=inner)
    env = EventMsg(
        kind="agent-failed",
        source="supervisor",
        zone_id=name[5:-1] if name.startswith("zone[") else None,
        severity="error",
        message=f"agent {name} stopped after too many restarts: {err}",
        timestamp=daemon.clock.now(),
    ).envelope(Performative.INFORM, "supervisor", EVENTS_TOPIC)
    await daemon.bus.send(env)


async def _start_coordinator(
    daemon: Daemon,
    sup: Supervisor,
    on_saved: Callable[[], None] | None = None,
    carried: dict[str, Any] | None = None,
    durable: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """``on_saved``: told when a desk has written its state file or changed what it keeps in
    memory (to mirror it at once); ``carried``: votes and resets another gateway's coordinator
    left (``CoordinatorAgent.carried``); ``durable``: awaited before the coordinator sends
    (``Office.durable``)."""
    from buildingd.coordinator.agent import CoordinatorAgent

    def make() -> CoordinatorAgent:
        # Commitments in force are kept in the state directory across restarts.
        agent = CoordinatorAgent(daemon.ctx, state_dir=daemon.settings.state_dir)
        agent.demand.file.on_saved = agent.alarms.file.on_saved = on_saved
        agent.office.on_state_changed = on_saved
        agent.office.durable = durable
        agent.carried_in = carried if daemon.coordinator is None else None
        if daemon.coordinator is not None:
            # A restarted coordinator keeps the open escalations and the occupants' votes (the
            # zones keep the offsets they were sent; a new vote box would start from zero).
            agent.escalations = daemon.coordinator.escalations
            agent.occupants.votes = daemon.coordinator.occupants.votes
        daemon.coordinator = agent
        return agent

    await sup.start("coordinator", make)


def _elect_coordinator(
    daemon: Daemon, sup: Supervisor, tasks: asyncio.TaskGroup
) -> asyncio.Task[None] | None:
    """On a candidate of several (service/gateway): run the coordinator only while this
    gateway holds the site's lease, with the state the last leader left in the site's KV
    bucket (nats/state_mirror), and mirror its state there while leading."""
    from buildingd.nats.state_mirror import StateMirror

    election = daemon.election
    if daemon.baseline or not election.candidate or daemon.nats is None:
        return None
    nats = daemon.nats
    assert nats.nc is not None
    settings = daemon.settings

    def carried() -> dict[str, Any] | None:
        coordinator = daemon.coordinator
        return coordinator.carried() if coordinator is not None else None

    mirror = StateMirror(nats.nc, daemon.site.site_id, settings.state_dir, settings.nats.replicas,
                         carried, lambda: daemon.clock.now().timestamp(),
                         daemon.metrics, election.gateway_id)  # fmt: skip

    def renewed(revision: int) -> None:  # the fencing token of this gateway's coordinator
        daemon.metrics.set("buildingd_coordinator_lease_revision", float(revision))

    async def settled() -> bool:
        """The coordinator has taken what the bus delivered to it (its inbox is empty: a
        message is handled in the step that takes it) and its state is in the bucket."""
        agent = daemon.coordinator
        while agent is not None and daemon.coordinator is agent:
            try:
                async with asyncio.timeout(SETTLE_LOOK_S):
                    await agent.inbox.drained()
            except TimeoutError:  # looked at again: a stopped coordinator never drains
                continue
            return await mirror.synced(election.leads)
        return False

    nats.settle, nats.settle_for = settled, frozenset({DEMAND_RESPONSE_TOPIC})
    group: list[asyncio.TaskGroup] = []  # elect()'s, for the start after a takeover
    starting: list[asyncio.Task[None]] = []

    async def start_leading(revision: int) -> None:
        # What the last leader committed, before this coordinator reads its files: waited
        # for (the state's stream may be electing a leader) while the lease is renewed.
        await mirror.take_over(TAKE_OVER_S)
        if not election.leads():
            return
        await _start_coordinator(daemon, sup, on_saved=mirror.changed.set, carried=mirror.taken,
                                 durable=lambda: mirror.synced(election.leads))  # fmt: skip
        log.info("this gateway leads: coordinator started (lease revision %d)", revision)

    async def acquired(revision: int) -> None:
        renewed(revision)
        starting.append(group[0].create_task(start_leading(revision), name="coordinator-start"))

    async def lost() -> None:
        # Fencing: the coordinator stops here before the lease could expire on the cluster.
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        starting.clear()
        await sup.stop("coordinator")
        daemon.coordinator = None  # the API answers "not running" on a standby
        renewed(0)
        log.warning("this gateway no longer leads: coordinator stopped")

    async def elect() -> None:
        async with asyncio.TaskGroup() as mine:
            group.append(mine)
            mine.create_task(mirror.keep_pushing(election.leads), name="coordinator-state")
            await election.run(nats, acquired, lost, renewed)

    return tasks.create_task(elect(), name="coordinator-lease")


async def _watch_partition(daemon: Daemon) -> None:
    """One alert per partition (an error event, and ``/api/alerts`` and STATUS= while it
    lasts), one event when it heals; the zones here go on by their policies meanwhile."""
    from buildingd.nats.partition import Partition, watch

    nats = daemon.nats
    assert nats is not None and nats.nc is not None
    gateway = daemon.election.gateway_id
    nats.partition = partition = Partition(grace_s=daemon.settings.nats.lease_ttl_s)

    async def cut(problem: str) -> None:
        daemon.metrics.set("buildingd_gateway_cut_off", 1.0)
        message = (f"gateway {gateway} cut off from the NATS cluster: {problem}; its zones run "
                   "on their policies, commands for other gateways wait in the stream")  # fmt: skip
        log.error("%s", message)
        await daemon.event("partition", "error", message)

    async def healed(lasted_s: float) -> None:
        daemon.metrics.set("buildingd_gateway_cut_off", 0.0)
        message = f"gateway {gateway} back in the NATS cluster after {lasted_s:.0f} s"
        log.info("%s", message)
        await daemon.event("partition", "info", message)

    daemon.metrics.set("buildingd_gateway_cut_off", 0.0)
    await watch(nats.nc, partition, asyncio.get_running_loop().time, cut, healed)


async def _start_mqtt_bridge(daemon: Daemon, sup: Supervisor, conn: MqttConnection) -> None:
    from buildingd.coordinator.votes import VoteResult
    from buildingd.mqtt.bridge import MqttBridgeAgent

    def vote(zone_id: str, vote: str) -> VoteResult:
        if daemon.coordinator is None:
            return VoteResult(False, "the coordinator is not running", 0.0)
        return daemon.coordinator.vote(zone_id, vote, "mqtt")

    async def flush() -> None:
        if daemon.coordinator is not None:
            await daemon.coordinator.flush()

    http = daemon.settings.http
    host = socket.gethostname() if http.bind in ("0.0.0.0", "::") else http.bind
    url = f"http://{host}:{http.port}" if http.enabled else None
    await sup.start(
        "mqtt-bridge",
        lambda: MqttBridgeAgent(
            daemon.ctx, conn, vote, lambda: daemon.coordinator, flush, url, daemon.election.leader
        ),  # fmt: skip
    )


async def _start_mqtt(daemon: Daemon, services: contextlib.AsyncExitStack) -> None:
    """The broker connection (and the embedded broker when no host is configured)."""
    if daemon.mqtt is None:
        return
    if daemon.settings.mqtt.host is None:
        from buildingd.mqtt.broker import EmbeddedBroker

        mqtt = daemon.settings.mqtt
        broker = EmbeddedBroker(
            mqtt.port,
            mqtt.broker_password_file,
            mqtt.broker_max_payload_bytes,
            mqtt.broker_max_retained_bytes,
        )
        await broker.start()
        daemon.broker = broker
        services.push_async_callback(broker.stop)
        daemon.mqtt.host, daemon.mqtt.port = broker.host, broker.port
    await daemon.mqtt.start()
    services.push_async_callback(daemon.mqtt.stop)
    if not await daemon.mqtt.wait_connected(10.0):
        log.warning("mqtt: not connected yet; MQTT devices stay unavailable until it is")


async def _start_simulator_servers(daemon: Daemon, services: contextlib.AsyncExitStack) -> None:
    if daemon.building is None:
        return
    from buildingd.sim.servers import start_simulator_servers

    daemon.sim_gateways = await start_simulator_servers(
        daemon.building, daemon.clock, daemon.site, daemon.settings.sim, daemon.mqtt, services
    )


async def _start_http(daemon: Daemon) -> None:
    http = daemon.settings.http
    if not http.enabled:
        return
    from buildingd.service.api import install_routes

    server = HttpServer(http.bind, http.port, read_token(daemon.settings))
    install_routes(server, daemon)
    try:
        await server.start()
    except OSError as err:
        why = "already in use" if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
        raise StartupError(
            f"HTTP port {http.bind}:{http.port}: {why} (set [http] port in the settings "
            "or BUILDINGD_HTTP__PORT; another buildingd running?)"
        ) from err
    daemon.http = server


async def _report_set_aside(daemon: Daemon) -> None:
    """Once, at start: telemetry state files that were unreadable and set aside."""
    assert daemon.sink is not None
    count = daemon.sink.stats().get("state_files_set_aside", 0.0)
    if count:
        daemon.metrics.inc("buildingd_state_files_set_aside_total", count, file="telemetry")
        message = f"{count:.0f} unreadable telemetry state file(s) set aside (*.corrupt-*)"
        await daemon.event("state-file", "error", message)
