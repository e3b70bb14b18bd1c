"""What every cold store shares: the layout of keys and catalog rows, and the builders of write ops.

The engine hands a cold store's :meth:`write` lists of ``(database, key, value)`` tuples, some it
builds itself (dedup texts, catalog rows, extra records), most through the builders here. Keys are
the LMDB layout (store schema 3, see :mod:`tiered_memory.tiers.cold`); every cold store takes the same
tuples, so the engine never knows which store it writes to. Sealing a sensitive memory's vectors
happens here too, before a value reaches any store: a store only ever sees sealed bytes.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
import numpy as np

from tiered_memory.crypto import OVERHEAD, Sealer
from tiered_memory.errors import ConcurrentUpdateError, EncryptionRequiredError, StorageError
from tiered_memory.quantization import Quantizer
from tiered_memory.records import TIER_CODES, TIERS_BY_CODE, Memory, pack_record

# (database, key, value or None to delete); database "nscount" carries (ns id, count delta).
Op = tuple[str, bytes, bytes | None]

NS_ID = struct.Struct(">I")
_NS_ID = NS_ID


def memory_key(memory_id: str) -> bytes:
    return memory_id.encode("utf-8")


def ns_prefix(ns_id: int) -> bytes:
    return _NS_ID.pack(ns_id)


def row_key(ns_id: int, memory_id: str) -> bytes:
    return _NS_ID.pack(ns_id) + memory_id.encode("utf-8")


def normalised_text(text: str) -> str:
    """What dedup compares: case-folded, white space collapsed."""
    return " ".join(text.casefold().split())


def text_key(ns_id: int, text: str) -> bytes:
    """ns id + a 16-byte digest of the normalised text: the dedup index's key (never the text)."""
    return _NS_ID.pack(ns_id) + hashlib.blake2b(normalised_text(text).encode("utf-8"), digest_size=16).digest()


class NamespaceRows:
    """What one range read of a namespace returns: ids, catalog columns, int8 codes."""

    __slots__ = ("ids", "kinds", "importance", "created", "updated", "accessed", "uses", "topic", "tier",
                 "version", "sensitive", "expires", "codes")

    def __init__(self, dimension: int, count: int) -> None:
        self.ids: list[str] = []
        self.kinds: list[str] = []
        self.importance: list[float] = []
        self.created: list[float] = []
        self.updated: list[float] = []
        self.accessed: list[float] = []
        self.uses: list[int] = []
        self.topic: list[int] = []
        self.tier: list[int] = []
        self.version: list[int] = []
        self.sensitive: list[int] = []
        self.expires: list[float] = []  # math.inf: never
        self.codes = np.empty((count, dimension), dtype=np.int8)

    def __len__(self) -> int:
        return len(self.ids)


def pack_row(kind: str, importance: float, created: float, updated: float, accessed: float, uses: int,
             topic: int, tier: int, version: int, sensitive: bool, expires_at: float | None = None) -> bytes:
    """A catalog row: ten fields, an eleventh (expires_at) only for a memory that expires, so rows
    of memories that never expire are byte for byte what they were before expiry existed."""
    fields = [kind, importance, created, updated, accessed, uses, topic, tier, version, bool(sensitive)]
    if expires_at is not None and expires_at != math.inf:
        fields.append(float(expires_at))
    return msgpack.packb(fields, use_bin_type=True)


def memory_row(memory: Memory) -> bytes:
    return pack_row(memory.kind, memory.importance, memory.created_at, memory.updated_at, memory.last_accessed,
                    memory.access_count, memory.topic, TIER_CODES[memory.tier], memory.version, memory.sensitive,
                    memory.expires_at)


def memory_of(record: Memory, row: list[Any]) -> Memory:
    """A memory as stored: its record's content with its catalog row's fields (the row, not the
    record's own copy, holds what the engine serves: statistics, tier, version, expiry)."""
    kind, importance, created, updated, accessed, uses, topic, tier, version, sensitive, expires = row
    return record._replace(kind=kind, importance=importance, created_at=created, updated_at=updated,
                           last_accessed=accessed, access_count=uses, topic=topic, tier=TIERS_BY_CODE[tier],
                           version=version, sensitive=sensitive, expires_at=None if expires == math.inf else expires)


