"""Moved to ``buildingd.agents.requests`` (the MQTT bridge records refusals too, and must not
import the coordinator); kept only so ``service/`` imports it from here until it is updated."""

from buildingd.agents.requests import REFUSED_METRIC, RETAINED_METRIC, record_refusal, request_error

__all__ = ["REFUSED_METRIC", "RETAINED_METRIC", "record_refusal", "request_error"]
