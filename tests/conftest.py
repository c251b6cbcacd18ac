"""Shared test fixtures: the demo site, editable site copies, one-room sites, free ports, a
mosquitto broker, a 3-node NATS cluster, virtual-time loops, and ``until`` / ``until_sync`` for
conditions no event announces."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from tests.nats_cluster import NatsCluster
    from tests.servers import Mosquitto

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


async def until(predicate: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """Wait until ``predicate()`` is true, polling; fail naming ``what`` after ``timeout_s`` (a
    bound so a broken test ends with a message, not a speed requirement). Use an event instead
    where the code under test offers one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() >= deadline:
            pytest.fail(f"not in time ({timeout_s:g} s): {what}")
        await asyncio.sleep(0.02)


def until_sync(predicate: Callable[[], T], what: str, timeout_s: float = 60.0) -> T:
    """``until`` where there is no event loop to wait on (a daemon in another process, a server
    in a thread): poll ``predicate()`` until it returns something true and return that; fail
    naming ``what`` after ``timeout_s`` (a bound for a broken test, not a speed requirement)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"not in time ({timeout_s:g} s): {what}")
        time.sleep(0.1)


@pytest.fixture
def demo_site() -> Path:
    return REPO


@pytest.fixture
def site_copy(tmp_path: Path) -> Path:
    """A writable copy of the demo site (site.yaml, devices/, policies/)."""
    dest = tmp_path / "site"
    dest.mkdir()
    shutil.copy(REPO / "site.yaml", dest / "site.yaml")
    shutil.copytree(REPO / "devices", dest / "devices", ignore=shutil.ignore_patterns("*.example"))
    shutil.copytree(REPO / "policies", dest / "policies")
    return dest


class ManualClock:
    """A clock the test moves by hand (``clock.t += 60``) or by ``sleep``: for parts driven
    without an event loop's time (the coordinator's desks and logic)."""

    def __init__(self, start: datetime) -> None:
        self.start, self.t = start, 0.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.t)

    async def sleep(self, seconds: float) -> None:
        self.t += seconds

    def to_loop_seconds(self, seconds: float) -> float:
        return seconds


# Test TCP ports come from below Linux's ephemeral range (32768-60999), each xdist worker from its
# own slice, never handed out twice in a process. So the kernel's bind(0) (a daemon's embedded
# broker, a simulated device) never takes a port a test picked but has not bound yet (a daemon's
# HTTP port once went to its own broker), and a server killed and restarted finds its port free.
TEST_PORTS = range(20000, 32000)
_handed_out: set[int] = set()


def _worker_ports() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    width = len(TEST_PORTS) // max(count, 1)
    first = TEST_PORTS.start + index * width
    return range(first, first + width)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, outside the ephemeral range, not given out before."""
    ports = _worker_ports()
    for _ in range(1000):
        port = random.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free test port in {ports.start}-{ports.stop - 1}")


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1 now (BACnet/IP); the caller binds it right away."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on an event loop whose clock jumps ahead whenever every task is idle, so a
    simulated day of sleeps passes in milliseconds, deterministically (looptime)."""
    import looptime

    loop = looptime.new_event_loop(start=0.0)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.fixture
def virtual() -> Callable[[Coroutine[Any, Any, T]], T]:
    return run_virtual


Factory = Callable[..., Awaitable[Any]]


# A policy under which the room is always in occupied hours, for daemon tests on real time.
ALWAYS_OCCUPIED = """\
policies:
  - id: always
    zones: ["*"]
    schedule:
      occupied_hours:
        - {days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59"}
    lighting: {vacancy_timeout_s: 600, daylight_target_lux: 500, full_output_lux: 500}
"""


def one_room_site(root: Path, site_id: str, devices: str, policy: str = ALWAYS_OCCUPIED) -> Path:
    """A site ``site_id`` of one 20 m² zone ``room`` under ``root``, with ``devices`` (a device
    file) and ``policy`` (a policy file)."""
    (root / "devices").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "site.yaml").write_text(
        f"site: {site_id}\ntimezone: UTC\nzones:\n  - {{id: room, area_m2: 20}}\n"
    )
    (root / "devices" / "devices.yaml").write_text(devices)
    (root / "policies" / "p.yaml").write_text(policy)
    return root


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto broker on 127.0.0.1 and a free port (fails, never skips, if it cannot run)."""
    from tests.servers import Mosquitto  # tests.servers imports this module

    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A 3-node NATS JetStream cluster on 127.0.0.1 with a meta leader elected, users for the
    test sites' gateways (``tests.nats_cluster.TEST_USERS``); stopped and removed afterwards."""
    from tests.nats_cluster import TEST_USERS, NatsCluster

    cluster = NatsCluster(tmp_path / "nats", users=TEST_USERS)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The NATS cluster tests first, then the other slow ones: xdist hands tests out in this
    order, so the long ones run beside the many short ones instead of forming a serial tail."""

    def weight(item: pytest.Item) -> int:
        if item.get_closest_marker("nats"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=weight)
