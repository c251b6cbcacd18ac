"""Two buildingd processes on one site over a real 3-node NATS cluster: the demo building's
devices attached to gateway ``devices``, its zones and coordinator on gateway ``zones``. The
zones see the thermostats' readings and their commands reach the thermostats across the bus;
each gateway writes to telemetry what its own agents said, once per site."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildingd.telemetry.sink import LocalFileSink
from tests.daemon_proc import Running, start_daemon
from tests.nats_cluster import NatsCluster, gateway_env

pytestmark = [pytest.mark.nats, pytest.mark.slow]
THERMOSTAT = "f1-reception-thermostat"
WAIT_S = 90.0  # generous: two daemons and three servers on a loaded 2-core machine


def split_site(site: Path) -> None:
    """Every device file attached to ``devices``; every zone run by ``zones``."""
    with (site / "site.yaml").open("a") as out:
        out.write("\ngateways:\n  - {id: devices}\n"
                  '  - {id: zones, zones: ["*"], coordinator: true}\n')  # fmt: skip
    for path in (site / "devices").glob("*.yaml"):
        path.write_text("gateway: devices\n" + path.read_text())


def commands_to(daemon: Running, device_id: str) -> float:
    _, text = daemon.get("/metrics")
    pattern = rf'^buildingd_commands_total\{{device="{re.escape(device_id)}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def gateways(
    site_copy: Path, tmp_path: Path, nats_cluster: NatsCluster
) -> Iterator[tuple[Running, Running]]:
    split_site(site_copy)
    key = tmp_path / "bus.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    started: list[Running] = []
    try:
        for name in ("devices", "zones"):
            env = gateway_env(nats_cluster, "demo-office", name, key)
            (tmp_path / name).mkdir()
            started.append(start_daemon(site_copy, tmp_path / name, env=env, speed=30.0))
        for daemon in started:
            daemon.wait_for(lambda m: "READY=1" in m, timeout_s=WAIT_S)
        yield started[0], started[1]
    finally:
        for daemon in started:
            daemon.close()


def test_zones_on_one_gateway_command_thermostats_on_another(
    gateways: tuple[Running, Running],
) -> None:
    devices, zones = gateways
    # Each runs only its share: no zone agents on `devices`, no device agents on `zones`.
    _, on_devices = devices.get("/api/zones")
    assert {(z["mode"], z["gateway"]) for z in on_devices} == {("elsewhere", "zones")}
    _, device_list = zones.get("/api/devices")
    assert {(d["available"], d["gateway"]) for d in device_list} == {(None, "devices")}
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:  # no event crosses the process boundary: poll the API
        _, zone_list = zones.get("/api/zones")
        reception = next(z for z in zone_list if z["id"] == "f1-reception")
        if reception.get("temperature_c") is not None and commands_to(devices, THERMOSTAT) > 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no reading or no command across the gateways in {WAIT_S:g} s: "
                    f"{reception}, {devices.output[-5:]}, {zones.output[-5:]}")  # fmt: skip
    # The command the zone sent was written on the other gateway: the device agent there
    # counted it, and nothing on the bus was refused on either side.
    for daemon in (devices, zones):
        _, text = daemon.get("/metrics")
        refused = [line for line in text.splitlines() if line.startswith("buildingd_bus_refused")]
        assert refused == [], f"{refused}\n" + "\n".join(daemon.output[-40:])


def telemetry(daemon: Running) -> list[str]:
    """The lines the gateway wrote to its telemetry files (``[influx]`` off: local files)."""
    files = sorted((daemon.state / "telemetry").glob("*.lp"))
    return [line for path in files for line in path.read_text().splitlines()]


def test_each_line_of_telemetry_is_written_by_one_gateway(
    gateways: tuple[Running, Running],
) -> None:
    """Readings and states cross the bus to every gateway that listens; each gateway writes to
    telemetry only what its own agents said, so a site over three gateways does not write
    every reading three times (InfluxDB would keep one per timestamp, VictoriaMetrics all)."""
    devices, zones = gateways

    def written() -> tuple[list[str], list[str]] | None:
        mine, theirs = telemetry(devices), telemetry(zones)
        if any(x.startswith("reading,") for x in mine) and any(
            x.startswith("zone_state,") for x in theirs
        ):
            return mine, theirs
        return None

    devices.until(written, "readings written on devices, zone states on zones", WAIT_S)
    # The zones have heard the devices (so readings did cross), and a little later both
    # gateways' files hold what was said meanwhile.
    zones.until(lambda: zones.json("/api/zones")[0].get("temperature_c") is not None,
                "a reading across the gateways", WAIT_S)  # fmt: skip
    time.sleep(3 * LocalFileSink.WRITE_AFTER_S)  # what was said meanwhile is in the files
    on_devices, on_zones = telemetry(devices), telemetry(zones)
    kinds = lambda lines: {x.split(",", 1)[0] for x in lines}  # noqa: E731
    assert "zone_state" not in kinds(on_devices), kinds(on_devices)
    assert "reading" not in kinds(on_zones), kinds(on_zones)
    # Each gateway's health is its own series; nothing is written twice.
    for daemon, lines in ((devices, on_devices), (zones, on_zones)):
        health = {x.split(" ", 1)[0] for x in lines if x.startswith("daemon,")}
        assert health == {f"daemon,gateway={daemon.env['BUILDINGD_GATEWAY__ID']},site=demo-office"}
    twice = set(on_devices) & set(on_zones)
    assert twice == set(), sorted(twice)[:5]
