"""Agent base class and the supervisor that runs agents, restarts crashed ones with backoff and
gives up (escalating) past a restart-intensity limit, OTP style."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from buildingd.agents.bus import Mailbox, Overflow
from buildingd.clock import Clock

log = logging.getLogger(__name__)


class Agent(ABC):
    """An asyncio task with a name and a bounded mailbox. ``run`` calls ``started()`` once it is
    ready to work; returning ends the agent normally, raising crashes it."""

    mailbox_size: int = 1000
    overflow: Overflow = "drop_oldest"

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
    crashes: deque[float] = field(default_factory=deque)
    started_s: float = 0.0  # monotonic time the child was started (not restarted)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


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
        self._group: asyncio.TaskGroup | None = None
        self._random = random.Random(seed)

    async def __aenter__(self) -> Supervisor:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_all()
        assert self._group is not None
        await self._group.__aexit__(None, None, None)
        self._group = None

    async def start(
        self, name: str, factory: Callable[[], Agent], ready_timeout_s: float | None = 30.0
    ) -> Agent:
        """Start an agent and wait until it says it is ready (or fails before that)."""
        if self._group is None:
            raise RuntimeError("supervisor is not running")
        if name in self.children and self.children[name].state not in (
            ChildState.STOPPED,
            ChildState.FAILED,
        ):
            raise ValueError(f"agent {name} is already running")
        child = Child(name, factory, started_s=self.clock.monotonic())
        self.children[name] = child
        child.task = self._group.create_task(self._keep(child), name=name)
        waiter = asyncio.ensure_future(child.ready.wait())
        try:
            async with asyncio.timeout(ready_timeout_s):
                done, _ = await asyncio.wait(
                    {waiter, child.task}, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            waiter.cancel()
        if not child.ready.is_set():
            raise RuntimeError(f"agent {name} ended before it was ready: {child.last_error}")
        assert child.agent is not None
        return child.agent

    async def stop(self, name: str) -> None:
        child = self.children.get(name)
        if child is None or child.task is None:
            return
        if child.agent is not None and child.state is ChildState.RUNNING:
            with contextlib.suppress(Exception):
                await child.agent.on_stop()
        child.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await child.task
        child.state = ChildState.STOPPED

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
                child.ready.set()

            try:
                await agent.run(started)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                child.last_error = f"{type(err).__name__}: {err}"
                now = self.clock.monotonic()
                child.crashes.append(now)
                while child.crashes and child.crashes[0] < now - self.policy.window_s:
                    child.crashes.popleft()
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
