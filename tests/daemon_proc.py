"""The one helper for a real ``buildingd run`` in a subprocess, as systemd runs it: its notify
socket, its journal (stdout), its HTTP API with the write token, its metrics. ``start_daemon``
starts one on a site directory; ``Running.stop`` stops it with SIGTERM, ``Running.close`` kills
it (a crash)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
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

from tests.conftest import free_port, until_sync

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
    env: dict[str, str] = field(default_factory=dict)  # the overrides it was started with
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

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the daemon has told systemd READY=1."""
        if not any("READY=1" in m for m in self.messages):
            self.wait_for(lambda m: "READY=1" in m, timeout_s)

    def until(self, predicate: Any, what: str, timeout_s: float = 60.0) -> Any:
        """``until_sync`` on the daemon, failing at once with its log if it has exited."""

        def alive_and() -> Any:
            assert self.proc.poll() is None, "\n".join(self.output[-50:])
            return predicate()

        return until_sync(alive_and, f"{what}; last log lines: {self.output[-5:]}", timeout_s)

    def json(self, path: str) -> Any:
        """The body of a GET that must succeed."""
        status, body = self.get(path)
        assert status == 200, (path, status, body)
        return body

    def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """A write with the token."""
        return self.post(path, self.token, json.dumps(body).encode())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for line in self.json("/metrics").splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key.split("{", 1)[0] != name:
                continue
            if all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += float(value)
        return total

    def agent(self, name: str) -> dict[str, Any]:
        return next(a for a in self.json("/api/agents") if a["name"] == name)

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                body = r.read()
                return r.status, json.loads(body) if path != "/metrics" else body.decode()
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def post(
        self,
        path: str,
        token: str | None,
        body: bytes = b"{}",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        req = urllib.request.Request(self.base + path, method="POST", data=body,
                                     headers=headers or {})  # fmt: skip
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def stop(self) -> str:
        """SIGTERM, as systemd stops it; the whole log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.close()
        return "\n".join(self.output)

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
    """``buildingd run`` on ``site`` (simulated building at ``speed``, embedded broker, simulated
    Modbus gateway and BACnet devices on free ports, HTTP on a free port with ``TOKEN``), as
    systemd starts it (NOTIFY_SOCKET, WATCHDOG_USEC). ``env`` adds or overrides variables; a second
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
        BUILDINGD_SIM__BACNET_PORT="0",  # and the simulated BACnet devices
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
    running = Running(proc, notify, port, site, state, TOKEN, config, dict(env or {}))
    running.reader = threading.Thread(target=running.read_output, daemon=True)
    running.reader.start()
    return running
