"""The tier manager: promote on access, demote on decay and on capacity pressure (fake clock)."""

from __future__ import annotations

import numpy as np
import pytest

from tiered_memory import Tier
from tiered_memory.tiering.decay import decay_score

from .conftest import unit_rows
from .invariants import check_invariants

DAY = 86_400.0


def test_decay_formula_halves_per_half_life_and_rises_with_use() -> None:
    fresh = decay_score(0.8, 0.0, 0, 0.0, 7 * DAY, 0.5)
    assert fresh == pytest.approx(0.8)
    assert decay_score(0.8, 0.0, 0, 7 * DAY, 7 * DAY, 0.5) == pytest.approx(0.4)
    assert decay_score(0.8, 0.0, 0, 14 * DAY, 7 * DAY, 0.5) == pytest.approx(0.2)
    used = decay_score(0.8, 0.0, 10, 0.0, 7 * DAY, 0.5)
    assert used == pytest.approx(0.8 * (1 + 0.5 * np.log(11)))


def test_get_promotes_cold_to_hot(open_store) -> None:
    mem = open_store(warm_capacity=100, hot_capacity=10)
    vectors = unit_rows(10)
    ids = mem.add_many([f"m{i}" for i in range(10)], vectors=vectors, importance=0.0)
    mem.maintain()  # importance 0 decays below every threshold: all go cold
    assert {mem.tier_of(i) for i in ids} == {Tier.COLD}
    got = mem.get(ids[4])
    assert got.tier is Tier.COLD and mem.tier_of(ids[4]) is Tier.HOT
    stats = mem.stats()
    assert stats.promotions == {"cold->warm": 1, "warm->hot": 1}
    assert stats.cold.hits == 1 and stats.warm.misses == 1


def test_search_promotes_what_it_returns(open_store) -> None:
    mem = open_store()
    vectors = unit_rows(40)
    ids = mem.add_many([f"m{i}" for i in range(40)], vectors=vectors, importance=0.0)
    mem.maintain()
    hits = mem.search(vector=vectors[7], k=3)
    assert hits[0].memory.id == ids[7]
    assert all(hit.tier is Tier.COLD for hit in hits)
    assert all(mem.tier_of(hit.memory.id) is Tier.HOT for hit in hits)
    returned = {hit.memory.id for hit in hits}
    assert all(mem.tier_of(i) is Tier.COLD for i in ids if i not in returned)


def test_decay_demotes_hot_then_warm_with_time(open_store, clock) -> None:
    mem = open_store(half_life_s=DAY, hot_min_score=0.2, warm_min_score=0.05, use_weight=0.0)
    vectors = unit_rows(3)
    keep, fade = mem.add_many(["keep", "fade"], vectors=vectors[:2], importance=[0.9, 0.9])
    mem.get(keep)
    mem.get(fade)
    clock.tick(2 * DAY)  # 0.9 -> 0.225: both still above 0.2
    mem.get(keep)  # used again: its clock restarts
    assert mem.maintain().demoted_to_warm == 0
    clock.tick(1 * DAY)  # fade: 0.9 / 8 = 0.11 < 0.2 -> warm; keep: 0.45
    report = mem.maintain()
    assert report.demoted_to_warm == 1
    assert mem.tier_of(fade) is Tier.WARM and mem.tier_of(keep) is Tier.HOT
    clock.tick(2 * DAY)  # fade: 0.9 / 32 = 0.028 < 0.05 -> cold
    report = mem.maintain()
    assert mem.tier_of(fade) is Tier.COLD
    assert mem.stats().demotions["warm->cold"] >= 1


def test_importance_and_use_slow_the_decay(open_store, clock) -> None:
    mem = open_store(half_life_s=DAY, hot_min_score=0.0, warm_min_score=0.05, use_weight=1.0)
    vectors = unit_rows(3)
    minor, major, used = mem.add_many(["minor", "major", "used"], vectors=vectors, importance=[0.2, 0.8, 0.2])
    for _ in range(20):
        mem.get(used)
    clock.tick(2 * DAY)
    mem.maintain()
    # minor: 0.2/4 = 0.05 -> not below; after one more day 0.025 -> cold
    clock.tick(DAY)
    mem.maintain()
    assert mem.tier_of(minor) is Tier.COLD
    assert mem.tier_of(major) is Tier.WARM  # 0.8/8 = 0.1
    assert mem.tier_of(used) is Tier.HOT  # 0.2/8 * (1 + ln 21) = 0.1


