"""The coordinator lease on the site's NATS cluster: one key per site in a JetStream KV bucket
whose max age is the lease TTL, taken with create-if-absent and renewed by compare-and-set on the
holder's last revision. Decisions are ``nats/lease_logic.py``'s; this module only does the I/O
and calls back on acquisition (with the revision, the fencing token) and on loss."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from buildingd.nats.lease_logic import Action, Lease, LeaseTiming
from buildingd.nats.subjects import lease_bucket

if TYPE_CHECKING:
    import nats.aio.client
    import nats.js.kv

log = logging.getLogger(__name__)
KEY = "coordinator"


class LeaseKeeper:
    """Runs one candidate's side of the election until cancelled. ``on_acquired(revision)``
    starts the coordinator, ``on_lost()`` stops it; both are awaited before the next write, so
    a lost lease is acted on before this candidate could take it again."""

    def __init__(
        self,
        nc: nats.aio.client.Client,
        site_id: str,
        holder: str,
        timing: LeaseTiming,
        on_acquired: Callable[[int], Awaitable[None]],
        on_lost: Callable[[], Awaitable[None]],
        replicas: int = 3,
        clock: Callable[[], float] = time.monotonic,
        on_renewed: Callable[[int], None] = lambda revision: None,
    ) -> None:
        self.nc = nc
        self.site_id = site_id
        self.lease = Lease(holder, timing)
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.on_renewed = on_renewed
        self.replicas = replicas
        self.clock = clock
        self.kv: nats.js.kv.KeyValue | None = None
        self.acquisitions = 0

    def holds(self) -> bool:
        return self.lease.holds(self.clock())

    async def open(self) -> nats.js.kv.KeyValue:
        """The site's lease bucket, created (or found, same config) on the cluster."""
        js = self.nc.jetstream(timeout=5.0)
        ttl_s = self.lease.timing.ttl_s
        kv = await js.create_key_value(bucket=lease_bucket(self.site_id), history=1, ttl=ttl_s,
                                       replicas=self.replicas)  # fmt: skip
        self.kv = kv
        return kv

    async def run(self) -> None:
        kv = await self._opened()
        try:
            while True:
                now = self.clock()
                if self.lease.lapse(now):
                    log.warning("coordinator lease lost (not renewed in time); stopping")
                    await self.on_lost()
                    continue
                action = self.lease.action(now)
                if action is Action.ACQUIRE:
                    await self._acquire(kv)
                elif action is Action.RENEW:
                    await self._renew(kv)
                delay = self.lease.wake_s(self.clock()) - self.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            if self.lease.sent_at_s is not None:
                await self.on_lost()

    async def _opened(self) -> nats.js.kv.KeyValue:
        """The bucket, retried while the cluster cannot answer (no quorum, a new stream
        waiting for its leader): until then this candidate simply does not compete."""
        import nats.errors

        while self.kv is None:
            try:
                return await self.open()
            except (TimeoutError, nats.errors.Error) as err:
                log.debug("coordinator lease: bucket not ready (%s); trying again", err)
                await asyncio.sleep(self.lease.timing.renew_every_s)
        return self.kv

    def _value(self) -> bytes:
        return json.dumps({"gateway": self.lease.holder}).encode()

    def _budget_s(self) -> float:
        """A write may take until the fence (or a renewal period when not holding)."""
        if self.lease.sent_at_s is None:
            return self.lease.timing.renew_every_s
        return max(0.05, self.lease.expires_s() - self.clock())

    async def _acquire(self, kv: nats.js.kv.KeyValue) -> None:
        import nats.errors
        import nats.js.errors

        sent = self.clock()
        try:
            async with asyncio.timeout(self._budget_s()):
                revision = await kv.create(KEY, self._value())
        except nats.js.errors.KeyWrongLastSequenceError:
            self.lease.taken(await self._holder(kv), self.clock())
            return
        except (TimeoutError, nats.errors.Error) as err:
            log.debug("coordinator lease: create failed (%s); trying again", err)
            self.lease.taken(None, self.clock())
            return
        self.lease.written(revision, sent)
        self.acquisitions += 1
        log.info("coordinator lease acquired by %s (revision %d)", self.lease.holder, revision)
        await self.on_acquired(revision)

    async def _renew(self, kv: nats.js.kv.KeyValue) -> None:
        import nats.errors
        import nats.js.errors

        assert self.lease.revision is not None
        sent = self.clock()
        try:
            async with asyncio.timeout(self._budget_s()):
                revision = await kv.update(KEY, self._value(), last=self.lease.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            # Someone wrote the key after ours: our lease has expired on the server.
            log.warning("coordinator lease taken over; stopping")
            self.lease.taken(await self._holder(kv), self.clock())
            await self.on_lost()
            return
        except (TimeoutError, nats.errors.Error) as err:
            log.debug("coordinator lease: renewal failed (%s); retrying until the fence", err)
            return
        self.lease.written(revision, sent)
        self.on_renewed(revision)

    async def _holder(self, kv: nats.js.kv.KeyValue) -> str | None:
        import nats.errors

        try:
            async with asyncio.timeout(2.0):
                entry = await kv.get(KEY)
            return str(json.loads(entry.value or b"{}").get("gateway"))
        except (TimeoutError, nats.errors.Error, ValueError):
            return None
