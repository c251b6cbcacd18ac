"""What the coordinator's desks share: the agent's context (site, clock, metrics), the zones'
latest summaries and one outbox, plus each desk's own state file. A desk reads, decides and
queues envelopes; only the agent sends them, so a desk never awaits and is tested by calling it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from buildingd.agents.bus import Envelope, Performative
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import COORDINATOR, EVENTS_TOPIC, Content, EventMsg, ZoneStateMsg
from buildingd.clock import Clock
from buildingd.config.loader import Site
from buildingd.errors import BuildingdError
from buildingd.metrics import Metrics
from buildingd.statefile import set_aside_logged

log = logging.getLogger(__name__)
T = TypeVar("T")
TICK_S = 10.0  # simulated seconds between the agent's ticks of every desk


@dataclass
class Office:
    ctx: AgentContext  # ``ctx.site`` is replaced on reload: always read it from here
    zones: dict[str, ZoneStateMsg] = field(default_factory=dict)  # the latest summary per zone
    outbox: list[Envelope] = field(default_factory=list)
    name: str = COORDINATOR
    # Told when state kept only in memory (votes, air-handler resets) changed: the mirror to a
    # standby on another gateway pushes it at once.
    on_state_changed: Callable[[], None] | None = None
    # Awaited before the outbox goes out (write-ahead): True once what the desks keep is durable
    # where a standby would take it from (the site's KV bucket), False if it cannot be (the
    # lease lost first); None: nothing to wait for.
    durable: Callable[[], Awaitable[bool]] | None = None

    @property
    def site(self) -> Site:
        return self.ctx.site

    @property
    def clock(self) -> Clock:
        return self.ctx.clock

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    def send(self, content: Content, performative: Performative, receiver: str, **kw: Any) -> None:
        self.outbox.append(content.envelope(performative, self.name, receiver, **kw))

    def state_changed(self) -> None:
        if self.on_state_changed is not None:
            self.on_state_changed()

    def event(self, kind: str, severity: str, message: str) -> None:
        msg = EventMsg(
            kind=kind,
            source=self.name,
            severity=severity,
            message=message,
            timestamp=self.ctx.clock.now(),
        )
        self.send(msg, Performative.INFORM, EVENTS_TOPIC)


class KeptFile(Generic[T]):
    """A desk's state file in the state directory (``path`` None: not kept, as in unit tests):
    read once at start, an unreadable one set aside, counted and told; written only when what
    it keeps changed, a failed write logged (the desk goes on: only a restart would forget)."""

    def __init__(
        self,
        office: Office,
        path: Path | None,
        load: Callable[[Path], T],
        save: Callable[[Path, T], None],
    ) -> None:
        self.office, self.path = office, path
        self._load, self._save = load, save
        self._last: T | None = None
        self.on_saved: Callable[[], None] | None = None  # e.g. the mirror to a standby

    def load(self) -> T | None:
        """What the file keeps, or None (not kept, or unreadable and set aside)."""
        if self.path is None:
            return None
        try:
            data = self._load(self.path)
        except BuildingdError as err:
            aside = set_aside_logged(self.path, str(err))
            self.office.metrics.inc("buildingd_state_files_set_aside_total", file=self.path.name)
            self.office.event(
                "state-file", "error", f"unreadable {self.path}, moved to {aside}: {err}"
            )
            return None
        self._last = data
        return data

    def save(self, data: T) -> None:
        if self.path is None or data == self._last:
            return
        try:
            self._save(self.path, data)
        except OSError as err:
            log.error("coordinator: cannot write %s: %s", self.path, err)  # noqa: TRY400
        else:
            if self.on_saved is not None:
                self.on_saved()
        self._last = data  # said once per change
