"""Which gateway of a site runs what: devices where they are attached (``gateway:`` per device,
or per device file), zones where ``site.yaml`` lists them, or else where most of their devices
are, and which gateways may run the coordinator. Pure; problems are located ``file:line``.

A site with no ``gateways:`` section is one gateway (the demo, a single Pi): everything local,
and no ``gateway:`` key may name one.
"""

from __future__ import annotations

import collections
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from buildingd.config.devices import DeviceSpec
from buildingd.config.site import SiteFile
from buildingd.config.yamlfile import LocatedDoc
from buildingd.errors import ConfigProblem

Where = tuple[LocatedDoc, tuple[Any, ...]]  # a document and the key path of one item in it


@dataclass(frozen=True)
class GatewayMap:
    """The assignment. ``gateways`` empty: a single-gateway site (every ``*_on`` is everything,
    ``runs_*`` true for any gateway id, including none)."""

    gateways: tuple[str, ...] = ()
    device_gateway: Mapping[str, str] = field(default_factory=dict)
    zone_gateway: Mapping[str, str] = field(default_factory=dict)
    coordinator_candidates: tuple[str, ...] = ()

    @property
    def single(self) -> bool:
        return not self.gateways

    def runs_device(self, gateway_id: str | None, device_id: str) -> bool:
        return self.single or self.device_gateway.get(device_id) == gateway_id

    def runs_zone(self, gateway_id: str | None, zone_id: str) -> bool:
        return self.single or self.zone_gateway.get(zone_id) == gateway_id

    def may_coordinate(self, gateway_id: str | None) -> bool:
        return self.single or gateway_id in self.coordinator_candidates

    def problem_with(self, gateway_id: str | None) -> str | None:
        """Why a process with this ``[gateway] id`` cannot run this site, or None."""
        if self.single:
            return None
        if gateway_id is None:
            return f"the site runs on gateways {', '.join(self.gateways)}: set this one's id"
        if gateway_id not in self.gateways:
            return f"gateway {gateway_id!r} is not declared in site.yaml gateways"
        return None


def assign_gateways(
    site_file: SiteFile,
    site_doc: LocatedDoc,
    devices: Mapping[str, DeviceSpec],
    device_docs: Mapping[str, Where],
    file_gateway: Mapping[str, str | None],
) -> tuple[GatewayMap, list[ConfigProblem]]:
    """The assignment and every problem with it. ``file_gateway``: each device's file default."""
    problems: list[ConfigProblem] = []
    declared: list[str] = []
    for i, gw in enumerate(site_file.gateways):
        if gw.id in declared:
            problems.append(site_doc.problem(("gateways", i, "id"), f"duplicate gateway {gw.id!r}"))
        else:
            declared.append(gw.id)

    device_gateway: dict[str, str] = {}
    for device_id, device in devices.items():
        doc, prefix = device_docs[device_id]
        gateway = device.gateway or file_gateway.get(device_id)
        key = (*prefix, "gateway") if device.gateway else ("gateway",)
        if gateway is None:
            if len(declared) > 1:
                why = f"which gateway is it attached to? ({', '.join(declared)})"
                problems.append(doc.problem((*prefix, "gateway"), why))
            elif declared:
                device_gateway[device_id] = declared[0]
        elif not declared:
            why = f"gateway {gateway!r}, but site.yaml declares no gateways"
            problems.append(doc.problem(key, why))
        elif gateway not in declared:
            why = f"unknown gateway {gateway!r} (site.yaml declares {', '.join(declared)})"
            problems.append(doc.problem(key, why))
        else:
            device_gateway[device_id] = gateway

    zone_ids = [z.id for z in site_file.zones]
    zone_gateway: dict[str, str] = {}
    for i, gw in enumerate(site_file.gateways):
        for j, pattern in enumerate(gw.zones):
            matched = [z for z in zone_ids if fnmatch.fnmatchcase(z, pattern)]
            if not matched:
                problems.append(site_doc.problem(("gateways", i, "zones", j),
                                                 f"{pattern!r} matches no zone"))  # fmt: skip
            for zone_id in matched:
                other = zone_gateway.setdefault(zone_id, gw.id)
                if other != gw.id:
                    why = f"zone {zone_id!r} is also assigned to gateway {other!r}"
                    problems.append(site_doc.problem(("gateways", i, "zones", j), why))
    if declared:
        _assign_by_devices(zone_ids, zone_gateway, devices, device_gateway, declared)

    candidates = tuple(gw.id for gw in site_file.gateways if gw.coordinator) or tuple(declared)
    gmap = GatewayMap(tuple(declared), device_gateway, zone_gateway, candidates)
    return gmap, problems


def _assign_by_devices(
    zone_ids: list[str],
    zone_gateway: dict[str, str],
    devices: Mapping[str, DeviceSpec],
    device_gateway: Mapping[str, str],
    declared: list[str],
) -> None:
    """Zones no gateway lists run where most of their points are attached (a zone's control
    loop then crosses the network least); ties go to the gateway declared first, and a zone
    with no devices to the first gateway."""
    points: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for device_id, device in devices.items():
        gateway = device_gateway.get(device_id)
        if gateway is None:
            continue
        for point in device.points_list():
            if point.zone is not None:
                points[point.zone][gateway] += 1
    for zone_id in zone_ids:
        if zone_id in zone_gateway:
            continue
        counts = points.get(zone_id)
        if counts:
            zone_gateway[zone_id] = max(declared, key=lambda g: (counts[g], -declared.index(g)))
        else:
            zone_gateway[zone_id] = declared[0]
