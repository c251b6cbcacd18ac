"""This process's share of a site spread over gateways (site.yaml ``gateways:``): which zone,
device and coordinator agents it starts, and the NATS bus to the other gateways (``[nats]``).
With one coordinator candidate it runs there; with several, on whichever holds the lease."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from buildingd.agents.bus import Envelope
from buildingd.config.loader import Site
from buildingd.metrics import Metrics
from buildingd.settings import Settings, bus_key_path

if TYPE_CHECKING:
    from buildingd.nats.bus import NatsBus
    from buildingd.nats.lease import LeaseKeeper

log = logging.getLogger(__name__)


def runs_zone(site: Site, settings: Settings, zone_id: str) -> bool:
    return site.gateways.runs_zone(settings.gateway.id, zone_id)


def runs_device(site: Site, settings: Settings, device_id: str) -> bool:
    return site.gateways.runs_device(settings.gateway.id, device_id)


def coordinator_gateway(site: Site) -> str | None:
    candidates = site.gateways.coordinator_candidates
    return candidates[0] if candidates else None


def elects_coordinator(site: Site) -> bool:
    """Several candidates: the coordinator runs where the lease is (``Election``)."""
    return not site.gateways.single and len(site.gateways.coordinator_candidates) > 1


def runs_coordinator(site: Site, settings: Settings) -> bool:
    """This gateway runs the coordinator from the start (no election needed)."""
    if site.gateways.single:
        return True
    return not elects_coordinator(site) and settings.gateway.id == coordinator_gateway(site)


class Election:
    """Which gateway runs the site's coordinator, as this one knows it: the only candidate, or
    with several the holder of the lease (``nats/lease.py``); ``None`` while nobody is known
    to hold it (messages to the coordinator then go out as core NATS, heard by whoever runs it)."""

    def __init__(self, site: Site, settings: Settings) -> None:
        self.gateway_id = settings.gateway.id or "main"
        self.elects = elects_coordinator(site)
        self.candidate = self.elects and self.gateway_id in site.gateways.coordinator_candidates
        self.fixed = None if self.elects else (coordinator_gateway(site) or self.gateway_id)
        self.ttl_s = settings.nats.lease_ttl_s
        self.replicas = settings.nats.replicas
        self.site_id = site.site_id
        self.keeper: LeaseKeeper | None = None

    def leader(self) -> str | None:
        if self.keeper is None:
            return self.fixed
        lease = self.keeper.lease
        return lease.holder if self.keeper.holds() else lease.other

    def leads(self) -> bool:
        """This gateway holds the lease now (its coordinator may act and write state)."""
        return self.keeper is not None and self.keeper.holds()

    def revision(self) -> int | None:
        """The lease revision of this gateway's coordinator (its fencing token), if it leads."""
        return self.keeper.lease.revision if self.keeper is not None else None

    async def run(
        self,
        nats: NatsBus,
        acquired: Callable[[int], Awaitable[None]],
        lost: Callable[[], Awaitable[None]],
        renewed: Callable[[int], None],
    ) -> None:
        """Compete for the lease until cancelled: ``acquired`` starts the coordinator,
        ``lost`` stops it (before anyone else may take the lease), ``renewed`` hears each
        renewal's revision."""
        from buildingd.nats.lease import LeaseKeeper
        from buildingd.nats.lease_logic import LeaseTiming

        assert nats.nc is not None, "the NATS bus is started first"
        self.keeper = LeaseKeeper(nats.nc, self.site_id, self.gateway_id,
                                  LeaseTiming.for_ttl(self.ttl_s), acquired, lost,
                                  replicas=self.replicas, on_renewed=renewed)  # fmt: skip
        await self.keeper.run()


def gateways_json(site: Site, election: Election, cut_off: bool) -> dict[str, Any]:
    """Who owns what on a site over gateways, as this gateway knows it (``/api/gateways``,
    ``buildingd status``): each gateway's zones and devices, whether it may run the
    coordinator and whether it leads; this gateway, the leader, and whether it is cut off."""
    gmap, leader = site.gateways, election.leader()
    return {
        "gateway": election.gateway_id,
        "leader": leader,
        "cut_off": cut_off,
        "gateways": [
            {
                "id": g,
                "candidate": g in gmap.coordinator_candidates,
                "leads": g == leader,
                "zones": sorted(z for z, on in gmap.zone_gateway.items() if on == g),
                "devices": sorted(d for d, on in gmap.device_gateway.items() if on == g),
            }
            for g in gmap.gateways
        ],
    }


def nats_bus(
    settings: Settings,
    site: Site,
    is_local: Callable[[str], bool],
    current_site: Callable[[], Site],
    metrics: Metrics,
    election: Election,
) -> NatsBus:
    """The bus over the site's NATS cluster, sealed with the site's bus key. A site of one
    gateway has no assignment: every agent address routes to this process's own id."""
    from buildingd.agents.hearing import hearing_problem
    from buildingd.agents.messages import DEMAND_RESPONSE_TOPIC, TELEMETRY
    from buildingd.nats.bus import NatsBus, gateway_route
    from buildingd.nats.seal import load_or_create_key
    from buildingd.nats.subjects import COORDINATOR_QUEUE

    gateway_id = settings.gateway.id or "main"

    def device_gateway(device_id: str) -> str | None:
        gmap = current_site().gateways  # as reloaded
        return gateway_id if gmap.single else gmap.device_gateway.get(device_id)

    def zone_gateway(zone_id: str) -> str | None:
        gmap = current_site().gateways
        return gateway_id if gmap.single else gmap.zone_gateway.get(zone_id)

    leads: Callable[[], bool] | None = None
    coordinator_gateway: Callable[[], str | None] = election.leader
    topics: frozenset[str] = frozenset()
    if election.elects:  # the coordinator moves with the lease: the site-wide queue to it
        leads = election.leads

        def coordinator_gateway() -> str | None:
            return gateway_id if election.leads() else COORDINATOR_QUEUE

        topics = frozenset({DEMAND_RESPONSE_TOPIC})  # requests over MQTT at any gateway
    route = gateway_route(device_gateway, zone_gateway, coordinator_gateway, topics)
    key = load_or_create_key(bus_key_path(settings))

    def may_hear(env: Envelope) -> str | None:
        return hearing_problem(env, current_site())  # the site after a reload too

    # Each gateway writes to telemetry what its own agents said (readings of its devices, states
    # of its zones, the coordinator's negotiations where it runs): every line once per site.
    return NatsBus(settings.nats, site.site_id, gateway_id, route, is_local, key, may_hear,
                   metrics=metrics, leads=leads, own_only=frozenset({TELEMETRY}))  # fmt: skip
