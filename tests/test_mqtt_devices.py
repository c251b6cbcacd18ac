"""MQTT devices: payload formats (zigbee2mqtt, Tasmota, generic JSON) and the whole daemon driving
a zone from sensor payloads on a real mosquitto, with commands on the right set topics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.config.loader import load_site
from buildingd.config.mqtt import MqttDevice
from buildingd.drivers.mqtt_formats import CommandError, command, parse, state_topics
from buildingd.service.app import Daemon
from buildingd.settings import Settings
from tests.servers import Mosquitto


def device(adapter: str, points: list[dict[str, Any]], **kw: Any) -> MqttDevice:
    return MqttDevice.model_validate(
        {"id": "d", "driver": "mqtt", "adapter": adapter, "topic": "t", "points": points, **kw}
    )


MOTION = device(
    "zigbee2mqtt",
    [
        {"id": "occ", "field": "occupancy", "zone": "z", "kind": "occupancy"},
        {"id": "lux", "field": "illuminance", "zone": "z", "kind": "illuminance"},
        {"id": "bat", "field": "battery", "zone": "z", "kind": "battery"},
    ],
)
# A real Aqara RTCGQ11LM report through zigbee2mqtt 2.x.
AQARA = (
    b'{"battery":97,"device_temperature":28,"illuminance":381,"linkquality":156,'
    b'"occupancy":true,"power_outage_count":3,"voltage":3025}'
)


def test_zigbee2mqtt_reports_and_both_illuminance_styles() -> None:
    parsed = parse(MOTION, "zigbee2mqtt/t", AQARA)
    assert parsed.values == {"occ": 1.0, "lux": 381.0, "bat": 97.0} and not parsed.problems
    old = parse(MOTION, "zigbee2mqtt/t", b'{"illuminance":21327,"illuminance_lux":136}')
    assert old.values == {"lux": 136.0}  # 1.x: raw value plus lux; lux wins
    assert parse(MOTION, "zigbee2mqtt/t/availability", b'{"state":"offline"}').available is False
    assert parse(MOTION, "zigbee2mqtt/t/availability", b"online").available is True
    assert state_topics(MOTION) == ["zigbee2mqtt/t", "zigbee2mqtt/t/availability"]


def test_tasmota_sensor_state_and_lwt() -> None:
    dev = device(
        "tasmota",
        [
            {"id": "t", "field": "AM2301.Temperature", "zone": "z", "kind": "temperature"},
            {"id": "rh", "field": "AM2301.Humidity", "zone": "z", "kind": "humidity"},
            {"id": "ds", "field": "DS18B20.Temperature", "zone": "z", "kind": "temperature"},
            {"id": "pwr", "field": "POWER", "zone": "z", "kind": "light_switch",
             "writable": True, "limits": {"min": 0, "max": 1}},
        ],
    )  # fmt: skip
    sensor = (
        b'{"Time":"2026-11-25T10:00:00","AM2301":{"Temperature":21.3,"Humidity":44.1},'
        b'"DS18B20":{"Id":"0316A279","Temperature":20.9},"TempUnit":"C"}'
    )
    assert parse(dev, "tele/t/SENSOR", sensor).values == {"t": 21.3, "rh": 44.1, "ds": 20.9}
    assert parse(dev, "stat/t/RESULT", b'{"POWER":"ON"}').values == {"pwr": 1.0}
    assert parse(dev, "stat/t/POWER", b"OFF").values == {"pwr": 0.0}
    assert parse(dev, "tele/t/LWT", b"Offline").available is False
    point = dev.points[3]
    assert command(dev, point, 1.0) == ("cmnd/t/POWER", b"ON")
    with pytest.raises(CommandError):
        command(dev, dev.points[0], 21.0)


def test_generic_json_paths_scale_and_template() -> None:
    dev = device(
        "json",
        [
            {"id": "t", "field": "sensors.0.t", "zone": "z", "kind": "temperature", "scale": 0.1},
            {"id": "sp", "field": "sp", "zone": "z", "kind": "heating_setpoint",
             "writable": True, "limits": {"min": 5, "max": 30}},
        ],
        command_topic="site/room/sp/set",
        payload_template='{"sp": {value}}',
    )  # fmt: skip
    assert parse(dev, "t", b'{"sensors":[{"t":215}],"sp":21}').values == {"t": 21.5, "sp": 21.0}
    assert command(dev, dev.points[1], 22.0) == ("site/room/sp/set", b'{"sp": 22}')


def test_zigbee2mqtt_light_commands() -> None:
    dev = device(
        "zigbee2mqtt",
        [{"id": "lvl", "field": "brightness", "zone": "z", "kind": "light_level", "unit": "%",
          "writable": True, "limits": {"min": 0, "max": 100}}],
    )  # fmt: skip
    topic, payload = command(dev, dev.points[0], 50.0)
    assert topic == "zigbee2mqtt/t/set"
    assert json.loads(payload) == {"state": "ON", "brightness": 127}
    assert json.loads(command(dev, dev.points[0], 0.0)[1]) == {"state": "OFF", "brightness": 0}
    assert parse(dev, "zigbee2mqtt/t", b'{"state":"ON","brightness":127}').values == {"lvl": 50.0}
    assert parse(dev, "zigbee2mqtt/t", b'{"state":"OFF","brightness":127}').values == {"lvl": 0.0}


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1,2]", ""),  # a list with no matching path: nothing reported, nothing broken
        (b"42", "wrong shape"),
        (b'{"occupancy":"maybe"}', "not a number"),
        (b'{"illuminance":NaN}', "not finite"),
        (b'{"illuminance":Infinity}', "not finite"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_payloads_are_problems_not_exceptions(payload: bytes, problem: str) -> None:
    parsed = parse(MOTION, "zigbee2mqtt/t", payload)
    assert parsed.values == {}
    assert all(problem in p for p in parsed.problems) and (bool(parsed.problems) == bool(problem))


def test_pathological_json_is_a_problem_too() -> None:
    for payload in (b"[" * 2000, b'{"battery":' + b"1" * 400 + b"}", b"[" + b"9" * 5000 + b"]"):
        parsed = parse(MOTION, "zigbee2mqtt/t", payload)
        assert parsed.values == {} and parsed.problems


@given(st.binary(max_size=300), st.sampled_from(["zigbee2mqtt/t", "zigbee2mqtt/t/availability"]))
def test_any_bytes_parse_without_raising(payload: bytes, topic: str) -> None:
    parsed = parse(MOTION, topic, payload)
    assert all(isinstance(v, float) for v in parsed.values.values())


# -- the daemon on a real broker -----------------------------------------------------------


SITE = """\
site: mq
timezone: UTC
zones:
  - {id: room, area_m2: 20}
