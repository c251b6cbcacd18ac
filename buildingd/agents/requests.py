"""Requests from outside (MQTT, HTTP): a refusal is recorded the same way whatever the kind and
the way in: one audit line with its reason and ``buildingd_requests_refused_total{kind,source}``.
Retained messages on request topics never act (``buildingd_mqtt_retained_ignored_total``)."""

from __future__ import annotations

from pydantic import ValidationError

from buildingd.audit import audit_decision
from buildingd.metrics import Metrics

REFUSED_METRIC = "buildingd_requests_refused_total"
RETAINED_METRIC = "buildingd_mqtt_retained_ignored_total"


def record_refusal(
    metrics: Metrics, kind: str, reason: str, *, source: str, zone: str | None = None
) -> None:
    """Audit and count a refused request (``kind``: demand-response, vote, override)."""
    metrics.inc(REFUSED_METRIC, kind=kind, source=source)
    audit_decision(kind, "refused", zone=zone, source=source, detail=reason[:300])


def request_error(err: Exception) -> str:
    """A request's validation error in one line: ``field: message (got input)``."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "request"
        return f"{where}: {first['msg']} (got {str(first.get('input'))[:40]})"
    if isinstance(err, KeyError):
        return f"{err.args[0]}: missing"
    return str(err).splitlines()[0][:300] if str(err) else type(err).__name__
