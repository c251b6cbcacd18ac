"""Trusted and untrusted messages: an envelope made in this process from a content model is not
validated again by its receivers; one from outside (JSON off a broker or the network) is validated
in full. Both still refuse what they refused before."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from buildingd.agents.bus import Envelope, Performative
from buildingd.agents.content_check import checked_content, content_problem
from buildingd.agents.messages import (
    CommandMsg,
    DemandResponseAward,
    DemandResponseCall,
    ReadingMsg,
)
from buildingd.points import PointKind, Quality

NOW = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)


def reading(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "device_id": "t1", "point_id": "t", "zone_id": "z1", "kind": PointKind.TEMPERATURE,
        "unit": "degC", "value": 21.5, "quality": Quality.GOOD, "timestamp": NOW,
    }  # fmt: skip
    return {**fields, **changes}


def from_outside(env: Envelope) -> Envelope:
    """What a receiver gets of ``env`` once it crossed a broker: JSON, validated."""
    return Envelope.model_validate_json(env.model_dump_json())


def test_an_in_process_envelope_hands_its_receivers_the_model_it_was_made_from() -> None:
    msg = ReadingMsg(**reading())  # type: ignore[arg-type]
    env = msg.envelope(Performative.INFORM, "device[t1]", "readings/z1")
    assert ReadingMsg.parse(env) is msg
    # The same message, crossed a broker: equal, and its content validated into an equal model.
    outside = from_outside(env)
    assert outside == env
    assert ReadingMsg.parse(outside) == msg and ReadingMsg.parse(outside) is not msg


@pytest.mark.parametrize(
    "bad",
    [
        {"value": "warm"},
        {"quality": "excellent"},
        {"kind": "temperature-ish"},
        {"timestamp": "yesterday"},
        {"extra": 1},
    ],
)
def test_bad_content_is_refused_on_both_paths(bad: dict[str, object]) -> None:
    # Trusted: the model refuses it where it is built, so no envelope carries it.
    with pytest.raises(ValidationError):
        ReadingMsg(**reading(**bad))  # type: ignore[arg-type]
    # Untrusted: the same content arriving as JSON is refused by the receiver's parse and by the
    # MQTT bus's check before any agent sees it.
    good = ReadingMsg(**reading()).envelope(Performative.INFORM, "device[t1]", "readings/z1")
    data = good.model_dump(mode="json")
    data["content"] = {**data["content"], **bad}
    outside = Envelope.model_validate(data)
    with pytest.raises(ValidationError):
        ReadingMsg.parse(outside)
    assert content_problem(outside) is not None
    assert checked_content(outside)[0] is None


def test_an_envelope_from_outside_is_still_validated_in_full() -> None:
    env = CommandMsg(point_id="level", value=50.0, zone_id=None, reason="test").envelope(
        Performative.REQUEST, "zone[z1]", "device[lights]"
    )
    data = env.model_dump(mode="json")
    for field, value in [("performative", "shout"), ("sender", ""), ("receiver", "x" * 201)]:
        with pytest.raises(ValidationError):
            Envelope.model_validate({**data, field: value})
    too_long = {**data, "content": {**data["content"], "reason": "x" * 201}}
    with pytest.raises(ValidationError):
        CommandMsg.parse(Envelope.model_validate(too_long))
    with pytest.raises(ValidationError):  # and where it is made
        CommandMsg(point_id="level", value=50.0, zone_id=None, reason="x" * 201)


def test_a_model_of_another_kind_is_not_taken_for_the_one_asked() -> None:
    # Call and award share an ontology: parsing an award's envelope as a call validates the
    # content as a call (and refuses it) instead of handing over the award.
    award = DemandResponseAward(level="shift-1K", shift_k=1.0, dim_pct=0.0, ends_at=NOW)
    env = award.envelope(Performative.ACCEPT_PROPOSAL, "coordinator", "zone[z1]")
    assert DemandResponseAward.parse(env) is award
    with pytest.raises(ValidationError):
        DemandResponseCall.parse(env)
    with pytest.raises(ValueError, match="expected ontology"):
        ReadingMsg.parse(env)
    # Checked as it would be off a broker: the model it fits is the one attached.
    content, problem = checked_content(from_outside(env))
    assert problem is None and content == award


def test_a_trusted_envelope_takes_only_envelope_fields() -> None:
    msg = ReadingMsg(**reading())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown envelope fields"):
        msg.envelope(Performative.INFORM, "device[t1]", "readings/z1", colour="red")
    with pytest.raises(TypeError, match="required"):
        Envelope.trusted(msg, performative=Performative.INFORM, sender="device[t1]")


def test_a_copy_with_other_content_is_validated_as_that_content() -> None:
    msg = ReadingMsg(**reading())  # type: ignore[arg-type]
    env = msg.envelope(Performative.INFORM, "device[t1]", "readings/z1")
    relabelled = env.model_copy(update={"sender": "device[t2]"})
    assert ReadingMsg.parse(relabelled) is msg
    emptied = env.model_copy(update={"content": {}})
    with pytest.raises(ValidationError):
        ReadingMsg.parse(emptied)
