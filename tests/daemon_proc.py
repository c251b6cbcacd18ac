"""The daemon as systemd runs it, in a subprocess: its notify socket, its journal (stdout), its
HTTP API. ``start_daemon`` starts one on a site directory; ``Running.close`` kills it."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import free_port

TOKEN = "s3cret-token"
_sockets = itertools.count()


@dataclass
class Running:
    proc: subprocess.Popen[str]
    notify: socket.socket
    port: int
    site: Path
    state: Path
    token: str
    config: Path
    messages: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)  # the daemon's log lines (its journal)
    reader: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def read_output(self) -> None:
        """Drain the daemon's stdout and stderr (run in a thread): a full pipe would block it."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))

    def wait_for_output(self, pattern: str, start: int = 0, timeout_s: float = 30.0) -> int:
        """Index of the first log line from ``start`` on that matches ``pattern``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i in range(start, len(self.output)):
                if re.search(pattern, self.output[i]):
                    return i
            time.sleep(0.1)
        raise AssertionError(f"no log line matching {pattern!r}; last: {self.output[-5:]}")

    def wait_for(self, predicate: Any, timeout_s: float = 30.0) -> str:
        """Read notifications until one satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(data)
            if predicate(data):
                return data
        raise AssertionError(f"no matching notification; got {self.messages[-10:]}")

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                body = r.read()
                return r.status, json.loads(body) if path != "/metrics" else body.decode()
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def post(self, path: str, token: str | None, body: bytes = b"{}") -> tuple[int, Any]:
        req = urllib.request.Request(self.base + path, method="POST", data=body)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def close(self) -> None:
        """Kill the daemon if it still runs (like a crash) and release its socket."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.reader is not None:
            self.reader.join(10)
        self.notify.close()


def start_daemon(
    site: Path,
    tmp_path: Path,
    *,
    state: Path | None = None,
    env: dict[str, str] | None = None,
    speed: float = 30.0,
    config_text: str = 'log_level = "info"\n\n[mqtt]\nkeepalive_s = 30\n',
) -> Running:
    """``buildingd run`` on ``site`` (simulated building at ``speed``, embedded broker and
    simulated Modbus gateway on free ports, HTTP on a free port with ``TOKEN``), as systemd
    starts it (NOTIFY_SOCKET, WATCHDOG_USEC). ``env`` adds or overrides variables; a second
    daemon on the same ``state`` directory is a restart."""
    sock_path = tmp_path / f"notify-{next(_sockets)}.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    state = state if state is not None else tmp_path / "state"
    config = tmp_path / "buildingd.toml"
    config.write_text(config_text)
    full_env = dict(
        os.environ,
        NOTIFY_SOCKET=str(sock_path),
        WATCHDOG_USEC="2000000",
        BUILDINGD_HTTP__PORT=str(port),
        BUILDINGD_MQTT__PORT="0",  # the embedded broker on a free port
        BUILDINGD_SIM__MODBUS_PORT="0",  # the simulated Modbus gateway too
        BUILDINGD_HTTP__TOKEN_FILE=str(token_file),
        BUILDINGD_STATE_DIR=str(state),
        BUILDINGD_SITE_DIR=str(site),
        BUILDINGD_SIM__START="2027-01-11T09:00:00",
    )
    full_env.pop("WATCHDOG_PID", None)
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildingd", "run", "--config", str(config)]
        + ["--speed", str(speed), "--no-console"],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = Running(proc, notify, port, site, state, TOKEN, config)
    running.reader = threading.Thread(target=running.read_output, daemon=True)
    running.reader.start()
    return running
