"""Telemetry benchmarks (JSON on stdout), against a real victoria-metrics on 127.0.0.1:

- points per second through buildingd's writer (``InfluxSink``) beside influxdb-client's own
  batching write API writing the same points to the same server in the same run;
- store-and-forward: bytes on disk per buffered point, and the replay rate once the server is back.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildingd.settings import InfluxSettings
from buildingd.telemetry.influx import InfluxSink
from buildingd.telemetry.schema import reading_line
from tests.conftest import free_port
from tests.servers import VictoriaMetrics

POINTS = 200_000
BATCH = 5000


def make_lines(tag: str) -> list[str]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    return [
        reading_line(
            tag, f"dev-{i % 100}", "temperature", f"zone-{i % 20}", "temperature", "degC",
            20 + (i % 50) / 10, "good", start + timedelta(seconds=i // 100),
        )
        for i in range(POINTS)
    ]  # fmt: skip


def settings(url: str) -> InfluxSettings:
    return InfluxSettings(
        enabled=True, url=url, token="bench", batch_size=BATCH, flush_interval_s=0.05,
        retry_max_s=0.2, timeout_s=10.0,
    )  # fmt: skip


async def until(done: Callable[[], bool]) -> None:
    """Poll a condition owned by the writer task (the benchmark observes, it does not signal)."""
    while not done():  # noqa: ASYNC110
        await asyncio.sleep(0.001)


def buffer_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.glob("telemetry-buffer.sqlite*"))


async def sink_rate(url: str, state: Path, lines: list[str]) -> float:
    sink = InfluxSink(settings(url), state)
    await sink.start()
    t0 = time.perf_counter()
    for i in range(0, len(lines), BATCH):
        await until(lambda: len(sink.pending) <= 4 * BATCH)  # respect the memory bound
        sink.submit(lines[i : i + BATCH])
    await until(lambda: sink.counters["written"] >= len(lines))
    elapsed = time.perf_counter() - t0
    await sink.stop()
    return len(lines) / elapsed


def client_rate(url: str, lines: list[str]) -> float:
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import WriteOptions
    from influxdb_client.domain.write_precision import WritePrecision

    client = InfluxDBClient(url=url, token="bench", org="bench", enable_gzip=True)
    t0 = time.perf_counter()
    api = client.write_api(write_options=WriteOptions(batch_size=BATCH, flush_interval=50))
    for i in range(0, len(lines), BATCH):
        api.write("bench", "bench", lines[i : i + BATCH], write_precision=WritePrecision.S)
    api.close()  # flushes
    elapsed = time.perf_counter() - t0
    client.close()
    return len(lines) / elapsed


async def store_and_replay(url: str, state: Path, lines: list[str]) -> dict[str, float]:
    away = InfluxSink(settings(f"http://127.0.0.1:{free_port()}"), state)
    await away.start()
    for i in range(0, len(lines), BATCH):
        away.submit(lines[i : i + BATCH])
        await away.flush()
    await away.stop()
    on_disk = buffer_bytes(state)
    back = InfluxSink(settings(url), state)
    t0 = time.perf_counter()
    await back.start()
    await until(lambda: back.buffer.points == 0)
    elapsed = time.perf_counter() - t0
    await back.stop()
    return {
        "bytes_on_disk_per_point": on_disk / len(lines),
        "line_protocol_bytes_per_point": sum(map(len, lines)) / len(lines),
        "replay_points_per_s": len(lines) / elapsed,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        vm = VictoriaMetrics(Path(tmp) / "vm")
        vm.start()
        try:
            ours = asyncio.run(sink_rate(vm.url, Path(tmp) / "s1", make_lines("ours")))
            theirs = client_rate(vm.url, make_lines("client"))
            replay = asyncio.run(store_and_replay(vm.url, Path(tmp) / "s2", make_lines("replay")))
        finally:
            vm.stop()
    result = {
        "telemetry": {
            "points": POINTS,
            "buildingd_writer_points_per_s": round(ours),
            "baseline_influxdb_client_batching_points_per_s": round(theirs),
            "ratio_writer_to_client": round(ours / theirs, 3),
            **{k: round(v, 1) for k, v in replay.items()},
        }
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
