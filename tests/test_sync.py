"""Offline sync between stores: change stamps, conflicts, sealed data, isolation, interruptions."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

from tiered_memory import MemoryConfig, TieredMemory
from tiered_memory.errors import (
    EncryptionRequiredError,
    IncompatibleStoresError,
    InvalidInputError,
    MemoryNotFoundError,
    StorageError,
    SyncError,
)
from tiered_memory.sync import SyncReport
from tiered_memory.sync.batch import ChangeBatch

from .conftest import DIM, FakeClock, unit_rows
from .invariants import check_invariants

KEY = bytes(range(32))


def content(mem: TieredMemory, namespace: str | None = None) -> dict[str, tuple[Any, ...]]:
    """What replicas must agree on, per memory: everything but local statistics and tiers."""
    names = [namespace] if namespace else mem.namespaces()
    out = {}
    for name in names:
        for memory_id in mem.ids(name):
            m = mem.record(memory_id)
            assert m is not None
            out[memory_id] = (m.namespace, m.text, m.kind, dict(m.metadata), m.importance, m.created_at,
                              m.updated_at, m.version, m.sensitive, m.expires_at)
    return out


@pytest.fixture
def stores(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., TieredMemory]]:
    opened: list[TieredMemory] = []

    def _open(name: str, **options: Any) -> TieredMemory:
        options.setdefault("encoder", None)
        options.setdefault("dimension", DIM)
        mem = TieredMemory(tmp_path / name, clock=clock, **options)
        opened.append(mem)
        return mem

    yield _open
    for mem in opened:
        if not mem.closed:
            mem.close()


def test_changes_travel_both_ways_and_a_second_sync_moves_nothing(stores, clock) -> None:
    a, b = stores("a"), stores("b")
    ids_a = a.add_many([f"a says {i}" for i in range(30)], namespace="user", vectors=unit_rows(30, seed=1),
                       metadata=[{"i": i} for i in range(30)], importance=0.7)
    expiring = a.add("a note that expires", namespace="user", vector=unit_rows(1, seed=2)[0], ttl_s=3_600)
    ids_b = b.add_many([f"b says {i}" for i in range(20)], namespace="user", vectors=unit_rows(20, seed=3))
    report = a.sync(b)
    assert isinstance(report, SyncReport)
    assert (report.pushed, report.pulled, report.conflicts, report.namespaces) == (31, 20, [], ["user"])
    assert report.bytes_sent > 0 and report.bytes_received > 0 and report.seconds > 0
    assert content(a) == content(b) and len(content(a)) == 51
    assert b.record(expiring).expires_at == a.record(expiring).expires_at
    # The received memories are searchable where they arrived, by their own vectors.
    for mem, memory_id in ((b, ids_a[4]), (a, ids_b[7])):
        hit = mem.search(vector=mem.vector(memory_id), namespace="user", k=1)[0]
        assert hit.memory.id == memory_id and hit.score > 0.99
    clock.tick(1)
    a.update(ids_a[0], text="a changed its mind", vector=unit_rows(1, seed=4)[0], metadata={"new": True})
    b.delete(ids_b[0])
    report = a.sync(b)
    assert (report.pushed, report.pulled, report.conflicts) == (1, 1, [])
    assert b.get(ids_a[0]).text == "a changed its mind" and b.get(ids_a[0]).version == 2
    assert ids_b[0] not in a and content(a) == content(b)
    settle = a.sync(b)  # the versions each side applied come back once, as already held
    assert (settle.pushed, settle.pulled) == (0, 0)
    idle = a.sync(b)
    assert (idle.pushed, idle.pulled, idle.batches, idle.namespaces) == (0, 0, 0, [])
    check_invariants(a)
    check_invariants(b)


def test_both_sides_changing_a_memory_end_equal_with_the_loser_in_history(stores, clock) -> None:
    a, b = stores("a"), stores("b")
    memory_id = a.add("the meeting is on monday", namespace="team", vector=unit_rows(1, seed=1)[0])
    a.sync(b)
    a.update(memory_id, text="the meeting is on tuesday", vector=unit_rows(1, seed=2)[0])
    clock.tick(5)  # b's change is the newer one
    b.update(memory_id, text="the meeting is on wednesday", vector=unit_rows(1, seed=3)[0])
    report = a.sync(b)
    [conflict] = report.conflicts
    assert (conflict.memory_id, conflict.winner, conflict.winner_deleted) == (memory_id, "remote", False)
    for mem in (a, b):
        got = mem.get(memory_id)
        assert (got.text, got.version) == ("the meeting is on wednesday", 3)  # max(2, 2) + 1
    assert content(a) == content(b)
    [lost] = a.sync_history(memory_id)
    assert (lost.memory.text, lost.deleted, lost.memory.version) == ("the meeting is on tuesday", False, 2)
    assert math.isclose(lost.made_at, clock.now - 5, abs_tol=0.01)
    assert a.sync(b).conflicts == [] and a.sync(b).conflicts == []  # resolved once, not again
    # The winner's vector went with it: a search by it finds the memory on both sides.
    for mem in (a, b):
        assert mem.search(vector=unit_rows(1, seed=3)[0], namespace="team", k=1)[0].memory.id == memory_id


@pytest.mark.parametrize("newer", ["delete", "update"])
def test_a_delete_against_an_update_is_decided_by_which_is_newer(stores, clock, newer: str) -> None:
    a, b = stores("a"), stores("b")
    memory_id = a.add("draft", namespace="n", vector=unit_rows(1, seed=1)[0])
    keep = a.add("untouched", namespace="n", vector=unit_rows(1, seed=2)[0])
    a.sync(b)
    if newer == "delete":
        b.update(memory_id, text="edited draft", vector=unit_rows(1, seed=3)[0])
        clock.tick(1)
        a.delete(memory_id)
    else:
        a.delete(memory_id)
        clock.tick(1)
        b.update(memory_id, text="edited draft", vector=unit_rows(1, seed=3)[0])
    [conflict] = a.sync(b).conflicts
    assert conflict.winner_deleted == (newer == "delete") and conflict.loser_deleted == (newer == "update")
    if newer == "delete":
        assert memory_id not in a and memory_id not in b
        [lost] = a.sync_history(memory_id, namespace="n")
        assert lost.memory.text == "edited draft"  # the update survives in history
    else:
        assert a.get(memory_id).text == b.get(memory_id).text == "edited draft"
        [lost] = a.sync_history(memory_id)
        assert lost.deleted and lost.memory is None
    assert content(a) == content(b) and keep in a and keep in b
    assert a.count("n") == b.count("n") == (1 if newer == "delete" else 2)
    with pytest.raises(MemoryNotFoundError):
        a.sync_history("no-such-memory")


def test_three_replicas_converge_whatever_the_order_of_syncs(stores, clock) -> None:
    server, phone, laptop = stores("server"), stores("phone"), stores("laptop")
    shared = server.add("shared fact", namespace="u", vector=unit_rows(1, seed=1)[0])
    phone.sync(server)
    laptop.sync(server)
    phone.update(shared, text="phone's version", vector=unit_rows(1, seed=2)[0])
    clock.tick(1)
    laptop.update(shared, text="laptop's version", vector=unit_rows(1, seed=3)[0])
    clock.tick(1)
    phone.add("only on the phone", namespace="u", vector=unit_rows(1, seed=4)[0])
    laptop.sync(server)
    phone.sync(server)  # the conflict is resolved here: laptop's is newer
    laptop.sync(server)
    phone.sync(server)
    assert content(server) == content(phone) == content(laptop)
    assert server.get(shared).text == "laptop's version"


def test_only_the_asked_namespaces_move(stores) -> None:
    a, b = stores("a"), stores("b")
    a.add_many(["tenant one's secret", "more of one"], namespace="tenant-1", vectors=unit_rows(2, seed=1))
    a.add_many(["tenant two's data"], namespace="tenant-2", vectors=unit_rows(1, seed=2))
    b.add("b's tenant two", namespace="tenant-2", vector=unit_rows(1, seed=3)[0])
    report = a.sync(b, namespaces=["tenant-1"])
    assert report.namespaces == ["tenant-1"] and (report.pushed, report.pulled) == (2, 0)
    assert b.count("tenant-1") == 2 and b.count("tenant-2") == 1 and a.count("tenant-2") == 1
    a.sync(b, namespaces=["tenant-2"])
    assert a.count("tenant-2") == b.count("tenant-2") == 2 and content(a) == content(b)


def test_vectors_travel_as_stored_and_nothing_is_embedded(stores) -> None:
    class Refusing:
        name, dimension = "refusing-encoder", DIM

        def encode(self, texts: list[str]) -> np.ndarray:
            raise AssertionError("a sync must not embed anything")

    a = stores("a", calibration_size=50)
    vectors = unit_rows(120, seed=5)
    ids = a.add_many([f"memory {i}" for i in range(120)], namespace="v", vectors=vectors)
    b = stores("b", encoder=Refusing(), calibration_size=50)
    b.sync(a)
    for memory_id, vector in zip(ids[:10], vectors[:10]):
        np.testing.assert_allclose(b.vector(memory_id), vector, atol=1e-3)  # the float16 original
    assert b.search(vector=vectors[17], namespace="v", k=1)[0].memory.id == ids[17]


def test_stores_of_different_vector_spaces_are_refused(stores, tmp_path: Path) -> None:
    class Named:
        dimension = DIM

        def __init__(self, name: str) -> None:
            self.name = name

        def encode(self, texts: list[str]) -> np.ndarray:
            return unit_rows(len(texts), seed=len(texts))

    a, b = stores("a", encoder=Named("model-a")), stores("b", encoder=Named("model-b"))
    a.add("x", namespace="n")
    with pytest.raises(IncompatibleStoresError, match="encoder"):
        a.sync(b)
    wide = stores("wide", dimension=DIM * 2)
    with pytest.raises(IncompatibleStoresError, match="64-d"):
        stores("c").sync(wide)
    b.close()
    with pytest.raises(IncompatibleStoresError):  # by path: opening it with a's encoder is refused too
        a.sync(tmp_path / "b")


def test_sealed_memories_travel_sealed_and_need_the_key_on_both_sides(stores, tmp_path: Path) -> None:
    a = stores("a", encryption_key=KEY)
    secret = a.add("my bank pin is 4921", namespace="private", vector=unit_rows(1, seed=1)[0], sensitive=True)
    a.add("plain note", namespace="private", vector=unit_rows(1, seed=2)[0])
    on_the_wire = a.sync_endpoint.export("private", 0)
    assert b"4921" not in on_the_wire and b"plain note" in on_the_wire  # sealed in transit too
    keyless = stores("keyless")
    with pytest.raises(EncryptionRequiredError):
        keyless.sync(a)
    assert keyless.count() == 0  # nothing of the refused batch was applied
    a.close()
    a = stores("a", encryption_key=KEY)
    b = stores("b", encryption_key=KEY)
    b.sync(a)
    assert b.get(secret).text == "my bank pin is 4921" and b.get(secret).sensitive
    b.close()
    data = (tmp_path / "b" / "cold" / "data.mdb").read_bytes()
    assert b"4921" not in data and b"plain note" in data
    other_key = stores("other-key", encryption_key=bytes(32))
    with pytest.raises(Exception) as refused:
        other_key.sync(a)
    assert not isinstance(refused.value, AssertionError) and other_key.count() == 0


def test_a_sync_interrupted_between_batches_resumes_without_duplicates(stores, monkeypatch) -> None:
    a, b = stores("a"), stores("b")
    ids = a.add_many([f"memory {i}" for i in range(250)], namespace="n", vectors=unit_rows(250, seed=1))
    endpoint = b.sync_endpoint
    real_apply = type(endpoint).apply
    calls = {"n": 0}

    def failing_apply(self, data: bytes):
        calls["n"] += 1
        if calls["n"] == 3:
            raise StorageError("the disk went away")
        return real_apply(self, data)

    monkeypatch.setattr(type(endpoint), "apply", failing_apply)
    with pytest.raises(StorageError):
        a.sync(b, batch_size=100)
    assert b.count("n") == 200  # batches are whole: two applied, the third refused before any write
    monkeypatch.undo()
    report = a.sync(b, batch_size=100)
    assert report.pushed == 50 and sorted(b.ids("n")) == sorted(ids) and content(a) == content(b)


def test_a_damaged_batch_is_refused_whole(stores) -> None:
    a, b = stores("a"), stores("b")
    a.add_many(["one", "two"], namespace="n", vectors=unit_rows(2, seed=1))
    data = a.sync_endpoint.export("n", 0)
    assert len(ChangeBatch.from_bytes(data).versions) == 2
    for damaged in (data[:-7], b"\x93garbage", data.replace(b"tiered-memory-changes", b"tiered-memory-chang3s")):
        with pytest.raises(SyncError, match="nothing of it was applied"):
            b.sync_endpoint.apply(damaged)
    assert b.count() == 0
    with pytest.raises(SyncError, match="itself"):
        a.sync(a)
    with pytest.raises(InvalidInputError):
        a.sync(b, batch_size=0)
    with pytest.raises(InvalidInputError):
        a.sync(42)  # type: ignore[arg-type]


def test_tombstones_are_dropped_once_every_peer_has_them_and_the_retention_passed(stores, clock) -> None:
    a, b = stores("a"), stores("b")
    ids = a.add_many(["gone soon", "stays"], namespace="n", vectors=unit_rows(2, seed=1))
    a.sync(b)
    a.delete(ids[0])
    a.sync(b)
    a.sync(b)  # b's acknowledgement of the delete comes with this one
    for mem in (a, b):  # both have seen it, but it is younger than the retention: kept
        [held] = mem.sync_endpoint.cold.stored_versions(mem.sync_endpoint.cold.namespace_id("n"), [ids[0]])
        assert held.stamp is not None and held.stamp.deleted
    clock.tick(MemoryConfig().sync_tombstone_retention_s + 1)
    assert a.sync(b).tombstones_dropped == 2
    for mem in (a, b):
        [held] = mem.sync_endpoint.cold.stored_versions(mem.sync_endpoint.cold.namespace_id("n"), [ids[0]])
        assert held.stamp is None  # the tombstone is gone on both
    a.sync(b)
    assert ids[0] not in a and ids[0] not in b and content(a) == content(b)


def test_a_store_written_before_change_stamps_syncs_everything(stores, tmp_path: Path) -> None:
    old = stores("old")
    ids = old.add_many([f"old memory {i}" for i in range(40)], namespace="n", vectors=unit_rows(40, seed=1))
    old.close()
    env = lmdb.open(str(tmp_path / "old" / "cold"), max_dbs=16)  # as an earlier tiered_memory left it
    with env.begin(write=True) as txn:
        for name in (b"stamps", b"changes"):
            txn.drop(env.open_db(name, txn=txn), delete=True)
        meta = env.open_db(b"meta", txn=txn)
        for key in [bytes(k) for k, _ in txn.cursor(db=meta) if bytes(k).startswith((b"sync", b"store_id"))]:
            txn.delete(key, db=meta)
    env.close()
    old = stores("old")
    fresh = stores("fresh")
    assert fresh.sync(old).pulled == 40 and sorted(fresh.ids("n")) == sorted(ids)


@pytest.mark.postgres
def test_a_postgres_store_is_the_hub_two_devices_sync_through(stores, pg_dsn: str, pg_schema: str,
                                                              tmp_path: Path) -> None:
    from tiered_memory.tiers.pg_cold import postgres_cold

    server = stores("server-cache", cold=postgres_cold(pg_dsn, schema=pg_schema))
    phone, laptop = stores("phone"), stores("laptop")
    phone.add_many([f"phone {i}" for i in range(15)], namespace="u", vectors=unit_rows(15, seed=1))
    laptop.add_many([f"laptop {i}" for i in range(10)], namespace="u", vectors=unit_rows(10, seed=2))
    for device in (phone, laptop, phone):
        device.sync(server)
    assert content(phone) == content(laptop) == content(server) and len(content(server)) == 25
    victim = phone.ids("u")[0]
    laptop.delete(victim)
    laptop.sync(server)
    phone.sync(server)
    assert victim not in phone and content(phone) == content(server)
    hit = server.search(vector=phone.vector(phone.ids("u")[3]), namespace="u", k=1)[0]
    assert hit.memory.id == phone.ids("u")[3]
    server.close()  # before the schema is dropped


def test_the_config_of_the_remote_is_this_stores(stores, tmp_path: Path) -> None:
    a = stores("a", keep_originals="float32")
    a.add("exact original", namespace="n", vector=unit_rows(1, seed=9)[0])
    report = a.sync(tmp_path / "by-path")
    assert report.pushed == 1
    with TieredMemory(tmp_path / "by-path", encoder=None, dimension=DIM,
                      config=MemoryConfig(keep_originals="float32")) as b:
        np.testing.assert_allclose(b.vector(a.ids("n")[0]), unit_rows(1, seed=9)[0], atol=1e-6)


def test_the_sync_command(tmp_path: Path, capsys) -> None:
    from tiered_memory.cli import main

    with TieredMemory(tmp_path / "a", encoder=None, dimension=DIM) as a:
        ids = a.add_many(["from the command line", "second"], namespace="cli", vectors=unit_rows(2, seed=1))
    assert main(["sync", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert (report["pushed"], report["pulled"], report["namespaces"]) == (2, 0, ["cli"])
    with TieredMemory(tmp_path / "b", encoder=None, dimension=DIM) as b:
        assert sorted(b.ids("cli")) == sorted(ids)
    assert main(["sync", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "pushed 0, pulled 0" in capsys.readouterr().out
    assert main(["sync", str(tmp_path / "missing"), str(tmp_path / "b")]) == 4


def test_async_stores_sync(stores) -> None:
    import asyncio

    from tiered_memory.aio import AsyncTieredMemory

    a, b = stores("a"), stores("b")
    a.add("async memory", namespace="n", vector=unit_rows(1, seed=1)[0])

    async def go() -> SyncReport:
        return await AsyncTieredMemory(a).sync(AsyncTieredMemory(b))

    assert asyncio.run(go()).pushed == 1 and b.count("n") == 1


def test_agents_with_access_hear_of_a_conflict_on_a_shared_memory(stores, clock) -> None:
    a, b = stores("a"), stores("b")
    hub = a.agents("alice")
    hub.register("planner")
    hub.register("writer")
    hub.register("outsider")
    memory_id = hub.share("planner", ["writer"], "the launch is on friday", vector=unit_rows(1, seed=1)[0],
                          access="read-write")
    a.sync(b)
    hub.update(memory_id, {"text": "the launch is on monday", "vector": unit_rows(1, seed=2)[0]}, by="writer")
    clock.tick(1)
    b.update(memory_id, text="the launch is on tuesday", vector=unit_rows(1, seed=3)[0])  # newer, elsewhere
    [conflict] = a.sync(b).conflicts
    assert conflict.namespace == "alice/shared" and conflict.winner == "remote"
    heard = {name: [n.event for n in hub.notifications(name)] for name in ("planner", "writer", "outsider")}
    assert "conflict" in heard["writer"] and "conflict" not in heard["outsider"]
    assert a.get(memory_id).text == "the launch is on tuesday"


def test_an_imported_copy_syncs_with_its_original_without_conflicts(stores, tmp_path: Path) -> None:
    from tiered_memory.cli import main

    a = stores("a")
    ids = a.add_many([f"note {i}" for i in range(12)], namespace="n", vectors=unit_rows(12, seed=1))
    a.delete(ids[0])
    a.close()
    assert main(["export", str(tmp_path / "a"), "-o", str(tmp_path / "a.jsonl"), "-q"]) == 0
    assert main(["import", str(tmp_path / "copy"), str(tmp_path / "a.jsonl"), "-q"]) == 0
    a, copy = stores("a"), stores("copy")
    assert copy.sync_endpoint.store_id != a.sync_endpoint.store_id  # the copy is a replica of its own
    report = copy.sync(a)
    assert report.conflicts == [] and content(a) == content(copy)
    copy.update(ids[1], text="changed in the copy", vector=unit_rows(1, seed=2)[0])
    assert copy.sync(a).pushed == 1 and a.get(ids[1]).text == "changed in the copy"



# -- found by a hostile review ---------------------------------------------------------------------


def test_a_store_known_only_through_another_does_not_bring_a_deleted_memory_back(stores) -> None:
    a, b, c = stores("a"), stores("b"), stores("c")
    memory_id = c.add("fact", namespace="n", vector=unit_rows(1, seed=1)[0])
    c.sync(b)
    b.sync(a)
    a.delete(memory_id)
    a.sync(b)
    a.sync(b)  # every store a knows has the delete; it is younger than the retention: kept
    a.sync(c)  # c, unknown to a, still holds the old version
    for x, y in ((c, b), (a, b), (a, c), (b, c), (a, b)):
        x.sync(y)
    assert all(memory_id not in mem.ids("n") for mem in (a, b, c))


def test_a_long_run_of_edits_on_one_side_is_no_conflict(stores) -> None:
    a, b = stores("a"), stores("b")
    memory_id = a.add("draft 0", namespace="n", vector=unit_rows(1, seed=1)[0])
    a.sync(b)
    for i in range(1, 41):  # more edits than an ancestry keeps
        a.update(memory_id, text=f"draft {i}", vector=unit_rows(1, seed=i + 1)[0])
    report = a.sync(b)
    assert report.conflicts == [] and b.get(memory_id).text == "draft 40" and b.sync_history(memory_id) == []


def test_what_arrives_in_a_namespace_sealed_here_is_sealed(stores, tmp_path: Path) -> None:
    a = stores("a")
    b = stores("b", encryption_key=KEY)
    b.seal_namespace("n")
    memory_id = a.add("the password is hunter2", namespace="n", vector=unit_rows(1, seed=1)[0])
    a.sync(b)
    assert b.get(memory_id).sensitive and b.get(memory_id).text == "the password is hunter2"
    b.close()
    assert not any(b"hunter2" in path.read_bytes() for path in (tmp_path / "b").rglob("*.mdb"))


def test_synced_memories_get_the_receivers_topics(stores) -> None:
    a = stores("a", topic_min_memories=32)
    a.add_many([f"local {i}" for i in range(200)], namespace="n", vectors=unit_rows(200, seed=1))
    a.maintain()  # fits the namespace's topic model
    assert a.sync_endpoint.cold.meta_get  # (the model is stored with the namespace)
    b = stores("b")
    ids = b.add_many([f"remote {i}" for i in range(20)], namespace="n", vectors=unit_rows(20, seed=2))
    a.sync(b)
    a.close()
    a = stores("a", topic_min_memories=32)
    topics = {a.get(memory_id).topic for memory_id in ids}
    assert -1 not in topics


def test_a_tombstone_is_not_collected_over_a_memory_added_again(stores, clock, monkeypatch) -> None:
    a, b = stores("a"), stores("b")
    memory_id = a.add("first life", namespace="n", vector=unit_rows(1, seed=1)[0], id="reborn")
    a.sync(b)
    a.delete(memory_id)
    a.sync(b)
    a.sync(b)
    clock.tick(MemoryConfig().sync_tombstone_retention_s + 1)
    cold = a.sync_endpoint.cold
    real = type(cold).changes_after
    added = []

    def racing(self, ns, after, limit):  # the memory is added again between the read and the drop
        found = real(self, ns, after, limit)
        if self is cold and not added and any(v.memory_id == "reborn" for v in found):
            added.append(a.add("second life", namespace="n", vector=unit_rows(1, seed=2)[0], id="reborn"))
        return found

    monkeypatch.setattr(type(cold), "changes_after", racing)
    a.sync_endpoint.collect_tombstones("n")
    monkeypatch.undo()
    [held] = cold.stored_versions(cold.namespace_id("n"), ["reborn"])
    assert added and held.stamp is not None and not held.stamp.deleted
    a.sync(b)
    assert b.get("reborn").text == "second life"


@pytest.mark.postgres
def test_a_sync_into_a_shared_store_does_not_lose_another_process_update(stores, pg_dsn: str, pg_schema: str,
                                                                          clock) -> None:
    from tiered_memory.tiers.pg_cold import postgres_cold

    p1 = stores("p1", cold=postgres_cold(pg_dsn, schema=pg_schema))
    p2 = stores("p2", cold=postgres_cold(pg_dsn, schema=pg_schema))
    device = stores("device")
    memory_id = p1.add("fact", namespace="n", vector=unit_rows(1, seed=1)[0])
    device.sync(p1)
    device.update(memory_id, metadata={"by": "device"})
    clock.tick(1)
    real = p1.cold.stored_versions
    fired = []

    def racing(ns, ids):  # another process updates the memory after the sync read it
        found = real(ns, ids)
        if memory_id in ids and not fired:
            fired.append(p2.update(memory_id, metadata={"by": "p2"}))
        return found

    p1.cold.stored_versions = racing  # type: ignore[method-assign]
    report = device.sync(p1)
    p1.cold.stored_versions = real  # type: ignore[method-assign]
    assert fired and len(report.conflicts) == 1  # seen, re-planned and resolved: p2's is newer
    assert dict(p2.record(memory_id).metadata) == {"by": "p2"}
    lost = [dict(v.memory.metadata) for v in p1.sync_history(memory_id)]
    assert lost == [{"by": "device"}]
    device.sync(p1)
    assert dict(device.record(memory_id).metadata) == {"by": "p2"}
    for mem in (p1, p2):
        mem.close()  # before the schema is dropped


@pytest.mark.postgres
def test_an_export_names_the_int8_ranges_the_codes_were_made_with(stores, pg_dsn: str, pg_schema: str) -> None:
    from tiered_memory.tiers.pg_cold import postgres_cold

    vectors = unit_rows(60, seed=5)
    p1 = stores("p1", cold=postgres_cold(pg_dsn, schema=pg_schema), calibration_size=10_000)
    ids = p1.add_many([f"n{i}" for i in range(10)], namespace="n", vectors=vectors[:10])
    p2 = stores("p2", cold=postgres_cold(pg_dsn, schema=pg_schema), calibration_size=16)
    p2.add_many([f"m{i}" for i in range(40)], namespace="n", vectors=vectors[10:50])  # re-calibrates, re-codes
    device = stores("device", calibration_size=10_000, keep_originals="none")
    device.sync(p1)  # p1's own ranges in RAM are the old ones
    ns = device.cold.namespace_id("n")
    for version in device.cold.stored_versions(ns, ids):
        decoded = device.cold.quantizer.decode(np.frombuffer(version.code, dtype=np.int8).reshape(1, -1))[0]
        assert np.linalg.norm(decoded - vectors[ids.index(version.memory_id)]) < 0.2
    for mem in (p1, p2):
        mem.close()
