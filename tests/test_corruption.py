"""Damaged files, stale state, a second process, and running out of room.

Complements tests/test_persistence.py (which deletes, truncates and garbles a warm index file,
restores a stale one, and refuses a second writer): here the sidecar files, leftovers of a save
that was cut short, graphs built with other settings, stale LOCK and LMDB reader slots, damaged
cold records, a reader process alongside a growing writer, a full map and a full disk.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import msgpack
import numpy as np
import pytest

from tiered_memory import MemoryNotFoundError, StorageError, TieredMemory, TieredMemoryError
from tiered_memory.errors import SchemaVersionError
from tiered_memory.records import RECORD_SCHEMA, Memory, Tier, pack_record, unpack_record
from tiered_memory.tiers.cold import row_key

from .conftest import DIM, unit_rows
from .invariants import check_invariants

ROOT = Path(__file__).resolve().parent.parent
N = 200


@pytest.fixture
def saved(open_store, tmp_path: Path):
    """A closed store of N memories in two namespaces, each with a saved warm graph."""
    mem = open_store(exact_search_max=0)
    vectors = unit_rows(N, seed=5)
    ids = mem.add_many([f"a{i}" for i in range(N // 2)], vectors=vectors[: N // 2], namespace="a")
    ids += mem.add_many([f"b{i}" for i in range(N // 2)], vectors=vectors[N // 2:], namespace="b")
    mem.close()
    return tmp_path / "store", ids, vectors


def _all_found(mem: TieredMemory, ids: list[str], vectors: np.ndarray) -> None:
    for i in range(0, len(ids), 17):
        namespace = "a" if i < len(ids) // 2 else "b"
        assert mem.search(vector=vectors[i], namespace=namespace, k=1)[0].memory.id == ids[i]
    check_invariants(mem)


def _repairs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rebuilt" in r.getMessage() or "repaired" in r.getMessage()]


# -- warm index files ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "not msgpack of a dict", "deleted"])
def test_damaged_sidecar_is_rebuilt_from_cold(saved, open_store, caplog, damage: str) -> None:
    path, ids, vectors = saved
    meta = sorted((path / "warm").glob("*.meta"))[0]
    data = meta.read_bytes()
    damaged = {"garbage": np.random.default_rng(1).bytes(len(data)), "truncated": data[: len(data) // 2],
               "empty": b"", "not msgpack of a dict": b"\x93\x01\x02\x03", "deleted": None}[damage]
    if damaged is None:
        meta.unlink()
    else:
        meta.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="tiered_memory"):
        mem = open_store(path, exact_search_max=0)
    assert _repairs(caplog)
    _all_found(mem, ids, vectors)


def _rewrite_sidecar(meta_path: Path, change, recompute: bool = True) -> None:
    """Change a sidecar's fields; with `recompute`, fix its checksum as a careful attacker would,
    so that only the field checks can catch the damage."""
    import tiered_memory.tiers.warm as warm_module

    meta = msgpack.unpackb(meta_path.read_bytes(), raw=False, strict_map_key=False)
    change(meta)
    if recompute and "meta_crc32" in meta and all(name in meta for name, _ in warm_module._META_FIELDS):
        meta["meta_crc32"] = warm_module._meta_checksum(meta)
    meta_path.write_bytes(msgpack.packb(meta, use_bin_type=True))


def _drop(name: str):
    return lambda meta: meta.pop(name)


def _set(name: str, value):
    return lambda meta: meta.__setitem__(name, value(meta) if callable(value) else value)


def _label_not_in_the_file(meta: dict) -> None:
    """A label below next_label (so well-formed) that the index file never held."""
    meta["next_label"] += 100
    meta["labels"][-1] = meta["next_label"] - 1


_SIDECAR_DAMAGE = {
    "missing ids": (_drop("ids"), "'ids' is missing"),
    "missing labels": (_drop("labels"), "'labels' is missing"),
    "missing max_elements": (_drop("max_elements"), "'max_elements' is missing"),
    "missing namespace": (_drop("namespace"), "'namespace' is missing"),
    "missing own checksum": (_drop("meta_crc32"), "own checksum"),
    "labels a str": (_set("labels", "0123"), "'labels' is a str"),
    "ids a dict": (_set("ids", lambda m: dict.fromkeys(m["ids"])), "'ids' is a dict"),
    "max_elements a str": (_set("max_elements", "big"), "'max_elements' is a str"),
    "next_label a float": (_set("next_label", lambda m: float(m["next_label"])), "'next_label' is a float"),
    "sealed a str": (_set("sealed", "no"), "'sealed' is a str"),
    "namespace an int": (_set("namespace", 5), "'namespace' is a int"),
    "a label not an int": (_set("labels", lambda m: ["0", *m["labels"][1:]]), "not an int"),
    "an id not a str": (_set("ids", lambda m: [7, *m["ids"][1:]]), "not a str"),
    "one id fewer": (_set("ids", lambda m: m["ids"][:-1]), "labels for"),
    "a label twice": (_set("labels", lambda m: [m["labels"][1], *m["labels"][1:]]), "listed twice"),
    "an id twice": (_set("ids", lambda m: [m["ids"][1], *m["ids"][1:]]), "listed twice"),
    "a label past next_label": (_set("next_label", lambda m: max(m["labels"])), "outside"),
    "a negative label": (_set("labels", lambda m: [-1, *m["labels"][1:]]), "outside"),
    "an empty id": (_set("ids", lambda m: ["", *m["ids"][1:]]), "empty"),
    "a label not in the file": (_label_not_in_the_file, "not in the index"),
    "max_elements huge": (_set("max_elements", 10**9), "max_elements=1000000000 is out of range"),
    "max_elements below the labels": (_set("max_elements", 3), "max_elements=3 is out of range"),
    "a sidecar of another namespace": (_set("namespace", "b-but-named-a"), "named otherwise"),
    "version 1 (no own checksum)": (_set("version", 1), "file version 1"),
}


@pytest.mark.parametrize("damage", sorted(_SIDECAR_DAMAGE))
def test_a_well_formed_but_damaged_sidecar_is_rebuilt(saved, open_store, caplog, damage: str) -> None:
    """Each field of a sidecar is checked before use, even when its checksum was made to match:
    the graph is rebuilt from cold, never a raw KeyError/TypeError or a huge allocation."""
    path, ids, vectors = saved
    meta = sorted((path / "warm").glob("*.meta"))[0]
    change, why = _SIDECAR_DAMAGE[damage]
    _rewrite_sidecar(meta, change)
    with caplog.at_level(logging.WARNING, logger="tiered_memory"):
        mem = open_store(path, exact_search_max=0)
    assert any(why in message for message in _repairs(caplog)), _repairs(caplog)
    _all_found(mem, ids, vectors)
    mem.close()  # the rebuilt graph is saved again with a valid sidecar
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tiered_memory"):
        mem = open_store(path, exact_search_max=0)
    assert not _repairs(caplog)
    _all_found(mem, ids, vectors)


def test_a_changed_field_fails_the_sidecars_own_checksum(saved, open_store, caplog) -> None:
    path, ids, vectors = saved
    meta = sorted((path / "warm").glob("*.meta"))[0]
    _rewrite_sidecar(meta, lambda m: m["ids"].reverse(), recompute=False)  # every field well-formed
    with caplog.at_level(logging.WARNING, logger="tiered_memory"):
        mem = open_store(path, exact_search_max=0)
    assert any("own checksum" in message for message in _repairs(caplog))
    _all_found(mem, ids, vectors)


@pytest.mark.parametrize("read", ["get_items", "index state"])
def test_graph_verify_finds_ids_a_sidecar_swapped(saved, monkeypatch, read: str) -> None:
    """Two ids swapped in a sidecar whose checksum was recomputed pass every field check; the
    graph's vectors tell them apart (the engine, which holds the true vectors, calls verify)."""
    import tiered_memory.tiers.warm as warm_module
    from tiered_memory.tiers.warm import WarmTier

    monkeypatch.setattr(warm_module, "_STATE_READ_MIN", 10**9 if read == "get_items" else 0)
    path, _, _ = saved
    intact = WarmTier(DIM, capacity=10_000)
    namespace = "a"  # the saved store's namespaces are "a" and "b"
    assert intact.load_one(path / "warm", namespace) is not None
    graph = intact.graphs[namespace]
    ids = sorted(graph.label_of)
    truth = graph.vectors(ids)
    assert graph.verify(ids, truth) == []
    meta_path = path / "warm" / f"{WarmTier.file_key(namespace)}.meta"

    def swap(meta: dict) -> None:
        i, j = meta["ids"].index(ids[3]), meta["ids"].index(ids[8])
        meta["ids"][i], meta["ids"][j] = meta["ids"][j], meta["ids"][i]

    _rewrite_sidecar(meta_path, swap)
    damaged = WarmTier(DIM, capacity=10_000)
    assert damaged.load_one(path / "warm", namespace) is not None  # well-formed: loaded
    swapped = damaged.graphs[namespace]
    assert swapped.verify(ids, truth) == [ids[3], ids[8]]
    assert swapped.search(truth[3], 1)[0] == [ids[8]]  # what a search would serve without the check
    swapped.discard(ids[5])
    assert swapped.verify(ids, truth) == [ids[3], ids[5], ids[8]]  # no longer in the graph
    # An element deleted in hnswlib that the sidecar still lists cannot be served either.
    swapped.index.mark_deleted(swapped.label_of[ids[9]])
    assert swapped.verify(ids, truth) == [ids[3], ids[5], ids[8], ids[9]]