def unpack_row(key: bytes, data: bytes) -> list[Any]:
    """A catalog row, every field checked: a damaged row is reported by id, never a raw error.
    Eleven fields, the last ``expires_at`` (math.inf for a row of ten: it never expires)."""
    try:
        row = msgpack.unpackb(data, raw=False)
        if type(row) is list and len(row) == 10:
            row.append(math.inf)
        kind, importance, created, updated, accessed, uses, topic, tier, version, sensitive, expires = row
        ok = (isinstance(kind, str) and kind and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     and math.isfinite(v)
                                                     for v in (importance, created, updated, accessed))
              and all(isinstance(v, int) and not isinstance(v, bool) for v in (uses, topic, tier, version))
              and tier in (0, 1, 2) and version >= 1 and uses >= 0 and isinstance(sensitive, bool)
              and isinstance(expires, (int, float)) and not isinstance(expires, bool) and not math.isnan(expires))
    except (ValueError, TypeError, msgpack.UnpackException):
        ok = False
    if not ok:
        raise StorageError(f"the catalog row of memory {bytes(key[4:]).decode('utf-8', 'replace')!r} is damaged; "
                           "restore the store from a backup (or delete that memory)")
    return row


_NUMBER = {float, int}  # a bool is no number in a catalog row (type(), not isinstance())


def _row_columns(rows: list[bytes]) -> tuple[list[Any], ...] | None:
    """Packed catalog rows as eleven columns (kind, importance, created, updated, accessed, uses,
    topic, tier, version, sensitive, expires; math.inf where a row has no expiry), or None if any
    row fails the checks unpack_row makes (the caller then finds which, row by row)."""
    try:
        unpacked = [msgpack.unpackb(data, raw=False) for data in rows]
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    for row in unpacked:
        if type(row) is not list:
            return None
        if len(row) == 10:
            row.append(math.inf)
    if any(len(row) != 11 for row in unpacked):
        return None
    columns = [list(column) for column in zip(*unpacked)]
    kinds, sensitive = columns[0], columns[9]
    # Types first: set(kinds) of a damaged row holding a list or map would raise TypeError.
    if not set(map(type, kinds)) <= {str} or "" in set(kinds):
        return None
    if not set(map(type, sensitive)) <= {bool}:
        return None
    for column in columns[5:9]:  # uses, topic, tier, version
        if not set(map(type, column)) <= {int}:
            return None
    if not set(columns[7]) <= {0, 1, 2} or min(columns[8]) < 1 or min(columns[5]) < 0:
        return None
    for i in (1, 2, 3, 4, 10):  # importance, created, updated, accessed; expires
        if not set(map(type, columns[i])) <= _NUMBER:
            return None
    finite = np.isfinite(np.array(columns[1:5], dtype=np.float64)).all()
    expires = np.array(columns[10], dtype=np.float64)
    if not finite or np.isnan(expires).any():
        return None
    columns[10] = expires.tolist()
    return tuple(columns)


OpenCode = Callable[[str, bytes, bytes], bytes]  # (memory id, stored code, row key) -> plain int8 bytes


