"""Break-glass incidents, the pure part: one incident per (subject, cause), repeats folded into it,
reminders on the policy's interval, acknowledgement and clearing. No I/O and no clock reads: every
call is given ``now``; delivery (journal, MQTT, webhook) is the break-glass desk's.

An incident names its subject (a zone, a device, an agent or the building), its cause, what was
tried, the state the zone was left in, since when, its severity and who acknowledged it. An
acknowledgement stops the reminders; the incident stays open until its cause goes away (the zone
is back in band, the device answers again) or a technician clears it.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from buildingd.agents.messages import ZoneStateMsg

BUILDING = "building"  # subject of building-level incidents (a demand-response negotiation)
HISTORY = 100  # cleared incidents kept for look-up


class Cause(StrEnum):
    NEGOTIATION = "negotiation"  # a negotiation cannot meet its target within its limits
    SAFETY_BAND = "safety-band"  # a zone outside its safety band longer than max_outside_s
    DEVICE_DOWN = "device-down"  # a device unavailable longer than device_unavailable_s
    AGENT_FAILED = "agent-failed"  # an agent the supervisor gave up on (restart limit)
    TELEMETRY_DOWN = "telemetry-down"  # telemetry undeliverable longer than device_unavailable_s


class SubjectKind(StrEnum):
    ZONE = "zone"
    DEVICE = "device"
    AGENT = "agent"
    BUILDING = "building"


Severity = Literal["critical", "major", "minor"]
Action = Literal["raised", "reminder", "acknowledged", "cleared"]


def severity_for(cause: Cause, kind: SubjectKind) -> Severity:
    """Critical when people or equipment are at risk now: a zone out of its safety band, a zone
    or device nobody controls any more. Major when the building runs on but degraded."""
    if cause is Cause.SAFETY_BAND:
        return "critical"
    if cause is Cause.AGENT_FAILED:
        return "critical" if kind in (SubjectKind.ZONE, SubjectKind.DEVICE) else "major"
    return "major"


class IncidentKey(NamedTuple):
    subject: str  # zone id, device id, agent name or BUILDING
    cause: Cause


@dataclass(frozen=True)
class Condition:
    """A condition being watched before it becomes an incident (zone out of band, device down)."""

    since_s: float
    detail: str = ""


@dataclass
class Incident:
    id: str
    key: IncidentKey
    kind: SubjectKind
    severity: Severity
    summary: str
    tried: str
    left_state: str
    contacts: list[str]
    reminder_interval_s: float
    since_s: float  # monotonic
    since: datetime  # wall clock, UTC
    last_seen_s: float
    last_seen: datetime
    last_notice_s: float  # when it was last announced (raised or reminded)
    ref: str | None = None  # e.g. the conversation id of the negotiation
    repeats: int = 0  # raised again while open: folded in, no new alert
    reminders: int = 0
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    acknowledged_s: float | None = None
    cleared_by: str | None = None  # a technician, or why the cause went away
    cleared_at: datetime | None = None
    cleared_s: float | None = None

    @property
    def subject(self) -> str:
        return self.key.subject

    @property
    def cause(self) -> Cause:
        return self.key.cause

    @property
    def open(self) -> bool:
        return self.cleared_at is None

    @property
    def message(self) -> str:
        """The whole alert on one line: which subject, what happened, what was tried, what state
        it was left in."""
        parts = [self.summary]
        if self.tried:
            parts.append(f"tried: {self.tried}")
        if self.left_state:
            parts.append(f"left: {self.left_state}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        def iso(at: datetime | None) -> str | None:
            return at.astimezone(UTC).isoformat() if at is not None else None

        return {
            "id": self.id,
            "subject": self.subject,
            "kind": self.kind.value,
            "zone": self.subject if self.kind is SubjectKind.ZONE else None,
            "device": self.subject if self.kind is SubjectKind.DEVICE else None,
            "cause": self.cause.value,
            "severity": self.severity,
            "summary": self.summary,
            "tried": self.tried,
            "left_state": self.left_state,
            "since": iso(self.since),
            "last_seen": iso(self.last_seen),
            "repeats": self.repeats,
            "reminders": self.reminders,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": iso(self.acknowledged_at),
            "cleared_by": self.cleared_by,
            "cleared_at": iso(self.cleared_at),
            "contacts": list(self.contacts),
            "ref": self.ref,
        }


def _new_id() -> str:
    return uuid.uuid4().hex[:8]


class IncidentBook:
    """Open incidents by key, the conditions watched before they become incidents, and the last
    ``HISTORY`` cleared ones. Survives a coordinator restart (the daemon hands it over)."""

    def __init__(self, new_id: Callable[[], str] = _new_id) -> None:
        self._new_id = new_id
        self._open: dict[IncidentKey, Incident] = {}
        self._by_id: dict[str, Incident] = {}
        self.history: deque[Incident] = deque(maxlen=HISTORY)
        self._conditions: dict[IncidentKey, Condition] = {}

    # -- incidents -----------------------------------------------------------------------------

    def raise_incident(
        self,
        key: IncidentKey,
        *,
        kind: SubjectKind,
        summary: str,
        tried: str,
        left_state: str,
        now_s: float,
        at: datetime,
        contacts: Sequence[str] = (),
        reminder_interval_s: float = 3600.0,
        severity: Severity | None = None,
        ref: str | None = None,
    ) -> tuple[Incident, bool]:
        """The incident for ``key`` and whether it is new (an alert must go out). A repeat while
        the incident is open only updates ``last_seen``: one alert per incident, no storm."""
        incident = self._open.get(key)
        if incident is not None:
            incident.last_seen_s, incident.last_seen = now_s, at
            incident.repeats += 1
            return incident, False
        incident_id = self._new_id()
        while incident_id in self._by_id:
            incident_id = self._new_id()
        incident = Incident(
            id=incident_id,
            key=key,
            kind=kind,
            severity=severity or severity_for(key.cause, kind),
            summary=summary,
            tried=tried,
            left_state=left_state,
            contacts=list(contacts),
            reminder_interval_s=reminder_interval_s,
            since_s=now_s,
            since=at,
            last_seen_s=now_s,
            last_seen=at,
            last_notice_s=now_s,
            ref=ref,
        )
        self._open[key] = incident
        self._by_id[incident_id] = incident
        return incident, True

    def restore(self, incident: Incident) -> bool:
        """Take up an open incident kept across a restart; False when its key or id is already
        open here (the running book wins)."""
        if incident.key in self._open or incident.id in self._by_id or not incident.open:
            return False
        self._open[incident.key] = incident
        self._by_id[incident.id] = incident
        return True

    def due_reminders(self, now_s: float) -> list[Incident]:
        """Open, unacknowledged incidents whose reminder is due, marked as reminded. Reminders
        fall on ``since + k * interval`` (a late call does not shift the next one), at most one
        per incident and call: a daemon that was suspended does not send a burst."""
        due = []
        for incident in self._open.values():
            interval = incident.reminder_interval_s
            if incident.acknowledged_at is not None or now_s < incident.last_notice_s + interval:
                continue
            # At least one: the test above adds and this divides, so a rounding can make it 0 and
            # leave the slot where it was (every later call would remind again).
            slots = max(1, math.floor((now_s - incident.last_notice_s) / interval))
            incident.last_notice_s += slots * interval
            incident.reminders += 1
            due.append(incident)
        return due

    def acknowledge(self, incident_id: str, by: str, now_s: float, at: datetime) -> Incident | None:
        """Acknowledge an open incident: its reminders stop, it stays open until cleared. None
        when there is nothing to acknowledge (unknown, cleared or already acknowledged)."""
        incident = self._by_id.get(incident_id)
        if incident is None or not incident.open or incident.acknowledged_at is not None:
            return None
        incident.acknowledged_by, incident.acknowledged_at = by, at
        incident.acknowledged_s = now_s
        return incident

    def clear(
        self, target: IncidentKey | str, now_s: float, at: datetime, by: str = "cause gone"
    ) -> Incident | None:
        """Close the open incident for a key (its cause went away) or an id (a technician).
        A condition still watched under that key starts over: if it persists for its whole
        threshold again, a new incident is raised. None when nothing was open (idempotent)."""
        if isinstance(target, IncidentKey):
            incident = self._open.get(target)
        else:
            incident = self._by_id.get(target)
        if incident is None or not incident.open:
            return None
        incident.cleared_by, incident.cleared_at, incident.cleared_s = by, at, now_s
        del self._open[incident.key]
        del self._by_id[incident.id]
        condition = self._conditions.get(incident.key)
        if condition is not None:
            self._conditions[incident.key] = Condition(now_s, condition.detail)
        self.history.append(incident)
        return incident

    def get(self, incident_id: str) -> Incident | None:
        """An open incident by id, else a recently cleared one, else None."""
        found = self._by_id.get(incident_id)
        if found is not None:
            return found
        return next((i for i in reversed(self.history) if i.id == incident_id), None)

    def open_for(self, key: IncidentKey) -> Incident | None:
        return self._open.get(key)

    def open_incidents(self) -> list[Incident]:
        return sorted(self._open.values(), key=lambda i: (i.since_s, i.id))

    def of_subject(self, subject: str) -> list[Incident]:
        return [i for i in self.open_incidents() if i.subject == subject]

    def subjects(self) -> list[str]:
        return sorted({i.subject for i in self._open.values()})

    # -- conditions watched before they become incidents -----------------------------------------

    def observe(
        self, key: IncidentKey, active: bool, now_s: float, detail: str = ""
    ) -> Condition | None:
        """Note whether a condition holds now; returns it (with since when) while it does. The
        caller decides when it has lasted long enough to raise an incident."""
        if not active:
            self._conditions.pop(key, None)
            return None
        condition = self._conditions.get(key)
        if condition is None:
            condition = self._conditions[key] = Condition(now_s, detail)
        return condition

    def conditions(self, cause: Cause) -> dict[IncidentKey, Condition]:
        return {k: c for k, c in self._conditions.items() if k.cause is cause}


# -- what the alert says (pure text) ---------------------------------------------------------------


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def contact_names(contacts: Iterable[tuple[str, str | None, str | None]]) -> list[str]:
    """``Name <email or phone>`` for (name, email, phone) triples, sorted, without repeats."""
    return sorted({f"{name} <{email or phone or '?'}>" for name, email, phone in contacts})


def journal_line(incident: Incident, action: Action, now_s: float) -> str:
    """The journal line (logged at error level) for one step of an incident's life."""
    head = f"BREAK-GLASS {incident.id} {incident.severity} {incident.kind.value} {incident.subject}"
    call = ", ".join(incident.contacts) or "nobody"
    if action == "raised":
        since = incident.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{head}: {incident.message}; since {since}; call {call}"
    if action == "reminder":
        open_for = duration(now_s - incident.since_s)
        return (
            f"{head} reminder {incident.reminders}, unacknowledged for {open_for}: "
            f"{incident.message}; call {call}"
        )
    if action == "acknowledged":
        return (
            f"{head} acknowledged by {incident.acknowledged_by} after "
            f"{duration(now_s - incident.since_s)}: {incident.summary} (open until cleared)"
        )
    return (
        f"{head} cleared ({incident.cleared_by}) after {duration(now_s - incident.since_s)}: "
        f"{incident.summary}"
    )


