"""Zone agent: owns one zone. Turns its readings into inputs, runs the pure zone controller, and
commands the zone's actuators through their device agents, only when a target changes.

Hand overrides that end (a mode set by hand at ``mode_until`` or "schedule", a light level at
the vacancy timeout): each actuator commanded while one was in force is sent its target with
``release``, which a BACnet device relinquishes (the BAS's lower-priority value takes over, as
ASHRAE 135 clause 19.2 intends) and other devices write. A released actuator is left to the
device until the zone's own target for it changes. A setpoint set by hand is an offset of the
band (``vote_offset_k``) that does not expire: nothing to release."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from buildingd.agents import learning_file
from buildingd.agents.bus import Envelope, Performative, new_conversation_id
from buildingd.agents.context import AgentContext
from buildingd.agents.messages import (
    COORDINATOR,
    EVENTS_TOPIC,
    ZONE_LEARNING_TOPIC,
    ZONE_STATE_TOPIC,
    AdjustmentsMsg,
    CommandMsg,
    CommandResultMsg,
    DemandResponseAward,
    DemandResponseCall,
    DemandResponseDone,
    DemandResponseProposal,
    EventMsg,
    ReadingMsg,
    ZoneLearningMsg,
    ZoneStateMsg,
    ZoneSummary,
    device_address,
    readings_topic,
    with_json,
    zone_address,
)
from buildingd.agents.runtime import Agent
from buildingd.agents.zone_summary import summary_fields, zone_summary
from buildingd.config.policies import Policy, Season
from buildingd.control.contract_net import Offer, zone_offers
from buildingd.control.frozen import replace
from buildingd.control.seasons import in_season, season_at
from buildingd.control.thermal_response import Regime
from buildingd.control.trim_respond import PressureRequestTimer, update_pressure_requests
from buildingd.control.zone import (
    Adjustments,
    ZoneDecision,
    ZoneInputs,
    ZoneMode,
    ZoneState,
    decide,
)
from buildingd.control.zone_learning import (
    ZoneLearning,
    ZoneOutlook,
    morning_medians,
    observe,
    outlook,
)
from buildingd.control.zone_learning import summary as learning_summary
from buildingd.points import PointKind, Quality

log = logging.getLogger(__name__)

CONTROL_INTERVAL_S = 10.0  # re-decide at least this often (simulated seconds under --speed)
STATE_HEARTBEAT_S = 300.0
RETRY_AFTER_S = 60.0  # an unconfirmed command is re-sent after this long
# After start, wait this long for a first temperature reading before judging the zone (devices
# may still be connecting): no decision, hence no command, is made on no information.
STARTUP_GRACE_S = 60.0
ASSUMED_COP = 3.0  # heat pump / chiller, to estimate electrical power without a zone meter
SUMMARY_SHIFT_K = 1.0  # the demand-limit level whose offer the summary carries
SHED_CHANGE_W = 50.0  # the summary is re-sent when the offer moves into another band this wide
LEARNING_SAVE_S = 3600.0  # learned state is written this often (and at stop)


@dataclass
class _Actuator:
    device_id: str
    point_id: str
    kind: PointKind
    confirmed: float | None = None  # last target the device confirmed (read back, or released)
    pending: float | None = None
    pending_since_s: float = 0.0
    pending_id: str | None = None
    pending_release: bool = False  # the pending command gives the point back
    by_override: bool = False  # commanded while a hand override was in force


@dataclass
class ZoneStats:
    """Accumulated for the exit summary."""

    seconds: float = 0.0
    seconds_in_band: float = 0.0
    commands_sent: int = 0
    commands_failed: int = 0
    light_on_s: float = 0.0


@dataclass
class _Sensor:
    value: float
    quality: Quality


@dataclass(frozen=True)
class Commitment:
    """An accepted demand-response award: kept until ``cancel`` or ``ends_at`` (UTC)."""

    conversation_id: str
    level: str
    shift_k: float
    dim_pct: float
    ends_at: datetime


# A zone's answer to a cfp: propose or refuse, the content model and its JSON form.
_Answer = tuple[Performative, DemandResponseProposal, dict[str, Any]]


# The sensor kinds a zone's inputs are made of.
_INPUT_KINDS = (
    PointKind.TEMPERATURE,
    PointKind.HUMIDITY,
    PointKind.OCCUPANCY,
    PointKind.ILLUMINANCE,
)


class _Offers:
    """A zone's demand-response offers and its answer to a cfp, with what they were worked out
    from: the zone's inputs, decision and state and the site (policy, capacities). Each of those
    is replaced, never changed, when it changes, so the same objects mean the same offers.
    ``args`` are the values ``zone_offers`` took (a pure function of them): a decision that
    changes none of them keeps the offers, their answer and the summary's flexibility."""

    __slots__ = ("answer", "args", "demand", "flexibility", "made_of", "offers")

    def __init__(
        self,
        made_of: tuple[object, ...],
        demand: tuple[float, float, bool],
        args: dict[str, Any],
        offers: list[Offer],
    ) -> None:
        self.made_of, self.demand, self.args, self.offers = made_of, demand, args, offers
        self.answer: _Answer | None = None  # made at the first cfp that needs it
        self.flexibility: tuple[float, float, str] | None = None  # made at the first summary

    def made_of_same(self, made_of: tuple[object, ...]) -> bool:
        return all(a is b for a, b in zip(self.made_of, made_of, strict=True))


