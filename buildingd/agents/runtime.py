"""Agent base class and the supervisor that runs agents, restarts crashed ones with backoff and
gives up (escalating) past a restart-intensity limit, OTP style, and stops each one within a
deadline (a task that will not end is logged with its stack and left behind)."""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import FrameType
from typing import Any

from buildingd.agents.bus import Mailbox, Overflow
from buildingd.clock import Clock

log = logging.getLogger(__name__)


# A stop first asks the agent (``on_stop``: a write in flight finishes), then cancels its task.
# Past the deadline the supervisor moves on, so a daemon stop stays well inside systemd's
# TimeoutStopSec (45 s in systemd/buildingd.service) however an agent misbehaves.
STOP_DEADLINE_S = 5.0
# A cancellation can be lost inside a library: on Python 3.11 ``asyncio.wait_for`` drops one that
# arrives as the awaited future completes (CPython gh-86296, fixed in 3.12), and pymodbus awaits
# every answer that way. So the stop cancels again at this interval until the task ends.
RECANCEL_S = 0.2


class Agent(ABC):
    """An asyncio task with a name and a bounded mailbox. ``run`` calls ``started()`` once it is
    ready to work; returning ends the agent normally, raising crashes it."""

    mailbox_size: int = 1000
    overflow: Overflow = "drop_oldest"
    stop_deadline_s: float = STOP_DEADLINE_S

    def __init__(self, name: str) -> None:
        self.name = name
        self.inbox = Mailbox(name, self.mailbox_size, self.overflow)

    @abstractmethod
    async def run(self, started: Callable[[], None]) -> None: ...

    async def on_stop(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Called once when the supervisor stops the agent on purpose (not after a crash)."""


class ChildState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"  # gave up after the restart-intensity limit
    STOPPED = "stopped"
    ABANDONED = "abandoned"  # did not end within its stop deadline; left behind, logged


@dataclass
class RestartPolicy:
    max_restarts: int = 5  # more than this many crashes ...
    window_s: float = 300.0  # ... within this window, and the supervisor gives up
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0


@dataclass
class Child:
    name: str
    factory: Callable[[], Agent]
    state: ChildState = ChildState.STARTING
    restarts: int = 0
    last_error: str | None = None
    agent: Agent | None = None
    task: asyncio.Task[None] | None = None
    crashes: list[float] = field(default_factory=list)  # times, within the restart window
    started_s: float = 0.0  # monotonic time the child was started (not restarted)
    # While ``start`` waits for the agent to say it is ready; a future, not an Event, and
    # dropped after: a 1,000-zone site has some 4,000 children.
    ready: asyncio.Future[None] | None = None


GiveUpHandler = Callable[[str, BaseException], Awaitable[None] | None]


class Supervisor:
    """Owns every agent task. Use as ``async with Supervisor(...) as sup: await sup.start(...)``."""

    def __init__(
        self,
        clock: Clock,
        policy: RestartPolicy | None = None,
        on_give_up: GiveUpHandler | None = None,
        on_restart: Callable[[str, BaseException], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.clock = clock
        self.policy = policy or RestartPolicy()
        self.on_give_up = on_give_up
        self.on_restart = on_restart
        self.children: dict[str, Child] = {}
        self.abandoned: list[str] = []  # agents whose task outlived its stop deadline
        self._running = False
        self._random = random.Random(seed)

    async def __aenter__(self) -> Supervisor:
        self._running = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Every task is the supervisor's own (not a TaskGroup's): a group would wait forever for
        # a task that will not end, which is exactly what the stop deadline is there to bound.
        await self.stop_all()
        self._running = False

    async def start(
        self, name: str, factory: Callable[[], Agent], ready_timeout_s: float | None = 30.0
    ) -> Agent:
        """Start an agent and wait until it says it is ready (or fails before that)."""
        if not self._running:
            raise RuntimeError("supervisor is not running")
        if name in self.children and self.children[name].state not in (
            ChildState.STOPPED,
            ChildState.FAILED,
        ):
            raise ValueError(f"agent {name} is already running")
        child = Child(name, factory, started_s=self.clock.monotonic())
        child.ready = ready = asyncio.get_running_loop().create_future()
        self.children[name] = child
        child.task = asyncio.create_task(self._keep(child), name=name)
        try:
            async with asyncio.timeout(ready_timeout_s):
                await asyncio.wait({ready, child.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            child.ready = None
        if not ready.done():
            raise RuntimeError(f"agent {name} ended before it was ready: {child.last_error}")
        assert child.agent is not None
        return child.agent

    async def stop(self, name: str) -> None:
        """Stop one agent: ``on_stop``, then cancel its task; both within its stop deadline."""
        child = self.children.get(name)
        if child is None or child.task is None or child.state is ChildState.ABANDONED:
            return
        loop = asyncio.get_running_loop()
        deadline_s = child.agent.stop_deadline_s if child.agent is not None else STOP_DEADLINE_S
        deadline = loop.time() + deadline_s
        task = child.task
        if child.agent is not None and child.state is ChildState.RUNNING:
            try:
                async with asyncio.timeout_at(deadline):
                    await child.agent.on_stop()
            except TimeoutError:
                log.error(  # noqa: TRY400 - a deadline, not a failure with a traceback
                    "agent %s: on_stop did not finish within %.1f s; cancelling",
                    name, deadline_s,
                )  # fmt: skip
            except Exception:
                log.exception("agent %s: on_stop failed; cancelling", name)
        while not task.done() and loop.time() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=min(RECANCEL_S, max(0.0, deadline - loop.time())))
        if not task.done():
            child.state = ChildState.ABANDONED
            self.abandoned.append(name)
            log.error("agent %s did not stop within %.1f s; left behind. Its stack:\n%s",
                      name, deadline_s, task_stack(task))  # fmt: skip
            return
        if not task.cancelled() and task.exception() is not None:
            log.error("agent %s ended with %r while stopping", name, task.exception())
        child.state = ChildState.STOPPED
        # The ended task keeps its CancelledError, whose traceback holds ``_keep``'s frame, which
        # holds this child: a cycle. Dropped here, a stopped agent (a reload restarts hundreds)
        # is freed by reference counting, even when ``gc.freeze()`` keeps it from the collector.
        child.task = None

    async def stop_many(self, names: list[str]) -> None:
        """Stop these agents at once (each within its own deadline)."""
        await asyncio.gather(*(self.stop(name) for name in names))

    async def stop_all(self) -> None:
        # Stop in reverse start order: zones before the devices they command.
        for name in reversed(list(self.children)):
            await self.stop(name)

    def agent(self, name: str) -> Agent | None:
        child = self.children.get(name)
        return child.agent if child is not None else None

    async def _keep(self, child: Child) -> None:
        delay = self.policy.backoff_initial_s
        while True:
            agent = child.factory()
            child.agent = agent

            def started(child: Child = child) -> None:
                child.state = ChildState.RUNNING
                if child.ready is not None and not child.ready.done():
                    child.ready.set_result(None)

            try:
                await agent.run(started)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                child.last_error = f"{type(err).__name__}: {err}"
                now = self.clock.monotonic()
                since = now - self.policy.window_s
                child.crashes = [t for t in child.crashes if t >= since]
                child.crashes.append(now)
                if len(child.crashes) > self.policy.max_restarts:
                    child.state = ChildState.FAILED
                    log.error(  # noqa: TRY400 - the traceback was logged at each restart
                        "agent %s gave up after %d crashes in %.0f s: %s",
                        child.name,
                        len(child.crashes),
                        self.policy.window_s,
                        child.last_error,
                    )
                    if self.on_give_up is not None:
                        result = self.on_give_up(child.name, err)
                        if result is not None:
                            await result
                    return
                child.state = ChildState.RESTARTING
                child.restarts += 1
                log.warning(
                    "agent %s crashed (%s); restart %d in %.1f s",
                    child.name,
                    child.last_error,
                    child.restarts,
                    delay,
                    exc_info=err if log.isEnabledFor(logging.DEBUG) else None,
                )
                if self.on_restart is not None:
                    self.on_restart(child.name, err)
                # Full jitter (AWS architecture blog "Exponential Backoff and Jitter").
                await self.clock.sleep(self._random.uniform(0.5, 1.0) * delay)
                delay = min(delay * 2, self.policy.backoff_max_s)
                continue
            child.state = ChildState.STOPPED
            return


def task_stack(task: asyncio.Task[Any]) -> str:
    """Where a task is suspended, outermost frame first, down the chain of awaits to the one it
    is stuck in (``Task.print_stack`` shows only the outermost coroutine)."""
    frames: list[tuple[FrameType, int]] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = next((getattr(awaited, a) for a in ("cr_frame", "gi_frame", "ag_frame")
                      if getattr(awaited, a, None) is not None), None)  # fmt: skip
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        awaited = next((getattr(awaited, a) for a in ("cr_await", "gi_yieldfrom", "ag_await")
                        if getattr(awaited, a, None) is not None), None)  # fmt: skip
    lines = traceback.format_list(traceback.StackSummary.extract(iter(frames)))
    return "".join(lines).rstrip() + f"\n  waiting for: {task!r}"
