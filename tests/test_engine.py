"""The public API on real LMDB files and real hnswlib, with caller-supplied vectors."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from tiered_memory import Hit, InvalidVectorError, Memory, MemoryNotFoundError, StoreClosedError, Tier

from .conftest import DIM, unit_rows


def test_add_get_round_trip(open_store, clock) -> None:
    mem = open_store()
    vector = unit_rows(1)[0]
    mid = mem.add("User prefers technical explanations", namespace="user_123", kind="preference",
                  metadata={"confidence": 0.9}, importance=0.8, vector=vector)
    got = mem.get(mid)
    assert isinstance(got, Memory)
    assert (got.id, got.namespace, got.text, got.kind) == (mid, "user_123", "User prefers technical explanations",
                                                           "preference")
    assert got.metadata == {"confidence": 0.9}
    assert got.importance == pytest.approx(0.8)
    assert got.created_at == clock.now and got.access_count == 1
    assert got.tier is Tier.WARM  # where this get served it from
    assert mem.tier_of(mid) is Tier.HOT  # ... and the get promoted it


def test_returned_memories_are_read_only_records(open_store) -> None:
    import copy
    import json
    import pickle

    mem = open_store()
    mid = mem.add("a fact", metadata={"tags": ["x"], "nested": {"a": 1}}, vector=unit_rows(1)[0])
    mem.get(mid)
    first = mem.get(mid)  # served from hot: the cached record itself is shared, so it must not change
    with pytest.raises(AttributeError):
        first.text = "changed"  # type: ignore[misc]
    for change in (lambda m: m.metadata.__setitem__("tags", "changed"), lambda m: m.metadata.update(a=1),
                   lambda m: m.metadata["tags"].append("y"), lambda m: m.metadata["nested"].pop("a")):
        with pytest.raises(TypeError, match="read-only"):
            change(first)
    again = mem.get(mid)
    assert again.text == "a fact" and again.metadata == {"tags": ["x"], "nested": {"a": 1}}
    # Still plain data for callers: json, pickle, copies that can change, replace() for a changed copy.
    assert json.loads(json.dumps(again.metadata)) == {"tags": ["x"], "nested": {"a": 1}}
    assert pickle.loads(pickle.dumps(again)) == again
    editable = copy.deepcopy(again.metadata)
    editable["tags"].append("y")
    assert again.replace(importance=0.9).importance == 0.9 and mem.get(mid).importance == 0.5
    mem.update(mid, metadata=editable)
    assert mem.get(mid).metadata["tags"] == ["x", "y"]


def test_add_many_with_per_item_values(open_store) -> None:
    mem = open_store()
    vectors = unit_rows(3)
    when = datetime(2024, 3, 15, tzinfo=UTC)
    ids = mem.add_many(["a", "b", "c"], namespace="n", kind=["x", "y", "z"],
                       metadata=[{"i": 0}, None, {"i": 2}], importance=[0.1, 0.2, 0.3], created_at=when,
                       vectors=vectors)
    got = [mem.get(i) for i in ids]
    assert [m.kind for m in got] == ["x", "y", "z"]
    assert [m.metadata for m in got] == [{"i": 0}, {}, {"i": 2}]
    assert [m.importance for m in got] == pytest.approx([0.1, 0.2, 0.3])
    assert all(m.created_at == when.timestamp() for m in got)


def test_add_with_own_id_and_duplicate_rejected(open_store) -> None:
    mem = open_store()
    assert mem.add("x", id="fixed-1", vector=unit_rows(1)[0]) == "fixed-1"
    with pytest.raises(ValueError, match="is taken"):
        mem.add("y", id="fixed-1", vector=unit_rows(1)[0])
    assert mem.get("fixed-1").text == "x"


def test_search_returns_hits_best_first(open_store) -> None:
    mem = open_store()
    vectors = unit_rows(200)
    ids = mem.add_many([f"m{i}" for i in range(200)], vectors=vectors)
    hits = mem.search(vector=vectors[42], k=5)
    assert all(isinstance(hit, Hit) for hit in hits)
    assert hits[0].memory.id == ids[42]
    assert hits[0].score == pytest.approx(1.0, abs=0.02)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(hits) == 5


def test_search_tier_reports_where_it_was_served(open_store) -> None:
    mem = open_store()
    vectors = unit_rows(50)
    mem.add_many([f"m{i}" for i in range(50)], vectors=vectors)
    first = mem.search(vector=vectors[0], k=1)[0]
    second = mem.search(vector=vectors[0], k=1)[0]
    assert first.tier is Tier.WARM and first.memory.tier is Tier.WARM
    assert mem.tier_of(first.memory.id) is Tier.HOT
    assert second.tier is Tier.HOT and second.memory.tier is Tier.HOT


def test_update_changes_fields_and_bumps_version(open_store, clock) -> None:
    mem = open_store()
    vectors = unit_rows(2)
    mid = mem.add("old text", metadata={"a": 1}, importance=0.2, vector=vectors[0])
    clock.tick(10)
    changed = mem.update(mid, importance=0.9, metadata={"b": 2}, kind="preference")
    assert changed.version == 2 and changed.updated_at == clock.now
    assert changed.importance == pytest.approx(0.9) and changed.metadata == {"b": 2}
    assert changed.kind == "preference" and changed.text == "old text"
    mem.update(mid, text="new text", vector=vectors[1])
    assert mem.search(vector=vectors[1], k=1)[0].memory.text == "new text"


def test_update_of_a_hot_memory_refreshes_the_hot_copy(open_store) -> None:
    mem = open_store()
    mid = mem.add("v1", metadata={"v": 1}, vector=unit_rows(1)[0])
    mem.get(mid)
    mem.update(mid, metadata={"v": 2})
    assert mem.get(mid).metadata == {"v": 2}


def test_delete_removes_from_every_tier(open_store) -> None:
    mem = open_store()
    vectors = unit_rows(30)
    ids = mem.add_many([f"m{i}" for i in range(30)], vectors=vectors)
    mem.get(ids[3])
    mem.delete(ids[3])
    assert ids[3] not in mem
    with pytest.raises(MemoryNotFoundError):
        mem.get(ids[3])
    assert all(hit.memory.id != ids[3] for hit in mem.search(vector=vectors[3], k=30))
    with pytest.raises(MemoryNotFoundError):
        mem.delete(ids[3])
    assert len(mem) == 29


def test_stats_count_tiers_and_traffic(open_store) -> None:
    mem = open_store(hot_capacity=5)
    vectors = unit_rows(20)
    ids = mem.add_many([f"m{i}" for i in range(20)], vectors=vectors)
    for memory_id in ids[:8]:
        mem.get(memory_id)
    mem.get(ids[7])
    stats = mem.stats()
    assert stats.memories == 20
    assert stats.hot.count == 5 and stats.warm.count == 20 and stats.cold.count == 20
    assert stats.hot.hits == 1 and stats.hot.misses == 8 and stats.warm.hits == 8
    assert stats.promotions["warm->hot"] == 8 and stats.demotions["hot->warm"] == 3
    assert stats.hot.bytes > 0 and stats.warm.bytes >= 20 * DIM and stats.cold.disk_bytes > 0
    assert stats.cold.bytes == 0  # no cold memory: no cold codes in RAM
    assert stats.as_dict()["hot"]["count"] == 5


def test_closed_store_refuses_every_call(open_store) -> None:
    mem = open_store()
    mid = mem.add("x", vector=unit_rows(1)[0])
    mem.get(mid)
    mem.close()
    mem.close()  # twice is fine
    for call in (lambda: mem.get(mid), lambda: mem.search(vector=unit_rows(1)[0]),
                 lambda: mem.add("y", vector=unit_rows(1)[0]), lambda: mem.delete(mid), lambda: mem.maintain(),
                 lambda: mem.update(mid, importance=0.1), lambda: mem.stats()):
        with pytest.raises(StoreClosedError, match="closed"):
            call()


def test_context_manager_closes(tmp_path) -> None:
    from tiered_memory import TieredMemory

    with TieredMemory(tmp_path / "s", encoder=None, dimension=DIM) as mem:
        mem.add("x", vector=unit_rows(1)[0])
    assert mem.closed


def test_vectors_are_normalised(open_store) -> None:
    mem = open_store()
    vector = unit_rows(1)[0]
    mid = mem.add("x", vector=vector * 7.5)
    hit = mem.search(vector=vector * 0.01, k=1)[0]
    assert hit.memory.id == mid and hit.score == pytest.approx(1.0, abs=0.02)


def test_float32_query_vectors_rank_alike_unit_or_not(open_store) -> None:
    # A float32 unit query is searched as it is; any other float32 query is normalised first.
    mem = open_store()
    vectors = unit_rows(30)
    mem.add_many([f"m{i}" for i in range(30)], vectors=vectors)
    query = (vectors[3] + 0.3 * vectors[4]).astype(np.float64)
    unit = (query / np.linalg.norm(query)).astype(np.float32)
    scaled = (unit * np.float32(5.0)).astype(np.float32)
    by_unit = [(h.memory.id, h.score) for h in mem.search(vector=unit, k=5)]
    by_scaled = [(h.memory.id, h.score) for h in mem.search(vector=scaled, k=5)]
    by_float64 = [(h.memory.id, h.score) for h in mem.search(vector=query, k=5)]
    assert [i for i, _ in by_unit] == [i for i, _ in by_scaled] == [i for i, _ in by_float64]
    assert np.allclose([s for _, s in by_unit], [s for _, s in by_scaled], atol=1e-5)
    assert np.allclose([s for _, s in by_unit], [s for _, s in by_float64], atol=1e-5)
    broken = unit.copy()
    broken[7] = np.nan
    with pytest.raises(InvalidVectorError):
        mem.search(vector=broken, k=5)


def test_search_many_namespaces_at_once(open_store) -> None:
    mem = open_store()
    vectors = unit_rows(6)
    a = mem.add_many(["a0", "a1", "a2"], namespace="a", vectors=vectors[:3])
    b = mem.add_many(["b0", "b1", "b2"], namespace="b", vectors=vectors[3:])
    mem.add_many(["c0"], namespace="c", vectors=vectors[:1])
    found = {hit.memory.id for hit in mem.search(vector=vectors[0], namespace=["a", "b"], k=10)}
    assert found == set(a) | set(b)


def test_min_score_drops_weak_hits(open_store) -> None:
    mem = open_store()
    vectors = unit_rows(20)
    mem.add_many([f"m{i}" for i in range(20)], vectors=vectors)
    hits = mem.search(vector=vectors[0], k=20, min_score=0.9)
    assert hits and all(hit.score >= 0.9 for hit in hits)


def test_count_ids_namespaces(open_store) -> None:
    mem = open_store()
    mem.add_many(["a", "b"], namespace="x", vectors=unit_rows(2))
    mem.add("c", namespace="y", vector=unit_rows(1)[0])
    assert mem.count() == 3 and mem.count("x") == 2 and mem.count("zzz") == 0
    assert sorted(mem.namespaces()) == ["x", "y"]
    assert len(mem.ids("x")) == 2 and mem.ids("nope") == []


def test_empty_store_search_is_empty(open_store) -> None:
    mem = open_store()
    assert mem.search(vector=unit_rows(1)[0]) == []
    assert mem.add_many([], vectors=np.zeros((0, DIM))) == []


def test_fresh_ids_grow_with_time_so_batches_append_to_the_archive(open_store) -> None:
    mem = open_store()
    first = mem.add_many([f"m{i}" for i in range(200)], vectors=unit_rows(200, seed=3))
    later = mem.add("later", vector=unit_rows(1, seed=4)[0])
    assert first == sorted(first) and len(set(first)) == 200
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first)
    assert later > first[-1]
