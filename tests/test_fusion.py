"""Fusion of ranked lists: hand-computed cases, invariants, bad input."""

from __future__ import annotations

import math

import pytest

from tiered_memory.errors import InvalidInputError
from tiered_memory.search.fusion import min_max, reciprocal_rank, weighted_sum, with_neighbours, z_score

DENSE = (["a", "b", "c"], [0.9, 0.5, 0.1])
LEXICAL = (["c", "d"], [12.0, 4.0])


def test_reciprocal_rank_by_hand() -> None:
    ids, scores = reciprocal_rank([DENSE, LEXICAL])
    expected = {"a": 1 / 61, "b": 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 62}
    assert ids == ["c", "a", "b", "d"]  # b and d tie: b was seen first
    assert scores == pytest.approx([expected[i] for i in ids])


def test_reciprocal_rank_weights_and_constant() -> None:
    ids, scores = reciprocal_rank([DENSE, LEXICAL], weights=[0.0, 1.0], k=1)
    assert ids[:2] == ["c", "d"] and scores[:2] == pytest.approx([1 / 2, 1 / 3])
    assert scores[2:] == [0.0, 0.0]


def test_min_max_sum_by_hand() -> None:
    ids, scores = weighted_sum([DENSE, LEXICAL], normalise="minmax")
    # dense -> a 1, b 0.5, c 0; lexical -> c 1, d 0; missing ids take the list's floor (0)
    assert dict(zip(ids, scores)) == pytest.approx({"a": 1.0, "b": 0.5, "c": 1.0, "d": 0.0})
    assert ids == ["a", "c", "b", "d"]


def test_z_score_sum_by_hand() -> None:
    ids, scores = weighted_sum([DENSE, LEXICAL], weights=[1.0, 2.0], normalise="zscore")
    dense_z = dict(zip(DENSE[0], z_score(DENSE[1])))
    lexical_z = dict(zip(LEXICAL[0], z_score(LEXICAL[1])))
    floor = min(lexical_z.values())
    expected = {i: dense_z.get(i, min(dense_z.values())) + 2 * lexical_z.get(i, floor) for i in "abcd"}
    assert dict(zip(ids, scores)) == pytest.approx(expected)
    assert scores == sorted(scores, reverse=True)


def test_normalisers() -> None:
    assert min_max([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5]
    assert min_max([2.0, 2.0]) == [1.0, 1.0] and min_max([]) == []
    z = z_score([1.0, 2.0, 3.0])
    assert sum(z) == pytest.approx(0.0) and math.sqrt(sum(v * v for v in z) / 3) == pytest.approx(1.0)
    assert z_score([5.0, 5.0]) == [0.0, 0.0]


def test_one_list_keeps_its_order_and_empty_lists_fuse_to_nothing() -> None:
    for fuse in (reciprocal_rank, lambda lists: weighted_sum(lists, normalise="minmax"), weighted_sum):
        assert fuse([DENSE])[0] == DENSE[0]
        assert fuse([([], []), ([], [])]) == ([], [])


def test_with_neighbours_by_hand() -> None:
    ranked = (["a", "b", "c", "d"], [0.8, 0.6, 0.4, 0.2])
    neighbours = {"a": [["b"], ["c"]], "b": [["a", "c"], ["d", "zz"]], "d": [["c"]]}
    ids, scores = with_neighbours(ranked, neighbours, weights=(0.5, 0.25))
    expected = {"a": 0.8 + 0.5 * 0.6 + 0.25 * 0.4, "b": 0.6 + 0.5 * 0.6 + 0.25 * (0.2 + 0.2) / 2,  # zz: the floor
                "c": 0.4, "d": 0.2 + 0.5 * 0.4}
    assert dict(zip(ids, scores)) == pytest.approx(expected)
    assert ids == ["a", "b", "c", "d"]  # c and d tie at 0.4: c comes first in the input
    with pytest.raises(InvalidInputError, match="weights"):
        with_neighbours(ranked, neighbours, weights=(-1.0,))


def test_neighbour_matrix_ranks_as_with_neighbours() -> None:
    import numpy as np

    from tiered_memory.reports.retrieval import neighbour_matrix

    rng = np.random.default_rng(0)
    sessions = [0] * 5 + [1] * 4
    levels = [[[j for j in (i - d, i + d) if 0 <= j < 9 and sessions[j] == sessions[i]] for d in (1, 2)]
              for i in range(9)]
    scores = rng.random(9)
    ids = [f"t{i}" for i in range(9)]
    neighbours = {ids[i]: [[ids[j] for j in level] for level in around] for i, around in enumerate(levels)}
    got, got_scores = with_neighbours((ids, scores.tolist()), neighbours)
    smoothed = scores + neighbour_matrix(levels).astype(np.float64) @ scores
    assert got == [ids[i] for i in np.argsort(-smoothed, kind="stable")]
    assert got_scores == pytest.approx(sorted(smoothed, reverse=True), rel=1e-6)


def test_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="at least one"):
        reciprocal_rank([])
    with pytest.raises(InvalidInputError, match="one score per id"):
        weighted_sum([(["a"], [1.0, 2.0])])
    with pytest.raises(InvalidInputError, match="finite"):
        weighted_sum([(["a"], [float("nan")])])
    with pytest.raises(InvalidInputError, match="weight"):
        reciprocal_rank([DENSE, LEXICAL], weights=[1.0])
    with pytest.raises(InvalidInputError, match="weight"):
        weighted_sum([DENSE, LEXICAL], weights=[1.0, -1.0])
    with pytest.raises(InvalidInputError, match="RRF constant"):
        reciprocal_rank([DENSE], k=0)
    with pytest.raises(InvalidInputError, match="normalise"):
        weighted_sum([DENSE], normalise="softmax")
