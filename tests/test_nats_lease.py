"""The coordinator lease on a real 3-node NATS cluster (nats/lease.py): one holder at a time;
when the holder dies another takes the key once it has aged out, with a higher revision; a
holder cut off from the cluster stops acting before the other starts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from buildingd.nats.connection import NatsErrors, connect
from buildingd.nats.lease import LeaseKeeper
from buildingd.nats.lease_logic import LeaseTiming
from buildingd.settings import NatsSettings
from tests.conftest import until
from tests.nats_cluster import NatsCluster

pytestmark = pytest.mark.nats

TTL_S = 4.0
WAIT_S = 60.0  # a bound for a loaded machine (a stream leader election included)


@dataclass
class Record:
    """What each candidate did, on one monotonic clock: (time, gateway, event, revision)."""

    events: list[tuple[float, str, str, int]] = field(default_factory=list)

    def holders(self) -> list[str]:
        return [g for _, g, what, _ in self.events if what == "acquired"]

    def overlap(self) -> list[str]:
        """Acquisitions while another candidate still acted as coordinator."""
        acting: set[str] = set()
        problems = []
        for when, gateway, what, _ in self.events:
            if what == "acquired":
                if acting:
                    problems.append(f"{gateway} acquired at {when:.2f} while {acting} acted")
                acting.add(gateway)
            else:
                acting.discard(gateway)
        return problems


@asynccontextmanager
async def candidate(
    cluster: NatsCluster, gateway: str, record: Record, servers: list[str] | None = None
) -> AsyncIterator[LeaseKeeper]:
    user = f"hq-{gateway}"
    settings = NatsSettings(enabled=True, servers=servers or cluster.urls, user=user,
                            password=f"pw-{user}")  # fmt: skip
    nc = await connect(settings, user, NatsErrors())

    async def acquired(revision: int) -> None:
        record.events.append((time.monotonic(), gateway, "acquired", revision))

    async def lost() -> None:
        record.events.append((time.monotonic(), gateway, "lost", 0))

    keeper = LeaseKeeper(nc, "hq", gateway, LeaseTiming.for_ttl(TTL_S), acquired, lost)
    try:
        task = asyncio.create_task(keeper.run(), name=f"lease[{gateway}]")
        try:
            yield keeper
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await nc.close()


async def test_one_holder_and_a_takeover_with_a_higher_revision(nats_cluster: NatsCluster) -> None:
    record = Record()
    async with contextlib.AsyncExitStack() as a_alive:
        a = await a_alive.enter_async_context(candidate(nats_cluster, "a", record))
        await until(a.holds, "a holds the lease", WAIT_S)
        async with candidate(nats_cluster, "b", record) as b:
            await asyncio.sleep(TTL_S * 1.5)  # several renewals of a, several tries of b
            assert not b.holds() and b.lease.other == "a"
            assert record.holders() == ["a"]
            first = a.lease.revision
            assert first is not None and first > 1  # a renewed it
            await a_alive.aclose()  # a's gateway dies: its renewals stop
            died = time.monotonic()
            await until(b.holds, "b took the lease over", WAIT_S)
            took_s = time.monotonic() - died
            assert b.lease.revision is not None and b.lease.revision > first
    assert record.holders() == ["a", "b"]
    print(f"takeover {took_s:.2f} s after the holder died (TTL {TTL_S:g} s)")


async def test_a_holder_cut_off_stops_before_another_starts(nats_cluster: NatsCluster) -> None:
    """a talks to node 1 only; node 1 is frozen (SIGSTOP): a cannot renew, must stop acting
    by its own clock, and b (on the other two nodes) takes the key only after that."""
    record = Record()
    async with candidate(nats_cluster, "a", record, servers=nats_cluster.urls[:1]) as a:
        await until(a.holds, "a holds the lease", WAIT_S)
        async with candidate(nats_cluster, "b", record, servers=nats_cluster.urls[1:]) as b:
            await until(lambda: b.lease.other == "a", "b saw a's lease", WAIT_S)
            nats_cluster.pause(0)
            try:
                await until(b.holds, "b took the lease over", WAIT_S)
                assert not a.holds()
            finally:
                nats_cluster.resume(0)
    assert record.holders()[:2] == ["a", "b"]
    assert record.overlap() == [], record.events