def namespace_rows(dimension: int, ids: list[str], keys: list[bytes], rows: list[bytes],
                   codes: list[bytes | None], open_code: OpenCode) -> NamespaceRows:
    """A namespace's packed catalog rows and stored codes (None: missing), in one order, as
    NamespaceRows, decoded a column at a time. Checked and decoded row by row, a 61,642-row
    namespace took 0.60 s to load, 0.49 s of it in the per-field checks; by columns the whole
    first search after a reopen took 0.52 s. A namespace that fails any column check is decoded
    row by row, which names the damaged row (StorageError)."""
    found = NamespaceRows(dimension, 0)
    if not ids:
        return found
    columns = _row_columns(rows) if None not in codes else None
    if columns is None:
        return _rows_checked(dimension, ids, keys, rows, codes, open_code)
    (found.kinds, found.importance, found.created, found.updated, found.accessed, found.uses, found.topic,
     found.tier, found.version, sensitive, found.expires) = columns
    found.ids = ids
    found.sensitive = [int(flag) for flag in sensitive]
    if not any(sensitive) and all(len(code) == dimension for code in codes):  # type: ignore[arg-type]
        # A bytearray is writable: no copy of the joined codes (84 MB at 220k rows: 73-105 ms -> 41-44).
        joined = bytearray().join(codes)  # type: ignore[arg-type]
        found.codes = np.frombuffer(joined, dtype=np.int8).reshape(len(codes), dimension)
    else:  # sealed codes, each opened with the key (and checked for its length)
        found.codes = np.empty((len(codes), dimension), dtype=np.int8)
        for i, (memory_id, key, code) in enumerate(zip(ids, keys, codes)):
            found.codes[i] = np.frombuffer(open_code(memory_id, code, key), dtype=np.int8)  # type: ignore[arg-type]
    return found


def _rows_checked(dimension: int, ids: list[str], keys: list[bytes], rows: list[bytes],
                  codes: list[bytes | None], open_code: OpenCode) -> NamespaceRows:
    """namespace_rows row by row, every field checked: StorageError names the first damaged row."""
    found = NamespaceRows(dimension, len(ids))
    for i, (memory_id, key, data, code) in enumerate(zip(ids, keys, rows, codes)):
        if code is None:
            raise StorageError(f"memory {memory_id!r} has a catalog row but no code; the store is damaged "
                               "(restore it from a backup)")
        kind, importance, created, updated, accessed, uses, topic, tier, version, sensitive, expires = \
            unpack_row(key, data)
        found.codes[i] = np.frombuffer(open_code(memory_id, code, key), dtype=np.int8)
        found.ids.append(memory_id)
        found.kinds.append(kind)
        found.importance.append(importance)
        found.created.append(created)
        found.updated.append(updated)
        found.accessed.append(accessed)
        found.uses.append(uses)
        found.topic.append(topic)
        found.tier.append(tier)
        found.version.append(version)
        found.sensitive.append(int(sensitive))
        found.expires.append(float(expires))
    return found


EXPIRY_PREFIX = b"expiry/"  # + ns id in hex: meta keys of the per-namespace expiry bounds


def expiry_bound_of(key: bytes, data: bytes) -> tuple[int, float]:
    """(ns id, bound) of a stored expiry bound, checked: a damaged one is StorageError."""
    try:
        ns_id, bound = int(key[len(EXPIRY_PREFIX):], 16), msgpack.unpackb(data)
    except (ValueError, msgpack.UnpackException) as err:
        raise StorageError(f"the store's {key!r} entry is not readable ({err!r}): the store is "
                           "damaged; restore it from a backup") from err
    if type(bound) not in (int, float) or math.isnan(bound):
        raise StorageError(f"the store's {key!r} entry holds {bound!r:.40}, not a number: the "
                           "store is damaged; restore it from a backup")
    return ns_id, float(bound)


