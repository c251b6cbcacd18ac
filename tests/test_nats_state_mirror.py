"""The coordinator's state in the site's KV bucket on a real 3-node NATS cluster
(nats/state_mirror.py): a new leader's takeover reads what the last one wrote and claims every
key, after which a write from the deposed leader is refused and counted, never lands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from buildingd.metrics import Metrics
from buildingd.nats.connection import NatsErrors, connect
from buildingd.nats.state_mirror import REFUSED_METRIC, Deposed, StateMirror
from buildingd.settings import NatsSettings
from tests.conftest import until
from tests.nats_cluster import NatsCluster

pytestmark = pytest.mark.nats


def test_a_deposed_leaders_write_is_refused_after_the_takeover(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    async def main() -> None:
        conns = []
        for gateway in ("a", "b"):
            user = f"hq-{gateway}"
            settings = NatsSettings(enabled=True, servers=nats_cluster.urls, user=user,
                                    password=f"pw-{user}")  # fmt: skip
            conns.append(await connect(settings, user, NatsErrors()))
        votes: dict[str, Any] = {"votes": {"hall": {"offset_k": 0.5}}, "air_handlers": []}
        old_dir, new_dir = tmp_path / "a", tmp_path / "b"
        old_dir.mkdir()
        (old_dir / "commitments.json").write_text('{"c1": "in force"}')
        metrics = Metrics()
        old = StateMirror(conns[0], "hq", old_dir, carried=lambda: votes, wall=lambda: 1.0,
                          metrics=metrics, gateway_id="a")  # fmt: skip
        new = StateMirror(conns[1], "hq", new_dir, carried=lambda: None, gateway_id="b")
        try:
            await old.take_over(30.0)  # the first leader: nothing to read, claims the keys
            await old.push_changed()
            await new.take_over(30.0)
            assert (new_dir / "commitments.json").read_text() == '{"c1": "in force"}'
            assert new.taken is not None and new.taken["votes"] == votes["votes"]
            # The deposed leader, still believing it leads, writes: refused, counted.
            (old_dir / "commitments.json").write_text('{"c2": "late"}')
            votes["votes"]["hall"]["offset_k"] = 1.0
            old.changed.set()
            with pytest.raises(Deposed):
                await old.push_changed()
            pushing = asyncio.create_task(old.keep_pushing(lambda: True))
            await until(lambda: old.refused, "the deposed leader's write refused", 30)
            pushing.cancel()
            await asyncio.gather(pushing, return_exceptions=True)
            assert old.deposed  # and it tries no more
            assert metrics.counters[REFUSED_METRIC] == 1
            kv = await new.open()
            assert (await kv.get("commitments.json")).value == b'{"c1": "in force"}'
            carried = json.loads((await kv.get("carried")).value or b"{}")
            assert carried["votes"]["hall"]["offset_k"] == 0.5 and carried["by"] == "a"
        finally:
            for nc in conns:
                await nc.close()

    asyncio.run(main())
