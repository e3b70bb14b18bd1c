"""Expiry (TTL): expired memories are gone for every read, counts leave them out, maintenance
deletes them durably; on real stores, with the fake clock moving time."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import lmdb
import msgpack
import numpy as np
import pytest
from hypothesis.stateful import consumes, rule

from tiered_memory import (
    ConfigError,
    InvalidExpiryError,
    InvalidInputError,
    MemoryConfig,
    MemoryExpiredError,
    MemoryNotFoundError,
    Tier,
    TieredMemory,
    make_encoder,
)
from tiered_memory.tiers.cold import pack_row

from .conftest import DIM, unit_rows
from .invariants import check_invariants
from .test_stateful import (
    ApproximateStoreMachine,
    Modelled,
    StoreMachine,
    TinyBudgetStoreMachine,
    run_fuzz,
    seeded_vector,
)

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def onnx_encoder():
    """The default encoder (bundled all-MiniLM-L6-v2, ONNX), loaded once for the text-search tests."""
    encoder = make_encoder("minilm-onnx")
    encoder.encode(["warm up"])
    return encoder


def hit_ids(hits) -> list[str]:
    return [hit.memory.id for hit in hits]


def half_expiring(mem: TieredMemory, n: int, namespace: str = "default", ttl_s: float = 60.0, seed: int = 0,
                  **options: Any) -> tuple[list[str], list[str], np.ndarray]:
    """n memories, every other one with a TTL; returns (expiring ids, lasting ids, vectors)."""
    vectors = unit_rows(n, seed=seed)
    ids = mem.add_many([f"memory {seed}-{i}" for i in range(n)], namespace=namespace, vectors=vectors,
                       ttl_s=[ttl_s if i % 2 == 0 else None for i in range(n)], **options)
    return ids[::2], ids[1::2], vectors


# -- adding with an expiry ---------------------------------------------------------------


def test_ttl_and_expires_at_set_the_expiry(open_store, clock) -> None:
    mem = open_store()
    vectors = unit_rows(4)
    first = mem.add("ttl", vector=vectors[0], ttl_s=30)
    second = mem.add("epoch", vector=vectors[1], expires_at=clock.now + 100)
    aware = datetime.fromtimestamp(clock.now, UTC).astimezone(timezone(timedelta(hours=5))) + timedelta(hours=1)
    third = mem.add("aware datetime", vector=vectors[2], expires_at=aware)
    forever = mem.add("no expiry", vector=vectors[3])
    assert mem.get(first).expires_at == clock.now + 30
    assert mem.get(second).expires_at == clock.now + 100
    assert mem.get(third).expires_at == pytest.approx(clock.now + 3600)
    assert mem.get(forever).expires_at is None
    clock.tick(30)  # expiry is inclusive: at expires_at the memory is gone
    with pytest.raises(MemoryExpiredError, match="expired at"):
        mem.get(first)
    assert mem.get(second).text == "epoch"


def test_expired_error_is_a_memory_not_found_error(open_store, clock) -> None:
    mem = open_store()
    mid = mem.add("short lived", vector=unit_rows(1)[0], ttl_s=1)
    clock.tick(1)
    with pytest.raises(MemoryNotFoundError) as caught:
        mem.get(mid)
    assert isinstance(caught.value, MemoryExpiredError) and mid in str(caught.value)


def test_add_many_takes_one_value_or_one_per_memory(open_store, clock) -> None:
    mem = open_store(default_ttl_s=1_000)
    vectors = unit_rows(3)
    ids = mem.add_many(["a", "b", "c"], vectors=vectors, ttl_s=[10, None, math.inf])
    assert [mem.get(i).expires_at for i in ids] == [clock.now + 10, clock.now + 1_000, None]
    same = mem.add_many(["d", "e"], vectors=unit_rows(2, seed=1), expires_at=clock.now + 50)
    assert [mem.get(i).expires_at for i in same] == [clock.now + 50] * 2


def test_default_ttl_applies_from_the_time_of_adding_and_inf_opts_out(open_store, clock) -> None:
    mem = open_store(default_ttl_s=100)
    old = datetime(2020, 1, 1, tzinfo=UTC)
    replayed = mem.add("replayed from 2020", vector=unit_rows(1)[0], created_at=old)
    kept = mem.add("kept forever", vector=unit_rows(1, seed=1)[0], ttl_s=math.inf)
    assert mem.get(replayed).created_at == old.timestamp()
    assert mem.get(replayed).expires_at == clock.now + 100
    clock.tick(100)
    assert replayed not in mem and kept in mem
    assert mem.ids() == [kept]


@pytest.mark.parametrize("value", [0, -1, 0.0, -0.5, float("nan"), math.inf, "60", True, [1, 2]])
def test_default_ttl_s_is_validated_once(value) -> None:
    with pytest.raises(ConfigError, match="default_ttl_s"):
        MemoryConfig(default_ttl_s=value)
    assert MemoryConfig(default_ttl_s=60).default_ttl_s == 60 and MemoryConfig().default_ttl_s is None


@pytest.mark.parametrize("arguments", [
    {"ttl_s": -5}, {"ttl_s": 0}, {"ttl_s": float("nan")}, {"ttl_s": "60"}, {"ttl_s": True},
    {"ttl_s": 10, "expires_at": 2_000_000_000}, {"expires_at": "tomorrow"}, {"expires_at": float("inf")},
    {"expires_at": 1_000.0},  # long past
])
def test_bad_expiry_input_is_refused_and_nothing_is_stored(open_store, arguments) -> None:
    mem = open_store()
    kept = mem.add("already here", vector=unit_rows(1)[0])
    with pytest.raises(InvalidExpiryError) as caught:
        mem.add("refused", vector=unit_rows(1, seed=2)[0], **arguments)
    assert isinstance(caught.value, InvalidInputError)
    with pytest.raises(InvalidExpiryError):
        mem.add_many(["x", "y"], vectors=unit_rows(2, seed=3), **arguments)
    assert mem.ids() == [kept] and len(mem) == 1
    with pytest.raises(InvalidExpiryError):
        mem.update(kept, text="changed", vector=unit_rows(1, seed=4)[0], **arguments)
    assert mem.get(kept).text == "already here" and mem.get(kept).version == 1 and mem.get(kept).expires_at is None


def test_a_list_of_the_wrong_length_is_refused(open_store) -> None:
    mem = open_store()
    with pytest.raises(InvalidExpiryError, match="one per memory"):
        mem.add_many(["a", "b", "c"], vectors=unit_rows(3), ttl_s=[10, 20])
    with pytest.raises(InvalidInputError, match="add_many"):
        mem.add("a", vector=unit_rows(1)[0], ttl_s=[10])
    assert len(mem) == 0


# -- every read leaves expired memories out -------------------------------------------------


def test_hot_warm_and_cold_gets_all_refuse_an_expired_memory(open_store, clock) -> None:
    mem = open_store(hot_capacity=2, warm_capacity=4)
    expiring, lasting, _ = half_expiring(mem, 12, ttl_s=60)
    mem.get(expiring[0])  # now hot: the hot path must check too
    mem.promote([expiring[1]], tier=Tier.WARM)
    tiers = {mem.tier_of(i) for i in expiring}
    assert Tier.HOT in tiers and Tier.COLD in tiers
    clock.tick(61)
    for memory_id in expiring:
        with pytest.raises(MemoryExpiredError):
            mem.get(memory_id)
        with pytest.raises(MemoryExpiredError):
            mem.get(memory_id, namespace="default")
        with pytest.raises(MemoryNotFoundError):
            mem.tier_of(memory_id)
        assert memory_id not in mem
        assert mem.record(memory_id) is None and mem.version_of(memory_id) == 0
        assert mem.namespace_of(memory_id) is None and mem.vector(memory_id) is None
    assert all(mem.get(i).expires_at is None for i in lasting)
    check_invariants(mem)


@pytest.mark.parametrize("layout", ["exact", "ann", "ann+cold"])
def test_dense_search_leaves_expired_memories_out_on_every_path(open_store, clock, layout) -> None:
    settings: dict[str, Any] = {"exact": {}, "ann": {"exact_search_max": 16},
                                "ann+cold": {"exact_search_max": 16, "warm_capacity": 40, "hot_capacity": 10}}[layout]
    mem = open_store(**settings)
    expiring, lasting, vectors = half_expiring(mem, 120, ttl_s=60)
    if layout == "ann+cold":
        assert mem.stats().cold.count > mem.stats().warm.count
    for i in (0, 2, 4):  # expiring memories' own vectors: each would be its query's best hit
        assert hit_ids(mem.search(vector=vectors[i], k=5))[0] == expiring[i // 2]
    clock.tick(60)
    lasting_set = set(lasting)
    for i in range(0, 40, 2):
        hits = mem.search(vector=vectors[i], k=10)
        assert len(hits) == 10 and set(hit_ids(hits)) <= lasting_set
        exact = sorted(lasting, key=lambda mid: -float(vectors[lasting.index(mid) * 2 + 1] @ vectors[i]))[:10]
        assert len(set(hit_ids(hits)) & set(exact)) >= 8  # the live neighbours, not fewer results
    check_invariants(mem)


def test_filtered_searches_leave_expired_memories_out(open_store, clock) -> None:
    mem = open_store(exact_search_max=16)
    vectors = unit_rows(80)
    kinds = ["note" if i % 4 < 2 else "fact" for i in range(80)]
    ids = mem.add_many([f"m{i}" for i in range(80)], vectors=vectors, kind=kinds,
                       metadata=[{"i": i} for i in range(80)], ttl_s=[30 if i % 2 == 0 else None for i in range(80)],
                       created_at=[clock.now - 1_000 + i for i in range(80)])
    expiring = set(ids[::2])
    clock.tick(30)
    query = vectors[0]
    searches = [
        dict(kinds=["note"]), dict(where={"i": {"$lt": 40}}), dict(only_ids=set(ids[:10])),
        dict(since=clock.now - 2_000, until=clock.now - 1_000 + 39), dict(min_score=-1.0),
        dict(kinds=["fact"], where={"i": {"$gte": 10}}, only_ids=set(ids[20:60])),
    ]
    for options in searches:
        hits = mem.search(vector=query, k=8, **options)
        assert hits and not expiring & set(hit_ids(hits)), options
    assert {h.memory.id for h in mem.search(vector=query, k=80, kinds=["note"])} == \
        {ids[i] for i in range(80) if kinds[i] == "note" and i % 2 == 1}
    # A kind whose only memories expired: nothing, not other kinds' memories.
    lone = mem.add("lone", vector=unit_rows(1, seed=9)[0], kind="lone-kind", ttl_s=5)
    assert hit_ids(mem.search(vector=query, k=3, kinds=["lone-kind"])) == [lone]
    clock.tick(5)
    assert mem.search(vector=query, k=3, kinds=["lone-kind"]) == []


def test_multi_namespace_search_and_lists(open_store, clock) -> None:
    mem = open_store()
    a_expiring, a_lasting, vectors = half_expiring(mem, 10, namespace="a", ttl_s=20)
    b_expiring, b_lasting, _ = half_expiring(mem, 10, namespace="b", ttl_s=40, seed=1)
    clock.tick(20)
    found = hit_ids(mem.search(vector=vectors[0], namespace=["a", "b"], k=20))
    assert set(found) == set(a_lasting + b_expiring + b_lasting)
    assert [m.id for m in mem.list_memories("a", limit=100)] == a_lasting
    assert [m.id for m in mem.list_memories("a", newest_first=True, limit=2)] == a_lasting[::-1][:2]
    assert mem.count("a") == 5 and mem.count("b") == 10 and mem.count() == 15 and len(mem) == 15
    assert set(mem.ids("a")) == set(a_lasting) and set(mem.ids()) == set(a_lasting + b_expiring + b_lasting)
    clock.tick(20)
    assert mem.namespaces() == ["a", "b"]
    assert mem.count("b") == 5 and mem.stats().expired == 10 and mem.stats().memories == 20
    check_invariants(mem)


def test_a_namespace_whose_memories_all_expired_is_not_listed(open_store, clock) -> None:
    mem = open_store()
    mem.add_many(["x", "y"], namespace="gone", vectors=unit_rows(2), ttl_s=5)
    mem.add("z", namespace="kept", vector=unit_rows(1, seed=1)[0])
    clock.tick(5)
    assert mem.namespaces() == ["kept"] and mem.count("gone") == 0 and mem.ids("gone") == []


def test_lexical_and_hybrid_search_leave_expired_memories_out(tmp_path: Path, clock, onnx_encoder) -> None:
    with TieredMemory(tmp_path / "s", encoder=onnx_encoder, clock=clock, promote_in_background=False) as mem:
        soon = mem.add("The user's flight to Lisbon leaves from gate B12", ttl_s=60)
        later = mem.add("The user's flight home from Lisbon is on Sunday evening")
        mem.add("The user likes green tea in the morning")
        for mode in ("hybrid", "lexical", "dense"):
            assert soon in hit_ids(mem.search("flight to Lisbon gate", k=3, mode=mode))
        clock.tick(60)
        for mode in ("hybrid", "lexical", "dense"):
            found = hit_ids(mem.search("flight to Lisbon gate", k=3, mode=mode))
            assert soon not in found and later in found, mode


def test_conversation_recall_leaves_expired_memories_out(tmp_path: Path, clock, onnx_encoder) -> None:
    with TieredMemory(tmp_path / "s", encoder=onnx_encoder, clock=clock, promote_in_background=False) as mem:
        soon = mem.add("The hotel in Lyon is booked for two nights", namespace="trip", ttl_s=120)
        kept = mem.add("The user is allergic to peanuts", namespace="trip")
        conv = mem.conversation(namespace="trip", max_tokens=500)
        conv.add_message("user", "Remind me about the hotel in Lyon and my allergy")
        assert {soon, kept} <= set(hit_ids(conv.recall(k=5)))
        clock.tick(120)
        recalled = hit_ids(conv.recall(k=5))
        assert kept in recalled and soon not in recalled


def test_agents_never_see_expired_memories(open_store, clock) -> None:
    mem = open_store(default_ttl_s=300)
    hub = mem.agents("user_1")
    analyst = hub.register("analyst")
    writer = hub.register("writer", shared_access="read-only")
    private = analyst.remember("churn model overfits", vector=unit_rows(1)[0])
    shared = hub.share(analyst, [writer], "Q3 revenue grew 12%", key="q3", access="read",
                       vector=unit_rows(1, seed=1)[0])
    kept = mem.add("kept by the analyst", namespace="user_1/analyst", vector=unit_rows(1, seed=2)[0],
                   ttl_s=math.inf)
    assert writer.get("q3") == "Q3 revenue grew 12%"
    assert hit_ids(writer.search(vector=unit_rows(1, seed=1)[0], k=3)) == [shared]
    clock.tick(300)
    assert writer.get("q3") is None and writer.entry("q3") is None
    assert writer.search(vector=unit_rows(1, seed=1)[0], k=3) == []
    assert hit_ids(analyst.search(vector=unit_rows(1)[0], k=5)) == [kept]
    for agent, memory_id in ((analyst, private), (writer, shared)):
        with pytest.raises(MemoryNotFoundError):
            agent.recall(memory_id)
    hub.delete(shared, by=analyst)  # an expired shared memory can still be deleted with its hub records
    with pytest.raises(MemoryNotFoundError):
        hub.info(shared)


# -- caches stay exact as memories come and go -------------------------------------------


def test_changes_between_two_searches_are_seen(open_store, clock) -> None:
    mem = open_store()
    _, lasting, _ = half_expiring(mem, 10, ttl_s=100)
    query = unit_rows(1, seed=42)[0]
    clock.tick(50)
    mem.search(vector=query, k=3)  # computes the namespace's expired set for a window of time
    soon = mem.add("soon", vector=query, ttl_s=5)
    assert hit_ids(mem.search(vector=query, k=1)) == [soon]
    clock.tick(5)
    assert soon not in hit_ids(mem.search(vector=query, k=10))
    extended = mem.add("extended", vector=query, ttl_s=10)
    assert hit_ids(mem.search(vector=query, k=1)) == [extended]
    mem.extend(extended, ttl_s=1_000)
    clock.tick(60)  # past the first batch (100 s) and the extended one's first expiry
    assert set(hit_ids(mem.search(vector=query, k=10))) == {extended, *lasting}


# -- update and extend ---------------------------------------------------------------------


def test_update_sets_clears_or_keeps_the_expiry(open_store, clock) -> None:
    mem = open_store()
    mid = mem.add("x", vector=unit_rows(1)[0], ttl_s=10)
    assert mem.update(mid, importance=0.9).expires_at == clock.now + 10  # left out: unchanged
    assert mem.update(mid, ttl_s=500).expires_at == clock.now + 500
    assert mem.update(mid, expires_at=clock.now + 20).expires_at == clock.now + 20  # may shorten
    cleared = mem.update(mid, expires_at=None)
    assert cleared.expires_at is None and cleared.version == 5
    clock.tick(10_000)
    assert mem.get(mid).expires_at is None
    assert mem.update(mid, ttl_s=math.inf).expires_at is None
    assert mem.update(mid, ttl_s=5).expires_at == clock.now + 5
    clock.tick(5)
    with pytest.raises(MemoryExpiredError):
        mem.update(mid, text="too late", vector=unit_rows(1, seed=1)[0])
    with pytest.raises(MemoryExpiredError):
        mem.update(mid, expires_at=None)  # an expired memory is not brought back
    check_invariants(mem)


def test_extend_pushes_expiries_and_never_shortens(open_store, clock) -> None:
    mem = open_store()
    vectors = unit_rows(4)
    soon, late, forever, other = mem.add_many(["soon", "late", "forever", "other"], vectors=vectors,
                                              ttl_s=[10, 1_000, None, 60])
    assert mem.extend(soon, ttl_s=100) == clock.now + 100
    assert mem.extend(late, ttl_s=100) == clock.now + 1_000  # already later: kept
    assert mem.extend(forever, ttl_s=100) is None  # never expires: stays so
    got = mem.get(soon)
    assert got.version == 1 and got.access_count == 1  # neither an update nor an access
    clock.tick(50)
    assert mem.extend_many([soon, other], ttl_s=[100, 100]) == [clock.now + 100, clock.now + 100]
    clock.tick(100)
    with pytest.raises(MemoryExpiredError):
        mem.extend(other, ttl_s=100)  # expired before this call: too late
    assert mem.get(late).expires_at == clock.now + 850


def test_extend_many_is_all_or_nothing(open_store, clock) -> None:
    mem = open_store()
    a, b = mem.add_many(["a", "b"], vectors=unit_rows(2), ttl_s=10)
    with pytest.raises(MemoryNotFoundError):
        mem.extend_many([a, "no-such-id", b], ttl_s=100)
    with pytest.raises(InvalidExpiryError):
        mem.extend_many([a, b], ttl_s=[100, -1])
    with pytest.raises(InvalidInputError):
        mem.extend_many(a, ttl_s=100)
    assert [mem.get(i).expires_at for i in (a, b)] == [clock.now + 10] * 2
    with pytest.raises(MemoryNotFoundError):
        mem.extend(a, ttl_s=100, namespace="elsewhere")


def test_expiries_survive_close_and_reopen(open_store, tmp_path: Path, clock) -> None:
    mem = open_store()
    updated, extended, plain = mem.add_many(["u", "e", "p"], vectors=unit_rows(3), ttl_s=[10, 10, None])
    mem.update(updated, ttl_s=200)
    mem.extend(extended, ttl_s=300)
    mem.close()
    clock.tick(150)
    again = open_store(preload=False)
    assert again.count() == 3 and again.count("default") == 3 and len(again) == 3  # counted before loading
    assert again.record(updated).expires_at == clock.now + 50 and again.record(plain).expires_at is None
    assert again.get(extended).expires_at == clock.now + 150
    clock.tick(100)
    assert again.ids() == [extended, plain] or set(again.ids()) == {extended, plain}
    with pytest.raises(MemoryExpiredError):
        again.get(updated)
    check_invariants(again)


def test_counts_of_a_namespace_not_loaded_leave_expired_memories_out(open_store, clock) -> None:
    mem = open_store()
    expiring, lasting, _ = half_expiring(mem, 10, namespace="tenant", ttl_s=30)
    mem.add("elsewhere", namespace="other", vector=unit_rows(1, seed=5)[0])
    mem.close()
    clock.tick(30)
    again = open_store(preload=False)
    assert again.count("tenant") == 5 and len(again) == 6 and set(again.ids("tenant")) == set(lasting)
    assert again.stats().expired == 5 and not again.stats().loaded["loaded"]  # read from rows, nothing loaded
    assert again.record(expiring[0]) is None and expiring[0] not in again
    with pytest.raises(MemoryNotFoundError):
        again.tier_of(expiring[0])


def test_a_read_only_process_sees_expiry(open_store, tmp_path: Path, clock) -> None:
    mem = open_store()
    expiring, lasting, vectors = half_expiring(mem, 6, ttl_s=30)
    mem.close()
    clock.tick(30)
    with TieredMemory(tmp_path / "store", encoder=None, dimension=DIM, clock=clock, read_only=True) as reader:
        assert len(reader) == 3 and set(reader.ids()) == set(lasting)
        assert set(hit_ids(reader.search(vector=vectors[0], k=6))) == set(lasting)
        with pytest.raises(MemoryExpiredError):
            reader.get(expiring[0])
        assert reader.stats().expired == 3


# -- maintenance deletes durably ------------------------------------------------------------


def test_maintain_deletes_expired_memories_durably(open_store, clock) -> None:
    mem = open_store(exact_search_max=4)
    expiring, lasting, vectors = half_expiring(mem, 20, ttl_s=30, dedup=True)
    clock.tick(30)
    assert mem.stats().memories == 20 and mem.stats().expired == 10
    report = mem.maintain()
    assert report.expired == 10
    stats = mem.stats()
    assert (stats.memories, stats.expired, len(mem)) == (10, 0, 10)
    assert mem.maintain().expired == 0
    check_invariants(mem)
    mem.close()
    again = open_store()
    assert again.stats().memories == 10 and set(again.ids()) == set(lasting)
    for memory_id in expiring:
        with pytest.raises(MemoryNotFoundError) as caught:
            again.get(memory_id)
        assert not isinstance(caught.value, MemoryExpiredError)  # deleted now, not merely expired
    # The dedup index let go of the deleted texts: adding one again stores a new memory.
    fresh = again.add("memory 0-0", vector=vectors[0])
    assert fresh not in expiring and again.get(fresh).text == "memory 0-0"
    check_invariants(again)


def test_maintain_sweeps_namespaces_that_are_not_loaded(open_store, clock) -> None:
    mem = open_store()
    half_expiring(mem, 8, namespace="idle", ttl_s=30)
    _, busy_lasting, _ = half_expiring(mem, 8, namespace="busy", ttl_s=30, seed=1)
    mem.close()
    clock.tick(30)
    again = open_store(preload=False)
    again.preload("busy")
    assert again.maintain().expired == 8
    assert again.stats().memories == 8 and again.stats().loaded["loaded"] == 1  # "idle" swept without a load
    assert again.count("idle") == 4 and set(again.ids("busy")) == set(busy_lasting)
    check_invariants(again)


def test_automatic_maintenance_sweeps_too(open_store, clock) -> None:
    mem = open_store(maintain_every_s=60)
    expiring, _, vectors = half_expiring(mem, 6, ttl_s=30)
    clock.tick(61)
    mem.search(vector=vectors[1], k=2)  # the operation that crosses maintain_every_s runs maintenance
    assert mem.stats().memories == 3 and mem.stats().expired == 0


def test_delete_of_an_expired_memory_not_yet_swept_deletes_it(open_store, clock) -> None:
    mem = open_store()
    mid = mem.add("x", vector=unit_rows(1)[0], ttl_s=5)
    clock.tick(5)
    mem.delete(mid)
    assert mem.stats().memories == 0
    with pytest.raises(MemoryNotFoundError):
        mem.delete(mid)


# -- dedup ----------------------------------------------------------------------------------


def test_a_duplicate_add_keeps_the_later_expiry(open_store, clock) -> None:
    mem = open_store()
    vector = unit_rows(1)[0]
    mid = mem.add("the user lives in Paris", vector=vector, ttl_s=10)
    assert mem.add("The user lives in  Paris", vector=vector, ttl_s=1_000) == mid
    assert mem.get(mid).expires_at == clock.now + 1_000
    assert mem.add("the user lives in Paris", vector=vector, ttl_s=5) == mid  # earlier: not shortened
    assert mem.get(mid).expires_at == clock.now + 1_000
    assert mem.add("the user lives in Paris", vector=vector) == mid  # no expiry asked: never expires now
    assert mem.get(mid).expires_at is None
    batch = mem.add_many(["a repeated text", "a repeated text"], vectors=unit_rows(2, seed=1), ttl_s=[10, 100])
    assert batch[0] == batch[1] and mem.get(batch[0]).expires_at == clock.now + 100
    mem.close()
    assert open_store().get(mid).expires_at is None  # durably


def test_an_expired_memory_is_not_a_duplicate(open_store, clock) -> None:
    mem = open_store()
    vector = unit_rows(1)[0]
    old = mem.add("remember the milk", vector=vector, ttl_s=10)
    clock.tick(10)
    new = mem.add("remember the milk", vector=vector)
    assert new != old and mem.get(new).expires_at is None
    assert mem.maintain().expired == 1
    assert mem.add("remember the milk", vector=vector) == new  # the sweep left the new memory's key alone
    check_invariants(mem)


# -- sealed memories ------------------------------------------------------------------------


def test_sealed_memories_expire_and_are_swept(tmp_path: Path, clock) -> None:
    path = tmp_path / "sealed"
    options: dict[str, Any] = dict(encoder=None, dimension=DIM, clock=clock, encryption_key=KEY,
                                   promote_in_background=False)
    with TieredMemory(path, **options) as mem:
        vectors = unit_rows(4)
        secret = mem.add("the door code is 4711", vector=vectors[0], sensitive=True, ttl_s=60)
        kept = mem.add("the safe code is 0815", vector=vectors[1], sensitive=True)
        assert mem.get(secret).expires_at == clock.now + 60
    clock.tick(60)
    with TieredMemory(path, **options) as mem:
        assert mem.count() == 1 and mem.stats().expired == 1  # from the rows: nothing decrypted
        assert hit_ids(mem.search(vector=vectors[0], k=2)) == [kept]
        with pytest.raises(MemoryExpiredError):
            mem.get(secret)
        assert mem.maintain().expired == 1
        check_invariants(mem)
    with TieredMemory(path, **options) as mem:
        assert mem.ids() == [kept]
    for stored in (path / "cold").iterdir():  # the sealed text never reached the disk in clear
        assert b"door code" not in stored.read_bytes()


# -- compatibility --------------------------------------------------------------------------


def test_rows_of_memories_that_never_expire_keep_the_old_layout(open_store, tmp_path: Path) -> None:
    assert len(msgpack.unpackb(pack_row("fact", 0.5, 1.0, 1.0, 1.0, 0, -1, 1, 1, False))) == 10
    assert len(msgpack.unpackb(pack_row("fact", 0.5, 1.0, 1.0, 1.0, 0, -1, 1, 1, False, 99.0))) == 11
    mem = open_store()
    plain = mem.add("plain", vector=unit_rows(1)[0])
    expiring = mem.add("expiring", vector=unit_rows(1, seed=1)[0], ttl_s=60)
    mem.close()
    env = lmdb.open(str(tmp_path / "store" / "cold"), max_dbs=16, readonly=True, lock=False)
    with env.begin() as txn:
        rows = {bytes(key[4:]).decode(): msgpack.unpackb(value)
                for key, value in txn.cursor(db=env.open_db(b"rows", txn=txn))}
    env.close()
    assert len(rows[plain]) == 10 and len(rows[expiring]) == 11
    again = open_store()
    assert again.get(plain).expires_at is None and again.get(expiring).expires_at is not None


# -- the model-based fuzzer, with expiring memories and a moving clock ---------------------


class ExpiringMixin:
    """Rules that add expiring memories, extend them and move the clock; the model forgets a
    memory when its expiry passes, so every read the base machine checks must leave it out."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[call-arg]
        self.expires: dict[str, float] = {}  # the model's expiries of memories that expire
        self.expired: set[str] = set()

    def _forget_expired(self) -> None:
        now = self.clock.now
        for memory_id, when in list(self.expires.items()):
            if when <= now:
                del self.expires[memory_id]
                self.model.pop(memory_id, None)
                self.expired.add(memory_id)

    @rule(target=StoreMachine.ids, text=st.text(min_size=1, max_size=10).filter(str.strip), seed=st.integers(0, 999),
          namespace=st.sampled_from(("ns/a", "ns/b")), ttl=st.sampled_from([30.0, 600.0, 7_200.0]))
    def add_expiring(self, text: str, seed: int, namespace: str, ttl: float) -> str:
        self._count("add_expiring")
        self._forget_expired()
        vector = seeded_vector(seed)
        memory_id = self.mem.add(text, namespace=namespace, vector=vector, ttl_s=ttl, metadata={"n": 1})
        self.model[memory_id] = Modelled(namespace, text, "fact", {"n": 1}, 0.5, vector)
        self.expires[memory_id] = self.clock.now + ttl
        return memory_id

    @rule(seconds=st.sampled_from([1.0, 29.0, 300.0, 3_600.0]))
    def tick(self, seconds: float) -> None:
        self._count("tick")
        self.clock.tick(seconds)
        self._forget_expired()

    @rule(memory_id=StoreMachine.ids, ttl=st.sampled_from([60.0, 10_000.0]))
    def extend(self, memory_id: str, ttl: float) -> None:
        self._count("extend")
        self._forget_expired()
        if memory_id in self.expired:
            with pytest.raises(MemoryNotFoundError):
                self.mem.extend(memory_id, ttl_s=ttl)
            return
        result = self.mem.extend(memory_id, ttl_s=ttl)
        if memory_id in self.expires:
            self.expires[memory_id] = max(self.expires[memory_id], self.clock.now + ttl)
            assert result == self.expires[memory_id]
        else:
            assert result is None

    @rule(memory_id=StoreMachine.ids)
    def get(self, memory_id: str) -> None:
        self._forget_expired()
        if memory_id in self.expired:
            with pytest.raises(MemoryNotFoundError):
                self.mem.get(memory_id)
        else:
            super().get(memory_id)  # type: ignore[misc]

    @rule(memory_id=StoreMachine.ids, text=st.none() | st.text(min_size=1, max_size=10).filter(str.strip),
          seed=st.integers(0, 999), importance=st.none() | st.floats(0, 1))
    def update(self, memory_id: str, text: str | None, seed: int, importance: float | None) -> None:
        self._forget_expired()
        if memory_id in self.expired:
            with pytest.raises(MemoryNotFoundError):
                self.mem.update(memory_id, importance=importance)
            return
        super().update(memory_id, text, seed, None, importance, None)  # type: ignore[misc]

    @rule(memory_id=consumes(StoreMachine.ids))
    def delete(self, memory_id: str) -> None:
        self._forget_expired()
        if memory_id in self.expired:  # deleted if the sweep has not reached it, else already gone
            try:
                self.mem.delete(memory_id)
            except MemoryNotFoundError:
                pass
            return
        self.expires.pop(memory_id, None)
        super().delete(memory_id)  # type: ignore[misc]

    @rule(seconds=st.sampled_from([0.0, 600.0, 36_000.0]))
    def maintain(self, seconds: float) -> None:
        super().maintain(seconds)  # type: ignore[misc]
        self._forget_expired()

    @rule(memory_ids=st.lists(StoreMachine.ids, max_size=4), hot=st.booleans())
    def promote(self, memory_ids: list[str], hot: bool) -> None:
        self._forget_expired()
        super().promote(memory_ids, hot)  # type: ignore[misc]


class ExpiringStoreMachine(ExpiringMixin, StoreMachine):
    pass


class ExpiringApproximateStoreMachine(ExpiringMixin, ApproximateStoreMachine):
    pass


class ExpiringTinyBudgetStoreMachine(ExpiringMixin, TinyBudgetStoreMachine):
    pass


@pytest.mark.parametrize("machine", [ExpiringStoreMachine, ExpiringApproximateStoreMachine,
                                     ExpiringTinyBudgetStoreMachine])
def test_expiry_agrees_with_an_exact_model(machine) -> None:
    run_fuzz(machine, examples=25, steps=30)

