"""buildingd: a smart-building controller (agents, drivers, zone control, negotiation, telemetry)."""

__version__ = "0.1.0"
