"""This process's share of a site spread over gateways (site.yaml ``gateways:``): which zone,
device and coordinator agents it starts, and the NATS bus to the other gateways (``[nats]``).
Until the coordinator is elected (issue 19 item 3) it runs on the first candidate gateway."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from buildingd.agents.bus import Envelope
from buildingd.config.loader import Site
from buildingd.metrics import Metrics
from buildingd.settings import Settings, bus_key_path

if TYPE_CHECKING:
    from buildingd.nats.bus import NatsBus


def runs_zone(site: Site, settings: Settings, zone_id: str) -> bool:
    return site.gateways.runs_zone(settings.gateway.id, zone_id)


def runs_device(site: Site, settings: Settings, device_id: str) -> bool:
    return site.gateways.runs_device(settings.gateway.id, device_id)


def coordinator_gateway(site: Site) -> str | None:
    candidates = site.gateways.coordinator_candidates
    return candidates[0] if candidates else None


def runs_coordinator(site: Site, settings: Settings) -> bool:
    return site.gateways.single or settings.gateway.id == coordinator_gateway(site)


def nats_bus(
    settings: Settings,
    site: Site,
    is_local: Callable[[str], bool],
    current_site: Callable[[], Site],
    metrics: Metrics,
) -> NatsBus:
    """The bus over the site's NATS cluster, sealed with the site's bus key. A site of one
    gateway has no assignment: every agent address routes to this process's own id."""
    from buildingd.agents.hearing import hearing_problem
    from buildingd.mqtt.bus_auth import load_or_create_key
    from buildingd.nats.bus import NatsBus, gateway_route

    gateway_id = settings.gateway.id or "main"

    def device_gateway(device_id: str) -> str | None:
        gmap = current_site().gateways  # as reloaded
        return gateway_id if gmap.single else gmap.device_gateway.get(device_id)

    def zone_gateway(zone_id: str) -> str | None:
        gmap = current_site().gateways
        return gateway_id if gmap.single else gmap.zone_gateway.get(zone_id)

    route = gateway_route(device_gateway, zone_gateway, coordinator_gateway(site) or gateway_id)
    key = load_or_create_key(bus_key_path(settings))

    def may_hear(env: Envelope) -> str | None:
        return hearing_problem(env, current_site())  # the site after a reload too

    return NatsBus(settings.nats, site.site_id, gateway_id, route, is_local, key, may_hear,
                   metrics=metrics)  # fmt: skip
