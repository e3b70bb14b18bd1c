"""Namespaces never leak; kinds and where filters work in every tier."""

from __future__ import annotations

import pytest

from tiered_memory import MemoryNotFoundError, Tier
from tiered_memory.search.filters import compile_where

from .conftest import unit_rows


def test_search_get_update_delete_stay_inside_a_namespace(open_store) -> None:
    mem = open_store(exact_search_max=16, warm_capacity=200)
    vectors = unit_rows(300, seed=1)
    alice = mem.add_many([f"alice {i}" for i in range(150)], namespace="user/alice", vectors=vectors[:150])
    bob = mem.add_many([f"bob {i}" for i in range(150)], namespace="user/bob", vectors=vectors[150:])
    mem.maintain()
    assert {mem.tier_of(i) for i in alice + bob} >= {Tier.WARM, Tier.COLD}
    for q in vectors[:40]:  # queries that are alice's own vectors and bob's
        assert all(h.memory.namespace == "user/bob" for h in mem.search(vector=q, namespace="user/bob", k=20))
    for q in vectors[150:190]:
        assert all(h.memory.namespace == "user/alice" for h in mem.search(vector=q, namespace="user/alice", k=20))
    with pytest.raises(MemoryNotFoundError):
        mem.get(alice[0], namespace="user/bob")
    with pytest.raises(MemoryNotFoundError):
        mem.update(alice[0], namespace="user/bob", importance=0.1)
    with pytest.raises(MemoryNotFoundError):
        mem.delete(alice[0], namespace="user/bob")
    assert mem.get(alice[0], namespace="user/alice").text == "alice 0"
    assert mem.search(vector=vectors[0], namespace="user/carol") == []


def test_each_namespace_has_its_own_graph(open_store) -> None:
    mem = open_store(exact_search_max=8, dedup=False)
    mem.add_many(["a"] * 20, namespace="a", vectors=unit_rows(20, seed=2))
    mem.add_many(["b"] * 30, namespace="b", vectors=unit_rows(30, seed=3))
    assert len(mem.warm.graphs["a"]) == 20 and len(mem.warm.graphs["b"]) == 30


@pytest.mark.parametrize("tier_setup", ["hot", "warm", "cold"])
def test_kinds_and_where_filter_in_every_tier(open_store, tier_setup: str) -> None:
    mem = open_store(exact_search_max=8, warm_capacity=1_000)
    vectors = unit_rows(120, seed=4)
    kinds = ["preference" if i % 3 == 0 else "conversation" for i in range(120)]
    ids = mem.add_many([f"m{i}" for i in range(120)], vectors=vectors, kind=kinds,
                       metadata=[{"confidence": (i % 10) / 10, "project": "rag" if i % 2 else "ops"}
                                 for i in range(120)], importance=0.0 if tier_setup == "cold" else 0.5)
    if tier_setup == "cold":
        mem.maintain()
    if tier_setup == "hot":
        for memory_id in ids:
            mem.get(memory_id)
    assert {mem.tier_of(i) for i in ids} == {Tier(tier_setup)}
    for q in vectors[:10]:
        hits = mem.search(vector=q, k=5, kinds=["preference"], where={"confidence": {"$gte": 0.5}})
        assert len(hits) == 5
        for hit in hits:
            assert hit.memory.kind == "preference" and hit.memory.metadata["confidence"] >= 0.5
        hits = mem.search(vector=q, k=5, where={"project": "rag", "confidence": {"$in": [0.1, 0.3]}})
        assert hits and all(h.memory.metadata["project"] == "rag" and h.memory.metadata["confidence"] in (0.1, 0.3)
                            for h in hits)
    assert mem.search(vector=vectors[0], kinds=["never used"]) == []


def test_filter_that_matches_nothing_returns_nothing(open_store) -> None:
    mem = open_store(exact_search_max=8)
    mem.add_many([f"m{i}" for i in range(50)], vectors=unit_rows(50), metadata={"a": 1})
    assert mem.search(vector=unit_rows(1)[0], where={"a": 2}) == []


@pytest.mark.parametrize("where, metadata, expected", [
    ({"a": 1}, {"a": 1}, True),
    ({"a": 1}, {"a": True}, False),  # a bool is not the number 1
    ({"a": {"$ne": 1}}, {}, True),  # missing matches $ne
    ({"a": {"$eq": 1}}, {}, False),
    ({"a": {"$gt": 1, "$lt": 3}}, {"a": 2}, True),
    ({"a": {"$gte": 2}}, {"a": "2"}, False),  # str vs number: false, not an error
    ({"a": {"$lte": "m"}}, {"a": "b"}, True),
    ({"a": {"$in": [1, 2]}}, {"a": 2}, True),
    ({"a": {"$nin": [1, 2]}}, {"a": 3}, True),
    ({"a": {"$exists": False}}, {}, True),
    ({"a": {"$exists": True}}, {"a": None}, True),
    ({"$or": [{"a": 1}, {"b": 2}]}, {"b": 2}, True),
    ({"$and": [{"a": 1}, {"b": 2}]}, {"a": 1, "b": 3}, False),
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}, True),
    ({"a": {"x": 1}}, {"a": {"x": 1}}, True),  # a dict without operators is a value
])
def test_where_semantics(where, metadata, expected) -> None:
    predicate = compile_where(where)
    assert predicate is not None and predicate(metadata) is expected


@pytest.mark.parametrize("exact_search_max", [8, 10_000])
def test_only_ids_restricts_results(open_store, exact_search_max: int) -> None:
    mem = open_store(exact_search_max=exact_search_max)
    vectors = unit_rows(300, seed=8)
    ids = mem.add_many([f"m{i}" for i in range(300)], vectors=vectors)
    other = mem.add("elsewhere", namespace="other", vector=vectors[0])
    allowed = set(ids[100:120]) | {other}
    for q in vectors[:20]:
        hits = mem.search(vector=q, k=5, only_ids=allowed)
        assert len(hits) == 5 and all(h.memory.id in allowed and h.memory.id != other for h in hits)
        exact = vectors[100:120] @ q
        best = exact[ids[100:120].index(hits[0].memory.id)]
        assert best >= exact.max() - 0.01  # the exact best, but for int8 rounding
    big = set(ids[:250])
    hits = mem.search(vector=vectors[260], k=3, only_ids=big)
    assert all(h.memory.id in big for h in hits) and len(hits) == 3
    assert mem.search(vector=vectors[0], only_ids=set()) == []
