"""MQTT devices: payload formats (zigbee2mqtt, Tasmota, generic JSON) and the whole daemon driving
a zone from sensor payloads on a real mosquitto, with commands on the right set topics."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.agents.bus import Mailbox
from buildingd.agents.messages import ReadingMsg
from buildingd.config.loader import load_site
from buildingd.config.mqtt import MqttDevice
from buildingd.drivers.mqtt import MqttDriver
from buildingd.drivers.mqtt_formats import CommandError, command, parse, state_topics
from buildingd.points import Quality
from buildingd.service.app import Daemon
from buildingd.settings import Settings
from tests.conftest import one_room_site, until
from tests.servers import Mosquitto, flood_command


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


def write_site(root: Path) -> Path:
    return one_room_site(root, "mq", DEVICES)


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
        wanted = {"cmnd/room-dimmer/Dimmer", "sensors/room/setpoint/set"}
        await until(lambda: wanted <= {t for t, _ in commands}, "a dimmer and a setpoint command")
        zone = daemon.zone_agents["room"]
        await until(lambda: zone.inputs().occupied is True, "the zone hears the occupant")
        await until(lambda: daemon.device_agents["dimmer"].available, "the dimmer's read-back")

        def dimmer_levels() -> list[int]:
            return [int(b) for t, b in commands if t == "cmnd/room-dimmer/Dimmer"]

        await until(lambda: dimmer_levels()[-1] > 0, "lights on for the occupant")
        daemon.request_stop()
        await task
        responder.cancel()
    assert ("sensors/room/setpoint/set", b'{"heat": 21}') in commands
    assert dimmer_levels()[-1] > 0  # lights on for the occupant (after warm-up's "off")
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
            await until(lambda: len(seen.get(topic, [])) >= count, f"{count} on {topic}")
            return seen[topic]

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
        # Our own answers on set/result are not read back as requests.
        assert 'buildingd_mqtt_invalid_total{topic="result"}' not in daemon.metrics.counters
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

        async def lights_on() -> None:  # an unconfirmed "off" from before may be re-sent first
            async for message in devices.messages:
                dimmer.append(bytes(message.payload))  # type: ignore[arg-type]
                if int(dimmer[-1]) > 0:
                    return

        await asyncio.wait_for(lights_on(), 30)
    sup = daemon.supervisor
    assert sup is not None
    assert all(c.restarts == 0 for c in sup.children.values())  # no agent crashed
    assert daemon.mqtt.counters.connects == 2
    daemon.request_stop()
    await task
    assert int(dimmer[-1]) > 0


# -- faults at daemon level: floods, oversized and non-finite payloads, silent sensors ---------

CLIMATE_DEVICES = """\
devices:
  - id: climate
    driver: mqtt
    adapter: zigbee2mqtt
    topic: room-climate
    poll_interval_s: 0.2
    stale_after_s: {stale_after_s}
    points:
      - {{id: temperature, field: temperature, zone: room, kind: temperature}}
      - {{id: humidity, field: humidity, zone: room, kind: humidity}}
  - id: motion
    driver: mqtt
    adapter: zigbee2mqtt
    topic: room-motion
    points:
      - {{id: occupancy, field: occupancy, zone: room, kind: occupancy}}
"""
DIMMER_DEVICE = """\
  - id: dimmer
    driver: mqtt
    adapter: tasmota
    topic: room-dimmer
    timeout_s: 5
    points:
      - {id: level, field: Dimmer, zone: room, kind: light_level, unit: "%", writable: true,
         limits: {min: 0, max: 100}}
