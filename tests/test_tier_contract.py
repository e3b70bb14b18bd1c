"""One contract, three tiers: hot (an LRU in RAM), warm (hnswlib), cold (LMDB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tiered_memory.config import MemoryConfig
from tiered_memory.records import Memory, Tier
from tiered_memory.tiers.cold import ColdTier
from tiered_memory.tiers.hot import HotEntry, HotTier, entry_bytes
from tiered_memory.tiers.warm import WarmTier

from .conftest import DIM, unit_rows


def memory(i: int, namespace: str = "ns") -> Memory:
    return Memory(f"id{i}", namespace, f"text {i}", "fact", {"i": i}, 1.0, 1.0, 1.0, 0, 0.5, -1, Tier.WARM)


class TierContract:
    """Every tier stores (memory, vector) pairs by id and gives the vector back."""

    tolerance = 1e-6  # each subclass provides a `tier` fixture

    def test_put_then_vector(self, tier) -> None:
        vectors = unit_rows(5)
        for i in range(5):
            tier.put(memory(i), vectors[i])
        for i in range(5):
            assert np.allclose(tier.vector(f"id{i}"), vectors[i], atol=self.tolerance)

    def test_missing_is_none_and_not_contained(self, tier) -> None:
        assert tier.vector("nope") is None
        assert "nope" not in tier
        assert not tier.discard("nope")

    def test_len_ids_contains(self, tier) -> None:
        vectors = unit_rows(4)
        for i in range(4):
            tier.put(memory(i), vectors[i])
        assert len(tier) == 4
        assert sorted(tier.ids()) == [f"id{i}" for i in range(4)]
        assert "id2" in tier

    def test_discard_removes_only_that_entry(self, tier) -> None:
        vectors = unit_rows(3)
        for i in range(3):
            tier.put(memory(i), vectors[i])
        assert tier.discard("id1")
        assert "id1" not in tier and tier.vector("id1") is None
        assert len(tier) == 2
        assert np.allclose(tier.vector("id2"), vectors[2], atol=self.tolerance)

    def test_put_again_replaces(self, tier) -> None:
        a, b = unit_rows(2, seed=3)
        tier.put(memory(0), a)
        tier.put(memory(0), b)
        assert len(tier) == 1
        assert np.allclose(tier.vector("id0"), b, atol=self.tolerance)

    def test_nbytes_counts_what_is_stored(self, tier) -> None:
        empty = tier.nbytes()
        vectors = unit_rows(50)
        for i in range(50):
            tier.put(memory(i), vectors[i])
        assert tier.nbytes() > empty


class TestHotTier(TierContract):
    @pytest.fixture
    def tier(self, tmp_path: Path):
        return HotTier(capacity=100)

    def test_least_recently_used_leaves_first(self) -> None:
        evicted = []
        tier = HotTier(capacity=2, on_evict=lambda memory_id, entry: evicted.append(memory_id))
        vectors = unit_rows(3)
        tier.put(memory(0), vectors[0])
        tier.put(memory(1), vectors[1])
        tier.get("id0")  # id1 is now the least recently used
        tier.put(memory(2), vectors[2])
        assert evicted == ["id1"]
        assert sorted(tier.ids()) == ["id0", "id2"]

    def test_peek_does_not_refresh(self) -> None:
        evicted = []
        tier = HotTier(capacity=2, on_evict=lambda memory_id, entry: evicted.append(memory_id))
        vectors = unit_rows(3)
        tier.put(memory(0), vectors[0])
        tier.put(memory(1), vectors[1])
        tier.peek("id0")
        tier.put(memory(2), vectors[2])
        assert evicted == ["id0"]


    def test_byte_budget_evicts_least_recent_and_counts_bytes(self) -> None:
        evicted = []
        vectors = unit_rows(4)
        size = entry_bytes(HotEntry(memory(0), vectors[0]))
        tier = HotTier(capacity=100, on_evict=lambda memory_id, entry: evicted.append(memory_id),
                       budget_bytes=3 * size)
        for i in range(3):
            tier.put(memory(i), vectors[i])
        assert tier.nbytes() == 3 * size and not evicted
        tier.put(memory(1), vectors[1])  # a replacement: no eviction, same bytes, now most recent
        assert tier.nbytes() == 3 * size and not evicted
        tier.put(memory(3), vectors[3])  # over the budget: the least recent (id0) leaves
        assert evicted == ["id0"] and sorted(tier.ids()) == ["id1", "id2", "id3"]
        assert tier.nbytes() == 3 * size
        assert tier.discard("id2") and tier.nbytes() == 2 * size

    def test_entry_larger_than_the_budget_is_not_cached(self) -> None:
        vectors = unit_rows(2)
        size = entry_bytes(HotEntry(memory(0), vectors[0]))
        tier = HotTier(capacity=10, budget_bytes=size + 10)
        assert tier.put(memory(0), vectors[0])
        big = memory(1)._replace(text="x" * 100)
        assert not tier.put(big, vectors[1])
        assert "id1" not in tier and "id0" in tier and tier.nbytes() == size


class TestWarmTier(TierContract):
    @pytest.fixture
    def tier(self, tmp_path: Path):
        return WarmTier(DIM, capacity=1_000)

    def test_search_finds_the_nearest(self, tier) -> None:
        vectors = unit_rows(300)
        for i in range(300):
            tier.put(memory(i), vectors[i])
        ids, scores = tier.search("ns", vectors[17], 5)
        assert ids[0] == "id17"
        assert scores[0] == pytest.approx(1.0, abs=1e-5)
        assert list(scores) == sorted(scores, reverse=True)

    def test_namespaces_are_separate_graphs(self, tier) -> None:
        vectors = unit_rows(20)
        for i in range(10):
            tier.put(memory(i, "a"), vectors[i])
        for i in range(10, 20):
            tier.put(memory(i, "b"), vectors[i])
        ids, _ = tier.search("a", vectors[15], 10)
        assert all(int(memory_id[2:]) < 10 for memory_id in ids)
        assert tier.search("missing", vectors[0], 3) == ([], pytest.approx(np.zeros(0)))

    def test_deleted_nodes_become_tombstones_and_labels_stay_unique(self, tier) -> None:
        vectors = unit_rows(200, seed=5)
        for i in range(100):
            tier.put(memory(i), vectors[i])
        for i in range(50):
            tier.discard(f"id{i}")
        graph = tier.graphs["ns"]
        assert graph.tombstones == 50 and len(graph) == 50
        for i in range(100, 150):
            tier.put(memory(i), vectors[i])
        assert graph.index.element_count == 150  # tombstones stay as stepping stones
        labels = list(graph.label_of.values())
        assert len(labels) == len(set(labels)) == 100
        ids, _ = tier.search("ns", vectors[120], 1)
        assert ids == ["id120"]
        found, _ = tier.search("ns", vectors[10], 100)
        assert not any(int(memory_id[2:]) < 50 for memory_id in found)  # never a deleted one

    def test_grows_past_its_initial_size(self, tier) -> None:
        vectors = unit_rows(2_500, seed=9)
        for start in range(0, 2_500, 500):
            tier.put_many("ns", [f"id{i}" for i in range(start, start + 500)], vectors[start:start + 500])
        assert len(tier) == 2_500
        assert tier.graphs["ns"].index.get_max_elements() >= 2_500

    def test_save_and_load_round_trip(self, tier, tmp_path: Path) -> None:
        vectors = unit_rows(100)
        for i in range(100):
            tier.put(memory(i), vectors[i])
        tier.save_some(tmp_path / "warm", {"ns": 7}, "s", {"ns"})
        again = WarmTier(DIM, capacity=1_000)
        loaded = again.load_one(tmp_path / "warm", "ns")
        assert loaded is not None and loaded["generation"] == 7
        assert len(again) == 100
        assert again.search("ns", vectors[3], 1)[0] == ["id3"]

    def test_damaged_file_is_not_loaded(self, tier, tmp_path: Path) -> None:
        vectors = unit_rows(100)
        for i in range(100):
            tier.put(memory(i), vectors[i])
        tier.save_some(tmp_path / "warm", {"ns": 1}, "s", {"ns"})
        index_file = next((tmp_path / "warm").glob("*.hnsw"))
        data = bytearray(index_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        index_file.write_bytes(bytes(data))
        again = WarmTier(DIM, capacity=1_000)
        assert again.load_one(tmp_path / "warm", "ns") is None and "ns" not in again.graphs
        assert len(again) == 0


class TestColdTier(TierContract):
    tolerance = 2e-3  # float16 originals

    @pytest.fixture
    def tier(self, tmp_path: Path):
        cold = ColdTier(tmp_path / "cold", MemoryConfig())
        cold.use_dimension(DIM)
        yield cold
        cold.close()

    def test_records_round_trip(self, tier) -> None:
        tier.put(memory(3), unit_rows(1)[0])
        got = tier.get("id3")
        assert got == memory(3)

    def test_without_originals_the_decoded_code_is_returned(self, tmp_path: Path) -> None:
        cold = ColdTier(tmp_path / "c2", MemoryConfig(keep_originals="none"))
        cold.use_dimension(DIM)
        vector = unit_rows(1)[0]
        cold.put(memory(0), vector)
        # uncalibrated int8 covers +-5/sqrt(d) in 255 steps: error at most half a step inside it
        prior = 5 / np.sqrt(DIM)
        inside = np.abs(vector) <= prior
        assert np.abs(cold.vector("id0") - vector)[inside].max() <= prior / 255 + 1e-6
        cold.close()

    def test_map_grows_instead_of_failing(self, tmp_path: Path) -> None:
        config = MemoryConfig(map_size_bytes=64 * 1024)
        cold = ColdTier(tmp_path / "c3", config)
        cold.use_dimension(DIM)
        vectors = unit_rows(500)
        for i in range(500):
            cold.put(memory(i), vectors[i])
        assert len(cold) == 500
        assert cold.map_size > 64 * 1024
        cold.close()
