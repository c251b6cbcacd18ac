"""buildingd and a real Home Assistant core (2024.3, .venv-ha) on one mosquitto: every demo zone
shows up valid, commands from Home Assistant reach the (simulated Modbus) devices, refusals are
seen in Home Assistant, a Home Assistant restart re-discovers everything, a zone removed by a
reload disappears, and a stopped or killed daemon turns every entity unavailable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.publish
import pytest
import yaml
from pymodbus.client import ModbusTcpClient

from buildingd.config.loader import load_site
from buildingd.mqtt.ha_discovery import setpoint_limits
from tests.conftest import free_port, until_sync
from tests.ha.server import HomeAssistant
from tests.servers import Mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto, pytest.mark.timeout(600)]
# The Modbus thermostat and dimmer of the meeting room (devices/demo-modbus.yaml, profiles):
# holding registers in tenths of degC (heating 0, cooling 1) on unit 1, level % on unit 2.
MEETING = "f1-meeting"


@dataclass
class Buildingd:
    """The daemon as a process: ``start`` again after a stop or a kill (same state and site)."""

    site: Path
    state: Path
    mqtt: Mosquitto
    http_port: int = field(default_factory=free_port)
    modbus_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    def start(self) -> None:
        env = dict(
            os.environ,
            BUILDINGD_MQTT__ENABLED="true",
            BUILDINGD_MQTT__HOST=self.mqtt.host,
            BUILDINGD_MQTT__PORT=str(self.mqtt.port),
            BUILDINGD_MQTT__HOMEASSISTANT_DISCOVERY="true",
            BUILDINGD_HTTP__PORT=str(self.http_port),
            BUILDINGD_SIM__MODBUS_PORT=str(self.modbus_port),
            BUILDINGD_SIM__BACNET_PORT="0",
            BUILDINGD_STATE_DIR=str(self.state),
            BUILDINGD_SITE_DIR=str(self.site),
            BUILDINGD_SIM__START="2027-01-11T10:00:00",  # a Monday morning, occupied hours
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "buildingd", "run", "--speed", "10", "--no-console"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line.rstrip("\n"))

    def stop(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def zone(self, zone_id: str) -> dict[str, Any]:
        import json

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.http_port}/api/zones/{zone_id}", timeout=10
        ) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    def counter(self, key: str) -> float:
        """A counter from /metrics (0 until it first counts)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(key + " "):
                    return float(line.split()[-1])
        return 0.0

    def registers(self, unit: int, count: int) -> list[int]:
        client = ModbusTcpClient("127.0.0.1", port=self.modbus_port, timeout=5)
        try:
            assert client.connect(), "simulated Modbus gateway not reachable"
            reply = client.read_holding_registers(0, count=count, device_id=unit)
            assert not reply.isError(), reply
            return list(reply.registers)
        finally:
            client.close()


def site_for_test(site: Path) -> None:
    """The demo site, with the office lights kept on through scheduled hours, so a light level
    set from Home Assistant holds whether or not the simulated people are in the room, and no
    power cap, so no demand-response event moves the setpoints the test reads back."""
    path = site / "policies" / "office.yaml"
    data = yaml.safe_load(path.read_text())
    data["policies"][0]["lighting"]["on_through_schedule"] = True
    data["demand_response"]["power_cap_w"] = None
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def by_name(states: dict[str, dict[str, Any]], domain: str) -> dict[str, dict[str, Any]]:
    """A domain's entities by friendly name."""
    return {
        s["attributes"].get("friendly_name", ""): s
        for entity_id, s in states.items()
        if entity_id.startswith(f"{domain}.")
    }


def entity_id(states: dict[str, dict[str, Any]], domain: str, name: str) -> str:
    return by_name(states, domain)[name]["entity_id"]  # type: ignore[no-any-return]


@pytest.fixture
def stack(mosquitto: Mosquitto, site_copy: Path, tmp_path: Path) -> Iterator[
    tuple[Buildingd, HomeAssistant]
]:  # fmt: skip
    site_for_test(site_copy)
    daemon = Buildingd(site_copy, tmp_path / "state", mosquitto)
    ha = HomeAssistant(tmp_path / "ha", mosquitto.host, mosquitto.port)
    daemon.start()
    try:
        ha.start()
        yield daemon, ha
    finally:
        ha.stop()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)


