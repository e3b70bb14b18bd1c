"""Cold is the source of truth: reopen in a fresh process restores memories, statistics, tiers;
the warm index is saved beside LMDB and rebuilt when it is missing, stale or damaged."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tiered_memory import ConfigError, StoreLockedError, Tier, TieredMemory

from .conftest import DIM, unit_rows


def run_child(code: str, returncode: int = 0) -> dict:
    """Run code in a fresh interpreter; it prints one JSON line."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == returncode, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_reopen_in_a_new_process_restores_everything(open_store, tmp_path: Path, clock) -> None:
    mem = open_store(hot_capacity=5, warm_capacity=30)
    vectors = unit_rows(60)
    ids = mem.add_many([f"memory {i}" for i in range(60)], vectors=vectors, kind="fact",
                       metadata=[{"i": i} for i in range(60)], importance=np.linspace(0.1, 1, 60).tolist())
    for memory_id in ids[-3:]:
        mem.get(memory_id)
    mem.get(ids[-1])
    expected = {i: (mem.tier_of(i).value, mem.get(i).access_count) for i in ids}
    # the get above counted too: read state again without touching
    expected = {i: (mem.tier_of(i).value, mem.catalog.uses[mem.catalog.slot_of[i]]) for i in ids}
    mem.close()
    child = run_child(f"""
        import json, numpy as np
        from tiered_memory import TieredMemory
        mem = TieredMemory({str(tmp_path / "store")!r}, encoder=None, dimension={DIM})
        mem.preload(mem.namespaces())
        out = {{"count": len(mem), "state": {{}}, "texts": {{}}, "meta": {{}}}}
        for memory_id in mem.ids():
            slot = mem.catalog.slot_of[memory_id]
            out["state"][memory_id] = [mem.tier_of(memory_id).value, mem.catalog.uses[slot]]
        vectors = np.array({vectors.tolist()!r}, dtype=np.float32)
        hit = mem.search(vector=vectors[7], k=1)[0]
        out["nearest"] = [hit.memory.text, hit.memory.metadata]
        print(json.dumps(out))
    """)
    assert child["count"] == 60
    assert {k: tuple(v) for k, v in child["state"].items()} == expected
    assert child["nearest"] == ["memory 7", {"i": 7}]


def test_nothing_acknowledged_is_lost_without_close(tmp_path: Path) -> None:
    """A process that adds, updates and deletes then dies without close() loses nothing."""
    store = tmp_path / "store"
    run_child(f"""
        import os, numpy as np
        from tiered_memory import TieredMemory
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((20, {DIM})).astype(np.float32)
        mem = TieredMemory({str(store)!r}, encoder=None, dimension={DIM})
        ids = mem.add_many([f"m{{i}}" for i in range(19)], vectors=vectors[:19], ids=[f"id{{i}}" for i in range(19)])
        mem.add("last", vector=vectors[19], id="id19")
        mem.update("id3", text="updated", vector=vectors[3], metadata={{"u": 1}})
        mem.delete("id5")
        print('{{}}', flush=True)
        os._exit(0)  # no close(): no index save, no flush
    """)
    mem = TieredMemory(store, encoder=None, dimension=DIM)
    try:
        assert len(mem) == 19
        assert "id5" not in mem
        assert mem.get("id3").text == "updated" and mem.get("id3").metadata == {"u": 1}
        assert mem.get("id19").text == "last"
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((20, DIM)).astype(np.float32)
        assert mem.search(vector=vectors[19], k=1)[0].memory.id == "id19"
        assert all(hit.memory.id != "id5" for hit in mem.search(vector=vectors[5], k=19))
    finally:
        mem.close()


def test_clean_reopen_loads_the_saved_index(open_store, tmp_path: Path, caplog) -> None:
    mem = open_store(exact_search_max=16)
    mem.add_many([f"m{i}" for i in range(100)], vectors=unit_rows(100))
    mem.close()
    with caplog.at_level(logging.WARNING, logger="tiered_memory"):
        again = open_store(exact_search_max=16)
    assert not [r for r in caplog.records if "repaired" in r.getMessage() or "unusable" in r.getMessage()]
    assert len(again.warm) == 100


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage"])
def test_missing_or_damaged_index_is_rebuilt_from_cold(open_store, tmp_path: Path, caplog, damage: str) -> None:
    mem = open_store(exact_search_max=16)
    vectors = unit_rows(300)
    ids = mem.add_many([f"m{i}" for i in range(300)], vectors=vectors)
    mem.close()
    index_file = next((tmp_path / "store" / "warm").glob("*.hnsw"))
    if damage == "delete":
        index_file.unlink()
    elif damage == "truncate":
        index_file.write_bytes(index_file.read_bytes()[:1000])
    else:
        index_file.write_bytes(np.random.default_rng(0).bytes(index_file.stat().st_size))
    with caplog.at_level(logging.WARNING, logger="tiered_memory"):
        again = open_store(exact_search_max=16)
    assert any("rebuilt" in r.getMessage() or "repaired" in r.getMessage() for r in caplog.records)
    assert len(again.warm) == 300
    assert again.search(vector=vectors[123], k=1)[0].memory.id == ids[123]


