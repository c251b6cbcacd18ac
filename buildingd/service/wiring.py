"""Wiring: builds the daemon's parts (clock, simulated building, MQTT connection, bus, the bus
between gateways, agent context) from validated settings and site. Constructors only: nothing
here connects or starts (the one file touched is the bus key, read or created when the bus
between gateways runs)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from buildingd.agents.bus import InProcessBus
from buildingd.agents.context import AgentContext
from buildingd.clock import Clock, ScaledClock, SystemClock
from buildingd.config.bacnet import BacnetDevice
from buildingd.config.loader import Site
from buildingd.drivers.base import BacnetClient, DriverContext
from buildingd.metrics import Metrics
from buildingd.service.gateway import Election
from buildingd.settings import Settings
from buildingd.sim.building import Building

if TYPE_CHECKING:
    from buildingd.mqtt.connection import MqttConnection
    from buildingd.nats.bus import NatsBus


@dataclass
class Parts:
    """What the daemon is made of, before anything runs."""

    clock: Clock
    building: Building | None
    mqtt: MqttConnection | None
    bus: InProcessBus
    nats: NatsBus | None  # the bus between gateways, when [nats] is enabled
    election: Election  # where the coordinator runs (service/gateway)
    metrics: Metrics
    ctx: AgentContext


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


def wire(
    settings: Settings,
    site: Site,
    clock: Clock | None,
    is_local_agent: Callable[[str], bool],
    running_site: Callable[[], Site],
) -> Parts:
    """The parts for ``site``. ``is_local_agent`` tells the bus between gateways which agents
    run in this process; ``running_site`` gives the site in force (it changes on reload)."""
    building: Building | None = None
    if uses_simulator(site):
        # A given scaled clock (tests, evaluate) says when the simulation starts.
        start = clock.start if isinstance(clock, ScaledClock) else sim_start(settings, site)
        clock = clock or ScaledClock(start, settings.speed)
        building = Building(
            list(site.zones.values()),
            start,
            site.timezone,
            seed=settings.sim.seed,
            scenario=settings.sim.weather,
        )
    else:
        clock = clock or SystemClock()
    metrics = Metrics()
    metrics.set("buildingd_config_reload_ok", 1.0)
    mqtt: MqttConnection | None = None
    bus = InProcessBus()
    if mqtt_needed(settings, site):
        from buildingd.mqtt.connection import MqttConnection

        conf = settings.mqtt
        host = conf.host or "127.0.0.1"
        # Gateways of one site may share a broker (an external one; the embedded amqtt has no
        # shared subscriptions): each its own client id and availability, requests taken once.
        several = not site.gateways.single
        mqtt = MqttConnection(conf, site.site_id, host, conf.port, metrics=metrics,
                              gateway=(settings.gateway.id or "main") if several else None,
                              share=several and conf.host is not None)  # fmt: skip
    nats: NatsBus | None = None
    election = Election(site, settings)
    if settings.nats.enabled:  # the bus between the site's gateways (service/gateway)
        from buildingd.service.gateway import nats_bus

        nats = nats_bus(settings, site, is_local_agent, running_site, metrics, election)
        bus = nats
    ctx = AgentContext(
        bus=bus,
        clock=clock,
        site=site,
        drivers=DriverContext(
            clock=clock,
            building=building,
            mqtt=mqtt,
            metrics=metrics,
            serve_protocols=settings.sim.protocols,
            ble_scanning=settings.ble.scanning,
            bacnet=bacnet_client(settings, site),
        ),
        metrics=metrics,
    )
    return Parts(clock, building, mqtt, bus, nats, election, metrics, ctx)


def bacnet_client(settings: Settings, site: Site) -> BacnetClient:
    """``[bacnet]`` as the driver uses it. Without an address the client binds the default
    interface, except for a site whose BACnet devices are all simulated (the demo): then a free
    port on 127.0.0.1, so ``make run`` never speaks BACnet on the building network."""
    fields = settings.bacnet.model_dump()
    if fields["address"] is None:
        devices = [d for d in site.devices.values() if isinstance(d, BacnetDevice)]
        if devices and all(d.simulated for d in devices):
            from buildingd.sim.servers import free_loopback_port

            fields["address"] = f"127.0.0.1:{free_loopback_port(socket.SOCK_DGRAM)}"
        else:
            fields["address"] = "host"
    return BacnetClient(**fields)