def test_leftovers_of_an_interrupted_save_are_harmless(saved, open_store, caplog) -> None:
    """A kill between writing a temp file and renaming it leaves *.tmp files behind."""
    path, ids, vectors = saved
    warm = path / "warm"
    for original in list(warm.iterdir()):
        (warm / (original.name + ".tmp")).write_bytes(original.read_bytes()[:100])
    (warm / "0123456789abcdef0123.hnsw.tmp").write_bytes(b"half of a graph")
    with caplog.at_level(logging.WARNING, logger="tiered_memory"):
        mem = open_store(path, exact_search_max=0)
    assert not _repairs(caplog)  # the real files are intact: nothing to rebuild
    _all_found(mem, ids, vectors)
    mem.add("after", vector=unit_rows(1, seed=9)[0], namespace="a")
    mem.maintain()  # the next save replaces the temp files of live graphs
    mem.close()
    mem = open_store(path, exact_search_max=0)
    _all_found(mem, ids, vectors)


def test_graph_files_swapped_between_namespaces_are_rebuilt(saved, open_store, caplog) -> None:
    path, ids, vectors = saved
    first, second = sorted((path / "warm").glob("*.hnsw"))
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)
    with caplog.at_level(logging.WARNING, logger="tiered_memory"):
        mem = open_store(path, exact_search_max=0)
    assert len(_repairs(caplog)) >= 2
    _all_found(mem, ids, vectors)


