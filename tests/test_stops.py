"""Stops always finish: the real daemon (the demo building, its Modbus devices polled every
0.05 s over real Modbus TCP) gets SIGTERM at a random moment of its polling, again and again;
every time it must exit, with status 0, having said it stopped."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.modbus, pytest.mark.timeout(900)]

STOPS = 20
# Generous: correctness (it exits at all), not speed; the benchmark measures the distribution.
EXIT_BOUND_S = 15.0


def fast_polling(site: Path, poll_interval_s: float) -> None:
    devices = site / "devices" / "demo-modbus.yaml"
    text = re.sub(
        r"poll_interval_s: \d+", f"poll_interval_s: {poll_interval_s}", devices.read_text()
    )
    devices.write_text(text)


def run_and_stop(
    site: Path, state: Path, rng: random.Random, marks: dict[str, float] | None = None
) -> tuple[int | None, list[str]]:
    """Start the daemon, SIGTERM it once it runs (after a random part of a second of polling),
    return its exit status (None: still running past the bound, then killed) and its log;
    ``marks`` gets the monotonic times it was ``signalled`` and ``exited`` (for the bench)."""
    marks = {} if marks is None else marks
    env = dict(
        os.environ, BUILDINGD_SITE_DIR=str(site), BUILDINGD_STATE_DIR=str(state),
        BUILDINGD_HTTP__PORT=str(free_port()), BUILDINGD_MQTT__PORT="0",
        BUILDINGD_SIM__MODBUS_PORT="0", BUILDINGD_SIM__BACNET_PORT="0",
        BUILDINGD_SIM__START="2027-01-11T09:00:00",
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildingd", "run", "--no-console"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    running = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.rstrip().endswith("; running"):
                running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert running.wait(120), lines[-20:]
        # Polls in flight by now (every 0.05 s); SIGTERM lands anywhere in a poll.
        threading.Event().wait(rng.uniform(0.1, 1.0))
        marks["signalled"] = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = proc.wait(timeout=EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            rc = None
        marks["exited"] = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        reader.join(10)
    return rc, lines


def test_twenty_stops_in_a_row_while_polling_every_50_ms(site_copy: Path, tmp_path: Path) -> None:
    fast_polling(site_copy, 0.05)
    rng = random.Random(15)
    for i in range(STOPS):
        rc, lines = run_and_stop(site_copy, tmp_path / f"state{i}", rng)
        assert rc == 0, f"stop {i}: exit {rc}; log:\n" + "\n".join(lines[-30:])
        assert any("stopping" in line for line in lines)
        assert any("messages on the bus" in line for line in lines)  # the exit summary
        assert not [line for line in lines if "did not stop within" in line], lines[-30:]


def test_a_service_stop_that_never_ends_is_bounded_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    from buildingd.service.stopping import BoundedExitStack
    from tests.conftest import run_virtual

    stopped: list[str] = []

    async def deaf_stop() -> None:  # ignores every cancellation, like a library that drops them
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                assert current is not None
                current.uncancel()
                if stopped:  # released once the test has seen the rest stop
                    return

    async def quick_stop() -> None:
        stopped.append("quick")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with BoundedExitStack() as services:
            services.push_async_callback(quick_stop)  # pushed first: stopped last
            services.push_async_callback(deaf_stop)
        return loop.time() - started

    took_s = run_virtual(main())
    assert stopped == ["quick"]  # the stack went on past the stuck one
    assert 5.0 <= took_s < 10.0
    assert "did not finish within 5.0 s" in caplog.text and "in deaf_stop" in caplog.text
