"""``NatsBus``: the agent bus between the gateways of one site, over NATS JetStream.

Every envelope is sealed with the site's key (``nats.seal``: origin, counter, timestamp,
HMAC) and goes one of two ways (``subjects``):

- a request, call, proposal, award, refusal (any performative but ``inform``) whose receiver
  lives on another gateway is *durable*: published into the site's command stream on
  ``buildingd.<site>.cmd.<gateway>.<address>`` with ``Nats-Msg-Id`` = origin-counter (a publish
  repeated after a lost acknowledgement is stored once), and taken by that gateway's durable
  consumer, acknowledged after delivery to the local mailbox. A gateway that is down finds its
  commands when it comes back; one whose ``reply_by`` has passed by then is not delivered, but
  refused back to its sender (``RefusalMsg``) and counted (``expired``). Durable publishes are
  pipelined: the sender goes on once its message is handed over (up to ``IN_FLIGHT`` not
  stored yet); per receiving gateway they are stored in the order sent, each tried again
  until stored. What agents send to one gateway's agents in one loop turn (a round's cfps,
  awards, proposals, confirmations) goes as one *batch* on ``...cmd.<gateway>._batch``: one
  seal over all its envelopes, one publish; the receiver checks each envelope on its own.
- an inform to an agent of another gateway is published on core NATS to that gateway,
  ``buildingd.<site>.at.<gateway>.<address>``; the rest (readings, states, whatever has no
  known gateway) is delivered locally and published on ``buildingd.<site>.agent.<address>``.
  A gateway subscribes to its own ``at.<gateway>.>`` and to the ``agent.`` subject of each
  address one of its agents listens to (not ``own_only`` ones), so the NATS server sends it
  only what its agents hear (the rest of a 1,000-zone round's readings and states, about
  3,900 messages per gateway, it dropped after parsing them); its own messages do not come
  back (``no_echo``).

What arrives is checked before any agent sees it: the seal (a durable message's
timestamp against the time the stream stored it, so a command that waited an hour is not
"stale", and a replay stored later is), the counter (no replays), the envelope, the sender
(not one assigned to this gateway; commands only from zones and the coordinator;
``may_hear``), the content (``agents.content_check``). An inform from another gateway reaches
every local subscriber but those in ``own_only`` (the telemetry agent: each gateway writes what
its own agents said).
Refusals are counted by reason (``invalid_by_reason``, ``buildingd_bus_refused_total``) and
logged once per reason; a refused durable message is terminated, never redelivered.

On a site whose coordinator is elected (``leads`` given): what is for the coordinator and
durable goes, from a gateway that does not lead, to ``cmd._coordinator.<address>``, whose
site-wide consumer only the lease holder pulls (a command sent while a leader dies reaches the
next; a demand-response request is acknowledged once the event it opened is durable,
``settle``); and the bus is the last fence: an envelope sent as the coordinator from a gateway
that does not hold the lease (a leader paused past its lease, running on before its lease
keeper noticed) is dropped and counted (``buildingd_bus_fenced_total``), never sent.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from buildingd.agents.bus import Envelope, InProcessBus, Mailbox, Performative
from buildingd.agents.content_check import content_problem
from buildingd.agents.messages import COORDINATOR, RefusalMsg
from buildingd.metrics import Metrics
from buildingd.mqtt import payload as strict_json
from buildingd.nats import subjects
from buildingd.nats.connection import NatsErrors, connect
from buildingd.nats.partition import Partition
from buildingd.nats.seal import BusSealer, BusVerifier
from buildingd.settings import NatsSettings

if TYPE_CHECKING:
    import nats.aio.client
    import nats.aio.msg
    import nats.js

log = logging.getLogger(__name__)

COMMAND_SENDERS = ("zone[", "coordinator")  # devices take commands from these only
REFUSED_METRIC = "buildingd_bus_refused_total"
FENCED_METRIC = "buildingd_bus_fenced_total"
COORDINATOR_FETCH_WAIT_S = 1.0  # short: a leader that lost its lease stops pulling soon
UNPUBLISHED_METRIC = "buildingd_bus_unpublished_total"
PUBLISH_TIMEOUT_S = 2.0  # one try of a durable publish
# Durable publishes awaiting their acknowledgement at once (one bus): the sender goes on as soon
# as its message is handed to the client, and waits only when this many are unacknowledged.
IN_FLIGHT = 2048
# Envelopes for agents (not topics) queued for one gateway in the same loop turn go as one batch
# of up to this many: one seal, one publish, one acknowledgement, one delivery to take.
BATCHED = ("zone[", "device[", COORDINATOR)
MAX_BATCH = 500
STOP_FLUSH_S = 5.0  # at stop, unacknowledged publishes are waited for this long, then counted
# A durable publish is tried again (same Nats-Msg-Id) until this long has passed: a stream
# leader's election takes 4-9 s (its Raft timeouts); the sending agent waits meanwhile.
PUBLISH_DEADLINE_S = 30.0
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 1.0
API_TIMEOUT_S = 10.0  # stream and consumer set-up (a cluster may be electing a leader)
START_DEADLINE_S = 60.0  # ... tried again this long at start (inside systemd's start timeout)
# A command delivered and not acknowledged is delivered again after this: a delivery lost in
# flight when a NATS node dies (the node the gateway was connected to, or the consumer's leader)
# never reaches the bus, and came again only after JetStream's 30 s. Short, so a command is
# still early for its reply_by. A late acknowledgement is still taken: a gateway's own consumer
# is pulled by this gateway alone, one batch after the other, so nothing is delivered again
# while its batch is under way; a request held for the coordinator (``_settle``) longer than
# this may go to a new leader, which takes it as the same event (its conversation id, the
# desk's ``request``), and the old leader's settle fails. No max_deliver: every delivery
# is judged by ``_take`` (refused as a replay, expired at its reply_by, or not yet at start-up
# NOT_YET_TRIES times), and the stream's max_age bounds the rest.
COMMAND_ACK_WAIT_S = 5.0
FETCH_BATCH = 100
FETCH_WAIT_S = 5.0  # a pull request waits this long for commands, then is renewed
# nats-py's fetch returns once its batch is full or its time is up, however early the first
# message came: the bus waits for one command alone, then takes what follows in batches each
# waiting at most this long (a round's 1,000 answers no longer wait for the full FETCH_WAIT_S).
BURST_WAIT_S = 0.02
NOT_YET_DELAY_S = 1.0  # a command for an agent not started yet comes back after this
NOT_YET_TRIES = 60  # ... this many times, then it is terminated as undeliverable
Route = Callable[[str], str | None]  # agent address -> the gateway it lives on (None: unknown)


class Refused(Exception):
    """An incoming message refused: ``reason`` is the metric label, ``detail`` for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def is_durable(env: Envelope) -> bool:
    return env.performative is not Performative.INFORM


