"""One contract, every cold store: what the engine calls, run against LMDB and PostgreSQL alike."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest

from tiered_memory.config import MemoryConfig
from tiered_memory.crypto import OVERHEAD, Sealer
from tiered_memory.errors import EncryptionRequiredError, StorageError
from tiered_memory.quantization import make_quantizer
from tiered_memory.records import TIER_CODES, Memory, Tier
from tiered_memory.tiers.cold import ColdTier, text_key
from tiered_memory.tiers.cold_ops import STAMP_BYTES, memory_row, stamp_op
from tiered_memory.tiers.cold_store import ColdStore

from .conftest import DIM, unit_rows

KEY = bytes(range(32))

OpenCold = Callable[..., ColdStore]


def memory(memory_id: str, namespace: str = "ns", text: str | None = None, sensitive: bool = False) -> Memory:
    return Memory(memory_id, namespace, text or f"text of {memory_id}", "fact", {"id": memory_id}, 10.0, 11.0, 12.0, 3,
                  0.5, 2, Tier.COLD, 1, sensitive)


def add(cold: ColdStore, namespace: str, memories: list[Memory], seed: int = 0) -> np.ndarray:
    """Whole memories in one write, as the engine's add does; returns their float vectors."""
    vectors = unit_rows(len(memories), seed=seed)
    ns = cold.namespace_id(namespace, create=True)
    cold.write(cold.memory_ops(ns, memories, cold.quantizer.encode(vectors), vectors))
    return vectors


