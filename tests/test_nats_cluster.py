"""The 3-node NATS test cluster itself: JetStream is up with a meta leader, and a stream
replicated on three nodes keeps every message when the node leading it is SIGKILLed."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from tests.nats_cluster import ADMIN, NatsCluster, NatsNode, publish_stored

pytestmark = pytest.mark.nats


async def test_a_replicated_stream_keeps_its_messages_when_its_leader_is_killed(
    nats_cluster: NatsCluster,
) -> None:
    nc = await nats.connect(servers=nats_cluster.urls, user=ADMIN.name, password=ADMIN.password,
                            max_reconnect_attempts=-1, reconnect_time_wait=0.2)  # fmt: skip
    try:
        js = nc.jetstream(timeout=10)
        info = await js.add_stream(StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3,
                                                storage=StorageType.FILE))  # fmt: skip
        assert info.config.num_replicas == 3
        # Even before the kill: a new stream's subjects reach the other nodes a moment after
        # it is created, and a publish through one of them meanwhile has no responders.
        for i in range(50):
            await publish_retrying(js, i)
        # A durable consumer made before the kill survives it too.
        sub = await js.pull_subscribe("r3.x", durable="reader", stream="R3")
        leader = (await js.stream_info("R3")).cluster.leader  # type: ignore[union-attr]
        index = [n.name for n in nats_cluster.nodes].index(leader)
        nats_cluster.kill(index)
        # The first publishes may wait for the stream's new leader (a Raft election, seconds).
        for i in range(50, 100):
            await publish_retrying(js, i)
        # The stream has a new leader (its info may lag behind the election for a moment).
        await until_new_leader(js, leader)
        nats_cluster.restart(index)
        nats_cluster.wait_meta_leader()
        got: list[int] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(got) < 100 and loop.time() < deadline:
            try:
                msgs = await sub.fetch(100 - len(got), timeout=5)
            except nats.errors.Error:  # the consumer electing a leader after the restart
                await asyncio.sleep(0.2)  # backoff between tries
                continue
            for msg in msgs:
                got.append(int(msg.data))
                await msg.ack()
        assert got == list(range(100))
        assert (await js.stream_info("R3")).state.messages == 100
    finally:
        await nc.close()


async def publish_retrying(js: nats.js.JetStreamContext, i: int) -> None:
    await publish_stored(js, "r3.x", f"{i}".encode(), f"m{i}")


async def until_new_leader(js: nats.js.JetStreamContext, old: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        try:
            info = await js.stream_info("R3")
        except nats.errors.Error:
            info = None
        if info is not None and info.cluster is not None and info.cluster.leader not in (None, old):
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"the stream still has no leader but {old} after 60 s")


async def test_a_paused_node_holds_nothing_up_and_catches_up_when_resumed(
    nats_cluster: NatsCluster,
) -> None:
    """SIGSTOP of one node (a hung machine): the other two keep the quorum, so publishes are
    stored; once resumed, the node serves the stream again with every message."""
    nc = await nats.connect(servers=nats_cluster.urls, user=ADMIN.name, password=ADMIN.password,
                            max_reconnect_attempts=-1, reconnect_time_wait=0.2)  # fmt: skip
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3,
                                         storage=StorageType.FILE))  # fmt: skip
        paused = next(i for i, n in enumerate(nats_cluster.nodes) if n.url not in
                      (nc.connected_url.geturl() if nc.connected_url else ""))  # fmt: skip
        nats_cluster.pause(paused)
        for i in range(30):
            await publish_retrying(js, i)
        node = nats_cluster.nodes[paused]
        nats_cluster.resume(paused)  # it was stopped before the first message
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while stored(node) != 30:  # its own replica, from its monitoring page
            assert loop.time() < deadline, "the resumed node did not catch up in 60 s"
            await asyncio.sleep(0.2)
        assert nats_cluster.wait_meta_leader()
    finally:
        await nc.close()


def stored(node: NatsNode) -> int | None:
    try:
        return node.stored("R3")
    except OSError:  # its monitoring not answering yet
        return None