def test_capacity_pressure_demotes_lowest_scores_first(open_store, clock) -> None:
    mem = open_store(warm_capacity=100, hot_capacity=10)
    vectors = unit_rows(100)
    importance = np.linspace(0.01, 1.0, 100)
    ids = mem.add_many([f"m{i}" for i in range(100)], vectors=vectors, importance=importance.tolist())
    assert all(mem.tier_of(i) is Tier.WARM for i in ids)
    extra = mem.add("one more", vector=unit_rows(1, seed=7)[0], importance=0.5)
    # one over capacity -> demote down to 99% of capacity: the 2 lowest-importance memories
    cold = [i for i in ids if mem.tier_of(i) is Tier.COLD]
    assert cold == ids[:2]
    assert mem.tier_of(extra) is Tier.WARM
    assert mem.stats().warm.count == 99


def test_demoted_memories_are_still_found(open_store) -> None:
    mem = open_store(warm_capacity=50, hot_capacity=5)
    vectors = unit_rows(200, seed=11)
    ids = mem.add_many([f"m{i}" for i in range(200)], vectors=vectors)
    assert mem.stats().warm.count <= 50
    cold = [i for i, memory_id in enumerate(ids) if mem.tier_of(memory_id) is Tier.COLD]
    assert len(cold) >= 150
    for i in cold[:20]:
        hit = mem.search(vector=vectors[i], k=1)[0]
        assert hit.memory.id == ids[i] and hit.tier is Tier.COLD


def test_hot_tier_is_bounded_lru(open_store) -> None:
    mem = open_store(hot_capacity=3)
    ids = mem.add_many([f"m{i}" for i in range(6)], vectors=unit_rows(6))
    for memory_id in ids:
        mem.get(memory_id)
    assert [mem.tier_of(i) for i in ids] == [Tier.WARM] * 3 + [Tier.HOT] * 3
    assert mem.stats().demotions["hot->warm"] == 3


def test_automatic_maintenance_every_n_operations(open_store, clock) -> None:
    mem = open_store(maintain_every_ops=10, half_life_s=DAY, warm_min_score=0.05)
    ids = mem.add_many([f"m{i}" for i in range(5)], vectors=unit_rows(5), importance=0.1)
    clock.tick(3 * DAY)  # 0.1 / 8 < 0.05
    assert all(mem.tier_of(i) is Tier.WARM for i in ids)
    extra = unit_rows(10, seed=4)
    for i in range(5):
        mem.add(f"new {i}", vector=extra[i], importance=1.0)  # 5 + 5 ops: the 10th runs maintain
    assert all(mem.tier_of(i) is Tier.COLD for i in ids)


def test_hot_gets_past_the_bound_have_the_background_thread_maintain(open_store, clock) -> None:
    # Only hot gets (the fast path) cross maintain_every_ops: they must still ask for maintenance.
    mem = open_store(maintain_every_ops=40, half_life_s=DAY, warm_min_score=0.05, promote_in_background=True)
    faded = mem.add_many(["a", "b"], vectors=unit_rows(2), importance=0.1)
    kept = mem.add("c", vector=unit_rows(3)[2], importance=1.0)
    mem.get(kept)
    mem.wait_idle(10)
    assert mem.tier_of(kept) is Tier.HOT
    clock.tick(3 * DAY)  # 0.1 / 8 < 0.05
    for _ in range(60):
        mem.get(kept)
    assert mem.wait_idle(10)
    assert [mem.tier_of(i) for i in faded] == [Tier.COLD, Tier.COLD]
    assert mem.get(kept).access_count == 62


