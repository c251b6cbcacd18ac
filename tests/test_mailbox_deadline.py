"""A mailbox's wait with a deadline (``Mailbox.get_until``), the zone's wait on its inbox between
two ticks, and the in-process send that puts without waiting when the box has room. In virtual
time (looptime): no wall-clock limits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest

from buildingd.agents.bus import Envelope, InProcessBus, Mailbox, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import ReadingMsg
from buildingd.agents.zone import CONTROL_INTERVAL_S, ZoneAgent
from buildingd.clock import ScaledClock
from buildingd.config.loader import load_site
from buildingd.drivers.base import DriverContext
from buildingd.points import PointKind, Quality
from tests.conftest import REPO

Virtual = Callable[[Coroutine[Any, Any, Any]], Any]


def env(n: int, receiver: str = "a") -> Envelope:
    return Envelope(
        performative=Performative.INFORM, sender="t", receiver=receiver, ontology="n",
        content={"n": n},
    )  # fmt: skip


def counted_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """Every timer armed on ``loop`` from now on (``call_later`` and ``asyncio.timeout`` too)."""
    armed: list[asyncio.TimerHandle] = []
    call_at = loop.call_at

    def counting(when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(call_at(when, *args, **kwargs))
        return armed[-1]

    loop.call_at = counting  # type: ignore[method-assign]
    return armed


def test_get_until_returns_none_at_the_deadline_and_an_envelope_at_once(virtual: Virtual) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        box = Mailbox("a")
        start = loop.time()
        assert await box.get_until(start + 5.0) is None
        assert loop.time() == pytest.approx(start + 5.0)
        # Put first: taken at once, no wait.
        box.put_nowait(env(1))
        got = await box.get_until(loop.time() + 5.0)
        assert got is not None and got.content["n"] == 1
        assert loop.time() == pytest.approx(start + 5.0)
        # Put while waiting: the getter wakes then, not at the deadline.
        loop.call_later(2.0, box.put_nowait, env(2))
        got = await box.get_until(start + 15.0)
        assert got is not None and got.content["n"] == 2
        assert loop.time() == pytest.approx(start + 7.0)
        # The same deadline again: still met, by the timer already armed.
        assert await box.get_until(start + 15.0) is None
        assert loop.time() == pytest.approx(start + 15.0)
        # A deadline already passed: None at once.
        assert await box.get_until(start) is None
        assert loop.time() == pytest.approx(start + 15.0)

    virtual(main())


def test_get_until_arms_one_timer_per_deadline_not_per_envelope(virtual: Virtual) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        box = Mailbox("a")
        armed = counted_timers(loop)
        deadline = loop.time() + 10.0
        for n in range(5):
            loop.call_soon(box.put_nowait, env(n))
            got = await box.get_until(deadline)
            assert got is not None and got.content["n"] == n
        assert [timer.when() for timer in armed] == [deadline]
        assert await box.get_until(deadline) is None
        assert loop.time() == pytest.approx(deadline)
        await box.get_until(deadline + 1.0)  # a new deadline: a new timer
        assert [timer.when() for timer in armed] == [deadline, deadline + 1.0]

    virtual(main())


def test_a_cancelled_get_until_leaves_no_timer_behind(virtual: Virtual) -> None:
    """A stopped agent's mailbox is not kept by a timer until its deadline."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        box = Mailbox("a")
        armed = counted_timers(loop)
        getter = asyncio.ensure_future(box.get_until(loop.time() + 60.0))
        await asyncio.sleep(0)
        assert len(armed) == 1 and not armed[0].cancelled()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getter
        assert armed[0].cancelled()

    virtual(main())


def test_the_bus_still_waits_on_a_full_block_box_and_drops_the_oldest_of_the_rest() -> None:
    async def main() -> None:
        bus = InProcessBus()
        blocking = Mailbox("a", maxsize=1, overflow="block")
        newest = Mailbox("b", maxsize=2, overflow="drop_oldest")
        bus.subscribe("a", blocking)
        bus.subscribe("a", newest)
        await bus.send(env(1))
        sender = asyncio.ensure_future(bus.send(env(2)))
        await asyncio.sleep(0.01)
        assert not sender.done()  # the block box is full: the sender waits
        assert [e.content["n"] for e in newest._items] == [1]  # a box in turn, as before
        assert blocking.get_nowait() == env(1)
        await sender
        assert blocking.get_nowait() == env(2)
        await bus.send(env(3))
        blocking.get_nowait()
        assert [e.content["n"] for e in newest._items] == [2, 3]
        assert (blocking.dropped, newest.dropped) == (0, 1)
        assert blocking.put_nowait(env(4))
        assert not blocking.put_nowait(env(5))  # full: refused and counted, never waited on
        assert blocking.dropped == 1
        assert bus.stats.by_kind["inform/n"] == 3

    asyncio.run(main())


def meeting_room() -> ZoneAgent:
    clock = ScaledClock(datetime(2027, 1, 11, 9, 0, tzinfo=UTC), 1.0)
    ctx = AgentContext(
        bus=InProcessBus(), clock=clock, site=load_site(REPO), drivers=DriverContext(clock=clock)
    )
    return ZoneAgent("f1-meeting", ctx)


def temperature(zone: ZoneAgent, value: float) -> Envelope:
    return ReadingMsg(
        device_id="f1-meeting-thermostat", point_id="temperature", zone_id="f1-meeting",
        kind=PointKind.TEMPERATURE, unit="degC", value=value, quality=Quality.GOOD,
        timestamp=zone.ctx.clock.now(),
    ).envelope(Performative.INFORM, "f1-meeting-thermostat", "readings/f1-meeting")  # fmt: skip


def test_a_waiting_zone_ticks_on_time_and_decides_at_once_on_a_reading(virtual: Virtual) -> None:
    """Between two ticks a zone takes every message without a timer each (messages that set off
    no decision leave its tick where it was); with none it ticks every ``CONTROL_INTERVAL_S``;
    a reading makes it decide at once and the next tick follows from there."""

    async def main() -> tuple[list[float], int]:
        loop = asyncio.get_running_loop()
        zone = meeting_room()
        decided: list[float] = []
        decide = zone.control

        async def recorded(now_s: float) -> None:
            decided.append(now_s)
            await decide(now_s)

        zone.control = recorded  # type: ignore[method-assign]
        task = asyncio.create_task(zone.run(lambda: None))
        try:
            await asyncio.sleep(1.0)
            armed = counted_timers(loop)
            for _ in range(5):  # no decision from these: the tick stays where it was
                zone.inbox.put_nowait(env(0, zone.name))  # an ontology zones do not take
                await asyncio.sleep(1.0)
            # Timers still ahead were armed by the zone (this test's own sleeps are over).
            timers_between_ticks = sum(1 for timer in armed if timer.when() > loop.time())
            await asyncio.sleep(2 * CONTROL_INTERVAL_S - 6.0 + 0.5)  # two ticks, no message
            zone.inbox.put_nowait(temperature(zone, 23.5))
            await asyncio.sleep(0.5)  # the reading at start + 21
            await asyncio.sleep(CONTROL_INTERVAL_S)  # and the tick after it
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return decided, timers_between_ticks

    decided, timers_between_ticks = virtual(main())
    start, i = decided[0], CONTROL_INTERVAL_S
    expected = [start, start + i, start + 2 * i, start + 20.5, start + 30.5]
    assert decided[:5] == pytest.approx(expected)
    # The five messages before the first tick armed no timer: the zone's tick was armed once,
    # before them.
    assert timers_between_ticks == 0
