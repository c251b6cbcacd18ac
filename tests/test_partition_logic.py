"""When a gateway counts as cut off from the NATS cluster, and when it is back: once each per
episode, however many probes fail or answer (``nats.partition.Partition``, pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from buildingd.nats.partition import Partition


def test_failures_shorter_than_the_grace_are_no_partition() -> None:
    p = Partition(grace_s=6.0)
    p.answered(0.0)
    assert not any(p.failed(t, "timeout") for t in (1.0, 3.0, 5.9))
    assert p.answered(6.5) is None
    assert not p.failed(7.0, "timeout")  # the grace counts from the first failure again
    assert not p.cut_off


def test_a_partition_is_said_once_and_its_end_once_with_how_long_it_lasted() -> None:
    p = Partition(grace_s=6.0)
    p.answered(0.0)
    said = [t for t in (1.0, 4.0, 7.0, 8.0, 20.0) if p.failed(t, "no connection")]
    assert said == [7.0] and p.cut_off and p.last_problem == "no connection"
    assert p.answered(21.0) == 20.0  # cut off since the first failure at 1 s
    assert p.answered(22.0) is None and not p.cut_off


@given(st.lists(st.tuples(st.floats(0.0, 3.0), st.booleans()), max_size=60))
def test_cut_and_healed_alternate(steps: list[tuple[float, bool]]) -> None:
    p, t, said = Partition(grace_s=5.0), 0.0, []
    for dt, ok in steps:
        t += dt
        if ok and p.answered(t) is not None:
            said.append("healed")
        elif not ok and p.failed(t, "x"):
            said.append("cut")
    assert all(a != b for a, b in zip(said, said[1:], strict=False))
    assert not said or said[0] == "cut"
