"""Bounded stops: service shutdowns each within a deadline (logged with the stack when one will
not end), and a last-resort exit for the process once a stop has run too long."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from buildingd.agents.runtime import task_stack

log = logging.getLogger(__name__)

SERVICE_STOP_DEADLINE_S = 5.0
# systemd's unit has TimeoutStopSec=45s: past this the process exits on its own (code 1, every
# thread's stack in the journal) rather than being killed without a word.
PROCESS_STOP_DEADLINE_S = 30.0


async def bounded(name: str, stop: Callable[[], Awaitable[Any]], deadline_s: float) -> None:
    """Run ``stop()`` for at most ``deadline_s``; past it log where it is stuck and move on."""
    task = asyncio.ensure_future(stop())
    done, _ = await asyncio.wait({task}, timeout=deadline_s)
    if not done:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:
        log.error("stopping %s did not finish within %.1f s; left behind. Its stack:\n%s",
                  name, deadline_s, task_stack(task))  # fmt: skip
        return
    if not task.cancelled() and task.exception() is not None:
        log.error("stopping %s failed: %r", name, task.exception())


class BoundedExitStack(contextlib.AsyncExitStack):
    """An exit stack whose async callbacks each get ``SERVICE_STOP_DEADLINE_S`` to finish."""

    def push_async_callback(self, callback: Any, /, *args: Any, **kwds: Any) -> Any:
        name = getattr(callback, "__qualname__", repr(callback))

        async def stop() -> None:
            await bounded(name, lambda: callback(*args, **kwds), SERVICE_STOP_DEADLINE_S)

        super().push_async_callback(stop)
        return callback


class ExitWatchdog:
    """Armed when the process starts stopping; if it is still alive ``deadline_s`` later (an
    event loop blocked in a call, a thread that will not end), dump every thread's stack to
    stderr and exit with status 1. For the process only (``buildingd run``), never in-process."""

    def __init__(self, deadline_s: float = PROCESS_STOP_DEADLINE_S) -> None:
        self.deadline_s = deadline_s
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.deadline_s, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        log.critical("stop did not finish within %.0f s; exiting. Threads:", self.deadline_s)
        for handler in logging.getLogger().handlers:
            handler.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(1)


def run_bounded(main: Awaitable[None], teardown_s: float = 2.0) -> None:
    """``asyncio.run`` whose teardown is bounded: tasks still alive after ``main`` (an agent left
    behind past its stop deadline) get ``teardown_s`` to end after being cancelled, instead of
    being waited for without end."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main)
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=teardown_s))
            left = [task.get_name() for task in pending if not task.done()]
            if left:
                log.error("exiting with %d task(s) that would not end: %s", len(left), left)
            loop.run_until_complete(
                asyncio.wait({loop.create_task(loop.shutdown_asyncgens())}, timeout=teardown_s)
            )
            loop.run_until_complete(
                asyncio.wait(
                    {loop.create_task(loop.shutdown_default_executor())}, timeout=teardown_s
                )
            )
        finally:
            loop.close()
