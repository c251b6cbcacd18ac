"""Real servers the tests start on 127.0.0.1 and a free port: victoria-metrics (the InfluxDB write
API), mosquitto. A server that cannot start fails the test; it never skips."""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
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


# A client in its own process that publishes as fast as paho can (up to 100 QoS 1 messages in
# flight), then waits until every message has left (QoS 0) or was acknowledged (QoS 1).
# ``{i}`` in the payload template is the message's sequence number.
FLOOD_SCRIPT = """
import sys
import paho.mqtt.client as mqtt
host, port, topic, qos, count, template = sys.argv[1:7]
payload = lambda i: template.replace("{i}", str(i))
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood")
client.max_inflight_messages_set(100)
client.max_queued_messages_set(0)
client.connect(host, int(port))
client.loop_start()
sent = [client.publish(topic, payload(i), qos=int(qos)) for i in range(int(count))]
for info in sent:
    info.wait_for_publish(60)
    assert info.is_published(), "not published"
client.disconnect()
client.loop_stop()
"""


def flood_command(
    host: str, port: int, topic: str, count: int, template: str, qos: int = 1
) -> list[str]:
    """argv of a process that publishes ``count`` messages on ``topic`` and exits 0 when all
    were sent (QoS 0) or acknowledged by the broker (QoS 1)."""
    return [sys.executable, "-c", FLOOD_SCRIPT, host, str(port), topic, str(qos), str(count),
            template]  # fmt: skip


class WriteRecorder:
    """An HTTP proxy in front of a write API (victoria-metrics) that records, in arrival order,
    every line of line protocol the server accepted, so a test can tell exactly-once and order
    apart from "arrived at some point". ``stop()`` closes the port (writers see connection
    refused, as when the server is down) and ``start()`` opens the same port again. A request
    the server does not answer gets 503."""

    def __init__(self, target_url: str) -> None:
        self.target_url = target_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: list[str] = []  # lines, in the order the server accepted them
        self.requests = 0
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def lines(self) -> list[str]:
        with self._lock:
            return list(self.accepted)

    def start(self) -> None:
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED}
                request = urllib.request.Request(
                    recorder.target_url + self.path, data=body, headers=headers, method="POST"
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, answer = response.status, response.read()
                except urllib.error.HTTPError as err:
                    status, answer = err.code, err.read()
                except OSError as err:  # the server is down
                    status, answer = 503, str(err).encode()
                if 200 <= status < 300:
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    with recorder._lock:
                        recorder.requests += 1
                        recorder.accepted.extend(body.decode().splitlines())
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None


FORWARDED = {"content-type", "content-encoding", "authorization", "accept", "user-agent"}


# A room thermostat (buildingd's ``room-thermostat`` profile) at unit 1 of a Modbus TCP server in
# its own process, so a test can SIGKILL it like a device losing power: 21.5 degC, 45.0 %RH,
# setpoints 20.0/24.0 degC, nobody present.
THERMOSTAT_SCRIPT = """
import asyncio, sys
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
def regs(values):
    return [SimData(0, values=values + [0] * (16 - len(values)), datatype=DataType.REGISTERS)]
device = SimDevice(id=1, simdata=(bits, bits, regs([200, 240]), regs([215, 450])))
async def main():
    server = ModbusTcpServer([device], address=("127.0.0.1", int(sys.argv[1])))
    await server.serve_forever()
asyncio.run(main())
"""


class ModbusThermostat:
    """``THERMOSTAT_SCRIPT`` on 127.0.0.1 and a free port; ``kill()`` and ``start()`` again keep
    the port (registers start over)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", THERMOSTAT_SCRIPT, str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"modbus server exited: {err[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("modbus server did not listen within 30 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
