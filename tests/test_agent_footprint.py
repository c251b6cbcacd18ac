"""What idle agents keep while they wait (a 1,000-zone site has some 4,000 of them, issue 18's
150 MB): a polled device keeps no task waiting for updates its driver never streams, a mailbox
keeps no waiter its getter gave up, and a supervised child drops its start-up wait."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from buildingd.agents.bus import Envelope, Mailbox, Performative
from buildingd.drivers.sim import SimDriver
from tests.conftest import run_virtual
from tests.test_daemon_sim import make_daemon, run_for

MONDAY_MORNING = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)


def note(n: int) -> Envelope:
    return Envelope(
        performative=Performative.INFORM, sender="t", receiver="a", ontology="n",
        content={"n": n},
    )  # fmt: skip


def test_a_polled_device_keeps_no_task_waiting_for_updates(tmp_path: Path) -> None:
    daemon, _ = make_daemon(tmp_path, MONDAY_MORNING)

    async def main() -> tuple[int, list[str], list[str]]:
        task = await run_for(daemon, 60)
        await asyncio.sleep(5)
        polled = [a.name for a in daemon.device_agents.values() if isinstance(a.driver, SimDriver)]
        waiting = [
            t.get_name() for t in asyncio.all_tasks()
            if "wait_update" in getattr(t.get_coro(), "__qualname__", "")
        ]  # fmt: skip
        assert daemon.supervisor is not None
        children = daemon.supervisor.children.values()
        unfinished_starts = [c.name for c in children if c.ready is not None]
        await task
        return len(polled), waiting, unfinished_starts

    polled, waiting, unfinished_starts = run_virtual(main())
    assert polled > 0  # every demo device is simulated in process here, so none streams
    assert waiting == []
    assert unfinished_starts == []


def test_a_cancelled_wait_leaves_nothing_behind_in_the_mailbox() -> None:
    async def main() -> None:
        box = Mailbox("a", maxsize=1, overflow="block")
        getters = [asyncio.ensure_future(box.get()) for _ in range(3)]
        await asyncio.sleep(0)
        getters[0].cancel()
        getters[1].cancel()
        await asyncio.sleep(0)
        assert box._arrived._waiters is not None and len(box._arrived._waiters) == 1
        await box.put(note(1))
        assert (await getters[2]).content["n"] == 1  # the one still waiting was woken
        assert not box._arrived._waiters

        await box.put(note(2))
        sender = asyncio.ensure_future(box.put(note(3)))  # full: waits for room
        drained = asyncio.ensure_future(box.drained())
        await asyncio.sleep(0)
        sender.cancel()
        drained.cancel()
        await asyncio.sleep(0)
        assert not box._room._waiters and not box._emptied._waiters
        assert (await box.get()).content["n"] == 2
        assert box.get_nowait() is None  # the cancelled put put nothing

    asyncio.run(main())
