"""Real servers the tests start on 127.0.0.1 and a free port: victoria-metrics (the InfluxDB write
API), mosquitto. A server that cannot start fails the test; it never skips."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port


def need(binary: str) -> str:
    path = shutil.which(binary) or (
        f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None
    )
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