def subject_payload(subject: str, incidents: Sequence[Incident]) -> dict[str, Any] | None:
    """What the retained alerts topic of ``subject`` carries: its open incidents, or None (an
    empty retained payload, which removes the topic) when it has none."""
    if not incidents:
        return None
    return {
        "subject": subject,
        "kind": incidents[0].kind.value,
        "alerts": [i.to_json() for i in incidents],
    }


def zone_left_state(state: ZoneStateMsg | None) -> str:
    if state is None:
        return "no state reported yet"
    parts = [
        f"{state.mode} mode",
        f"heating setpoint {state.heating_sp_c:.1f} °C",
        f"cooling setpoint {state.cooling_sp_c:.1f} °C",
        f"lights {state.light_level_pct:.0f} %",
    ]
    if state.dehumidifier_on:
        parts.append("dehumidifier on")
    if state.degraded:
        parts.append(f"degraded: {', '.join(state.degraded)}")
    return ", ".join(parts)


def safety_band_story(
    state: ZoneStateMsg, min_c: float, max_c: float, outside_s: float
) -> tuple[str, str, str]:
    """(summary, tried, left state) of a zone outside its safety band."""
    t = state.temperature_c
    side = "below" if t is not None and t < min_c else "above"
    shown = f"{t:.1f} °C" if t is not None else "unknown temperature"
    summary = (
        f"zone {state.zone_id} at {shown}, {side} its safety band {min_c:.1f}..{max_c:.1f} °C "
        f"for {duration(outside_s)}"
    )
    tried = (
        f"zone control in {state.mode} mode kept asking for "
        f"{state.heating_sp_c:.1f}..{state.cooling_sp_c:.1f} °C"
    )
    if state.degraded:
        tried += f" with degraded inputs ({', '.join(state.degraded)})"
    return summary, tried, zone_left_state(state)