"""
DEVICES = """\
devices:
  - id: motion
    driver: mqtt
    adapter: zigbee2mqtt
    topic: room-motion
    points:
      - {id: occupancy, field: occupancy, zone: room, kind: occupancy}
      - {id: illuminance, field: illuminance, zone: room, kind: illuminance}
  - id: thermo
    driver: mqtt
    adapter: json
    topic: sensors/room
    command_topic: sensors/room/setpoint/set
    payload_template: '{"heat": {value}}'
    points:
      - {id: t, field: temp, zone: room, kind: temperature}
      - {id: heat, field: heat, zone: room, kind: heating_setpoint, writable: true,
         limits: {min: 5, max: 30}}
  - id: dimmer
    driver: mqtt
    adapter: tasmota
    topic: room-dimmer
    timeout_s: 5
    points:
      - {id: level, field: Dimmer, zone: room, kind: light_level, unit: "%", writable: true,
         limits: {min: 0, max: 100}}
"""
POLICY = """\
policies:
  - id: always
    zones: ["*"]
    schedule:
      occupied_hours:
        - {days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59"}
    lighting: {vacancy_timeout_s: 600, daylight_target_lux: 500, full_output_lux: 500}
"""


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


def write_site(root: Path) -> Path:
    (root / "devices").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "site.yaml").write_text(SITE)
    (root / "devices" / "mqtt.yaml").write_text(DEVICES)
    (root / "policies" / "p.yaml").write_text(POLICY)
    return root


@pytest.mark.mosquitto
async def test_payloads_drive_a_zone_and_commands_reach_set_topics(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    site = load_site(write_site(tmp_path / "site"))
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "site_dir": site.root,
            "http": {"enabled": False},
            "mqtt": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port},
        }
    )
    daemon = Daemon(settings, site)
    commands: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="devices") as devices:
        await devices.subscribe("cmnd/room-dimmer/#")
        await devices.subscribe("sensors/room/setpoint/set")
        # Retained state, as the devices left it: read at start-up.
        await devices.publish("sensors/room", b'{"temp": 19.5, "heat": 16}', retain=True)
        await devices.publish("tele/room-dimmer/STATE", b'{"POWER":"OFF","Dimmer":0}', retain=True)
        task = asyncio.create_task(daemon.run(60))
        await asyncio.wait_for(daemon.ready.wait(), 20)
        # Someone walks into a dark room.
        await devices.publish("zigbee2mqtt/room-motion", b'{"occupancy":true,"illuminance":40}')
        # Bad input on the way: counted, logged, nothing breaks.
        await devices.publish("zigbee2mqtt/room-motion", b'{"occupancy":"perhaps"}')

        async def answer() -> None:
            async for message in devices.messages:
                topic, body = message.topic.value, bytes(message.payload)  # type: ignore[arg-type]
                commands.append((topic, body))
                if topic == "cmnd/room-dimmer/Dimmer":  # the dimmer confirms, as Tasmota does
                    state = json.dumps({"POWER": "ON", "Dimmer": int(body)})
                    await devices.publish("stat/room-dimmer/RESULT", state.encode())
                if topic == "sensors/room/setpoint/set":
                    await devices.publish("sensors/room", body)  # the read-back

        responder = asyncio.create_task(answer())
        for _ in range(200):
            topics = {t for t, _ in commands}
            if {"cmnd/room-dimmer/Dimmer", "sensors/room/setpoint/set"} <= topics:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        zone = daemon.zone_agents["room"]
        daemon.request_stop()
        await task
        responder.cancel()
    assert ("sensors/room/setpoint/set", b'{"heat": 21}') in commands
    dimmer = [int(b) for t, b in commands if t == "cmnd/room-dimmer/Dimmer"]
    assert dimmer and dimmer[0] > 0  # lights on for the occupant
    assert zone.inputs().occupied is True
    lights = daemon.device_agents["dimmer"]
    assert lights.available
    bad = daemon.metrics.counters.get('buildingd_bad_payloads_total{device="motion"}', 0)
    assert bad == 1


@pytest.mark.mosquitto
async def test_home_assistant_discovery_votes_setpoints_and_demand_response(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    site = load_site(write_site(tmp_path / "site"))
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "site_dir": site.root,
            "http": {"enabled": False},
            "mqtt": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port,
                     "homeassistant_discovery": True},
        }
    )  # fmt: skip
    daemon = Daemon(settings, site)
    seen: dict[str, list[bytes]] = {}
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="ha") as ha:
        await ha.publish("sensors/room", b'{"temp": 21.5, "heat": 21}', retain=True)
        task = asyncio.create_task(daemon.run(60))
        await asyncio.wait_for(daemon.ready.wait(), 20)
        await ha.subscribe("homeassistant/#")
        await ha.subscribe("buildingd/mq/#")

        async def collect() -> None:
            async for message in ha.messages:
                seen.setdefault(message.topic.value, []).append(bytes(message.payload))  # type: ignore[arg-type]

        collector = asyncio.create_task(collect())

        async def wait_for(topic: str, count: int = 1) -> list[bytes]:
            for _ in range(100):
                if len(seen.get(topic, [])) >= count:
                    break
                await asyncio.sleep(0.1)
            return seen.get(topic, [])

        climate = "homeassistant/climate/buildingd_mq/room/config"
        config = json.loads((await wait_for(climate))[0])  # retained: there on subscribe
        assert config["current_temperature_topic"] == "buildingd/mq/zone/room/state"
        assert config["availability_topic"] == "buildingd/mq/status"
        state = json.loads((await wait_for("buildingd/mq/zone/room/state"))[-1])
        assert state["temperature_c"] == 21.5
        await ha.publish("homeassistant/status", b"online")  # Home Assistant restarted
        assert len(await wait_for(climate, 2)) >= 2

        await ha.publish("buildingd/mq/zone/room/vote", b"cold")
        result = json.loads((await wait_for("buildingd/mq/zone/room/vote/result"))[0])
        assert result["accepted"] is True
        await ha.publish("buildingd/mq/zone/room/vote", b"lukewarm")
        refused = json.loads((await wait_for("buildingd/mq/zone/room/vote/result", 2))[1])
        assert refused["accepted"] is False and "unknown vote" in refused["reason"]

        heating = state["heating_sp_c"]
        await ha.publish("buildingd/mq/zone/room/set/heating_sp", str(heating + 1).encode())
        ok = json.loads((await wait_for("buildingd/mq/zone/room/set/result"))[0])
        assert ok["accepted"] is True
        await ha.publish("buildingd/mq/zone/room/set/heating_sp", b"45")
        no = json.loads((await wait_for("buildingd/mq/zone/room/set/result", 2))[1])
        assert no["accepted"] is False and "safety band" in no["reason"]
        for _ in range(50):
            zone = daemon.zone_agents["room"]
            if zone.decision is not None and zone.decision.band.heating_c == heating + 1:
                break
            await asyncio.sleep(0.1)
        assert zone.decision is not None and zone.decision.band.heating_c == heating + 1

        await ha.publish("buildingd/mq/demand-response/request", b'{"target_w": 50}')
        await ha.publish("buildingd/mq/demand-response/request", b'{"target_w": "lots"}')
        invalid = 'buildingd_mqtt_invalid_total{topic="request"}'
        for _ in range(50):
            c = daemon.coordinator
            if c and (c.negotiations or c.finished) and daemon.metrics.counters[invalid]:
                break
            await asyncio.sleep(0.1)
        assert daemon.coordinator is not None
        assert daemon.coordinator.negotiations or daemon.coordinator.finished
        assert daemon.metrics.counters[invalid] == 1
        daemon.request_stop()
        await task
        collector.cancel()
    assert seen["buildingd/mq/status"][-1] == b"offline"  # said goodbye on the way out


@pytest.mark.mosquitto
async def test_broker_killed_and_restarted_mid_run(mosquitto: Mosquitto, tmp_path: Path) -> None:
    site = load_site(write_site(tmp_path / "site"))
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "site_dir": site.root,
            "http": {"enabled": False},
            "mqtt": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port,
                     "reconnect_max_s": 0.5},
        }
    )  # fmt: skip
    daemon = Daemon(settings, site)
    task = asyncio.create_task(daemon.run(60))
    await asyncio.wait_for(daemon.ready.wait(), 20)
    assert daemon.mqtt is not None
    mosquitto.stop()  # killed: no goodbye from the broker
    for _ in range(50):
        if not daemon.mqtt.connected.is_set():
            break
        await asyncio.sleep(0.1)
    assert not daemon.mqtt.connected.is_set()
    await asyncio.sleep(1.0)
    mosquitto.start()
    assert await daemon.mqtt.wait_connected(15)
    dimmer: list[bytes] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="devices") as devices:
        await devices.subscribe("cmnd/room-dimmer/Dimmer")
        # Control resumes: sensors published after the restart reach the zone (resubscribed),
        # and its light command reaches the dimmer.
        await devices.publish("sensors/room", b'{"temp": 21.0, "heat": 21}', retain=True)
        await devices.publish("zigbee2mqtt/room-motion", b'{"occupancy":true,"illuminance":10}')

        async def first_command() -> None:
            async for message in devices.messages:
                dimmer.append(bytes(message.payload))  # type: ignore[arg-type]
                return

        await asyncio.wait_for(first_command(), 30)
    sup = daemon.supervisor
    assert sup is not None
    assert all(c.restarts == 0 for c in sup.children.values())  # no agent crashed
    assert daemon.mqtt.counters.connects == 2
    daemon.request_stop()
    await task
    assert int(dimmer[0]) > 0
