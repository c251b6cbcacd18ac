"""Coordinator failover on a 3-node NATS cluster on loopback (JSON on stdout): two candidate
processes compete for the site's lease (``nats/lease.py``, the daemon's TTL); the holder is
SIGKILLed and the time until the other holds the lease is measured, over ``--trials`` trials
(a fresh standby started after each). The baseline in the same run is the lease TTL itself.
The coordinator's start after acquisition (tens of ms in tests/test_nats_failover.py's logs) is
not included: each candidate is a lease keeper alone, not a whole daemon.

    .venv/bin/python bench/bench_failover.py [--trials 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildingd.nats.connection import NatsErrors, connect
from buildingd.nats.lease import LeaseKeeper
from buildingd.nats.lease_logic import LeaseTiming
from buildingd.settings import NatsSettings, Settings
from tests.nats_cluster import TEST_USERS, NatsCluster

TTL_S = Settings().nats.lease_ttl_s  # the daemon's default
WAIT_S = 60.0


async def candidate(urls: list[str], gateway: str) -> None:
    """One candidate: print ``acquired <revision> <monotonic>`` when it takes the lease."""
    user = f"hq-{gateway}"
    settings = NatsSettings(enabled=True, servers=urls, user=user, password=f"pw-{user}")
    nc = await connect(settings, user, NatsErrors())

    async def acquired(revision: int) -> None:
        print(f"acquired {revision} {time.monotonic()}", flush=True)

    async def lost() -> None:
        print("lost", flush=True)

    keeper = LeaseKeeper(nc, "hq", gateway, LeaseTiming.for_ttl(TTL_S), acquired, lost)
    print("started", flush=True)
    await keeper.run()


def spawn(urls: list[str], gateway: str) -> subprocess.Popen[str]:
    args = [sys.executable, __file__, "--candidate", json.dumps(urls), gateway]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "started":
        raise RuntimeError(f"candidate {gateway} did not start")
    return proc


def acquisition(proc: subprocess.Popen[str]) -> tuple[int, float]:
    """Block until ``proc`` says it acquired the lease: (revision, monotonic time)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("acquired"):
            _, revision, when = line.split()
            return int(revision), float(when)
    raise RuntimeError("candidate ended without acquiring the lease")


def trials(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NatsCluster(Path(tmp) / "nats", users=TEST_USERS)
        cluster.start()
        procs: list[subprocess.Popen[str]] = []
        try:
            urls = cluster.urls
            leader = spawn(urls, "a")
            procs.append(leader)
            revision, _ = acquisition(leader)
            standby_name = "b"
            failover_s: list[float] = []
            revisions = [revision]
            for _ in range(n):
                standby = spawn(urls, standby_name)
                procs.append(standby)
                time.sleep(TTL_S / 2)  # the standby has tried and seen the key taken
                leader.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                leader.wait()
                revision, acquired = acquisition(standby)
                failover_s.append(acquired - killed)
                revisions.append(revision)
                standby_name = "a" if standby_name == "b" else "b"
                leader = standby
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            cluster.stop()
    ordered = sorted(failover_s)
    return {
        "trials": n,
        "lease_ttl_s": TTL_S,
        "failover_median_s": round(statistics.median(ordered), 2),
        "failover_p99_s": round(ordered[min(n - 1, int(0.99 * n))], 2),
        "failover_max_s": round(ordered[-1], 2),
        "p99_over_ttl": round(ordered[min(n - 1, int(0.99 * n))] / TTL_S, 2),
        "revisions_increasing": all(a < b for a, b in zip(revisions, revisions[1:], strict=False)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--candidate", nargs=2, metavar=("URLS", "GATEWAY"))
    args = parser.parse_args()
    if args.candidate:
        urls, gateway = args.candidate
        asyncio.run(candidate(json.loads(urls), gateway))
        return
    print(json.dumps({"coordinator_failover": trials(args.trials)}, indent=1))


if __name__ == "__main__":
    main()
