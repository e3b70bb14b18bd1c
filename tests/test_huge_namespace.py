"""Huge namespaces tier inside: the cold part is found through an on-disk index, not a scan.

Bound (as in test_congruence): mean tie-aware recall@10 >= 0.95 against numpy brute force over
every memory, whichever tiers they sit in and whether the index holds them or not.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from tiered_memory import Tier
from tiered_memory.tiers.blocks import INDEXED

from .conftest import DIM, tie_aware_recall, unit_rows
from .test_congruence import RECALL_BOUND, recall_over

pytest.importorskip("usearch")

HUGE = dict(warm_capacity=1_000, hot_capacity=100, exact_search_max=64, cold_index_min_rows=2_000)


def indexed_rows(mem, namespace: str = "default") -> int:
    ns = mem.catalog.namespaces.codes[namespace]
    return mem.catalog.blocks.size_of((ns, INDEXED, True))


def cold_rows(mem, namespace: str = "default") -> int:
    return mem.catalog.blocks.cold_count.get(mem.catalog.namespaces.codes[namespace], 0)


def is_indexed(mem, memory_id: str) -> bool:
    slot = mem.catalog.slot_of[memory_id]
    return mem.catalog.blocks.key_of(slot)[1] == INDEXED


def huge_store(open_store, n: int = 6_000, seed: int = 11, **settings):
    mem = open_store(**{**HUGE, **settings})
    vectors = unit_rows(n, seed=seed, clusters=60)
    ids = mem.add_many([f"m{i}" for i in range(n)], vectors=vectors)
    return mem, ids, vectors


def test_the_cold_part_is_searched_through_the_index_within_the_bound(open_store) -> None:
    mem, ids, vectors = huge_store(open_store)
    assert cold_rows(mem) >= 4_000
    assert indexed_rows(mem) == 0
    installed = mem.index_cold("default")
    assert installed == cold_rows(mem) == indexed_rows(mem)
    stats = mem.stats().cold_index
    assert stats["namespaces"] == 1 and stats["rows"] == installed and stats["builds"] == 1
    assert stats["file_bytes"] > installed * DIM
    # Every cold row is indexed, so none is scanned: the index alone serves the cold part.
    assert not mem.catalog.blocks.chosen(mem.catalog.namespaces.codes["default"], cold_only=True,
                                         skip_indexed=True)
    queries = unit_rows(100, seed=12, clusters=60)
    assert recall_over(mem, ids, vectors, queries) >= RECALL_BOUND
    # A cold memory's own vector finds it first.
    for memory_id in [i for i in ids if mem.tier_of(i) is Tier.COLD][:20]:
        assert mem.search(vector=vectors[ids.index(memory_id)], k=1)[0].memory.id == memory_id


def test_changed_deleted_and_newly_cold_memories_stay_exact(open_store) -> None:
    mem, ids, vectors = huge_store(open_store)
    mem.index_cold("default")
    cold = [i for i in ids if is_indexed(mem, i)]
    changed, deleted = cold[0], cold[1]
    fresh = unit_rows(1, seed=99)[0]
    mem.update(changed, vector=fresh)
    assert not is_indexed(mem, changed)
    assert mem.search(vector=fresh, k=1)[0].memory.id == changed
    mem.delete(deleted)
    position = ids.index(deleted)
    assert deleted not in {h.memory.id for h in mem.search(vector=vectors[position], k=20)}
    # New memories pushed to cold by capacity are scanned until the next build takes them in.
    more = unit_rows(1_500, seed=13, clusters=60)
    more_ids = mem.add_many([f"n{i}" for i in range(1_500)], vectors=more)
    newly_cold = [i for i in more_ids if mem.tier_of(i) is Tier.COLD]
    assert newly_cold and not any(is_indexed(mem, i) for i in newly_cold)
    for memory_id in newly_cold[:10]:
        assert mem.search(vector=more[more_ids.index(memory_id)], k=1)[0].memory.id == memory_id
    everything = [i for i in ids if i != deleted] + more_ids
    matrix = np.concatenate([np.delete(vectors, position, axis=0), more])
    matrix[everything.index(changed)] = fresh
    assert recall_over(mem, everything, matrix, unit_rows(100, seed=14, clusters=60)) >= RECALL_BOUND


def test_reopen_attaches_the_index_and_trusts_only_unchanged_rows(open_store, tmp_path) -> None:
    mem, ids, vectors = huge_store(open_store)
    mem.index_cold("default")
    cold = [i for i in ids if is_indexed(mem, i)]
    changed = cold[5]
    fresh = unit_rows(1, seed=77)[0]
    mem.update(changed, vector=fresh)
    before = cold_rows(mem)
    mem.close()

    reopened = open_store()
    assert reopened.stats().cold_index["rows"] >= before - 2  # everything indexed and unchanged is attached
    assert not is_indexed(reopened, changed)
    assert reopened.search(vector=fresh, k=1)[0].memory.id == changed
    matrix = vectors.copy()
    matrix[ids.index(changed)] = fresh
    assert recall_over(reopened, ids, matrix, unit_rows(100, seed=15, clusters=60)) >= RECALL_BOUND


def test_a_damaged_index_file_is_ignored_and_search_stays_exact(open_store, tmp_path, caplog) -> None:
    mem, ids, vectors = huge_store(open_store)
    mem.index_cold("default")
    mem.close()
    graphs = [p for p in (tmp_path / "store" / "coldindex").iterdir() if p.suffix == ".usearch"]
    assert len(graphs) == 1
    with open(graphs[0], "r+b") as file:  # flip bytes in the middle: the checksum catches it
        file.seek(os.path.getsize(graphs[0]) // 2)
        file.write(b"\xff" * 64)
    with caplog.at_level(logging.WARNING):
        reopened = open_store()
    assert "fails its checksum" in caplog.text
    assert reopened.stats().cold_index["rows"] == 0
    assert recall_over(reopened, ids, vectors, unit_rows(60, seed=16, clusters=60)) >= RECALL_BOUND


def test_filtered_search_through_the_index_matches_filtered_exact(open_store) -> None:
    mem = open_store(**HUGE)
    vectors = unit_rows(6_000, seed=17, clusters=60)
    kinds = ["rare" if i % 10 == 0 else "common" for i in range(6_000)]
    metadata = [{"parity": i % 2} for i in range(6_000)]
    ids = mem.add_many([f"m{i}" for i in range(6_000)], vectors=vectors, kind=kinds, metadata=metadata)
    assert mem.index_cold("default") > 4_000
    queries = unit_rows(40, seed=18, clusters=60)
    rare = np.array([k == "rare" for k in kinds])
    odd = np.array([m["parity"] == 1 for m in metadata])
    for where, mask, extra in ((dict(kinds=["rare"]), rare, {}), (dict(where={"parity": 1}), odd, {}),
                               (dict(kinds=["common"], where={"parity": 1}), ~rare & odd, {})):
        chosen = np.flatnonzero(mask)
        recalls = []
        for q in queries:
            hits = mem.search(vector=q, k=10, **where, **extra)
            returned = [ids.index(h.memory.id) for h in hits]
            assert all(mask[i] for i in returned)
            scores = vectors[chosen] @ q
            recalls.append(tie_aware_recall(scores, [int(np.searchsorted(chosen, i)) for i in returned], 10))
        assert np.mean(recalls) >= RECALL_BOUND, where


def test_sealed_namespaces_are_never_indexed(open_store, tmp_path) -> None:
    pytest.importorskip("cryptography")
    mem = open_store(encryption_key=b"k" * 32, **HUGE)
    vectors = unit_rows(3_000, seed=19, clusters=30)
    mem.add_many([f"s{i}" for i in range(3_000)], vectors=vectors, namespace="private", sensitive=True)
    assert cold_rows(mem, "private") >= 2_000
    assert mem.index_cold("private") == 0
    assert not (tmp_path / "store" / "coldindex").exists() or not any((tmp_path / "store" / "coldindex").iterdir())


def test_the_background_thread_builds_the_index_by_itself(open_store) -> None:
    mem, ids, vectors = huge_store(open_store, promote_in_background=True)
    assert mem.wait_idle(timeout=300)
    assert mem.stats().cold_index["rows"] == cold_rows(mem) > 4_000
    assert recall_over(mem, ids, vectors, unit_rows(60, seed=20, clusters=60)) >= RECALL_BOUND


@pytest.mark.shared
def test_real_embeddings_through_the_index(open_store, dailydialog_vectors) -> None:
    vectors = np.ascontiguousarray(dailydialog_vectors[:15_000], dtype=np.float32)
    queries = np.ascontiguousarray(dailydialog_vectors[-200:], dtype=np.float32)
    mem = open_store(dimension=384, warm_capacity=3_000, hot_capacity=300, cold_index_min_rows=5_000)
    ids = mem.add_many([f"u{i}" for i in range(len(vectors))], vectors=vectors)
    assert mem.index_cold("default") >= 10_000
    assert recall_over(mem, ids, vectors, queries) >= RECALL_BOUND
