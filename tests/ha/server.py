"""A real Home Assistant core process for the tests (from .venv-ha, ``make install-ha``): a
minimal config directory, the MQTT config entry pointing at the test's broker, and the ``probe``
custom component through which the test reads Home Assistant's state machine and calls its
services. A Home Assistant that cannot start fails the test; it never skips."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import REPO, free_port

HASS = REPO / ".venv-ha" / "bin" / "hass"
COMPONENTS = Path(__file__).resolve().parent / "custom_components"


class HomeAssistant:
    """``start()`` / ``stop()`` again keep the config directory (its registries), as a real
    restart does."""

    def __init__(self, folder: Path, mqtt_host: str, mqtt_port: int) -> None:
        self.folder = folder
        self.port = free_port()
        self.mqtt = (mqtt_host, mqtt_port)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / "home-assistant.log"

    def _keep_log(self) -> None:
        """Keep the last run's log before the next start (Home Assistant would rotate it
        away)."""
        if self.log.exists():
            runs = self.folder / "previous-runs.log"
            with runs.open("a") as out:
                out.write(self.log.read_text(errors="replace"))
            self.log.unlink()

    def _write_config(self) -> None:
        if (self.folder / "configuration.yaml").exists():
            return
        (self.folder / ".storage").mkdir(parents=True)
        shutil.copytree(COMPONENTS, self.folder / "custom_components")
        (self.folder / "configuration.yaml").write_text(
            "homeassistant:\n  name: buildingd test\n  unit_system: metric\n"
            "  time_zone: UTC\n  latitude: 52.5\n  longitude: 13.4\n  elevation: 0\n"
            "  currency: EUR\n  country: DE\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "logger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: info\n"
            "probe:\n"
        )
        entry = {
            "entry_id": "buildingdtestmqtt", "version": 1, "minor_version": 1,
            "domain": "mqtt", "title": "test broker",
            "data": {"broker": self.mqtt[0], "port": self.mqtt[1], "discovery": True},
            "options": {}, "pref_disable_new_entities": False, "pref_disable_polling": False,
            "source": "user", "unique_id": None, "disabled_by": None,
        }  # fmt: skip
        entries = {"version": 1, "minor_version": 1, "key": "core.config_entries",
                   "data": {"entries": [entry]}}  # fmt: skip
        (self.folder / ".storage" / "core.config_entries").write_text(json.dumps(entries))

    def start(self, timeout_s: float = 120.0) -> None:
        if not HASS.exists():
            raise RuntimeError("no Home Assistant venv: run `make install-ha` (make test does)")
        self._write_config()
        self._keep_log()
        self.proc = subprocess.Popen(
            [str(HASS), "-c", str(self.folder), "--skip-pip"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hass exited: {self.log_text()[-3000:]}")
            try:
                self.states()
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        raise RuntimeError(f"Home Assistant did not answer within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_text(self) -> str:
        """Every run's log, oldest first."""
        runs = [self.folder / "previous-runs.log", self.log]
        return "".join(p.read_text(errors="replace") for p in runs if p.exists())

    def states(self) -> dict[str, dict[str, Any]]:
        """Home Assistant's state machine: entity id -> state dict (state, attributes)."""
        with urllib.request.urlopen(f"{self.url}/probe/states", timeout=10) as r:
            return {s["entity_id"]: s for s in json.loads(r.read())}

    def call(self, domain: str, service: str, data: dict[str, Any]) -> None:
        req = urllib.request.Request(
            f"{self.url}/probe/service/{domain}/{service}",
            data=json.dumps(data).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()

    def wait_for(self, what: str, predicate: Any, timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll the state machine until ``predicate(states)`` holds (Home Assistant has no
        event this side of its API to wait on); the states it held for."""
        deadline = time.monotonic() + timeout_s
        states: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            states = self.states()
            if predicate(states):
                return states
            time.sleep(0.2)
        raise AssertionError(f"Home Assistant: {what} not seen within {timeout_s} s")