def test_graph_saved_with_other_settings_is_rebuilt(saved, open_store, caplog) -> None:
    path, ids, vectors = saved
    mem = open_store(path, exact_search_max=0, hnsw_m=8)  # rebuilt with M=8, saved at close
    mem.close()
    with caplog.at_level(logging.WARNING, logger="tiered_memory"):
        mem = open_store(path, exact_search_max=0, hnsw_m=16)
    assert any("other settings" in message for message in _repairs(caplog))
    _all_found(mem, ids, vectors)


def test_warm_directory_replaced_by_a_file(saved, open_store) -> None:
    path, ids, vectors = saved
    shutil.rmtree(path / "warm")
    (path / "warm").write_bytes(b"not a directory")
    mem = open_store(path, exact_search_max=0)
    _all_found(mem, ids, vectors)  # the graphs were rebuilt from cold
    with pytest.raises(StorageError, match="warm index"):
        mem.maintain()  # nowhere to save them: a clear error, and every memory is still in cold
    (path / "warm").unlink()
    mem.maintain()
    mem.close()
    _all_found(open_store(path, exact_search_max=0), ids, vectors)


# -- stale state after a crash --------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"not a pid", b"1", str(2**22 + 1).encode()])
def test_a_stale_lock_file_never_blocks_reopening(saved, open_store, content: bytes) -> None:
    path, ids, vectors = saved
    (path / "LOCK").write_bytes(content)  # what a dead writer leaves: flock, not the content, decides
    _all_found(open_store(path, exact_search_max=0), ids, vectors)


