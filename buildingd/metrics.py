"""The daemon's counters and gauges (Prometheus-style names), filled by every layer and read by
``/metrics`` and the exit summary. A bottom-layer module: it imports nothing from buildingd."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass
class Metrics:
    """Counters and gauges for /metrics and the exit summary (names are Prometheus-style)."""

    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    gauges: dict[str, float] = field(default_factory=dict)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self.counters[_key(name, labels)] += amount  # type: ignore[assignment]

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[_key(name, labels)] = value


def _key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"