class NatsBus(InProcessBus):
    """``route``: on which gateway an agent address lives (``gateway_route``); ``is_local``:
    whether a sender is one of this process's agents; ``key``: the site's bus key;
    ``may_hear``: why a receiver may not hear from a sender (``agents.hearing``), or None."""

    def __init__(
        self,
        settings: NatsSettings,
        site_id: str,
        gateway_id: str,
        route: Route,
        is_local: Callable[[str], bool],
        key: bytes,
        may_hear: Callable[[Envelope], str | None] | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        leads: Callable[[], bool] | None = None,
        own_only: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        # Agents that hear only what this gateway's agents say (the telemetry writer: what
        # another gateway's agents say is written there, so each line once per site).
        self.own_only = own_only
        # What the coordinator's queue holds for one of ``settle_for`` (demand-response
        # requests) is acknowledged only once ``settle()`` says the coordinator took it and
        # what it changed is durable (the site's KV bucket): a leader that dies in between
        # leaves it in the stream for the next. Set by the service on a candidate.
        self.settle: Callable[[], Awaitable[bool]] | None = None
        self.settle_for: frozenset[str] = frozenset()
        self.settings = settings
        self.errors = NatsErrors(metrics)
        self.nc: nats.aio.client.Client | None = None  # connected by ``start``
        self.js: nats.js.JetStreamContext | None = None
        self.site_id, self.gateway_id = site_id, gateway_id
        self.route, self.is_local, self.may_hear = route, is_local, may_hear
        self.clock, self.metrics = clock, metrics
        self.leads = leads  # None: the coordinator is not elected (no fence, no shared queue)
        self.fenced = 0  # envelopes refused as the coordinator's while not leading
        self.partition: Partition | None = None  # watched on a site over gateways
        self.origin = uuid.uuid4().hex[:12]
        self.sealer = BusSealer(key, self.origin, clock)
        self.verifier = BusVerifier(key, clock)
        self.stream = subjects.stream_name(site_id)
        self.invalid_by_reason: collections.Counter[str] = collections.Counter()
        self.expired = 0
        self.duplicates = 0  # durable publishes the stream had already stored
        self.fetch_errors = 0  # failed pulls of this gateway's commands (logged once a run)
        self._fetch_ok = True
        self._logged: set[str] = set()  # refusal reasons logged (then: counted only)
        # Addresses this gateway's agents listen to (not ``own_only`` ones), each heard on
        # core NATS once it has a subscription (kept until stop) when it has no gateway.
        self._heard: set[str] = set()
        self._subs_core: list[Any] = []  # the core subscriptions
        self._subscribing: set[asyncio.Task[None]] = set()
        self.core_received = 0  # messages the core subscriptions took
        self._pull: Any = None  # the durable consumer's pull subscription
        self._coordinator_pull: Any = None  # the coordinator's (a candidate's, while leading)
        # Durable publishes under way: per gateway, one task of this bus publishing what is
        # queued for it, in order (awaited or cancelled at stop); the window bounds the
        # envelopes queued and awaiting their acknowledgement.
        self.publishing: set[asyncio.Task[None]] = set()
        self._window = asyncio.Semaphore(IN_FLIGHT)
        self.in_flight = 0  # envelopes handed to the bus, not stored (nor given up) yet
        self._queued: dict[str, list[Envelope]] = {}  # per gateway, not published yet
        self._publishers: dict[str, asyncio.Task[None]] = {}  # per gateway, publishing

    # -- start, run, stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to the site's core subjects, make sure the command stream and this
        gateway's consumer exist. Commands are taken only once ``run`` runs (after the local
        agents have subscribed)."""
        import nats.errors
        from nats.js.api import (
            AckPolicy,
            ConsumerConfig,
            DeliverPolicy,
            RetentionPolicy,
            StorageType,
            StreamConfig,
        )
        from nats.js.errors import NotFoundError

        self.nc = nc = await connect(
            self.settings, f"buildingd-{self.site_id}-{self.gateway_id}", self.errors
        )
        heard = list(self._heard)  # before the connection; later ones: ``subscribe`` subscribes
        self.js = nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
        # What other gateways address to this gateway's agents (and, on a candidate, to the
        # coordinator wherever it runs: the leader's takes it).
        queues = [self.gateway_id]
        if self.leads is not None:
            queues.append(subjects.COORDINATOR_QUEUE)
        for queue in queues:
            await self._hear(subjects.gateway_agents(self.site_id, queue))
        for address in heard:
            await self._hear_topic(address)
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{subjects.site_root(self.site_id)}.cmd.>"],
            retention=RetentionPolicy.WORK_QUEUE,  # a command is gone once its gateway took it
            storage=StorageType.FILE,
            num_replicas=self.settings.replicas,
            max_age=self.settings.command_max_age_s,
            duplicate_window=self.settings.duplicate_window_s,
        )
        api = nc.jetstream(timeout=API_TIMEOUT_S)

        async def pull(queue: str, durable: str) -> Any:
            consumer = ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=COMMAND_ACK_WAIT_S,
                max_ack_pending=1000,
                filter_subject=subjects.gateway_commands(self.site_id, queue),
            )
            # Created, or updated when it exists (a consumer made by an older version keeps
            # its ack_wait otherwise: pull_subscribe only binds to an existing one).
            await api.add_consumer(self.stream, consumer)
            return await api.pull_subscribe(subjects.gateway_commands(self.site_id, queue),
                                            durable=durable, stream=self.stream,
                                            config=consumer)  # fmt: skip

        # A cluster starting with its gateways (a boot) may have no quorum yet, or not see a
        # peer ("no suitable peers for placement"): tried again until START_DEADLINE_S.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_DEADLINE_S
        while True:
            try:
                try:
                    await api.stream_info(self.stream)
                except NotFoundError:
                    await api.add_stream(config)
                if self._pull is None:
                    self._pull = await pull(self.gateway_id,
                                            subjects.consumer_name(self.gateway_id))  # fmt: skip
                if self.leads is not None and self._coordinator_pull is None:
                    self._coordinator_pull = await pull(
                        subjects.COORDINATOR_QUEUE, subjects.COORDINATOR_CONSUMER
                    )
                return
            except (TimeoutError, nats.errors.Error) as err:
                if loop.time() >= deadline:
                    raise
                log.warning("bus: the command stream is not ready (%s: %s); trying again",
                            type(err).__name__, err)  # fmt: skip
                await asyncio.sleep(1.0)

    async def run(self) -> None:
        """Take this gateway's commands (and, while it leads, the coordinator's) until
        cancelled."""
        async with asyncio.TaskGroup() as tasks:
            if self._coordinator_pull is not None and self.leads is not None:
                tasks.create_task(self._take_all(self._coordinator_pull, self.leads,
                                                 COORDINATOR_FETCH_WAIT_S, hold=True),
                                  name="nats-bus.coordinator")  # fmt: skip
            await self._take_all(self._pull, lambda: True, FETCH_WAIT_S)

    async def _take_all(
        self, pull: Any, active: Callable[[], bool], wait_s: float, hold: bool = False
    ) -> None:
        """Fetch from one consumer while ``active()`` (checked before each fetch and each
        message: a message fetched after the lease was lost goes back at once). ``hold``: a
        message for one of ``settle_for`` is acknowledged after its batch, by ``_settle``."""
        import nats.errors

        burst = False  # commands came: take what follows in batches, briefly waited for
        while True:
            if not active():
                await asyncio.sleep(wait_s / 4)
                continue
            try:
                if burst:
                    msgs = await pull.fetch(FETCH_BATCH, timeout=BURST_WAIT_S)
                else:
                    msgs = await pull.fetch(1, timeout=wait_s)  # returns with the first
            except TimeoutError:  # nats' and asyncio's (fetch raises either): none waiting
                burst = False
                continue
            except nats.errors.Error as err:  # the cluster away, the consumer electing its
                self.fetch_errors += 1  # leader (503 right after it is created): again soon
                if self.fetch_errors == 1 or self._fetch_ok:
                    log.warning("bus: taking commands failed (%s: %s); trying again",
                                type(err).__name__, err)  # fmt: skip
                self._fetch_ok = False
                await asyncio.sleep(NOT_YET_DELAY_S)
                continue
            if not self._fetch_ok:
                self._fetch_ok = True
                if self.fetch_errors:
                    log.info("bus: taking commands again")
            burst = True
            held: list[Any] | None = [] if hold else None
            for msg in msgs:
                try:
                    if not active():
                        await msg.nak()  # for the next leader
                        continue
                    await self._take(msg, held)
                except nats.errors.Error as err:  # its ack lost: redelivered after ack_wait,
                    self._ack_failed(err)  # then refused as a replay if it was delivered
            if held:
                await self._settle(held)

    async def _settle(self, held: list[Any]) -> None:
        """Acknowledge what was held once ``settle()`` says the coordinator took it and its
        state is durable; else hand it back for the next leader (its counter forgotten: if
        that is this gateway again, it is taken again, not refused as a replay)."""
        import nats.errors

        settled = self.settle is not None and await self.settle()
        for msg in held:
            try:
                if settled:
                    await msg.ack()
                    continue
                body = strict_json.loads(msg.data)
                self.verifier.forget(body["origin"], body["counter"])
                await msg.nak()
            except nats.errors.Error as err:
                self._ack_failed(err)

    def _ack_failed(self, err: Exception) -> None:
        self.fetch_errors += 1
        log.warning("bus: acknowledging a command failed (%s: %s)", type(err).__name__, err)

    async def stop(self) -> None:
        """Wait for the durable publishes under way (up to ``STOP_FLUSH_S``; the rest are
        counted as unpublished), unsubscribe and close the connection (unacknowledged commands
        stay in the stream)."""
        await self.published(STOP_FLUSH_S)
        for task in list(self.publishing):
            task.cancel()
        for task in list(self._subscribing):
            task.cancel()
        for sub in (*self._subs_core, self._pull, self._coordinator_pull):
            if sub is not None:
                await sub.unsubscribe()
        self._subs_core, self._pull, self._coordinator_pull = [], None, None
        if self.nc is not None:
            await self.nc.close()

    # -- listening -------------------------------------------------------------------------

    def subscribe(self, address: str, mailbox: Mailbox) -> None:
        """As in process; and an address no agent here listened to before is heard on core
        NATS from now on (a message another gateway sent before the server knew is lost, as
        any core message sent while nobody listens)."""
        super().subscribe(address, mailbox)
        if mailbox.owner in self.own_only or address in self._heard:
            return
        self._heard.add(address)
        if self.nc is not None:
            task = asyncio.get_running_loop().create_task(self._hear_topic(address))
            self._subscribing.add(task)
            task.add_done_callback(self._subscribing.discard)

    async def _hear_topic(self, address: str) -> None:
        """Subscribe to ``address``'s ``agent.`` subject, if the other gateways publish to it
        there (it has no gateway; an agent of a gateway is reached on ``at.<gateway>``)."""
        if self.route(address) is None:
            await self._hear(subjects.agent_subject(self.site_id, address))

    async def _hear(self, subject: str) -> None:
        import nats.errors

        assert self.nc is not None
        try:
            self._subs_core.append(await self.nc.subscribe(subject, cb=self._on_core))
        except nats.errors.Error as err:  # the connection closed (stopping)
            log.warning("bus: could not subscribe to %s (%s)", subject, err)

    async def listening(self) -> None:
        """Until the server has every subscription asked for so far (a test sends then)."""
        if self._subscribing:
            await asyncio.wait(list(self._subscribing))
        if self.nc is not None:
            await self.nc.flush()

    # -- sending ---------------------------------------------------------------------------

    async def send(self, env: Envelope) -> None:
        if env.sender == COORDINATOR and self.leads is not None and not self.leads():
            return self._fence(env)
        gateway = self.route(env.receiver)
        if gateway is not None and gateway != self.gateway_id:  # it lives elsewhere
            self.stats.count(env)
            if is_durable(env):
                await self._publish_durable(env, gateway)
            else:
                await self._publish_core(env, gateway)
            return
        await super().send(env)
        if gateway is None:  # a topic, or an agent of no known gateway: whoever listens
            await self._publish_core(env, None)

    async def _publish_core(self, env: Envelope, gateway: str | None) -> None:
        import nats.errors

        subject = (subjects.agent_subject(self.site_id, env.receiver) if gateway is None else
                   subjects.gateway_agent_subject(self.site_id, gateway, env.receiver))  # fmt: skip
        body = self.sealer.seal(subject, env.model_dump(mode="json"))
        if self.nc is None:
            return self._unpublished(env, "not connected yet")
        try:
            await self.nc.publish(subject, body)
        except nats.errors.Error as err:  # the client closed, its buffer full: counted
            self._unpublished(env, str(err) or type(err).__name__)

    async def published(self, timeout_s: float | None = None) -> None:
        """Until every durable publish sent so far is stored or given up (``unpublished``)."""
        if self.publishing:
            await asyncio.wait(list(self.publishing), timeout=timeout_s)

    async def _publish_durable(self, env: Envelope, gateway: str) -> None:
        """Queue the envelope for ``gateway`` and go on: the sender waits only when
        ``IN_FLIGHT`` envelopes are not stored yet. One task per gateway (``_deliver_to``)
        publishes what is queued for it, in the order queued."""
        if self.js is None:  # never connected: nothing to hand it to
            return self._unpublished(env, "not connected yet")
        await self._window.acquire()
        self.in_flight += 1
        self._queued.setdefault(gateway, []).append(env)
        if gateway not in self._publishers:
            task = asyncio.create_task(self._deliver_to(gateway),
                                       name=f"nats-bus.publish[{gateway}]")  # fmt: skip
            self._publishers[gateway] = task
            self.publishing.add(task)
            task.add_done_callback(self.publishing.discard)

    async def _deliver_to(self, gateway: str) -> None:
        """Publish what is queued for ``gateway`` until nothing is: started in the loop turn
        after the first envelope was queued, so what agents sent to it meanwhile (a round's
        cfps, its zones' confirmations) goes together, as a batch (one seal, one publish, one
        acknowledgement); what is queued while a publish awaits its acknowledgement goes
        next. An envelope for a topic (not ``BATCHED``: a demand-response request is
        acknowledged on its own, once settled) goes alone, as does one alone in its turn."""
        envelopes: list[Envelope] = []
        try:
            while envelopes or self._queued.get(gateway):
                if not envelopes:
                    envelopes = self._queued.pop(gateway)
                chunk = self._next_chunk(envelopes)
                await self._store(chunk, gateway)
                del envelopes[: len(chunk)]
                for _ in chunk:
                    self._window.release()
                self.in_flight -= len(chunk)
        except asyncio.CancelledError:  # at stop, past STOP_FLUSH_S
            for env in envelopes + self._queued.pop(gateway, []):
                self._unpublished(env, "the bus stopped before it was stored")
                self._window.release()
                self.in_flight -= 1
            raise
        finally:
            del self._publishers[gateway]

    def _next_chunk(self, envelopes: list[Envelope]) -> list[Envelope]:
        """The envelopes at the head that go in one publish: one alone, or as many as
        ``MAX_BATCH`` in a row that may be batched."""
        if not envelopes[0].receiver.startswith(BATCHED):
            return envelopes[:1]
        n = 1
        while n < min(len(envelopes), MAX_BATCH) and envelopes[n].receiver.startswith(BATCHED):
            n += 1
        return envelopes[:n]

    async def _store(self, chunk: list[Envelope], gateway: str) -> None:
        """Seal and publish ``chunk`` (one envelope on its receiver's subject, several as a
        batch) until the stream acknowledges it, tried again with the same ``Nats-Msg-Id``
        (stored once however often it is sent) until ``PUBLISH_DEADLINE_S``, then counted
        (each envelope). A batch bigger than the server takes is sent in halves."""
        import nats.errors

        if len(chunk) == 1:
            subject = subjects.command_subject(self.site_id, gateway, chunk[0].receiver)
            body = self.sealer.seal(subject, chunk[0].model_dump(mode="json"))
        else:
            subject = subjects.batch_subject(self.site_id, gateway)
            body = self.sealer.seal(subject, [env.model_dump(mode="json") for env in chunk])
            if self.nc is not None and len(body) > self.nc.max_payload:
                half = len(chunk) // 2
                await self._store(chunk[:half], gateway)
                return await self._store(chunk[half:], gateway)
        msg_id = f"{self.origin}-{self.sealer.counter}"
        problem = "not connected yet"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_DEADLINE_S
        delay_s = RETRY_FIRST_S
        while self.js is not None:
            try:
                ack = await self.js.publish(subject, body, headers={"Nats-Msg-Id": msg_id},
                                            stream=self.stream)  # fmt: skip
            except nats.errors.Error as err:  # no ack: the same message id again, soon
                problem = str(err) or type(err).__name__
                if loop.time() + delay_s > deadline:
                    break
                await asyncio.sleep(delay_s)  # backoff: the stream may be electing a leader
                delay_s = min(2 * delay_s, RETRY_MAX_S)
                continue
            if ack.duplicate:
                self.duplicates += 1
            return
        for env in chunk:
            self._unpublished(env, problem)

    def _fence(self, env: Envelope) -> None:
        self.fenced += 1
        kind = f"{env.performative.value}/{env.ontology}"
        if self.metrics is not None:
            self.metrics.inc(FENCED_METRIC, kind=kind)
        if self.fenced == 1:
            log.warning("bus: %s to %s sent as the coordinator, but this gateway does not lead: "
                        "dropped (further ones are only counted)", kind, env.receiver)  # fmt: skip

    def _unpublished(self, env: Envelope, problem: str) -> None:
        kind = f"{env.performative.value}/{env.ontology}"
        self.stats.unpublished += 1
        if self.metrics is not None:
            self.metrics.inc(UNPUBLISHED_METRIC, kind=kind)
        log.warning("bus: %s to %s not published (%s)", kind, env.receiver, problem)

    # -- receiving -------------------------------------------------------------------------

    async def _on_core(self, msg: nats.aio.msg.Msg) -> None:
        self.core_received += 1
        address = subjects.token_address(msg.subject.rsplit(".", 1)[-1])
        boxes = [box for box in self.subscribers(address) if box.owner not in self.own_only]
        if not boxes:
            return  # not for an agent of ours
        try:
            env = self._check(msg.subject, msg.data, None)
        except Refused as why:
            self._count(why.reason, why.detail)
            return
        if env is not None:
            self.stats.count(env)
            for box in boxes:
                box.put_nowait(env)

    async def _take(self, msg: nats.aio.msg.Msg, held: list[Any] | None = None) -> None:
        """One durable message: delivered and acknowledged (or, for one of ``settle_for``,
        added to ``held`` when given), refused and terminated, or (its agent not subscribed
        yet, at start-up) handed back for later."""
        token = msg.subject.rsplit(".", 1)[-1]
        if token == subjects.BATCH_TOKEN:
            return await self._take_batch(msg)
        address = subjects.token_address(token)
        meta = msg.metadata
        if not self.subscribers(address):
            if meta.num_delivered < NOT_YET_TRIES:
                await msg.nak(delay=NOT_YET_DELAY_S)
                return
            await msg.term()
            self._count("undeliverable", f"no agent {address} on gateway {self.gateway_id}")
            return
        stored = meta.timestamp.timestamp()
        try:
            env = self._check(msg.subject, msg.data, stored)
        except Refused as why:
            await msg.term()
            self._count(why.reason, why.detail)
            return
        if env is None:
            await msg.term()
            return
        if env.reply_by is not None and env.reply_by.timestamp() < self.clock():
            await msg.term()
            await self._refuse_expired(env)
            return
        await InProcessBus.send(self, env)  # waits for room in a blocking mailbox
        if held is not None and address in self.settle_for:
            held.append(msg)
            return
        await msg.ack()

    async def _take_batch(self, msg: nats.aio.msg.Msg) -> None:
        """A batch of durable envelopes (one seal): refused whole when its seal or shape is
        wrong (counted once); else each envelope checked, refused and counted on its own, or
        delivered (or refused back to its sender past its reply-by), then the batch
        acknowledged. While one of its receivers has not subscribed yet (at start-up), the
        whole batch is handed back for later (nothing of it delivered), as a single command."""
        meta = msg.metadata
        queue = subjects.token_address(msg.subject.rsplit(".", 2)[-2])
        try:
            opened = self._open(msg.subject, msg.data, meta.timestamp.timestamp())
        except Refused as why:
            await msg.term()
            self._count(why.reason, why.detail)
            return
        if opened is None or not isinstance(opened[0]["envelope"], list):
            await msg.term()
            self._count("wrong shape", "a batch is {origin, envelope: [...]}")
            return
        body, own = opened

        def for_here(address: str) -> bool:
            if queue == subjects.COORDINATOR_QUEUE:
                return address == COORDINATOR
            return self.route(address) == self.gateway_id

        receivers = {e.get("receiver") for e in body["envelope"] if isinstance(e, dict)}
        waiting = [r for r in receivers
                   if isinstance(r, str) and for_here(r) and not self.subscribers(r)]  # fmt: skip
        if waiting and meta.num_delivered < NOT_YET_TRIES:
            self.verifier.forget(body["origin"], body["counter"])  # taken again later
            await msg.nak(delay=NOT_YET_DELAY_S)
            return
        for data in body["envelope"]:
            try:
                env = self._vet(data, own, for_here)
            except Refused as why:
                self._count(why.reason, why.detail)
                continue
            if not self.subscribers(env.receiver):
                self._count("undeliverable", f"no agent {env.receiver} on {self.gateway_id}")
            elif env.reply_by is not None and env.reply_by.timestamp() < self.clock():
                await self._refuse_expired(env)
            else:
                await InProcessBus.send(self, env)
        await msg.ack()

    async def _refuse_expired(self, env: Envelope) -> None:
        self.expired += 1
        reply_by = env.reply_by.isoformat() if env.reply_by is not None else "?"
        self._count("expired", f"{env.ontology} from {env.sender} to {env.receiver}, "
                               f"reply by {reply_by}")  # fmt: skip
        refusal = RefusalMsg(
            reason=f"expired: not delivered before its reply-by time {reply_by}",
            refused_ontology=env.ontology,
        )
        await self.send(
            Envelope(
                performative=Performative.REFUSE,
                sender=env.receiver,
                receiver=env.sender,
                ontology=refusal.ontology,
                content=refusal.model_dump(mode="json"),
                conversation_id=env.conversation_id,
                in_reply_to=env.reply_with,
                protocol=env.protocol,
            )
        )

    def _check(self, subject: str, data: bytes, stored: float | None) -> Envelope | None:
        """The envelope, None for an echo of our own, or ``Refused`` (why)."""
        opened = self._open(subject, data, stored)
        if opened is None:
            return None
        body, own = opened
        receiver = subjects.token_address(subject.rsplit(".", 1)[-1])
        return self._vet(body["envelope"], own, lambda address: address == receiver)

    def _open(self, subject: str, data: bytes, stored: float | None) -> tuple[Any, bool] | None:
        """The message's body and whether it is our own, once its shape and seal are right;
        None for an echo of our own core message; else ``Refused``."""
        try:
            body = strict_json.loads(data)
        except ValueError as err:
            raise Refused("not JSON", str(err)) from err
        if not isinstance(body, dict) or not isinstance(body.get("envelope"), dict | list):
            raise Refused("wrong shape", "expected {origin, envelope}")
        own = body.get("origin") == self.origin
        if own and stored is None:
            return None  # the echo of our own core message
        # (A durable one of our own comes back only through the coordinator's queue: sent
        # before this gateway led, taken now that it does.)
        problem = self.verifier.problem(subject, body, now=stored)
        if problem is not None:
            raise Refused(*problem)
        return body, own

    def _vet(self, data: Any, own: bool, for_here: Callable[[str], bool]) -> Envelope:
        """One envelope of a sealed message, checked (``for_here``: whether its receiver is one
        the subject it came on serves), or ``Refused``."""
        try:
            env = Envelope.model_validate(data)
        except ValidationError as err:
            raise Refused("invalid envelope", str(err.errors()[0]["msg"])) from err
        if not for_here(env.receiver):
            raise Refused("receiver mismatch", f"envelope is for {env.receiver}")
        # An agent assigned to this gateway speaks from here only; service agents every
        # gateway runs (mqtt-bridge, telemetry, supervisor) have no gateway of their own.
        if not own and self.is_local(env.sender) and self.route(env.sender) == self.gateway_id:
            raise Refused("forged sender", f"{env.sender} is a local agent")
        if env.ontology == "command" and not env.sender.startswith(COMMAND_SENDERS):
            raise Refused("forged sender", f"{env.sender} may not command devices")
        forbidden = self.may_hear(env) if self.may_hear is not None else None
        if forbidden is not None:
            raise Refused("forbidden sender", f"from {env.sender}: {forbidden}")
        problem_text = content_problem(env)
        if problem_text is not None:
            raise Refused("invalid content", f"{env.ontology}: {problem_text}")
        return env

    def _count(self, reason: str, detail: str) -> None:
        self.stats.invalid += 1
        self.invalid_by_reason[reason] += 1
        if self.metrics is not None:
            self.metrics.inc(REFUSED_METRIC, reason=reason)
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("bus: refused (%s): %s; further ones are only counted", reason, detail)


def gateway_route(
    gateway_of_device: Callable[[str], str | None],
    gateway_of_zone: Callable[[str], str | None],
    coordinator_gateway: Callable[[], str | None] = lambda: None,
    coordinator_topics: frozenset[str] = frozenset(),
) -> Route:
    """A ``Route`` from the site's assignment (``config.gateways.GatewayMap``): ``device[x]``
    and ``zone[x]`` where they run, the coordinator (and ``coordinator_topics``, those only it
    hears) where it runs now (it moves with the lease); other topics have no gateway."""

    def route(address: str) -> str | None:
        if address in coordinator_topics:
            return coordinator_gateway()
        if address.startswith("device[") and address.endswith("]"):
            return gateway_of_device(address[7:-1])
        if address.startswith("zone[") and address.endswith("]"):
            return gateway_of_zone(address[5:-1])
        if address == COORDINATOR:
            return coordinator_gateway()
        return None

    return route
