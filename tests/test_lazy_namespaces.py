"""Namespaces load on demand and unload under the warm budget; the cold tier costs no RAM."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import lmdb
import msgpack
import numpy as np
import pytest

from tiered_memory import MemoryConfig, StorageError, StoreClosedError, TieredMemory
from tiered_memory.quantization import make_quantizer
from tiered_memory.records import Memory, Tier, pack_record
from tiered_memory.tiering.manager import _REFILL_HOT_AT_LOAD
from tiered_memory.tiers.warm import Graph

from .conftest import DIM, unit_rows
from .invariants import check_invariants


def _fill(mem: TieredMemory, namespaces: int, per: int, seed: int = 0) -> dict[str, tuple[list[str], np.ndarray]]:
    out = {}
    for n in range(namespaces):
        vectors = unit_rows(per, seed=seed + n)
        out[f"user{n}"] = (mem.add_many([f"u{n} m{i}" for i in range(per)], namespace=f"user{n}",
                                        vectors=vectors), vectors)
    return out


def test_open_loads_nothing_and_first_use_loads_one_namespace(open_store, tmp_path: Path) -> None:
    mem = open_store()
    data = _fill(mem, 5, 40)
    mem.close()
    mem = open_store(preload=False)
    assert len(mem.registry) == 0 and len(mem.catalog) == 0 and not mem.warm.graphs
    assert len(mem) == 200 and mem.count("user3") == 40 and sorted(mem.namespaces()) == sorted(data)
    assert sorted(mem.ids("user2")) == sorted(data["user2"][0])  # read from cold keys: nothing loads
    assert len(mem.registry) == 0
    ids, vectors = data["user3"]
    assert mem.search(vector=vectors[5], namespace="user3", k=1)[0].memory.id == ids[5]
    assert set(mem.registry.loaded) == {"user3"} and len(mem.catalog) == 40
    loaded = mem.stats().loaded
    assert loaded["loaded"] == 1 and loaded["loads"] == 1 and loaded["bytes"] > 0
    other = data["user1"][0][7]
    assert mem.tier_of(other) is Tier.COLD  # its namespace is not loaded
    assert mem.get(other).id == other  # a get loads its namespace
    assert set(mem.registry.loaded) == {"user1", "user3"}
    check_invariants(mem)


def test_a_tiny_budget_unloads_the_least_used_and_everything_stays_findable(open_store) -> None:
    # Room for about three 60-memory namespaces of 32-d codes (~290 B each).
    mem = open_store(warm_budget_bytes=60_000, preload=False)
    data = _fill(mem, 8, 60)
    mem.wait_idle()
    for round_ in range(3):
        for name, (ids, vectors) in data.items():
            i = (round_ * 7) % len(ids)
            assert mem.search(vector=vectors[i], namespace=name, k=1)[0].memory.id == ids[i]
            mem.get(ids[i])
            mem.wait_idle()
            assert mem.registry.nbytes <= mem.config.warm_budget_bytes + 60 * (DIM + 300)
    stats = mem.stats().loaded
    assert stats["unloads"] > 0 and stats["loads"] > len(data) and stats["loaded"] < len(data)
    check_invariants(mem)
    # Statistics went to cold with each unload: the counts of every memory read are all there.
    for name, (ids, _) in data.items():
        mem.preload(name)
        assert mem.catalog.uses[mem.catalog.slot_of[ids[0]]] >= 1, name


def test_unload_and_reload_keep_statistics_graph_and_hot_records(open_store) -> None:
    mem = open_store(exact_search_max=16, preload=False)
    data = _fill(mem, 2, 100)
    ids, vectors = data["user0"]
    for _ in range(3):
        mem.get(ids[1])
    assert mem.tier_of(ids[1]) is Tier.HOT
    with mem._rw.write:
        mem._tiers.unload("user0")
    assert "user0" not in mem.registry and ids[1] not in set(mem.hot.ids()) and "user0" not in mem.warm.graphs
    mem.preload("user0")
    assert mem.tier_of(ids[1]) is Tier.HOT and ids[1] in set(mem.hot.ids())
    assert mem.catalog.uses[mem.catalog.slot_of[ids[1]]] == 3
    assert len(mem.warm.graphs["user0"]) == 100
    assert mem.search(vector=vectors[42], namespace="user0", k=1)[0].memory.id == ids[42]
    check_invariants(mem)


def test_a_reload_refills_the_hot_tier_with_the_most_recently_read_only(open_store, clock) -> None:
    # The refill is bounded because it runs under the write lock a search arriving mid-load waits for.
    mem = open_store(preload=False)
    ids, vectors = _fill(mem, 1, 120)["user0"]
    read = _REFILL_HOT_AT_LOAD + 20
    for memory_id in ids[:read]:
        clock.tick(1.0)  # distinct access times: the order decides what is refilled
        mem.get(memory_id)
    assert all(mem.tier_of(memory_id) is Tier.HOT for memory_id in ids[:read])
    with mem._rw.write:
        mem._tiers.unload("user0")
    mem.preload("user0")
    assert set(mem.hot.ids()) == set(ids[read - _REFILL_HOT_AT_LOAD:read])
    assert all(mem.tier_of(memory_id) is Tier.WARM for memory_id in ids[:read - _REFILL_HOT_AT_LOAD])
    assert mem.catalog.uses[mem.catalog.slot_of[ids[0]]] == 1  # its statistics survived the round trip
    mem.get(ids[0])  # one left warm comes back to hot when read again
    assert mem.tier_of(ids[0]) is Tier.HOT
    assert mem.search(vector=vectors[3], namespace="user0", k=1)[0].memory.id == ids[3]
    check_invariants(mem)


def test_a_failed_graph_insert_leaves_the_memory_findable_in_cold(open_store, monkeypatch) -> None:
    mem = open_store(exact_search_max=16)
    vectors = unit_rows(60, seed=3)
    ids = mem.add_many([f"m{i}" for i in range(50)], vectors=vectors[:50])

    def broken(self, memory_ids, vectors):
        raise RuntimeError("simulated hnswlib failure")

    monkeypatch.setattr(Graph, "put_many", broken)
    added = mem.add("after", vector=vectors[55])
    monkeypatch.undo()
    assert mem.tier_of(added) is Tier.COLD
    assert mem.search(vector=vectors[55], k=1)[0].memory.id == added
    assert mem.search(vector=vectors[3], k=1)[0].memory.id == ids[3]
    check_invariants(mem)


def test_a_failed_cold_write_stores_nothing_in_ram_or_on_disk(open_store, monkeypatch) -> None:
    mem = open_store()
    vectors = unit_rows(20, seed=4)
    mem.add_many([f"m{i}" for i in range(10)], vectors=vectors[:10])
    before = (len(mem), len(mem.catalog), sorted(mem.hot.ids()), mem.cold.meta_get("generation"))

    def failing(ops):
        raise StorageError("simulated full disk; nothing of this call was stored")

    monkeypatch.setattr(mem.cold, "write", failing)
    with pytest.raises(StorageError):
        mem.add_many([f"n{i}" for i in range(10)], vectors=vectors[10:])
    monkeypatch.undo()
    assert (len(mem), len(mem.catalog), sorted(mem.hot.ids()), mem.cold.meta_get("generation")) == before
    check_invariants(mem)


def test_writers_in_a_loop_starve_neither_searches_nor_close(tmp_path: Path) -> None:
    mem = TieredMemory(tmp_path / "s", encoder=None, dimension=DIM, durability="async")
    vectors = unit_rows(200, seed=5)
    ids = mem.add_many([f"m{i}" for i in range(100)], vectors=vectors[:100])
    stop = threading.Event()
    writes = [0, 0]
    refused = []

    def writer(index: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                mem.update(ids[(i + index) % 100], importance=(i % 10) / 10)
            except StoreClosedError:
                refused.append(index)
                return
            writes[index] += 1
            i += 1

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    try:
        # Searches are served while writers loop: each waits at most for the writers queued before it.
        started = time.monotonic()
        for i in range(50):
            assert mem.search(vector=vectors[i], k=1)[0].memory.id == ids[i]
        searches_s = time.monotonic() - started
        started = time.monotonic()
        mem.close()
        close_s = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert all(writes) and sorted(refused) == [0, 1]  # both kept writing, then were refused at close
    # Bounds far above a fair lock's cost (a search here takes < 1 ms, a write a few ms), far below
    # starvation: the writer-preferring lock kept close() waiting as long as writers wrote.
    assert searches_s < 20 and close_s < 20


def _write_schema_2_store(path: Path, memories: list[Memory], vectors: np.ndarray) -> None:
    """A store as tiered_memory wrote it before lazy namespaces: codes keyed by memory id, no rows."""
    env = lmdb.open(str(path / "cold"), map_size=2**26, subdir=True, max_dbs=8)
    dbs = {name: env.open_db(name.encode()) for name in ("records", "codes", "originals", "meta", "extra")}
    quantizer = make_quantizer("int8", DIM)
    quantizer.fit(vectors)
    codes = quantizer.encode(vectors)
    with env.begin(write=True) as txn:
        for memory, code, vector in zip(memories, codes, vectors):
            txn.put(memory.id.encode(), pack_record(memory), db=dbs["records"])
            txn.put(memory.id.encode(), code.tobytes(), db=dbs["codes"])
            txn.put(memory.id.encode(), vector.astype(np.float16).tobytes(), db=dbs["originals"])
        meta = {"schema_version": 2, "dimension": DIM, "encoder": None, "quantizer": quantizer.state(),
                "generation": 1, "topics/a": {"centroids": b"", "shape": [0, DIM], "counts": b"", "fitted_on": 0}}
        for name, value in meta.items():
            txn.put(name.encode(), msgpack.packb(value, use_bin_type=True), db=dbs["meta"])
    env.close()


def test_a_schema_2_store_is_migrated_once_and_keeps_every_memory(tmp_path: Path) -> None:
    path = tmp_path / "old"
    (path / "cold").mkdir(parents=True)
    vectors = unit_rows(30, seed=6)
    memories = [Memory(f"id{i:02d}", "a" if i < 20 else "b", f"text {i}", "fact", {"i": i}, 1.0, 1.0, 2.0, i, 0.5,
                       -1, Tier.WARM if i % 3 else Tier.COLD, 1) for i in range(30)]
    _write_schema_2_store(path, memories, vectors)
    with pytest.raises(Exception, match="open it once without read_only"):
        TieredMemory(path, encoder=None, dimension=DIM, read_only=True)
    with TieredMemory(path, encoder=None, dimension=DIM) as mem:
        assert mem.cold.schema() == 3 and len(mem) == 30 and mem.count("a") == 20 and mem.count("b") == 10
        for i in (0, 7, 19, 25):
            hit = mem.search(vector=vectors[i], namespace=memories[i].namespace, k=1)[0]
            assert hit.memory.id == memories[i].id and hit.memory.metadata == {"i": i}
        assert mem.get("id11").access_count == 12  # statistics came across (11 + this get)
        check_invariants(mem)
    with TieredMemory(path, encoder=None, dimension=DIM, read_only=True) as reader:
        assert reader.get("id29").text == "text 29"


def test_budgets_are_validated() -> None:
    with pytest.raises(Exception, match="warm_budget_bytes"):
        MemoryConfig(warm_budget_bytes=0)
    with pytest.raises(Exception, match="hot_budget_bytes"):
        MemoryConfig(hot_budget_bytes=-1)


def test_a_load_runs_with_the_garbage_collector_paused_and_restores_it(open_store, monkeypatch) -> None:
    import gc

    mem = open_store(preload=False)
    ids = mem.add_many([f"m{i}" for i in range(30)], vectors=unit_rows(30), namespace="user0")
    with mem._rw.write:
        mem._tiers.unload("user0")
    seen = []
    real = type(mem.cold).load_namespace

    def watched(cold, ns_id, count_hint=0):
        seen.append(gc.isenabled())
        return real(cold, ns_id, count_hint)

    monkeypatch.setattr(type(mem.cold), "load_namespace", watched)
    assert gc.isenabled()
    assert mem.get(ids[3]).id == ids[3]  # loads user0
    assert seen == [False] and gc.isenabled()
    # A caller that runs with the collector off keeps it off.
    with mem._rw.write:
        mem._tiers.unload("user0")
    gc.disable()
    try:
        mem.preload("user0")
        assert seen == [False, False] and not gc.isenabled()
    finally:
        gc.enable()
