"""sd_notify against a real AF_UNIX datagram socket the test opens (path and abstract names), and
the watchdog guard: pings stop while the event loop is wedged or a component stops beating."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildingd.service.sdnotify import (
    Notifier,
    WatchdogGuard,
    monotonic_usec,
    notify_address,
    watchdog_interval_s,
)

REPO = Path(__file__).resolve().parent.parent


class NotifySocket:
    """The service manager's side: a bound datagram socket, messages parsed into dicts."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def recv(self, timeout_s: float = 5.0) -> dict[str, str]:
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(4096)
        return dict(line.split("=", 1) for line in data.decode().split("\n"))

    def pending(self) -> list[dict[str, str]]:
        """Everything already queued, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(4096)
                out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))
        except BlockingIOError:
            return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short directory: AF_UNIX paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn-") as tmp:
        sock = NotifySocket(str(Path(tmp) / "notify"))
        try:
            yield sock
        finally:
            sock.close()


def test_no_notify_socket_is_a_noop() -> None:
    notifier = Notifier(environ={})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.watchdog_interval_s() is None


def test_ready_status_watchdog_reloading_stopping(notify_socket: NotifySocket) -> None:
    assert isinstance(notify_socket.address, str)
    notifier = Notifier(environ={"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.enabled

    assert notifier.ready("8 zones, 24 devices up")
    assert notify_socket.recv() == {"READY": "1", "STATUS": "8 zones, 24 devices up"}

    # STATUS is one line: newlines and runs of blanks collapse.
    assert notifier.status("8 zones\n 23 up,  1 down")
    assert notify_socket.recv() == {"STATUS": "8 zones 23 up, 1 down"}
    # The same status again is not re-sent.
    assert notifier.status("8 zones 23 up, 1 down") is False
    assert notify_socket.pending() == []

    assert notifier.watchdog()
    assert notify_socket.recv() == {"WATCHDOG": "1"}

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = notify_socket.recv()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after

    assert notifier.ready()
    assert notify_socket.recv() == {"READY": "1"}
    assert notifier.extend_timeout(12.5)
    assert notify_socket.recv() == {"EXTEND_TIMEOUT_USEC": "12500000"}
    assert notifier.stopping()
    assert notify_socket.recv() == {"STOPPING": "1"}
    notifier.close()


def test_notify_socket_read_from_the_environment(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(notify_socket.address, str)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    notifier = Notifier()
    assert notifier.ready()
    assert notify_socket.recv() == {"READY": "1"}


def test_abstract_socket_name() -> None:
    name = f"buildingd-test-{uuid.uuid4().hex}"
    assert notify_address(f"@{name}") == b"\0" + name.encode()
    receiver = NotifySocket(b"\0" + name.encode())
    try:
        notifier = Notifier(f"@{name}")
        assert notifier.ready("abstract")
        assert receiver.recv() == {"READY": "1", "STATUS": "abstract"}
        assert notifier.watchdog()
        assert receiver.recv() == {"WATCHDOG": "1"}
    finally:
        receiver.close()


def test_unsupported_or_dead_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not Notifier("vsock:2:1234").enabled
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="buildingd.service.sdnotify"):
        assert notifier.ready() is False
    assert "sd_notify READY failed" in caplog.text


def test_assignments_must_be_single_lines(notify_socket: NotifySocket) -> None:
    assert isinstance(notify_socket.address, str)
    notifier = Notifier(notify_socket.address)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notifier.notify("READY=1\nSTATUS=x")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notifier.notify("READY")
    assert notify_socket.pending() == []


def test_a_full_manager_queue_never_blocks_and_loses_no_state_change(
    notify_socket: NotifySocket,
) -> None:
    """PID 1 busy: its queue (net.unix.max_dgram_qlen) fills. Pings are dropped, READY and
    STATUS wait and go out first, in order, once there is room."""
    assert isinstance(notify_socket.address, str)
    notifier = Notifier(notify_socket.address)
    for _ in range(10_000):
        if not notifier.watchdog():
            break
    else:
        pytest.fail("the receiving queue never filled")
    queued = len(notify_socket.pending())
    assert queued > 0
    assert notifier.dropped == 1
    # Fill it again, then send what must not be lost.
    for _ in range(queued):
        assert notifier.watchdog()
    assert notifier.ready() is False
    assert notifier.status("3 zones") is False
    assert notifier.status("3 zones") is False  # already waiting: not queued twice
    assert notifier.watchdog() is False
    assert notifier.dropped == 2
    assert notify_socket.pending() == [{"WATCHDOG": "1"}] * queued
    assert notifier.watchdog()
    assert notify_socket.pending() == [{"READY": "1"}, {"STATUS": "3 zones"}, {"WATCHDOG": "1"}]
    # Without a further message, flush() sends what waits.
    for _ in range(queued):
        assert notifier.watchdog()
    assert notifier.stopping() is False
    assert notifier.flush() is False
    notify_socket.pending()
    assert notifier.flush()
    assert notify_socket.pending() == [{"STOPPING": "1"}]
    assert notifier.flush()


@pytest.mark.parametrize(
    ("environ", "expected_s"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    environ: dict[str, str], expected_s: float | None
) -> None:
    assert watchdog_interval_s(environ) == expected_s
    assert Notifier(environ=environ).watchdog_interval_s() == expected_s


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_guard_withholds_pings_while_a_component_is_silent(
    notify_socket: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(notify_socket.address, str)
    clock = FakeClock()
    guard = WatchdogGuard(Notifier(notify_socket.address), 5.0, clock=clock)
    guard.register("control", max_age_s=10.0)
    guard.register("modbus[ahu1].poll", max_age_s=30.0)

    assert guard.tick()
    assert notify_socket.pending() == [{"WATCHDOG": "1"}]

    # The control loop keeps beating, the poller is stuck.
    clock.now_s += 25.0
    guard.heartbeat("control")
    assert guard.tick()
    clock.now_s += 6.0
    guard.heartbeat("control")
    with caplog.at_level(logging.INFO, logger="buildingd.service.sdnotify"):
        assert guard.tick() is False
        assert guard.tick() is False
    stale = guard.stale()
    assert [s.component for s in stale] == ["modbus[ahu1].poll"]
    assert stale[0].age_s == pytest.approx(31.0)
    assert notify_socket.pending() == [{"WATCHDOG": "1"}]  # only the earlier one
    # Logged once per change, not per tick.
    assert caplog.text.count("modbus[ahu1].poll silent") == 1

    guard.heartbeat("modbus[ahu1].poll")
    with caplog.at_level(logging.INFO, logger="buildingd.service.sdnotify"):
        assert guard.tick()
    assert "modbus[ahu1].poll alive again" in caplog.text
    assert notify_socket.pending() == [{"WATCHDOG": "1"}]
    assert (guard.pings_sent, guard.pings_withheld) == (3, 2)

    # A component removed on purpose no longer holds pings back.
    clock.now_s += 100.0
    guard.heartbeat("control")
    assert guard.tick() is False
    guard.unregister("modbus[ahu1].poll")
    assert guard.tick()
    assert guard.components == ("control",)


def test_guard_rejects_unknown_components_and_bad_ages() -> None:
    guard = WatchdogGuard(Notifier(environ={}), 1.0)
    with pytest.raises(KeyError, match="not registered"):
        guard.heartbeat("nobody")
    with pytest.raises(ValueError, match="max_age_s"):
        guard.register("control", 0)
    with pytest.raises(ValueError, match="interval_s"):
        WatchdogGuard(Notifier(environ={}), 0)


def test_pings_stop_while_the_event_loop_is_blocked(notify_socket: NotifySocket) -> None:
    """The runner on its own loop in a thread; a callback wedges that loop until released."""
    assert isinstance(notify_socket.address, str)
    loop = asyncio.new_event_loop()
    guard = WatchdogGuard(Notifier(notify_socket.address), 0.02)
    guard.register("control", max_age_s=60.0)
    runner: list[asyncio.Task[None]] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner.append(loop.create_task(guard.run(), name="watchdog"))
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    blocked = threading.Event()
    release = threading.Event()

    def wedge() -> None:
        blocked.set()
        release.wait(30.0)  # a blocking call on the loop, like a stuck synchronous driver

    try:
        assert notify_socket.recv() == {"WATCHDOG": "1"}
        assert notify_socket.recv() == {"WATCHDOG": "1"}
        loop.call_soon_threadsafe(wedge)
        assert blocked.wait(10.0)
        # Every ping sent before the loop wedged is already queued; drain them.
        notify_socket.pending()
        sent_before = guard.pings_sent
        # 25 intervals pass without a single ping.
        with pytest.raises(TimeoutError):
            notify_socket.recv(timeout_s=0.5)
        assert guard.pings_sent == sent_before
        release.set()
        assert notify_socket.recv() == {"WATCHDOG": "1"}
    finally:
        release.set()

        def stop() -> None:
            for task in runner:
                task.cancel()
            loop.call_soon(loop.stop)

        loop.call_soon_threadsafe(stop)
        thread.join(10.0)
        loop.close()
    assert not thread.is_alive()


async def test_pings_stop_when_a_component_stops_beating(notify_socket: NotifySocket) -> None:
    assert isinstance(notify_socket.address, str)
    guard = WatchdogGuard(Notifier(notify_socket.address), 0.01)
    guard.register("poller", max_age_s=0.1)
    beating = asyncio.Event()
    beating.set()

    async def poller() -> None:
        while True:
            await beating.wait()
            guard.heartbeat("poller")
            await asyncio.sleep(0.01)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(guard.run()), tg.create_task(poller())]
        try:
            await asyncio.sleep(0.2)
            assert notify_socket.pending().count({"WATCHDOG": "1"}) >= 2
            beating.clear()  # the poller hangs
            for _ in range(1000):
                if guard.stale():
                    break
                await asyncio.sleep(0.01)
            assert guard.stale()
            # Pings queued before the poller went stale are drained; none may follow.
            notify_socket.pending()
            await asyncio.sleep(0.3)
            assert notify_socket.pending() == []
            beating.set()
            async with asyncio.timeout(10):
                data = await asyncio.get_running_loop().sock_recv(notify_socket.sock, 4096)
            assert data == b"WATCHDOG=1"
        finally:
            for task in tasks:
                task.cancel()


def test_daemon_process_reads_notify_socket_and_watchdog_usec(notify_socket: NotifySocket) -> None:
    """A separate process started the way systemd starts the daemon (environment only)."""
    assert isinstance(notify_socket.address, str)
    script = textwrap.dedent(
        """
        import asyncio
        from buildingd.service.sdnotify import Notifier, WatchdogGuard

        async def main():
            notifier = Notifier()
            interval_s = notifier.watchdog_interval_s()
            notifier.ready(f"watchdog every {interval_s} s")
            guard = WatchdogGuard(notifier, interval_s)
            guard.register("control", max_age_s=60)
            runner = asyncio.create_task(guard.run())
            while guard.pings_sent < 3:
                await asyncio.sleep(interval_s)
            runner.cancel()
            notifier.stopping()

        asyncio.run(main())
        """
    )
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify_socket.address,
        "WATCHDOG_USEC": "100000",
        "PYTHONPATH": str(REPO),
    }
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, timeout=60, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    messages = notify_socket.pending()
    assert messages[0] == {"READY": "1", "STATUS": "watchdog every 0.05 s"}
    assert messages[-1] == {"STOPPING": "1"}
    assert messages[1:-1].count({"WATCHDOG": "1"}) >= 3


def test_monotonic_usec_is_clock_monotonic() -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    value = monotonic_usec()
    assert before <= value <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
