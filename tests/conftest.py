"""Shared test fixtures: the demo site, editable site copies, free ports, virtual-time loops."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


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


def free_port() -> int:
    with socket.socket() as s:
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
