"""Load a site directory (``site.yaml``, ``devices/*.yaml``, ``policies/*.yaml``) into one ``Site``.

Every problem in every file is collected and located; a site with any problem is not returned.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from buildingd.config.base import PointBase
from buildingd.config.devices import DeviceFile, DeviceSpec
from buildingd.config.gateways import GatewayMap, assign_gateways
from buildingd.config.policies import DemandResponse, Policy, PolicyFile
from buildingd.config.site import SiteFile, StaticPressureReset, SupplyAirReset, Zone
from buildingd.config.yamlfile import ConfigFileError, LocatedDoc, load_yaml, validate
from buildingd.errors import ConfigError, ConfigProblem


@dataclass(frozen=True)
class Site:
    """A validated site: everything the daemon needs to build its agents."""

    root: Path
    site_id: str
    timezone: str
    zones: dict[str, Zone]
    devices: dict[str, DeviceSpec]
    policies: dict[str, Policy]
    zone_policy: dict[str, str]  # zone id -> policy id
    air_handlers: dict[str, list[str]] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    supply_air_reset: dict[str, SupplyAirReset] = field(default_factory=dict)  # by air handler
    static_pressure_reset: dict[str, StaticPressureReset] = field(default_factory=dict)
    demand_response: DemandResponse = field(default_factory=DemandResponse)
    gateways: GatewayMap = field(default_factory=GatewayMap)  # who runs what (config/gateways)

    def policy_for(self, zone_id: str) -> Policy:
        return self.policies[self.zone_policy[zone_id]]

    @cached_property
    def zone_points(self) -> dict[str, list[tuple[DeviceSpec, PointBase]]]:
        """Every (device, point) bound to each zone, in file order: built once per site, so an
        agent finds its own points without scanning the whole building."""
        index: dict[str, list[tuple[DeviceSpec, PointBase]]] = {}
        for device in self.devices.values():
            for point in device.points_list():
                if point.zone is not None:
                    index.setdefault(point.zone, []).append((device, point))
        return index

    def points_in(self, zone_id: str) -> list[tuple[DeviceSpec, PointBase]]:
        return self.zone_points.get(zone_id, [])

    def summary(self) -> str:
        points = sum(len(d.points_list()) for d in self.devices.values())
        return (
            f"site {self.site_id}: {len(self.zones)} zones, {len(self.devices)} devices, "
            f"{points} points, {len(self.policies)} policies"
        )


def _yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent if root.name else root))
    except ValueError:
        return str(path)


def load_site(root: Path) -> Site:
    """Load and cross-check a site directory. Raises ``ConfigError`` listing every problem, and
    only ``ConfigError``: a check that trips over data it did not expect is a problem too."""
    try:
        with no_collector_passes():
            return _load_site(root)
    except ConfigError:
        raise
    except RecursionError as err:
        raise ConfigError([ConfigProblem(str(root), None, "", "nested too deeply")]) from err
    except Exception as err:
        why = f"cannot be checked: {type(err).__name__}: {err}"
        raise ConfigError([ConfigProblem(str(root), None, "", why)]) from err


@contextlib.contextmanager
def no_collector_passes() -> Iterator[None]:
    """No cyclic collector pass inside (back as it was after, whatever happens). Loading builds
    hundreds of thousands of objects that all stay alive; each allocation threshold crossed would
    run the collector over the growing heap again (what made a 2,000-zone site take twice as long
    per zone as a 1,000-zone one). Nothing built here is cyclic garbage, so the collector waits
    until the load is over. A reload holds it for the same reason (``service/reloading.py``)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_site(root: Path) -> Site:
    root = root.resolve()
    problems: list[ConfigProblem] = []
    docs: list[str] = []

    def parse(path: Path) -> LocatedDoc | None:
        docs.append(str(path))
        try:
            return load_yaml(path, str(path))
        except ConfigFileError as err:
            problems.append(err.problem)
            return None

    site_path = root / "site.yaml"
    site_file: SiteFile | None = None
    site_doc: LocatedDoc | None = None
    if not site_path.exists():
        problems.append(ConfigProblem(str(site_path), None, "", "site.yaml is missing"))
    else:
        site_doc = parse(site_path)
        if site_doc is not None:
            site_file, found = validate(SiteFile, site_doc)
            problems += found

    devices: dict[str, DeviceSpec] = {}
    device_docs: dict[str, tuple[LocatedDoc, tuple[Any, ...]]] = {}
    file_gateway: dict[str, str | None] = {}  # each device's file's default gateway
    for path in _yaml_files(root / "devices"):
        doc = parse(path)
        if doc is None:
            continue
        parsed, found = validate(DeviceFile, doc)
        problems += found
        if parsed is None:
            continue
        for i, device in enumerate(parsed.devices):
            if device.id in devices:
                problems.append(
                    doc.problem(("devices", i, "id"), f"duplicate device id {device.id!r}")
                )
                continue
            devices[device.id] = device
            device_docs[device.id] = (doc, ("devices", i))
            file_gateway[device.id] = parsed.gateway

    policies: dict[str, Policy] = {}
    demand_response: DemandResponse | None = None
    policy_docs: dict[str, tuple[LocatedDoc, tuple[Any, ...]]] = {}
    # A broken policy file would make every zone it covers look uncovered; only judge coverage
    # when all policy files are valid, so each mistake is reported once.
    policies_complete = True
    for path in _yaml_files(root / "policies"):
        doc = parse(path)
        if doc is None:
            policies_complete = False
            continue
        pfile, found = validate(PolicyFile, doc)
        problems += found
        if pfile is None:
            policies_complete = False
            continue
        for i, policy in enumerate(pfile.policies):
            if policy.id in policies:
                problems.append(
                    doc.problem(("policies", i, "id"), f"duplicate policy id {policy.id!r}")
                )
                continue
            policies[policy.id] = policy
            policy_docs[policy.id] = (doc, ("policies", i))
        if pfile.demand_response is not None:
            if demand_response is not None:
                problems.append(
                    doc.problem(("demand_response",), "demand_response is set in two files")
                )
            demand_response = pfile.demand_response

    zones: dict[str, Zone] = {}
    air_handlers: dict[str, list[str]] = {}
    supply_air_reset: dict[str, SupplyAirReset] = {}
    static_pressure_reset: dict[str, StaticPressureReset] = {}
    if site_file is not None and site_doc is not None:
        for i, zone in enumerate(site_file.zones):
            if zone.id in zones:
                problems.append(
                    site_doc.problem(("zones", i, "id"), f"duplicate zone id {zone.id!r}")
                )
            zones[zone.id] = zone
        for i, zone in enumerate(site_file.zones):
            for j, other in enumerate(zone.neighbours):
                if other not in zones:
                    problems.append(
                        site_doc.problem(("zones", i, "neighbours", j), f"unknown zone {other!r}")
                    )
        for i, ahu in enumerate(site_file.air_handlers):
            for j, zid in enumerate(ahu.zones):
                if zid not in zones:
                    problems.append(
                        site_doc.problem(("air_handlers", i, "zones", j), f"unknown zone {zid!r}")
                    )
            air_handlers[ahu.id] = list(ahu.zones)
            supply_air_reset[ahu.id] = ahu.supply_air_reset
            static_pressure_reset[ahu.id] = ahu.static_pressure_reset

    # Which policy governs each zone: an exact id beats a glob; two of the same rank conflict.
    zone_policy: dict[str, str] = {}
    if site_file is not None:
        for zone_id in zones:
            exact = [p for p in policies.values() if zone_id in p.zones]
            globbed = [
                p
                for p in policies.values()
                if p not in exact and any(fnmatch.fnmatchcase(zone_id, g) for g in p.zones)
            ]
            chosen = exact or globbed
            if len(chosen) > 1:
                doc, prefix = policy_docs[chosen[1].id]
                problems.append(
                    doc.problem(
                        (*prefix, "zones"),
                        f"zone {zone_id!r} is covered by policies "
                        + " and ".join(repr(p.id) for p in chosen),
                    )
                )
            elif chosen:
                zone_policy[zone_id] = chosen[0].id
        for pid, policy in policies.items():
            doc, prefix = policy_docs[pid]
            for j, pattern in enumerate(policy.zones):
                if not any(fnmatch.fnmatchcase(z, pattern) for z in zones):
                    problems.append(
                        doc.problem(
                            (*prefix, "zones", j), f"{pattern!r} matches no zone in site.yaml"
                        )
                    )

        for device_id, device in devices.items():
            doc, prefix = device_docs[device_id]
            for k, point in enumerate(device.points_list()):
                if point.zone is None:
                    continue
                where = (*prefix, "points", k, "zone")
                if point.zone not in zones:
                    problems.append(doc.problem(where, f"unknown zone {point.zone!r}"))
                elif point.zone not in zone_policy and policies_complete:
                    problems.append(
                        doc.problem(where, f"zone {point.zone!r} is covered by no policy")
                    )

    gateways = GatewayMap()
    if site_file is not None and site_doc is not None:
        gateways, found = assign_gateways(site_file, site_doc, devices, device_docs, file_gateway)
        problems += found

    from buildingd.drivers.checks import check_device  # protocol-specific checks (addresses, ...)

    for device_id, device in devices.items():
        doc, prefix = device_docs[device_id]
        for key_path, message in check_device(device):
            problems.append(doc.problem((*prefix, *key_path), message))

    if problems:
        raise ConfigError(problems)
    assert site_file is not None
    return Site(
        root=root,
        site_id=site_file.site,
        timezone=site_file.timezone,
        zones=zones,
        devices={k: v for k, v in devices.items() if v.enabled},
        policies=policies,
        zone_policy=zone_policy,
        air_handlers=air_handlers,
        files=tuple(docs),
        supply_air_reset=supply_air_reset,
        static_pressure_reset=static_pressure_reset,
        demand_response=demand_response or DemandResponse(),
        gateways=gateways,
    )
