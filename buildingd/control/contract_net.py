"""FIPA Contract Net (SC00029H) for demand response and power caps, the pure parts: what a zone
offers, and which offers the coordinator accepts. Owns no messages and no timers.

A zone offers demand-limit levels in the spirit of ASHRAE Guideline 36's demand-limit setpoint
adjustment (levels 1-3 widen the zone's band; G36 defaults 1, 2 and 4 degF, here 0.5, 1 and 2 K),
capped by its policy's ``max_shift_k``, and dimming its lights, alone or together with a shift.
Each offer states the power it would shed and its comfort cost. The coordinator accepts the
cheapest set that meets the target: at most one offer per zone, never from an exempt zone.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

SHIFT_LEVELS_K = (0.5, 1.0, 2.0)
# Share of a zone's heating/cooling power one kelvin of band widening sheds. An estimate: the
# load is roughly proportional to the indoor-outdoor difference (~7 K averaged over a season),
# so ~15 %/K. The meter, not this number, tells whether the target was met.
SHED_SHARE_PER_K = 0.15
MAX_SHED_SHARE = 0.9  # a shift never promises the zone's whole load
# Comfort cost weights. Discomfort grows with the square of the shift (PMV is roughly linear in
# temperature, dissatisfaction roughly quadratic near neutral) and only counts where people are.
VACANT_WEIGHT = 0.1  # vacant: someone may come back, so not quite free
DIM_COST_OCCUPIED = 2.0  # per unit of dimming (1.0 = 100 %) with people and no daylight
DIM_COST_DAYLIGHT = 0.05  # daylight covers the dimming
DIM_COST_VACANT = 0.01  # ~free: nobody sees it
MAX_EXACT_ZONES = 30  # above this, award is greedy (see ``award``)
# Steps of the exact search (front states times offers) before it gives up for the greedy one:
# the award runs inside the coordinator's tick, so its worst case must stay well under a second
# on a Pi (about 0.2 s here at this budget). Typical 30-zone sites need a fifth of it.
EXACT_BUDGET_STEPS = 250_000


@dataclass(frozen=True)
class Level:
    """A demand-limit level: band widened by ``shift_k`` and lights dimmed by ``dim_pct``."""

    shift_k: float = 0.0
    dim_pct: float = 0.0

    def __str__(self) -> str:
        return self.name

    @functools.cached_property
    def name(self) -> str:
        """``shift-1K+dim-30%``: made once per object (a zone's proposal names each of its
        levels, and ``level`` gives a thousand zones the same few objects)."""
        parts = []
        if self.shift_k:
            parts.append(f"shift-{self.shift_k:g}K")
        if self.dim_pct:
            parts.append(f"dim-{self.dim_pct:g}%")
        return "+".join(parts) or "none"


@functools.lru_cache(maxsize=256)
def level(shift_k: float, dim_pct: float) -> Level:
    """``Level(shift_k, dim_pct)``, one object per value: a thousand zones' proposals name the
    same few levels (less to allocate, and to collect, in a round)."""
    return Level(shift_k, dim_pct)


@dataclass(frozen=True, init=False, slots=True)
class Offer:
    zone_id: str
    level: Level
    shed_w: float
    comfort_cost: float  # dimensionless, compared across zones

    def __init__(self, zone_id: str, level: Level, shed_w: float, comfort_cost: float) -> None:
        # Checked, then set in slots as the generated ``__init__`` of a frozen dataclass sets
        # them, without its lookups: a 1,000-zone round makes some 14,000 offers (about 1.2
        # instead of 1.9 us each).
        if not (math.isfinite(shed_w) and shed_w >= 0):
            raise ValueError(f"{zone_id}: shed_w must be finite and >= 0, not {shed_w}")
        if not (math.isfinite(comfort_cost) and comfort_cost >= 0):
            raise ValueError(f"{zone_id}: comfort_cost must be finite and >= 0, not {comfort_cost}")
        _set(self, "zone_id", zone_id)
        _set(self, "level", level)
        _set(self, "shed_w", shed_w)
        _set(self, "comfort_cost", comfort_cost)


_set = object.__setattr__  # looked up once


@dataclass(frozen=True)
class Refusal:
    zone_id: str
    reason: str  # "exempt", "nothing to shed", ...


@dataclass(frozen=True)
class Award:
    accepted: list[Offer]
    rejected: list[Offer]  # every other offer received, exempt zones' included
    committed_w: float  # sum of the accepted offers' shed_w
    met: bool


def zone_offers(
    zone_id: str,
    *,
    hvac_w: float,
    occupied: bool,
    light_w: float,
    daylight_sufficient: bool,
    max_shift_k: float,
    max_dim_pct: float,
    exempt: bool = False,
) -> list[Offer]:
    """What a zone can offer, from its summary: current heating + cooling power, whether someone
    is there, current lighting power, whether daylight alone meets the lighting target, and its
    policy's limits. Empty when exempt or when there is nothing to shed. Sheds are whole watts."""
    if exempt:
        return []
    people = 1.0 if occupied else VACANT_WEIGHT
    shifts = [0.0]
    if hvac_w > 0:
        shifts += [k for k in SHIFT_LEVELS_K if k <= max_shift_k]
    dims = [0.0]
    if light_w > 0 and max_dim_pct > 0:
        dims.append(max_dim_pct)
    if not occupied:
        dim_weight = DIM_COST_VACANT
    elif daylight_sufficient:
        dim_weight = DIM_COST_DAYLIGHT
    else:
        dim_weight = DIM_COST_OCCUPIED
    offers = []
    for shift in shifts:
        for dim in dims:
            if shift == 0 and dim == 0:
                continue
            shed = hvac_w * min(SHED_SHARE_PER_K * shift, MAX_SHED_SHARE) + light_w * dim / 100
            cost = people * shift**2 + dim_weight * dim / 100
            offers.append(Offer(zone_id, level(shift, dim), float(math.floor(shed)), cost))
    return [o for o in offers if o.shed_w > 0]


