"""Cold tier: the LMDB archive of msgpack records, int8 codes and optional float originals.

This is the source of truth. Every write is one LMDB transaction, committed (and, with
``durability="sync"``, fsync'ed) before the call that asked for it returns; LMDB never exposes a
half-written transaction, so a crash leaves either all of a write or none of it.

Layout (store schema 3). A namespace is the unit that is loaded into RAM, so everything a load
needs sits under one key prefix, the namespace's fixed-size id (4 bytes, big-endian): one range
read per database, never a scan of the archive.

- ``records``: memory id -> msgpack record (text, metadata, ...); read per memory, on demand.
- ``rows``: ns id + memory id -> the memory's catalog row (kind, importance, timestamps, use
  count, topic, tier, version, sensitive, and ``expires_at`` when it has one): what search, decay
  and the expiry sweep need, without the text.
- ``nscodes``: ns id + memory id -> int8 code (sealed for sensitive memories).
- ``originals``: memory id -> float16/32 original (rescoring, re-calibration).
- ``namespaces``: ``n`` + name -> ns id; ``i`` + ns id -> [name, count, generation]. The
  generation counts writes to that namespace: a saved warm graph remembers the one it matches.
- ``meta``: store-level state (dimension, quantizer, key check, per-namespace topic models keyed
  by ns id, ``expiry/<ns id>``: a lower bound on the namespace's expiries); ``extra``: features'
  records (agent hubs).
- ``stamps``: ns id + memory id -> the memory's change stamp (tombstones too, see
  :mod:`tiered_memory.sync`); ``changes``: ns id + change number -> memory id, each namespace's
  change log in commit order (its last number in ``meta`` under ``sync/seq/`` + ns id).

Stores of schema 2 (codes keyed by memory id, no rows) are migrated once, in one transaction,
by the first read-write open.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import numpy as np

from tiered_memory.config import MemoryConfig
from tiered_memory.crypto import Sealer
from tiered_memory.errors import EncryptionRequiredError, SchemaVersionError, StorageError
from tiered_memory.quantization import Quantizer, make_quantizer, quantizer_from_state
from tiered_memory.records import TIERS_BY_CODE, Memory, unpack_record
from tiered_memory.tiers.cold_ops import (
    EXPIRY_PREFIX,
    SEQ,
    STAMPS,
    ColdOps,
    NamespaceRows,
    Op,
    StoredStamp,
    StoredVersion,
    expiry_bound_of,
    memory_row,
    namespace_rows,
    ns_prefix,
    row_key,
    stamp_fields,
    stamped,
    text_key,
)

# The key layout and row packing live in cold_ops (shared by every cold store); the engine and the
# tier manager import them from here.
from tiered_memory.tiers.cold_ops import NS_ID as _NS_ID
from tiered_memory.tiers.cold_ops import memory_key as _key
from tiered_memory.tiers.cold_ops import normalised_text as normalised_text
from tiered_memory.tiers.cold_ops import pack_row as pack_row
from tiered_memory.tiers.cold_ops import unpack_row as _unpack_row
from tiered_memory.tiers.cold_store import ColdStore

log = logging.getLogger(__name__)

STORE_SCHEMA = 3
_DATABASES = ("records", "codes", "originals", "meta", "extra", "rows", "nscodes", "namespaces", "texts")
# Change stamps (offline sync): ``stamps`` ns id + memory id -> StoredStamp; ``changes`` ns id +
# 8-byte sequence number -> memory id, the per-namespace log in commit order. Added after the
# databases above: a store written before them gets them at its next read-write open, and a
# read-only opener of such a store reads them as empty.
_SYNC_DATABASES = ("stamps", "changes")
_SEQ_PREFIX = b"sync/seq/"  # + ns id (4 bytes): meta keys of each namespace's last change number


def _ceiling(config: MemoryConfig, deleting: bool) -> int:
    """The most the map may grow to. A write that deletes memories may go a reserve past
    max_map_size_bytes: a delete writes a tombstone (sync) and copies the pages it changes before
    the old ones are free, so a store filled to its ceiling could otherwise never be emptied.
    Readers map the ceiling with the reserve (a map larger than theirs fails their reads)."""
    maximum = config.max_map_size_bytes
    return maximum + max(1 << 20, maximum // 64) if deleting else maximum


def _range_items(cursor: lmdb.Cursor, prefix: bytes) -> tuple[list[bytes], list[bytes]]:
    """Keys and values of every entry whose key starts with prefix, in key order."""
    keys: list[bytes] = []
    values: list[bytes] = []
    if cursor.set_range(prefix):
        for key, value in cursor.iternext():
            if not key.startswith(prefix):
                break
            keys.append(key)
            values.append(value)
    return keys, values


class ColdTier(ColdOps, ColdStore):
    """LMDB environment with the sub-databases described in the module doc.

    ``extra`` belongs to features layered on the engine (agent grants, histories, topic
    models); they write to it through :meth:`write` so their state commits atomically with
    the memories it refers to.
    """

    name = "cold"

    def __init__(self, path: Path, config: MemoryConfig, read_only: bool = False) -> None:
        self.path = path
        self.config = config
        self.read_only = read_only
        self.dimension = 0  # set by use_dimension() once the engine has checked it against meta
        durable = config.durability == "sync"
        try:
            self.env = lmdb.open(
                str(path),
                # A reader maps the most the writer may ever grow to (address space, not memory):
                # once the writer's map outgrows a reader's, every read fails with MDB_MAP_RESIZED.
                map_size=_ceiling(config, deleting=True) if read_only else config.map_size_bytes,
                subdir=True,
                max_dbs=len(_DATABASES) + len(_SYNC_DATABASES),
                max_readers=config.max_readers,
                sync=durable,
                metasync=durable,
                readonly=read_only,
                create=not read_only,
            )
        except lmdb.Error as err:
            raise StorageError(f"cannot open the cold tier at {path}: {err}") from err
        self._check_file_size()
        # A process killed while reading leaves its reader slot taken; free such slots now.
        self.env.reader_check()
        # Another process may have grown the map; LMDB adopts the larger size at open.
        self.map_size = max(self.env.info()["map_size"], config.map_size_bytes)
        try:
            self.dbs = {name: self.env.open_db(name.encode(), create=not read_only) for name in _DATABASES}
        except lmdb.NotFoundError as err:
            self.env.close()
            if read_only:
                raise SchemaVersionError(f"{path.parent} uses an older layout (schema 2) or is incomplete: open it "
                                         "once without read_only=True to upgrade it, then open it read-only") from err
            raise StorageError(f"the cold tier at {path} lacks its databases ({err}); was it created by "
                               "tiered_memory?") from err
        except lmdb.Error as err:
            raise StorageError(f"the cold tier at {path} lacks its databases ({err}); was it created by "
                               "tiered_memory?") from err
        for name in _SYNC_DATABASES:
            try:
                self.dbs[name] = self.env.open_db(name.encode(), create=not read_only)
            except lmdb.NotFoundError:  # read-only, and no change was ever stamped: read as empty
                self.dbs[name] = None
        self.originals_dtype = {"none": None, "float16": np.float16, "float32": np.float32}[config.keep_originals]
        self.quantizer: Quantizer = make_quantizer("int8", 1)
        self.sealer: Sealer | None = None  # set by the engine when the store has an encryption key
        self._ns_ids: dict[str, int] = {}  # names seen so far -> ns id (ids never change once given)

    def _begin(self, **options: Any) -> lmdb.Transaction:
        """A transaction; more threads reading at once than LMDB has reader slots is a
        StorageError that says what to raise, not lmdb.ReadersFullError (issue 11.11)."""
        try:
            return self.env.begin(**options)
        except lmdb.ReadersFullError as err:
            raise StorageError(f"more threads are reading {self.path} at once than max_readers="
                               f"{self.config.max_readers} allows; raise MemoryConfig.max_readers or read "
                               "from fewer threads") from err

    def _check_file_size(self) -> None:
        """LMDB maps data.mdb and trusts it: pages past the end of a truncated file kill the
        process with SIGBUS on first touch. The meta page says how many pages are in use."""
        info, page_size = self.env.info(), self.env.stat()["psize"]
        needed = (info["last_pgno"] + 1) * page_size
        actual = os.stat(self.path / "data.mdb").st_size
        if actual < needed:
            self.env.close()
            raise StorageError(f"{self.path / 'data.mdb'} is truncated ({actual:,} bytes, {needed:,} in use): "
                               "the store is damaged; restore it from a backup")

    def use_dimension(self, dimension: int) -> None:
        """Fix the vector dimension and load the quantizer persisted with the store (if any)."""
        self.dimension = dimension
        state = self.meta_get("quantizer")
        if isinstance(state, dict) and "sealed" in state:
            if self.sealer is None:
                raise EncryptionRequiredError(f"{self.path.parent} keeps its quantizer sealed: open it with its "
                                              "encryption_key=")
            state = msgpack.unpackb(self.sealer.open(state["sealed"], b"quantizer"), raw=False)
        if state is None:
            self.quantizer = make_quantizer("int8", dimension, self.config.clip_quantile)
        else:
            self.quantizer = quantizer_from_state(state)

    def close(self) -> None:
        self.env.close()

    # -- writing ---------------------------------------------------------------------------

    def write(self, ops: Iterable[Op], grow: bool = True) -> int:
        """Apply puts and deletes in one transaction; returns the store's new generation number.

        The generation counts committed writes; saved warm indexes remember the generation they
        match, so an index older than the archive is detected at open. A full map is grown and
        the whole transaction retried, so ``MapFullError`` never reaches the caller; with
        grow=False (a writer holding only the engine's shared lock: growing needs every other
        transaction of the process closed) it does, and nothing was written.
        """
        ops = list(ops)
        while True:
            try:
                with self._begin(write=True) as txn:
                    for db, key, value in ops:
                        if db == "nscount":
                            self._count_in(txn, key, int.from_bytes(value or b"", "big", signed=True))
                        elif db == STAMPS:
                            self._stamp_in(txn, key, value)
                        elif value is None:
                            txn.delete(key, db=self.dbs[db])
                        else:
                            txn.put(key, value, db=self.dbs[db])
                    meta = self.dbs["meta"]
                    generation = msgpack.unpackb(txn.get(b"generation", b"\x00", db=meta)) + 1
                    txn.put(b"generation", msgpack.packb(generation), db=meta)
                return generation
            except lmdb.MapFullError:
                if not grow:
                    raise
                self._grow(deleting=any(db == "records" and value is None for db, _, value in ops))
            except lmdb.Error as err:
                raise StorageError(
                    f"writing to the cold tier at {self.path} failed ({err}); nothing of this call was "
                    "stored. Free disk space or check permissions, then retry"
                ) from err

    def _count_in(self, txn: lmdb.Transaction, ns_key: bytes, delta: int) -> None:
        """Inside a write: add delta to a namespace's count and bump its generation."""
        db = self.dbs["namespaces"]
        data = txn.get(b"i" + ns_key, db=db)
        if data is None:
            raise StorageError(f"namespace id {ns_key.hex()} is not in the store: the store is damaged")
        name, count, generation = msgpack.unpackb(data, raw=False)
        txn.put(b"i" + ns_key, msgpack.packb([name, count + delta, generation + 1], use_bin_type=True), db=db)

    def _stamp_in(self, txn: lmdb.Transaction, key: bytes, value: bytes | None) -> None:
        """Inside a write: a memory's new stamp row under the namespace's next change number (the
        old row's log entry removed), or the row dropped (value None)."""
        stamps, changes, meta = self.dbs["stamps"], self.dbs["changes"], self.dbs["meta"]
        ns_key = key[:4]
        old = txn.get(key, db=stamps)
        previous = None if old is None else StoredStamp.unpack(old, key[4:].decode("utf-8", "replace"))
        fields = stamp_fields(previous, key, value)
        if previous is not None:
            txn.delete(ns_key + SEQ.pack(previous.seq), db=changes)
        if fields is None:
            txn.delete(key, db=stamps)
            return
        last = txn.get(_SEQ_PREFIX + ns_key, db=meta)
        seq = (0 if last is None else msgpack.unpackb(last)) + 1
        txn.put(_SEQ_PREFIX + ns_key, msgpack.packb(seq), db=meta)
        txn.put(key, stamped(previous, fields, seq).pack(), db=stamps)
        txn.put(ns_key + SEQ.pack(seq), key[4:], db=changes)

    @staticmethod
    def exclusive(name: str) -> contextlib.AbstractContextManager[None]:
        """One process writes an LMDB store (the directory lock): nothing more to hold."""
        return contextlib.nullcontext()

    # -- change stamps (offline sync) ----------------------------------------------------------

    def change_seqs(self) -> dict[int, int]:
        """ns id -> the number of its latest change, for every namespace that has one."""
        with self._begin(db=self.dbs["meta"]) as txn:
            keys, values = _range_items(txn.cursor(), _SEQ_PREFIX)
        return {_NS_ID.unpack(key[len(_SEQ_PREFIX):])[0]: msgpack.unpackb(data) for key, data in zip(keys, values)}

    def changes_after(self, ns_id: int, after: int, limit: int) -> list[StoredVersion]:
        """The namespace's memories changed after change number `after` (the latest change of
        each, in change order, at most `limit`), with their stored bytes, from one snapshot."""
        if self.dbs["changes"] is None:
            return []
        prefix = ns_prefix(ns_id)
        with self._begin(buffers=True) as txn:
            cursor = txn.cursor(db=self.dbs["changes"])
            ids: list[str] = []
            if cursor.set_range(prefix + SEQ.pack(after + 1)):
                for key, value in cursor:
                    if not bytes(key[:4]) == prefix or len(ids) >= limit:
                        break
                    ids.append(bytes(value).decode("utf-8"))
            return self._versions_in(txn, ns_id, ids)

    def stored_versions(self, ns_id: int, memory_ids: list[str]) -> list[StoredVersion]:
        """These memories' stamp rows and stored bytes, from one snapshot."""
        with self._begin(buffers=True) as txn:
            return self._versions_in(txn, ns_id, memory_ids)

    def _versions_in(self, txn: lmdb.Transaction, ns_id: int, memory_ids: list[str]) -> list[StoredVersion]:
        out = []
        dbs = self.dbs
        for memory_id in memory_ids:
            key, rkey = _key(memory_id), row_key(ns_id, memory_id)
            stamp = None if dbs["stamps"] is None else txn.get(rkey, db=dbs["stamps"])

            def value(db: str, key: bytes) -> bytes | None:
                found = txn.get(key, db=dbs[db])
                return None if found is None else bytes(found)

            row = value("rows", rkey)
            out.append(StoredVersion(
                memory_id, None if stamp is None else StoredStamp.unpack(bytes(stamp), memory_id),
                value("records", key) if row is not None else None, row,
                value("nscodes", rkey) if row is not None else None,
                value("originals", key) if row is not None else None))
        return out

    # -- namespaces --------------------------------------------------------------------------

    def namespace_id(self, name: str, create: bool = False) -> int | None:
        """The fixed-size id of a namespace; with create=True a new namespace gets one (durably)."""
        ns_id = self._ns_ids.get(name)
        if ns_id is not None:
            return ns_id
        with self._begin(db=self.dbs["namespaces"]) as txn:
            data = txn.get(b"n" + name.encode("utf-8"))
        if data is not None:
            ns_id = _NS_ID.unpack(data)[0]
        elif create:
            ns_id = self.meta_get("next_namespace_id", 1)
            self.write([
                ("namespaces", b"n" + name.encode("utf-8"), _NS_ID.pack(ns_id)),
                ("namespaces", b"i" + _NS_ID.pack(ns_id), msgpack.packb([name, 0, 0], use_bin_type=True)),
                self.meta_op("next_namespace_id", ns_id + 1),
            ])
        else:
            return None
        self._ns_ids[name] = ns_id
        return ns_id

    def namespace_info(self, ns_id: int) -> tuple[str, int, int]:
        """(name, memory count, generation) of a namespace id."""
        with self._begin(db=self.dbs["namespaces"]) as txn:
            data = txn.get(b"i" + _NS_ID.pack(ns_id))
        if data is None:
            raise StorageError(f"namespace id {ns_id} is not in the store: the store is damaged")
        name, count, generation = msgpack.unpackb(data, raw=False)
        return name, count, generation

    def namespace_counts(self) -> list[tuple[str, int]]:
        """(name, memory count) of every namespace the store has seen, in id order."""
        out = []
        with self._begin(db=self.dbs["namespaces"]) as txn:
            cursor = txn.cursor()
            if cursor.set_range(b"i"):
                for key, data in cursor:
                    if not bytes(key).startswith(b"i"):
                        break
                    name, count, _ = msgpack.unpackb(data, raw=False)
                    out.append((name, count))
        return out

    def load_namespace(self, ns_id: int, count_hint: int = 0) -> NamespaceRows:
        """Every catalog row and int8 code of one namespace: one range read of each database
        (both hold the same keys in the same order), decoded by namespace_rows."""
        prefix = ns_prefix(ns_id)
        with self._begin() as txn:
            keys, rows = _range_items(txn.cursor(db=self.dbs["rows"]), prefix)
            code_keys, codes = _range_items(txn.cursor(db=self.dbs["nscodes"]), prefix)
        if code_keys != keys:  # a row without its code (damage): namespace_rows names it
            code_of = dict(zip(code_keys, codes))
            codes = [code_of.get(key) for key in keys]
        return namespace_rows(self.dimension, [key[4:].decode("utf-8") for key in keys], keys, rows, codes,
                              self._plain_code)

    def find_texts(self, keys: list[bytes | None]) -> list[str | None]:
        """The memory id each dedup key names (None: no such text, or no key)."""
        with self._begin(db=self.dbs["texts"]) as txn:
            found = [None if key is None else txn.get(key) for key in keys]
        return [None if value is None else bytes(value).decode("utf-8") for value in found]

    def namespace_ids(self, ns_id: int) -> list[str]:
        """Ids of a namespace's memories in key order (keys only: no row is decoded)."""
        prefix = ns_prefix(ns_id)
        out = []
        with self._begin(db=self.dbs["rows"]) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    out.append(key[4:].decode("utf-8"))
        return out

    # -- expiry (see tiered_memory/tiering/expiry.py) ---------------------------------------------

    def expired_rows(self, ns_id: int, now: float) -> tuple[list[str], list[bool], float]:
        """One range read of a namespace's rows (codes untouched, nothing decrypted): the ids and
        sensitive flags of memories whose expiry is at or before `now`, and the earliest expiry
        of the others (math.inf: none expires)."""
        prefix = ns_prefix(ns_id)
        expired: list[str] = []
        sealed: list[bool] = []
        earliest = math.inf
        with self._begin(db=self.dbs["rows"]) as txn:
            keys, rows = _range_items(txn.cursor(), prefix)
        for key, data in zip(keys, rows):
            row = _unpack_row(key, data)
            if row[10] <= now:
                expired.append(key[4:].decode("utf-8"))
                sealed.append(row[9])
            elif row[10] < earliest:
                earliest = row[10]
        return expired, sealed, earliest

    def row_expires_at(self, ns_id: int, memory_id: str) -> float:
        """The expiry in a memory's catalog row (math.inf: never, or no such row)."""
        rkey = row_key(ns_id, memory_id)
        with self._begin(db=self.dbs["rows"]) as txn:
            data = txn.get(rkey)
        return math.inf if data is None else float(_unpack_row(rkey, data)[10])

    def expiry_bounds(self) -> dict[int, float]:
        """ns id -> a lower bound on the expiries of the namespace's memories, for every namespace
        that has held a memory that expires (one range read of ``meta``; empty in most stores)."""
        with self._begin(db=self.dbs["meta"]) as txn:
            keys, values = _range_items(txn.cursor(), EXPIRY_PREFIX)
        return dict(expiry_bound_of(key, data) for key, data in zip(keys, values))

    def _grow(self, deleting: bool = False) -> None:
        # Called with the engine's write lock held, so no transaction of this process is open.
        new_size = min(self.map_size * 2, _ceiling(self.config, deleting))
        if new_size <= self.map_size:
            raise StorageError(
                f"the cold tier is full at max_map_size_bytes={self.config.max_map_size_bytes:,}; "
                "raise MemoryConfig.max_map_size_bytes or delete memories. Nothing of this call was stored"
            )
        log.info("growing the LMDB map of %s from %d to %d bytes", self.path, self.map_size, new_size)
        self.env.set_mapsize(new_size)
        self.map_size = new_size

    # -- the tier contract -----------------------------------------------------------------

    def put(self, memory: Memory, vector: np.ndarray) -> None:
        """Store one memory durably (quantizing its vector with the store's quantizer)."""
        vectors = vector.reshape(1, -1).astype(np.float32)
        ns_id = self.namespace_id(memory.namespace, create=True)
        if memory.id in self:
            self.discard(memory.id)
        self.write(self.memory_ops(ns_id, [memory], self.quantizer.encode(vectors), vectors))

    def discard(self, memory_id: str) -> bool:
        memory = self.get(memory_id)
        if memory is None:
            return False
        self.write(self.delete_ops(self.namespace_id(memory.namespace), [memory_id]))
        return True

    def get(self, memory_id: str) -> Memory | None:
        data = self._read("records", memory_id)
        return None if data is None else unpack_record(data, self.sealer)

    def get_many(self, memory_ids: Iterable[str]) -> list[Memory | None]:
        with self._begin(db=self.dbs["records"]) as txn:
            found = [txn.get(_key(memory_id)) for memory_id in memory_ids]
        return [None if data is None else unpack_record(data, self.sealer) for data in found]

    def vector(self, memory_id: str) -> np.ndarray | None:
        """The best float vector kept: the original if stored, else the decoded code."""
        original = self.originals([memory_id])
        if original is not None:
            return original[0]
        memory = self.get(memory_id)
        ns_id = None if memory is None else self.namespace_id(memory.namespace)
        if ns_id is None:
            return None
        rkey = row_key(ns_id, memory_id)
        with self._begin(db=self.dbs["nscodes"]) as txn:
            code = txn.get(rkey)
        if code is None:
            return None
        code = self._plain_vector_bytes(memory_id, "code", code, self.dimension, rkey)
        return self.quantizer.decode(np.frombuffer(code, dtype=np.int8).reshape(1, -1))[0]

    def fetch(self, memory_ids: list[str], originals: bool) -> list[tuple[Memory | None, np.ndarray | None]]:
        """Records (and float originals, if asked and kept) of several memories, in one read."""
        out: list[tuple[Memory | None, np.ndarray | None]] = []
        want_originals = originals and self.originals_dtype is not None
        with self._begin(buffers=True) as txn:
            records, kept = self.dbs["records"], self.dbs["originals"]
            for memory_id in memory_ids:
                key = _key(memory_id)
                data = txn.get(key, db=records)
                memory = None if data is None else unpack_record(data, self.sealer)
                vector = None
                if want_originals and memory is not None:
                    raw = txn.get(key, db=kept)
                    if raw is not None:
                        vector = self._original_vector(memory_id, raw)
                out.append((memory, vector))
        return out

    def originals(self, memory_ids: list[str]) -> np.ndarray | None:
        """Float32 originals of these memories, or None if originals are not kept (or one is missing)."""
        if self.originals_dtype is None:
            return None
        out = np.empty((len(memory_ids), self.dimension), dtype=np.float32)
        with self._begin(db=self.dbs["originals"], buffers=True) as txn:
            for i, memory_id in enumerate(memory_ids):
                data = txn.get(_key(memory_id))
                if data is None:
                    return None
                out[i] = self._original_vector(memory_id, data)
        return out

    def __contains__(self, memory_id: object) -> bool:
        return isinstance(memory_id, str) and self._read("records", memory_id) is not None

    def __len__(self) -> int:
        with self._begin() as txn:
            return int(txn.stat(self.dbs["records"])["entries"])

    def ids(self) -> Iterator[str]:
        with self._begin(db=self.dbs["records"]) as txn:
            keys = [bytes(key).decode("utf-8") for key in txn.cursor().iternext(keys=True, values=False)]
        return iter(keys)

    def nbytes(self) -> int:
        """Bytes the archive occupies on disk (allocated blocks, not the map's reserved size)."""
        data_file = self.path / "data.mdb"
        try:
            return os.stat(data_file).st_blocks * 512
        except OSError:
            return 0

    # -- reading in bulk ---------------------------------------------------------------------

    def load_all(self) -> tuple[list[Memory], np.ndarray]:
        """Every memory (statistics from its catalog row) and its int8 code, in key order.

        A whole-archive pass for verification and export: opening a store never calls it."""
        memories: list[Memory] = []
        names = {}
        with self._begin(db=self.dbs["namespaces"]) as txn:
            for key, data in txn.cursor():
                if bytes(key).startswith(b"i"):
                    names[_NS_ID.unpack(bytes(key)[1:5])[0]] = msgpack.unpackb(data, raw=False)[0]
        codes = []
        for ns_id, name in sorted(names.items()):
            rows = self.load_namespace(ns_id)
            contents = self.get_many(rows.ids)
            for i, memory in enumerate(contents):
                if memory is None:
                    raise StorageError(f"memory {rows.ids[i]!r} has a catalog row but no record: the store is damaged")
                memories.append(Memory(memory.id, name, memory.text, rows.kinds[i], memory.metadata,
                                       rows.created[i], rows.updated[i], rows.accessed[i], rows.uses[i],
                                       rows.importance[i], rows.topic[i], TIERS_BY_CODE[rows.tier[i]],
                                       rows.version[i], bool(rows.sensitive[i]),
                                       None if rows.expires[i] == math.inf else rows.expires[i]))
            codes.append(rows.codes)
        order = sorted(range(len(memories)), key=lambda i: memories[i].id)
        stacked = np.concatenate(codes) if codes else np.zeros((0, self.dimension), dtype=np.int8)
        return [memories[i] for i in order], stacked[order] if len(order) else stacked

    def schema(self) -> int:
        """The store layout's schema: 3, or 2 for a store written before namespaces loaded lazily."""
        stored = self.meta_get("store_schema")
        if stored is not None:
            return stored
        with self._begin() as txn:
            empty = int(txn.stat(self.dbs["records"])["entries"]) == 0
        return STORE_SCHEMA if empty else 2

    def migrate_from_schema_2(self) -> int:
        """Re-key a schema-2 store (codes by memory id) into rows and codes by namespace, in one
        transaction; returns how many memories moved. Sealed codes are re-sealed under their new
        row keys, so a store with sealed memories needs its key here."""
        moved = 0
        next_id = self.meta_get("next_namespace_id", 1)
        ns_ids: dict[str, int] = {}
        counts: dict[int, int] = {}
        sealed_any = False
        with self._begin(write=True) as txn:
            records, old_codes = self.dbs["records"], self.dbs["codes"]
            for key, data in txn.cursor(db=records):
                memory = unpack_record(bytes(data), self.sealer)
                ns_id = ns_ids.get(memory.namespace)
                if ns_id is None:
                    ns_id = ns_ids[memory.namespace] = next_id
                    next_id += 1
                code = txn.get(bytes(key), db=old_codes)
                if code is None:
                    raise StorageError(f"memory {memory.id!r} has a record but no code; the store is damaged "
                                       "(restore it from a backup)")
                plain = self._plain_vector_bytes(memory.id, "code", bytes(code), self.dimension)
                rkey = row_key(ns_id, memory.id)
                txn.put(rkey, memory_row(memory), db=self.dbs["rows"])
                txn.put(rkey, self._vector_bytes(memory.id, memory.sensitive, "code", plain, rkey),
                        db=self.dbs["nscodes"])
                counts[ns_id] = counts.get(ns_id, 0) + 1
                if not memory.sensitive:
                    txn.put(text_key(ns_id, memory.text), memory.id.encode("utf-8"), db=self.dbs["texts"],
                            overwrite=False)
                sealed_any = sealed_any or memory.sensitive
                moved += 1
            txn.drop(old_codes, delete=False)
            for name, ns_id in ns_ids.items():
                txn.put(b"n" + name.encode("utf-8"), _NS_ID.pack(ns_id), db=self.dbs["namespaces"])
                txn.put(b"i" + _NS_ID.pack(ns_id), msgpack.packb([name, counts[ns_id], 1], use_bin_type=True),
                        db=self.dbs["namespaces"])
            meta = self.dbs["meta"]
            for topics_key in [bytes(k) for k in txn.cursor(db=meta).iternext(values=False)
                               if bytes(k).startswith(b"topics/")]:
                name = topics_key[len(b"topics/"):].decode("utf-8")
                state = txn.get(topics_key, db=meta)
                txn.delete(topics_key, db=meta)
                if name in ns_ids:
                    txn.put(b"topics/" + ns_prefix(ns_ids[name]).hex().encode(), state, db=meta)
            txn.put(b"next_namespace_id", msgpack.packb(next_id), db=meta)
            if sealed_any:
                txn.put(b"has_sealed", msgpack.packb(True), db=meta)
            txn.put(b"store_schema", msgpack.packb(STORE_SCHEMA), db=meta)
        self._ns_ids.update(ns_ids)
        return moved

    def recode_all(self, encode: Any, decode_old: Any, then: Iterable[Op] = ()) -> None:
        """Re-encode every stored int8 code (re-calibration), from the originals when kept, else
        from the old codes, streaming through the archive in one write transaction; the puts in
        `then` (the new quantizer's state) commit in the same transaction."""
        with self._begin(write=True) as txn:
            codes_db, originals_db = self.dbs["nscodes"], self.dbs["originals"]
            cursor = txn.cursor(db=codes_db)
            for key, stored in list(cursor):
                key, stored = bytes(key), bytes(stored)
                memory_id = key[4:].decode("utf-8")
                sealed = len(stored) != self.dimension
                vector = None
                original = txn.get(_key(memory_id), db=originals_db) if self.originals_dtype is not None else None
                if original is not None:
                    vector = self._original_vector(memory_id, bytes(original)).reshape(1, -1)
                if vector is None:
                    raw = self._plain_vector_bytes(memory_id, "code", stored, self.dimension, key)
                    vector = decode_old(np.frombuffer(raw, dtype=np.int8).reshape(1, -1))
                code = encode(vector)[0].tobytes()
                txn.put(key, self._vector_bytes(memory_id, sealed, "code", code, key), db=codes_db)
            for db, key, value in then:
                txn.put(key, value, db=self.dbs[db])
            meta = self.dbs["meta"]
            generation = msgpack.unpackb(txn.get(b"generation", b"\x00", db=meta)) + 1
            txn.put(b"generation", msgpack.packb(generation), db=meta)

    def meta_get(self, name: str, default: Any = None) -> Any:
        with self._begin(db=self.dbs["meta"]) as txn:
            data = txn.get(name.encode())
        if data is None:
            return default
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as err:
            raise StorageError(f"the store's {name!r} entry is not readable ({err!r}): the store is damaged; "
                               "restore it from a backup") from err

    def extra_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Entries of the ``extra`` database whose key starts with prefix, in key order."""
        with self._begin(db=self.dbs["extra"]) as txn:
            keys, values = _range_items(txn.cursor(), prefix)
        yield from zip(keys, values)

    def get_raw(self, db: str, memory_id: str) -> bytes | None:
        """The stored bytes of one memory's value in a database keyed by memory id (verification)."""
        if db not in ("records", "originals"):
            raise ValueError(f"{db!r} is not keyed by memory id")
        return self._read(db, memory_id)

    def _read(self, db: str, memory_id: str) -> bytes | None:
        with self._begin(db=self.dbs[db]) as txn:
            return txn.get(_key(memory_id))

    # == As stored: for tools that copy or check a whole store (tiered_memory.inspection) =========
    # Values come back as the disk holds them (sealed ones sealed); the engine never calls these.

    def stored_items(self, db: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of one database as stored, in key order, from one read transaction held
        while the caller iterates."""
        with self._begin(db=self.dbs[db]) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return
            for key, value in cursor:
                if not key.startswith(prefix):
                    return
                yield key, value

    def stored_value(self, db: str, key: bytes) -> bytes | None:
        """One value of any database as stored (None if absent)."""
        with self._begin(db=self.dbs[db]) as txn:
            return txn.get(key)

    @staticmethod
    def stored_row(key: bytes, data: bytes) -> list[Any]:
        """A catalog row's fields (kind, importance, created, updated, accessed, uses, topic, tier,
        version, sensitive), checked: StorageError names the memory of a damaged one."""
        return _unpack_row(key, data)

    def plain_vector(self, field: str, key: bytes, stored: bytes) -> bytes:
        """A stored int8 code (field "code", key: its row key) or float original ("original", key:
        its memory id) as plain bytes, opened with the store's key if sealed; sizes are checked."""
        if field == "code":
            return self._plain_vector_bytes(key[_NS_ID.size:].decode("utf-8", "replace"), "code", stored,
                                            self.dimension, key)
        if field == "original":
            return self._plain_vector_bytes(key.decode("utf-8", "replace"), "original", stored, self._original_size)
        raise ValueError(f"field must be 'code' or 'original', not {field!r}")

    def namespace_entries(self) -> list[tuple[int, str, int, int]]:
        """(ns id, name, memory count, generation) of every namespace the store has seen, in id order."""
        out = []
        for key, data in self.stored_items("namespaces", b"i"):
            try:
                name, count, generation = msgpack.unpackb(data, raw=False)
                ns_id = _NS_ID.unpack(key[1:])[0]
                ok = isinstance(name, str) and type(count) is int and type(generation) is int
            except (ValueError, TypeError, struct.error, msgpack.UnpackException):
                ok = False
            if not ok:
                raise StorageError(f"the namespace entry {key[1:].hex()} is damaged; restore the store from a backup")
            out.append((ns_id, name, count, generation))
        return out

    @staticmethod
    def namespace_ops(ns_id: int, name: str, count: int, generation: int) -> list[Op]:
        """Puts that give a namespace this id, name, count and generation (an exact copy's)."""
        return [("namespaces", b"n" + name.encode("utf-8"), _NS_ID.pack(ns_id)),
                ("namespaces", b"i" + _NS_ID.pack(ns_id), msgpack.packb([name, count, generation], use_bin_type=True))]
