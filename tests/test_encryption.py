"""Encryption at rest: sensitive memories' text, metadata and vectors never reach the disk in clear."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import numpy as np
import pytest

from tiered_memory import (
    ConfigError,
    DecryptionError,
    EncryptionRequiredError,
    InvalidInputError,
    TieredMemory,
)
from tiered_memory.crypto import OVERHEAD, Sealer
from tiered_memory.records import unpack_record
from tiered_memory.tiers.cold import row_key

from .conftest import DIM, unit_rows

KEY = bytes(range(32))
SECRET_TEXT = "The launch code is PELICAN-7731"
SECRET_META = {"owner": "zebra-accountant", "pin": "8812-secret"}


def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def open_keyed(path: Path, key: bytes | None = KEY, **settings) -> TieredMemory:
    return TieredMemory(path, encoder=None, dimension=DIM, encryption_key=key, **settings)


def fill(path: Path, vectors: np.ndarray) -> list[str]:
    with open_keyed(path) as mem:
        ids = mem.add_many([f"public note {i}" for i in range(40)], vectors=vectors[:40])
        ids.append(mem.add(SECRET_TEXT, metadata=SECRET_META, vector=vectors[40], sensitive=True))
        mem.get(ids[-1])  # hot too
        mem.maintain()  # flush statistics and save the (sealed) warm graph
    return ids


def test_no_plaintext_of_a_sensitive_memory_on_disk(tmp_path: Path) -> None:
    vectors = unit_rows(41)
    ids = fill(tmp_path / "s", vectors)
    data = all_bytes(tmp_path / "s")
    for secret in (SECRET_TEXT, "PELICAN", "zebra-accountant", "8812-secret", "owner"):
        assert secret.encode() not in data, secret
    assert b"public note 3" in data  # the check can find plaintext: non-sensitive text is stored as is
    # the vectors too: neither the float16 original nor the float32 row the graph holds appears
    with open_keyed(tmp_path / "s") as mem:
        mem.preload(mem.namespaces())
        code = mem.catalog.blocks.code(mem.catalog.slot_of[ids[-1]])
        dequantized = mem.cold.quantizer.decode(code[None, :])[0]
    assert vectors[40].astype(np.float16).tobytes()[:16] not in data
    assert dequantized.astype(np.float32).tobytes()[:16] not in data
    assert code.tobytes()[:16] not in data


def test_sensitive_memories_work_normally_with_the_key(tmp_path: Path) -> None:
    vectors = unit_rows(41)
    ids = fill(tmp_path / "s", vectors)
    with open_keyed(tmp_path / "s") as mem:
        got = mem.get(ids[-1])
        assert got.text == SECRET_TEXT and got.metadata == SECRET_META and got.sensitive
        hit = mem.search(vector=vectors[40], k=1, where={"owner": "zebra-accountant"})[0]
        assert hit.memory.id == ids[-1]
        changed = mem.update(ids[-1], metadata={"owner": "someone-else"})
        assert changed.sensitive
    assert b"someone-else" not in all_bytes(tmp_path / "s")


def test_wrong_key_is_refused_at_open(tmp_path: Path) -> None:
    fill(tmp_path / "s", unit_rows(41))
    data_file = tmp_path / "s" / "cold" / "data.mdb"  # lock.mdb holds reader slots, which every open touches
    before = data_file.read_bytes()
    with pytest.raises(DecryptionError, match="wrong encryption key"):
        open_keyed(tmp_path / "s", key=os.urandom(32))
    assert data_file.read_bytes() == before


def test_missing_key_is_refused_clearly(tmp_path: Path) -> None:
    fill(tmp_path / "s", unit_rows(41))
    with pytest.raises(EncryptionRequiredError, match="encryption_key"):
        open_keyed(tmp_path / "s", key=None)
    with TieredMemory(tmp_path / "plain", encoder=None, dimension=DIM) as mem:
        with pytest.raises(EncryptionRequiredError, match="encryption_key"):
            mem.add("secret", vector=unit_rows(1)[0], sensitive=True)
        assert len(mem) == 0


def test_tampered_record_fails_to_open_instead_of_giving_garbage(tmp_path: Path) -> None:
    ids = fill(tmp_path / "s", unit_rows(41))
    with open_keyed(tmp_path / "s") as mem:
        key = ids[-1].encode()
        with mem.cold.env.begin(write=True) as txn:
            fields = msgpack.unpackb(txn.get(key, db=mem.cold.dbs["records"]), raw=False)
            blob = bytearray(fields[-1])
            blob[-1] ^= 1
            fields[-1] = bytes(blob)
            txn.put(key, msgpack.packb(fields, use_bin_type=True), db=mem.cold.dbs["records"])
    with open_keyed(tmp_path / "s") as mem, pytest.raises(DecryptionError, match="altered"):
        mem.get(ids[-1])  # records are read when used, not at open


def test_sealed_codes_carry_the_gcm_overhead(tmp_path: Path) -> None:
    ids = fill(tmp_path / "s", unit_rows(41))
    with open_keyed(tmp_path / "s") as mem, mem.cold.env.begin() as txn:
        ns_id = mem.cold.namespace_id(mem.record(ids[-1]).namespace)
        assert len(txn.get(row_key(ns_id, ids[-1]), db=mem.cold.dbs["nscodes"])) == DIM + OVERHEAD
        assert len(txn.get(row_key(ns_id, ids[0]), db=mem.cold.dbs["nscodes"])) == DIM
        assert len(txn.get(ids[-1].encode(), db=mem.cold.dbs["originals"])) == 2 * DIM + OVERHEAD


def test_sealed_namespace(tmp_path: Path) -> None:
    vectors = unit_rows(3)
    with open_keyed(tmp_path / "s") as mem:
        mem.seal_namespace("team/secrets")
        mid = mem.add("quarterly numbers are bad", namespace="team/secrets", vector=vectors[0])
        assert mem.get(mid).sensitive
        mem.add("hello", namespace="public", vector=vectors[1])
        with pytest.raises(InvalidInputError, match="unsealed"):
            mem.seal_namespace("public")
    with open_keyed(tmp_path / "s") as mem:
        assert mem.get(mem.add("more", namespace="team/secrets", vector=vectors[2])).sensitive
    assert b"quarterly numbers" not in all_bytes(tmp_path / "s")


def test_sealer_rejects_bad_keys_and_swapped_contexts() -> None:
    with pytest.raises(ConfigError, match="32"):
        Sealer(b"short")
    sealer = Sealer(KEY)
    blob = sealer.seal(b"data", b"record:a")
    assert sealer.open(blob, b"record:a") == b"data"
    with pytest.raises(DecryptionError):
        sealer.open(blob, b"record:b")  # moved to another memory: refused


def _rewrite_record(mem: TieredMemory, memory_id: str, change) -> bytes:
    """Re-pack one cold record with `change(fields)` applied, as someone without the key can."""
    key = memory_id.encode()
    with mem.cold.env.begin(write=True) as txn:
        fields = msgpack.unpackb(txn.get(key, db=mem.cold.dbs["records"]), raw=False)
        change(fields)
        data = msgpack.packb(fields, use_bin_type=True)
        txn.put(key, data, db=mem.cold.dbs["records"])
    return data


def test_a_sealed_memory_moved_to_another_namespace_fails_to_open(tmp_path: Path) -> None:
    """The sealed blob's associated data binds the namespace (record schema 3): a memory whose
    record is re-labelled into another tenant's namespace, sealed blob kept, is not decrypted there."""
    ids = fill(tmp_path / "s", unit_rows(41))
    sealer = Sealer(KEY)
    with open_keyed(tmp_path / "s") as mem:

        def move(fields: list) -> None:
            assert fields[2] == "default" and fields[-1] is not None
            fields[2] = "other-tenant"

        moved = _rewrite_record(mem, ids[-1], move)
    with pytest.raises(DecryptionError):
        unpack_record(moved, sealer)
    with open_keyed(tmp_path / "s") as mem, pytest.raises(DecryptionError):
        mem.get(ids[-1])  # records are opened when read, not at open
    # Labelling the moved record with the older schema (id-only associated data) does not help.
    downgraded = msgpack.unpackb(moved, raw=False)
    downgraded[0] = 2
    with pytest.raises(DecryptionError):
        unpack_record(msgpack.packb(downgraded, use_bin_type=True), sealer)


def test_records_sealed_before_schema_3_are_still_read(tmp_path: Path) -> None:
    ids = fill(tmp_path / "s", unit_rows(41))
    sealer = Sealer(KEY)
    with open_keyed(tmp_path / "s") as mem:

        def as_schema_2(fields: list) -> None:  # what a store written before namespaces were bound holds
            inner = msgpack.packb([SECRET_TEXT, SECRET_META], use_bin_type=True)
            fields[0], fields[-1] = 2, sealer.seal(inner, b"record:" + ids[-1].encode())

        _rewrite_record(mem, ids[-1], as_schema_2)
    with open_keyed(tmp_path / "s") as mem:
        memory = mem.get(ids[-1])
        assert (memory.text, memory.metadata, memory.sensitive) == (SECRET_TEXT, SECRET_META, True)
