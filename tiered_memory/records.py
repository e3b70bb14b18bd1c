"""The memory record, its msgpack schema, and validation of what callers put in it."""

from __future__ import annotations

import copy
import enum
import math
import secrets
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgpack
import numpy as np

from tiered_memory.crypto import Sealer
from tiered_memory.errors import (
    EmptyTextError,
    EncryptionRequiredError,
    InvalidInputError,
    InvalidTextError,
    MetadataError,
    SchemaVersionError,
    StorageError,
    TextTooLargeError,
    short_repr,
)

# The version written first in every cold record (its field layout and how its sealed blob is bound):
#   1: no sealed field; 2: sealed text+metadata blob appended, associated data b"record:<id>";
#   3: the blob's associated data also binds the namespace, b"record:<namespace>\x00<id>", so a
#      sealed memory moved into another namespace by someone without the key fails to open.
# Records of every version are read; new ones are written as RECORD_SCHEMA.
RECORD_SCHEMA = 3
# The store-level schema the engine writes into (and checks against) LMDB meta; records carry
# RECORD_SCHEMA. Kept at 2: a store's layout did not change with record version 3.
SCHEMA_VERSION = 2


class Tier(enum.StrEnum):
    """Where a memory sits: hot (in-process LRU), warm (ANN index) or cold (LMDB only)."""

    HOT = "hot"
    WARM = "warm"
    COLD = "cold"


# Tier codes as stored in cold and in the catalog's byte column; larger is faster.
TIER_CODES = {Tier.COLD: 0, Tier.WARM: 1, Tier.HOT: 2}
TIERS_BY_CODE = (Tier.COLD, Tier.WARM, Tier.HOT)


class FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses changes: the metadata of a :class:`Memory`.

    Records are shared between the hot tier and every caller that reads them (no copy per call:
    a fresh metadata dict was a third of a hot get's cost), so nothing reachable from one may
    change. It is still a dict: json, msgpack and ``==`` treat it as one; ``dict(m.metadata)``
    gives a mutable copy."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a memory's metadata is read-only: copy it with copy.deepcopy(memory.metadata), change "
                        "the copy, and pass it to update(memory_id, metadata=...)")

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> dict[str, Any]:  # a copy is for changing: a plain dict
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {key: copy.deepcopy(value, memo) for key, value in self.items()}


class FrozenList(list):  # type: ignore[type-arg]
    """A list that refuses changes (lists inside a memory's metadata); ``list(x)`` copies it."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a memory's metadata is read-only: copy it with copy.deepcopy(memory.metadata), change "
                        "the copy, and pass it to update(memory_id, metadata=...)")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse  # type: ignore[assignment]
    append = extend = insert = remove = pop = clear = sort = reverse = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(value, memo) for value in self]

    def __hash__(self) -> int:  # type: ignore[override]
        raise TypeError("unhashable type: 'FrozenList'")


def freeze(value: Any) -> Any:
    """`value` with every dict and list inside it made read-only (others are immutable already)."""
    if type(value) is dict:
        if not any(type(item) in (dict, list) for item in value.values()):
            return FrozenDict(value)
        return FrozenDict({key: freeze(item) for key, item in value.items()})
    if type(value) is list:
        return FrozenList([freeze(item) for item in value])
    return value


class Memory(NamedTuple):
    """One memory, as a read-only record: callers share it without a copy per call, and it cannot
    be changed (its metadata is a :class:`FrozenDict`). ``memory.replace(importance=0.9)`` gives
    a changed copy; ``update()`` changes what is stored."""

    id: str
    namespace: str
    text: str
    kind: str
    metadata: Mapping[str, Any]
    created_at: float  # seconds since the epoch (UTC)
    updated_at: float
    last_accessed: float
    access_count: int
    importance: float  # 0..1, set by the caller; decay is computed from it, never written over it
    topic: int  # topic (and cold partition) within the namespace; -1 before the namespace has topics
    tier: Tier  # in a get() or search() result: the tier that served it (it may move up right after)
    version: int = 1  # bumped by every update
    sensitive: bool = False  # text, metadata and vectors sealed at rest (needs the store's encryption key)
    # Seconds since the epoch after which no read returns the memory and maintenance deletes it;
    # None: never. Kept in the catalog row (not the record), so it is in clear for sealed memories.
    expires_at: float | None = None

    def replace(self, **changes: Any) -> Memory:
        """A copy with some fields changed (nothing stored changes; use update() for that)."""
        return self._replace(**changes)


class Hit(NamedTuple):
    """A search result: the memory, its score, and the tier that served it.

    ``score`` is the cosine similarity in dense mode, BM25 in lexical mode and the fused score
    (z-scored cosine + z-scored BM25) in hybrid mode; ``dense_score`` (cosine) and
    ``lexical_score`` (BM25, 0.0 when no query word matched) explain it in the text modes."""

    memory: Memory
    score: float
    tier: Tier
    dense_score: float | None = None
    lexical_score: float | None = None


def pack_record(memory: Memory, sealer: Sealer | None = None) -> bytes:
    """Serialize a memory for the cold tier (schema version first, positional fields after).

    A sensitive memory's text and metadata travel only inside the sealed blob (last field)."""
    text, metadata, sealed = memory.text, memory.metadata, None
    if memory.sensitive:
        if sealer is None:
            raise EncryptionRequiredError(
                f"memory {memory.id!r} is sensitive: open the store with encryption_key= to store it"
            )
        inner = msgpack.packb([memory.text, memory.metadata], use_bin_type=True)
        text, metadata, sealed = "", {}, sealer.seal(inner, record_context(memory.namespace, memory.id))
    return msgpack.packb(
        [
            RECORD_SCHEMA,
            memory.id,
            memory.namespace,
            text,
            memory.kind,
            metadata,
            memory.created_at,
            memory.updated_at,
            memory.last_accessed,
            memory.access_count,
            memory.importance,
            memory.topic,
            TIER_CODES[memory.tier],
            memory.version,
            sealed,
        ],
        use_bin_type=True,
    )


