"""A read-only view of a store's cold tier as stored, for commands that must see every byte.

Opening one never creates or changes anything (a missing directory is an error, not a new store),
and it works without the encryption key: sealed memories then keep their sealed bytes, and only
their clear fields (id, namespace, kind, timestamps, statistics) are shown. With the key given it
is checked against the store's key check first, like ``TieredMemory`` does.

With ``hold=True`` (export, verify) it also holds the store's lock shared: no process can open the
store for writing while the whole store is read, so what is read is one state of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from tiered_memory.config import MemoryConfig
from tiered_memory.crypto import OVERHEAD, Sealer
from tiered_memory.dirlock import DirectoryLock
from tiered_memory.errors import EncryptionRequiredError, SchemaVersionError, StorageError, StoreClosedError
from tiered_memory.quantization import Quantizer
from tiered_memory.records import SCHEMA_VERSION, TIERS_BY_CODE, unpack_record
from tiered_memory.tiers.cold import STORE_SCHEMA, ColdTier, ns_prefix, row_key, text_key

# What a store's originals are kept in, by their plain size per dimension (keep_originals).
_PRECISIONS = {2: "float16", 4: "float32"}
_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class NamespaceEntry:
    name: str
    ns_id: int  # the fixed-size id its rows, codes, topic model and dedup keys are stored under
    count: int
    generation: int  # writes to the namespace so far (a saved warm graph names the one it matches)


@dataclass
class StoredMemory:
    """One memory as stored: its catalog row, its record's content, its vectors' bytes.

    ``text`` and ``metadata`` are None for a sealed memory read without opening it; ``record``
    then holds the stored record (its sealed blob is bound to it), and ``code`` / ``original``
    are the sealed bytes. Opened (with the key), a sealed memory has plain bytes and no record."""

    id: str
    namespace: str
    kind: str
    text: str | None
    metadata: dict[str, Any] | None
    created_at: float
    updated_at: float
    last_accessed: float
    access_count: int
    importance: float
    topic: int
    tier: str
    version: int
    sensitive: bool
    expires_at: float | None  # None: never expires
    code: bytes
    original: bytes | None
    record: bytes | None
    dedup: bool  # the namespace's dedup index names this memory for its text

    @property
    def sealed(self) -> bool:
        """Whether this copy still holds sealed bytes (a sensitive memory not opened)."""
        return self.record is not None


class StoreSnapshot:
    """The cold tier of the store at ``path``, read as stored; a context manager."""

    def __init__(self, path: str | Path, key: bytes | None = None, *, hold: bool = False) -> None:
        self.path = Path(path)
        if not (self.path / "cold" / "data.mdb").is_file():
            raise StoreClosedError(f"no tiered_memory store at {self.path} (it has no cold/data.mdb); check the path")
        self._lock = DirectoryLock(self.path)
        if hold:
            self._lock.acquire_shared()
        try:
            self.cold = ColdTier(self.path / "cold", MemoryConfig(), read_only=True)
            try:
                self._open(key)
            except BaseException:
                self.cold.close()
                raise
        except BaseException:
            self._lock.release()
            raise

    def _open(self, key: bytes | None) -> None:
        cold = self.cold
        if cold.schema() < STORE_SCHEMA:
            raise SchemaVersionError(f"{self.path} uses the schema-2 layout: open it once with TieredMemory (not "
                                     "read-only) to upgrade it, then retry")
        schema = cold.meta_get("schema_version")
        if isinstance(schema, int) and schema > SCHEMA_VERSION:
            raise SchemaVersionError(f"{self.path} was written by a newer tiered_memory (schema {schema}); upgrade")
        dimension = cold.meta_get("dimension")
        if type(dimension) is not int or dimension < 1:
            raise StorageError(f"{self.path} records no vector dimension ({dimension!r}): the store is damaged or "
                               "was never written to")
        self.dimension = dimension
        self.has_key = key is not None
        if key is not None:
            cold.sealer = Sealer(key)
            check = cold.meta_get("key_check")
            if check is not None:
                cold.sealer.verify(check)
        # The quantizer decodes codes for the checks that compare them with originals; it is
        # sealed in a store opened with a key, and a damaged one is verify's to report.
        self.quantizer: Quantizer | None = None
        self.quantizer_problem: str | None = None
        try:
            cold.use_dimension(dimension)
            self.quantizer = cold.quantizer
        except EncryptionRequiredError:
            cold.dimension = dimension
            self.quantizer_problem = "sealed (give the key to check it)"
        except StorageError as err:
            cold.dimension = dimension
            self.quantizer_problem = str(err)
        self.originals = self._originals_precision()
        cold.originals_dtype = _DTYPES.get(self.originals)

    def _originals_precision(self) -> str:
        """keep_originals as the store was written with it, read off a stored original's size."""
        items = self.cold.stored_items("originals")
        first = next(items, None)
        items.close()
        if first is None:
            return "none"
        size = len(first[1])
        for plain in (size, size - OVERHEAD):
            if plain > 0 and plain % self.dimension == 0 and plain // self.dimension in _PRECISIONS:
                return _PRECISIONS[plain // self.dimension]
        return "unknown"

    def close(self) -> None:
        self.cold.close()
        self._lock.release()

    def __enter__(self) -> StoreSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- store-level state ------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """Every store-level entry (dimension, encoder, quantizer, key check, topic models, ...),
        decoded from msgpack; sealed ones stay sealed."""
        out = {}
        for key, data in self.cold.stored_items("meta"):
            name = key.decode("utf-8", "replace")
            try:
                out[name] = msgpack.unpackb(data, raw=False, strict_map_key=False)
            except (ValueError, msgpack.UnpackException) as err:
                raise StorageError(f"the store's {name!r} entry is not readable ({err!r}): the store is damaged; "
                                   "restore it from a backup") from err
        return out

    def namespaces(self) -> list[NamespaceEntry]:
        return [NamespaceEntry(name, ns_id, count, generation)
                for ns_id, name, count, generation in self.cold.namespace_entries()]

    def sealed_namespaces(self) -> set[str]:
        return set(self.cold.meta_get("sealed_namespaces", []))

    def extra_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Features' records (agent hubs) as stored, in key order."""
        return self.cold.stored_items("extra")

    # -- memories -----------------------------------------------------------------------------

    def rows(self, namespace: NamespaceEntry) -> Iterator[tuple[str, list[Any]]]:
        """(memory id, catalog row fields) of a namespace's memories in id order: what the engine
        keeps per memory besides its content (kind, importance, created, updated, accessed, uses,
        topic, tier, version, sensitive, expires_at: math.inf if never), read without touching records
        or vectors."""
        prefix_size = len(ns_prefix(0))
        for key, row in self.cold.stored_items("rows", ns_prefix(namespace.ns_id)):
            yield key[prefix_size:].decode("utf-8"), self.cold.stored_row(key, row)

    def memories(self, namespace: NamespaceEntry, *, open_sealed: bool = False) -> Iterator[StoredMemory]:
        """A namespace's memories in id order; sealed ones opened only if asked (needs the key)."""
        for key, row in self.cold.stored_items("rows", ns_prefix(namespace.ns_id)):
            yield self._stored(namespace, key, row, open_sealed)

    def memory(self, memory_id: str, *, open_sealed: bool = False) -> StoredMemory | None:
        """One memory by id, found by its catalog row (so a sealed one needs no key to be found)."""
        for namespace in self.namespaces():
            key = row_key(namespace.ns_id, memory_id)
            row = self.cold.stored_value("rows", key)
            if row is not None:
                return self._stored(namespace, key, row, open_sealed)
        return None

    def _stored(self, namespace: NamespaceEntry, key: bytes, row: bytes, open_sealed: bool) -> StoredMemory:
        cold = self.cold
        memory_id = key[len(ns_prefix(0)):].decode("utf-8")
        kind, importance, created, updated, accessed, uses, topic, tier, version, sensitive, expires = \
            cold.stored_row(key, row)
        id_key = memory_id.encode("utf-8")
        record = cold.stored_value("records", id_key)
        code = cold.stored_value("nscodes", key)
        original = cold.stored_value("originals", id_key)
        if record is None or code is None:
            missing = "record" if record is None else "int8 code"
            raise StorageError(f"memory {memory_id!r} has a catalog row but no {missing}: the store is damaged; run "
                               "`tiered-memory verify` on it")
        text = metadata = None
        kept = record
        if not sensitive or open_sealed:
            content = unpack_record(record, cold.sealer)
            text, metadata, kept = content.text, content.metadata, None
            if sensitive:
                code = cold.plain_vector("code", key, code)
                original = None if original is None else cold.plain_vector("original", id_key, original)
        dedup = not sensitive and text is not None and \
            cold.stored_value("texts", text_key(namespace.ns_id, text)) == id_key
        return StoredMemory(memory_id, namespace.name, kind, text, metadata, created, updated, accessed, uses,
                            importance, topic, TIERS_BY_CODE[tier].value, version, sensitive,
                            None if expires == math.inf else float(expires), code, original, kept, dedup)