class ColdOps:
    """The op builders and vector sealing of a cold store; the store supplies these attributes."""

    sealer: Sealer | None
    originals_dtype: Any  # np.float16, np.float32 or None (originals not kept)
    dimension: int
    quantizer: Quantizer

    @property
    def _original_size(self) -> int:
        return self.dimension * np.dtype(self.originals_dtype).itemsize

    @staticmethod
    def expiry_bound_op(ns_id: int, bound: float) -> Op:
        """Write a namespace's expiry bound (math.inf removes it: nothing in it expires)."""
        key = EXPIRY_PREFIX + ns_prefix(ns_id).hex().encode()
        return ("meta", key, None if bound == math.inf else msgpack.packb(float(bound)))

    @staticmethod
    def count_op(ns_id: int, delta: int) -> Op:
        """Counts a namespace's memories up or down (and marks it written) in the same transaction."""
        return ("nscount", ns_prefix(ns_id), delta.to_bytes(8, "big", signed=True))

    def memory_ops(self, ns_id: int, memories: list[Memory], codes: np.ndarray,
                   originals: np.ndarray | None) -> list[Op]:
        """Puts for whole new memories of one namespace: record, catalog row, int8 code, the float
        original (if kept), and the namespace's count."""
        ops: list[Op] = []
        for i, memory in enumerate(memories):
            key, rkey = memory_key(memory.id), row_key(ns_id, memory.id)
            ops.append(("records", key, pack_record(memory, self.sealer)))
            ops.append(("rows", rkey, memory_row(memory)))
            ops.append(("nscodes", rkey, self._vector_bytes(memory.id, memory.sensitive, "code",
                                                            codes[i].tobytes(), rkey)))
            if self.originals_dtype is not None and originals is not None:
                raw = originals[i].astype(self.originals_dtype).tobytes()
                ops.append(("originals", key, self._vector_bytes(memory.id, memory.sensitive, "original", raw)))
        ops.append(self.count_op(ns_id, len(memories)))
        return ops

    def vector_ops(self, ns_id: int, memory: Memory, code: np.ndarray, original: np.ndarray | None) -> list[Op]:
        """Puts of a changed memory's code and original (an update with a new vector)."""
        key, rkey = memory_key(memory.id), row_key(ns_id, memory.id)
        ops: list[Op] = [("nscodes", rkey, self._vector_bytes(memory.id, memory.sensitive, "code",
                                                              code.tobytes(), rkey))]
        if self.originals_dtype is not None and original is not None:
            raw = original.astype(self.originals_dtype).tobytes()
            ops.append(("originals", key, self._vector_bytes(memory.id, memory.sensitive, "original", raw)))
        return ops

    def _vector_bytes(self, memory_id: str, sensitive: bool, field: str, raw: bytes,
                      bound_to: bytes | None = None) -> bytes:
        # Embeddings can be inverted back to text: a sensitive memory's code and original are
        # sealed like its text. Sealed values are OVERHEAD bytes longer, which is how reads
        # tell them apart without reading the record. A code is bound to its row key (namespace
        # id + memory id), so a sealed code moved into another namespace fails to open.
        if not sensitive:
            return raw
        if self.sealer is None:
            raise EncryptionRequiredError(f"memory {memory_id!r} is sensitive: open the store with encryption_key=")
        return self.sealer.seal(raw, self._context(field, memory_id, bound_to))

    @staticmethod
    def _context(field: str, memory_id: str, bound_to: bytes | None) -> bytes:
        return f"{field}:".encode() + (bound_to if bound_to is not None else memory_id.encode())

    def _plain_vector_bytes(self, memory_id: str, field: str, stored: bytes, plain_size: int,
                            bound_to: bytes | None = None) -> bytes:
        if len(stored) == plain_size:
            return stored
        if len(stored) != plain_size + OVERHEAD:
            raise StorageError(f"the stored {field} of memory {memory_id!r} has {len(stored)} bytes, neither "
                               f"{plain_size} nor {plain_size + OVERHEAD} (sealed): the store is damaged")
        if self.sealer is None:
            raise EncryptionRequiredError(f"memory {memory_id!r} is sealed: open the store with its encryption_key")
        return self.sealer.open(stored, self._context(field, memory_id, bound_to))

    def _plain_code(self, memory_id: str, stored: bytes, key: bytes) -> bytes:
        """A stored int8 code's plain bytes (namespace_rows' open_code)."""
        return self._plain_vector_bytes(memory_id, "code", stored, self.dimension, key)

    def opened_vector(self, memory_id: str, field: str, stored: bytes, plain_size: int,
                      bound_to: bytes | None = None) -> bytes:
        """The plain bytes of a stored code (field "code", bound to its row key) or original
        ("original"), opened with this store's key if sealed: what another store's sync reads."""
        return self._plain_vector_bytes(memory_id, field, stored, plain_size, bound_to)

    def _original_vector(self, memory_id: str, stored: bytes) -> np.ndarray:
        """A stored float original (opened if sealed, its size checked) as a float32 row."""
        plain = self._plain_vector_bytes(memory_id, "original", stored, self._original_size)
        return np.frombuffer(plain, dtype=self.originals_dtype).astype(np.float32)

    def code_ops(self, ns_id: int, memory_ids: list[str], sensitive: list[bool], codes: np.ndarray) -> list[Op]:
        """Puts of new int8 codes only (re-calibration)."""
        ops: list[Op] = []
        for memory_id, sealed, code in zip(memory_ids, sensitive, codes):
            rkey = row_key(ns_id, memory_id)
            ops.append(("nscodes", rkey, self._vector_bytes(memory_id, sealed, "code", code.tobytes(), rkey)))
        return ops

    def record_ops(self, memories: Iterable[Memory]) -> list[Op]:
        return [("records", memory_key(memory.id), pack_record(memory, self.sealer)) for memory in memories]

    @staticmethod
    def row_ops(ns_id: int, memory_ids: Iterable[str], rows: Iterable[bytes]) -> list[Op]:
        """Puts of catalog rows (statistics flushes): records and sealed blobs are left alone."""
        return [("rows", row_key(ns_id, memory_id), row) for memory_id, row in zip(memory_ids, rows)]

    def delete_ops(self, ns_id: int, memory_ids: list[str]) -> list[Op]:
        ops: list[Op] = []
        for memory_id in memory_ids:
            key, rkey = memory_key(memory_id), row_key(ns_id, memory_id)
            ops.extend((("records", key, None), ("originals", key, None), ("rows", rkey, None),
                        ("nscodes", rkey, None)))
        ops.append(self.count_op(ns_id, -len(memory_ids)))
        return ops

    def meta_op(self, name: str, value: Any) -> Op:
        return ("meta", name.encode(), msgpack.packb(value, use_bin_type=True))

    def quantizer_op(self) -> Op:
        """The quantizer's state; sealed in a store opened with a key, since its per-dimension
        ranges are quantiles of the stored vectors, sealed ones included (issue 11.1)."""
        state: Any = self.quantizer.state()
        if self.sealer is not None:
            state = {"sealed": self.sealer.seal(msgpack.packb(state, use_bin_type=True), b"quantizer")}
        return self.meta_op("quantizer", state)


