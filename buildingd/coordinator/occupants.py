"""The occupants' desk: "too hot / too cold" votes and setpoints, modes and light levels set by
hand (HTTP, MQTT, Home Assistant), each checked against the zone's policy, applied as an
adjustment sent to the zone, or refused with the reason (audited and counted). Owns the vote box
(``votes``, pure) and the offsets it decided; the checks are ``overrides`` (pure). Nothing
persisted: a zone keeps the offsets it was sent, and votes are minutes-long (on a site over
gateways the vote box is mirrored to the standbys: ``office.state_changed``).
"""

from __future__ import annotations

from datetime import timedelta

from buildingd.agents.bus import Performative
from buildingd.agents.messages import AdjustmentsMsg, VoteResult, ZoneStateMsg, zone_address
from buildingd.agents.requests import record_refusal
from buildingd.audit import audit_decision
from buildingd.config.base import PointBase
from buildingd.config.policies import Band, Policy
from buildingd.coordinator import overrides
from buildingd.coordinator.office import Office
from buildingd.coordinator.votes import VoteBox

VOTE_MIN_VOTES = 2  # a side must lead by this many votes to move a zone
VOTE_MIN_INTERVAL_S = 900.0  # at most one vote-driven move per zone in this long


class OccupantDesk:
    def __init__(self, office: Office) -> None:
        self.office = office
        rules = [p.negotiation for p in office.site.policies.values()]
        first = rules[0] if rules else None
        self.votes = VoteBox(
            window_s=first.vote_window_s if first else 900.0,
            min_votes=VOTE_MIN_VOTES,
            step_k=first.vote_step_k if first else 0.5,
            max_offset_k=first.vote_max_offset_k if first else 1.5,
            min_interval_s=VOTE_MIN_INTERVAL_S,
        )

    def _adjust(self, zone_id: str, adjustments: AdjustmentsMsg) -> None:
        self.office.send(adjustments, Performative.REQUEST, zone_address(zone_id))

    def vote(self, zone_id: str, vote: str, source: str = "api") -> VoteResult:
        """An occupant's vote (HTTP or MQTT); refused with a reason when it cannot count: not
        hot or cold, or the zone already as far that way as its policy allows (audited)."""
        result = self._vote(zone_id, vote)
        if not result.accepted:
            record_refusal(self.office.metrics, "vote", result.reason, source=source,
                           zone=zone_id if zone_id in self.office.site.zones else None)  # fmt: skip
        return result

    def _vote(self, zone_id: str, vote: str) -> VoteResult:
        if zone_id not in self.office.site.zones:
            return VoteResult(False, f"unknown zone {zone_id!r}", 0.0)
        low, high, setpoint = self._vote_band(zone_id)
        result = self.votes.cast(
            zone_id,
            vote,
            self.office.clock.monotonic(),
            band_low_c=low,
            band_high_c=high,
            setpoint_c=setpoint,
        )
        self.office.metrics.inc("buildingd_votes_total", accepted=str(result.accepted).lower())
        if result.accepted:
            self.office.state_changed()
        return result

    def _vote_band(self, zone_id: str) -> tuple[float, float, float]:
        """What the VoteBox needs: (low, high, setpoint before any vote offset). A vote offset
        moves heating and cooling setpoints together, so it must keep heating >= the safety
        band's minimum and cooling <= its maximum: the heating setpoint's band is
        [min_c, max_c - (cooling - heating)]. The setpoints are those of the zone's current mode
        in its policy (not the reported ones, which already carry the offset)."""
        policy = self.office.site.policy_for(zone_id)
        state = self.office.zones.get(zone_id)
        base = self._scheduled_band(policy, state.mode if state is not None else "occupied")
        low = policy.safety.min_c
        high = max(low, policy.safety.max_c - (base.cooling_c - base.heating_c))
        return low, high, min(high, max(low, base.heating_c))

    def override(
        self, zone_id: str, what: str, wanted_c: float, source: str = "api"
    ) -> dict[str, object]:
        """A setpoint asked for by hand (HTTP override, Home Assistant): applied as a band offset
        within the same limits as votes (``vote_max_offset_k``, the safety band) or refused
        (audited with its reason)."""
        result = self._override(zone_id, what, wanted_c)
        if not result["accepted"]:
            zone = zone_id if zone_id in self.office.site.zones else None
            why = f"{what}={wanted_c:g}: {result['reason']}"
            record_refusal(self.office.metrics, "override", why, source=source, zone=zone)
        return result

    def _override(self, zone_id: str, what: str, wanted_c: float) -> dict[str, object]:
        if zone_id not in self.office.site.zones:
            return {"accepted": False, "reason": f"unknown zone {zone_id!r}"}
        if what not in ("heating_sp", "cooling_sp"):
            return {"accepted": False, "reason": "only heating_sp and cooling_sp can be set"}
        policy = self.office.site.policy_for(zone_id)
        if not policy.safety.min_c <= wanted_c <= policy.safety.max_c:
            return {"accepted": False, "reason": f"{wanted_c} °C is outside the safety band"}
        state = self.office.zones.get(zone_id)
        if state is None:
            return {"accepted": False, "reason": "zone state not known yet"}
        current = state.heating_sp_c if what == "heating_sp" else state.cooling_sp_c
        offset = round(self.votes.offset(zone_id) + wanted_c - current, 2)
        limit = policy.negotiation.vote_max_offset_k
        if abs(offset) > limit:
            return {"accepted": False, "reason": f"more than {limit} K from the scheduled band"}
        self.votes.override(zone_id, offset, self.office.clock.monotonic())
        self.office.state_changed()
        audit_decision("override", "offset", zone=zone_id, detail=f"{what}={wanted_c}")
        self._adjust(zone_id, AdjustmentsMsg(vote_offset_k=offset))
        return {"accepted": True, "reason": f"band moved {offset:+.1f} K", "offset_k": offset}

    def override_band(self, zone_id: str, heating_c: float, cooling_c: float) -> dict[str, object]:
        """Both setpoints asked for together (Home Assistant's range control): one request,
        checked against the policy (each end within ``vote_max_offset_k`` of the scheduled band,
        inside the safety band, at least 0.5 K apart), applied once, answered with the band."""
        checked = self._override_target(zone_id)
        if isinstance(checked, dict):
            return checked
        policy, state = checked
        heating, cooling = round(heating_c, 1), round(cooling_c, 1)
        base = self._scheduled_band(policy, state.mode)
        refused = overrides.check_band(heating, cooling, base, policy)
        if refused:
            return {"accepted": False, "reason": refused}
        vote_k = round(heating - base.heating_c, 2)
        extra_k = round(cooling - base.cooling_c - vote_k, 2)
        self.votes.override(zone_id, vote_k, self.office.clock.monotonic())
        self.office.state_changed()
        detail = f"heating_sp={heating} cooling_sp={cooling}"
        audit_decision("override", "band", zone=zone_id, detail=detail)
        self._adjust(zone_id, AdjustmentsMsg(vote_offset_k=vote_k, cooling_extra_k=extra_k))
        return {"accepted": True, "reason": f"band set to {heating:g}..{cooling:g} °C",
                "heating_sp_c": heating, "cooling_sp_c": cooling}  # fmt: skip

    def override_mode(self, zone_id: str, mode: str) -> dict[str, object]:
        """A zone mode asked for by hand: occupied, standby or unoccupied for the policy's
        ``mode_override_s`` (then the zone returns to its schedule by itself); "schedule" ends
        it now."""
        checked = self._override_target(zone_id)
        if isinstance(checked, dict):
            return checked
        policy, _ = checked
        refused = overrides.check_mode(mode)
        if refused:
            return {"accepted": False, "reason": refused}
        wanted = "" if mode == "schedule" else mode
        until = self.office.clock.now() + timedelta(seconds=policy.negotiation.mode_override_s)
        audit_decision("override", "mode", zone=zone_id, detail=mode)
        self._adjust(zone_id, AdjustmentsMsg(mode_override=wanted, mode_until=until))
        if not wanted:
            return {"accepted": True, "reason": "back to the schedule"}
        return {"accepted": True, "mode": mode, "until": until.isoformat(),
                "reason": f"{mode} until {until.isoformat(timespec='minutes')}"}  # fmt: skip

    def override_light(self, zone_id: str, level_pct: float) -> dict[str, object]:
        """A light level asked for by hand: kept while people are there, ended by the vacancy
        timeout like any lighting."""
        checked = self._override_target(zone_id, in_hold=True)  # lights work in a safe hold
        if isinstance(checked, dict):
            return checked
        kinds = {p.kind for p in self._zone_points(zone_id)}
        policy, state = checked
        # Lights off and nobody there: past the vacancy timeout (or daylight is enough, which
        # reads the same here); a level set now would be dropped at once, so it is refused.
        vacant = state.occupied is False and state.light_level_pct == 0
        vacant = vacant and not policy.lighting.on_through_schedule
        refused = overrides.check_light(level_pct, kinds, vacant=vacant)
        if refused:
            return {"accepted": False, "reason": refused}
        level = round(level_pct)
        audit_decision("override", "light", zone=zone_id, detail=f"{level}%")
        self._adjust(zone_id, AdjustmentsMsg(light_override_pct=level))
        return {"accepted": True, "light_level_pct": level,
                "reason": f"lights {level} % until the vacancy timeout"}  # fmt: skip

    def _override_target(
        self, zone_id: str, in_hold: bool = False
    ) -> tuple[Policy, ZoneStateMsg] | dict[str, object]:
        """The zone's policy and state, or the refusal (unknown zone, no state yet, a safe hold
        unless ``in_hold``)."""
        if zone_id not in self.office.site.zones:
            return {"accepted": False, "reason": f"unknown zone {zone_id!r}"}
        state = self.office.zones.get(zone_id)
        if state is None:
            return {"accepted": False, "reason": "zone state not known yet"}
        if state.mode == "hold" and not in_hold:
            return {"accepted": False, "reason": "safe hold (no usable temperature sensor)"}
        return self.office.site.policy_for(zone_id), state

    def _zone_points(self, zone_id: str) -> list[PointBase]:
        return [p for d in self.office.site.devices.values() if d.enabled
                for p in d.points_list() if p.zone == zone_id]  # fmt: skip

    @staticmethod
    def _scheduled_band(policy: Policy, mode: str) -> Band:
        comfort = policy.comfort
        return {"standby": comfort.standby, "unoccupied": comfort.unoccupied}.get(
            mode, comfort.occupied
        )

    def tick(self, now_s: float) -> None:
        """Settle every zone's votes: a zone moves when one side leads (``VoteBox``)."""
        for zone_id in self.votes.zones():
            if zone_id not in self.office.site.zones:
                continue  # removed by a reload
            low, high, setpoint = self._vote_band(zone_id)
            settled = self.votes.settle(zone_id, now_s, low, high, setpoint_c=setpoint)
            if settled.moved:
                detail = f"{settled.offset_k:+.1f} K: {settled.reason}"
                audit_decision("vote", "offset", zone=zone_id, detail=detail)
                self._adjust(zone_id, AdjustmentsMsg(vote_offset_k=settled.offset_k))
                self.office.state_changed()