"""


def climate_daemon(
    tmp_path: Path,
    mosquitto: Mosquitto,
    stale_after_s: float = 3600,
    dimmer: bool = False,
    **mqtt: Any,
) -> Daemon:
    devices = CLIMATE_DEVICES.format(stale_after_s=stale_after_s) + (DIMMER_DEVICE * dimmer)
    root = one_room_site(tmp_path / "site", "mq", devices)
    site = load_site(root)
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "site_dir": site.root,
            "http": {"enabled": True, "port": 0},
            "mqtt": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port, **mqtt},
        }
    )
    return Daemon(settings, site)


def zone_temperature(daemon: Daemon) -> float | None:
    return daemon.zone_agents["room"].inputs().temperature_c


def mqtt_driver(daemon: Daemon, device_id: str) -> MqttDriver:
    driver = daemon.device_agents[device_id].driver
    assert isinstance(driver, MqttDriver)
    return driver


async def metrics_page(daemon: Daemon) -> dict[str, float]:
    """GET /metrics, as Prometheus would: sample name with labels -> value."""
    assert daemon.http is not None
    url = f"http://127.0.0.1:{daemon.http.port}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(get)  # the daemon answers on this loop
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    return {key: float(value) for key, value in samples}


def no_agent_restarted(daemon: Daemon) -> bool:
    assert daemon.supervisor is not None
    return all(c.restarts == 0 for c in daemon.supervisor.children.values())


@pytest.mark.mosquitto
@pytest.mark.parametrize("qos", [1, 0])
async def test_a_flood_of_sensor_messages_is_taken_in_to_the_last(
    mosquitto: Mosquitto, tmp_path: Path, qos: int
) -> None:
    # 10,000 zigbee2mqtt reports from another process, as fast as paho sends them. The daemon
    # keeps no queue of its own that could overflow, so every message reaches the driver:
    # QoS 1 because the broker resends until acknowledged, QoS 0 because nothing in between
    # drops (this broker queues up to 100,000 per client; a production mosquitto's
    # max_queued_messages can drop QoS 0 before the daemon ever sees them).
    daemon = climate_daemon(tmp_path, mosquitto, dimmer=True, qos_readings=qos)
    task = asyncio.create_task(daemon.run(120))
    await asyncio.wait_for(daemon.ready.wait(), 20)
    climate = mqtt_driver(daemon, "climate")
    count = 10_000
    template = '{"temperature": 2{i}, "humidity": 40, "linkquality": 120}'
    flood = flood_command(mosquitto.host, mosquitto.port, "zigbee2mqtt/room-climate", count,
                          template.replace("2{i}", "21.{i}"), qos=qos)  # fmt: skip
    publisher = await asyncio.create_subprocess_exec(*flood)
    assert await asyncio.wait_for(publisher.wait(), 60) == 0
    await until(lambda: climate.messages >= count, "every flood message at the driver", 60)
    await asyncio.sleep(0.3)  # and no more than that
    assert climate.messages == count
    assert climate.bad_payloads == 0
    key = 'buildingd_device_messages_total{device="climate"}'
    assert daemon.metrics.counters[key] == count
    # The zone holds the flood's last value, to within the reporting deadband (0.1 K).
    last = 21.9999  # "21.{i}" for i = 9999
    await until(lambda: abs((zone_temperature(daemon) or 0) - last) < 0.1, "the last value", 10)
    assert climate.latest["temperature"].value == last

    # The daemon still answers: a new reading is taken and a command goes out.
    assert daemon.mqtt is not None
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="devices") as devices:
        await devices.subscribe("cmnd/room-dimmer/Dimmer")
        await devices.publish("zigbee2mqtt/room-climate", b'{"temperature": 23.0}', qos=1)
        await devices.publish("zigbee2mqtt/room-motion", b'{"occupancy": true}', qos=1)

        async def light_command() -> bytes:
            async for message in devices.messages:
                level = bytes(message.payload)  # type: ignore[arg-type]
                state = json.dumps({"POWER": "ON", "Dimmer": int(level)})
                await devices.publish(
                    "stat/room-dimmer/RESULT", state
                )  # confirmed, as Tasmota does
                return level
            raise AssertionError("no command")

        assert int(await asyncio.wait_for(light_command(), 20)) > 0
        dimmer = daemon.device_agents["dimmer"]
        await until(lambda: dimmer.available is True, "the dimmer confirmed", 10)
    await until(lambda: zone_temperature(daemon) == 23.0, "a reading after the flood", 10)
    assert daemon.mqtt.connected.is_set() and daemon.mqtt.counters.connects == 1
    assert daemon.mqtt.counters.handler_errors == 0
    assert no_agent_restarted(daemon)
    assert (await metrics_page(daemon))["buildingd_mqtt_received_total"] >= count + 2
    daemon.request_stop()
    await task


@pytest.mark.mosquitto
async def test_oversized_and_non_finite_payloads_are_refused_counted_and_logged(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = climate_daemon(tmp_path, mosquitto)
    task = asyncio.create_task(daemon.run(120))
    await asyncio.wait_for(daemon.ready.wait(), 20)
    assert daemon.mqtt is not None
    device_topic = "zigbee2mqtt/room-climate"
    one_mb = b" " * (1024 * 1024)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="devices") as devices:
        # A good value first.
        await devices.publish(device_topic, b'{"temperature": 21.5, "humidity": 40}', qos=1)
        await until(lambda: zone_temperature(daemon) == 21.5, "the good reading", 10)

        bad_device = [
            b'{"temperature": NaN}',
            b'{"temperature": Infinity}',
            b'{"temperature": -Infinity}',
            b'{"temperature": 1e999}',  # json reads it as infinity
            b'{"temperature": 30, "pad": "' + one_mb + b'"}',
        ]
        for payload in bad_device:
            await devices.publish(device_topic, payload, qos=1)
        climate = mqtt_driver(daemon, "climate")
        await until(lambda: climate.bad_payloads == len(bad_device), "device payloads refused", 10)
        # The last good values stand: nothing NaN or infinite reached the zone.
        assert zone_temperature(daemon) == 21.5
        assert daemon.zone_agents["room"].inputs().humidity_pct == 40.0

        page = await metrics_page(daemon)  # what /metrics shows
        assert page['buildingd_bad_payloads_total{device="climate"}'] == len(bad_device)
        assert page['buildingd_mqtt_refused_total{reason="oversized"}'] == 1
        assert page["buildingd_mqtt_connected"] == 1.0

        # The daemon goes on: a good value after all that is taken.
        await devices.publish(device_topic, b'{"temperature": 23.5}', qos=1)
        await until(lambda: zone_temperature(daemon) == 23.5, "the good reading after", 10)

    logged = [r.getMessage() for r in caplog.records]
    for field in ("NaN", "Infinity", "-Infinity"):
        assert any(device_topic in m and "not finite" in m for m in logged), field
    assert any(f"{device_topic}: payload of {len(bad_device[-1])} bytes refused" in m
               for m in logged)  # fmt: skip
    assert any(f"device climate: {device_topic}: payload refused" in m for m in logged)
    assert daemon.mqtt.connected.is_set() and daemon.mqtt.counters.connects == 1
    assert no_agent_restarted(daemon)
    daemon.request_stop()
    await task


@pytest.mark.mosquitto
async def test_a_sensor_that_stops_publishing_goes_stale_and_comes_back(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # Real time, kept short: stale after 1 s without a report, judged every 0.2 s.
    daemon = climate_daemon(tmp_path, mosquitto, stale_after_s=1.0)
    task = asyncio.create_task(daemon.run(120))
    await asyncio.wait_for(daemon.ready.wait(), 20)
    readings = Mailbox("test", maxsize=10_000)
    daemon.bus.subscribe("readings/room", readings)
    seen: list[tuple[float, str, float, Quality]] = []  # loop time, point, value, quality

    async def watch() -> None:
        while True:
            r = ReadingMsg.parse(await readings.get())
            if r.device_id == "climate":
                seen.append((asyncio.get_running_loop().time(), r.point_id, r.value, r.quality))

    watcher = asyncio.create_task(watch())

    def last(point: str) -> Quality | None:
        return next((q for _, p, _, q in reversed(seen) if p == point), None)

    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="devices") as devices:
        # Staleness counts from when the daemon received the report, which is after this.
        silent_from = asyncio.get_running_loop().time()
        await devices.publish("zigbee2mqtt/room-climate", b'{"temperature": 21.5}', qos=1)
        await until(lambda: last("temperature") is Quality.GOOD, "a good reading", 10)
        assert zone_temperature(daemon) == 21.5
        # The sensor falls silent.
        await until(lambda: last("temperature") is Quality.STALE, "stale after 1 s", 5)
        stale_at = next(t for t, p, _, q in seen if p == "temperature" and q is Quality.STALE)
        assert 1.0 <= stale_at - silent_from <= 3.0  # judged every 0.2 s; slack for load
        assert zone_temperature(daemon) is None  # the zone no longer trusts it
        value = next(v for _, p, v, q in seen if p == "temperature" and q is Quality.STALE)
        assert value == 21.5  # the stale reading carries the last value, flagged
        # It speaks again: good again, and the zone uses it.
        await devices.publish("zigbee2mqtt/room-climate", b'{"temperature": 21.8}', qos=1)
        await until(lambda: last("temperature") is Quality.GOOD, "good again", 5)
        await until(lambda: zone_temperature(daemon) == 21.8, "the zone uses it again", 5)
    watcher.cancel()
    daemon.request_stop()
    await task
