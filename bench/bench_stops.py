"""Stops (JSON on stdout): the real daemon on the demo building with its Modbus devices polled
every 0.05 s gets SIGTERM at a random moment of its polling, ``STOPS`` times in a row; the time
from the signal to the process's exit, its distribution, and how many exited with status 0 within
5 s (the goal: all of them). Uses the same start-and-stop as tests/test_stops.py."""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import REPO
from tests.test_stops import fast_polling, run_and_stop

STOPS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
GOAL_S = 5.0


def main() -> None:
    rng = random.Random(100)
    times: list[float] = []
    codes: list[int | None] = []
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        shutil.copy(REPO / "site.yaml", site / "site.yaml")
        shutil.copytree(REPO / "devices", site / "devices",
                        ignore=shutil.ignore_patterns("*.example"))  # fmt: skip
        shutil.copytree(REPO / "policies", site / "policies")
        fast_polling(site, 0.05)
        for i in range(STOPS):
            marks: dict[str, float] = {}
            rc, _lines = run_and_stop(site, Path(tmp) / f"state{i}", rng, marks)
            codes.append(rc)
            times.append(marks["exited"] - marks["signalled"])
    ordered = sorted(times)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    on_time = sum(c == 0 and t <= GOAL_S for c, t in zip(codes, times, strict=True))
    print(json.dumps({"stops": {
        "stops": STOPS, "poll_interval_s": 0.05,
        "exit_0": sum(c == 0 for c in codes),
        "within_5_s_with_exit_0": on_time,
        "signal_to_exit_s": {"min": at(0), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99),
                             "max": round(max(times), 3)},
    }}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
