"""Several processes writing to one PostgreSQL cold store: nothing lost or doubled, and each sees the others."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from tiered_memory import ConcurrentUpdateError, MemoryNotFoundError, StorageError, TieredMemory
from tiered_memory.quantization import make_quantizer
from tiered_memory.tiers.cold_ops import memory_row, text_key

from .conftest import DIM, unit_rows
from .test_cold_store_contract import memory

pytestmark = pytest.mark.postgres

pg_cold = pytest.importorskip("tiered_memory.tiers.pg_cold",
                              reason="psycopg 3 is not installed (pip install '.[postgres]')")


def engine(dsn: str, schema: str, cache: Path) -> TieredMemory:
    return TieredMemory(cache, cold=pg_cold.postgres_cold(dsn, schema=schema), encoder=None, dimension=DIM,
                        promote_in_background=False)


def write_concurrently(dsn: str, schema: str, cache: str, writer: int, start, rounds: int) -> list[str]:
    """One writer process: batches of adds to the shared namespace and its own, deleting some of
    its own shared adds as it goes; returns the ids it left in the shared namespace."""
    mem = engine(dsn, schema, Path(cache))
    try:
        vectors = unit_rows(rounds * 10, seed=100 + writer)
        kept: list[str] = []
        start.wait(timeout=60)
        for i in range(rounds):
            batch = vectors[i * 10:(i + 1) * 10]
            ids = mem.add_many([f"writer {writer} round {i} item {j}" for j in range(10)], vectors=batch,
                               namespace="shared")
            mem.add(f"writer {writer} own {i}", vector=batch[0], namespace=f"own{writer}")
            mem.delete(ids[0], namespace="shared")
            kept += ids[1:]
            mem.search(vector=batch[3], namespace="shared", k=5)  # a loaded, changing namespace
        return kept
    finally:
        mem.close()


def change_from_another_process(dsn: str, schema: str, cache: str, update_id: str, delete_id: str) -> str:
    mem = engine(dsn, schema, Path(cache))
    try:
        mem.update(update_id, text="changed by the other process", metadata={"by": "other"},
                   vector=unit_rows(1, seed=78)[0])
        mem.delete(delete_id)
        return mem.add("added by the other process", vector=unit_rows(1, seed=77)[0], namespace="shared")
    finally:
        mem.close()


def run_in_processes(target, argument_lists: list[tuple]) -> list:
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(argument_lists)) as pool:
        pending = [pool.apply_async(target, arguments) for arguments in argument_lists]
        return [result.get(timeout=600) for result in pending]


def server_counts(dsn: str, schema: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("tm_records", "tm_rows", "tm_codes", "tm_originals")}


def test_two_processes_writing_one_namespace_lose_and_double_nothing(pg_dsn: str, pg_schema: str,
                                                                     tmp_path: Path) -> None:
    rounds = 12
    with engine(pg_dsn, pg_schema, tmp_path / "setup") as mem:
        mem.add("made before the writers start", vector=unit_rows(1, seed=1)[0], namespace="shared")
    manager = multiprocessing.get_context("spawn").Manager()
    try:
        start = manager.Barrier(2)
        kept = run_in_processes(write_concurrently, [(pg_dsn, pg_schema, str(tmp_path / f"w{w}"), w, start, rounds)
                                                     for w in range(2)])
    finally:
        manager.shutdown()
    expected = set(kept[0]) | set(kept[1])
    assert len(expected) == len(kept[0]) + len(kept[1]) == 2 * rounds * 9
    with engine(pg_dsn, pg_schema, tmp_path / "check") as mem:
        shared = mem.ids("shared")
        assert len(shared) == len(set(shared)) == len(expected) + 1 and expected < set(shared)
        assert mem.count("shared") == len(shared)
        assert mem.count("own0") == mem.count("own1") == rounds
        assert mem.count() == len(shared) + 2 * rounds
        every = server_counts(pg_dsn, pg_schema)
        assert set(every.values()) == {mem.count()}  # each memory whole: record, row, code, original
        probe = unit_rows(rounds * 10, seed=101)[15]  # writer 1, round 1, item 5
        assert mem.search(vector=probe, namespace="shared", k=1)[0].memory.text == "writer 1 round 1 item 5"


def test_a_loaded_namespace_sees_another_process_changes(pg_dsn: str, pg_schema: str, tmp_path: Path) -> None:
    with engine(pg_dsn, pg_schema, tmp_path / "here") as mem:
        vectors = unit_rows(20, seed=3)
        ids = mem.add_many([f"note {i}" for i in range(20)], vectors=vectors, namespace="shared")
        for _ in range(2):
            assert mem.get(ids[1]).text == "note 1"  # hot now: its copy in RAM is what is to go stale
        assert mem.search(vector=vectors[2], namespace="shared", k=1)[0].memory.id == ids[2]

        [added] = run_in_processes(change_from_another_process,
                                   [(pg_dsn, pg_schema, str(tmp_path / "there"), ids[1], ids[2])])

        assert mem.get(ids[1]).text == "changed by the other process" and mem.get(ids[1]).metadata == {"by": "other"}
        with pytest.raises(MemoryNotFoundError):
            mem.get(ids[2])
        hits = mem.search(vector=unit_rows(1, seed=77)[0], namespace="shared", k=1)
        assert hits[0].memory.id == added
        assert ids[2] not in {h.memory.id for h in mem.search(vector=vectors[2], namespace="shared", k=20)}
        assert mem.count("shared") == 20 and len(mem.list_memories("shared")) == 20
        mem.update(added, metadata={"seen": True})  # the other process's memory, changed here
        mem.delete(ids[3])
    with engine(pg_dsn, pg_schema, tmp_path / "again") as mem:
        assert mem.get(added).metadata == {"seen": True} and mem.count("shared") == 19
        assert sorted(mem.ids("shared")) == sorted(set(ids) - {ids[2], ids[3]} | {added})


# -- the store's part: versions, guards ---------------------------------------------------------


@pytest.fixture
def two_stores(pg_dsn: str, pg_schema: str):
    stores = [pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema) for _ in range(2)]
    for store in stores:
        store.use_dimension(DIM)
    yield stores
    for store in stores:
        store.close()


def add(store, name: str, memories: list) -> int:
    vectors = unit_rows(len(memories), seed=len(memories))
    ns = store.namespace_id(name, create=True)
    store.write(store.memory_ops(ns, memories, store.quantizer.encode(vectors), vectors))
    return ns


def test_changed_elsewhere_counts_other_writers_only(two_stores) -> None:
    here, there = two_stores
    ns = add(here, "shared", [memory("a")])
    assert here.changed_elsewhere([ns]) == []  # never loaded here: nothing to refresh
    here.load_namespace(ns)
    add(here, "shared", [memory("b")])
    assert here.changed_elsewhere([ns]) == []  # its own write
    add(there, "shared", [memory("c")])
    assert here.changed_elsewhere([ns]) == [ns] and there.changed_elsewhere([ns]) == []
    add(here, "shared", [memory("d")])  # an own write after another's does not hide it
    assert here.changed_elsewhere([ns]) == [ns]
    assert here.load_namespace(ns).ids == ["a", "b", "c", "d"] and here.changed_elsewhere([ns]) == []
    other = add(there, "other", [memory("e", "other")])
    assert here.changed_elsewhere([ns, other]) == []  # other namespaces' writes do not count


def test_a_stale_copy_keeps_its_generation_for_the_graph_stamp(two_stores) -> None:
    here, there = two_stores
    ns = add(here, "shared", [memory("a")])
    here.load_namespace(ns)
    add(here, "shared", [memory("b")])
    assert here.namespace_info(ns) == there.namespace_info(ns) == ("shared", 2, 2)
    add(there, "shared", [memory("c")])
    # counts are the store's; the generation is that of the copy `here` holds, not yet reloaded
    assert here.namespace_info(ns) == ("shared", 3, 2) and there.namespace_info(ns) == ("shared", 3, 3)
    here.load_namespace(ns)
    assert here.namespace_info(ns) == ("shared", 3, 3)


def test_a_stale_statistics_flush_does_not_undo_an_update(two_stores) -> None:
    here, there = two_stores
    ns = add(here, "shared", [memory("a")])
    updated = memory("a").replace(version=2, importance=0.9, kind="preference")
    here.write([*here.record_ops([updated]), *here.row_ops(ns, ["a"], [memory_row(updated)])])
    stale = memory("a").replace(access_count=50)  # a flush of statistics gathered on version 1
    there.write(there.row_ops(ns, ["a"], [memory_row(stale)]))
    rows = here.load_namespace(ns)
    assert (rows.version, rows.kinds, rows.importance) == ([2], ["preference"], [0.9])
    same = memory("a").replace(version=2, importance=0.9, kind="preference", access_count=7)
    there.write(there.row_ops(ns, ["a"], [memory_row(same)]))  # statistics of the current version land
    assert here.load_namespace(ns).uses == [7]


def test_an_update_made_from_a_version_another_writer_moved_on_is_refused_whole(two_stores) -> None:
    here, there = two_stores
    ns = add(here, "shared", [memory("a")])
    first = memory("a").replace(version=2, text="updated here")
    change = [*here.record_ops([first]), *here.row_ops(ns, ["a"], [memory_row(first)])]
    here.write(change)
    here.write(change)  # the same write again (its commit was not acknowledged): changes nothing
    late = memory("a").replace(version=2, text="updated there from version 1")
    with pytest.raises(ConcurrentUpdateError, match=r"'a' is at version 2 .*would have made version 2.*retry"):
        there.write([*there.record_ops([late]), *there.row_ops(ns, ["a"], [memory_row(late)])])
    assert there.get("a").text == "updated here" and there.load_namespace(ns).version == [2]
    on_top = memory("a").replace(version=3, text="updated there from version 2")  # the engine's retry
    there.write([*there.record_ops([on_top]), *there.row_ops(ns, ["a"], [memory_row(on_top)])])
    assert here.get("a").text == "updated there from version 2" and here.load_namespace(ns).version == [3]


def test_a_text_claimed_by_another_writer_since_the_lookup_refuses_the_add(two_stores) -> None:
    here, there = two_stores
    vectors = unit_rows(1, seed=6)
    ns = here.namespace_id("shared", create=True)
    key = text_key(ns, "said twice")

    def add_claiming(store, memory_id: str, holder: str | None) -> None:
        store.write([*store.memory_ops(ns, [memory(memory_id, text="said twice")], store.quantizer.encode(vectors),
                                       vectors), store.text_claim_op(key, memory_id, holder)])

    add_claiming(here, "a", None)
    add_claiming(here, "a", None)  # the same write again (its commit was not acknowledged): changes nothing
    with pytest.raises(ConcurrentUpdateError, match=r"'b' as 'a' since this one looked it up.*add it again"):
        add_claiming(there, "b", None)  # looked it up before "a" was stored
    assert there.get("b") is None and there.find_texts([key]) == ["a"] and there.namespace_info(ns)[1] == 1
    there.write(there.delete_ops(ns, ["a"]))  # a holder that is no longer stored is no claim
    add_claiming(there, "c", None)
    add_claiming(here, "d", "c")  # replacing the holder it found (an expired memory, say)
    assert here.find_texts([key]) == ["d"] and here.namespace_ids(ns) == ["c", "d"]


def test_an_update_overtaken_by_a_delete_does_not_bring_the_memory_back(two_stores) -> None:
    here, there = two_stores
    ns = add(here, "shared", [memory("a"), memory("b")])
    there.write(there.delete_ops(ns, ["a"]))
    late = memory("a").replace(version=2, text="an update that lost the race")
    vector = unit_rows(1, seed=4)
    here.write([*here.record_ops([late]), *here.vector_ops(ns, late, here.quantizer.encode(vector)[0], vector[0]),
                here.count_op(ns, 0), *here.row_ops(ns, ["a"], [memory_row(late)])])
    assert here.get("a") is None and here.originals(["a"]) is None and here.namespace_ids(ns) == ["b"]
    assert here.namespace_info(ns)[1] == 1 and len(here) == 1
    assert np.array_equal(here.load_namespace(ns).codes.shape, (1, DIM))


def test_codes_of_a_replaced_quantizer_are_refused_and_the_new_one_loaded(two_stores, pg_dsn: str,
                                                                          pg_schema: str) -> None:
    here, there = two_stores
    vectors = unit_rows(40, seed=8)
    ns = here.namespace_id("shared", create=True)
    here.write(here.memory_ops(ns, [memory(f"m{i}") for i in range(40)], here.quantizer.encode(vectors), vectors))
    third = pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema)  # opened before the re-calibration too
    try:
        third.use_dimension(DIM)
        old, fitted = here.quantizer, make_quantizer("int8", DIM)
        fitted.fit(vectors)
        here.quantizer = fitted
        here.recode_all(fitted.encode, old.decode, then=[here.quantizer_op()])
        stale = there.quantizer
        late = unit_rows(1, seed=9)
        with pytest.raises(StorageError, match="re-calibrated"):
            there.write(there.memory_ops(ns, [memory("late")], stale.encode(late), late))
        assert there.get("late") is None and there.quantizer.state() == fitted.state()
        there.write(there.memory_ops(ns, [memory("late")], there.quantizer.encode(late), late))  # the retry
        rows = here.load_namespace(ns)
        assert len(rows) == 41
        np.testing.assert_array_equal(rows.codes[rows.ids.index("late")], fitted.encode(late)[0])
        refit = make_quantizer("int8", DIM)
        refit.fit(unit_rows(40, seed=10))
        with pytest.raises(StorageError, match="re-calibrated"):  # a re-calibration from stale ranges too
            third.recode_all(refit.encode, third.quantizer.decode, then=[third.meta_op("calibrated_on", 40)])
        assert third.meta_get("calibrated_on") is None and third.quantizer.state() == fitted.state()
        np.testing.assert_array_equal(here.load_namespace(ns).codes, rows.codes)
    finally:
        third.close()


def test_engines_opened_before_a_calibration_keep_the_codes_consistent(pg_dsn: str, pg_schema: str,
                                                                      tmp_path: Path) -> None:
    first = TieredMemory(tmp_path / "a", cold=pg_cold.postgres_cold(pg_dsn, schema=pg_schema), encoder=None,
                         dimension=DIM, promote_in_background=False, calibration_size=64)
    second = TieredMemory(tmp_path / "b", cold=pg_cold.postgres_cold(pg_dsn, schema=pg_schema), encoder=None,
                          dimension=DIM, promote_in_background=False, calibration_size=64)
    try:
        vectors = unit_rows(101, seed=12)
        ids = first.add_many([f"m{i}" for i in range(100)], vectors=vectors[:100], namespace="shared")
        assert first.cold.quantizer.calibrated and not second.cold.quantizer.calibrated
        with pytest.raises(StorageError, match="re-calibrated"):
            second.add("late", vector=vectors[100], namespace="shared")
        late = second.add("late", vector=vectors[100], namespace="shared")  # the retry, with the new ranges
        assert second.cold.quantizer.state() == first.cold.quantizer.state()
        checker = pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema)  # the engines' stores stay theirs
        try:
            checker.use_dimension(DIM)
            rows = checker.load_namespace(checker.namespace_id("shared"))
            assert sorted(rows.ids) == sorted([*ids, late])
            expected = checker.quantizer.encode(checker.originals(rows.ids))
            assert np.abs(rows.codes.astype(int) - expected).max() <= 1  # float16 originals vs the float32 added
        finally:
            checker.close()
        assert second.search(vector=vectors[7], namespace="shared", k=1)[0].memory.id == ids[7]
        assert first.search(vector=vectors[100], namespace="shared", k=1)[0].memory.id == late
    finally:
        first.close()
        second.close()


# -- change notices (LISTEN/NOTIFY) ---------------------------------------------------------------


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    """Poll until predicate() holds (True) or the timeout passes (False): notices arrive
    asynchronously; a generous bound, never a timing claim."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_a_store_hears_other_writers_changes_not_its_own(two_stores) -> None:
    import queue

    here, there = two_stores
    heard: queue.Queue = queue.Queue()
    here.listen(heard.put)
    ns = add(here, "shared", [memory("a")])  # its own: not heard
    other = add(there, "other", [memory("b", "other")])
    add(there, "shared", [memory("c")])
    assert heard.get(timeout=30) == [other]  # notices come in commit order: an own one would come first
    assert heard.get(timeout=30) == [ns]
    old, fitted = there.quantizer, make_quantizer("int8", DIM)
    fitted.fit(unit_rows(50, seed=3))
    there.quantizer = fitted
    there.recode_all(fitted.encode, old.decode, then=[there.quantizer_op()])
    assert heard.get(timeout=30) is None  # every namespace may have changed
    with pytest.raises(ValueError, match="already has a listener"):
        here.listen(heard.put)


