"""Fault suite, a Modbus device killed and restarted under a running daemon: the other zones stay
controlled, the device raises one break-glass alert, cleared when it answers again."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import start_daemon
from tests.servers import ModbusThermostat

pytestmark = [pytest.mark.slow, pytest.mark.modbus]

DEVICE = "f1-meeting-thermostat"
ALERT = re.compile(rf"BREAK-GLASS (\w+) \w+ device {DEVICE}(: | cleared)")
OTHERS_WRITTEN = rf"audit: \[device=(?!{DEVICE})\S+ .*command .*outcome=written"


@pytest.fixture
def thermostat() -> Iterator[ModbusThermostat]:
    server = ModbusThermostat()
    server.start()
    yield server
    server.kill()


def test_a_killed_modbus_device_raises_one_alert_cleared_when_it_is_back(
    site_copy: Path, tmp_path: Path, thermostat: ModbusThermostat
) -> None:
    devices = site_copy / "devices/demo-modbus.yaml"
    text = devices.read_text()
    # The meeting room's thermostat becomes a real device of its own (not the simulator's).
    head, sep, rest = text.partition(f"  - id: {DEVICE}\n")
    entry, nxt, tail = rest.partition("  - id: ")
    entry = entry.replace("    simulated: true\n", "").replace(
        "port: 15020", f"port: {thermostat.port}"
    )
    devices.write_text(head + sep + entry + nxt + tail)
    office = site_copy / "policies/office.yaml"
    office.write_text(
        office.read_text().replace("device_unavailable_s: 900", "device_unavailable_s: 60")
    )
    daemon = start_daemon(site_copy, tmp_path)
    try:
        daemon.wait_for(lambda m: "READY=1" in m, timeout_s=60)
        daemon.wait_for_output(rf"audit: \[device={DEVICE} .*outcome=written", timeout_s=60)
        thermostat.kill()  # the device loses power
        killed_at = len(daemon.output)
        daemon.wait_for_output(rf"device {DEVICE} unavailable", killed_at, 60)
        daemon.wait_for_output(ALERT.pattern.replace("(: | cleared)", ": "), killed_at, 60)
        daemon.wait_for_output(OTHERS_WRITTEN, killed_at, 60)  # the other zones go on
        thermostat.start()
        daemon.wait_for_output(rf"device {DEVICE} back", killed_at, 60)
        daemon.wait_for_output(ALERT.pattern.replace("(: | cleared)", " cleared"), killed_at, 60)
        found = [m.groups() for line in daemon.output[killed_at:] if (m := ALERT.search(line))]
        (raised,) = [i for i, step in found if step == ": "]
        assert [i for i, step in found if step == " cleared"] == [raised], found
        assert daemon.proc.poll() is None
    finally:
        daemon.close()
