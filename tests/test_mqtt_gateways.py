"""Home Assistant availability on a site over gateways (pure: the discovery configs). Each
gateway has its own status topic; an entity follows the gateway running its zone or device
when that gateway's status is on the same broker (a shared broker), and the announcing gateway's
own status otherwise (each gateway with a broker of its own, where no other says it is up).
The processes on a real shared broker: ``tests/test_nats_shared_broker.py``."""

from __future__ import annotations

from pathlib import Path

from buildingd.config.loader import Site, load_site
from buildingd.mqtt.ha_discovery import Availability, discovery_configs

BASE = "buildingd/demo-office"
NODE = "homeassistant/binary_sensor/buildingd_demo-office"
ZONE, DEVICE = "f1-reception", "f1-reception-thermostat"


def split(site: Path) -> Site:
    """Devices on ``devices``, every zone on ``zones``."""
    with (site / "site.yaml").open("a") as out:
        out.write(
            '\ngateways:\n  - {id: devices}\n  - {id: zones, zones: ["*"], coordinator: true}\n'
        )
    for path in (site / "devices").glob("*.yaml"):
        path.write_text("gateway: devices\n" + path.read_text())
    return load_site(site)


def availability(site: Site, seen: Availability) -> tuple[str, str]:
    configs = discovery_configs(site, "homeassistant", BASE, None, seen)
    return (configs[f"{NODE}/{ZONE}_problem/config"]["availability_topic"],
            configs[f"{NODE}/{DEVICE}_problem/config"]["availability_topic"])  # fmt: skip


def test_one_gateway_keeps_the_site_status() -> None:
    site = load_site(Path(__file__).resolve().parents[1])
    assert availability(site, Availability()) == (f"{BASE}/status", f"{BASE}/status")


def test_a_shared_broker_gives_each_entity_its_gateways_status(site_copy: Path) -> None:
    """Guards the shared broker: one gateway dying leaves the other's entities available."""
    site = split(site_copy)
    shared = Availability("zones", frozenset({"zones", "devices"}))
    assert availability(site, shared) == (
        f"{BASE}/gateway/zones/status",
        f"{BASE}/gateway/devices/status",
    )


def test_a_broker_of_its_own_gives_every_entity_the_announcing_gateways_status(
    site_copy: Path,
) -> None:
    """Guards brokers per gateway: the other gateway's status never reaches this broker, so
    pointing its entities at it would leave them unavailable for good."""
    site = split(site_copy)
    alone = Availability("zones", frozenset({"zones"}))
    assert availability(site, alone) == (f"{BASE}/gateway/zones/status",) * 2
