"""Approximate vs exact: search over every tier agrees with numpy brute force over all memories.

Bound stated here: mean tie-aware recall@10 >= 0.95, whatever tiers the memories sit in.
"""

from __future__ import annotations

import numpy as np
import pytest

from tiered_memory import Tier

from .conftest import tie_aware_recall, unit_rows

RECALL_BOUND = 0.95


def recall_over(mem, ids: list[str], vectors: np.ndarray, queries: np.ndarray, k: int = 10, **search) -> float:
    position = {memory_id: i for i, memory_id in enumerate(ids)}
    exact = queries @ vectors.T
    recalls = []
    for q, scores in zip(queries, exact):
        hits = mem.search(vector=q, k=k, **search)
        recalls.append(tie_aware_recall(scores, [position[h.memory.id] for h in hits], k))
    return float(np.mean(recalls))


def spread_over_tiers(mem, ids: list[str]) -> dict[Tier, int]:
    counts = {tier: 0 for tier in Tier}
    for memory_id in ids:
        counts[mem.tier_of(memory_id)] += 1
    return counts


def test_synthetic_all_tiers_ann_and_ivf(open_store) -> None:
    mem = open_store(warm_capacity=1_500, hot_capacity=200, exact_search_max=64, cold_exact_max=300,
                     topic_min_memories=100)
    vectors = unit_rows(4_000, seed=1, clusters=40)
    ids = mem.add_many([f"m{i}" for i in range(4_000)], vectors=vectors)
    mem.maintain()  # fits topics: the cold tier is now searched by partition (IVF)
    for memory_id in ids[:150]:
        mem.get(memory_id)
    tiers = spread_over_tiers(mem, ids)
    assert tiers[Tier.HOT] > 0 and tiers[Tier.WARM] > 1_000 and tiers[Tier.COLD] > 2_000
    default_ns = mem.catalog.namespaces.codes["default"]
    assert "default" in mem.topics and mem.catalog.blocks.cold_count[default_ns] > mem.config.cold_exact_max
    queries = unit_rows(100, seed=2, clusters=40)
    assert recall_over(mem, ids, vectors, queries) >= RECALL_BOUND


def test_exact_path_for_small_namespaces(open_store) -> None:
    mem = open_store(exact_search_max=1_024, calibration_size=256)
    vectors = unit_rows(800, seed=3)
    queries = unit_rows(50, seed=4)
    ids = mem.add_many([f"m{i}" for i in range(200)], vectors=vectors[:200])
    assert not mem.cold.quantizer.calibrated  # the prior range still does well
    assert recall_over(mem, ids, vectors[:200], queries) >= RECALL_BOUND
    ids += mem.add_many([f"m{i}" for i in range(200, 800)], vectors=vectors[200:])
    assert mem.cold.quantizer.calibrated
    # A scan of calibrated int8 codes: only rounding separates it from exact float search. This
    # synthetic set is harder than real embeddings (no dominant dimensions): about 0.98 here.
    assert recall_over(mem, ids, vectors, unit_rows(300, seed=4)) >= 0.975


@pytest.mark.shared
def test_real_embeddings_across_tiers(open_store, dailydialog_vectors) -> None:
    vectors = np.ascontiguousarray(dailydialog_vectors[:12_000], dtype=np.float32)
    queries = np.ascontiguousarray(dailydialog_vectors[-200:], dtype=np.float32)
    mem = open_store(dimension=384, warm_capacity=6_000, hot_capacity=500, cold_exact_max=2_000,
                     topic_min_memories=500)
    ids = mem.add_many([f"u{i}" for i in range(len(vectors))], vectors=vectors)
    mem.maintain()
    tiers = spread_over_tiers(mem, ids)
    assert tiers[Tier.COLD] >= 5_000 and tiers[Tier.WARM] >= 5_000
    assert recall_over(mem, ids, vectors, queries) >= RECALL_BOUND


def test_filtered_search_matches_filtered_exact(open_store) -> None:
    mem = open_store(warm_capacity=1_000, exact_search_max=64, cold_exact_max=100_000)
    vectors = unit_rows(2_000, seed=5, clusters=20)
    kinds = ["preference" if i % 50 == 0 else "conversation" for i in range(2_000)]  # 2% selective
    mem.add_many([f"m{i}" for i in range(2_000)], vectors=vectors, kind=kinds,
                       metadata=[{"score": i % 10} for i in range(2_000)])
    queries = unit_rows(40, seed=6, clusters=20)
    selected = np.array([i for i in range(2_000) if kinds[i] == "preference"])
    recalls = []
    for q in queries:
        hits = mem.search(vector=q, k=10, kinds=["preference"])
        assert len(hits) == 10 and all(hit.memory.kind == "preference" for hit in hits)
        exact = (vectors[selected] @ q)
        got = [int(hit.memory.text[1:]) for hit in hits]
        recalls.append(tie_aware_recall(exact, [int(np.flatnonzero(selected == g)[0]) for g in got], 10))
    assert np.mean(recalls) >= RECALL_BOUND
    mask = np.array([i % 10 >= 7 for i in range(2_000)])
    for q in queries[:10]:
        hits = mem.search(vector=q, k=10, where={"score": {"$gte": 7}})
        assert len(hits) == 10 and all(hit.memory.metadata["score"] >= 7 for hit in hits)
        exact = vectors[mask] @ q
        kth = np.sort(exact)[-10]
        assert np.mean([hit.score >= kth - 0.02 for hit in hits]) >= RECALL_BOUND
