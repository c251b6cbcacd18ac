"""Content models carried in envelopes, by ontology name, and the bus addresses agents use."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, Self, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from buildingd.agents.bus import Envelope, Performative
from buildingd.points import PointKind, Quality


class Content(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ontology: ClassVar[str]

    def envelope(
        self,
        performative: Performative,
        sender: str,
        receiver: str,
        *,
        dumped: dict[str, Any] | None = None,
        **kw: Any,
    ) -> Envelope:
        """An envelope carrying this content. ``dumped``: its JSON form when made already, shared
        by every envelope that carries this model (nobody changes an envelope's content)."""
        # Built here from a validated model by this process's own agents: trusted, so not
        # validated again. Envelopes from another process are validated in full where they
        # come in (``nats.bus``).
        content = self.model_dump(mode="json") if dumped is None else dumped
        return Envelope.trusted(self, performative=performative, sender=sender, receiver=receiver,
                                ontology=self.ontology, content=content, **kw)  # fmt: skip

    def envelopes(
        self, performative: Performative, sender: str, receivers: Iterable[str], **kw: Any
    ) -> list[Envelope]:
        """As ``envelope``, one per receiver: made once and readdressed (``Envelope.to``), so
        all share the content's JSON form (a round's cfps)."""
        made: list[Envelope] = []
        for receiver in receivers:
            made.append(made[0].to(receiver) if made else
                        self.envelope(performative, sender, receiver, **kw))  # fmt: skip
        return made

    def answer(
        self,
        to: Envelope,
        performative: Performative,
        sender: str,
        dumped: dict[str, Any] | None = None,
    ) -> Envelope:
        """A reply to ``to`` (its sender, conversation and protocol) carrying this content
        (``dumped``: as in ``envelope``)."""
        return self.envelope(performative, sender, to.sender, dumped=dumped,
                             conversation_id=to.conversation_id, in_reply_to=to.reply_with,
                             protocol=to.protocol)  # fmt: skip

    @classmethod
    def parse(cls, env: Envelope) -> Self:
        """The content as ``cls``: the model the envelope was made from when it was made in this
        process (frozen, shared by every receiver), else ``content`` validated."""
        if env.ontology != cls.ontology:
            raise ValueError(f"expected ontology {cls.ontology}, got {env.ontology}")
        # Read from pydantic's private store: ``env._model`` goes through ``__getattr__``
        # (1.7 µs, about the cost of the rest of this method).
        model = env.__pydantic_private__["_model"]  # type: ignore[index]
        if type(model) is cls:
            return model
        return cls.model_validate(env.content)


C = TypeVar("C", bound=Content)


def with_json(content: C) -> tuple[C, dict[str, Any]]:
    """``content`` and its JSON form, to be made once and shared by the envelopes that carry it
    (``Content.envelope``'s ``dumped``): a round's awards, a zone's proposal."""
    return content, content.model_dump(mode="json")


class ReadingMsg(Content):
    ontology: ClassVar[str] = "reading"
    device_id: str
    point_id: str
    zone_id: str | None
    kind: PointKind
    unit: str
    value: float
    quality: Quality
    timestamp: datetime


class CommandMsg(Content):
    """Write ``value`` to a point. ``release``: give the point back instead (a hand override
    ended): a driver that can relinquish (BACnet: null at buildingd's priority, so the BAS's
    lower-priority value takes over) does; any other driver writes ``value`` as usual."""

    ontology: ClassVar[str] = "command"
    point_id: str
    value: float
    zone_id: str | None
    reason: str = Field(max_length=200)
    release: bool = False


class CommandResultMsg(Content):
    ontology: ClassVar[str] = "command-result"
    device_id: str
    point_id: str
    zone_id: str | None
    kind: PointKind
    value: float
    read_back: float | None
    ok: bool
    reason: str
    error: str | None = None
    timestamp: datetime
    # True: the point was relinquished, not written; ``read_back`` is the value now in control
    # (the BAS's or the relinquish default), not ``value``.
    released: bool = False


class ZoneSummary(BaseModel):
    """What a zone is doing now, as the bus (``ZoneStateMsg``), the HTTP API and Home Assistant
    show it. Built in one place: ``agents.zone_summary.zone_summary``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    zone_id: str
    mode: str
    temperature_c: float | None
    humidity_pct: float | None
    occupied: bool | None
    illuminance_lux: float | None
    heating_sp_c: float
    cooling_sp_c: float
    light_level_pct: float
    dehumidifier_on: bool
    degraded: list[str] = Field(default_factory=list)


class ZoneStateMsg(ZoneSummary, Content):
    """A zone's summary on the bus, with what only the coordinator and telemetry need."""

    ontology: ClassVar[str] = "zone-state"
    timestamp: datetime
    # Flexibility, for the coordinator: current HVAC electrical power and lighting power (W),
    # and whether daylight alone meets the lighting target.
    hvac_w: float | None = None
    lighting_w: float | None = None
    daylight_sufficient: bool = False
    # What the zone could shed now and at what comfort cost: its offer at the 1 K demand-limit
    # shift (or, short of that, its largest offer below it), as it would propose to a cfp; 0 W
    # when it has nothing to shed or is exempt. ``shed_level`` names the offer ("shift-1K").
    shed_w: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    shed_cost: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    shed_level: str = Field(default="none", max_length=50)
    # G36 duct static pressure reset requests of the zone's terminal units (sum over them).
    pressure_requests: int = Field(default=0, ge=0, le=100)


class ZoneLearningMsg(Content):
    """What a zone has learned (hourly, and after each judged morning), for telemetry: rates in
    K/h (None until learned), its warm-up lead, start correction and latest start error (s),
    and the seconds until people are expected (None: nobody expected, or not known yet)."""

    ontology: ClassVar[str] = "zone-learning"
    zone_id: str
    heating_k_per_h: float | None
    cooling_k_per_h: float | None
    drift_k_per_h: float | None
    warmup_lead_s: float | None
    start_bias_s: float
    start_error_s: float | None
    arrival_in_s: float | None
    timestamp: datetime


class DemandResponseCall(Content):
    """cfp of a demand-response negotiation: shed ``target_w`` (building total) for a window."""

    ontology: ClassVar[str] = "demand-response"
    # Finite and bounded whatever the policy says (a week, 10 MW): a window of 1e308 s would
    # overflow the clock arithmetic. The policy's tighter limits are checked by the coordinator.
    target_w: float = Field(gt=0, le=10_000_000, allow_inf_nan=False)
    window_s: float = Field(gt=0, le=7 * 86400, allow_inf_nan=False)
    reason: str = Field(max_length=200)
    # 1 for the first cfp; a later round asks again because the offers fell short of the target.
    round: int = Field(default=1, ge=1, le=20)


class OfferMsg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    level: str = Field(max_length=50)
    shift_k: float = Field(ge=0, le=5)
    dim_pct: float = Field(ge=0, le=100)
    shed_w: float = Field(ge=0, allow_inf_nan=False)
    comfort_cost: float = Field(ge=0, allow_inf_nan=False)


class DemandResponseProposal(Content):
    """propose: a zone's offers; refuse carries ``reason`` only."""

    ontology: ClassVar[str] = "demand-response"
    offers: list[OfferMsg] = Field(default_factory=list, max_length=10)
    reason: str = Field(default="", max_length=200)


class DemandResponseAward(Content):
    """accept-proposal: apply this offer until ``cancel`` or ``ends_at`` (the end of the window,
    UTC), whichever comes first: a zone restores by itself at ``ends_at`` even when the
    coordinator is gone. Sent again, with the same conversation, when a restarted coordinator
    takes up its commitments; applying it twice is applying it once."""

    ontology: ClassVar[str] = "demand-response"
    level: str = Field(max_length=50)
    shift_k: float = Field(ge=0, le=5)
    dim_pct: float = Field(ge=0, le=100)
    ends_at: AwareDatetime


class DemandResponseDone(Content):
    """inform-done from a zone: it applied its award (``level``) or restored (``restored``)."""

    ontology: ClassVar[str] = "demand-response"
    level: str | None = Field(default=None, max_length=50)
    restored: bool = False


class AdjustmentsMsg(Content):
    """Coordinator to zone: set some of the zone's temporary offsets (others are kept)."""

    ontology: ClassVar[str] = "adjustments"
    dr_shift_k: float | None = Field(default=None, ge=0, le=5)
    vote_offset_k: float | None = Field(default=None, ge=-5, le=5)
    dim_pct: float | None = Field(default=None, ge=0, le=100)
    # Set by hand (HTTP, Home Assistant) through the coordinator's override path:
    cooling_extra_k: float | None = Field(default=None, ge=-10, le=10)  # band narrowed/widened
    mode_override: Literal["", "occupied", "standby", "unoccupied"] | None = None  # "": schedule
    mode_until: datetime | None = None  # UTC; the zone returns to its schedule then by itself
    light_override_pct: float | None = Field(default=None, ge=-1, le=100)  # -1: none


class NegotiationMsg(Content):
    """A negotiation's state after each transition (telemetry, dashboards)."""

    ontology: ClassVar[str] = "negotiation"
    conversation_id: str
    kind: str
    state: str
    reason: str = Field(max_length=500)
    target_w: float
    committed_w: float
    zones_awarded: int
    turns: int
    messages: int
    timestamp: datetime


class EventMsg(Content):
    ontology: ClassVar[str] = "event"
    kind: str  # availability, alert, reload, negotiation, command-rejected, ...
    source: str
    zone_id: str | None = None
    severity: str = "info"  # info, warning, error
    message: str = Field(max_length=2000)
    timestamp: datetime


class AlertMsg(Content):
    """Coordinator to ``ALERTS_TOPIC``: the open alerts of each subject that changed (None: the
    subject has none left, its retained topic is removed). ``snapshot`` carries every subject
    with open alerts (for a bridge that starts or restarts)."""

    ontology: ClassVar[str] = "alert"
    action: Literal["raised", "reminder", "acknowledged", "cleared", "snapshot"]
    alert_id: str | None = Field(default=None, max_length=64)
    subjects: dict[str, dict[str, Any] | None]


class AlertActionMsg(Content):
    """To the coordinator (from MQTT or another gateway): acknowledge or clear an alert by id,
    or ask for a ``snapshot`` of the open ones."""

    ontology: ClassVar[str] = "alert-action"
    action: Literal["acknowledge", "clear", "snapshot"]
    alert_id: str | None = Field(default=None, max_length=64)
    by: str = Field(default="technician", max_length=100)


@dataclass(frozen=True)
class VoteResult:
    """The coordinator's answer to an occupant's vote (HTTP, MQTT)."""

    accepted: bool
    reason: str
    offset_k: float = 0.0  # the zone's current offset (K, + warmer), for the voter


class RefusalMsg(Content):
    """Why a message never reached its receiver (a command whose ``reply_by`` passed while it
    waited for its gateway), sent back to its sender with ``in_reply_to``."""

    ontology: ClassVar[str] = "refusal"
    reason: str = Field(max_length=500)
    refused_ontology: str = Field(max_length=100)


def device_address(device_id: str) -> str:
    return f"device[{device_id}]"


def zone_address(zone_id: str) -> str:
    return f"zone[{zone_id}]"


def readings_topic(zone_id: str | None) -> str:
    return f"readings/{zone_id or 'building'}"


COORDINATOR = "coordinator"
TELEMETRY = "telemetry"  # the telemetry agent, source of the sink's availability events
DEMAND_RESPONSE_TOPIC = "demand-response"  # requests from outside (MQTT, HTTP) open an event
ZONE_STATE_TOPIC = "zone-state"
ZONE_LEARNING_TOPIC = "zone-learning"
NEGOTIATIONS_TOPIC = "negotiations"
EVENTS_TOPIC = "events"
ALERTS_TOPIC = "alerts"  # AlertMsg (the MQTT bridge makes the retained topics)
COMMANDS_TOPIC = "command-results"