def record_context(namespace: str, memory_id: str) -> bytes:
    """Associated data of a sealed record's blob (schema 3): its namespace and id, NUL-separated
    (neither holds a NUL: both are checked UTF-8 labels), so the blob opens only where it was sealed."""
    return b"record:" + namespace.encode("utf-8") + b"\x00" + memory_id.encode("utf-8")


_FIELDS = 15
_FINITE_MAX = float("inf")
_NUMBERS = (int, float)  # exact types: a bool is not a number here
_STR_ONLY = frozenset((str,))  # metadata keys


def _show(value: object) -> str:
    """A short, safe name for a field read from disk (a damaged one may be huge or deeply nested)."""
    return repr(value[:80]) if isinstance(value, str) else f"a {type(value).__name__}"


def _damaged(memory_id: object, problem: str) -> StorageError:
    return StorageError(f"the cold record of memory {_show(memory_id)} is damaged ({problem}): restore the store "
                        "from a backup")


def _is_number(value: object) -> bool:
    return type(value) in _NUMBERS and -_FINITE_MAX < value < _FINITE_MAX  # type: ignore[operator]


def _is_int(value: object, low: int) -> bool:
    return type(value) is int and value >= low


def _is_metadata(value: object) -> bool:
    return type(value) is dict and _STR_ONLY.issuperset(map(type, value))


def _problem(fields: list[Any]) -> str:
    """What is wrong with a record's fields (types and ranges); called once the fast check failed."""
    (_, mid, namespace, text, kind, metadata, created, updated, accessed, count, importance, topic, tier_code,
     record_version, sealed) = fields
    checks = [
        ("id", type(mid) is str and bool(mid), "a non-empty str"),
        ("namespace", type(namespace) is str and bool(namespace), "a non-empty str"),
        ("text", type(text) is str, "a str"),
        ("kind", type(kind) is str and bool(kind), "a non-empty str"),
        ("metadata", _is_metadata(metadata), "a dict with str keys"),
        ("created_at", _is_number(created), "a finite number"),
        ("updated_at", _is_number(updated), "a finite number"),
        ("last_accessed", _is_number(accessed), "a finite number"),
        ("access_count", _is_int(count, 0), "an int >= 0"),
        ("importance", type(importance) in (int, float) and 0.0 <= importance <= 1.0, "a number in [0, 1]"),
        ("topic", _is_int(topic, -1), "an int >= -1"),
        ("tier", type(tier_code) is int and 0 <= tier_code < len(TIERS_BY_CODE), "a tier code 0, 1 or 2"),
        ("version", _is_int(record_version, 1), "an int >= 1"),
        ("sealed", sealed is None or type(sealed) is bytes, "bytes or nil"),
    ]
    return "; ".join(f"{name} is {_show(value)}, not {want}"
                     for (name, ok, want), value in zip(checks, fields[1:]) if not ok) or "a field out of range"


