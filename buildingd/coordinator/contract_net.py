"""Contract Net for demand response and power caps (FIPA SC00029H), the pure parts: what a zone
offers, and which offers the coordinator accepts.

A zone offers demand-limit levels in the spirit of ASHRAE Guideline 36 (section 5.1.10, demand
limit setpoint adjustment: levels 1-3 widen the band by a configurable amount): setpoint shifts of
0.5, 1 and 2 K (capped by its policy's ``max_shift_k``) and dimming its lights. Each offer states
the power it would shed and its comfort cost; the coordinator accepts the cheapest set that meets
the target, at most one offer per zone, never from an exempt zone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SHIFT_LEVELS_K = (0.5, 1.0, 2.0)
# Share of a zone's current heating/cooling power a band widening sheds (steady state: the load
# falls roughly in proportion to the indoor-outdoor difference, ~15 K in the design case).
SHED_PER_K = 0.25
WATT_RESOLUTION = 50.0  # award granularity


@dataclass(frozen=True)
class Offer:
    zone_id: str
    level: str  # "shift-1.0K", "dim-30%"
    shift_k: float
    dim_pct: float
    shed_w: float
    comfort_cost: float


@dataclass(frozen=True)
class ZoneFlexibility:
    """What a zone's summary tells about its flexibility."""

    zone_id: str
    hvac_w: float  # current heating + cooling electrical power
    lighting_w: float  # current lighting power
    occupied: bool
    daylight_sufficient: bool  # daylight alone would meet the lighting target
    max_shift_k: float
    max_dim_pct: float
    exempt: bool = False


def zone_offers(flex: ZoneFlexibility) -> list[Offer]:
    """The offers a zone can make; none when exempt or when it draws nothing."""
    if flex.exempt:
        return []
    people = 1.0 if flex.occupied else 0.1  # discomfort only counts where someone feels it
    offers = []
    for shift in SHIFT_LEVELS_K:
        if shift > flex.max_shift_k or flex.hvac_w <= 0:
            continue
        shed = flex.hvac_w * min(SHED_PER_K * shift, 0.9)
        offers.append(Offer(flex.zone_id, f"shift-{shift}K", shift, 0.0, shed, shift**2 * people))
    if flex.lighting_w > 0 and flex.max_dim_pct > 0:
        dim = flex.max_dim_pct
        cost = 0.05 if flex.daylight_sufficient or not flex.occupied else (dim / 100) * 2
        offers.append(Offer(flex.zone_id, f"dim-{dim:.0f}%", 0.0, dim, flex.lighting_w * dim / 100,
                            cost))  # fmt: skip
    return offers


@dataclass(frozen=True)
class Award:
    accepted: list[Offer]
    rejected: list[Offer]
    committed_w: float
    met: bool


def award(offers: Iterable[Offer], target_w: float, exempt: Sequence[str] = ()) -> Award:
    """Cheapest set of offers (at most one per zone) whose shed meets ``target_w``.

    Exact for the award granularity: a dynamic programme over zones and shed in 50 W steps,
    minimising the comfort cost. When no set meets the target, the set shedding the most is
    accepted (cheapest among equals) and ``met`` is False.
    """
    valid = [o for o in offers if o.zone_id not in exempt and o.shed_w > 0]
    by_zone: dict[str, list[Offer]] = {}
    for offer in valid:
        by_zone.setdefault(offer.zone_id, []).append(offer)
    goal = max(0, int(-(-target_w // WATT_RESOLUTION)))  # ceil
    # best[b] = (cost, chosen offers) for shed bucket b (capped at goal)
    best: dict[int, tuple[float, tuple[Offer, ...]]] = {0: (0.0, ())}
    for zone_offers_ in by_zone.values():
        nxt = dict(best)
        for bucket, (cost, chosen) in best.items():
            for offer in zone_offers_:
                b = min(goal, bucket + int(offer.shed_w // WATT_RESOLUTION))
                candidate = (cost + offer.comfort_cost, (*chosen, offer))
                if b not in nxt or candidate[0] < nxt[b][0]:
                    nxt[b] = candidate
        best = nxt
    top = max(best)
    _, chosen = best[top]
    accepted = list(chosen)
    committed = sum(o.shed_w for o in accepted)
    return Award(
        accepted=accepted,
        rejected=[o for o in valid if o not in accepted],
        committed_w=committed,
        met=committed >= target_w,
    )
