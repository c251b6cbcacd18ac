"""What a reload does with changed settings (pure): live keys are applied, the others are named
as needing a restart and keep their running values."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from buildingd.service.reload import diff_settings
from buildingd.settings import HttpSettings, InfluxSettings, MqttSettings, Settings


def test_unchanged_settings_change_nothing() -> None:
    running = Settings(state_dir=Path("/var/lib/buildingd"))
    change = diff_settings(running, Settings(state_dir=Path("/var/lib/buildingd")))
    assert change.live == [] and change.restart == []
    assert change.merged(running, running) == running


def test_live_keys_are_taken_and_the_rest_waits_for_a_restart() -> None:
    running = Settings(log_level="info", http=HttpSettings(port=8750))
    new = Settings(
        log_level="debug",
        http=HttpSettings(port=9000, token_file=Path("/etc/buildingd/token")),
        mqtt=MqttSettings(enabled=True, host="broker.lan"),
    )
    change = diff_settings(running, new)
    assert change.live == ["log_level", "http.token_file"]
    assert change.restart == ["mqtt.enabled", "mqtt.host", "http.port"]
    merged = change.merged(running, new)
    assert merged.log_level == "debug"
    assert merged.http.token_file == Path("/etc/buildingd/token")
    assert merged.http.port == 8750  # still bound where it is
    assert merged.mqtt == running.mqtt


def test_a_changed_secret_is_seen_and_only_its_key_is_named() -> None:
    running = Settings(influx=InfluxSettings(token=SecretStr("old-secret")))
    new = Settings(influx=InfluxSettings(token=SecretStr("new-secret")))
    change = diff_settings(running, new)
    assert change.restart == ["influx.token"]
    assert "secret" not in repr(change)
