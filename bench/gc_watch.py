"""The cyclic collector's passes seen while a benchmark runs (``gc.callbacks``): how many per
generation and the longest, each one a pause of the event loop."""

from __future__ import annotations

import time

MS = 1000.0


class CollectorWatch:
    """The collector's passes (generation, seconds) since the last ``clear``; append it to
    ``gc.callbacks`` to start watching, remove it to stop."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, float]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.passes.append((info["generation"], time.perf_counter() - self._started))

    def clear(self) -> None:
        self.passes.clear()

    def summary(self) -> dict[str, object]:
        """Per generation: how many passes and the longest (ms)."""
        return {
            f"gen{g}": {"passes": len(d), "longest_ms": round(max(d, default=0.0) * MS, 1)}
            for g in (0, 1, 2)
            for d in [[s for gen, s in self.passes if gen == g]]
        }