def device_down_story(
    device_id: str,
    why: str,
    down_s: float,
    poll_interval_s: float,
    zones: Mapping[str, ZoneStateMsg | None],
) -> tuple[str, str, str]:
    """(summary, tried, left state) of a device that stays unavailable."""
    summary = f"device {device_id} unavailable for {duration(down_s)}: {why or 'no answer'}"
    tried = f"polled every {poll_interval_s:g} s, with the driver's retries, since it went down"
    if not zones:
        left = "building-level device: its readings are missing, writes to it are refused"
    else:
        each = "; ".join(f"{z}: {zone_left_state(s)}" for z, s in sorted(zones.items()))
        left = f"its zones fall back to their other sensors, then a safe hold ({each})"
    return summary, tried, left


def telemetry_down_story(why: str, down_s: float) -> tuple[str, str, str]:
    """(summary, tried, left state) of telemetry that cannot be delivered (InfluxDB away)."""
    summary = f"telemetry undeliverable for {duration(down_s)}: {why}"
    tried = "retried with jittered backoff since it failed"
    left = (
        "control unaffected; telemetry kept in the on-disk buffer and replayed in order when "
        "InfluxDB is back (the oldest dropped past [influx] buffer_max_mb)"
    )
    return summary, tried, left


def agent_failed_story(
    agent: str, error: str, max_restarts: int, window_s: float
) -> tuple[str, str, str]:
    """(summary, tried, left state) of an agent the supervisor gave up on."""
    summary = f"agent {agent} stopped after too many restarts: {error}"
    tried = (
        f"restarted by the supervisor with backoff, more than {max_restarts} crashes "
        f"in {window_s:.0f} s"
    )
    if agent.startswith("zone["):
        left = "zone not controlled: its actuators keep their last written values"
    elif agent.startswith("device["):
        left = "device not polled: its readings go stale and its zones fall back"
    else:
        left = f"{agent} not running"
    return summary, tried, left + " until the daemon is restarted"


def negotiation_story(
    invited: Iterable[str],
    offered: Iterable[str],
    refused: Mapping[str, str],
    awarded: Mapping[str, str],
    committed_w: float,
    target_w: float,
    cancelled: bool,
) -> tuple[str, str]:
    """(tried, left state) of a demand-response negotiation that failed or fell short.
    ``awarded`` maps zone to offer level."""
    n_invited, n_offered = len(set(invited)), len(set(offered))
    reasons = ", ".join(f"{z}: {r}" for z, r in sorted(refused.items())[:5])
    more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
    levels = ", ".join(f"{z}:{level}" for z, level in sorted(awarded.items())) or "none"
    tried = (
        f"cfp to {n_invited} zones, {n_offered} offered, {len(refused)} refused"
        + (f" ({reasons}{more})" if refused else "")
        + f"; awarded {levels} = {committed_w:.0f} W of {target_w:.0f} W"
    )
    if cancelled or not awarded:
        left = "no zone shedding: every awarded zone was told to restore its band"
    else:
        left = f"{len(awarded)} zones shedding {committed_w:.0f} W until the window ends"
    return tried, left