class ZoneAgent(Agent):
    mailbox_size = 500
    overflow = "drop_oldest"  # readings are superseded by newer ones

    def __init__(
        self,
        zone_id: str,
        ctx: AgentContext,
        baseline: bool = False,
        state_dir: Path | None = None,
    ) -> None:
        super().__init__(zone_address(zone_id))
        self.zone_id = zone_id
        # Baseline (common practice, for ``buildingd evaluate``): no occupancy sensing and no
        # daylight: the zone follows the schedule and lights stay on through scheduled hours.
        self.baseline = baseline
        self.ctx = ctx
        # Learned response and occupancy (optimal start, pre-conditioning); kept in
        # ``state_dir`` when there is one. The baseline learns nothing.
        self.state_dir = state_dir
        self.learning = ZoneLearning()
        self.outlook: ZoneOutlook | None = None
        self.season: Season | None = None  # the policy's season in force (summer, winter)
        self._learning_saved_s: float | None = None
        self.state = ZoneState()
        self.decision: ZoneDecision | None = None
        self.sensors: dict[tuple[str, str], tuple[PointKind, _Sensor]] = {}
        self._inputs: ZoneInputs | None = None  # from ``sensors``; None when a reading changed
        self.actuators: dict[PointKind, list[_Actuator]] = {}
        self.stats = ZoneStats()
        self._last_tick_s: float | None = None
        self._started_s = 0.0
        self.last_control_s: float | None = None
        self._last_state_msg: tuple[object, ...] | None = None
        self._last_state_s = -1e18
        self.degraded: set[str] = set()
        self._pending_replies: list[Envelope] = []
        # Demand-response commitments by conversation. Two overlapping events do not add up:
        # the zone applies the deepest of them (see ``_apply_commitments``).
        self.commitments: dict[str, Commitment] = {}
        # G36 static pressure reset request state per terminal unit (device id).
        self._pressure: dict[str, PressureRequestTimer] = {}
        self._dampers_seen = False  # a damper position came in: the zone has terminal units
        self._overridden = False  # a hand override (mode, light level) was in force last tick
        self._offers: _Offers | None = None  # the offers as last worked out
        self._readings_taken = 0  # since last counted in ``buildingd_zone_readings_total``
        self._bind()

    def _bind(self) -> None:
        old = {(a.device_id, a.point_id): a for acts in self.actuators.values() for a in acts}
        self.actuators = {}
        for device, point in self.ctx.site.points_in(self.zone_id):
            if point.writable and point.kind.is_actuator:
                # Keep what the device already confirmed: no actuator is rewritten on a reload
                # unless its target changes.
                act = old.get((device.id, point.id)) or _Actuator(device.id, point.id, point.kind)
                self.actuators.setdefault(point.kind, []).append(act)

    def rebind(self) -> None:
        """Re-read which actuators serve the zone (after a reload)."""
        self._bind()

    async def _learn(
        self,
        now_s: float,
        local: datetime,
        inputs: ZoneInputs,
        decision: ZoneDecision,
        policy: Policy,
    ) -> None:
        mornings = len(self.learning.starts)
        self.learning = observe(
            self.learning, now_s, local, inputs.temperature_c, inputs.occupied, decision.band,
            policy,
        )  # fmt: skip
        judged = len(self.learning.starts) != mornings
        if judged:
            self.ctx.morning_rates.set(self.zone_id, morning_medians(self.learning))
        if self._learning_saved_s is None:
            self._learning_saved_s = now_s
        elif judged or now_s - self._learning_saved_s >= LEARNING_SAVE_S:
            self._save_learning_soon()
            self._learning_saved_s = now_s
            await self._publish_learning(local, judged)

    async def _publish_learning(self, local: datetime, judged: bool) -> None:
        models = self.learning.response.models
        look = self.outlook
        arrival = look.arrival.arrival if look is not None else None

        def rate(regime: Regime) -> float | None:
            model = models.get(regime)
            return model.gain_k_per_h if model is not None and model.learned else None

        msg = ZoneLearningMsg(
            zone_id=self.zone_id,
            heating_k_per_h=rate(Regime.HEATING),
            cooling_k_per_h=rate(Regime.COOLING),
            drift_k_per_h=rate(Regime.FREE),
            warmup_lead_s=look.occupied_lead_s if look is not None else None,
            start_bias_s=self.learning.start_bias_s,
            start_error_s=self.learning.starts[-1].error_s if judged else None,
            arrival_in_s=(arrival - local).total_seconds() if arrival is not None else None,
            timestamp=self.ctx.clock.now(),
        )
        await self.ctx.send(msg.envelope(Performative.INFORM, self.name, ZONE_LEARNING_TOPIC))

    def save_learning(self) -> None:
        """Write the learned state (atomically) and wait; a failure is logged, never fatal."""
        if self.state_dir is None or self.baseline:
            return
        try:
            learning_file.save(self.state_dir, self.zone_id, self.learning)
        except OSError as err:
            self._not_saved(err)

    def _save_learning_soon(self) -> None:
        """As ``save_learning``, written on the writer thread: the decision does not wait for
        the disk. A failure is reported on the loop when the write ends."""
        if self.state_dir is None or self.baseline:
            return
        loop = asyncio.get_running_loop()

        def done(write: concurrent.futures.Future[None]) -> None:
            err = write.exception()
            if isinstance(err, OSError):
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                    loop.call_soon_threadsafe(self._not_saved, err)

        learning_file.save_soon(self.state_dir, self.zone_id, self.learning).add_done_callback(done)

    def _not_saved(self, err: OSError) -> None:
        self.ctx.metrics.inc("buildingd_state_write_errors_total", file="learning")
        log.warning("zone %s: learned state not saved: %s", self.zone_id, err)

    def learning_summary(self) -> dict[str, object] | None:
        if self.baseline:
            return None
        policy = self.policy
        local = self.ctx.clock.now().astimezone(_tz(policy.timezone or self.ctx.site.timezone))
        season = season_at(policy, local)
        summary = learning_summary(self.learning, self.outlook, local, in_season(policy, season))
        return {**summary, "season": season.name if season else None}

    def reset_learning(self) -> None:
        """Forget what the zone learned (after a refurbishment, a change of use)."""
        self.learning = ZoneLearning()
        self.outlook = None
        self.ctx.morning_rates.set(self.zone_id, {})
        self.save_learning()
        log.info("zone %s: learned state reset", self.zone_id)

    def pending_commands(self) -> int:
        return sum(1 for acts in self.actuators.values() for a in acts if a.pending is not None)

    async def drive_safe_state(self) -> None:
        """Shutdown action ``safe``: the unoccupied band, lights and moisture equipment off."""
        band = self.policy.comfort.unoccupied
        targets = {
            PointKind.HEATING_SETPOINT: band.heating_c,
            PointKind.COOLING_SETPOINT: band.cooling_c,
            PointKind.LIGHT_LEVEL: 0.0,
            PointKind.LIGHT_SWITCH: 0.0,
            PointKind.DEHUMIDIFIER: 0.0,
            PointKind.HUMIDIFIER: 0.0,
        }
        now = self.ctx.clock.monotonic()
        for kind, target in targets.items():
            for act in self.actuators.get(kind, []):
                await self._drive(act, target, now, "shutdown: safe state")

    @property
    def policy(self):  # type: ignore[no-untyped-def]
        return self.ctx.site.policy_for(self.zone_id)

    async def run(self, started: Callable[[], None]) -> None:
        topic = readings_topic(self.zone_id)
        if self.state_dir is not None and not self.baseline:
            self.learning = learning_file.load(self.state_dir, self.zone_id)
            self.ctx.morning_rates.set(self.zone_id, morning_medians(self.learning))
        self.ctx.bus.subscribe(self.name, self.inbox)
        self.ctx.bus.subscribe(topic, self.inbox)
        started()
        self._started_s = self.ctx.clock.monotonic()
        try:
            next_tick = self.ctx.clock.monotonic()
            while True:
                # A busy zone takes what is waiting without setting up a timer per message.
                env = self.inbox.get_nowait()
                wait_s = max(0.0, next_tick - self.ctx.clock.monotonic())
                if env is None and wait_s > 0:
                    loop = asyncio.get_running_loop()
                    tick_at = loop.time() + self.ctx.clock.to_loop_seconds(wait_s)
                    env = await self.inbox.get_until(tick_at)
                changed = self._handle(env) if env is not None else False
                # The rest of a burst first (a device's poll sends its points together): one
                # decision on the newest inputs instead of one per message.
                while env is not None and (env := self.inbox.get_nowait()) is not None:
                    changed = self._handle(env) or changed
                if self._readings_taken:  # counted once per burst, not once per reading
                    self.ctx.metrics.inc("buildingd_zone_readings_total", self._readings_taken)
                    self._readings_taken = 0
                now = self.ctx.clock.monotonic()
                decide_now = changed or now >= next_tick
                if self._pending_replies:
                    while self._pending_replies:
                        await self.ctx.send(self._pending_replies.pop(0))
                    # The answer first, then the zone's own work: an award's confirmation
                    # reaches the coordinator before this zone decides and commands its devices
                    # (a thousand zones' decisions would otherwise hold up every confirmation).
                    if decide_now:
                        await asyncio.sleep(0)
                if decide_now:
                    await self.control(now)
                    next_tick = now + CONTROL_INTERVAL_S
        finally:
            self.ctx.bus.unsubscribe(topic, self.inbox)
            self.ctx.bus.unsubscribe(self.name, self.inbox)
            self.save_learning()

    def _handle(self, env: Envelope) -> bool:
        """Take in one message; True when it should trigger a decision right away."""
        if env.ontology == ReadingMsg.ontology:
            msg = ReadingMsg.parse(env)
            self._readings_taken += 1
            key = (msg.device_id, msg.point_id)
            old = self.sensors.get(key)
            self.sensors[key] = (msg.kind, _Sensor(msg.value, msg.quality))
            if msg.kind is PointKind.DAMPER_POSITION:
                self._dampers_seen = True
            self._inputs = None
            # Occupancy and quality changes act at once; other readings at the next tick.
            return (
                msg.kind is PointKind.OCCUPANCY or old is None or old[1].quality is not msg.quality
            )
        if env.ontology == CommandResultMsg.ontology:
            self._command_result(CommandResultMsg.parse(env), env)
            return False
        if env.ontology == AdjustmentsMsg.ontology:
            given = AdjustmentsMsg.parse(env).model_dump(exclude_none=True)
            self.set_adjustments(replace(self.state.adjustments, **given))
            return True
        if env.ontology == DemandResponseCall.ontology:
            if env.sender != COORDINATOR:
                # Only the coordinator negotiates with zones: anyone else's cfp, award or cancel
                # is forged (or misrouted) and must not move a setpoint.
                self._reject_negotiation(env, "not_coordinator", "only the coordinator may")
                return False
            try:
                reply = self._demand_response(env)
            except ValueError as err:
                self._reject_negotiation(env, "malformed", str(err).splitlines()[0])
                return False
            if reply is not None:
                self._pending_replies.append(reply)
            return env.performative in (Performative.ACCEPT_PROPOSAL, Performative.CANCEL)
        self.ctx.metrics.inc("buildingd_messages_rejected_total", agent="zone")
        return False

    def _reject_negotiation(self, env: Envelope, reason: str, detail: str) -> None:
        self.ctx.metrics.inc("buildingd_negotiation_rejected_total", agent="zone", reason=reason)
        log.warning("zone %s: rejected %s from %s in conversation %s (%s): %s", self.zone_id,
                    env.performative, env.sender, env.conversation_id, reason, detail)  # fmt: skip

    def offers(self) -> list[Offer]:
        """What this zone can offer a demand-response cfp now: its flexibility within its
        policy's limits. A shift never takes a setpoint out of the safety band. Worked out again
        only when what they are made of changed (a cfp just after a decision takes the offers
        its summary was made with); the list is shared: not to be changed."""
        return self._current_offers().offers

    def _current_offers(self) -> _Offers:
        made_of = (self.inputs(), self.decision, self.state, self.ctx.site)
        kept = self._offers
        if kept is None or not kept.made_of_same(made_of):
            demand = self._demand()
            args = self._offer_args(demand)
            if kept is None or kept.args != args:
                kept = self._offers = _Offers(
                    made_of, demand, args, zone_offers(self.zone_id, **args)
                )
            else:  # the same values: the same offers
                kept.made_of, kept.demand = made_of, demand
        return kept

    def _work_out_offers(self) -> list[Offer]:
        return zone_offers(self.zone_id, **self._offer_args(self._demand()))

    def _offer_args(self, demand: tuple[float, float, bool]) -> dict[str, Any]:
        """``zone_offers``' arguments after the zone id, from ``demand`` (``_demand()``)."""
        limits = self.policy.negotiation
        safety = self.policy.safety
        hvac_w, lighting_w, daylight = demand
        max_shift_k = limits.max_shift_k
        if self.decision is not None:
            # Room left below heating and above cooling, before any shift already applied.
            band, shift = self.decision.band, self.state.adjustments.dr_shift_k
            room = min(band.heating_c + shift - safety.min_c, safety.max_c - band.cooling_c - shift)
            max_shift_k = min(max_shift_k, max(0.0, room))
        return {
            "hvac_w": hvac_w,
            "occupied": bool(self.inputs().occupied),
            "light_w": lighting_w,
            "daylight_sufficient": daylight,
            "max_shift_k": max_shift_k,
            "max_dim_pct": limits.max_dim_pct,
            "exempt": limits.exempt,
        }

    def flexibility(self) -> tuple[float, float, str]:
        """What the summary says the zone could shed: (W, comfort cost, level) of the offer it
        would propose at the 1 K shift, or short of that its largest offer below it; (0, 0,
        "none") with nothing to offer. Rounded as in a proposal, so the numbers agree."""
        kept = self._current_offers()
        if kept.flexibility is None:
            kept.flexibility = _flexibility(kept.offers)
        return kept.flexibility

    def pressure_requests(self, now_s: float) -> int:
        """G36 duct static pressure reset requests of the zone's VAV terminal units (section
        5.6.8.2), summed. A terminal unit is one device with a ``damper_position`` point, and
        optionally ``airflow`` and ``airflow_setpoint``: without them only the damper rule
        applies. Unusable readings count as missing; a unit without a usable damper reading
        sends nothing."""
        if not self._dampers_seen:  # no terminal unit: nothing to scan, no timer to run
            return 0
        by_device: dict[str, dict[PointKind, float]] = {}
        terminals: set[str] = set()
        for (device_id, _), (kind, sensor) in self.sensors.items():
            if kind is PointKind.DAMPER_POSITION:
                terminals.add(device_id)
            if sensor.quality.usable and kind in (
                PointKind.DAMPER_POSITION, PointKind.AIRFLOW, PointKind.AIRFLOW_SETPOINT
            ):  # fmt: skip
                by_device.setdefault(device_id, {})[kind] = sensor.value
        timers: dict[str, PressureRequestTimer] = {}
        for device_id in sorted(terminals):
            got = by_device.get(device_id, {})
            timers[device_id] = update_pressure_requests(
                self._pressure.get(device_id, PressureRequestTimer()),
                now_s,
                got.get(PointKind.DAMPER_POSITION),
                got.get(PointKind.AIRFLOW),
                got.get(PointKind.AIRFLOW_SETPOINT),
            )
        self._pressure = timers
        return sum(t.requests for t in timers.values())

    def _demand(self) -> tuple[float, float, bool]:
        """Current HVAC electrical power (a zone power meter if there is one, otherwise estimated
        from the capacity and the distance to the setpoints: full output 1 K away), lighting
        power, and whether daylight alone meets the lighting target."""
        spec = self.ctx.site.zones[self.zone_id]
        inputs = self.inputs()
        meters = [
            s.value for k, s in self.sensors.values() if k is PointKind.POWER and s.quality.usable
        ]
        band = self.decision.band if self.decision is not None else None
        if meters:
            hvac = sum(meters)
        elif band is not None and inputs.temperature_c is not None:
            t = inputs.temperature_c
            heat = min(1.0, max(0.0, band.heating_c - t)) * spec.heating_capacity_w
            cool = min(1.0, max(0.0, t - band.cooling_c)) * spec.cooling_capacity_w
            hvac = (heat + cool) / ASSUMED_COP
        else:
            hvac = 0.0
        lighting = spec.lighting_power_w * self.state.light_level_pct / 100
        lux = inputs.illuminance_lux
        artificial = self.policy.lighting.full_output_lux * self.state.light_level_pct / 100
        daylight = lux is not None and lux - artificial >= self.policy.lighting.daylight_target_lux
        return round(hvac, 1), round(lighting, 1), daylight

    def _demand_response(self, env: Envelope) -> Envelope | None:
        """Contract net, participant side: propose or refuse a cfp; apply an award (until its
        ``ends_at``); restore on cancel. The reply, if any, is sent by the control loop."""
        if env.performative is Performative.CFP:
            DemandResponseCall.parse(env)
            kept = self._current_offers()
            if kept.answer is None:
                kept.answer = self._answer_to_cfp(kept.offers)
            performative, proposal, content = kept.answer
            return proposal.envelope(performative, self.name, env.sender, dumped=content,
                                     conversation_id=env.conversation_id,
                                     in_reply_to=env.reply_with)  # fmt: skip
        if env.performative is Performative.ACCEPT_PROPOSAL:
            award = DemandResponseAward.parse(env)
            refusal = self._refuse_award(award)
            if refusal is not None:
                return env.reply(Performative.FAILURE, self.name, {"reason": refusal})
            conversation = env.conversation_id or ""
            self.commitments[conversation] = Commitment(
                conversation, award.level, award.shift_k, award.dim_pct, award.ends_at
            )
            self._apply_commitments()
            done, dumped = _done(award.level)
            return done.answer(env, Performative.INFORM_DONE, self.name, dumped)
        if env.performative is Performative.REJECT_PROPOSAL:
            return None  # not needed this time: nothing to do, nothing to answer
        if env.performative is Performative.CANCEL:
            self.commitments.pop(env.conversation_id or "", None)
            # Restored from what is still committed: a cancel of one event keeps another, and a
            # zone agent restarted mid-event (adjustments kept, commitments not) restores too.
            self._apply_commitments()
            return _RESTORED[0].answer(env, Performative.INFORM_DONE, self.name, _RESTORED[1])
        return env.reply(Performative.NOT_UNDERSTOOD, self.name, {"reason": "unexpected"})

    def _answer_to_cfp(self, offers: list[Offer]) -> _Answer:
        """A proposal of ``offers``, or a refusal with the reason when there are none."""
        if not offers:
            why = "exempt by policy" if self.policy.negotiation.exempt else "nothing to shed"
            return Performative.REFUSE, *with_json(DemandResponseProposal(reason=why))
        # Its JSON form first, validated once into the model: two thirds of the cost of building
        # each offer's model and dumping the whole.
        content: dict[str, Any] = {
            "offers": [
                {
                    "level": str(o.level),
                    "shift_k": o.level.shift_k,
                    "dim_pct": o.level.dim_pct,
                    "shed_w": round(o.shed_w, 1),
                    "comfort_cost": round(o.comfort_cost, 3),
                }
                for o in offers
            ],
            "reason": "",
        }
        return Performative.PROPOSE, DemandResponseProposal.model_validate(content), content

    def _refuse_award(self, award: DemandResponseAward) -> str | None:
        """Why this zone cannot apply ``award``, or None. The coordinator checks the same
        limits; this is the zone's own line of defence against a wrong or forged award."""
        limits, safety = self.policy.negotiation, self.policy.safety
        if limits.exempt:
            return "exempt by policy"
        if award.shift_k > limits.max_shift_k or award.dim_pct > limits.max_dim_pct:
            return "outside policy limits"
        if award.ends_at <= self.ctx.clock.now():
            return "the window is already over"
        if self.decision is not None:
            band, shift = self.decision.band, self.state.adjustments.dr_shift_k
            if (
                band.heating_c + shift - award.shift_k < safety.min_c
                or band.cooling_c - shift + award.shift_k > safety.max_c
            ):
                return "the shift would leave the safety band"
        return None

    def _apply_commitments(self) -> None:
        """Adjustments from the commitments in force: the deepest shift and dimming of them."""
        active = self.commitments.values()
        self.set_adjustments(
            replace(
                self.state.adjustments,
                dr_shift_k=max((c.shift_k for c in active), default=0.0),
                dim_pct=max((c.dim_pct for c in active), default=0.0),
            )
        )

    def expire_commitments(self) -> bool:
        """Restore, by itself, every commitment whose window has ended: the coordinator may be
        gone. True when something was restored."""
        now = self.ctx.clock.now()
        ended = [c for c in self.commitments.values() if c.ends_at <= now]
        for c in ended:
            del self.commitments[c.conversation_id]
            log.info("zone %s: demand-response %s (%s) ended at %s: restored", self.zone_id,
                     c.conversation_id, c.level, c.ends_at.isoformat())  # fmt: skip
        if ended:
            self._apply_commitments()
        return bool(ended)

    def expire_mode_override(self) -> None:
        """A zone mode set by hand ends by itself (the coordinator may be gone): back to the
        schedule at ``mode_until``."""
        adj = self.state.adjustments
        if adj.mode_override and (adj.mode_until is None or adj.mode_until <= self.ctx.clock.now()):
            log.info("zone %s: %s set by hand has timed out: back to the schedule", self.zone_id,
                     adj.mode_override)  # fmt: skip
            self.set_adjustments(replace(adj, mode_override="", mode_until=None))

    def set_adjustments(self, adjustments: Adjustments) -> None:
        self.state = replace(self.state, adjustments=adjustments)

    def summary(self) -> ZoneSummary | None:
        """What the zone is doing now (None until its first decision)."""
        if self.decision is None:
            return None
        return zone_summary(self.zone_id, self.inputs(), self.decision, self.degraded)

    def inputs(self) -> ZoneInputs:
        # Kept until a reading comes in: a decision and its summary read it four times.
        if self._inputs is not None:
            return self._inputs
        good: dict[PointKind, list[float]] = {k: [] for k in _INPUT_KINDS}
        for kind, sensor in self.sensors.values():  # one pass, in the sensors' order
            if kind in good and sensor.quality.usable:
                good[kind].append(sensor.value)
        temps, hums = good[PointKind.TEMPERATURE], good[PointKind.HUMIDITY]
        occ, lux = good[PointKind.OCCUPANCY], good[PointKind.ILLUMINANCE]
        self._inputs = ZoneInputs(
            # Median: one drifting sensor among three cannot move the zone.
            temperature_c=statistics.median(temps) if temps else None,
            humidity_pct=statistics.median(hums) if hums else None,
            occupied=any(v >= 0.5 for v in occ) if occ and not self.baseline else None,
            illuminance_lux=statistics.fmean(lux) if lux and not self.baseline else None,
        )
        return self._inputs

    async def control(self, now_s: float) -> None:
        self.last_control_s = now_s
        self.expire_commitments()
        self.expire_mode_override()
        inputs = self.inputs()
        ready_s = self.ctx.ready_s
        if (
            self.decision is None
            and inputs.temperature_c is None
            and (ready_s is None or now_s - max(ready_s, self._started_s) < STARTUP_GRACE_S)
        ):
            return
        self.ctx.metrics.inc("buildingd_zone_decisions_total")
        policy = self.policy
        local = self.ctx.clock.now().astimezone(_tz(policy.timezone or self.ctx.site.timezone))
        season = season_at(policy, local)
        if season != self.season:
            was, now_in = (s.name if s else "none" for s in (self.season, season))
            log.info("zone %s: season %s -> %s", self.zone_id, was, now_in)
            self.season = season
        policy = in_season(policy, season)
        previous_mode = self.state.mode
        if not self.baseline and inputs.temperature_c is not None:
            peers = self.ctx.morning_rates.median()
            self.outlook = outlook(self.learning, local, inputs.temperature_c, policy, peers)
        decision = decide(self.state, inputs, policy, local, now_s, self.outlook)
        self.state = decision.state
        self.decision = decision
        if decision.state.mode is not previous_mode:
            log.info("zone %s: %s -> %s", self.zone_id, previous_mode, decision.state.mode)
            if decision.state.mode is ZoneMode.HOLD:
                await self._degraded(
                    "temperature", "no usable temperature sensor; holding a safe band"
                )
        if decision.state.mode is not ZoneMode.HOLD:
            await self._recovered("temperature")
        # Until every agent has started, a device agent may not be listening yet: a command
        # sent then would be lost and only re-sent after RETRY_AFTER_S. The next tick sends it.
        overridden = _hand_override(decision.state.adjustments)
        ended, self._overridden = self._overridden and not overridden, overridden
        for kind, target in decision.targets.items() if ready_s is not None else ():
            for act in self.actuators.get(kind, []):
                if ended and act.by_override:
                    act.by_override = False
                    await self._drive(act, target, now_s, "hand override ended", release=True)
                else:
                    await self._drive(act, target, now_s, f"{decision.state.mode} mode")
                act.by_override = act.by_override or (overridden and act.pending is not None)
        # The commands first: learning (which may write its file) and the books wait, so an
        # occupancy change reaches the lights without them.
        if not self.baseline:
            await self._learn(now_s, local, inputs, decision, policy)
        self._account(inputs, decision, now_s)
        await self._publish_state(inputs, decision, now_s)

    def _account(self, inputs: ZoneInputs, decision: ZoneDecision, now_s: float) -> None:
        if self._last_tick_s is not None:
            dt = now_s - self._last_tick_s
            self.stats.seconds += dt
            band = decision.band
            t = inputs.temperature_c
            if t is not None and band.heating_c - 0.5 <= t <= band.cooling_c + 0.5:
                self.stats.seconds_in_band += dt
            if decision.state.light_level_pct > 0:
                self.stats.light_on_s += dt
        self._last_tick_s = now_s

    async def _drive(
        self, act: _Actuator, target: float, now_s: float, reason: str, release: bool = False
    ) -> None:
        if act.pending is not None:
            if act.pending == target and now_s - act.pending_since_s < RETRY_AFTER_S:
                return
            release = release or (act.pending == target and act.pending_release)  # a retry
        elif act.confirmed == target and not release:
            return
        act.pending = target
        act.pending_release = release
        act.pending_since_s = now_s
        act.pending_id = new_conversation_id()
        self.stats.commands_sent += 1
        cmd = CommandMsg(point_id=act.point_id, value=target, zone_id=self.zone_id,
                         reason=reason, release=release)  # fmt: skip
        await self.ctx.send(
            cmd.envelope(
                Performative.REQUEST,
                self.name,
                device_address(act.device_id),
                reply_with=act.pending_id,
                conversation_id=act.pending_id,
            )
        )

    def _command_result(self, result: CommandResultMsg, env: Envelope) -> None:
        for acts in self.actuators.values():
            for act in acts:
                if act.pending_id is not None and env.in_reply_to == act.pending_id:
                    if result.ok:
                        # The device agent checked the read-back against the target as the
                        # device's encoding holds it (21.1 is 21.100000381 in a BACnet REAL), or
                        # the device's own control holds a released point: either way the target
                        # counts as met until it changes.
                        act.confirmed = act.pending
                        act.pending = None
                    else:
                        self.stats.commands_failed += 1
                        # Keep it pending: it is retried after RETRY_AFTER_S.
                    act.pending_id = None if result.ok else act.pending_id

    async def _degraded(self, what: str, message: str) -> None:
        if what in self.degraded:
            return
        self.degraded.add(what)
        log.error("zone %s: %s", self.zone_id, message)
        await self._event("degraded", "error", message)

    async def _recovered(self, what: str) -> None:
        if what not in self.degraded:
            return
        self.degraded.discard(what)
        log.info("zone %s: %s recovered", self.zone_id, what)
        await self._event("recovered", "info", f"{what} recovered")

    async def _event(self, kind: str, severity: str, message: str) -> None:
        env = EventMsg(
            kind=kind,
            source=self.name,
            zone_id=self.zone_id,
            severity=severity,
            message=message,
            timestamp=self.ctx.clock.now(),
        ).envelope(Performative.INFORM, self.name, EVENTS_TOPIC)
        await self.ctx.send(env)

    async def _publish_state(
        self, inputs: ZoneInputs, decision: ZoneDecision, now_s: float
    ) -> None:
        # Timers run at every decision, whether or not a summary goes out.
        pressure_requests = self.pressure_requests(now_s)
        shed_w, shed_cost, shed_level = self.flexibility()
        key = (
            decision.state.mode,
            decision.band,
            decision.state.light_level_pct,
            inputs.occupied,
            None if inputs.temperature_c is None else round(inputs.temperature_c, 1),
            decision.state.dehumidifier_on,
            pressure_requests,
            shed_level,
            round(shed_w / SHED_CHANGE_W),
        )
        if key == self._last_state_msg and now_s - self._last_state_s < STATE_HEARTBEAT_S:
            return
        hvac_w, lighting_w, daylight = self._current_offers().demand
        self._last_state_msg = key
        self._last_state_s = now_s
        msg = ZoneStateMsg(
            **summary_fields(self.zone_id, inputs, decision, self.degraded),
            timestamp=self.ctx.clock.now(),
            hvac_w=hvac_w,
            lighting_w=lighting_w,
            daylight_sufficient=daylight,
            shed_w=shed_w,
            shed_cost=shed_cost,
            shed_level=shed_level,
            pressure_requests=pressure_requests,
        )
        await self.ctx.send(msg.envelope(Performative.INFORM, self.name, ZONE_STATE_TOPIC))


