"""Home Assistant discovery payloads checked by Home Assistant's own MQTT schemas (run in its
venv, .venv-ha), and the pure pieces behind them: rounding, hvac_action, light commands, the
checks on requests made by hand, and the zone's overrides."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from buildingd.agents.messages import ZoneStateMsg
from buildingd.config.loader import load_site
from buildingd.config.policies import Band, Policy
from buildingd.control.zone import Adjustments, ZoneInputs, ZoneMode, ZoneState, decide
from buildingd.coordinator import overrides
from buildingd.mqtt.ha_discovery import (
    discovery_configs,
    hvac_action,
    light_request,
    zone_state_body,
)
from buildingd.points import PointKind
from tests.conftest import REPO, one_room_site

HA_PYTHON = REPO / ".venv-ha" / "bin" / "python"
VALIDATOR = REPO / "tests" / "ha" / "validate_discovery.py"

METERED = """\
devices:
  - id: meter
    driver: sim
    points:
      - {id: power, kind: power, unit: W}
      - {id: energy, kind: energy, unit: kWh}
  - id: switch
    driver: sim
    points:
      - {id: relay, zone: room, kind: light_switch, writable: true, limits: {min: 0, max: 1}}
      - {id: t, zone: room, kind: temperature}
"""


def validate(configs: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """Home Assistant's verdict on each config (None: valid), all in one subprocess."""
    if not HA_PYTHON.exists():
        pytest.fail("no Home Assistant venv: run `make install-ha` (make test does)")
    done = subprocess.run(
        [str(HA_PYTHON), str(VALIDATOR)],
        input=json.dumps(list(configs.items())),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, str | None] = json.loads(done.stdout)
    return result


def test_every_discovery_payload_is_valid_for_home_assistant(tmp_path: Path) -> None:
    demo = load_site(REPO)
    metered = load_site(one_room_site(tmp_path / "metered", "metered", METERED))
    configs = discovery_configs(demo, "homeassistant", "buildingd/demo-office", "http://h:8750")
    configs |= discovery_configs(metered, "homeassistant", "buildingd/metered", None)
    # The bug this replaces: presets without their command topic, rejected by Home Assistant.
    climate = "homeassistant/climate/buildingd_demo-office/f1-reception/config"
    broken = {k: v for k, v in configs[climate].items() if k != "preset_mode_command_topic"}
    verdicts = validate({**configs, "homeassistant/climate/x/broken/config": broken})
    assert "preset_mode" in (verdicts.pop("homeassistant/climate/x/broken/config") or "")
    assert {t: e for t, e in verdicts.items() if e} == {}
    platforms = [t.split("/")[1] for t in configs]
    assert platforms.count("climate") == len(demo.zones) + 1
    assert platforms.count("light") == 9  # every demo zone has lights, and the switched room
    energy = configs["homeassistant/sensor/buildingd_metered/meter_energy/config"]
    assert (energy["device_class"], energy["state_class"]) == ("energy", "total_increasing")
    temperature = configs["homeassistant/sensor/buildingd_metered/room_temperature/config"]
    assert temperature["state_class"] == "measurement"
    switched = configs["homeassistant/light/buildingd_metered/room/config"]
    assert "brightness" not in switched  # a relay is on/off only
    policy = demo.policy_for("f1-reception")
    assert configs[climate]["min_temp"] >= policy.safety.min_c
    assert configs[climate]["max_temp"] <= policy.safety.max_c


def state(**values: Any) -> ZoneStateMsg:
    base: dict[str, Any] = dict(
        zone_id="z", mode="occupied", temperature_c=19.200000000000003, humidity_pct=41.26,
        occupied=True, illuminance_lux=312.7, heating_sp_c=21.0, cooling_sp_c=24.0,
        light_level_pct=55.00000001, dehumidifier_on=False, timestamp=datetime.now(UTC),
        hvac_w=800.0,
    )  # fmt: skip
    return ZoneStateMsg(**(base | values))