def _child(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_a_reader_killed_inside_a_transaction_leaves_no_stale_slot(saved, open_store) -> None:
    path, ids, vectors = saved
    result = _child(f"""
        import os, signal
        from tiered_memory import TieredMemory
        reader = TieredMemory({str(path)!r}, encoder=None, dimension={DIM}, read_only=True)
        txn = reader.cold.env.begin()  # a read in progress
        txn.get(b"anything")
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert result.returncode == -signal.SIGKILL, result.stderr
    dead = result.stdout.strip()
    mem = open_store(path, exact_search_max=0)  # opening checks the reader table
    assert f" {dead} " not in f" {mem.cold.env.readers()} "
    mem.add_many([f"x{i}" for i in range(50)], vectors=unit_rows(50, seed=8), namespace="a")
    _all_found(mem, ids, vectors)


# -- damaged cold tier -----------------------------------------------------------------------------


def _put_raw(path: Path, database: bytes, key: bytes, value: bytes | None) -> None:
    """Write (None: delete) one value behind the store's back."""
    env = lmdb.open(str(path / "cold"), max_dbs=8)
    try:
        handle = env.open_db(database)  # before begin(): open_db takes LMDB's write lock itself
        with env.begin(write=True) as txn:
            if value is None:
                txn.delete(key, db=handle)
            else:
                txn.put(key, value, db=handle)
    finally:
        env.close()


def test_a_garbage_lmdb_file_is_a_clear_error(saved) -> None:
    path, _, _ = saved
    (path / "cold" / "data.mdb").write_bytes(np.random.default_rng(2).bytes(64 * 1024))
    with pytest.raises(StorageError, match="cannot open the cold tier"):
        TieredMemory(path, encoder=None, dimension=DIM)
    TieredMemory(path.parent / "elsewhere", encoder=None, dimension=DIM).close()  # the lock was released


@pytest.mark.parametrize("database, key", [(b"records", "record"), (b"meta", "quantizer")])
def test_a_damaged_value_in_cold_is_a_storage_error(saved, database: bytes, key: str) -> None:
    path, ids, _ = saved
    _put_raw(path, database, (ids[3] if key == "record" else key).encode(), b"\xc1 not msgpack")
    if key == "quantizer":  # store-level state: the store cannot open without it
        with pytest.raises(StorageError, match="damaged"):
            TieredMemory(path, encoder=None, dimension=DIM)
        return
    # A damaged record is reported by id when it is read; the rest of the store stays usable.
    with TieredMemory(path, encoder=None, dimension=DIM) as mem:
        with pytest.raises(StorageError, match="damaged"):
            mem.get(ids[3])
        assert mem.get(ids[4]).id == ids[4]


def test_a_code_of_the_wrong_length_is_reported_as_damage(saved) -> None:
    path, ids, _ = saved
    with TieredMemory(path, encoder=None, dimension=DIM) as mem:
        ns_id = mem.cold.namespace_id("a")
    _put_raw(path, b"nscodes", row_key(ns_id, ids[3]), b"\x01\x02")
    with TieredMemory(path, encoder=None, dimension=DIM) as mem:
        with pytest.raises(StorageError, match="damaged"):
            mem.preload("a")  # loading the namespace reads its codes
        assert mem.search(vector=np.ones(DIM, dtype=np.float32), namespace="b", k=1)


_GOOD_ROW = ["note", 0.5, 1.0, 1.0, 1.0, 0, -1, 0, 1, False]


@pytest.mark.parametrize("damage", [
    "not msgpack", "not a list", "nine fields", "empty kind", "bool importance", "nan created", "inf accessed",
    "str uses", "negative uses", "tier 3", "version 0", "int sensitive", "nan expiry", "no code",
    "list kind", "map kind",
])
def test_a_damaged_catalog_row_is_reported_by_id_when_its_namespace_loads(saved, damage: str) -> None:
    # Rows are checked a column at a time; a failure goes back to the row-by-row check, which
    # must name the row whatever the damage.
    path, ids, _ = saved
    with TieredMemory(path, encoder=None, dimension=DIM) as mem:
        ns_id = mem.cold.namespace_id("a")
    row = list(_GOOD_ROW)
    change = {"nine fields": (slice(9, 10), []), "empty kind": (0, ""), "bool importance": (1, True),
              "nan created": (2, math.nan), "inf accessed": (4, math.inf), "str uses": (5, "1"),
              "negative uses": (5, -1), "tier 3": (7, 3), "version 0": (8, 0), "int sensitive": (9, 1),
              "nan expiry": (slice(10, 11), [math.nan]),
              # unhashable: a check over the set of a column's values must not raise TypeError
              "list kind": (0, ["note"]), "map kind": (0, {"k": 1})}.get(damage)
    if change is not None:
        row[change[0]] = change[1]
    data = {"not msgpack": b"\xc1", "not a list": msgpack.packb({"kind": "note"})}.get(damage, msgpack.packb(row))
    if damage == "no code":
        _put_raw(path, b"nscodes", row_key(ns_id, ids[3]), None)
    else:
        _put_raw(path, b"rows", row_key(ns_id, ids[3]), data)
    with TieredMemory(path, encoder=None, dimension=DIM) as mem:
        with pytest.raises(StorageError, match=ids[3]):
            mem.preload("a")
        assert mem.search(vector=np.ones(DIM, dtype=np.float32), namespace="b", k=1)


def test_a_truncated_lmdb_file_is_a_clear_error(saved) -> None:
    path, _, _ = saved
    data_file = path / "cold" / "data.mdb"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 3])
    # In a child process: without a size check, LMDB reading past the end of the file is a SIGBUS.
    result = _child(f"""
        from tiered_memory import StorageError, TieredMemory
        try:
            TieredMemory({str(path)!r}, encoder=None, dimension={DIM})
        except StorageError as err:
            print("StorageError", err)
    """)
    assert result.returncode == 0 and result.stdout.startswith("StorageError"), (result.returncode, result.stderr)