def award(offers: Iterable[Offer], target_w: float, exempt_zones: Sequence[str] = ()) -> Award:
    """Accept the cheapest set of offers (total comfort cost) whose shed meets ``target_w``, at
    most one offer per zone, none from ``exempt_zones``.

    Up to ``MAX_EXACT_ZONES`` zones the answer is exact (a multiple-choice knapsack solved by
    dynamic programming over the Pareto front of (shed, cost), shed counted in whole watts,
    rounded down so a set is never thought to meet the target on rounding), unless the search
    needs more than ``EXACT_BUDGET_STEPS`` steps. Beyond that it is
    greedy: repeatedly the zone upgrade (to a larger offer of the same zone) costing least comfort
    per extra watt, then accepted offers the target does not need are dropped, dearest first
    (within 25 % of the optimum on random 3-30 zone sites). When even every zone's largest offer
    cannot meet the target, each zone's largest offer is accepted and ``met`` is False.
    """
    received = list(offers)
    exempt = set(exempt_zones)
    by_zone: dict[str, list[Offer]] = {}
    for offer in received:
        if offer.shed_w > 0 and offer.zone_id not in exempt:
            by_zone.setdefault(offer.zone_id, []).append(offer)

    if target_w <= 0:
        chosen: list[Offer] = []
    elif sum(max(o.shed_w for o in z) for z in by_zone.values()) < target_w:
        # Cannot be met: shed all we can (the cheapest of equal-largest offers per zone).
        chosen = [min(z, key=lambda o: (-o.shed_w, o.comfort_cost)) for z in by_zone.values()]
    else:
        exact = None
        if len(by_zone) <= MAX_EXACT_ZONES:
            exact = _exact(list(by_zone.values()), target_w)
        chosen = exact if exact is not None else _greedy(by_zone, target_w)

    # By identity, once per accepted offer: equal duplicates received twice stay one rejected.
    # (An accepted offer is accepted once: at most one per zone.)
    pending = {id(o) for o in chosen}
    rejected = []
    for offer in received:
        if id(offer) in pending:
            pending.discard(id(offer))
        else:
            rejected.append(offer)
    committed = sum(o.shed_w for o in chosen)
    return Award(
        accepted=chosen,
        rejected=rejected,
        committed_w=committed,
        met=committed >= target_w,
    )


