"""A real ``buildingd run`` process for the fault tests of requests and the bus: started with
environment overrides, its output collected on a thread, its HTTP API called with a token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port

TOKEN = "fault-suite-token"


class LiveDaemon:
    """``buildingd run`` on the site in ``site`` with its state in ``state``."""

    def __init__(self, site: Path, state: Path, **env: str) -> None:
        self.site = site
        self.state = state
        self.port = free_port()
        self.extra = env
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        token = self.state.parent / f"{self.state.name}-token"
        token.write_text(TOKEN)
        env = {
            **os.environ,
            "BUILDINGD_HTTP__PORT": str(self.port),
            "BUILDINGD_HTTP__TOKEN_FILE": str(token),
            "BUILDINGD_STATE_DIR": str(self.state),
            "BUILDINGD_SITE_DIR": str(self.site),
            "BUILDINGD_SIM__MODBUS_PORT": "0",
            **self.extra,
        }
        env.pop("NOTIFY_SOCKET", None)
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "buildingd", "run", "--no-console"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        self.wait_for(self._ready, "the daemon to be ready")

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _ready(self) -> bool:
        try:
            return bool(self.get("/healthz")["ready"])
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            return False

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, predicate: Any, what: str, timeout_s: float = 60.0) -> None:
        """Poll ``predicate`` until true (the daemon is another process: nothing to await)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.output()[-5000:]
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-5000:]}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            body = r.read()
        return body.decode() if path == "/metrics" else json.loads(body)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for line in self.get("/metrics").splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key.split("{", 1)[0] != name:
                continue
            if all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += float(value)
        return total

    def agent(self, name: str) -> dict[str, Any]:
        return next(a for a in self.get("/api/agents") if a["name"] == name)

    def stop(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return self.output()
