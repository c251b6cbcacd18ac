"""A real 3-node ``nats-server`` cluster on 127.0.0.1 for the tests: JetStream on, storage in a
temporary folder, free ports (clients, routes, monitoring), one account with a user per gateway
(or anonymous). Nodes can be SIGKILLed, SIGSTOPped and restarted on their own ports and storage."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import nats.js

from buildingd.nats.server_bin import server_binary
from tests.conftest import free_port

START_TIMEOUT_S = 60.0  # a generous bound for a loaded 2-core machine
STORE_TIMEOUT_S = 60.0


@dataclass
class NatsUser:
    name: str
    password: str
    permissions: dict[str, Any] | None = None  # None: everything in the account


@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    http_port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def jsz(self, query: str = "") -> dict[str, Any]:
        """The node's JetStream monitoring page (``/jsz``), raising OSError when it is down."""
        url = f"http://127.0.0.1:{self.http_port}/jsz{query}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return dict(json.loads(response.read()))

    def stored(self, stream: str) -> int | None:
        """Messages in this node's own replica of ``stream`` (None: it holds none)."""
        for account in self.jsz("?streams=true").get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    return int(detail["state"]["messages"])
        return None


@dataclass
class NatsCluster:
    root: Path
    users: list[NatsUser] = field(default_factory=list)
    size: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(self.size):
            name = f"n{i + 1}"
            ports = free_port(), free_port(), free_port()
            files = self.root / f"{name}.conf", self.root / f"{name}.log"
            self.nodes.append(NatsNode(name, *ports, *files))
        for node in self.nodes:
            node.config.write_text(self._config(node))

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def _config(self, node: NatsNode) -> str:
        routes = [f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes]
        conf: dict[str, Any] = {
            "server_name": node.name,
            "listen": f"127.0.0.1:{node.port}",
            "http": f"127.0.0.1:{node.http_port}",
            "jetstream": {
                "store_dir": str(self.root / node.name),
                "max_memory_store": 64 * 1024 * 1024,
                "max_file_store": 256 * 1024 * 1024,
            },
            "cluster": {
                "name": "buildingd-test",
                "listen": f"127.0.0.1:{node.cluster_port}",
                "routes": routes,
                # Clients use exactly the servers they are given (no discovery of the others):
                # a gateway given one node is cut off when it dies, as behind a broken link.
                "no_advertise": True,
            },
        }
        if self.users:
            users = []
            for u in self.users:
                entry: dict[str, Any] = {"user": u.name, "password": u.password}
                if u.permissions is not None:
                    entry["permissions"] = u.permissions
                users.append(entry)
            conf["accounts"] = {"BUILDINGD": {"jetstream": "enabled", "users": users}}
        # nats-server reads JSON as its configuration format (a superset of it).
        return json.dumps(conf, indent=2)

    def start(self) -> None:
        for i in range(self.size):
            self.start_node(i)
        self.wait_meta_leader()
        if self.users:  # in a thread of its own: the caller may be running an event loop
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, self.wait_jetstream_api(self.users[0])).result()

    async def wait_jetstream_api(self, user: NatsUser, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the account's JetStream API answers (right after the meta leader is elected,
        the first requests can go unanswered)."""
        import nats
        import nats.errors

        nc = await nats.connect(servers=self.urls, user=user.name, password=user.password)
        try:
            js = nc.jetstream(timeout=2)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    await js.account_info()
                    return
                except nats.errors.Error:
                    if time.monotonic() > deadline:
                        raise
        finally:
            await nc.close()

    def start_node(self, i: int) -> None:
        node = self.nodes[i]
        assert node.proc is None or node.proc.poll() is not None, f"{node.name} is running"
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen([str(server_binary()), "-c", str(node.config)],
                                         stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        node.paused = False

    def kill(self, i: int) -> None:
        """SIGKILL: no goodbye to the cluster, as a power cut."""
        node = self.nodes[i]
        assert node.proc is not None
        if node.paused:
            node.proc.send_signal(signal.SIGCONT)
        node.proc.kill()
        node.proc.wait(timeout=30)
        node.paused = False

    def restart(self, i: int) -> None:
        """Start a killed node again on its ports and storage; returns once it takes clients."""
        self.start_node(i)
        node = self.nodes[i]
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited at restart\n{self.tail(node)}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", node.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} takes no clients after restart\n{self.tail(node)}")
            time.sleep(0.1)

    def pause(self, i: int) -> None:
        """SIGSTOP: the node holds its sockets but answers nothing (a hung machine)."""
        proc = self.nodes[i].proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        self.nodes[i].paused = True

    def resume(self, i: int) -> None:
        proc = self.nodes[i].proc
        assert proc is not None
        proc.send_signal(signal.SIGCONT)
        self.nodes[i].paused = False

    def running(self) -> list[NatsNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None
                and not n.paused]  # fmt: skip

    def meta_leader(self) -> str | None:
        """The JetStream meta leader as a running node sees it (with the whole cluster known),
        else None."""
        for node in self.running():
            try:
                meta = node.jsz().get("meta_cluster") or {}
            except (OSError, ValueError):
                continue
            if meta.get("leader") and meta.get("cluster_size") == self.size:
                return str(meta["leader"])
        return None

    def wait_meta_leader(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Block until the cluster has a JetStream meta leader (polling ``/jsz``: the server
        announces it nowhere else); a node that exits on the way fails with its log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                code = node.proc.poll() if node.proc is not None else None
                if code is not None and code != -signal.SIGKILL:
                    raise RuntimeError(f"nats-server {node.name} exited:\n{self.tail(node)}")
            leader = self.meta_leader()
            if leader is not None:
                return leader
            time.sleep(0.1)
        logs = "\n".join(self.tail(n) for n in self.nodes)
        raise RuntimeError(f"no JetStream meta leader within {timeout_s:g} s\n{logs}")

    def tail(self, node: NatsNode, lines: int = 20) -> str:
        try:
            text = node.log.read_text(errors="replace").splitlines()
        except OSError:
            return f"[{node.name}: no log]"
        return "\n".join(f"[{node.name}] {line}" for line in text[-lines:])

    def stop(self) -> None:
        for node in self.nodes:
            proc = node.proc
            if proc is None or proc.poll() is not None:
                continue
            if node.paused:
                proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


def gateway_user(site_id: str, gateway_id: str) -> NatsUser:
    """The NATS user of gateway ``gateway_id`` of site ``site_id`` (password: ``pw-<name>``),
    limited to its site by ``buildingd.nats.subjects.gateway_permissions``."""
    from buildingd.nats.subjects import gateway_permissions

    name = f"{site_id}-{gateway_id}"
    return NatsUser(name, f"pw-{name}", gateway_permissions(site_id, gateway_id))


def gateway_env(
    cluster: NatsCluster, site_id: str, gateway_id: str, bus_key: Path
) -> dict[str, str]:
    """The environment of a ``buildingd run`` process acting as gateway ``gateway_id`` of the
    site on ``cluster``, sealing with the site's ``bus_key`` file."""
    user = gateway_user(site_id, gateway_id)
    return {
        "BUILDINGD_GATEWAY__ID": gateway_id,
        "BUILDINGD_NATS__ENABLED": "true",
        "BUILDINGD_NATS__SERVERS": json.dumps(cluster.urls),
        "BUILDINGD_NATS__USER": user.name,
        "BUILDINGD_NATS__PASSWORD": user.password,
        "BUILDINGD_NATS__BUS_KEY_FILE": str(bus_key),
    }


ADMIN = NatsUser("admin", "pw-admin")  # the whole account: the tests' own checks
TEST_USERS = [
    ADMIN,
    gateway_user("hq", "a"),
    gateway_user("hq", "b"),
    gateway_user("other", "x"),
    gateway_user("demo-office", "devices"),
    gateway_user("demo-office", "zones"),
]


async def publish_stored(
    js: nats.js.JetStreamContext, subject: str, body: bytes, msg_id: str
) -> None:
    """Publish into a stream until it acknowledges. A stream's subjects reach the other nodes
    a moment after it is created (and while it elects a leader), and a publish through one of
    them meanwhile has no responders; the same ``Nats-Msg-Id`` makes a retry after a lost
    acknowledgement a duplicate, not a second copy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STORE_TIMEOUT_S
    while True:
        try:
            await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id}, timeout=2)
            return
        except nats.errors.Error:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)
