"""``MqttBus``: the agent bus carried over MQTT, so agents in several processes or gateways talk.

Every envelope is delivered locally as on the in-process bus and published as JSON on
``<prefix>/<site>/bus/<receiver address>``, sealed with the site's key (``bus_auth``)::

    {"origin": "<instance id>", "counter": n, "ts": unix_s, "envelope": {...}, "mac": "..."}

Envelopes from the broker are checked before any agent sees them: strict JSON (no ``NaN`` or
``Infinity``); the seal, age and counter (only a gateway holding the site's key, no replays);
the envelope; its sender (not one of this process's own agents, and one the receiver may hear
from: ``agents.hearing``); its content against the model of its ontology. A refused one, or one
too large for the connection, is counted (``BusStats.invalid``, and
``buildingd_bus_refused_total{reason}``) and logged once per change of reason on its topic,
never raised into the receiver. Echoes of our own publishes are skipped by ``origin``.
An envelope that could not be published (broker down) is counted in ``BusStats.unpublished`` and
``buildingd_bus_unpublished_total{kind}`` and logged once per outage; local receivers have it.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from collections.abc import Callable

from pydantic import ValidationError

from buildingd.agents.bus import Envelope, InProcessBus, Performative
from buildingd.agents.messages import Content
from buildingd.mqtt import payload as strict_json
from buildingd.mqtt.bus_auth import BusSealer, BusVerifier
from buildingd.mqtt.connection import MqttConnection

log = logging.getLogger(__name__)

# FIPA performatives whose loss matters get QoS 1; readings and state are superseded anyway.
RELIABLE = {p for p in Performative if p is not Performative.INFORM}
COMMAND_SENDERS = ("zone[", "coordinator")
REFUSED_METRIC = "buildingd_bus_refused_total"
UNPUBLISHED_METRIC = "buildingd_bus_unpublished_total"
LOGGED_TOPICS = 1000  # topics whose last logged refusal reason is kept (then: counted only)
HearingCheck = Callable[[Envelope], str | None]


def content_models() -> dict[str, list[type[Content]]]:
    """Content models by ontology, from every ``Content`` subclass imported so far (several
    models may share one ontology: the demand-response call, proposal and award)."""
    out: dict[str, list[type[Content]]] = {}
    todo: list[type[Content]] = list(Content.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        ontology = getattr(cls, "ontology", None)
        if isinstance(ontology, str):
            out.setdefault(ontology, []).append(cls)
    return out


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(x) for x in first["loc"])
    return f"{where}: {first['msg']}"


_MODELS: dict[str, list[type[Content]]] = {}  # content_models(), read again on a miss


def content_problem(env: Envelope) -> str | None:
    """Why the content does not fit its ontology's model, or None (also for an unknown ontology:
    the receiving agent refuses what it does not understand)."""
    return checked_content(env)[1]


def checked_content(env: Envelope) -> tuple[Content | None, str | None]:
    """The content validated into the first model of its ontology it fits, or why it fits none
    (``None, None`` for an unknown ontology)."""
    content, problem = _fit(env, _MODELS.get(env.ontology, []))
    if content is None:  # perhaps a model imported since the table was made: look again
        _MODELS.clear()
        _MODELS.update(content_models())
        content, problem = _fit(env, _MODELS.get(env.ontology, []))
    return content, problem


def _fit(env: Envelope, models: list[type[Content]]) -> tuple[Content | None, str | None]:
    problem = None
    for model in models:
        try:
            return model.model_validate(env.content), None
        except ValidationError as err:
            problem = problem or _first_error(err)
    return None, problem


class MqttBus(InProcessBus):
    """``key``: the site's bus key (``bus_auth.load_or_create_key``); ``may_hear``: why a
    receiver may not hear from a sender (``agents.hearing``), None to skip that check."""

    def __init__(
        self,
        conn: MqttConnection,
        is_local: Callable[[str], bool],
        key: bytes,
        may_hear: HearingCheck | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.conn = conn
        self.origin = uuid.uuid4().hex[:12]
        self.prefix = f"{conn.base}/bus/"
        self.is_local = is_local
        self.may_hear = may_hear
        self.sealer = BusSealer(key, self.origin, clock)
        self.verifier = BusVerifier(key, clock)
        self.invalid_by_reason: collections.Counter[str] = collections.Counter()
        self._logged: dict[str, str] = {}  # topic: the refusal reason last logged for it
        self._unpublished_logged = False  # logged once per outage
        conn.subscribe(self.prefix + "#", self._receive, qos=1, on_refused=self._refused)

    async def send(self, env: Envelope) -> None:
        await super().send(env)
        if self.is_local(env.receiver):
            return  # an agent of this process has it; no other process runs that agent
        topic = self.prefix + env.receiver
        body = self.sealer.seal(topic, env.model_dump(mode="json"))
        qos = 1 if env.performative in RELIABLE else 0
        kind = f"{env.performative.value}/{env.ontology}"
        # Pipelined: the next envelope goes out before this one's acknowledgement is back.
        if await self.conn.publish_pipelined(
            topic, body, qos, lambda: self._unpublished(kind, env)
        ):
            self._unpublished_logged = False
            return
        self._unpublished(kind, env)

    def _unpublished(self, kind: str, env: Envelope) -> None:
        self.stats.unpublished += 1
        if self.conn.metrics is not None:
            self.conn.metrics.inc(UNPUBLISHED_METRIC, kind=kind)
        if not self._unpublished_logged:
            self._unpublished_logged = True
            log.warning("bus: %s to %s not published (broker unreachable); counting", kind,
                        env.receiver)  # fmt: skip

    def _receive(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            data = strict_json.loads(payload)
        except ValueError as err:  # also NaN/Infinity tokens and 1e999, which JSON does not allow
            return self._invalid(topic, "not JSON", str(err))
        if not isinstance(data, dict) or not isinstance(data.get("envelope"), dict):
            return self._invalid(topic, "wrong shape", "expected {origin, envelope}")
        if data.get("origin") == self.origin:
            return None  # our own publish coming back
        refusal = self.verifier.problem(topic, data)
        if refusal is not None:
            return self._invalid(topic, *refusal)
        try:
            env = Envelope.model_validate(data["envelope"])
        except ValidationError as err:
            return self._invalid(topic, "invalid envelope", _first_error(err))
        if topic != self.prefix + env.receiver:
            return self._invalid(topic, "receiver mismatch", f"envelope is for {env.receiver}")
        if self.is_local(env.sender):
            return self._invalid(topic, "forged sender", f"{env.sender} is a local agent")
        if env.ontology == "command" and not env.sender.startswith(COMMAND_SENDERS):
            return self._invalid(topic, "forged sender", f"{env.sender} may not command devices")
        forbidden = self.may_hear(env) if self.may_hear is not None else None
        if forbidden is not None:
            return self._invalid(topic, "forbidden sender", f"from {env.sender}: {forbidden}")
        content, problem = checked_content(env)
        if problem is not None:  # an agent would fail parsing it (a zone agent would crash)
            return self._invalid(topic, "invalid content", f"{env.ontology}: {problem}")
        env._model = content  # validated just now: receivers need not validate it again
        if self._logged.pop(topic, None) is not None:
            log.info("bus: messages on %s accepted again", topic)
        self.deliver_nowait(env)
        return None

    def _refused(self, topic: str, reason: str) -> None:
        """The connection refused a message on a bus topic (too large): counted as invalid."""
        self._count(reason)

    def _count(self, reason: str) -> None:
        self.stats.invalid += 1
        self.invalid_by_reason[reason] += 1
        if self.conn.metrics is not None:
            self.conn.metrics.inc(REFUSED_METRIC, reason=reason)

    def _invalid(self, topic: str, reason: str, detail: str) -> None:
        """Counted every time; logged when the reason on this topic changes (a flood of forged
        messages is one line, not one per message)."""
        self._count(reason)
        if self._logged.get(topic) == reason:
            return
        if topic in self._logged or len(self._logged) < LOGGED_TOPICS:
            self._logged[topic] = reason
        log.warning("bus: invalid message on %s: %s (%s); further ones with this reason are "
                    "only counted", topic, reason, detail)  # fmt: skip