def test_zone_state_has_no_float_noise_and_an_hvac_action() -> None:
    body = zone_state_body(state())
    text = json.dumps(body)
    assert '"temperature_c": 19.2,' in text and '"light_level_pct": 55,' in text
    assert body["humidity_pct"] == 41.3 and body["illuminance_lux"] == 313
    assert body["hvac_action"] == "heating"
    assert hvac_action(state(temperature_c=25.0)) == "cooling"
    assert hvac_action(state(temperature_c=22.0)) == "idle"
    assert hvac_action(state(hvac_w=0.0)) == "idle"


def test_light_commands() -> None:
    assert light_request(b'{"state": "ON", "brightness": 40}', state()) == 40
    assert light_request(b'{"state": "OFF"}', state()) == 0
    assert light_request(b'{"state": "ON"}', state(light_level_pct=0.0)) == 100
    for bad in (b'{"state": "DIM"}', b"[1]", b'{"state": "ON", "brightness": "x"}', b"{"):
        with pytest.raises(ValueError):
            light_request(bad, state())


def test_band_requests_are_checked_against_the_policy() -> None:
    policy = Policy.model_validate({"id": "p", "zones": ["*"]})
    base = Band(heating_c=21.0, cooling_c=24.0)
    assert overrides.check_band(22.0, 23.0, base, policy) is None  # narrowed: both ends moved
    assert "0.5 K below" in (overrides.check_band(22.8, 23.0, base, policy) or "")
    assert "more than 1.5 K" in (overrides.check_band(19.0, 24.0, base, policy) or "")
    assert "safety band" in (overrides.check_band(9.0, 24.0, base, policy) or "")
    assert overrides.check_mode("unoccupied") is None
    assert "cannot be set by hand" in (overrides.check_mode("hold") or "")
    dimmer = {PointKind.LIGHT_LEVEL}
    assert overrides.check_light(40, dimmer) is None
    assert "vacancy" in (overrides.check_light(40, dimmer, vacant=True) or "")
    assert overrides.check_light(0, dimmer, vacant=True) is None  # off is always fine
    assert "0 or 100" in (overrides.check_light(40, {PointKind.LIGHT_SWITCH}) or "")
    assert "no lighting" in (overrides.check_light(40, set()) or "")


def test_zone_overrides_mode_band_and_light_with_vacancy_timeout() -> None:
    policy = Policy.model_validate({"id": "p", "zones": ["*"],
                                    "lighting": {"vacancy_timeout_s": 600}})  # fmt: skip
    monday_10h = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    people = ZoneInputs(temperature_c=21.0, occupied=True, illuminance_lux=0.0)
    adj = Adjustments(vote_offset_k=1.0, cooling_extra_k=-1.5, mode_override="unoccupied",
                      light_override_pct=30.0)  # fmt: skip
    d = decide(ZoneState(adjustments=adj), people, policy, monday_10h, 0.0)
    assert d.state.mode is ZoneMode.UNOCCUPIED  # a person's choice over the schedule
    unocc = policy.comfort.unoccupied
    assert (d.band.heating_c, d.band.cooling_c) == (unocc.heating_c + 1, unocc.cooling_c - 0.5)
    assert d.state.light_level_pct == 30.0
    nobody = ZoneInputs(temperature_c=21.0, occupied=False, illuminance_lux=0.0)
    later = decide(d.state, nobody, policy, monday_10h, 300.0)
    assert later.state.light_level_pct == 30.0  # inside the vacancy timeout: kept
    gone = decide(later.state, nobody, policy, monday_10h, 700.0)
    assert gone.state.light_level_pct == 0.0
    assert gone.state.adjustments.light_override_pct < 0  # ended, not waiting for people
    blind = decide(d.state, ZoneInputs(), policy, monday_10h, 0.0)
    assert blind.state.mode is ZoneMode.HOLD  # no sensor: safe hold wins over the override