def test_every_zone_usable_from_home_assistant(stack: tuple[Buildingd, HomeAssistant]) -> None:
    daemon, ha = stack
    site = load_site(daemon.site)
    names = {z: (zone.name or z) for z, zone in site.zones.items()}

    # -- every zone: a climate entity with values, lights, sensors; nothing rejected --------
    def all_there(states: dict[str, dict[str, Any]]) -> bool:
        climates, lights = by_name(states, "climate"), by_name(states, "light")
        return all(
            n in climates
            and climates[n]["attributes"].get("current_temperature") is not None
            and climates[n]["attributes"].get("target_temp_low") is not None
            and n + " Lights" in lights
            and lights[n + " Lights"]["state"] != "unavailable"
            for n in names.values()
        )

    states = ha.wait_for("every zone's climate and light", all_there, timeout_s=120)
    climates, sensors = by_name(states, "climate"), by_name(states, "sensor")
    for zone_id, name in names.items():
        attrs = climates[name]["attributes"]
        low, high = setpoint_limits(site, zone_id)
        assert (attrs["min_temp"], attrs["max_temp"], attrs["target_temp_step"]) == (low, high, 0.1)
        assert attrs["hvac_action"] in ("heating", "cooling", "idle")
        assert "occupied" in attrs["preset_modes"]
        api = daemon.zone(zone_id)
        assert abs(attrs["current_temperature"] - api["temperature_c"]) < 0.5  # both move
        temperature = sensors[f"{name} Temperature"]
        assert re.fullmatch(r"\d+(\.\d)?", temperature["state"]), temperature  # no float noise
        assert temperature["attributes"]["state_class"] == "measurement"
        assert by_name(states, "binary_sensor")[f"{name} Open alert"]["state"] == "off"
    assert sensors["main-meter Power"]["attributes"]["device_class"] == "power"
    ha.wait_for("the main meter's power in W", lambda s: re.fullmatch(
        r"\d+", by_name(s, "sensor")["main-meter Power"]["state"]) is not None)  # fmt: skip

    # -- a zone mode from Home Assistant: through the override path, onto the thermostat ------
    policy = site.policy_for(MEETING)
    meeting = entity_id(states, "climate", "Meeting room")
    ha.call("climate", "set_preset_mode", {"entity_id": meeting, "preset_mode": "occupied"})
    occupied = policy.comfort.occupied
    wanted = [round(occupied.heating_c * 10), round(occupied.cooling_c * 10)]
    until_sync(lambda: daemon.registers(1, 2) == wanted, "occupied band on the thermostat")
    # -- a range: one request for both ends, narrowed, written once ----------------------------
    writes = 'buildingd_commands_total{device="f1-meeting-thermostat"}'
    writes_before = daemon.counter(writes)
    low, high = occupied.heating_c + 0.5, occupied.cooling_c - 0.5
    ha.call("climate", "set_temperature",
            {"entity_id": meeting, "target_temp_low": low, "target_temp_high": high})  # fmt: skip
    wanted = [round(low * 10), round(high * 10)]
    until_sync(lambda: daemon.registers(1, 2) == wanted, "narrowed band on the thermostat")
    ha.wait_for("the band in Home Assistant", lambda s: (
        s[meeting]["attributes"]["target_temp_low"], s[meeting]["attributes"]["target_temp_high"]
    ) == (low, high))  # fmt: skip
    last = entity_id(ha.states(), "sensor", "Meeting room Last request")
    answer = "accepted: cooling_sp=23.5, heating_sp=21.5"  # both ends in one request
    ha.wait_for("the answer", lambda s: s[last]["state"].startswith(answer))
    # Each setpoint written once (two band offsets, one per message, wrote each end twice).
    assert daemon.counter(writes) - writes_before == 2
    # -- refused: too far from the schedule; seen in Home Assistant, thermostat untouched ------
    ha.call("climate", "set_temperature", {"entity_id": meeting, "target_temp_low": low - 4,
                                           "target_temp_high": high})  # fmt: skip
    refused = ha.wait_for("the refusal", lambda s: s[last]["state"].startswith("refused"))
    assert "more than" in refused[last]["state"]
    assert refused[meeting]["attributes"]["target_temp_low"] == low
    assert daemon.registers(1, 2) == wanted
    # -- unoccupied preset: the unoccupied band (the hand-set band was relative to occupied) ---
    ha.call("climate", "set_preset_mode", {"entity_id": meeting, "preset_mode": "unoccupied"})
    ha.wait_for("unoccupied preset", lambda s: s[meeting]["attributes"]["preset_mode"]
                == "unoccupied")  # fmt: skip
    ha.call("climate", "set_preset_mode", {"entity_id": meeting, "preset_mode": "hold"})
    ha.wait_for("refused preset", lambda s: s[last]["state"].startswith("refused: mode hold"))

    # -- the meeting room's lights from Home Assistant: on the Modbus dimmer -------------------
    light = entity_id(ha.states(), "light", "Meeting room Lights")
    ha.call("light", "turn_on", {"entity_id": light, "brightness_pct": 40})
    until_sync(lambda: daemon.registers(2, 1) == [40], "dimmer at 40 %")
    on = ha.wait_for("light at 40 %", lambda s: s[light]["attributes"].get("brightness") == 102)
    assert on[light]["state"] == "on"
    ha.call("light", "turn_off", {"entity_id": light})
    until_sync(lambda: daemon.registers(2, 1) == [0], "dimmer off")

    # -- Home Assistant restarts; only buildingd's answer to its birth message brings the ----
    # -- entities back (the retained configs are gone from the broker meanwhile) --------------
    ha.stop()
    configs = _retained_configs(daemon)
    assert len(configs) > 8 * 5
    paho.mqtt.publish.multiple(
        [{"topic": m.topic, "payload": b"", "retain": True} for m in configs],
        hostname=daemon.mqtt.host, port=daemon.mqtt.port,
    )  # fmt: skip
    ha.start()
    ha.wait_for("every zone back after the restart", all_there, timeout_s=120)

    # -- a zone removed by a reload disappears from Home Assistant ----------------------------
    def server_room(states: dict[str, dict[str, Any]]) -> list[str]:
        friendly = [s["attributes"].get("friendly_name", "") for s in states.values()]
        return [n for n in friendly if n.startswith(("Server room", "f2-server"))]

    assert len(server_room(ha.states())) >= 5
    _remove_zone(daemon.site, "f2-server")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    ha.wait_for("the removed zone gone", lambda s: "Server room" not in by_name(s, "climate")
                and all_there_but(s, names, "Server room"))  # fmt: skip
    assert server_room(ha.states()) == []  # its sensors and its devices' alert sensors too

    # -- buildingd stops (SIGTERM), comes back, is killed (SIGKILL): unavailable each time ----
    domains = ("climate", "light", "sensor", "binary_sensor")
    ours = [e for e, s in ha.states().items()
            if e.split(".")[0] in domains and s["state"] != "unavailable"]  # fmt: skip
    assert len(ours) > 8 * 5
    for sig in (signal.SIGTERM, signal.SIGKILL):
        daemon.stop(sig)
        ha.wait_for(f"every entity unavailable after {sig.name}",
                    lambda s: all(s[e]["state"] == "unavailable" for e in ours))  # fmt: skip
        daemon.start()
        ha.wait_for(f"entities back after {sig.name}",
                    lambda s: all(s[e]["state"] != "unavailable" for e in ours),
                    timeout_s=120)  # fmt: skip

    log = ha.log_text().splitlines()
    assert [line for line in log if " ERROR " in line] == []  # no config refused, both runs
    assert [line for line in log if " WARNING " in line and "mqtt" in line] == []
    found = [line for line in log if "mqtt.discovery] Found new component" in line]
    assert len(found) >= 2 * len(configs)  # every config taken, at each start


