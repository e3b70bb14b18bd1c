"""Fusing ranked lists (dense, lexical) into one: pure functions over ``(ids, scores)``, best first.

Measured on the LoCoMo dev split (``tiered-memory report retrieval``, benchmarks/reports/retrieval.md).
Every function returns ``(ids, scores)`` sorted by fused score, best first; ties keep the order in
which the ids first appear across the inputs, so the result is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from tiered_memory.errors import InvalidInputError

Id = TypeVar("Id", bound=Hashable)
Ranked = tuple[Sequence[Id], Sequence[float]]

RRF_K = 60  # Cormack et al. 2009; the constant every hybrid search engine ships with
# Neighbouring turns count half as much per step away: the turns next to a memory at 0.5, the
# ones after those at 0.25. Chosen as a halving, not fitted: see benchmarks/reports/retrieval.md.
NEIGHBOUR_WEIGHTS = (0.5, 0.25)


def _check(lists: Sequence[Ranked], weights: Sequence[float] | None) -> list[float]:
    if not lists:
        raise InvalidInputError("nothing to fuse: pass at least one (ids, scores) list")
    for ids, scores in lists:
        if len(ids) != len(scores):
            raise InvalidInputError(f"a ranked list has {len(ids)} ids but {len(scores)} scores; pass one score per id")
        if any(not math.isfinite(s) for s in scores):
            raise InvalidInputError("a ranked list holds a NaN or infinite score; pass finite scores")
    if weights is None:
        return [1.0] * len(lists)
    if len(weights) != len(lists) or any(not math.isfinite(w) or w < 0 for w in weights):
        raise InvalidInputError(f"weights {list(weights)!r}: give one finite weight >= 0 per ranked list "
                                f"({len(lists)} lists)")
    return [float(w) for w in weights]


def _ranked(totals: dict[Id, float], order: dict[Id, int]) -> tuple[list[Id], list[float]]:
    ids = sorted(totals, key=lambda i: (-totals[i], order[i]))
    return ids, [totals[i] for i in ids]


def _first_seen(lists: Sequence[Ranked]) -> dict[Id, int]:
    order: dict[Id, int] = {}
    for ids, _ in lists:
        for i in ids:
            order.setdefault(i, len(order))
    return order


def min_max(scores: Sequence[float]) -> list[float]:
    """Scores mapped to [0, 1] (all 1.0 when they are all equal)."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def z_score(scores: Sequence[float]) -> list[float]:
    """Scores as standard deviations from their mean (all 0.0 when they are all equal)."""
    if not scores:
        return []
    mean = sum(scores) / len(scores)
    spread = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    if spread == 0:
        return [0.0] * len(scores)
    return [(s - mean) / spread for s in scores]


NORMALISERS = {"minmax": min_max, "zscore": z_score}


def weighted_sum(lists: Sequence[Ranked], weights: Sequence[float] | None = None,
                 normalise: str = "zscore") -> tuple[list[Id], list[float]]:
    """Sum of each list's normalised scores times its weight. An id missing from a list counts as
    that list's lowest normalised score: it ranked below everything the list returned."""
    if normalise not in NORMALISERS:
        raise InvalidInputError(f"normalise={normalise!r}: choose one of {sorted(NORMALISERS)}")
    weights = _check(lists, weights)
    order = _first_seen(lists)
    totals: dict[Id, float] = dict.fromkeys(order, 0.0)
    for (ids, scores), weight in zip(lists, weights):
        normal = NORMALISERS[normalise](list(scores))
        floor = min(normal) if normal else 0.0
        given = dict(zip(ids, normal))
        for i in totals:
            totals[i] += weight * given.get(i, floor)
    return _ranked(totals, order)


def reciprocal_rank(lists: Sequence[Ranked], weights: Sequence[float] | None = None,
                    k: float = RRF_K) -> tuple[list[Id], list[float]]:
    """Reciprocal rank fusion: each list adds weight / (k + rank), rank 1 for its best id."""
    if not math.isfinite(k) or k <= 0:
        raise InvalidInputError(f"k={k!r}: the RRF constant must be a finite number > 0 (60 is the usual value)")
    weights = _check(lists, weights)
    order = _first_seen(lists)
    totals: dict[Id, float] = dict.fromkeys(order, 0.0)
    for (ids, _), weight in zip(lists, weights):
        for rank, i in enumerate(ids, start=1):
            totals[i] += weight / (k + rank)
    return _ranked(totals, order)


def with_neighbours(ranked: Ranked, neighbours: Mapping[Id, Sequence[Sequence[Id]]],
                    weights: Sequence[float] = NEIGHBOUR_WEIGHTS) -> tuple[list[Id], list[float]]:
    """Each id's score plus, per level of neighbours (level 0 the nearest), that level's weight
    times the mean score of its neighbours there. ``neighbours[id]`` lists the neighbour ids per
    level (e.g. the turns one and two steps away in the same session); a neighbour the ranked list
    does not hold counts as the list's lowest score. Only the ids of `ranked` are returned."""
    weights = list(weights)
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise InvalidInputError(f"weights {weights!r}: give finite weights >= 0, one per level of neighbours")
    ids, scores = ranked
    _check([ranked], None)
    given = dict(zip(ids, scores))
    floor = min(scores) if len(scores) else 0.0
    order = {i: n for n, i in enumerate(ids)}
    totals: dict[Id, float] = {}
    for i, score in given.items():
        total = score
        for weight, level in zip(weights, neighbours.get(i, ())):
            if level:
                total += weight * sum(given.get(j, floor) for j in level) / len(level)
        totals[i] = total
    return _ranked(totals, order)