def test_notices_bring_what_another_process_changed_up_to_date(pg_dsn: str, pg_schema: str, tmp_path: Path) -> None:
    def open_engine(cache: str) -> TieredMemory:
        return TieredMemory(tmp_path / cache, cold=pg_cold.postgres_cold(pg_dsn, schema=pg_schema), encoder=None,
                            dimension=DIM)  # the background thread on: it acts on notices

    here, there = open_engine("here"), open_engine("there")
    try:
        vectors = unit_rows(400, seed=5)
        ids = here.add_many([f"m{i}" for i in range(10)], vectors=vectors[:10], namespace="shared")
        here.add("elsewhere", vector=vectors[10], namespace="quiet")
        assert here.stats().loaded["loaded"] == 2
        before = here.stats().loaded
        shared = here.cold.namespace_id("shared")
        # A few changes: the background thread applies them to the loaded copy, in place.
        added = there.add("from there", vector=vectors[11], namespace="shared")
        there.update(ids[2], text="m2 changed there", vector=vectors[12])
        there.delete(ids[3])
        assert wait_for(lambda: here.cold.changed_elsewhere([shared]) == [])
        after = here.stats().loaded
        assert (after["loads"], after["unloads"], after["loaded"]) == (before["loads"], before["unloads"], 2)
        assert here.search(vector=vectors[11], namespace="shared", k=1)[0].memory.id == added
        assert here.search(vector=vectors[12], namespace="shared", k=1)[0].memory.text == "m2 changed there"
        assert ids[3] not in here.ids("shared") and here.count("shared") == 10
        assert here.get(ids[4]).text == "m4" and here.get(ids[2]).version == 2
        assert sorted(here.ids("shared")) == sorted(there.ids("shared"))
        # Many changes: the copy is unloaded instead (its next use loads it fresh). (Fewer than
        # calibration_size in all: a re-calibration would change every namespace, "quiet" too.)
        there.add_many([f"bulk {i}" for i in range(100)], vectors=vectors[100:200], namespace="shared")
        assert wait_for(lambda: here.stats().loaded["unloads"] == before["unloads"] + 1), here.stats().loaded
        assert here.stats().loaded["loaded"] == 1  # "quiet" stays loaded
        assert here.count("shared") == 110
    finally:
        here.close()
        there.close()


