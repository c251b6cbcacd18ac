"""The message bus: FIPA-ACL-style envelopes, bounded mailboxes, and the in-process transport.

Addresses are plain strings: an agent's name (``zone[f1-meeting]``) or a topic such as
``readings/f1-meeting``. Transports (this one, MQTT) only move envelopes; they never decide.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

log = logging.getLogger(__name__)


class Performative(StrEnum):
    """FIPA ACL communicative acts used by buildingd (FIPA SC00037J)."""

    INFORM = "inform"
    REQUEST = "request"
    AGREE = "agree"
    CFP = "cfp"
    PROPOSE = "propose"
    REFUSE = "refuse"
    ACCEPT_PROPOSAL = "accept-proposal"
    REJECT_PROPOSAL = "reject-proposal"
    INFORM_DONE = "inform-done"
    FAILURE = "failure"
    CANCEL = "cancel"
    NOT_UNDERSTOOD = "not-understood"


class Envelope(BaseModel):
    """One message. ``ontology`` names the content model; ``content`` is its JSON form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    performative: Performative
    sender: str = Field(min_length=1, max_length=200)
    receiver: str = Field(min_length=1, max_length=200)
    ontology: str = Field(min_length=1, max_length=100)
    content: dict[str, Any] = Field(default_factory=dict)
    conversation_id: str | None = Field(default=None, max_length=100)
    reply_with: str | None = Field(default=None, max_length=100)
    in_reply_to: str | None = Field(default=None, max_length=100)
    reply_by: datetime | None = None
    protocol: str | None = Field(default=None, max_length=100)
    # The content model this envelope was made from in this process (already validated when it
    # was built): receivers in the same process take it instead of validating ``content`` again.
    # Never set on an envelope that came from outside (a broker, the network).
    _model: Any = PrivateAttr(default=None)

    @classmethod
    def trusted(cls, model: Any, **values: Any) -> Envelope:
        """An envelope this process's own agents make from ``model``, a content model validated
        when it was built, and typed values: not validated again (pydantic's ``model_construct``
        costs more than validating; this about half as much). Never for outside input."""
        fields = _OPTIONAL.copy()  # in declaration order, as pydantic keeps them
        fields.update(values)
        if len(fields) != len(_OPTIONAL):
            unknown = values.keys() - _OPTIONAL.keys()
            raise TypeError(f"unknown envelope fields: {sorted(unknown)}")
        if not values.keys() >= _REQUIRED:
            missing = [name for name, value in fields.items() if value is _MISSING]
            raise TypeError(f"envelope fields {missing} are required")
        if "content" not in values:
            fields["content"] = {}
        return cls._made(fields, set(values), model)

    def to(self, receiver: str) -> Envelope:
        """The same message to ``receiver``: content and model shared (a round's cfps and
        awards differ only in whom they go to; a third of the cost of ``trusted``)."""
        fields = self.__dict__.copy()
        fields["receiver"] = receiver
        model = self.__pydantic_private__["_model"]  # type: ignore[index]
        return self._made(fields, self.__pydantic_fields_set__.copy(), model)

    @classmethod
    def _made(cls, fields: dict[str, Any], fields_set: set[str], model: Any) -> Envelope:
        env = _new(cls)
        _set(env, "__dict__", fields)
        _set(env, "__pydantic_fields_set__", fields_set)
        _set(env, "__pydantic_extra__", None)
        _set(env, "__pydantic_private__", {"_model": model})
        return env

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        if update and ("content" in update or "ontology" in update):
            copy._model = None  # the model no longer describes the content
        return copy

    def __eq__(self, other: object) -> bool:
        # The same message whether or not it carries its model.
        return isinstance(other, Envelope) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # content is a dict: never hashable

    def reply(
        self,
        performative: Performative,
        sender: str,
        content: dict[str, Any] | None = None,
        ontology: str | None = None,
    ) -> Envelope:
        return Envelope(
            performative=performative,
            sender=sender,
            receiver=self.sender,
            ontology=ontology or self.ontology,
            content=content or {},
            conversation_id=self.conversation_id,
            in_reply_to=self.reply_with,
            protocol=self.protocol,
        )


_MISSING: Any = object()  # a required field not given to ``Envelope.trusted``
# Field name -> its default, in declaration order: required ones ``_MISSING``; ``content``'s (a
# new dict each time) is made in ``trusted``.
_OPTIONAL: dict[str, Any] = {
    name: _MISSING if info.is_required() else info.default
    for name, info in Envelope.model_fields.items()
}
_REQUIRED = frozenset(name for name, value in _OPTIONAL.items() if value is _MISSING)
_new, _set = object.__new__, object.__setattr__  # looked up once: every message is made so


def new_conversation_id() -> str:
    return uuid.uuid4().hex[:16]


Overflow = Literal["drop_oldest", "block"]
# ``Mailbox.get_until`` keeps its armed timer for a deadline this close (event-loop seconds): a
# zone works its deadline out afresh before each wait, a few hundred nanoseconds apart.
DEADLINE_SLACK_S = 1e-6