def test_automatic_maintenance_every_interval(open_store, clock) -> None:
    mem = open_store(maintain_every_s=3_600, half_life_s=DAY, warm_min_score=0.05)
    ids = mem.add_many(["a", "b"], vectors=unit_rows(2), importance=0.1)
    clock.tick(3 * DAY)
    returned = mem.search(vector=unit_rows(1, seed=3)[0], k=1)[0].memory.id  # an hour has passed: maintains
    other = ids[1] if returned == ids[0] else ids[0]
    assert mem.tier_of(other) is Tier.COLD  # 0.1 / 8 < 0.05
    assert mem.tier_of(returned) is Tier.HOT  # just used: 0.1 * (1 + 0.5 ln 2) > 0.05


def test_access_statistics_accumulate(open_store, clock) -> None:
    mem = open_store()
    vectors = unit_rows(5)
    ids = mem.add_many([f"m{i}" for i in range(5)], vectors=vectors)
    clock.tick(5)
    mem.get(ids[0])
    clock.tick(5)
    mem.search(vector=vectors[0], k=1)
    got = mem.get(ids[0])
    assert got.access_count == 3 and got.last_accessed == clock.now


def test_promote_moves_without_counting_a_use(open_store) -> None:
    mem = open_store()
    ids = mem.add_many([f"m{i}" for i in range(6)], vectors=unit_rows(6), importance=0.0)
    mem.maintain()
    assert mem.promote(ids[:2]) == 4  # two cold->warm and two warm->hot moves
    assert mem.promote([ids[2], "unknown"], tier=Tier.WARM) == 1
    assert [mem.tier_of(i) for i in ids[:4]] == [Tier.HOT, Tier.HOT, Tier.WARM, Tier.COLD]
    assert mem.catalog.uses[mem.catalog.slot_of[ids[0]]] == 0
    with pytest.raises(ValueError, match="warm' or 'hot"):
        mem.promote(ids, tier=Tier.COLD)


def test_top_by_decay_ranks_by_decayed_importance(open_store, clock) -> None:
    mem = open_store(half_life_s=DAY, use_weight=0.0)
    old, new, low = mem.add_many(["old", "new", "low"], vectors=unit_rows(3), importance=[0.9, 0.6, 0.1],
                                 created_at=[clock.now - 3 * DAY, clock.now, clock.now])
    assert mem.top_by_decay("default") == [new, old, low]  # 0.6 > 0.9/8 > 0.1
    assert mem.top_by_decay("default", limit=1) == [new]
    mem.get(new)
    assert mem.top_by_decay("default", exclude_tiers=(Tier.HOT,)) == [old, low]
    assert mem.top_by_decay("nope") == []


def test_a_batch_larger_than_warm_room_sends_the_rest_to_cold(open_store) -> None:
    mem = open_store(warm_capacity=100, hot_capacity=10, exact_search_max=64)
    vectors = unit_rows(500, seed=12)
    importance = [0.9 if i % 5 == 0 else 0.1 for i in range(500)]
    ids = mem.add_many([f"m{i}" for i in range(500)], vectors=vectors, importance=importance)
    warm = [i for i, memory_id in enumerate(ids) if mem.tier_of(memory_id) is Tier.WARM]
    assert len(warm) == 100 == len(mem.warm) == mem.stats().warm.count
    assert all(i % 5 == 0 for i in warm)  # the important fifth got the room
    assert mem.warm.graphs["default"].index.element_count == 100  # never inserted then dropped
    assert mem.search(vector=vectors[3], k=1)[0].memory.id == ids[3]  # the rest is found in cold


def test_small_namespaces_have_no_graph_until_they_grow(open_store) -> None:
    mem = open_store(exact_search_max=50)
    vectors = unit_rows(120, seed=13)
    ids = mem.add_many([f"m{i}" for i in range(50)], vectors=vectors[:50])
    assert "default" not in mem.warm.graphs and mem.stats().warm.count == 50
    assert mem.search(vector=vectors[7], k=1)[0].memory.id == ids[7]  # exact scan
    ids += mem.add_many([f"m{i}" for i in range(50, 120)], vectors=vectors[50:])
    graph = mem.warm.graphs["default"]  # crossed the threshold: built from every warm memory
    assert len(graph) == 120 and set(graph.label_of) == set(ids)
    assert mem.search(vector=vectors[77], k=1)[0].memory.id == ids[77]


