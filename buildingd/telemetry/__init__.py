"""Telemetry: the line-protocol schema, sinks (local files, InfluxDB with a disk buffer)."""