# -- change stamps (offline sync, tiered_memory/sync) ------------------------------------------
#
# Every add, update and delete writes, in its own transaction, a stamp op for each memory it
# changes: ("stamps", ns id + memory id, packed StampOp). The store keeps one stamp row per memory
# (tombstones too: a delete leaves its stamp) and gives it the namespace's next change sequence
# number inside the transaction, under the namespace's write serialisation (LMDB: one writer;
# PostgreSQL: the namespace row lock), so a namespace's sequence numbers are in commit order and
# "every change after n" is one indexed range read. A value of None drops the stamp row
# (tombstones that every peer has seen).

STAMPS = "stamps"
STAMP_BYTES = 16  # hybrid logical clock: 6 bytes of milliseconds, 2 of counter, 8 of writer id
ANCESTRY_MAX = 32  # stamps of earlier versions kept per memory: enough to tell descent from conflict
SEQ = struct.Struct(">Q")


class StoredStamp:
    """A memory's stamp row: its change sequence number in this store, the hybrid-logical-clock
    stamp of its current version, whether that version is a delete, the stamps of the versions it
    descends from (newest first), and the store where the version was made (8 bytes)."""

    __slots__ = ("seq", "stamp", "deleted", "ancestry", "origin")

    def __init__(self, seq: int, stamp: bytes, deleted: bool, ancestry: list[bytes], origin: bytes) -> None:
        self.seq, self.stamp, self.deleted, self.ancestry, self.origin = seq, stamp, deleted, ancestry, origin

    def pack(self) -> bytes:
        return msgpack.packb([self.seq, self.stamp, self.deleted, self.ancestry, self.origin], use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes, memory_id: str = "?") -> StoredStamp:
        try:
            seq, stamp, deleted, ancestry, origin = msgpack.unpackb(data, raw=False)
            ok = (type(seq) is int and seq >= 0 and isinstance(stamp, bytes) and len(stamp) == STAMP_BYTES
                  and isinstance(deleted, bool) and isinstance(ancestry, list)
                  and all(isinstance(a, bytes) and len(a) == STAMP_BYTES for a in ancestry)
                  and isinstance(origin, bytes))
        except (ValueError, TypeError, msgpack.UnpackException):
            ok = False
        if not ok:
            raise StorageError(f"the change stamp of memory {memory_id!r} is damaged; restore the store from a backup")
        return cls(seq, stamp, deleted, ancestry, origin)

    def __repr__(self) -> str:
        return f"StoredStamp(seq={self.seq}, stamp={self.stamp.hex()}, deleted={self.deleted})"


