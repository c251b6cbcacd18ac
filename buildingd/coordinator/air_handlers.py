"""The air-handler desk: ASHRAE G36 trim & respond of each air handler's shared setpoints, one
loop over every reset: supply-air temperature from its zones' cooling requests, and duct static
pressure (where the device file has a ``duct_static_pressure_setpoint`` point) from the terminal
units' requests the zones count in their summaries. Each new setpoint goes through the device
agents' command path (limits, write, read-back); a refused write is sent again at the next tick.

Owns the reset loops, the last setpoint written and the zones' cooling-request timers; the G36
logic itself is ``control.trim_respond``. Nothing persisted: after a restart every reset holds
SP0 through its delay again, as G36 asks after a start. A standby taking over from another
gateway's coordinator (the air handler did not restart) carries the loops on (``export``,
``restore``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from buildingd.agents.bus import Performative
from buildingd.agents.messages import CommandMsg, CommandResultMsg, device_address
from buildingd.audit import audit_decision
from buildingd.config.base import PointBase
from buildingd.control.trim_respond import (
    REQUEST_2_ABOVE_K,
    REQUEST_3_ABOVE_K,
    TrimRespond,
    TrimRespondParams,
    cooling_requests,
)
from buildingd.coordinator.office import Office
from buildingd.points import PointKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signal:
    """What a reset sets, from which requests, and how its audit line names the value."""

    kind: PointKind  # of the air handler's setpoint point written
    requests: str  # for the reason: "<n> cooling requests"
    audit_key: str  # setpoint_c, setpoint_pa


SUPPLY_AIR = Signal(PointKind.SUPPLY_AIR_TEMPERATURE_SETPOINT, "cooling", "setpoint_c")
STATIC_PRESSURE = Signal(PointKind.DUCT_STATIC_PRESSURE_SETPOINT, "static pressure", "setpoint_pa")


@dataclass
class Reset:
    ahu_id: str
    signal: Signal
    loop: TrimRespond
    written: float | None = None  # the setpoint last sent (None: send at the next step)


class AirHandlerDesk:
    def __init__(self, office: Office) -> None:
        self.office = office
        self.resets: list[Reset] = []
        # G36's "for 2 minutes" timers per zone: since when above sp + 3 K and sp + 2 K.
        self._hot_since: dict[str, tuple[float | None, float | None]] = {}
        self._cooling: dict[str, int] = {}  # each zone's cooling requests last counted
        self._counters: dict[Signal, Callable[[str, float], int]] = {
            SUPPLY_AIR: self._cooling_requests,
            STATIC_PRESSURE: self._pressure_requests,
        }

    def loops(self, signal: Signal) -> dict[str, TrimRespond]:
        """The reset loops of one kind, by air handler."""
        return {r.ahu_id: r.loop for r in self.resets if r.signal is signal}

    def start(self, now_s: float) -> None:
        """The resets start (held at SP0 through the delay): supply-air temperature for each air
        handler; duct static pressure (G36 5.16.1.2) for each whose device file has a
        ``duct_static_pressure_setpoint`` point, its range the site file's narrowed to every such
        point's write limits, so no step is ever refused as out of range (the command path still
        checks each write)."""
        site = self.office.site
        self.resets = []
        for ahu_id, sat in site.supply_air_reset.items():
            params = TrimRespondParams(
                sp0=sat.sp0_c, sp_min=sat.min_c, sp_max=sat.max_c, delay_s=sat.delay_s,
                step_s=sat.step_s, ignored=sat.ignored_requests, trim=sat.trim_k,
                respond=sat.respond_k, respond_max=sat.respond_max_k,
            )  # fmt: skip
            self.resets.append(Reset(ahu_id, SUPPLY_AIR, TrimRespond(params, now_s)))
        for ahu_id, reset in site.static_pressure_reset.items():
            points = self._points(ahu_id, STATIC_PRESSURE.kind)
            if not points:
                continue
            low, high = reset.min_pa, reset.max_pa
            for _, point in points:
                if point.limits is not None:
                    low, high = max(low, point.limits.min), min(high, point.limits.max)
            if low > high:
                log.error("coordinator: no duct static pressure reset for %s: its range "
                          "%g..%g Pa misses the setpoint points' limits", ahu_id,
                          reset.min_pa, reset.max_pa)  # fmt: skip
                continue
            params = TrimRespondParams(
                sp0=min(high, max(low, reset.sp0_pa)), sp_min=low, sp_max=high,
                delay_s=reset.delay_s, step_s=reset.step_s, ignored=reset.ignored_requests,
                trim=reset.trim_pa, respond=reset.respond_pa, respond_max=reset.respond_max_pa,
            )  # fmt: skip
            self.resets.append(Reset(ahu_id, STATIC_PRESSURE, TrimRespond(params, now_s)))

    def export(self, shift_s: float) -> list[dict[str, Any]]:
        """Each loop's setpoint and next step (shifted by ``shift_s`` to a shared clock)."""
        return [{"air_handler": r.ahu_id, "kind": r.signal.kind.value,
                 "setpoint": r.loop.setpoint, "next_step_s": round(r.loop.next_step_s + shift_s, 3)}
                for r in self.resets]  # fmt: skip

    def restore(self, data: list[dict[str, Any]], shift_s: float) -> int:
        """Carry on the loops of an ``export`` (after ``start``): each setpoint kept inside its
        loop's range, written again at the next step. ``ValueError`` for a malformed one; a loop
        the export lacks starts afresh. The number of loops carried on."""
        taken = {}
        try:
            for item in data:
                taken[(str(item["air_handler"]), str(item["kind"]))] = (
                    float(item["setpoint"]),
                    float(item["next_step_s"]) - shift_s,
                )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an air-handler export: {err!r}") from err
        carried = 0
        for reset in self.resets:
            found = taken.get((reset.ahu_id, reset.signal.kind.value))
            if found is None:
                continue
            p = reset.loop.params
            reset.loop.setpoint = min(p.sp_max, max(p.sp_min, found[0]))
            reset.loop.next_step_s = found[1]
            reset.written = None
            carried += 1
        return carried

    def tick(self, now_s: float) -> None:
        """One G36 step of every reset (each changes its setpoint once per time step)."""
        if self.office.ctx.ready_s is None:
            return  # the air handlers' device agents may not be listening yet
        air_handlers = self.office.site.air_handlers
        for reset in self.resets:
            count = self._counters[reset.signal]
            requests = sum(count(zone_id, now_s) for zone_id in air_handlers.get(reset.ahu_id, []))
            setpoint = reset.loop.step(now_s, requests)
            if reset.written == setpoint:
                continue
            reset.written = setpoint
            self.office.state_changed()
            reason = f"G36 trim & respond: {requests} {reset.signal.requests} requests"
            value: dict[str, Any] = {reset.signal.audit_key: setpoint}  # setpoint_c=18.0
            audit_decision("trim-respond", "setpoint", detail=reason, air_handler=reset.ahu_id,
                           **value)  # fmt: skip
            for device_id, point in self._points(reset.ahu_id, reset.signal.kind):
                cmd = CommandMsg(point_id=point.id, value=setpoint, zone_id=None, reason=reason)
                self.office.send(cmd, Performative.REQUEST, device_address(device_id))

    def refused(self, result: CommandResultMsg) -> None:
        """A write the device agent refused or could not make: written again at the next step."""
        for reset in self.resets:
            if reset.signal.kind is result.kind:
                reset.written = None
        why = result.error or result.reason
        log.warning("coordinator: %s.%s refused %s: %s",
                    result.device_id, result.point_id, result.value, why)  # fmt: skip

    def _pressure_requests(self, zone_id: str, now_s: float) -> int:
        # The zones count their terminal units' requests (G36 5.6.8.2) in their summaries.
        state = self.office.zones.get(zone_id)
        return state.pressure_requests if state is not None else 0

    def _cooling_requests(self, zone_id: str, now_s: float) -> int:
        state = self.office.zones.get(zone_id)
        if state is None or state.temperature_c is None:
            return 0
        excess = state.temperature_c - state.cooling_sp_c
        since3, since2 = self._hot_since.get(zone_id, (None, None))
        since3 = (since3 if since3 is not None else now_s) if excess > REQUEST_3_ABOVE_K else None
        since2 = (since2 if since2 is not None else now_s) if excess > REQUEST_2_ABOVE_K else None
        self._hot_since[zone_id] = (since3, since2)
        spec = self.office.site.zones[zone_id]
        # No loop signal in the summary: full cooling 1 K above the setpoint (the terminal's
        # proportional band), as the simulator's thermostat.
        loop_pct = 100 * min(1.0, max(0.0, excess)) if spec.cooling_capacity_w else 0.0
        count = cooling_requests(
            state.temperature_c,
            state.cooling_sp_c,
            loop_pct,
            above_3k_for_s=now_s - since3 if since3 is not None else 0.0,
            above_2k_for_s=now_s - since2 if since2 is not None else 0.0,
            previous=self._cooling.get(zone_id, 0),
        )
        self._cooling[zone_id] = count
        return count

    def _points(self, ahu_id: str, kind: PointKind) -> list[tuple[str, PointBase]]:
        """(device id, point) of each writable ``kind`` point of the air handler's devices (the
        device named like it, or ``<ahu>-...``); a read-only one is the plant's own, monitored."""
        return [
            (device.id, point)
            for device in self.office.site.devices.values()
            if device.id == ahu_id or device.id.startswith(f"{ahu_id}-")
            for point in device.points_list()
            if point.kind is kind and point.writable
        ]
