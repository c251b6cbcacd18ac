"""What a 1,000-zone contract-net round makes once instead of once per zone (issue 18): the cfps
and the awards (one envelope per content, readdressed), the commitments file's record of a run
(made again only when its awards change), a level and its name. Each is checked against what
was made before, one by one: the same messages, the same file."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from buildingd.agents.bus import Envelope, Performative
from buildingd.agents.messages import COORDINATOR, DemandResponseCall, zone_address
from buildingd.control.contract_net import Level, Offer, level, zone_offers
from buildingd.coordinator import commitments
from buildingd.coordinator.demand_response import DemandResponseDesk
from tests.test_coordinator_logic import (
    SERVER,
    Coordinator,
    answer,
    of,
    open_event,
    proposal,
)

ZONES = ("f1-meeting", "f1-office", "f2-open")  # any addresses


def made_one_by_one(env: Envelope, receiver: str) -> Envelope:
    """``env`` as ``Envelope.trusted`` makes it for ``receiver``."""
    values = {k: v for k, v in env.__dict__.items() if k in env.__pydantic_fields_set__}
    return Envelope.trusted(env._model, **dict(values, receiver=receiver))


def test_a_readdressed_envelope_is_the_one_made_for_its_receiver() -> None:
    """``Envelope.to``: equal to the envelope made for that receiver, fields, fields set and
    model alike; its private store its own (a copy with new content forgets the model there
    only). Fails without ``Envelope.to``."""
    call = DemandResponseCall(target_w=500.0, window_s=600.0, reason="test", round=1)
    first = call.envelope(Performative.CFP, COORDINATOR, zone_address(ZONES[0]),
                          conversation_id="c1", reply_with="c1.1")  # fmt: skip
    other = first.to(zone_address(ZONES[1]))
    expected = made_one_by_one(first, zone_address(ZONES[1]))
    assert other == expected and other.receiver == zone_address(ZONES[1])
    assert other.model_dump() == expected.model_dump()
    assert other.__pydantic_fields_set__ == expected.__pydantic_fields_set__
    assert DemandResponseCall.parse(other) is call
    emptied = other.model_copy(update={"content": {}})
    assert emptied._model is None and DemandResponseCall.parse(first) is call
    outside = Envelope.model_validate(first.model_dump())  # from a broker: no model to share
    assert outside.to(zone_address(ZONES[2]))._model is None


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[Envelope]:
    """Every envelope ``Envelope.trusted`` makes in the test."""
    made: list[Envelope] = []
    trusted = Envelope.trusted.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Envelope], model: object, **values: object) -> Envelope:
        env: Envelope = trusted(cls, model, **values)
        made.append(env)
        return env

    monkeypatch.setattr(Envelope, "trusted", classmethod(counted))
    return made


def test_a_rounds_cfps_are_made_once_and_readdressed(made: list[Envelope]) -> None:
    """One ``Envelope.trusted`` for a round's cfps to every zone; each is the cfp made for its
    zone one by one. Fails when each cfp is made anew (checked: 8 made on main's code)."""
    c = Coordinator()
    open_event(c)
    cfps = of(c.sent(), Performative.CFP)
    assert len(cfps) == len(c.ctx.site.zones) > 1
    assert len([e for e in made if e.performative is Performative.CFP]) == 1
    for cfp in cfps:
        assert cfp == made_one_by_one(cfps[0], cfp.receiver)


def test_a_rounds_awards_are_made_once_per_level(made: list[Envelope]) -> None:
    """One envelope made per level awarded and one for the rejections, the rest readdressed:
    every zone gets the award of its own offer's level, in its own conversation, as one made for
    it alone would be. Fails when each award is made anew."""
    c = Coordinator()
    offering = len(c.ctx.site.zones) - 1  # every zone but the (exempt) server room
    conversation = open_event(c, target_w=100.0 * offering)  # every offer needed
    cfps = of(c.sent(), Performative.CFP)
    shifts = {}
    for i, cfp in enumerate(cfps):
        if cfp.receiver == zone_address(SERVER):  # exempt: its offer would be rejected
            c.agent.take(answer(cfp, Performative.REFUSE, {"reason": "exempt by policy"}))
            continue
        shift = (0.5, 1.0)[i % 2]
        shifts[cfp.receiver] = shift
        content = proposal((shift, 0.0, 100.0, shift))
        c.agent.take(answer(cfp, Performative.PROPOSE, content))
    c.tick()
    awards = of(c.sent(), Performative.ACCEPT_PROPOSAL)
    assert {a.receiver for a in awards} == set(shifts) and len(awards) == len(shifts)
    assert len([e for e in made if e.performative is Performative.ACCEPT_PROPOSAL]) == 2
    for award in awards:
        assert award.conversation_id == conversation
        assert award.content["shift_k"] == shifts[award.receiver]
        assert award == made_one_by_one(award, award.receiver)


def test_a_runs_record_is_made_again_only_when_its_awards_change(tmp_path: Path) -> None:
    """The commitments file's record of a run is kept while its awards and committed watts are
    the same (awarding -> executing writes nothing and builds nothing), and made again, equal to
    one made afresh, when either changes. Fails when the kept record ignores either (checked:
    each left out of the comparison in turn)."""
    c = Coordinator(state_dir=tmp_path)
    desk: DemandResponseDesk = c.agent.demand
    open_event(c, target_w=300.0 * (len(c.ctx.site.zones) - 1))  # every offer needed
    for cfp in of(c.sent(), Performative.CFP):
        if cfp.receiver == zone_address(SERVER):
            c.agent.take(answer(cfp, Performative.REFUSE, {"reason": "exempt by policy"}))
        else:
            c.agent.take(answer(cfp, Performative.PROPOSE, proposal((1.0, 0.0, 300.0, 1.0))))
    c.tick()
    (run,) = desk.negotiations.values()

    def kept() -> commitments.CommitmentsFile:
        return commitments.to_file([run], [])

    def afresh() -> commitments.CommitmentsFile:
        return commitments.to_file([dataclasses.replace(run, kept_record=None)], [])

    awarded = kept()
    assert kept().commitments[0] is awarded.commitments[0]  # nothing changed: the same record
    on_disk = commitments.load(tmp_path / commitments.FILE_NAME)
    assert on_disk == awarded == afresh()

    withdrawn = sorted(run.awarded)[0]  # a zone withdraws: both awards and watts change
    del run.awarded[withdrawn]
    run.committed_w -= 300.0
    assert kept() == afresh() and withdrawn not in kept().commitments[0].awarded

    run.committed_w -= 1.0  # the watts alone (the kept record must not hide it)
    assert kept().commitments[0].committed_w == run.committed_w
    assert kept() == afresh()

    zone, offer = next(iter(run.awarded.items()))  # the awards alone
    run.awarded[zone] = Offer(zone, level(2.0, 0.0), offer.shed_w, offer.comfort_cost)
    assert kept().commitments[0].awarded[zone].shift_k == 2.0
    assert kept() == afresh()


def test_an_offer_is_checked_and_compared_as_before() -> None:
    """``Offer`` made through its instance dictionary: the same checks and messages, frozen,
    equal, hashed and replaced as a dataclass. (A guard: it passes on main's code too.)"""
    a = Offer("z1", level(1.0, 0.0), 150.0, 1.0)
    assert a == Offer(zone_id="z1", level=Level(1.0, 0.0), shed_w=150.0, comfort_cost=1.0)
    assert hash(a) == hash(Offer("z1", Level(1.0), 150.0, 1.0))
    assert dataclasses.astuple(a) == ("z1", (1.0, 0.0), 150.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.shed_w = 0.0  # type: ignore[misc]
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="z1: shed_w must be finite and >= 0"):
            Offer("z1", a.level, bad, 1.0)
        with pytest.raises(ValueError, match="z1: comfort_cost must be finite and >= 0"):
            Offer("z1", a.level, 1.0, bad)
        with pytest.raises(ValueError, match="shed_w"):
            dataclasses.replace(a, shed_w=bad)
    assert dataclasses.replace(a, shed_w=10.0) == Offer("z1", a.level, 10.0, 1.0)


def test_a_zones_offers_name_the_shared_levels() -> None:
    """A zone's offers name the one ``Level`` object per value that ``level`` gives (a thousand
    zones' proposals name a few), each with the name it always had. Fails when each offer makes
    its own Level."""
    offers = zone_offers("z1", hvac_w=2000.0, occupied=True, light_w=300.0,
                         daylight_sufficient=False, max_shift_k=2.0, max_dim_pct=30.0)  # fmt: skip
    assert len(offers) == 7
    for o in offers:
        assert o.level is level(o.level.shift_k, o.level.dim_pct)
    names = {str(o.level) for o in offers}
    assert "shift-0.5K" in names and "dim-30%" in names and "shift-2K+dim-30%" in names
    assert str(Level()) == "none" and str(Level(1.5, 12.5)) == "shift-1.5K+dim-12.5%"
    assert Level(1.0, 0.0).name == "shift-1K" and Level(1.0) == level(1.0, 0.0)


def test_a_trusted_envelope_still_names_what_is_missing() -> None:
    """``Envelope.trusted`` checks its required fields by key now: a missing one is named as
    before. (A guard: it passes on main's code too.)"""
    msg = DemandResponseCall(target_w=1.0, window_s=1.0, reason="test")
    with pytest.raises(TypeError, match=r"\['receiver'\] are required"):
        Envelope.trusted(msg, performative=Performative.CFP, sender=COORDINATOR,
                         ontology=msg.ontology)  # fmt: skip
    with pytest.raises(TypeError, match=r"\['receiver', 'ontology'\] are required"):
        Envelope.trusted(msg, performative=Performative.CFP, sender=COORDINATOR)
