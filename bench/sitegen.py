"""Generate a site of N simulated zones (10 points each) for benchmarks, and a daemon on it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buildingd.service.app import Daemon
    from buildingd.settings import Settings


def generate(
    folder: Path,
    zones: int,
    poll_interval_s: float = 10.0,
    coordinator_apart: bool = False,
    gateways: int = 0,
) -> Path:
    """A site of ``zones`` identical rooms in ``folder``. ``coordinator_apart``: two gateways,
    ``zones`` with every zone and device and ``plant`` running the coordinator. ``gateways``:
    that many, ``g1`` to ``gN``, each with an equal share of the zones and their devices (a
    device file each), the coordinator on ``g1``."""
    (folder / "devices").mkdir(parents=True, exist_ok=True)
    (folder / "policies").mkdir(parents=True, exist_ok=True)
    ids = [f"z{n:04d}" for n in range(zones)]
    site = ["site: bench", "timezone: Europe/Berlin", "zones:"]
    for i, z in enumerate(ids):
        nb = [ids[j] for j in (i - 1, i + 1) if 0 <= j < zones]
        site.append(
            f"  - {{id: {z}, floor: {i // 20}, area_m2: 25, design_occupants: 3, "
            f"windows: {{area_m2: 5, orientation: south}}, neighbours: [{', '.join(nb)}]}}"
        )
    dev = ["devices:"]
    if coordinator_apart:
        site += ["gateways:", "  - {id: zones, zones: ['*']}", "  - {id: plant, coordinator: true}"]
        dev.insert(0, "gateway: zones")
    shares = [ids[g * zones // gateways : (g + 1) * zones // gateways] for g in range(gateways)]
    if gateways:
        site.append("gateways:")
        for g, share in enumerate(shares, 1):
            lead = ", coordinator: true" if g == 1 else ""
            site.append(f"  - {{id: g{g}, zones: [{', '.join(share)}]{lead}}}")
    (folder / "site.yaml").write_text("\n".join(site) + "\n")
    if gateways:
        for g, share in enumerate(shares, 1):
            lines = [f"gateway: g{g}", "devices:", *_devices(share, poll_interval_s)]
            (folder / "devices" / f"g{g}.yaml").write_text("\n".join(lines) + "\n")
    else:
        dev += _devices(ids, poll_interval_s)
        (folder / "devices" / "bench.yaml").write_text("\n".join(dev) + "\n")
    (folder / "policies" / "all.yaml").write_text(
        "policies:\n  - id: all\n    zones: ['*']\n    timezone: Europe/Berlin\n"
        "    schedule:\n      occupied_hours:\n        - {days: [mon, tue, wed, thu, fri], "
        "start: '07:00', end: '19:00'}\n"
    )
    return folder


def _devices(ids: list[str], p: float) -> list[str]:
    """A thermostat, a presence sensor and a light of each zone in ``ids`` (YAML lines)."""
    dev: list[str] = []
    for z in ids:
        dev += [
            f"  - id: {z}-thermostat",
            "    driver: sim",
            f"    poll_interval_s: {p}",
            "    points:",
            f"      - {{id: t, zone: {z}, kind: temperature}}",
            f"      - {{id: rh, zone: {z}, kind: humidity}}",
            f"      - {{id: co2, zone: {z}, kind: co2}}",
            f"      - {{id: hsp, zone: {z}, kind: heating_setpoint, writable: true, limits: {{min: 5, max: 35}}}}",
            f"      - {{id: csp, zone: {z}, kind: cooling_setpoint, writable: true, limits: {{min: 15, max: 35}}}}",
            f"  - id: {z}-presence",
            "    driver: sim",
            f"    poll_interval_s: {p}",
            "    points:",
            f"      - {{id: occ, zone: {z}, kind: occupancy}}",
            f"      - {{id: lux, zone: {z}, kind: illuminance}}",
            f"  - id: {z}-lights",
            "    driver: sim",
            f"    poll_interval_s: {p}",
            "    points:",
            f"      - {{id: level, zone: {z}, kind: light_level, writable: true, limits: {{min: 0, max: 100}}}}",
            f"      - {{id: power, zone: {z}, kind: power}}",
            f"      - {{id: dehum, zone: {z}, kind: dehumidifier, writable: true, limits: {{min: 0, max: 1}}}}",
        ]
    return dev


def settings_for(site_dir: Path, state_dir: Path) -> Settings:
    """Settings with nothing outside the process: simulated devices read from the model, not
    served over Modbus/MQTT (network timers cannot run on virtual time, and the figures are the
    daemon's, not a broker's), no HTTP API."""
    from buildingd.settings import Settings

    return Settings.model_validate(
        {"site_dir": site_dir, "state_dir": state_dir, "http": {"enabled": False},
         "sim": {"protocols": False}}
    )  # fmt: skip


def quiet_daemon(site_dir: Path, state_dir: Path) -> Daemon:
    """A daemon on the generated site in ``site_dir``, with nothing outside the process: the
    simulated devices in process (no protocol servers), no HTTP API, telemetry dropped; its clock
    starts on Monday 11 January 2027 at 09:00 UTC and runs at real speed."""
    from datetime import UTC, datetime

    from buildingd.clock import ScaledClock
    from buildingd.config.loader import load_site
    from buildingd.evaluate import NullSink
    from buildingd.service.app import Daemon

    clock = ScaledClock(datetime(2027, 1, 11, 9, 0, tzinfo=UTC), 1.0)
    return Daemon(
        settings_for(site_dir, state_dir), load_site(site_dir), clock=clock, sink_factory=NullSink
    )


if __name__ == "__main__":
    print(generate(Path(sys.argv[1]), int(sys.argv[2])))
