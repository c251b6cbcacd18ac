"""The break-glass desk: one alert per incident, for a demand-response negotiation that cannot
meet its target (told by that desk), a zone outside its safety band for longer than
``max_outside_s``, a device or telemetry unavailable for longer than ``device_unavailable_s``
(availability events) and an agent past its restart limit (the supervisor's ``agent-failed``).

Each step of an incident (raised, reminder, acknowledged, cleared) goes to the journal at error
level, to ``ALERTS_TOPIC`` (the MQTT bridge keeps a retained topic per subject) and to the
policies' webhooks; reminders come every reminder interval until a technician acknowledges
(HTTP, or an ``alert-action`` message from MQTT). Owns the incident book (pure, ``escalation``),
``<state_dir>/alerts.json`` and the webhook sender, whose task the agent runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from buildingd.agents.bus import Performative
from buildingd.agents.messages import ALERTS_TOPIC, TELEMETRY, AlertActionMsg, AlertMsg, EventMsg
from buildingd.agents.runtime import RestartPolicy
from buildingd.audit import audit_decision
from buildingd.config.policies import Policy
from buildingd.coordinator import alerts_file
from buildingd.coordinator.escalation import (
    BUILDING,
    Action,
    Cause,
    Incident,
    IncidentBook,
    IncidentKey,
    SubjectKind,
    agent_failed_story,
    contact_names,
    device_down_story,
    journal_line,
    safety_band_story,
    subject_payload,
    telemetry_down_story,
)
from buildingd.coordinator.office import KeptFile, Office
from buildingd.coordinator.webhook import WebhookSender

log = logging.getLogger(__name__)


class BreakGlassDesk:
    def __init__(self, office: Office, state_dir: Path | None = None) -> None:
        self.office = office
        self.book = IncidentBook()  # the daemon hands it to a restarted coordinator
        self.webhooks = WebhookSender(office.ctx.metrics)
        path = state_dir / alerts_file.FILE_NAME if state_dir else None
        # Open alerts (with their acknowledgements) kept across restarts, SIGKILL included.
        self.file = KeptFile(office, path, alerts_file.load, alerts_file.save)
        self._met: list[tuple[str, float]] = []  # negotiations that met their target

    def tick(self, now_s: float) -> None:
        self._watch(now_s)
        self._remind(now_s)

    def escalate(
        self,
        message: str,
        now_s: float,
        *,
        subject: str = BUILDING,
        kind: SubjectKind = SubjectKind.BUILDING,
        cause: Cause = Cause.NEGOTIATION,
        tried: str = "",
        left_state: str = "",
        ref: str | None = None,
    ) -> Incident:
        """Break-glass: the incident for (subject, cause). Only a new one is announced (journal,
        alerts topic, webhooks); a repeat while it is open is folded into it."""
        policies = self._policies_of(kind, subject)
        incident, new = self.book.raise_incident(
            IncidentKey(subject, cause),
            kind=kind,
            summary=message,
            tried=tried,
            left_state=left_state,
            now_s=now_s,
            at=self.office.clock.now(),
            contacts=contact_names(
                (c.name, c.email, c.phone) for p in policies for c in p.escalation.contacts
            ),
            reminder_interval_s=min(
                (p.escalation.reminder_interval_s for p in policies), default=3600.0
            ),
            ref=ref,
        )
        if new:
            self.office.metrics.inc("buildingd_escalations_total", cause=cause.value)
            self._announce(incident, "raised", now_s)
        return incident

    def acknowledge(self, esc_id: str, who: str) -> bool:
        """A technician acknowledges an alert (HTTP or MQTT): its reminders stop, it stays open
        until its cause goes away or it is cleared. False when there is nothing to acknowledge."""
        now = self.office.clock.monotonic()
        incident = self.book.acknowledge(esc_id, who, now, self.office.clock.now())
        if incident is None:
            return False
        audit_decision("escalation", "acknowledged", detail=incident.summary, id=esc_id, by=who)
        self._announce(incident, "acknowledged", now)
        return True

    def clear_alert(self, esc_id: str, who: str) -> bool:
        """A technician clears an alert by hand (needed where the daemon cannot see the cause go
        away: an agent given up on, a negotiation that fell short). A condition that persists
        raises a new alert after its threshold. False when no such alert is open."""
        now = self.office.clock.monotonic()
        incident = self.book.clear(esc_id, now, self.office.clock.now(), by=who)
        if incident is None:
            return False
        audit_decision("escalation", "cleared", detail=incident.summary, id=esc_id, by=who)
        self._announce(incident, "cleared", now)
        return True

    def open_escalations(self) -> list[Incident]:
        """Open alerts nobody has acknowledged yet: what needs a human now."""
        return [i for i in self.book.open_incidents() if i.acknowledged_at is None]

    def incidents(self) -> list[Incident]:
        """Every open incident, acknowledged or not."""
        return self.book.open_incidents()

    def _remind(self, now_s: float) -> None:
        for incident in self.book.due_reminders(now_s):
            self.office.metrics.inc("buildingd_escalation_reminders_total", cause=incident.cause)
            self._announce(incident, "reminder", now_s)

    def _watch(self, now_s: float) -> None:
        """Every tick: raise what lasted long enough, clear what went away."""
        site, book = self.office.site, self.book
        for key in book.conditions(Cause.SAFETY_BAND):
            if key.subject not in site.zones:
                book.observe(key, False, now_s)
        for key in [i.key for i in book.open_incidents() if i.kind is SubjectKind.ZONE]:
            if key.subject not in site.zones:
                self._resolve(key, now_s, "zone removed from the site")
        for zone_id in site.zones:
            state = self.office.zones.get(zone_id)
            if state is None or state.temperature_c is None:
                continue  # unknown is not "back in band"; a dead sensor is its device's alert
            safety = site.policy_for(zone_id).safety
            key = IncidentKey(zone_id, Cause.SAFETY_BAND)
            outside = not safety.min_c <= state.temperature_c <= safety.max_c
            condition = book.observe(key, outside, now_s)
            if condition is None:
                self._resolve(key, now_s, "back inside its safety band")
            elif now_s - condition.since_s >= safety.max_outside_s:
                outside_s = now_s - condition.since_s
                summary, tried, left = safety_band_story(
                    state, safety.min_c, safety.max_c, outside_s
                )
                self.escalate(summary, now_s, subject=zone_id, kind=SubjectKind.ZONE,
                              cause=Cause.SAFETY_BAND, tried=tried, left_state=left)  # fmt: skip
        for key, condition in book.conditions(Cause.DEVICE_DOWN).items():
            device = site.devices.get(key.subject)
            if device is None:
                book.observe(key, False, now_s)
                self._resolve(key, now_s, "device removed from the site")
                continue
            # A device agent restarted after a crash reports its first good poll only in its
            # gauge, not as a "back" event: the gauge is the truth about this process's devices.
            if (
                self.office.metrics.gauges.get(f'buildingd_device_up{{device="{key.subject}"}}')
                == 1
            ):
                book.observe(key, False, now_s)
                self._resolve(key, now_s, "device back")
                continue
            policies = self._policies_of(SubjectKind.DEVICE, key.subject)
            limit_s = min((p.escalation.device_unavailable_s for p in policies), default=900.0)
            down_s = now_s - condition.since_s
            if down_s >= limit_s:
                zone_ids = sorted({p.zone for p in device.points_list() if p.zone in site.zones})
                zones = {z: self.office.zones.get(z) for z in zone_ids if z is not None}
                summary, tried, left = device_down_story(
                    key.subject, condition.detail, down_s, device.poll_interval_s, zones
                )
                self.escalate(summary, now_s, subject=key.subject, kind=SubjectKind.DEVICE,
                              cause=Cause.DEVICE_DOWN, tried=tried, left_state=left)  # fmt: skip
        for key, condition in book.conditions(Cause.TELEMETRY_DOWN).items():
            limit_s = min(
                (p.escalation.device_unavailable_s for p in site.policies.values()), default=900.0
            )
            if now_s - condition.since_s >= limit_s:
                summary, tried, left = telemetry_down_story(
                    condition.detail, now_s - condition.since_s
                )
                self.escalate(summary, now_s, subject=key.subject, kind=SubjectKind.AGENT,
                              cause=Cause.TELEMETRY_DOWN, tried=tried, left_state=left)  # fmt: skip
        self._negotiations_recovered(now_s)

    def negotiation_met(self, conversation_id: str, opened_s: float) -> None:
        """The demand-response desk: a negotiation settled with its target met (acted on at the
        next tick, after that tick's negotiations progressed)."""
        self._met.append((conversation_id, opened_s))

    def _negotiations_recovered(self, now_s: float) -> None:
        """A negotiation opened after a shortfall alert and settled with its target met: the
        building has its flexibility back, the alert clears."""
        key = IncidentKey(BUILDING, Cause.NEGOTIATION)
        for conversation_id, opened_s in self._met:
            incident = self.book.open_for(key)
            if incident is not None and opened_s > incident.since_s:
                self._resolve(key, now_s, f"negotiation {conversation_id} met its target")
        self._met.clear()

    def event(self, event: EventMsg) -> None:
        """Device availability and the supervisor giving up on an agent, from the events."""
        now = self.office.clock.monotonic()
        if event.kind == "availability" and event.source.startswith("device["):
            device_id = event.source.removeprefix("device[").removesuffix("]")
            if device_id not in self.office.site.devices:
                return  # another gateway's device
            key = IncidentKey(device_id, Cause.DEVICE_DOWN)
            down = event.severity != "info"  # "unavailable: why" is a warning, "back" is info
            why = event.message.split(": ", 1)[-1]
            self.book.observe(key, down, now, why)
            if not down:
                self._resolve(key, now, "device back")
        elif event.kind == "availability" and event.source == TELEMETRY:
            key = IncidentKey(TELEMETRY, Cause.TELEMETRY_DOWN)
            down = event.severity != "info"
            self.book.observe(key, down, now, event.message.split(": ", 1)[-1])
            if not down:
                self._resolve(key, now, "telemetry delivered again")
        elif event.kind == "agent-failed":
            # The supervisor's message: "agent <name> stopped after too many restarts: <error>".
            head, _, error = event.message.partition(": ")
            words = head.split()
            name = words[1] if len(words) > 1 and words[0] == "agent" else event.source
            if name.startswith("zone["):
                subject, kind = name.removeprefix("zone[").removesuffix("]"), SubjectKind.ZONE
            elif name.startswith("device["):
                subject, kind = name.removeprefix("device[").removesuffix("]"), SubjectKind.DEVICE
            else:
                subject, kind = name, SubjectKind.AGENT
            limits = RestartPolicy()  # what the daemon's supervisor runs with
            summary, tried, left = agent_failed_story(
                name, error or event.message, limits.max_restarts, limits.window_s
            )
            self.escalate(summary, now, subject=subject, kind=kind, cause=Cause.AGENT_FAILED,
                          tried=tried, left_state=left)  # fmt: skip

    def action(self, msg: AlertActionMsg, sender: str) -> None:
        """Acknowledge or clear by message (the MQTT bridge), or send a snapshot of every
        subject's open alerts (a bridge that starts re-publishes them)."""
        if msg.action == "snapshot":
            book = self.book
            subjects = {s: subject_payload(s, book.of_subject(s)) for s in book.subjects()}
            snapshot = AlertMsg(action="snapshot", subjects=subjects)
            self.office.send(snapshot, Performative.INFORM, ALERTS_TOPIC)
            return
        if msg.alert_id is None:
            raise ValueError(f"{msg.action} without an alert id")
        done = (self.acknowledge if msg.action == "acknowledge" else self.clear_alert)(
            msg.alert_id, msg.by
        )
        if not done:
            raise ValueError(f"{msg.action}: no open alert {msg.alert_id!r} (from {sender})")

    def _resolve(self, key: IncidentKey, now_s: float, why: str) -> None:
        incident = self.book.clear(key, now_s, self.office.clock.now(), by=why)
        if incident is not None:
            self._announce(incident, "cleared", now_s)

    def _policies_of(self, kind: SubjectKind, subject: str) -> list[Policy]:
        """The policies whose contacts, intervals and webhooks apply: the zone's, the policies of
        a device's zones, or every policy for the building and building-level devices."""
        site = self.office.site
        if kind is SubjectKind.ZONE and subject in site.zones:
            return [site.policy_for(subject)]
        if kind is SubjectKind.DEVICE and subject in site.devices:
            zones = {p.zone for p in site.devices[subject].points_list() if p.zone in site.zones}
            ids = sorted({site.zone_policy[z] for z in zones if z is not None})
            if ids:
                return [site.policies[i] for i in ids]
        return list(site.policies.values())

    def _announce(self, incident: Incident, action: Action, now_s: float) -> None:
        """One step in an incident's life, delivered everywhere: the journal at error level (so
        ``journalctl -p err`` tells the whole story, ack and clear included), an event, the
        subject's open alerts on ALERTS_TOPIC (the MQTT bridge keeps them retained per subject)
        and the policies' webhooks (posted by the owned webhook task, never waited for here)."""
        log.error("%s", journal_line(incident, action, now_s))
        alarm = "error" if action in ("raised", "reminder") else "info"
        self.office.event("escalation", alarm, f"{incident.id} {action}: {incident.message}"[:2000])
        subject = incident.subject
        payload = subject_payload(subject, self.book.of_subject(subject))
        alert = AlertMsg(action=action, alert_id=incident.id, subjects={subject: payload})
        self.office.send(alert, Performative.INFORM, ALERTS_TOPIC)
        body = {"event": action, "site": self.office.site.site_id, "alert": incident.to_json()}
        policies = self._policies_of(incident.kind, subject)
        for url in sorted({u for p in policies if (u := p.escalation.webhook_url)}):
            self.webhooks.submit(url, body)
        if self.file.path is not None:
            self.file.save(alerts_file.to_file(self.book.open_incidents()))

    def resume(self, now_s: float) -> None:
        """At start: take up the alerts a previous run left open, acknowledged or not. They are
        not raised again (no second page); the MQTT bridge's snapshot re-publishes them."""
        saved = self.file.load()
        if saved is None:
            return
        wall = self.office.clock.now()
        restored = [
            record.id
            for record in saved.alerts
            if self.book.restore(alerts_file.to_incident(record, now_s, wall))
        ]
        if restored:
            log.warning("coordinator: %d open alerts taken up from %s: %s",
                        len(restored), self.file.path, ", ".join(restored))  # fmt: skip
