"""Daemon footprint (JSON on stdout): resident memory and CPU of ``buildingd run`` on the simulator,

- the demo building with every device polled each second,
- a generated site of 200 zones / 2,000 points (600 devices) polled each second,

beside the baseline measured in the same run: an idle interpreter that imported the same modules
(what Python and the libraries cost before buildingd does any work).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sitegen import generate

REPO = Path(__file__).resolve().parent.parent
WARMUP_S = 10.0
WINDOW_S = 20.0
TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def measure(args: list[str], env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(WARMUP_S)
        if proc.poll() is not None:
            raise RuntimeError(f"{args} exited with {proc.returncode}")
        cpu0, t0 = cpu_s(proc.pid), time.monotonic()
        peak = 0.0
        while time.monotonic() - t0 < WINDOW_S:
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(1)
        cpu = (cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
        return {"rss_mb": round(rss_mb(proc.pid), 1), "peak_rss_mb": round(peak, 1),
                "cpu_fraction": round(cpu, 4)}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def demo_at_one_second(folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(REPO / "site.yaml", folder / "site.yaml")
    shutil.copytree(REPO / "policies", folder / "policies")
    (folder / "devices").mkdir()
    for f in (REPO / "devices").glob("*.yaml"):
        text = re.sub(r"poll_interval_s: [0-9.]+", "poll_interval_s: 1", f.read_text())
        (folder / "devices" / f.name).write_text(text)
    return folder


def daemon(site: Path, state: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, BUILDINGD_SITE_DIR=str(site), BUILDINGD_STATE_DIR=str(state),
               BUILDINGD_HTTP__PORT="0", BUILDINGD_MQTT__PORT="0",
               BUILDINGD_SIM__MODBUS_PORT="0", BUILDINGD_SIM__BACNET_PORT="0")  # fmt: skip
    env.pop("NOTIFY_SOCKET", None)
    return [sys.executable, "-m", "buildingd", "run", "--speed", "1", "--no-console"], env


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = measure(
            [sys.executable, "-c", "import buildingd.service.app, time; time.sleep(3600)"],
            dict(os.environ),
        )
        demo = measure(*daemon(demo_at_one_second(root / "demo"), root / "s1"))
        big = measure(*daemon(generate(root / "big", 200, poll_interval_s=1.0), root / "s2"))
    print(
        json.dumps(
            {
                "daemon": {
                    "baseline_idle_interpreter": baseline,
                    "demo_1s_polling": demo,
                    "zones_200_points_2000_1s_polling": big,
                    "ratio_demo_rss_to_baseline": round(demo["rss_mb"] / baseline["rss_mb"], 2),
                    "ratio_200_zones_rss_to_baseline": round(big["rss_mb"] / baseline["rss_mb"], 2),
                }
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
