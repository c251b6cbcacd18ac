"""``/metrics`` through prometheus_client: a collector over a running daemon (the bus, devices,
agents, telemetry, the broker, alerts and the daemon's ``Metrics``), rendered in the text format."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from buildingd.agents.runtime import ChildState

if TYPE_CHECKING:
    from buildingd.service.app import Daemon

# One ``name="value"`` pair of a ``Metrics`` key (``name{a="x",b="y"}``, see buildingd.metrics).
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics_text(daemon: Daemon) -> str:
    """Prometheus text exposition format 0.0.4 of the daemon's figures now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return generate_latest(registry).decode()


class DaemonCollector:
    """Reads the daemon's figures at each scrape; keeps no state of its own."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}

        def add(
            name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]
        ) -> None:
            family = families.get(name)
            if family is None:
                base = name.removesuffix("_total") if kind == "counter" else name
                family = families[name] = Metric(base, help_, kind)
            for labels, value in samples:
                family.add_sample(name, labels, value)

        daemon = self.daemon
        stats = daemon.bus.stats
        add("buildingd_bus_messages_total", "counter",
            "Messages on the agent bus by performative/ontology.",
            [({"kind": k}, float(v)) for k, v in sorted(stats.by_kind.items())])  # fmt: skip
        add("buildingd_bus_invalid_total", "counter", "Messages refused by the bus.",
            [({}, float(stats.invalid))])  # fmt: skip
        from buildingd.service.api import devices_json

        add("buildingd_device_up", "gauge", "1 when the device answers, 0 when unavailable.",
            [({"device": d["id"]}, 1.0 if d["available"] else 0.0)
             for d in devices_json(daemon)])  # fmt: skip
        sup = daemon.supervisor
        children = list(sup.children.values()) if sup is not None else []
        add("buildingd_agent_restarts_total", "counter",
            "Restarts of each agent by the supervisor.",
            [({"agent": c.name}, float(c.restarts)) for c in children])  # fmt: skip
        add("buildingd_agents_failed", "gauge", "Agents the supervisor gave up on.",
            [({}, float(sum(c.state is ChildState.FAILED for c in children)))])  # fmt: skip
        sink_stats = daemon.sink.stats() if daemon.sink is not None else {}
        add("buildingd_telemetry", "gauge",
            "Telemetry sink figures (buffer depth, drops, written).",
            [({"figure": k}, float(v)) for k, v in sorted(sink_stats.items())])  # fmt: skip
        if daemon.broker is not None:
            from buildingd.mqtt.broker_limits import REFUSED

            add("buildingd_broker_refused_total", "counter",
                "What the embedded broker refused: publishes above max_payload_bytes (client "
                "disconnected) and retained payloads not kept.",
                [({"what": k}, float(v)) for k, v in REFUSED.items()])  # fmt: skip
        add("buildingd_alerts_open", "gauge",
            "Open alerts: degraded zones, devices down, failed agents, unacknowledged escalations.",
            [({}, float(len(daemon.open_alerts())))])  # fmt: skip
        for key, count in sorted(daemon.metrics.counters.items()):
            name, labels = _parse_key(key)
            add(name, "counter", f"{name} (counted by the daemon).", [(labels, float(count))])
        for key, value in sorted(daemon.metrics.gauges.items()):
            name, labels = _parse_key(key)
            if name == "buildingd_device_up":
                continue  # reported above, from the device agents
            add(name, "gauge", f"{name} (set by the daemon).", [(labels, value)])
        yield from families.values()


def _parse_key(key: str) -> tuple[str, dict[str, str]]:
    """``name{a="x"}`` (a ``Metrics`` key) -> ``("name", {"a": "x"})``."""
    name, _, rest = key.partition("{")
    return name, {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(rest)}