@pytest.fixture(params=["lmdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_cold(request, tmp_path: Path) -> Iterator[OpenCold]:
    """Opens (and closes at teardown) a store of the parametrized kind; a second call reopens the
    same store, as a new process would."""
    opened: list[ColdStore] = []
    if request.param == "postgres":
        from tiered_memory.tiers.pg_cold import PostgresColdStore

        dsn, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")

        def make(config: MemoryConfig) -> ColdStore:
            return PostgresColdStore(dsn, config, schema=schema)
    else:
        def make(config: MemoryConfig) -> ColdStore:
            return ColdTier(tmp_path / "cold", config)

    def _open(config: MemoryConfig | None = None, sealer: Sealer | None = None) -> ColdStore:
        cold = make(config or MemoryConfig())
        cold.sealer = sealer
        try:
            cold.use_dimension(DIM)
        except BaseException:
            cold.close()  # as the engine does when an open fails
            raise
        opened.append(cold)
        return cold

    yield _open
    for cold in opened:
        cold.close()


class ColdStoreContract:
    """Every cold store keeps these promises (the ``open_cold`` fixture gives the implementation)."""

    def test_declares_the_contract(self, open_cold: OpenCold) -> None:
        assert isinstance(open_cold(), ColdStore)

    def test_a_write_of_mixed_ops_is_applied_whole(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        ns = cold.namespace_id("ns", create=True)
        vectors = unit_rows(2)
        batch = [memory("a"), memory("b")]
        first = cold.write([*cold.memory_ops(ns, batch, cold.quantizer.encode(vectors), vectors),
                            ("texts", text_key(ns, "text of a"), b"a"), cold.meta_op("note", {"n": 1}),
                            ("extra", b"hub/x", b"value")])
        assert [m.text for m in cold.get_many(["a", "b"])] == ["text of a", "text of b"]
        assert cold.find_texts([text_key(ns, "text of a")]) == ["a"]
        assert (cold.meta_get("note"), list(cold.extra_items(b"hub/"))) == ({"n": 1}, [(b"hub/x", b"value")])
        assert cold.namespace_info(ns) == ("ns", 2, 1) and len(cold) == 2
        second = cold.write([cold.meta_op("note", {"n": 2})])
        assert second > first  # the store's generation grows with every write

    def test_a_failing_op_leaves_nothing_of_its_write(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        add(cold, "ns", [memory("a")])
        ns = cold.namespace_id("ns")
        vectors = unit_rows(1, seed=5)
        doomed = [*cold.memory_ops(ns, [memory("b")], cold.quantizer.encode(vectors), vectors),
                  *cold.delete_ops(ns, ["a"]), cold.meta_op("note", "changed"), ("extra", b"hub/y", b"v"),
                  ("texts", text_key(ns, "text of b"), b"b"),
                  cold.count_op(9_999, 1)]  # a namespace the store does not have: the whole write fails
        with pytest.raises(StorageError):
            cold.write(doomed)
        assert cold.get("b") is None and cold.get("a") is not None
        assert cold.meta_get("note") is None and list(cold.extra_items(b"hub/")) == []
        assert cold.find_texts([text_key(ns, "text of b")]) == [None]
        assert cold.namespace_info(ns) == ("ns", 1, 1) and cold.namespace_ids(ns) == ["a"]

    def test_load_namespace_reads_that_namespace_only_in_key_order(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        ids = ["b2", "a1", "é3", "Z0"]
        vectors = add(cold, "left", [memory(i, "left") for i in ids])
        add(cold, "right", [memory(f"r{i}", "right") for i in range(3)], seed=1)
        ns = cold.namespace_id("left")
        rows = cold.load_namespace(ns, count_hint=1)
        in_order = sorted(ids, key=lambda i: i.encode("utf-8"))
        assert rows.ids == in_order == cold.namespace_ids(ns)
        position = {memory_id: i for i, memory_id in enumerate(ids)}
        expected = cold.quantizer.encode(vectors)[[position[i] for i in in_order]]
        np.testing.assert_array_equal(rows.codes, expected)
        assert (rows.kinds, rows.uses, rows.topic, rows.version) == (["fact"] * 4, [3] * 4, [2] * 4, [1] * 4)
        assert rows.created == [10.0] * 4 and rows.tier == [TIER_CODES[Tier.COLD]] * 4 and rows.sensitive == [0] * 4
        assert len(cold.load_namespace(cold.namespace_id("right"))) == 3
        empty = cold.namespace_id("empty", create=True)
        assert len(cold.load_namespace(empty, count_hint=8)) == 0 and cold.load_namespace(empty).codes.shape == (0, DIM)

    def test_counts_and_generations(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        assert cold.namespace_id("ns") is None
        ns = cold.namespace_id("ns", create=True)
        assert cold.namespace_id("ns", create=True) == ns and cold.namespace_info(ns) == ("ns", 0, 0)
        other = cold.namespace_id("other", create=True)
        assert other != ns
        add(cold, "ns", [memory(f"m{i}") for i in range(3)])
        assert cold.namespace_info(ns) == ("ns", 3, 1)
        cold.write(cold.delete_ops(ns, ["m1"]))
        assert cold.namespace_info(ns) == ("ns", 2, 2) and cold.get("m1") is None and cold.originals(["m1"]) is None
        changed = memory("m0")
        vector = unit_rows(1, seed=9)
        cold.write([*cold.vector_ops(ns, changed, cold.quantizer.encode(vector)[0], vector[0]), cold.count_op(ns, 0)])
        assert cold.namespace_info(ns) == ("ns", 2, 3)  # vectors changed: the generation moves, the count not
        cold.write(cold.row_ops(ns, ["m0"], [memory_row(changed)]))  # a statistics flush: no generation bump
        assert cold.namespace_info(ns) == ("ns", 2, 3)
        assert cold.namespace_counts() == [("ns", 2), ("other", 0)] and len(cold) == 2
        assert sorted(cold.ids()) == ["m0", "m2"]
        with pytest.raises(StorageError):
            cold.namespace_info(12_345)

    def test_statistics_flushes_replace_rows_only(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        add(cold, "ns", [memory("a")])
        ns = cold.namespace_id("ns")
        used = memory("a").replace(access_count=40, last_accessed=99.0)
        cold.write(cold.row_ops(ns, ["a"], [memory_row(used)]))
        rows = cold.load_namespace(ns)
        assert (rows.uses, rows.accessed) == ([40], [99.0])
        assert cold.get("a").access_count == 3  # the record keeps what its last record write said

    def test_meta(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        assert cold.meta_get("missing") is None and cold.meta_get("missing", 7) == 7
        state = {"ranges": [1.5, -2.0], 3: "int keys too", "nested": {"x": [1, 2]}}
        cold.write([cold.meta_op("state", state), cold.meta_op("dimension", DIM)])
        assert cold.meta_get("state") == state and cold.meta_get("dimension") == DIM
        cold.write([cold.meta_op("dimension", 64)])
        assert cold.meta_get("dimension") == 64
        cold.write([("meta", b"state", None)])
        assert cold.meta_get("state") is None
        cold.write([("meta", b"broken", b"\xc1")])  # 0xc1: never valid msgpack
        with pytest.raises(StorageError, match="broken"):
            cold.meta_get("broken")

    def test_extra_items_by_prefix_in_key_order(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        keys = [b"hub/a/2", b"hub/a/1", b"hub/a\xff", b"hub/b/1", b"hub0", b"hua", b"hub/a/\xff\xff"]
        cold.write([("extra", key, b"v" + key) for key in keys])
        assert list(cold.extra_items(b"hub/a/")) == [(k, b"v" + k) for k in (b"hub/a/1", b"hub/a/2", b"hub/a/\xff\xff")]
        assert [k for k, _ in cold.extra_items(b"hub/a/\xff")] == [b"hub/a/\xff\xff"]
        assert [k for k, _ in cold.extra_items(b"")] == sorted(keys)
        assert list(cold.extra_items(b"nothing")) == []
        cold.write([("extra", b"hub/a/1", None), ("extra", b"hub/a/2", b"new"), ("extra", b"absent", None)])
        assert list(cold.extra_items(b"hub/a/")) == [(b"hub/a/2", b"new"), (b"hub/a/\xff\xff", b"vhub/a/\xff\xff")]

    def test_dedup_texts(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        ns, other = cold.namespace_id("ns", create=True), cold.namespace_id("other", create=True)
        cold.write([("texts", text_key(ns, "Hello   World"), b"m1")])
        assert cold.find_texts([text_key(ns, "hello world"), None, text_key(other, "hello world"),
                                text_key(ns, "hello")]) == ["m1", None, None, None]
        cold.write([("texts", text_key(ns, "hello world"), None), ("texts", text_key(ns, "bye"), b"m2")])
        assert cold.find_texts([text_key(ns, "Hello World"), text_key(ns, "BYE")]) == [None, "m2"]
        assert cold.find_texts([None]) == [None] and cold.find_texts([]) == []

    def test_reads_by_id(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        vectors = add(cold, "ns", [memory("a"), memory("b")])
        got = cold.get_many(["b", "missing", "a", "b"])
        assert [None if m is None else m.id for m in got] == ["b", None, "a", "b"]
        assert got[0].metadata == {"id": "b"} and got[0].namespace == "ns" and cold.get("missing") is None
        assert cold.get_many([]) == []
        fetched = cold.fetch(["a", "missing"], originals=True)
        assert fetched[0][0].id == "a" and fetched[1] == (None, None)
        np.testing.assert_allclose(fetched[0][1], vectors[0], atol=1e-3)  # float16 originals
        assert cold.fetch(["a"], originals=False)[0][1] is None

    def test_originals_and_vectors(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        vectors = add(cold, "ns", [memory("a"), memory("b")])
        np.testing.assert_allclose(cold.originals(["b", "a"]), vectors[[1, 0]], atol=1e-3)
        assert cold.originals(["a", "missing"]) is None
        np.testing.assert_allclose(cold.vector("a"), vectors[0], atol=1e-3)
        assert cold.vector("missing") is None
        cold.close()
        lean = open_cold(MemoryConfig(keep_originals="none"))
        add(lean, "lean", [memory("c", "lean")], seed=3)
        assert lean.originals(["c"]) is None
        decoded = lean.vector("c")  # no original: the decoded int8 code
        assert decoded is not None and float(decoded @ unit_rows(1, seed=3)[0]) > 0.99

    def test_sealed_values_stay_bytes_and_need_the_key(self, open_cold: OpenCold) -> None:
        sealer = Sealer(KEY)
        cold = open_cold(sealer=sealer)
        secret = memory("s", text="the vault code is 4711", sensitive=True)
        vectors = add(cold, "ns", [secret, memory("p")])
        ns = cold.namespace_id("ns")
        assert cold.get("s").text == "the vault code is 4711"
        rows = cold.load_namespace(ns)
        assert rows.ids == ["p", "s"] and rows.sensitive == [0, 1]
        np.testing.assert_array_equal(rows.codes, cold.quantizer.encode(vectors[[1, 0]]))
        np.testing.assert_allclose(cold.originals(["s"]), vectors[:1], atol=1e-3)
        cold.close()
        keyless = open_cold()
        with pytest.raises(EncryptionRequiredError):
            keyless.get("s")
        with pytest.raises(EncryptionRequiredError):
            keyless.load_namespace(ns)
        with pytest.raises(EncryptionRequiredError):
            keyless.originals(["s"])
        assert keyless.get("p").text == "text of p"
        with pytest.raises(EncryptionRequiredError):  # an op builder never writes a sensitive value in clear
            keyless.record_ops([memory("t", sensitive=True)])

    def test_sealed_quantizer_needs_the_key(self, open_cold: OpenCold) -> None:
        cold = open_cold(sealer=Sealer(KEY))
        cold.quantizer = make_quantizer("int8", DIM)
        cold.quantizer.fit(unit_rows(64, seed=4))
        cold.write([cold.quantizer_op()])
        stored = cold.meta_get("quantizer")
        assert set(stored) == {"sealed"} and len(stored["sealed"]) > OVERHEAD
        cold.close()
        with pytest.raises(EncryptionRequiredError):
            open_cold()
        again = open_cold(sealer=Sealer(KEY))
        assert again.quantizer.state() == cold.quantizer.state()

    def test_recode_all_reencodes_every_code(self, open_cold: OpenCold) -> None:
        cold = open_cold(sealer=Sealer(KEY))
        first = add(cold, "one", [memory(f"a{i}", "one", sensitive=i == 0) for i in range(5)], seed=1)
        second = add(cold, "two", [memory(f"b{i}", "two") for i in range(4)], seed=2)
        old = cold.quantizer
        fitted = make_quantizer("int8", DIM)
        fitted.fit(np.concatenate([first, second]))
        cold.recode_all(fitted.encode, old.decode)
        cold.quantizer = fitted
        for name, vectors in (("one", first), ("two", second)):
            rows = cold.load_namespace(cold.namespace_id(name))
            np.testing.assert_array_equal(rows.codes, fitted.encode(cold.originals(rows.ids)))
            assert not np.array_equal(rows.codes, old.encode(vectors))
        cold.close()
        keyless = open_cold()
        with pytest.raises(EncryptionRequiredError):  # the sensitive code was sealed again
            keyless.load_namespace(keyless.namespace_id("one"))

    def test_recode_all_commits_the_new_quantizer_with_the_codes(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        vectors = add(cold, "ns", [memory(f"m{i}") for i in range(8)], seed=6)
        old, fitted = cold.quantizer, make_quantizer("int8", DIM)
        fitted.fit(vectors)
        cold.quantizer = fitted
        cold.recode_all(fitted.encode, old.decode, then=[cold.quantizer_op(), cold.meta_op("calibrated_on", 8)])
        assert cold.meta_get("calibrated_on") == 8
        cold.close()
        again = open_cold()
        assert again.quantizer.state() == fitted.state()
        rows = again.load_namespace(again.namespace_id("ns"))
        np.testing.assert_array_equal(rows.codes, fitted.encode(again.originals(rows.ids)))

    def test_recode_all_without_originals_decodes_the_old_codes(self, open_cold: OpenCold) -> None:
        cold = open_cold(MemoryConfig(keep_originals="none"))
        add(cold, "ns", [memory(f"m{i}") for i in range(6)], seed=8)
        ns = cold.namespace_id("ns")
        before = cold.load_namespace(ns).codes
        old, fitted = cold.quantizer, make_quantizer("int8", DIM)
        fitted.fit(unit_rows(200, seed=8))
        cold.recode_all(fitted.encode, old.decode)
        np.testing.assert_array_equal(cold.load_namespace(ns).codes, fitted.encode(old.decode(before)))

    def test_expiry_rows_and_bounds(self, open_cold: OpenCold) -> None:
        cold = open_cold(sealer=Sealer(KEY))
        batch = [memory("a").replace(expires_at=100.0), memory("b"),
                 memory("c", sensitive=True).replace(expires_at=50.0), memory("d").replace(expires_at=300.0)]
        add(cold, "ns", batch)
        ns = cold.namespace_id("ns")
        assert cold.expired_rows(ns, 99.0) == (["c"], [True], 100.0)
        assert cold.expired_rows(ns, 100.0) == (["a", "c"], [False, True], 300.0)
        assert cold.expired_rows(ns, 1_000.0)[2] == math.inf
        assert (cold.row_expires_at(ns, "a"), cold.row_expires_at(ns, "b")) == (100.0, math.inf)
        assert cold.row_expires_at(ns, "missing") == math.inf
        assert cold.load_namespace(ns).expires == [100.0, math.inf, 50.0, 300.0]
        other = cold.namespace_id("other", create=True)
        assert cold.expiry_bounds() == {}
        cold.write([cold.expiry_bound_op(ns, 50.0), cold.expiry_bound_op(other, 7.5), cold.meta_op("expiry", 1)])
        assert cold.expiry_bounds() == {ns: 50.0, other: 7.5}
        cold.write([cold.expiry_bound_op(other, math.inf)])  # nothing in it expires any more
        assert cold.expiry_bounds() == {ns: 50.0}
        cold.write([("meta", cold.expiry_bound_op(ns, 1.0)[1], b"\xc1")])
        with pytest.raises(StorageError, match="expiry/"):
            cold.expiry_bounds()

    def test_everything_survives_a_reopen(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        add(cold, "ns", [memory("a"), memory("b")])
        ns = cold.namespace_id("ns")
        cold.write([cold.meta_op("dimension", DIM), cold.meta_op("store_schema", 3), ("extra", b"hub/k", b"v"),
                    ("texts", text_key(ns, "x"), b"a")])  # the engine writes store_schema when it creates a store
        size = cold.nbytes()
        cold.close()
        again = open_cold()
        assert again.namespace_id("ns") == ns and again.namespace_info(ns) == ("ns", 2, 1)
        assert [m.id for m in again.get_many(["a", "b"])] == ["a", "b"] and len(again) == 2
        assert again.meta_get("dimension") == DIM and list(again.extra_items(b"hub/")) == [(b"hub/k", b"v")]
        assert again.find_texts([text_key(ns, "x")]) == ["a"] and again.schema() == 3
        assert size > 0 and again.nbytes() > 0

    def test_nbytes_grows_with_what_is_stored(self, open_cold: OpenCold) -> None:
        cold = open_cold(MemoryConfig(durability="async")) if os.name == "posix" else open_cold()
        empty = cold.nbytes()
        ns = cold.namespace_id("big", create=True)
        vectors = unit_rows(2_000, seed=2)
        big = [memory(f"m{i:05d}", "big", text="x" * 400) for i in range(2_000)]
        cold.write(cold.memory_ops(ns, big, cold.quantizer.encode(vectors), vectors))
        assert cold.nbytes() > empty
        assert msgpack.unpackb(msgpack.packb(len(cold))) == 2_000

    def test_change_stamps_are_numbered_per_namespace_in_commit_order(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        add(cold, "ns", [memory("a"), memory("b")])
        add(cold, "other", [memory("c", "other")])
        ns, other = cold.namespace_id("ns"), cold.namespace_id("other")
        s1, s2, s3 = (bytes([i]) * STAMP_BYTES for i in (1, 2, 3))
        cold.write([stamp_op(ns, "a", s1, origin=b"here"), stamp_op(ns, "b", s1), stamp_op(other, "c", s1)])
        cold.write([stamp_op(ns, "a", s2)])  # a local change: descends from what is stored
        assert cold.change_seqs() == {ns: 3, other: 1}
        changed = cold.changes_after(ns, 0, 10)
        assert [(v.memory_id, v.stamp.seq, v.stamp.stamp, v.stamp.ancestry) for v in changed] == \
            [("b", 2, s1, []), ("a", 3, s2, [s1])]
        assert changed[1].live and changed[1].record == bytes(cold.stored_versions(ns, ["a"])[0].record)
        assert [v.memory_id for v in cold.changes_after(ns, 2, 10)] == ["a"]
        assert [v.memory_id for v in cold.changes_after(ns, 0, 1)] == ["b"]
        assert cold.changes_after(other, 1, 10) == []
        # A version from elsewhere keeps the ancestry it comes with; a delete leaves a tombstone.
        cold.write([*cold.delete_ops(ns, ["b"]), stamp_op(ns, "b", s3, deleted=True, ancestry=[s2, s1], origin=b"far")])
        tomb, missing = cold.stored_versions(ns, ["b", "nobody"])
        assert (tomb.stamp.deleted, tomb.stamp.ancestry, tomb.stamp.origin) == (True, [s2, s1], b"far")
        assert not tomb.live
        assert (tomb.record, tomb.row, missing.stamp) == (None, None, None)
        cold.write([stamp_op(ns, "b", None)])  # a tombstone every peer has seen
        assert cold.stored_versions(ns, ["b"])[0].stamp is None
        assert [v.memory_id for v in cold.changes_after(ns, 0, 10)] == ["a"] and cold.change_seqs()[ns] == 4

    def test_a_stamp_in_a_failing_write_is_not_numbered(self, open_cold: OpenCold) -> None:
        cold = open_cold()
        add(cold, "ns", [memory("a")])
        ns = cold.namespace_id("ns")
        with pytest.raises(StorageError):
            cold.write([stamp_op(ns, "a", b"\x01" * STAMP_BYTES), cold.count_op(9_999, 1)])
        assert cold.change_seqs().get(ns, 0) == 0 and cold.changes_after(ns, 0, 10) == []


class TestColdStoreContract(ColdStoreContract):
    """The contract on LMDB (always) and on PostgreSQL (marked ``postgres``)."""
