"""Whether this gateway is cut off from the site's NATS cluster: a probe of the cluster's
JetStream API every second (``watch``); ``Partition`` (pure) decides when a run of failed probes
is a partition (longer than ``grace_s``, the lease TTL: by then a leader here has stopped its
coordinator) and when it has healed (the first probe answered), each said once per episode.
Cut off, the gateway's own zones and devices go on by their policies as before; only what
crosses gateways waits (commands in the stream) or is lost (readings, informs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import nats.aio.client

log = logging.getLogger(__name__)
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 2.0


@dataclass
class Partition:
    """Probe outcomes in, transitions out. Times are monotonic seconds."""

    grace_s: float
    last_ok_s: float | None = None  # the last probe answered (None: none yet)
    first_failed_s: float | None = None  # the first failed probe since the last answer
    cut_off_s: float | None = None  # since when this gateway counts as cut off
    last_problem: str = ""

    def answered(self, now_s: float) -> float | None:
        """A probe answered: the seconds it was cut off if that ends a partition, else None."""
        self.last_ok_s, self.first_failed_s = now_s, None
        if self.cut_off_s is None:
            return None
        lasted, self.cut_off_s = now_s - self.cut_off_s, None
        return lasted

    def failed(self, now_s: float, problem: str) -> bool:
        """A probe failed: True once, when the failures have lasted ``grace_s``."""
        self.last_problem = problem
        if self.first_failed_s is None:
            self.first_failed_s = now_s
        if self.cut_off_s is not None or now_s - self.first_failed_s < self.grace_s:
            return False
        self.cut_off_s = self.first_failed_s
        return True

    @property
    def cut_off(self) -> bool:
        return self.cut_off_s is not None


async def watch(
    nc: nats.aio.client.Client,
    partition: Partition,
    clock: Callable[[], float],
    cut: Callable[[str], Awaitable[None]],
    healed: Callable[[float], Awaitable[None]],
) -> None:
    """Probe the cluster until cancelled: ``cut(problem)`` when a partition starts,
    ``healed(seconds)`` when it ends."""
    import nats.errors

    js = nc.jetstream(timeout=PROBE_TIMEOUT_S)
    while True:
        problem = None
        if not nc.is_connected:
            problem = "no connection to any server listed"
        else:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S + 0.5):
                    await js.account_info()
            except (TimeoutError, nats.errors.Error) as err:
                problem = f"the cluster does not answer ({type(err).__name__})"
        if problem is None:
            lasted = partition.answered(clock())
            if lasted is not None:
                await healed(lasted)
        elif partition.failed(clock(), problem):
            await cut(problem)
        await asyncio.sleep(PROBE_EVERY_S)
