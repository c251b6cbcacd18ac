"""A daemon that cannot start says why in one line (no traceback) and exits 1: an HTTP port that
is taken, a serial port that cannot be opened or refuses its line settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from buildingd.config.modbus import SerialConnection
from buildingd.drivers.modbus import serial_settings_refused
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def run(site: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = dict(
        os.environ, BUILDINGD_SITE_DIR=str(site), BUILDINGD_STATE_DIR=str(tmp_path / "s"),
        BUILDINGD_MQTT__PORT="0", BUILDINGD_SIM__MODBUS_PORT="0", BUILDINGD_SIM__BACNET_PORT="0",
        **env,
    )  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "buildingd", "run", "--no-console", "--duration", "30"],
        env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_an_http_port_in_use_is_one_line(site_copy: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(site_copy, tmp_path, BUILDINGD_HTTP__PORT=str(port))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert f"buildingd: HTTP port 127.0.0.1:{port}: already in use" in done.stderr.splitlines()[-1]


def test_a_serial_port_that_cannot_be_opened_is_one_line(site_copy: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-tty"
    (site_copy / "devices" / "rtu.yaml").write_text(
        "devices:\n  - id: rtu-thermostat\n    driver: modbus-rtu\n    simulated: true\n"
        "    profile: room-thermostat\n    zone: f1-kitchen\n    unit_id: 4\n"
        f"    connection: {{port: {tmp_path / 'daemon-end'}, baudrate: 19200, parity: E}}\n"
    )
    ports = f'{{"{tmp_path / "daemon-end"}": "{missing}"}}'
    done = run(site_copy, tmp_path, BUILDINGD_HTTP__PORT=str(free_port()),
               BUILDINGD_SIM__MODBUS_RTU_PORTS=ports)  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"buildingd: simulator: serial port {missing} cannot be opened"), last


def test_a_port_refusing_parity_gets_the_pty_hint() -> None:
    # What tcsetattr raises on a pty that refuses PARENB (this machine's kernel takes it, so the
    # error is built here as termios raises it: errno 22).
    line = SerialConnection(port="/dev/pts/7", baudrate=19200, parity="E")
    message = serial_settings_refused(line, termios.error(22, "Invalid argument"))
    assert message == (
        "serial port /dev/pts/7 refuses its settings (19200 baud, parity E, 8 data bits, "
        "1 stop bit): 22 Invalid argument; ptys (socat) refuse parity: use parity: N"
    )
    no_parity = SerialConnection(port="/dev/pts/7", baudrate=19200, parity="N")
    assert "use parity" not in serial_settings_refused(no_parity, termios.error(22, "x"))
