"""Real servers the tests start on 127.0.0.1 and a free port: victoria-metrics (the InfluxDB write
API), mosquitto. A server that cannot start fails the test; it never skips."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port


def need(binary: str) -> str:
    path = shutil.which(binary, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(f"{binary} is not installed: run `make test` (it installs it)")
    return path


class VictoriaMetrics:
    """A victoria-metrics process; ``stop()`` and ``start()`` again keep its data and port."""

    def __init__(self, data_dir: Path, auth: tuple[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.auth = auth
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            need("victoria-metrics"),
            f"-storageDataPath={self.data_dir}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=ERROR",
        ]
        if self.auth is not None:
            args += [f"-httpAuth.username={self.auth[0]}", f"-httpAuth.password={self.auth[1]}"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"victoria-metrics exited: {err[-2000:]}")
            try:
                self._get("/health")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise RuntimeError("victoria-metrics did not answer /health within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def _get(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path)
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())

    def export(self, match: str) -> list[dict[str, Any]]:
        """Raw samples of every series matching ``match`` (a series selector)."""
        self._get("/internal/force_flush")
        query = urllib.parse.urlencode({"match[]": match})
        text = self._get(f"/api/v1/export?{query}").decode()
        return [json.loads(row) for row in text.splitlines() if row.strip()]


class Mosquitto:
    """A mosquitto broker on 127.0.0.1 and a free port; ``stop()``/``start()`` keep the port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "mosquitto.conf"
        # set_tcp_nodelay: first delivery after a subscribe otherwise waits ~40 ms;
        # max_inflight_messages 0: 2.0.11 lost QoS 2 messages past 20 in flight (DESIGN.md).
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            "max_inflight_messages 0\nmax_queued_messages 100000\npersistence false\n"
        )
        self.proc = subprocess.Popen(
            [need("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen within 15 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # like a crash: clients see the connection drop
            self.proc.wait(timeout=10)
        self.proc = None