def unpack_record(data: bytes, sealer: Sealer | None = None) -> Memory:
    """Inverse of :func:`pack_record`; refuses records written by a newer schema.

    Every field is checked (types and ranges) before use: a damaged but well-formed record raises
    StorageError naming the memory, never a raw TypeError, KeyError or a Memory holding nonsense."""
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as err:
        raise StorageError(f"a record in the cold tier is not readable ({err!r}): the store is damaged; "
                           "restore it from a backup") from err
    if type(fields) is not list or not fields or type(fields[0]) is not int:
        raise StorageError(f"a record in the cold tier is {_show(fields)}, not a list that starts with its schema "
                           "version: the store is damaged; restore it from a backup")
    version = fields[0]
    if version > RECORD_SCHEMA:
        raise SchemaVersionError(
            f"record schema version {version} is not readable by this tiered_memory "
            f"(reads versions 1 to {RECORD_SCHEMA}); upgrade tiered_memory"
        )
    if version < 1:
        raise _damaged(fields[1] if len(fields) > 1 else None, f"schema version {version}")
    if version == 1:  # v1 had no sealed field: nothing in it is sealed
        fields.append(None)
    if len(fields) != _FIELDS:
        raise _damaged(fields[1] if len(fields) > 1 else None, f"{len(fields)} fields, not {_FIELDS}")
    (_, mid, namespace, text, kind, metadata, created, updated, accessed, count, importance, topic,
     tier_code, record_version, sealed) = fields
    # Every field checked inline (this runs for every record at open): one boolean expression
    # for the common case, the per-field message only when it fails.
    inf = _FINITE_MAX
    if not (type(mid) is str and mid and type(namespace) is str and namespace and type(text) is str
            and type(kind) is str and kind and type(metadata) is dict
            and _STR_ONLY.issuperset(map(type, metadata))
            and type(created) in _NUMBERS and -inf < created < inf
            and type(updated) in _NUMBERS and -inf < updated < inf
            and type(accessed) in _NUMBERS and -inf < accessed < inf
            and type(count) is int and count >= 0
            and type(importance) in _NUMBERS and 0.0 <= importance <= 1.0
            and type(topic) is int and topic >= -1
            and type(tier_code) is int and 0 <= tier_code <= 2
            and type(record_version) is int and record_version >= 1
            and (sealed is None or type(sealed) is bytes)):
        raise _damaged(mid, _problem(fields))
    if sealed is not None:
        if sealer is None:
            raise EncryptionRequiredError(
                f"memory {mid!r} is sealed: open the store with the encryption_key it was written with"
            )
        # Version 2 bound the blob to the id only; version 3 binds the namespace too.
        context = record_context(namespace, mid) if version >= 3 else b"record:" + mid.encode("utf-8")
        inner = msgpack.unpackb(sealer.open(sealed, context), raw=False, strict_map_key=False)
        if type(inner) is not list or len(inner) != 2 or type(inner[0]) is not str or not _is_metadata(inner[1]):
            raise _damaged(mid, "its sealed text and metadata are not a [str, dict] pair")
        text, metadata = inner
    return Memory(mid, namespace, text, kind, freeze(metadata), created, updated, accessed, count, importance,
                  topic, TIERS_BY_CODE[tier_code], record_version, sealed is not None)


_id_lock = threading.Lock()
_last_id_us = 0


