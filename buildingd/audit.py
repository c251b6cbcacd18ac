"""Audit lines: one line at NOTICE on the ``buildingd.audit`` logger per actuator command or
coordinator decision. A bottom-layer module (imports nothing from buildingd) so agents, drivers and
the coordinator audit without reaching up into ``service/``; the journal formats these lines."""

from __future__ import annotations

import logging

# Between INFO and WARNING, like syslog's "notice": normal but significant (audit lines).
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

# Shown as "audit:" (the "buildingd." prefix is dropped on every line). Audit lines are never
# filtered by the configured log level: the logger's own level admits INFO and above whatever
# the root level is (set here and again in setup_logging).
AUDIT_LOGGER = "buildingd.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)
audit_log.setLevel(logging.INFO)

# Ids shown first, in this order, on every line that carries them; others follow as given.
ID_ORDER = ("device", "zone", "point")


def value_text(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def audit(event: str, /, **fields: object | None) -> None:
    """One ``audit`` line at NOTICE: ``audit: [device=.. zone=..] <event> key=value ...``.
    ``device``, ``zone`` and ``point`` go into the ids; ``None`` fields are left out."""
    ids = {k: str(v) for k, v in fields.items() if k in ID_ORDER and v is not None}
    rest = {k: v for k, v in fields.items() if k not in ID_ORDER and v is not None}
    text = " ".join([event, *(f"{k}={value_text(v)}" for k, v in rest.items())])
    audit_log.log(NOTICE, "%s", text, extra={"log_ids": ids})


def audit_command(
    device: str,
    point: str,
    value: object,
    *,
    source: str,
    outcome: str,
    zone: str | None = None,
    reason: str | None = None,
    read_back: object | None = None,
) -> None:
    """Audit one actuator command: who asked (``source``, e.g. ``zone:f1-meeting``), what, and
    what happened (``written``, ``rejected``, ``read-back-mismatch``, ``failed``, ...)."""
    audit(
        "command",
        device=device,
        zone=zone,
        point=point,
        value=value,
        read_back=read_back,
        source=source,
        outcome=outcome,
        reason=reason,
    )


def audit_decision(
    kind: str,
    outcome: str,
    *,
    zone: str | None = None,
    conversation: str | None = None,
    detail: str | None = None,
    **fields: object | None,
) -> None:
    """Audit one coordinator decision (``kind``: ``allocation``, ``vote``, ``guardrail``,
    ``escalation``, ...) with its ``outcome`` and the figures it was based on."""
    audit(
        "decision",
        zone=zone,
        kind=kind,
        outcome=outcome,
        conversation=conversation,
        **fields,
        detail=detail,
    )