# A chosen set as a linked list (offer, rest): sharing tails keeps the search cheap.
_Chain: TypeAlias = tuple[Offer, "_Chain"] | None


def _exact(zones: list[list[Offer]], target_w: float) -> list[Offer] | None:
    """The optimum, or None when the search would take more than ``EXACT_BUDGET_STEPS``."""
    goal = math.ceil(target_w)
    # Pareto front: shed (capped at goal: anything beyond is as good) -> (cost, chosen).
    front: dict[int, tuple[float, _Chain]] = {0: (0.0, None)}
    steps = 0
    for zone in zones:
        steps += len(front) * len(zone)
        if steps > EXACT_BUDGET_STEPS:
            return None
        grown = dict(front)
        for shed, (cost, chain) in front.items():
            for offer in zone:
                s = min(goal, shed + math.floor(offer.shed_w))
                c = cost + offer.comfort_cost
                if s not in grown or c < grown[s][0]:
                    grown[s] = (c, (offer, chain))
        # Keep only states no other state beats on both shed and cost.
        front = {}
        best = math.inf
        for s in sorted(grown, reverse=True):
            if grown[s][0] < best:
                best = grown[s][0]
                front[s] = grown[s]
    if goal not in front:
        # Met only with fractional watts (the whole-watt search missed it): shed all we can.
        return [min(z, key=lambda o: (-o.shed_w, o.comfort_cost)) for z in zones]
    chain = front[goal][1]
    chosen = []
    while chain is not None:
        chosen.append(chain[0])
        chain = chain[1]
    return chosen[::-1]


def _greedy(by_zone: dict[str, list[Offer]], target_w: float) -> list[Offer]:
    chosen: dict[str, Offer] = {}
    total = 0.0
    # (comfort per extra watt of the zone's best upgrade, zone, offer index): one per zone.
    heap: list[tuple[float, str, int]] = []
    for zone_id, zone in by_zone.items():
        up, ratio = _best_upgrade(zone, 0.0, 0.0)
        if up >= 0:
            heap.append((ratio, zone_id, up))
    heapq.heapify(heap)  # the keys differ (one entry per zone): the order pushes would give
    while heap and total < target_w:
        _, zone_id, i = heapq.heappop(heap)
        zone = by_zone[zone_id]
        offer = zone[i]
        current = chosen.get(zone_id)
        if current is not None and offer.shed_w <= current.shed_w:
            continue  # stale entry
        total += offer.shed_w - (current.shed_w if current else 0.0)
        chosen[zone_id] = offer
        up, ratio = _best_upgrade(zone, offer.shed_w, offer.comfort_cost)
        if up >= 0:
            heapq.heappush(heap, (ratio, zone_id, up))
    # Drop what the target does not need, dearest first.
    for offer in sorted(chosen.values(), key=lambda o: -o.comfort_cost):
        if total - offer.shed_w >= target_w:
            del chosen[offer.zone_id]
            total -= offer.shed_w
    return list(chosen.values())


def _best_upgrade(zone: list[Offer], shed0: float, cost0: float) -> tuple[int, float]:
    """The zone's upgrade from (``shed0``, ``cost0``) costing least comfort per extra watt (the
    multiple-choice knapsack's classic greedy: a zone can move to a larger offer later, not only
    pick once; the first of equals): its index and that ratio, or -1 when none sheds more."""
    best, best_ratio = -1, 0.0
    for i, offer in enumerate(zone):
        if offer.shed_w > shed0:
            ratio = (offer.comfort_cost - cost0) / (offer.shed_w - shed0)
            if best < 0 or ratio < best_ratio:
                best, best_ratio = i, ratio
    return best, best_ratio
