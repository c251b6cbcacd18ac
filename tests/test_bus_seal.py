"""The bus seal (HMAC-SHA256, timestamp, counter window) and whom agents may hear from: pure
checks, without a broker (the daemon-level attack is in tests/faults/test_bus_auth.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.agents.bus import Performative
from buildingd.agents.hearing import hearing_problem
from buildingd.agents.messages import CommandMsg
from buildingd.config.loader import load_site
from buildingd.errors import ConfigError
from buildingd.nats.seal import (
    MAX_ORIGINS,
    MAX_SKEW_S,
    REPLAY_WINDOW,
    BusSealer,
    BusVerifier,
    canonical,
    canonical_json,
    load_or_create_key,
)

KEY = b"k" * 32
TOPIC = "buildingd/s/bus/device[d]"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def opened(verifier: BusVerifier, payload: bytes, topic: str = TOPIC) -> str | None:
    problem = verifier.problem(topic, json.loads(payload))
    return problem[0] if problem is not None else None


def test_a_seal_binds_key_topic_content_and_counter() -> None:
    clock = Clock()
    sealer, verifier = BusSealer(KEY, "gw-1", clock), BusVerifier(KEY, clock)
    payload = sealer.seal(TOPIC, {"content": {"value": 21.5}})
    assert opened(verifier, payload) is None
    assert opened(verifier, payload) == "replayed"
    other = sealer.seal(TOPIC, {"content": {"value": 21.5}})
    assert opened(verifier, other, "buildingd/s/bus/device[other]") == "unauthenticated"
    assert opened(verifier, other.replace(b"21.5", b"28.5")) == "unauthenticated"
    assert opened(BusVerifier(b"x" * 32, clock), other) == "unauthenticated"
    assert opened(verifier, other) is None


def test_old_and_future_timestamps_are_stale() -> None:
    clock = Clock()
    verifier = BusVerifier(KEY, clock)
    for skew in (-MAX_SKEW_S - 1, MAX_SKEW_S + 1):
        other = Clock()
        other.now = clock.now + skew
        assert opened(verifier, BusSealer(KEY, f"gw{skew}", other).seal(TOPIC, {})) == "stale"
    late = Clock()
    late.now = clock.now - MAX_SKEW_S + 1
    assert opened(verifier, BusSealer(KEY, "late", late).seal(TOPIC, {})) is None


def test_out_of_order_delivery_within_the_window_is_taken_once() -> None:
    clock = Clock()
    sealer, verifier = BusSealer(KEY, "gw", clock), BusVerifier(KEY, clock)
    sealed = [sealer.seal(TOPIC, {"i": i}) for i in range(REPLAY_WINDOW + 10)]
    assert opened(verifier, sealed[-1]) is None
    assert opened(verifier, sealed[20]) is None  # late (a QoS 1 redelivery), inside the window
    assert opened(verifier, sealed[20]) == "replayed"
    assert opened(verifier, sealed[5]) == "replayed"  # below the window: refused


def test_remembered_origins_are_bounded() -> None:
    clock = Clock()
    verifier = BusVerifier(KEY, clock)
    for n in range(MAX_ORIGINS + 50):
        assert opened(verifier, BusSealer(KEY, f"gw-{n}", clock).seal(TOPIC, {})) is None
    assert len(verifier._seen) == MAX_ORIGINS


def test_the_key_file_is_created_private_and_a_short_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bus.key"
    key = load_or_create_key(path)
    assert len(key) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == key  # the same key at the next start
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="bus_key_file: the bus key must have at least 16"):
        load_or_create_key(path)


def command(sender: str, receiver: str) -> object:
    msg = CommandMsg(point_id="heating_sp", value=21.0, zone_id="f1-meeting", reason="t")
    return msg.envelope(Performative.REQUEST, sender, receiver)


@pytest.mark.parametrize(
    ("sender", "receiver", "allowed"),
    [
        ("zone[f1-meeting]", "device[f1-meeting-thermostat]", True),
        ("coordinator", "device[f1-meeting-thermostat]", True),
        ("zone[attacker]", "device[f1-meeting-thermostat]", False),
        ("zone[f2-office-a]", "device[f1-meeting-thermostat]", False),  # not its zone
        ("mqtt-bridge", "device[f1-meeting-thermostat]", False),
        ("device[f1-meeting-lights]", "device[f1-meeting-thermostat]", False),
        ("coordinator", "readings/f1-meeting", False),  # a command goes to a device agent
    ],
)
def test_a_device_takes_commands_only_from_its_zones_and_the_coordinator(
    demo_site: Path, sender: str, receiver: str, allowed: bool
) -> None:
    site = load_site(demo_site)
    problem = hearing_problem(command(sender, receiver), site)  # type: ignore[arg-type]
    assert (problem is None) is allowed, problem


def test_zones_hear_only_the_coordinator_and_their_own_devices(demo_site: Path) -> None:
    site = load_site(demo_site)
    cfp = command("coordinator", "zone[f1-meeting]").model_copy(  # type: ignore[attr-defined]
        update={"ontology": "demand-response", "performative": Performative.CFP}
    )
    assert hearing_problem(cfp, site) is None
    for sender in ("zone[f2-office-a]", "mqtt-bridge", "device[f2-office-a-thermostat]"):
        assert hearing_problem(cfp.model_copy(update={"sender": sender}), site) is not None
    result = cfp.model_copy(update={"sender": "device[f1-meeting-thermostat]"})
    assert hearing_problem(result, site) is None


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(envelope=JSON, ts=st.floats(min_value=0, max_value=2e9), counter=st.integers(1, 2**40))
def test_the_envelope_encoded_once_signs_the_same_bytes_as_the_whole_encoding(
    envelope: object, ts: float, counter: int
) -> None:
    """The sealer encodes an envelope once, for its seal and its body; the receiver encodes
    what it parsed whole: both must sign the same bytes (unicode, floats, nesting)."""
    whole = json.dumps(["t.x", "gw-1", counter, ts, envelope], sort_keys=True,
                       separators=(",", ":"), allow_nan=False).encode()  # fmt: skip
    assert canonical("t.x", "gw-1", counter, ts, envelope) == whole
    assert canonical("t.x", "gw-1", counter, ts, None, canonical_json(envelope)) == whole
    clock = Clock()
    sealed = BusSealer(KEY, "gw-1", clock).seal("t.x", [{"content": envelope}])
    assert BusVerifier(KEY, clock).problem("t.x", json.loads(sealed)) is None