# Field positions in a cold record (records.pack_record) and a wrong value for each.
_WRONG_FIELDS = [
    (1, 5, "id"), (2, None, "namespace"), (2, "", "namespace"), (3, 7, "text"), (4, ["fact"], "kind"),
    (5, [1, 2], "metadata"), (5, {1: "int key"}, "metadata"), (6, "yesterday", "created_at"),
    (7, float("nan"), "updated_at"), (8, float("inf"), "last_accessed"), (9, -1, "access_count"),
    (9, 1.5, "access_count"), (9, True, "access_count"), (10, 2.0, "importance"), (10, "high", "importance"),
    (11, "1", "topic"), (11, -2, "topic"), (12, 3, "tier"), (12, None, "tier"), (13, 0, "version"),
    (13, 2.0, "version"), (14, "not bytes", "sealed"),
]


def _record_fields(memory_id: str = "m1") -> list:
    memory = Memory(memory_id, "ns", "text", "fact", {"k": 1}, 1.0, 2.0, 3.0, 4, 0.5, -1, Tier.COLD)
    return msgpack.unpackb(pack_record(memory), raw=False)


@pytest.mark.parametrize("index, value, field", _WRONG_FIELDS, ids=[f"{f}={v!r}" for _, v, f in _WRONG_FIELDS])
def test_a_wrong_typed_record_field_is_a_storage_error_naming_the_memory(index: int, value, field: str) -> None:
    fields = _record_fields()
    fields[index] = value
    with pytest.raises(StorageError, match=field) as caught:
        unpack_record(msgpack.packb(fields, use_bin_type=True))
    if field != "id":
        assert "'m1'" in str(caught.value)
    assert "damaged" in str(caught.value) and "backup" in str(caught.value)


@pytest.mark.parametrize("data", [{"a": "dict"}, "2 a str", [], ["2", "m1"], [3, "m1"], 7, [0, "m1"]],
                         ids=["dict", "str", "empty", "str version", "too few fields", "int", "version 0"])
def test_a_record_that_is_not_a_record_is_a_storage_error(data) -> None:
    with pytest.raises(StorageError, match="damaged"):
        unpack_record(msgpack.packb(data, use_bin_type=True))


def test_a_record_of_a_newer_schema_asks_for_an_upgrade() -> None:
    fields = _record_fields()
    fields[0] = RECORD_SCHEMA + 1
    with pytest.raises(SchemaVersionError, match="upgrade"):
        unpack_record(msgpack.packb(fields, use_bin_type=True))


