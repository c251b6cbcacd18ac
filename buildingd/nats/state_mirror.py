"""The coordinator's state files (commitments.json, alerts.json in the state directory) mirrored
in the site's JetStream KV bucket, so a standby that takes the lease starts its coordinator with
everything in force: the leader pushes each file when it changes, the new leader pulls them
into its own state directory before its coordinator starts (and reads them as after a restart).
The files' formats stay the coordinator desks' (``coordinator/commitments.py``, ``alerts_file``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from buildingd.nats.subjects import state_bucket
from buildingd.statefile import write_atomic

if TYPE_CHECKING:
    import nats.aio.client
    import nats.js.kv

log = logging.getLogger(__name__)
FILES = ("commitments.json", "alerts.json")
CHECK_EVERY_S = 1.0  # a file changed without a word (by hand) is pushed within this
API_TIMEOUT_S = 5.0


class StateMirror:
    def __init__(
        self, nc: nats.aio.client.Client, site_id: str, state_dir: Path, replicas: int = 3
    ) -> None:
        self.nc, self.site_id, self.state_dir, self.replicas = nc, site_id, state_dir, replicas
        self.kv: nats.js.kv.KeyValue | None = None
        self._pushed: dict[str, bytes] = {}  # what the bucket holds, as this gateway knows
        self.changed = asyncio.Event()  # set by the coordinator's desks when they save a file
        self.pushes = 0

    async def open(self) -> nats.js.kv.KeyValue:
        if self.kv is None:
            js = self.nc.jetstream(timeout=API_TIMEOUT_S)
            self.kv = await js.create_key_value(bucket=state_bucket(self.site_id), history=1,
                                                replicas=self.replicas)  # fmt: skip
        return self.kv

    async def pull(self) -> list[str]:
        """Write the bucket's copies over the local files (a key never written leaves the local
        file as it is); the names of the files written."""
        import nats.js.errors

        kv = await self.open()
        written = []
        for name in FILES:
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError:
                continue
            data = entry.value or b""
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.state_dir / name, data.decode())
            self._pushed[name] = data
            written.append(name)
        return written

    async def take_over(self, timeout_s: float) -> None:
        """``pull`` for a gateway that just took the lease, within ``timeout_s``: on a timeout
        or a NATS error its coordinator starts on this gateway's own files (logged)."""
        import nats.errors

        try:
            async with asyncio.timeout(timeout_s):
                pulled = await self.pull()
            log.info("coordinator state taken over from the site's bucket: %s", pulled)
        except (TimeoutError, nats.errors.Error) as err:
            log.warning("coordinator state not read from the site's bucket (%s): starting on "
                        "this gateway's own files", err)  # fmt: skip

    async def push_changed(self) -> None:
        """Put each file whose bytes differ from what the bucket holds."""
        kv = await self.open()
        for name in FILES:
            try:
                data = (self.state_dir / name).read_bytes()
            except FileNotFoundError:
                continue
            if self._pushed.get(name) == data:
                continue
            await kv.put(name, data)
            self._pushed[name] = data
            self.pushes += 1

    async def keep_pushing(self, leads: Callable[[], bool]) -> None:
        """While this gateway leads (checked before each write: the fence), push each change
        as soon as a desk says it saved (``changed``), and look at the files every second."""
        import nats.errors

        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_EVERY_S):
                    await self.changed.wait()
            self.changed.clear()
            if leads():
                try:
                    await self.push_changed()
                except (TimeoutError, nats.errors.Error, OSError) as err:
                    log.warning("coordinator state not mirrored yet: %s; trying again", err)
                    self.changed.set()
                    await asyncio.sleep(0.2)
