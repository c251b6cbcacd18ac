"""The coordinator's state mirrored in the site's JetStream KV bucket, so a standby that takes the
lease starts its coordinator with everything in force: the desks' files (commitments.json,
alerts.json in the state directory; the new leader writes them into its own and reads them as
after a restart) and what lives only in memory (``carried``: votes, air-handler resets; handed to
the new coordinator at its start). The formats stay the coordinator's.

Every write is a compare-and-set on the revision this gateway last read or wrote, and a new
leader first rewrites every key on the revision it pulled: once it has, a write from a deposed
leader (paused past its lease, its put still in flight) fails and is counted, never lands.

Write-ahead: the coordinator sends nothing before the state that made it send is here
(``synced``): a negotiation it opened is in the bucket before a zone is asked or an HTTP
request answered, an award before it goes out, so a new leader knows of all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildingd.metrics import Metrics
from buildingd.nats.subjects import state_bucket
from buildingd.statefile import write_atomic

if TYPE_CHECKING:
    import nats.aio.client
    import nats.js.kv

log = logging.getLogger(__name__)
FILES = ("commitments.json", "alerts.json")
CARRIED = "carried"  # the key of the in-memory state (votes, air-handler resets)
KEYS = (*FILES, CARRIED)
CHECK_EVERY_S = 1.0  # a file changed without a word (by hand) is pushed within this
RETRY_S = 0.2  # a failed write (the bucket's stream electing a leader) is tried again after this
API_TIMEOUT_S = 5.0
REFUSED_METRIC = "buildingd_coordinator_state_refused_total"


class Deposed(Exception):
    """A state write refused: another gateway wrote the key after this one last saw it."""


class StateMirror:
    """``carried``: the running coordinator's in-memory state (None: none running), a JSON-able
    dict compared between pushes, saved with ``saved_at`` (``wall``: the wall clock in epoch
    seconds) and ``by`` (this gateway)."""

    def __init__(
        self,
        nc: nats.aio.client.Client,
        site_id: str,
        state_dir: Path,
        replicas: int = 3,
        carried: Callable[[], dict[str, Any] | None] = lambda: None,
        wall: Callable[[], float] = lambda: 0.0,
        metrics: Metrics | None = None,
        gateway_id: str = "",
    ) -> None:
        self.gateway_id = gateway_id  # written beside the carried state: who saved it
        self.nc, self.site_id, self.state_dir, self.replicas = nc, site_id, state_dir, replicas
        self.carried, self.wall, self.metrics = carried, wall, metrics
        self.kv: nats.js.kv.KeyValue | None = None
        self._pushed: dict[str, bytes] = {}  # what the bucket holds, as this gateway knows
        self._revision: dict[str, int] = {}  # of each key, as this gateway last read or wrote it
        self.taken: dict[str, Any] | None = None  # the carried state pulled at the takeover
        self.changed = asyncio.Event()  # set by the coordinator's desks when state changed
        self.pushes = 0
        self.refused = 0
        self.deposed = False  # a write was refused: nothing more until a takeover pulls again
        self.failing = False  # the last write could not reach the bucket
        self._writing = asyncio.Lock()  # one write at a time: two on one revision would refuse

    async def open(self) -> nats.js.kv.KeyValue:
        if self.kv is None:
            js = self.nc.jetstream(timeout=API_TIMEOUT_S)
            self.kv = await js.create_key_value(bucket=state_bucket(self.site_id), history=1,
                                                replicas=self.replicas)  # fmt: skip
        return self.kv

    async def pull(self) -> list[str]:
        """Write the bucket's files over the local ones (a key never written leaves the local
        file as it is), keep the carried state for the coordinator; the keys taken."""
        import nats.js.errors

        kv = await self.open()
        written = []
        self._revision.clear()
        self.taken = None
        for name in KEYS:
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError:
                continue
            self._revision[name] = entry.revision or 0
            data = entry.value or b""
            self._pushed[name] = data
            if not data:  # claimed by a leader before anything was written
                continue
            if name == CARRIED:
                self.taken = json.loads(data)
            else:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                write_atomic(self.state_dir / name, data.decode())
            written.append(name)
        return written

    async def claim(self) -> None:
        """Rewrite every key on the revision pulled (an absent one created empty): from now on
        the last leader's writes are refused. ``Deposed`` if one was written since the pull."""
        kv = await self.open()
        for name in KEYS:
            await self._write(kv, name, self._pushed.get(name, b""))

    async def take_over(self, timeout_s: float) -> None:
        """``pull`` and ``claim`` for a gateway that just took the lease, tried again (the
        state's stream may be electing a leader: NATS takes 4-9 s; or the last leader wrote in
        between) until ``timeout_s``; then its coordinator starts on this gateway's own
        files (logged)."""
        import nats.errors

        self.deposed = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                async with asyncio.timeout(API_TIMEOUT_S):
                    pulled = await self.pull()
                    await self.claim()
            except Deposed as err:
                problem = str(err)
            except (TimeoutError, nats.errors.Error) as err:
                problem = f"{type(err).__name__}: {err}"
            else:
                log.info("coordinator state taken over from the site's bucket: %s", pulled)
                return
            if loop.time() >= deadline:
                log.warning("coordinator state not read from the site's bucket (%s): starting "
                            "on this gateway's own files", problem)  # fmt: skip
                return
            log.info("coordinator state: %s; trying again", problem)
            await asyncio.sleep(0.5)

    def _current(self) -> dict[str, bytes]:
        out = {}
        for name in FILES:
            with contextlib.suppress(FileNotFoundError):
                out[name] = (self.state_dir / name).read_bytes()
        carried = self.carried()
        if carried is not None:
            body = json.dumps(carried, sort_keys=True)
            if body != self._pushed_body():
                saved = {"saved_at": self.wall(), "by": self.gateway_id}
                out[CARRIED] = json.dumps({**carried, **saved},
                                          sort_keys=True).encode()  # fmt: skip
        return out

    def _pushed_body(self) -> str:
        """The carried state last pushed, without its save time (to compare)."""
        data = self._pushed.get(CARRIED)
        if not data:
            return ""
        body = json.loads(data)
        body.pop("saved_at", None)
        body.pop("by", None)
        return json.dumps(body, sort_keys=True)

    async def push_changed(self) -> None:
        """Put each key whose bytes differ from what the bucket holds, compare-and-set on the
        revision this gateway last wrote (``Deposed`` when another wrote since)."""
        kv = await self.open()
        for name, data in self._current().items():
            if self._pushed.get(name) != data:
                await self._write(kv, name, data)
                self.pushes += 1

    async def _write(self, kv: Any, name: str, data: bytes) -> None:
        """Write ``name`` on the revision this gateway last read or wrote (created if it has
        none): ``Deposed`` when another gateway wrote it since."""
        import nats.js.errors

        try:
            if name in self._revision:
                revision = await kv.update(name, data, last=self._revision[name])
            else:
                revision = await kv.create(name, data)
        except nats.js.errors.KeyWrongLastSequenceError as err:
            raise Deposed(f"{name} written by another gateway since it was read") from err
        self._revision[name] = revision
        self._pushed[name] = data

    async def keep_pushing(self, leads: Callable[[], bool]) -> None:
        """While this gateway leads (checked before each write: the fence), push each change
        as soon as a desk says it changed (``changed``), and look every second. A refused
        write (another gateway leads now) is counted and not tried again."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_EVERY_S):
                    await self.changed.wait()
            self.changed.clear()
            if self.deposed or not leads():
                continue
            if not await self._push_once() and not self.deposed:
                self.changed.set()
                await asyncio.sleep(RETRY_S)

    async def synced(self, leads: Callable[[], bool]) -> bool:
        """Push what changed now; True once the bucket holds this gateway's state, False
        once it no longer leads or was deposed (what its coordinator sends then is fenced by
        the bus). Tried again while the bucket cannot answer (its stream electing a leader):
        the coordinator waits, it does not act on state a new leader could not know."""
        while not self.deposed and leads():
            if await self._push_once():
                return True
            await asyncio.sleep(RETRY_S)
        return False

    async def _push_once(self) -> bool:
        """One ``push_changed``: True when it went through. A refusal is counted and stops
        this mirror (``deposed``); a failure to reach the bucket is logged."""
        import nats.errors

        try:
            async with self._writing:
                if self.deposed:
                    return False
                await self.push_changed()
        except Deposed as err:
            self.refused += 1
            if self.metrics is not None:
                self.metrics.inc(REFUSED_METRIC)
            log.warning("coordinator state write refused (%s): another gateway leads", err)
            self.deposed = True
            return False
        except (TimeoutError, nats.errors.Error, OSError) as err:
            if not self.failing:  # once per outage (tried again every RETRY_S meanwhile)
                log.warning("coordinator state not mirrored yet: %s; trying again",
                            str(err) or type(err).__name__)  # fmt: skip
            self.failing = True
            return False
        if self.failing:
            log.info("coordinator state mirrored again")
        self.failing = False
        return True