def all_there_but(states: dict[str, dict[str, Any]], names: dict[str, str], gone: str) -> bool:
    climates = by_name(states, "climate")
    return all(n in climates and climates[n]["state"] != "unavailable"
               for n in names.values() if n != gone)  # fmt: skip


def _retained_configs(daemon: Buildingd) -> list[Any]:
    """Every retained discovery config on the broker (read until none comes for a while)."""
    messages: list[Any] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        if message.retain and message.payload:
            messages.append(message)

    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.connect(daemon.mqtt.host, daemon.mqtt.port)
    client.subscribe("homeassistant/+/+/+/config")
    client.loop_start()
    count = -1
    while count != len(messages):  # retained ones arrive at once after the subscribe
        count = len(messages)
        done.wait(1.0)
    client.loop_stop()
    client.disconnect()
    return messages


def _remove_zone(site: Path, zone_id: str) -> None:
    site_file = site / "site.yaml"
    data = yaml.safe_load(site_file.read_text())
    data["zones"] = [z for z in data["zones"] if z["id"] != zone_id]
    for z in data["zones"]:
        z["neighbours"] = [n for n in z.get("neighbours", []) if n != zone_id]
    for ahu in data.get("air_handlers", []):
        ahu["zones"] = [z for z in ahu["zones"] if z != zone_id]
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    for path in (site / "devices").glob("*.yaml"):
        devices = yaml.safe_load(path.read_text())
        devices["devices"] = [d for d in devices["devices"] if zone_id not in _zones_of(d)]
        path.write_text(yaml.safe_dump(devices, sort_keys=False))
    for path in (site / "policies").glob("*.yaml"):
        policies = yaml.safe_load(path.read_text())
        policies["policies"] = [p for p in policies["policies"] if p["zones"] != [zone_id]]
        path.write_text(yaml.safe_dump(policies, sort_keys=False))


def _zones_of(device: dict[str, Any]) -> set[str | None]:
    return {device.get("zone")} | {p.get("zone") for p in device.get("points", [])}