def new_id() -> str:
    """A fresh memory id: 32 hex characters, microseconds since the epoch then 72 random bits.

    Ids are LMDB keys. Random keys (uuid4) scatter each batch over the whole B-tree: at 400k
    memories every commit rewrote a page per key per database and inserts fell to 6k/s, against
    55-60k/s for keys that grow with time, which land on the tree's rightmost pages. The clock part
    increases strictly within a process; the random part keeps ids of different processes apart.
    """
    global _last_id_us
    with _id_lock:
        _last_id_us = max(time.time_ns() // 1000, _last_id_us + 1)
        stamp = _last_id_us
    return f"{stamp:014x}{secrets.token_hex(9)}"


def check_id(memory_id: object) -> str:
    """Ids are LMDB keys: at most 128 characters and 480 UTF-8 bytes (LMDB's key limit is 511)."""
    if not isinstance(memory_id, str) or not 1 <= len(memory_id) <= 128:
        raise InvalidInputError(f"a memory id is a str of 1 to 128 characters, got {short_repr(memory_id)}")
    try:
        if len(memory_id.encode("utf-8")) > 480:
            raise InvalidInputError(f"memory id {memory_id!r} is longer than 480 bytes in UTF-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(f"memory id {memory_id!r} is not encodable as UTF-8") from err
    return memory_id


def check_text(text: object, max_chars: int) -> str:
    if not isinstance(text, str):
        raise InvalidTextError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise EmptyTextError("text is empty or only white space; pass the words to remember")
    if len(text) > max_chars:
        raise TextTooLargeError(
            f"text has {len(text):,} characters, more than max_text_chars={max_chars:,}; "
            "split it into several memories or raise MemoryConfig.max_text_chars"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidTextError(
            f"text cannot be encoded as UTF-8 ({err.reason} at position {err.start}); "
            "remove lone surrogate characters"
        ) from err
    return text


def check_label(value: object, what: str) -> str:
    """Namespaces and kinds: short non-empty strings."""
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidInputError(f"{what} must be a non-empty str of at most 256 characters, got {short_repr(value)}")
    if len(value.encode("utf-8", "surrogatepass")) > 480:  # namespaces are LMDB keys: at most 511 bytes
        raise InvalidInputError(f"{what} {short_repr(value)} is longer than 480 bytes in UTF-8; use a shorter name")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(f"{what} {value!r} is not encodable as UTF-8") from err
    return value


def is_real_number(value: object) -> bool:
    """int, float and numpy's integer and floating scalars (np.float32 included), never bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_importance(value: object) -> float:
    if not is_real_number(value) or not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        raise InvalidInputError(f"importance must be a number between 0 and 1, got {short_repr(value)}")
    return float(value)  # type: ignore[arg-type]


def check_timestamp(value: object, what: str) -> float:
    """Accept seconds since the epoch or a datetime (naive datetimes are taken as UTC)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    if not is_real_number(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise InvalidInputError(f"{what} must be seconds since the epoch or a datetime, got {short_repr(value)}")
    return float(value)  # type: ignore[arg-type]


def check_metadata(metadata: object, max_bytes: int, max_depth: int) -> FrozenDict:
    """A str-keyed mapping of msgpack-serializable values, within size and depth limits."""
    if metadata is None:
        return FrozenDict()
    if not isinstance(metadata, Mapping):
        raise MetadataError(f"metadata must be a mapping with str keys, got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str):
            raise MetadataError(f"metadata keys must be str, got {key!r}")
    _check_depth(metadata, max_depth)
    try:
        packed = msgpack.packb(dict(metadata), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as err:
        raise MetadataError(
            f"metadata is not serializable ({err}); use str, int, float, bool, None, bytes, lists and dicts"
        ) from err
    if len(packed) > max_bytes:
        raise MetadataError(
            f"metadata takes {len(packed):,} bytes serialized, more than max_metadata_bytes={max_bytes:,}; "
            "store large payloads elsewhere and keep a reference here"
        )
    # Round-trip so that what we keep in RAM is exactly what a reopen will read back
    # (tuples become lists, str subclasses become str), read-only like every record's.
    return msgpack.unpackb(packed, raw=False, strict_map_key=False, object_hook=FrozenDict, list_hook=FrozenList)


def _check_depth(value: object, max_depth: int) -> None:
    # Iterative, so that a hostile, deeply nested input cannot exhaust the Python stack.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children = list(item.values())
        elif isinstance(item, (list, tuple)):
            children = list(item)
        else:
            continue
        if depth > max_depth:
            raise MetadataError(
                f"metadata is nested deeper than max_metadata_depth={max_depth}; flatten it"
            )
        stack.extend((child, depth + 1) for child in children)
