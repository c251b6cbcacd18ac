"""The Home Assistant side of the MQTT bridge on a real broker with an in-process daemon: a range
sent as two messages is one request with one answer, retained requests and our own answers are
not acted on, bad light commands are counted, an open alert turns the device's problem sensor on
and off again, and a discovery config the site no longer has is cleared."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import pytest

from buildingd.config.loader import load_site
from buildingd.service.app import Daemon
from buildingd.settings import Settings
from tests.conftest import ALWAYS_OCCUPIED, one_room_site, until
from tests.servers import Mosquitto

DEVICES = """\
devices:
  - id: thermo
    driver: mqtt
    adapter: json
    topic: sensors/room
    points:
      - {id: t, field: temp, zone: room, kind: temperature}
"""
BASE = "buildingd/hab"
# Always in occupied hours; a zone mode set by hand lasts 2 s.
POLICY = ALWAYS_OCCUPIED + "    negotiation: {mode_override_s: 2}\n"


@pytest.mark.mosquitto
async def test_requests_answers_alerts_and_ghost_configs(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = load_site(one_room_site(tmp_path / "site", "hab", DEVICES, POLICY))
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
    ghost = "homeassistant/sensor/buildingd_hab/gone_temperature/config"
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="ha") as ha:
        # Left on the broker by an older site: a zone that no longer exists, and a request.
        await ha.publish(ghost, b'{"state_topic": "x"}', qos=1, retain=True)
        await ha.publish(f"{BASE}/zone/room/set/mode", b"unoccupied", qos=1, retain=True)
        await ha.publish("sensors/room", b'{"temp": 21.0}', retain=True)
        await ha.subscribe("homeassistant/#")
        await ha.subscribe(f"{BASE}/#")

        async def collect() -> None:
            async for message in ha.messages:
                topic = message.topic.value
                seen.setdefault(topic, []).append(bytes(message.payload))  # type: ignore[arg-type]

        collector = asyncio.create_task(collect())
        task = asyncio.create_task(daemon.run(120))
        try:
            await asyncio.wait_for(daemon.ready.wait(), 30)
            await until(lambda: seen.get(ghost, [b"x"])[-1] == b"", "the ghost config cleared")
            await until(lambda: f"{BASE}/zone/room/state" in seen, "the zone's state")
            result = f"{BASE}/zone/room/set/result"
            assert result not in seen  # the retained mode request was not acted on

            # Home Assistant's range: low then high, two messages; one request, one answer.
            await ha.publish(f"{BASE}/zone/room/set/heating_sp", b"21.5")
            await ha.publish(f"{BASE}/zone/room/set/cooling_sp", b"23.5")
            await until(lambda: result in seen, "the answer")
            answer = json.loads(seen[result][0])
            assert answer["accepted"] is True, answer
            assert (answer["heating_sp_c"], answer["cooling_sp_c"]) == (21.5, 23.5)
            zone = daemon.zone_agents["room"]
            await until(lambda: zone.decision is not None and
                        (zone.decision.band.heating_c, zone.decision.band.cooling_c)
                        == (21.5, 23.5), "the band applied")  # fmt: skip
            await until(lambda: f"{BASE}/zone/room/request/last" in seen, "the last request")
            last = json.loads(seen[f"{BASE}/zone/room/request/last"][-1])
            assert last["summary"].startswith("accepted: cooling_sp=23.5, heating_sp=21.5")

            # A zone mode from Home Assistant: audited, and back to the schedule by itself.
            await ha.publish(f"{BASE}/zone/room/set/mode", b"unoccupied")
            await until(lambda: zone.state.mode.value == "unoccupied", "the mode set by hand")
            assert any("kind=override outcome=mode" in r.getMessage() for r in caplog.records)
            await until(lambda: zone.state.mode.value == "occupied", "back to the schedule")

            await ha.publish(f"{BASE}/zone/room/set/light", b'{"state": "DIM"}')
            await ha.publish(f"{BASE}/zone/room/set/mode", b"hold")
            await until(lambda: len(seen[result]) == 3, "the refused mode")
            assert "cannot be set by hand" in json.loads(seen[result][2])["reason"]
            assert len(seen[result]) == 3  # one answer per request, the range's included
            counters = daemon.metrics.counters
            assert counters.get('buildingd_mqtt_invalid_total{topic="light"}') == 1
            assert 'buildingd_mqtt_invalid_total{topic="result"}' not in counters

            # An open alert on the device: its problem sensor on, then off when cleared.
            problem = f"{BASE}/problem/thermo"
            assert seen[problem][-1] == b"OFF"
            await daemon._give_up("device[thermo]", RuntimeError("driver wedged"))
            await until(lambda: seen[problem][-1] == b"ON", "problem on")
            coordinator = daemon.coordinator
            assert coordinator is not None
            (incident,) = coordinator.incidents()
            await ha.publish(f"{BASE}/alerts/{incident.id}/clear", b"Jo", qos=1)
            await until(lambda: seen[problem][-1] == b"OFF", "problem off")
        finally:
            daemon.request_stop()
            await task
            collector.cancel()