def test_background_promotion_serves_at_once_and_promotes_soon(open_store) -> None:
    mem = open_store(promote_in_background=True, exact_search_max=8)
    vectors = unit_rows(60)
    ids = mem.add_many([f"m{i}" for i in range(60)], vectors=vectors, importance=0.0)
    mem.maintain()
    assert mem.tier_of(ids[5]) is Tier.COLD
    got = mem.get(ids[5])
    assert got.tier is Tier.COLD and got.text == "m5"  # served from cold, not moved yet
    hit = mem.search(vector=vectors[9], k=1)[0]
    assert hit.tier is Tier.COLD and hit.memory.id == ids[9]
    assert mem.wait_idle(timeout=10)
    assert mem.tier_of(ids[5]) is Tier.HOT and mem.tier_of(ids[9]) is Tier.HOT
    assert mem.stats().promotions == {"cold->warm": 2, "warm->hot": 2}
    assert mem.search(vector=vectors[9], k=1)[0].tier is Tier.HOT


def test_background_promoter_stops_on_close(open_store) -> None:
    import threading

    mem = open_store(promote_in_background=True)
    ids = mem.add_many([f"m{i}" for i in range(10)], vectors=unit_rows(10))
    mem.get(ids[0])
    assert mem.wait_idle(timeout=10)
    mem.close()
    assert not [t for t in threading.enumerate() if t.name == "tiered-memory-promoter"]


@pytest.mark.parametrize("background", [False, True])
def test_graphs_full_of_tombstones_are_compacted(open_store, background: bool) -> None:
    mem = open_store(exact_search_max=8, promote_in_background=background)
    vectors = unit_rows(3_000, seed=14)
    ids = mem.add_many([f"m{i}" for i in range(3_000)], vectors=vectors)
    for memory_id in ids[:2_000]:
        mem.delete(memory_id)
    graph = mem.warm.graphs["default"]
    assert graph.tombstones == 2_000 and graph.needs_compaction
    mem.maintain()
    assert mem.wait_idle(timeout=60)
    compacted = mem.warm.graphs["default"]
    assert compacted is not graph and compacted.tombstones == 0
    assert set(compacted.label_of) == set(ids[2_000:])
    assert mem.search(vector=vectors[2_500], k=1)[0].memory.id == ids[2_500]


def test_a_full_warm_tier_admits_a_cold_search_hit_on_its_second_use(open_store) -> None:
    mem = open_store(warm_capacity=50, hot_capacity=5)
    vectors = unit_rows(200, seed=11)
    ids = mem.add_many([f"m{i}" for i in range(200)], vectors=vectors)
    assert mem.stats().warm.count >= 49  # full: at the 99% that capacity pressure demotes down to
    cold = [i for i, memory_id in enumerate(ids) if mem.tier_of(memory_id) is Tier.COLD]
    first, second, fetched = cold[0], cold[1], cold[2]
    warm_before = {memory_id for memory_id in ids if mem.tier_of(memory_id) is not Tier.COLD}
    # A one-off hit is served from cold and stays there: promoting it would demote another.
    assert mem.search(vector=vectors[first], k=1)[0].memory.id == ids[first]
    assert mem.tier_of(ids[first]) is Tier.COLD
    assert {memory_id for memory_id in ids if mem.tier_of(memory_id) is not Tier.COLD} == warm_before
    # Its second use is evidence of reuse: promoted (and something else demoted).
    hit = mem.search(vector=vectors[first], k=1)[0]
    assert hit.memory.id == ids[first] and hit.tier is Tier.COLD and mem.tier_of(ids[first]) is Tier.HOT
    # A get is an explicit use: it promotes at once; another memory's one-off hit stays cold.
    mem.get(ids[fetched])
    assert mem.tier_of(ids[fetched]) is Tier.HOT
    assert mem.search(vector=vectors[second], k=1)[0].memory.id == ids[second]
    assert mem.tier_of(ids[second]) is Tier.COLD
    check_invariants(mem)

