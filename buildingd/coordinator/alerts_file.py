"""Open break-glass alerts, kept in ``<state_dir>/alerts.json`` so that a restart (SIGKILL too)
neither forgets an alert nor its acknowledgement. Owns the file's format (versioned) and its
conversion to and from incidents; the atomic write is ``statefile``'s, the decisions the
break-glass desk's. Monotonic times are not kept: they are rebuilt from wall-clock times on load."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from buildingd.coordinator.escalation import Cause, Incident, IncidentKey, Severity, SubjectKind
from buildingd.errors import BuildingdError
from buildingd.statefile import write_atomic

FILE_NAME = "alerts.json"


class SavedAlert(BaseModel):
    """One open incident as written to the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    subject: str = Field(min_length=1, max_length=200)
    cause: Cause
    kind: SubjectKind
    severity: Severity
    summary: str = Field(max_length=2000)
    tried: str = Field(max_length=4000)
    left_state: str = Field(max_length=2000)
    contacts: list[str] = Field(max_length=100)
    reminder_interval_s: float = Field(gt=0)
    since: AwareDatetime
    last_seen: AwareDatetime
    ref: str | None = Field(default=None, max_length=200)
    repeats: int = Field(ge=0)
    reminders: int = Field(ge=0)
    acknowledged_by: str | None = Field(default=None, max_length=100)
    acknowledged_at: AwareDatetime | None = None


class AlertsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    alerts: list[SavedAlert] = Field(default_factory=list)


class AlertsFileError(BuildingdError):
    """The file exists but cannot be read or is not an alerts file."""

    def __init__(self, path: Path, why: str) -> None:
        self.path = path
        super().__init__(f"{path}: {why}")


def to_file(incidents: list[Incident]) -> AlertsFile:
    return AlertsFile(
        alerts=[
            SavedAlert(
                id=i.id,
                subject=i.subject,
                cause=i.cause,
                kind=i.kind,
                severity=i.severity,
                summary=i.summary,
                tried=i.tried,
                left_state=i.left_state,
                contacts=list(i.contacts),
                reminder_interval_s=i.reminder_interval_s,
                since=i.since,
                last_seen=i.last_seen,
                ref=i.ref,
                repeats=i.repeats,
                reminders=i.reminders,
                acknowledged_by=i.acknowledged_by,
                acknowledged_at=i.acknowledged_at,
            )
            for i in incidents
        ]
    )


def to_incident(saved: SavedAlert, now_s: float, now: datetime) -> Incident:
    """The incident again, its monotonic times placed as far back as its wall-clock times are
    (a clock set back cannot put them in the future); announced now (``last_notice_s``)."""

    def ago_s(at: datetime) -> float:
        return now_s - max(0.0, (now - at).total_seconds())

    acknowledged = saved.acknowledged_at
    return Incident(
        id=saved.id,
        key=IncidentKey(saved.subject, saved.cause),
        kind=saved.kind,
        severity=saved.severity,
        summary=saved.summary,
        tried=saved.tried,
        left_state=saved.left_state,
        contacts=list(saved.contacts),
        reminder_interval_s=saved.reminder_interval_s,
        since_s=ago_s(saved.since),
        since=saved.since,
        last_seen_s=ago_s(saved.last_seen),
        last_seen=saved.last_seen,
        last_notice_s=now_s,
        ref=saved.ref,
        repeats=saved.repeats,
        reminders=saved.reminders,
        acknowledged_by=saved.acknowledged_by,
        acknowledged_at=acknowledged,
        acknowledged_s=ago_s(acknowledged) if acknowledged is not None else None,
    )


def load(path: Path) -> AlertsFile:
    """The alerts in ``path``; none when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AlertsFile()
    except OSError as err:
        raise AlertsFileError(path, str(err)) from err
    except UnicodeDecodeError as err:
        raise AlertsFileError(path, f"not UTF-8 text at byte {err.start}") from err
    try:
        return AlertsFile.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise AlertsFileError(path, f"{where}: {first['msg']}") from err


def save(path: Path, data: AlertsFile) -> None:
    write_atomic(path, json.dumps(data.model_dump(mode="json"), indent=1, sort_keys=True) + "\n")
