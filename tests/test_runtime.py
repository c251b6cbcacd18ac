"""Agent runtime: bounded mailboxes, the bus, and the supervisor's restart policy (virtual time)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from buildingd.agents.bus import Envelope, InProcessBus, Mailbox, Performative
from buildingd.agents.runtime import Agent, ChildState, RestartPolicy, Supervisor
from buildingd.clock import ScaledClock
from tests.conftest import run_virtual


def env(n: int, receiver: str = "a") -> Envelope:
    return Envelope(
        performative=Performative.INFORM,
        sender="t",
        receiver=receiver,
        ontology="n",
        content={"n": n},
    )


def test_drop_oldest_mailbox_keeps_the_newest() -> None:
    async def main() -> list[int]:
        box = Mailbox("a", maxsize=3, overflow="drop_oldest")
        for i in range(5):
            await box.put(env(i))
        assert box.dropped == 2
        return [int((await box.get()).content["n"]) for _ in range(3)]

    assert asyncio.run(main()) == [2, 3, 4]


def test_blocking_mailbox_makes_the_sender_wait() -> None:
    async def main() -> None:
        box = Mailbox("a", maxsize=1, overflow="block")
        await box.put(env(1))
        sender = asyncio.ensure_future(box.put(env(2)))
        await asyncio.sleep(0.01)
        assert not sender.done()
        assert (await box.get()).content["n"] == 1
        await sender
        assert (await box.get()).content["n"] == 2
        assert box.dropped == 0

    asyncio.run(main())


def test_drained_returns_once_everything_put_was_taken() -> None:
    """What the NATS bus waits on before acknowledging a request to the coordinator."""

    async def main() -> None:
        box = Mailbox("a")
        await asyncio.wait_for(box.drained(), 1)  # empty: at once
        await box.put(env(1))
        box.put_nowait(env(2))
        waiting = asyncio.ensure_future(box.drained())
        await box.get()
        await asyncio.sleep(0.01)
        assert not waiting.done()  # one still in the box
        assert box.get_nowait() is not None
        await asyncio.wait_for(waiting, 1)

    asyncio.run(main())


def test_bus_counts_by_kind_and_conversation() -> None:
    async def main() -> InProcessBus:
        bus = InProcessBus()
        box = Mailbox("a")
        bus.subscribe("a", box)
        for i in range(3):
            await bus.send(env(i).model_copy(update={"conversation_id": "c1"}))
        await bus.send(env(9, receiver="nobody"))
        return bus

    bus = asyncio.run(main())
    assert bus.stats.by_kind["inform/n"] == 4
    assert bus.stats.messages_in("c1") == 3
    assert bus.stats.undeliverable == 1


class Crasher(Agent):
    starts = 0

    def __init__(self, crash_after_s: float) -> None:
        super().__init__("crasher")
        self.crash_after_s = crash_after_s

    async def run(self, started: Callable[[], None]) -> None:
        Crasher.starts += 1
        started()
        await asyncio.sleep(self.crash_after_s)
        raise RuntimeError("boom")


def test_supervisor_restarts_with_backoff_then_gives_up() -> None:
    gave_up: list[str] = []
    restarts: list[float] = []
    Crasher.starts = 0

    async def main() -> Supervisor:
        loop = asyncio.get_running_loop()
        policy = RestartPolicy(max_restarts=3, window_s=600, backoff_initial_s=1, backoff_max_s=8)
        sup = Supervisor(
            ScaledClock(datetime(2026, 1, 1, tzinfo=UTC)),
            policy,
            on_give_up=lambda name, err: gave_up.append(name),
            on_restart=lambda name, err: restarts.append(loop.time()),
            seed=1,
        )
        async with sup:
            await sup.start("crasher", lambda: Crasher(5.0))
            await asyncio.sleep(300)
            assert sup.children["crasher"].state is ChildState.FAILED
        return sup

    sup = run_virtual(main())
    assert Crasher.starts == 4  # the first run and three restarts
    assert gave_up == ["crasher"]
    assert sup.children["crasher"].restarts == 3
    # Backoff doubles (with jitter in [0.5, 1] of the nominal delay): gaps grow.
    gaps = [b - a for a, b in zip(restarts, restarts[1:], strict=False)]
    assert gaps[0] < gaps[1]
    assert "boom" in (sup.children["crasher"].last_error or "")


def test_slow_crashes_outside_the_window_are_forgiven() -> None:
    Crasher.starts = 0

    async def main() -> ChildState:
        policy = RestartPolicy(max_restarts=2, window_s=60, backoff_initial_s=1, backoff_max_s=1)
        async with Supervisor(ScaledClock(datetime(2026, 1, 1, tzinfo=UTC)), policy, seed=2) as sup:
            await sup.start("crasher", lambda: Crasher(100.0))
            await asyncio.sleep(1000)
            return sup.children["crasher"].state

    assert run_virtual(main()) is ChildState.RUNNING
    assert Crasher.starts >= 9


def test_agent_failing_before_ready_is_reported() -> None:
    class Broken(Agent):
        async def run(self, started: Callable[[], None]) -> None:
            raise OSError("cannot open")

    async def main() -> None:
        policy = RestartPolicy(max_restarts=0)
        async with Supervisor(ScaledClock(datetime(2026, 1, 1, tzinfo=UTC)), policy) as sup:
            with pytest.raises(RuntimeError, match="cannot open"):
                await sup.start("broken", lambda: Broken("broken"))

    run_virtual(main())


class Deaf(Agent):
    """Drops cancellations: the first ``swallow`` of them (as ``asyncio.wait_for`` on Python 3.11
    drops one that arrives with its result), or all of them (``swallow`` None)."""

    def __init__(self, name: str, swallow: int | None) -> None:
        super().__init__(name)
        self.swallow = swallow
        self.cancels_seen = 0

    async def run(self, started: Callable[[], None]) -> None:
        started()
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                self.cancels_seen += 1
                if self.swallow is not None and self.cancels_seen > self.swallow:
                    raise
                current = asyncio.current_task()
                assert current is not None
                current.uncancel()


def test_a_lost_cancellation_does_not_hang_the_stop(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[Supervisor, float]:
        loop = asyncio.get_running_loop()
        async with Supervisor(ScaledClock(datetime(2026, 1, 1, tzinfo=UTC))) as sup:
            await sup.start("deaf-once", lambda: Deaf("deaf-once", swallow=1))
            started = loop.time()
            await sup.stop("deaf-once")
            return sup, loop.time() - started

    sup, took_s = run_virtual(main())
    assert sup.children["deaf-once"].state is ChildState.STOPPED
    assert took_s < sup.children["deaf-once"].agent.stop_deadline_s  # type: ignore[union-attr]
    assert "did not stop" not in caplog.text


def test_an_agent_that_never_stops_is_left_behind_with_its_stack_and_the_rest_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Crasher.starts = 0

    async def main() -> Supervisor:
        async with Supervisor(ScaledClock(datetime(2026, 1, 1, tzinfo=UTC))) as sup:
            await sup.start("first", lambda: Crasher(1e9))
            await sup.start("deaf", lambda: Deaf("deaf", swallow=None))
            await sup.start("last", lambda: Crasher(1e9))
        # The context's exit stopped every agent, in reverse order. Then let the deaf one go.
        deaf = sup.children["deaf"]
        assert isinstance(deaf.agent, Deaf) and deaf.task is not None
        deaf.agent.swallow = 0
        deaf.task.cancel()
        await asyncio.wait({deaf.task})
        return sup

    sup = run_virtual(main())
    states = {name: child.state for name, child in sup.children.items()}
    assert states == {"first": ChildState.STOPPED, "deaf": ChildState.ABANDONED,
                      "last": ChildState.STOPPED}  # fmt: skip
    assert sup.abandoned == ["deaf"]
    assert "agent deaf did not stop within 5.0 s" in caplog.text
    assert "in run\n    await asyncio.sleep(0.05)" in caplog.text  # where it is stuck
