"""BACnet change-of-value subscriptions of one device (SubscribeCOV, ASHRAE 135 13.14).

One subscription per ``cov: true`` point, with the device's lifetime: bacpypes3 renews it 2 s
before it ends, in a task of its own whose failure it does not report; that task is checked
here, and a lapsed subscription is made again with jittered backoff. Values arrive with the
notifications; while a subscription is in force an unchanged value counts as current.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from buildingd.clock import Clock
from buildingd.config.bacnet import BacnetPoint
from buildingd.drivers.bacnet_codec import (
    BacnetFailure,
    CodecError,
    decode_value,
    failure_of,
    object_id,
    plain,
)
from buildingd.points import Sample

log = logging.getLogger(__name__)

BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0


class CovSubscriptions:
    """The subscriptions of one device, the latest value of each point and an event set on
    every notification."""

    def __init__(
        self,
        device_id: str,
        app: Any,
        peer: Any,
        points: list[BacnetPoint],
        lifetime_s: int,
        clock: Clock,
        count: Callable[[BacnetFailure], None],
    ) -> None:
        self.device_id, self.app, self.peer = device_id, app, peer
        self.points, self.lifetime_s, self.clock, self.count = points, lifetime_s, clock, count
        self.values: dict[str, Sample] = {}
        self.alive: set[str] = set()  # points whose subscription is in force
        self.notifications = 0
        self._changed = asyncio.Event()

    def current(self, now: float) -> dict[str, Sample]:
        """Latest values; those of live subscriptions stamped ``now`` (the device would have
        said if they had changed), the others as old as their last notification."""
        return {
            point_id: Sample(s.value, now) if point_id in self.alive else s
            for point_id, s in self.values.items()
        }

    async def wait_update(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for point in self.points:
                group.create_task(
                    self._keep(point), name=f"bacnet[{self.device_id}].cov[{point.id}]"
                )

    async def _keep(self, point: BacnetPoint) -> None:
        from bacpypes3.apdu import ErrorRejectAbortNack
        from bacpypes3.primitivedata import ObjectIdentifier

        oid = ObjectIdentifier(object_id(point))
        check_s = self.clock.to_loop_seconds(max(1.0, self.lifetime_s / 2))
        backoff_s = BACKOFF_MIN_S
        while True:
            try:
                async with self.app.change_of_value(
                    self.peer, oid, None, point.cov_confirmed, self.lifetime_s
                ) as subscription:
                    self.alive.add(point.id)
                    backoff_s = BACKOFF_MIN_S
                    while True:
                        try:
                            async with asyncio.timeout(check_s):
                                prop, value = await subscription.get_value()
                        except TimeoutError:
                            _raise_if_renewal_failed(subscription)
                            continue
                        if str(prop) == "present-value":
                            self._notified(point, value)
            except ErrorRejectAbortNack as err:
                failure = failure_of(err)
                self.count(failure)
                log.warning("device %s: SubscribeCOV %s: %s", self.device_id, point.id,
                            failure.counter)  # fmt: skip
            finally:
                self.alive.discard(point.id)
            await asyncio.sleep(backoff_s * random.uniform(0.5, 1.5))
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    def _notified(self, point: BacnetPoint, raw: Any) -> None:
        try:
            value = decode_value(point.object_type, plain(raw))
        except CodecError as err:
            log.warning("device %s: %s: %s", self.device_id, point.id, err)
            return
        self.values[point.id] = Sample(value, self.clock.monotonic())
        self.notifications += 1
        self._changed.set()


def _raise_if_renewal_failed(subscription: Any) -> None:
    task = subscription.refresh_subscription_task
    if task is not None and task.done() and not task.cancelled():
        error = task.exception()
        if error is not None:
            raise error
