"""buildingd: a smart-building controller (agents, drivers, zone control, telemetry)."""

__version__ = "0.1.0"