class _Signal:
    """Wakes whoever waits for a mailbox's condition; the waiter checks the condition again.
    ``asyncio.Event`` would do, but each makes its waiters' deque at once (~860 bytes), and a
    1,000-zone site has some 4,000 mailboxes that almost never wait on two of their three."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] | None = None

    async def wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter.cancelled() and self._waiters and waiter in self._waiters:
                self._waiters.remove(waiter)  # a cancelled wait is not left behind

    def wake(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


class Mailbox:
    """A bounded inbox. When full, ``drop_oldest`` discards the oldest envelope (right for
    readings: the newest value supersedes) and ``block`` makes the sender wait (right for
    commands and negotiation messages, which must not be lost)."""

    def __init__(self, owner: str, maxsize: int = 1000, overflow: Overflow = "drop_oldest") -> None:
        self.owner = owner
        self.maxsize = maxsize
        self.overflow = overflow
        self._items: collections.deque[Envelope] = collections.deque()
        self._arrived = _Signal()  # for ``get``
        self._room = _Signal()  # for a ``block`` box's ``put``
        self._emptied = _Signal()  # for ``drained``
        self.dropped = 0
        self._waiter: asyncio.Future[None] | None = None  # ``get_until``'s, woken by a put
        self._timer: asyncio.TimerHandle | None = None  # ``get_until``'s deadline, kept armed

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, env: Envelope) -> None:
        if self._offer(env):
            return
        while len(self._items) >= self.maxsize:
            await self._room.wait()
        self._add(env)

    def put_nowait(self, env: Envelope) -> bool:
        """Enqueue without waiting; returns False (and counts a drop) if a ``block`` box is full."""
        if self._offer(env):
            return True
        self.dropped += 1
        return False

    def _offer(self, env: Envelope) -> bool:
        """Enqueue if that needs no wait (room, or ``drop_oldest``); False, nothing counted, if a
        ``block`` box is full."""
        if len(self._items) >= self.maxsize:
            if self.overflow == "block":
                return False
            self._items.popleft()
            self.dropped += 1
        self._add(env)
        return True

    def _add(self, env: Envelope) -> None:
        self._items.append(env)
        self._arrived.wake()
        self._wake_getter()

    def get_nowait(self) -> Envelope | None:
        """The oldest envelope, or None when the box is empty."""
        if not self._items:
            return None
        return self._taken()

    async def get(self) -> Envelope:
        while not self._items:
            await self._arrived.wait()
        return self._taken()

    async def get_until(self, deadline: float) -> Envelope | None:
        """The oldest envelope, or None if the box is still empty at ``deadline`` (event-loop
        time; one getter at a time). The box keeps one timer, moved only when the deadline
        does: an envelope that comes first costs no timer set up and cancelled (a zone waits
        like this for every message between two of its ticks)."""
        if self._items:
            return self._taken()
        loop = asyncio.get_running_loop()
        timer = self._timer
        if timer is None or abs(timer.when() - deadline) > DEADLINE_SLACK_S:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._deadline_passed)
        self._waiter = loop.create_future()
        try:
            await self._waiter
        except asyncio.CancelledError:  # the timer would keep a stopped agent's box till then
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            raise
        finally:
            self._waiter = None
        return self._taken() if self._items else None

    def _deadline_passed(self) -> None:
        self._timer = None
        self._wake_getter()

    def _wake_getter(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _taken(self) -> Envelope:
        env = self._items.popleft()
        self._room.wake()
        if not self._items:
            self._emptied.wake()
        return env

    async def drained(self) -> None:
        """Return once everything put in the box has been taken out."""
        while self._items:
            await self._emptied.wait()


class Transport(Protocol):
    """What agents see of the bus, whatever carries it."""

    async def send(self, env: Envelope) -> None: ...

    def subscribe(self, address: str, mailbox: Mailbox) -> None: ...

    def unsubscribe(self, address: str, mailbox: Mailbox) -> None: ...


class BusStats:
    """Messages counted by kind (performative/ontology) and by conversation (bounded)."""

    MAX_CONVERSATIONS = 1000

    def __init__(self) -> None:
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.by_conversation: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.undeliverable = 0
        self.invalid = 0
        self.unpublished = 0  # envelopes a remote transport could not publish (broker down)
        self.total = 0
        self._kinds: dict[tuple[Performative, str], str] = {}

    def count(self, env: Envelope) -> None:
        self.total += 1
        pair = (env.performative, env.ontology)
        kind = self._kinds.get(pair)
        if kind is None:  # the label made once per kind, not once per message
            kind = self._kinds[pair] = f"{env.performative.value}/{env.ontology}"
        self.by_kind[kind] += 1
        if env.conversation_id is not None:
            conv = self.by_conversation
            conv[env.conversation_id] = conv.get(env.conversation_id, 0) + 1
            conv.move_to_end(env.conversation_id)
            while len(conv) > self.MAX_CONVERSATIONS:
                conv.popitem(last=False)

    def messages_in(self, conversation_id: str) -> int:
        return self.by_conversation.get(conversation_id, 0)


class InProcessBus:
    """Delivers each envelope to every mailbox subscribed to its receiver address."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Mailbox]] = collections.defaultdict(list)
        self.stats = BusStats()
        self._seq = itertools.count()

    def subscribe(self, address: str, mailbox: Mailbox) -> None:
        if mailbox not in self._subs[address]:
            self._subs[address].append(mailbox)

    def unsubscribe(self, address: str, mailbox: Mailbox) -> None:
        boxes = self._subs.get(address)
        if boxes and mailbox in boxes:
            boxes.remove(mailbox)

    def subscribers(self, address: str) -> Iterable[Mailbox]:
        return tuple(self._subs.get(address, ()))

    async def send(self, env: Envelope) -> None:
        self.stats.count(env)
        boxes = self._subs.get(env.receiver)
        if not boxes:
            self.stats.undeliverable += 1
            return
        for box in tuple(boxes):
            await box.put(env)

    def deliver_nowait(self, env: Envelope) -> None:
        """Deliver without waiting (from a transport's receive callback); full mailboxes drop
        per their overflow rule, counted by the mailbox."""
        self.stats.count(env)
        boxes = self._subs.get(env.receiver)
        if not boxes:
            self.stats.undeliverable += 1
            return
        for box in tuple(boxes):
            box.put_nowait(env)