UNCHECKED = object()  # a stamp op that replaces whatever stamp row is stored


def stamp_op(ns_id: int, memory_id: str, stamp: bytes | None, deleted: bool = False,
             ancestry: list[bytes] | None = None, origin: bytes = b"", expect: Any = UNCHECKED) -> Op:
    """A stamp op. ancestry None: a local change, descending from whatever version the store holds
    (the store derives the ancestry in the transaction); a list: a version received from another
    store, with its own ancestry. stamp None: drop the memory's stamp row. expect: the stamp the
    op was planned against (None: no stamp row), checked inside the write: another writer's
    change since makes the whole write fail with ConcurrentUpdateError (a sync plans outside it)."""
    key = row_key(ns_id, memory_id)
    if expect is UNCHECKED:
        if stamp is None:
            return (STAMPS, key, None)
        return (STAMPS, key, msgpack.packb([stamp, deleted, ancestry, origin], use_bin_type=True))
    return (STAMPS, key, msgpack.packb([stamp, deleted, ancestry, origin, expect], use_bin_type=True))


def stamp_fields(previous: StoredStamp | None, key: bytes, value: bytes | None) -> list[Any] | None:
    """What a stamp op asks, [stamp, deleted, ancestry, origin], checked against the row it
    replaces; None (or a stamp of None): drop the row."""
    if value is None:
        return None
    fields = msgpack.unpackb(value, raw=False)
    if len(fields) == 5:
        expected = fields.pop()
        if (None if previous is None else previous.stamp) != expected:
            raise ConcurrentUpdateError(
                f"memory {key[4:].decode('utf-8', 'replace')!r} changed since this write was planned "
                "(another writer's change came between): nothing of the write was stored; plan it again")
    return None if fields[0] is None else fields


def stamped(previous: StoredStamp | None, fields: list[Any], seq: int) -> StoredStamp:
    """The stamp row a stamp op (its stamp_fields) leaves, given the row before it and its number."""
    stamp, deleted, ancestry, origin = fields
    if ancestry is None:
        ancestry = [] if previous is None else ([previous.stamp] + previous.ancestry)[:ANCESTRY_MAX]
    return StoredStamp(seq, stamp, deleted, ancestry, origin)


class StoredVersion:
    """A memory as one store holds it, for sending to another: its stamp row and the stored bytes
    of its record, catalog row, code and original (None where absent: a tombstone has only the
    stamp, an expired-and-swept memory only an old stamp). Sealed values stay sealed."""

    __slots__ = ("memory_id", "stamp", "record", "row", "code", "original")

    def __init__(self, memory_id: str, stamp: StoredStamp | None, record: bytes | None, row: bytes | None,
                 code: bytes | None, original: bytes | None) -> None:
        self.memory_id, self.stamp, self.record = memory_id, stamp, record
        self.row, self.code, self.original = row, code, original

    @property
    def live(self) -> bool:
        return self.record is not None and self.row is not None and self.code is not None
