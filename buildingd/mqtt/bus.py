"""``MqttBus``: the agent bus carried over MQTT, so agents in several processes or gateways talk.

Every envelope is delivered locally as on the in-process bus and published as JSON on
``<prefix>/<site>/bus/<receiver address>``::

    {"origin": "<instance id>", "envelope": {...the Envelope fields...}}

Envelopes from the broker are validated before any agent sees them (strict JSON: no ``NaN`` or
``Infinity``; the envelope; its content against the model of its ontology, when one is known); an
invalid one, or one too large for the connection, is counted (``BusStats.invalid``, by reason)
and logged with its topic and reason, never raised into the receiver. Echoes of our own
publishes are skipped by ``origin``. A remote envelope may not claim to come from one of this
process's own agents (a forged sender), and commands to devices are only accepted from zone
agents or the coordinator.
"""

from __future__ import annotations

import collections
import json
import logging
import uuid
from collections.abc import Callable

from pydantic import ValidationError

from buildingd.agents.bus import Envelope, InProcessBus, Performative
from buildingd.agents.messages import Content
from buildingd.mqtt import payload as strict_json
from buildingd.mqtt.connection import MqttConnection

log = logging.getLogger(__name__)

# FIPA performatives whose loss matters get QoS 1; readings and state are superseded anyway.
RELIABLE = {p for p in Performative if p is not Performative.INFORM}
COMMAND_SENDERS = ("zone[", "coordinator")


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


def content_problem(env: Envelope) -> str | None:
    """Why the content does not fit its ontology's model, or None (also for an unknown ontology:
    the receiving agent refuses what it does not understand)."""
    problem = None
    for model in content_models().get(env.ontology, []):
        try:
            model.model_validate(env.content)
        except ValidationError as err:
            problem = problem or _first_error(err)
        else:
            return None
    return problem


class MqttBus(InProcessBus):
    def __init__(self, conn: MqttConnection, is_local: Callable[[str], bool]) -> None:
        super().__init__()
        self.conn = conn
        self.origin = uuid.uuid4().hex[:12]
        self.prefix = f"{conn.base}/bus/"
        self.is_local = is_local
        self.invalid_by_reason: collections.Counter[str] = collections.Counter()
        conn.subscribe(self.prefix + "#", self._receive, qos=1, on_refused=self._refused)

    async def send(self, env: Envelope) -> None:
        await super().send(env)
        body = json.dumps({"origin": self.origin, "envelope": env.model_dump(mode="json")})
        qos = 1 if env.performative in RELIABLE else 0
        await self.conn.publish(self.prefix + env.receiver, body, qos=qos)

    def _receive(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            data = strict_json.loads(payload)
        except ValueError as err:  # also NaN/Infinity tokens and 1e999, which JSON does not allow
            return self._invalid(topic, "not JSON", str(err))
        if not isinstance(data, dict) or not isinstance(data.get("envelope"), dict):
            return self._invalid(topic, "wrong shape", "expected {origin, envelope}")
        if data.get("origin") == self.origin:
            return None  # our own publish coming back
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
        problem = content_problem(env)
        if problem is not None:  # an agent would fail parsing it (a zone agent would crash)
            return self._invalid(topic, "invalid content", f"{env.ontology}: {problem}")
        self.deliver_nowait(env)
        return None

    def _refused(self, topic: str, reason: str) -> None:
        """The connection refused a message on a bus topic (too large): counted as invalid."""
        self.stats.invalid += 1
        self.invalid_by_reason[reason] += 1

    def _invalid(self, topic: str, reason: str, detail: str) -> None:
        self.stats.invalid += 1
        self.invalid_by_reason[reason] += 1
        log.warning("bus: invalid message on %s: %s (%s)", topic, reason, detail)
