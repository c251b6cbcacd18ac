"""Fault suite, MQTT broker killed and restarted under a running daemon: control of the other
devices goes on, each MQTT device that stays away raises one break-glass alert, and each alert
is cleared once the broker is back."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.daemon_proc import start_daemon
from tests.servers import Mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto]

WRITTEN = r"audit: \[device=(?!f2-office-[ab]-)\S+ .*command .*outcome=written"
BREAK_GLASS = re.compile(r"BREAK-GLASS (\w+) \w+ device ([^\s:]+)(: | cleared)")


def steps(journal: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Device alerts raised and cleared in ``journal``: alert id -> device id, each."""
    raised: dict[str, str] = {}
    cleared: dict[str, str] = {}
    for line in journal:
        m = BREAK_GLASS.search(line)
        if m is not None:
            (raised if m[3] == ": " else cleared)[m[1]] = m[2]
    return raised, cleared


def test_a_broker_outage_raises_one_alert_per_device_and_clears_it(
    site_copy: Path, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    office = site_copy / "policies/office.yaml"
    # A device away for one simulated minute (2 s at --speed 30) is escalated.
    office.write_text(
        office.read_text().replace("device_unavailable_s: 900", "device_unavailable_s: 60")
    )
    env = {
        "BUILDINGD_MQTT__ENABLED": "true",
        "BUILDINGD_MQTT__HOST": mosquitto.host,
        "BUILDINGD_MQTT__PORT": str(mosquitto.port),
        "BUILDINGD_MQTT__KEEPALIVE_S": "5",
    }
    daemon = start_daemon(site_copy, tmp_path, env=env)
    try:
        daemon.wait_for(lambda m: "READY=1" in m, timeout_s=60)
        mosquitto.stop()  # killed, as in a crash
        killed_at = len(daemon.output)
        daemon.wait_for_output(r"BREAK-GLASS \w+ \w+ device f2-office-", killed_at, 120)
        daemon.wait_for_output(WRITTEN, killed_at, 120)  # the other zones are still controlled
        mosquitto.start()
        back_at = len(daemon.output)
        daemon.wait_for_output(r"BREAK-GLASS \w+ .* cleared", back_at, 120)
        # Every alert raised during the outage is cleared (devices answer again), none twice.
        deadline = time.monotonic() + 60
        while True:
            raised_ids, cleared_ids = steps(daemon.output[killed_at:])
            if (raised_ids and set(raised_ids) == set(cleared_ids)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        journal = [line for line in daemon.output[killed_at:] if "BREAK-GLASS" in line]
        assert raised_ids and sorted(raised_ids) == sorted(cleared_ids), journal
        devices = list(raised_ids.values())
        assert len(devices) == len(set(devices)), journal  # one alert per device
        assert daemon.proc.poll() is None
    finally:
        daemon.close()