def _flexibility(offers: list[Offer]) -> tuple[float, float, str]:
    """``ZoneAgent.flexibility`` of ``offers``."""
    offers = [o for o in offers if o.level.shift_k <= SUMMARY_SHIFT_K]
    exact = [o for o in offers if o.level.shift_k == SUMMARY_SHIFT_K and not o.level.dim_pct]
    if exact:
        best = exact[0]
    elif offers:
        best = max(offers, key=lambda o: (o.shed_w, -o.comfort_cost))
    else:
        return 0.0, 0.0, "none"
    return round(best.shed_w, 1), round(best.comfort_cost, 3), str(best.level)


_TZ_CACHE: dict[str, object] = {}


@functools.lru_cache(maxsize=64)
def _done(level: str) -> tuple[DemandResponseDone, dict[str, Any]]:
    """A confirmation that ``level`` was applied, with its JSON form: made once per level (a
    thousand zones confirm a few levels)."""
    return with_json(DemandResponseDone(level=level))


_RESTORED = with_json(DemandResponseDone(restored=True))  # a restore's confirmation


def _hand_override(adj: Adjustments) -> bool:
    """A mode or light level set by hand is in force (both end by themselves)."""
    return bool(adj.mode_override) or adj.light_override_pct >= 0


def _tz(name: str):  # type: ignore[no-untyped-def]
    from zoneinfo import ZoneInfo

    if name not in _TZ_CACHE:
        _TZ_CACHE[name] = ZoneInfo(name)
    return _TZ_CACHE[name]