def test_stale_index_is_repaired_vector_by_vector(open_store, tmp_path: Path) -> None:
    mem = open_store(exact_search_max=16)
    vectors = unit_rows(100)
    ids = mem.add_many([f"m{i}" for i in range(100)], vectors=vectors)
    mem.maintain()  # index saved at this generation
    warm_dir = tmp_path / "store" / "warm"
    saved = {p.name: p.read_bytes() for p in warm_dir.iterdir()}
    new = unit_rows(3, seed=42)
    mem.update(ids[0], vector=new[0])
    mem.delete(ids[1])
    added = mem.add("added later", vector=new[1])
    mem.close()
    for name, data in saved.items():  # put the older index back, as after a crash
        (warm_dir / name).write_bytes(data)
    again = open_store(exact_search_max=16)
    graph = again.warm.graphs["default"]
    assert ids[1] not in graph.label_of and added in graph.label_of
    assert again.search(vector=new[0], k=1)[0].memory.id == ids[0]
    assert again.search(vector=new[1], k=1)[0].memory.id == added
    assert len(again.warm) == 100


def test_second_writer_is_refused_and_lock_dies_with_process(open_store, tmp_path: Path) -> None:
    mem = open_store()
    mem.add("x", vector=unit_rows(1)[0])
    with pytest.raises(StoreLockedError, match="read_only=True"):
        TieredMemory(tmp_path / "store", encoder=None, dimension=DIM)
    # A killed writer's lock does not outlive it.
    store2 = tmp_path / "other"
    run_child(f"""
        import os
        from tiered_memory import TieredMemory
        mem = TieredMemory({str(store2)!r}, encoder=None, dimension={DIM})
        print('{{}}', flush=True)
        os._exit(9)
    """, returncode=9)
    TieredMemory(store2, encoder=None, dimension=DIM).close()


def test_read_only_opener_reads_alongside_the_writer(open_store, tmp_path: Path) -> None:
    """Another process may read the store while this one writes (LMDB allows it across processes)."""
    mem = open_store()
    vectors = unit_rows(20)
    ids = mem.add_many([f"m{i}" for i in range(20)], vectors=vectors)
    mem.maintain()
    child = run_child(f"""
        import json, numpy as np
        from tiered_memory import TieredMemory, InvalidInputError
        reader = TieredMemory({str(tmp_path / "store")!r}, encoder=None, dimension={DIM}, read_only=True)
        vectors = np.array({vectors.tolist()!r}, dtype=np.float32)
        out = {{"text": reader.get({ids[4]!r}).text, "nearest": reader.search(vector=vectors[4], k=1)[0].memory.id}}
        try:
            reader.add("nope", vector=vectors[0])
        except InvalidInputError as err:
            out["refused"] = str(err)
        reader.close()
        print(json.dumps(out))
    """)
    assert child["text"] == "m4" and child["nearest"] == ids[4]
    assert "read-only" in child["refused"]
    assert len(mem) == 20


def test_dimension_mismatch_at_open_is_refused(open_store, tmp_path: Path) -> None:
    open_store().close()
    with pytest.raises(ConfigError, match="32-d"):
        TieredMemory(tmp_path / "store", encoder=None, dimension=64)


def test_statistics_flushed_by_maintain_survive_a_kill(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_child(f"""
        import os, numpy as np
        from tiered_memory import TieredMemory
        vectors = np.eye({DIM}, dtype=np.float32)[:3]
        mem = TieredMemory({str(store)!r}, encoder=None, dimension={DIM})
        mem.add_many(["a", "b", "c"], vectors=vectors, ids=["a", "b", "c"])
        for _ in range(4):
            mem.get("b")
        mem.wait_idle()  # the background promoter has moved "b" to hot
        mem.maintain()
        print('{{}}', flush=True)
        os._exit(0)
    """)
    mem = TieredMemory(store, encoder=None, dimension=DIM)
    try:
        assert mem.tier_of("b") is Tier.COLD  # nothing is loaded at open
        mem.preload("default")
        assert mem.tier_of("b") is Tier.HOT
        assert mem.catalog.uses[mem.catalog.slot_of["b"]] == 4
    finally:
        mem.close()