def test_a_damaged_record_is_reported_by_id_and_the_others_still_read(open_store) -> None:
    mem = open_store(hot_capacity=1)
    ids = mem.add_many([f"m{i}" for i in range(5)], vectors=unit_rows(5, seed=3))
    damaged = next(memory_id for memory_id in ids if mem.tier_of(memory_id).value != "hot")
    with mem.cold.env.begin(write=True, db=mem.cold.dbs["records"]) as txn:
        fields = msgpack.unpackb(txn.get(damaged.encode()), raw=False)
        fields[5] = ["metadata", "as", "a", "list"]
        txn.put(damaged.encode(), msgpack.packb(fields, use_bin_type=True))
    with pytest.raises(StorageError, match=f"{damaged}.*metadata"):
        mem.get(damaged)
    for memory_id in ids:
        if memory_id != damaged:
            assert mem.get(memory_id).id == memory_id


# -- a second process ------------------------------------------------------------------------------


def _reader(path: Path, script: str, settings: str = "") -> subprocess.Popen:
    """A read-only process that opens the store, says "ready", waits for a line, then runs script."""
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from tiered_memory import TieredMemory
        reader = TieredMemory({str(path)!r}, encoder=None, dimension={DIM}, read_only=True, {settings})
        print("ready", flush=True)
        sys.stdin.readline()
    """) + textwrap.dedent(script)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _after_writes(reader: subprocess.Popen, write) -> str:
    assert reader.stdout.readline().strip() == "ready"
    write()
    out, err = reader.communicate("go\n", timeout=120)
    assert reader.returncode == 0, err
    return out.strip()


def test_a_reader_keeps_reading_while_the_writer_grows_the_map(open_store, tmp_path: Path) -> None:
    """The writer doubles its LMDB map past the size the reader mapped at open."""
    mem = open_store(map_size_bytes=2**20)
    vectors = unit_rows(40, seed=4)
    ids = mem.add_many([f"m{i}" for i in range(40)], vectors=vectors)
    mem.maintain()
    reader = _reader(tmp_path / "store", f"""
        hit = reader.search(vector=np.array({vectors[7].tolist()!r}, dtype=np.float32), k=1)[0]
        print(json.dumps([reader.get({ids[3]!r}).text, hit.memory.id, len(reader)]))
        reader.close()
    """, settings="map_size_bytes=2**20")  # both processes run with the same settings

    def grow() -> None:
        filler = unit_rows(300, seed=6)
        for i in range(300):
            mem.add("y" * 5_000, vector=filler[i], dedup=False)
        assert mem.cold.env.info()["map_size"] > 2**20

    assert _after_writes(reader, grow) == f'["m3", "{ids[7]}", 340]'  # len() counts the archive as it is now


def test_a_reader_leaves_out_what_the_writer_deleted_since(open_store, tmp_path: Path) -> None:
    """A read-only opener keeps the catalog of its open but reads records live: memories deleted
    since are dropped from its results (not an error), the others are still served."""
    mem = open_store()
    vectors = unit_rows(40, seed=4)
    ids = mem.add_many([f"m{i}" for i in range(40)], vectors=vectors)
    reader = _reader(tmp_path / "store", f"""
        from tiered_memory import MemoryNotFoundError
        hits = reader.search(vector=np.array({vectors[7].tolist()!r}, dtype=np.float32), k=40)
        try:
            reader.get({ids[7]!r})
            gone = False
        except MemoryNotFoundError:
            gone = True
        print(json.dumps([[hit.memory.id for hit in hits], gone]))
        reader.close()
    """)

    def delete() -> None:
        for memory_id in ids[:20]:
            mem.delete(memory_id)

    found, gone = json.loads(_after_writes(reader, delete))
    assert gone and sorted(found) == sorted(ids[20:])


# -- out of room ---------------------------------------------------------------------------------


def _fill(mem: TieredMemory, start: int = 0) -> tuple[list[str], str, StorageError]:
    """Add 5 kB memories until the store refuses one; returns the stored ids, the refused id, the error."""
    stored = []
    vectors = unit_rows(4_000, seed=start + 1)
    for i in range(4_000):
        memory_id = f"fill-{start + i}"
        try:
            mem.add(f"{memory_id} " + "z" * 5_000, vector=vectors[i], id=memory_id)
        except StorageError as err:
            return stored, memory_id, err
        stored.append(memory_id)
    raise AssertionError("the store never filled up")


def test_a_full_map_refuses_writes_cleanly(open_store, tmp_path: Path) -> None:
    settings = dict(map_size_bytes=2**20, max_map_size_bytes=2**21)
    mem = open_store(**settings)
    stored, refused, error = _fill(mem)
    assert "full" in str(error) and "max_map_size_bytes" in str(error)
    assert refused not in mem and len(mem) == len(stored)
    with pytest.raises(MemoryNotFoundError):
        mem.get(refused)
    before = len(mem)
    with pytest.raises(StorageError):
        mem.add_many(["big " + "z" * 5_000] * 5, vectors=unit_rows(5, seed=99))  # all or nothing
    assert len(mem) == before
    for memory_id in stored[:10]:  # deleting frees room: the way out the error message names
        mem.delete(memory_id)
    mem.add("fits again", vector=unit_rows(1, seed=98)[0], id="after")
    check_invariants(mem)
    try:
        mem.close()
    except StorageError:
        pass  # statistics may not fit; they are not memories
    again = TieredMemory(tmp_path / "store", encoder=None, dimension=DIM, **settings)
    try:
        assert set(again.ids()) == set(stored[10:]) | {"after"}
        assert again.get(stored[-1]).text.startswith(stored[-1])
        check_invariants(again)
    finally:
        again.close()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs: a real "no space left on device". Skips where mounting is not permitted."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a size-limited tmpfs needs root and mount(8); the map-full test covers the logic")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); the map-full test covers the logic")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_full_disk_refuses_writes_cleanly(small_disk: Path) -> None:
    path = small_disk / "store"
    mem = TieredMemory(path, encoder=None, dimension=DIM, exact_search_max=0)
    try:
        stored, refused, error = _fill(mem)
        assert "nothing of this call was stored" in str(error)
        assert refused not in mem and len(mem) == len(stored) > 50
        with pytest.raises(StorageError):
            mem.maintain()  # saving statistics and the warm index needs room too
    finally:
        try:
            mem.close()
        except StorageError:
            pass
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    again = TieredMemory(path, encoder=None, dimension=DIM, exact_search_max=0)
    try:
        assert set(again.ids()) == set(stored)
        vectors = unit_rows(4_000, seed=1)
        assert again.search(vector=vectors[len(stored) - 1], k=1)[0].memory.id == stored[-1]
        assert refused not in again
        again.add("room again", vector=vectors[-1])
        check_invariants(again)
    finally:
        again.close()


def test_errors_out_of_room_are_tiered_memory_errors() -> None:
    assert issubclass(StorageError, TieredMemoryError)


def test_a_graph_replaced_between_check_and_load_is_rebuilt(saved, open_store, monkeypatch) -> None:
    """Seen with a read-only opener beside a writer that saves its graphs (maintain, close): the
    checked bytes must be the loaded bytes, whatever the writer renames into place meanwhile."""
    path, ids, vectors = saved
    mem = open_store(path, exact_search_max=0)
    for memory_id in ids[:30]:  # the writer moves on: its next save differs from the one on disk
        mem.delete(memory_id)
    mem.add_many([f"n{i}" for i in range(30)], vectors=unit_rows(30, seed=12), namespace="a")
    warm = path / "warm"
    older = {p.name: p.read_bytes() for p in warm.iterdir()}
    mem.maintain()
    newer = {p.name: p.read_bytes() for p in warm.iterdir() if p.suffix == ".hnsw"}
    mem.close()
    for name, data in older.items():
        (warm / name).write_bytes(data)

    import tiered_memory.tiers.warm as warm_module

    checksum = warm_module._crc32
    replaced = []

    def checksum_then_writer_saves(source):
        result = checksum(source)
        for name, data in newer.items():  # the writer saves as it does: a new file renamed into place
            tmp = warm / (name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, warm / name)
            replaced.append(name)
        return result

    monkeypatch.setattr(warm_module, "_crc32", checksum_then_writer_saves)
    reader = open_store(path, exact_search_max=0, read_only=True)
    assert replaced
    check_invariants(reader)
