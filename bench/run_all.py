"""Run every ``bench/bench_*.py`` script and merge their JSON into one file.

Each script prints one JSON object with its figures and, beside each, the baseline measured in the
same run; this merges them under the script's name, with the machine and the time, e.g.
``python bench/run_all.py --out bench/results.json``. A failing script is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: Path, timeout_s: float) -> dict[str, object]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=HERE.parent,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    took = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-2000:], "seconds": took}
    try:
        figures = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        return {"error": f"not JSON: {err}", "stdout": proc.stdout[-2000:], "seconds": took}
    return {**figures, "seconds": took}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--only", help="substring of the scripts to run")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if args.only in s.name]
    results: dict[str, object] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    failed = 0
    for script in scripts:
        print(f"bench: {script.name} ...", file=sys.stderr, flush=True)
        outcome = run(script, args.timeout_s)
        failed += "error" in outcome
        results[script.stem.removeprefix("bench_")] = outcome
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