def test_memories_another_process_adds_with_an_expiry_expire_here_too(pg_dsn: str, pg_schema: str,
                                                                     tmp_path: Path, clock) -> None:
    from tiered_memory import MemoryExpiredError

    def open_engine(cache: str) -> TieredMemory:
        return TieredMemory(tmp_path / cache, cold=pg_cold.postgres_cold(pg_dsn, schema=pg_schema), encoder=None,
                            dimension=DIM, clock=clock, promote_in_background=False)

    here, there = open_engine("here"), open_engine("there")
    try:
        vectors = unit_rows(4, seed=8)
        here.add("lasting", vector=vectors[0], namespace="loaded")  # loaded here, no expiry known here
        brief = there.add("brief", vector=vectors[1], namespace="loaded", ttl_s=10)
        elsewhere = there.add("brief too", vector=vectors[2], namespace="never-loaded-here", ttl_s=10)
        assert here.get(brief).text == "brief" and here.record(elsewhere).text == "brief too"
        clock.tick(11)
        with pytest.raises(MemoryExpiredError):
            here.get(brief)
        assert brief not in [hit.memory.id for hit in here.search(vector=vectors[1], namespace="loaded", k=5)]
        assert here.record(elsewhere) is None
        assert here.count("loaded") == 1
    finally:
        here.close()
        there.close()
