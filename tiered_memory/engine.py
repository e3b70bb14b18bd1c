"""TieredMemory: the public store, a facade over parts it builds and hands their collaborators.

Parts: a Searcher (ranked candidates, no side effects), a TierManager (loads and unloads
namespaces, serves lookups, promotes, demotes, maintains, runs the background thread) and an
Expiry (expiry bounds, the sweep); what they share is declared in :class:`StoreParts`. The store
checks arguments, writes memories, and calls the parts.

Tiers are inclusive: every memory is in cold (LMDB); warm (hnswlib) holds a bounded subset;
hot (LRU) a smaller subset of warm. A memory's tier changes its latency, never whether search
finds it: search merges the warm index with a scan of the cold codes.

Namespaces load on demand: opening reads store-level keys only; the first search, get, add or
preload of a namespace reads its rows and codes in one range read (and its graph file), and the
namespaces used least recently are unloaded in the background when the warm budget needs room.

Locking (``StoreParts.rw`` and ``.mutex``): ``_rw`` (readers-writer) guards the indexes and the
LMDB map: searches and cold reads share it, anything that changes an index, a code block or the
map takes it alone. ``_mutex`` guards the hot LRU and the catalog's counters, which readers update
too. A hot ``get`` takes
only ``_mutex``. Order: ``_rw`` before ``_mutex``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered_memory.config import MemoryConfig
from tiered_memory.crypto import Sealer
from tiered_memory.dirlock import DirectoryLock
from tiered_memory.encoders import Encoder, as_unit_vectors, check_store_encoder, encode_checked, make_encoder
from tiered_memory.errors import (
    ConcurrentUpdateError,
    ConfigError,
    EncoderError,
    EncryptionRequiredError,
    InvalidFilterError,
    InvalidInputError,
    MemoryNotFoundError,
    SchemaVersionError,
    StoreClosedError,
    short_repr,
)
from tiered_memory.extra import ExtraStore
from tiered_memory.locks import RWLock
from tiered_memory.namespaces.catalog import COLD, WARM, Catalog
from tiered_memory.namespaces.registry import NamespaceRegistry
from tiered_memory.parts import StoreParts, Traffic
from tiered_memory.records import (
    SCHEMA_VERSION,
    Hit,
    Memory,
    Tier,
    check_id,
    check_importance,
    check_label,
    check_metadata,
    check_text,
    check_timestamp,
    is_real_number,
    new_id,
)
from tiered_memory.search.filters import compile_where
from tiered_memory.search.lexical_tier import Doc, LexicalTier
from tiered_memory.search.searcher import Lookup, Searcher, lexical_docs
from tiered_memory.sync.changes import ChangeRecorder, store_id_of
from tiered_memory.sync.clock import HybridClock
from tiered_memory.sync.endpoint import LostVersion, SyncEndpoint
from tiered_memory.tiering.expiry import (
    NEVER,
    UNCHANGED,
    Expiry,
    changed_expiry,
    check_ttl,
    expired_error,
    new_expiries,
    per_memory,
    row_bytes,
)
from tiered_memory.tiering.manager import MaintenanceReport, TierManager, hot_eviction
from tiered_memory.tiering.topics import TopicModel
from tiered_memory.tiers.cold import STORE_SCHEMA, ColdTier, Op, text_key
from tiered_memory.tiers.cold_parts import ColdParts
from tiered_memory.tiers.cold_store import ColdStore, SharedColdStore
from tiered_memory.tiers.hot import HotTier
from tiered_memory.tiers.warm import WarmTier

if TYPE_CHECKING:
    from tiered_memory.agents.hub import AgentHub
    from tiered_memory.conversation.session import Conversation
    from tiered_memory.sync.session import SyncReport

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
DEFAULT_KIND = "fact"
MAX_K = 10_000
# Attempts of an update (or a deduplicating add) that other processes' writes of the same memory
# (or text) keep overtaking on a shared server store: each one reloads the namespace first, so a
# loss needs a new write by another process inside every attempt's few milliseconds.
RACE_ATTEMPTS = 5


class _DefaultEncoder:
    def __repr__(self) -> str:
        return "DEFAULT_ENCODER"


DEFAULT_ENCODER: Any = _DefaultEncoder()


@dataclass
class TierStats:
    count: int
    bytes: int  # RAM
    hits: int
    misses: int
    capacity: int | None = None
    disk_bytes: int = 0  # allocated on disk (LMDB file; saved warm graphs)


@dataclass
class StoreStats:
    """Counts, bytes and traffic per tier; moves between tiers since the store was opened."""

    memories: int
    namespaces: int
    hot: TierStats
    warm: TierStats
    cold: TierStats
    promotions: dict[str, int]
    demotions: dict[str, int]
    quantizer: dict[str, Any] = field(default_factory=dict)
    loaded: dict[str, Any] = field(default_factory=dict)  # loaded namespaces: count, bytes, loads, unloads
    cold_index: dict[str, Any] = field(default_factory=dict)  # on-disk indexes of huge namespaces' cold parts
    # Of `memories`, those past their expires_at: hidden from every read, deleted by the next maintain().
    expired: int = 0

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class TieredMemory:
    """An agent's memory: hot LRU, warm hnswlib over int8 codes, cold LMDB; one directory.

    >>> with TieredMemory("./agent_memory") as mem:            # doctest: +SKIP
    ...     mid = mem.add("User prefers code examples", namespace="user_123", kind="preference")
    ...     hits = mem.search("How should I explain things?", namespace="user_123", k=5)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config: MemoryConfig | None = None,
        encoder: Encoder | None = DEFAULT_ENCODER,
        dimension: int | None = None,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        encryption_key: bytes | None = None,
        cold: Callable[[MemoryConfig, bool], ColdStore] | None = None,
        **settings: Any,
    ) -> None:
        config = config or MemoryConfig()
        self.config = config.replace(**settings) if settings else config
        self.path = Path(path)
        self.clock = clock
        self.read_only = read_only
        self._key_checked = False
        self.encoder = self._resolve_encoder(encoder)
        self._sealer = Sealer(encryption_key) if encryption_key is not None else None
        # -- cold store: LMDB in path/cold, or the store `cold` opens (config, read_only), e.g.
        # pg_cold.postgres_cold(dsn); path then holds only this process's caches (warm graphs,
        # lexical indexes) and the lock on them. The engine closes the store at close().
        if read_only and cold is None:
            if not (self.path / "cold" / "data.mdb").is_file():
                raise StoreClosedError(f"no tiered_memory store at {self.path} to open read-only")
        elif not read_only:
            self.path.mkdir(parents=True, exist_ok=True)
        self._dirlock = DirectoryLock(self.path)
        if not read_only:
            self._dirlock.acquire()
        try:
            self.cold: ColdStore = (ColdTier(self.path / "cold", self.config, read_only=read_only) if cold is None
                                    else cold(self.config, read_only))
            # Other processes may write to it: loaded namespaces are checked on use (tiering).
            self._shared_cold = isinstance(self.cold, SharedColdStore)
            # -- end of the cold store's choice
            self.dimension = self._resolve_dimension(dimension)
            self._check_key()  # before the quantizer: with a key, its state is sealed
            self.cold.use_dimension(self.dimension)
            self._upgrade()
            self._open()
            # Change stamps (offline sync): every add/update/delete stamps what it changes.
            self._changes = ChangeRecorder(HybridClock(self.clock), store_id_of(self.cold, read_only))
            # Several writers: other processes' change notices unload stale namespaces early, in
            # the background thread (tiering).
            if self._shared_cold and self.config.promote_in_background:
                self.cold.listen(self._tiers.changed_by_notice)
        except BaseException:
            if hasattr(self, "cold"):
                self.cold.close()
            self._dirlock.release()
            raise
        self._parts.closed = False

    # -- opening ---------------------------------------------------------------------------

    def _check_key(self) -> None:
        """With a key: verify it against the store's key check.

        The check is written only where no sealed data can exist yet (a new, empty store) or in
        the same transaction as the first sealed memory: an open with a wrong key never writes
        key material that would lock the right key out."""
        self.cold.sealer = self._sealer
        check = self.cold.meta_get("key_check")
        if self._sealer is None:
            if self.cold.meta_get("has_sealed", False):
                raise EncryptionRequiredError(f"{self.path} holds sealed memories: open it with its encryption_key=")
            return
        if check is not None:
            self._sealer.verify(check)
            self._key_checked = True
        elif not self.read_only and len(self.cold) == 0 and not any(True for _ in self.cold.extra_items(b"")):
            self.cold.write([self.cold.meta_op("key_check", self._sealer.key_check())])
            self._key_checked = True

    def _key_check_ops(self) -> list[Op]:
        """The key check's put, for a write that seals data in a store that has none yet."""
        ops = [self.cold.meta_op("has_sealed", True)]
        if self._sealer is not None and not self._key_checked:
            ops.append(self.cold.meta_op("key_check", self._sealer.key_check()))
        return ops

    @staticmethod
    def _resolve_encoder(encoder: Any) -> Encoder | None:
        if encoder is DEFAULT_ENCODER:
            return make_encoder("default")
        if isinstance(encoder, str):
            return make_encoder(encoder)
        if encoder is None:
            return None
        if not isinstance(encoder, Encoder):
            raise ConfigError(f"encoder must have .name, .dimension and .encode(texts), got {encoder!r}")
        if not isinstance(encoder.dimension, int) or encoder.dimension < 1:
            raise ConfigError(f"encoder {encoder.name!r} reports dimension {encoder.dimension!r}")
        return encoder

    def _resolve_dimension(self, dimension: int | None) -> int:
        stored = self.cold.meta_get("dimension")
        schema = self.cold.meta_get("schema_version")
        if schema is not None and schema > SCHEMA_VERSION:
            raise SchemaVersionError(f"{self.path} was written by a newer tiered_memory (schema {schema}); upgrade")
        from_encoder = self.encoder.dimension if self.encoder is not None else None
        for name, value in (("dimension=", dimension), ("the encoder", from_encoder)):
            if value is not None and stored is not None and value != stored:
                raise ConfigError(f"{self.path} holds {stored}-d vectors but {name} gives {value}; "
                                  "open it with the encoder it was built with, or use a new directory")
        if dimension is not None and from_encoder is not None and dimension != from_encoder:
            raise ConfigError(f"dimension={dimension} disagrees with the encoder's {from_encoder}")
        if self.encoder is not None:
            check_store_encoder(self.path, self.cold.meta_get("encoder"), self.encoder)
        resolved = stored or dimension or from_encoder
        if resolved is None:
            raise ConfigError("a store without an encoder needs dimension=")
        if not isinstance(resolved, int) or resolved < 1:
            raise ConfigError(f"dimension must be a positive int, got {resolved!r}")
        if stored is None and not self.read_only:
            self.cold.write([
                self.cold.meta_op("schema_version", SCHEMA_VERSION),
                self.cold.meta_op("store_schema", STORE_SCHEMA),
                self.cold.meta_op("dimension", resolved),
                self.cold.meta_op("encoder", self.encoder.name if self.encoder is not None else None),
                self.cold.meta_op("created_at", self.clock()),
            ])
        return resolved

    def _upgrade(self) -> None:
        """Bring a store written before namespaces loaded lazily (schema 2) to schema 3, once."""
        if self.cold.schema() >= STORE_SCHEMA:
            return
        if self.read_only:
            raise SchemaVersionError(f"{self.path} uses the schema-2 layout: open it once without read_only=True "
                                     "to upgrade it (one pass over the archive), then open it read-only")
        started = time.perf_counter()
        moved = self.cold.migrate_from_schema_2()
        log.warning("upgraded %s to store schema %d (%d memories re-keyed by namespace) in %.1f s",
                    self.path, STORE_SCHEMA, moved, time.perf_counter() - started)

    def _open(self) -> None:
        """Set up empty RAM state and the parts that share it: nothing per memory is read here
        (namespaces load on use)."""
        config = self.config
        self.catalog = Catalog(self.dimension)
        self._traffic = Traffic()
        self._hits, self._misses = self._traffic.hits, self._traffic.misses
        self.registry = NamespaceRegistry(config.warm_budget_bytes, config.half_life_s, self.clock)
        self.hot = HotTier(config.hot_capacity, on_evict=hot_eviction(self.catalog, self._traffic),
                           budget_bytes=config.hot_budget_bytes)
        self._hot_entries = self.hot.entries
        self._hot_touch = self.hot.entries.move_to_end
        self._maintain_every_ops = config.maintain_every_ops
        self.warm = WarmTier(self.dimension, config.warm_capacity, config.hnsw_m, config.hnsw_ef_construction,
                             config.hnsw_ef_search)
        self.warm.sealer = self._sealer
        self._sealed_namespaces: set[str] = set(self.cold.meta_get("sealed_namespaces", []))
        self.topics: dict[str, TopicModel] = {}
        self._topics_dirty: set[str] = set()  # namespaces whose topic model changed since it was written
        self._rw = RWLock()
        self._mutex = threading.Lock()
        self.lexical = LexicalTier(partial(lexical_docs, self.catalog, self.cold))
        self.cold_parts = ColdParts(self.path / "coldindex")
        self._has_sealed = bool(self.cold.meta_get("has_sealed", False))
        self._attachments: dict[str, Any] = {}  # features' per-store objects: see attachment()
        self._parts = StoreParts(
            path=self.path, config=config, clock=self.clock, read_only=self.read_only, dimension=self.dimension,
            cold=self.cold, shared_cold=self._shared_cold, sealer=self._sealer,
            sealed_namespaces=self._sealed_namespaces, catalog=self.catalog, registry=self.registry, hot=self.hot,
            warm=self.warm, lexical=self.lexical, cold_parts=self.cold_parts, rw=self._rw, mutex=self._mutex,
            traffic=self._traffic, topics=self.topics, topics_dirty=self._topics_dirty)
        self._expiry = Expiry(self._parts)
        self._searcher = Searcher(self._parts, self._encode)
        self._tiers = TierManager(self._parts, self._expiry)
        # Called (last registered first) by close(), before it takes the write lock for the final
        # persist: features with background work (e.g. prefetch workers) stop and join here.
        self._closers: list[Callable[[], None]] = [self._tiers.stop]

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> TieredMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Persist statistics and the warm index, then release the directory. Safe to call twice."""
        if self._parts.closed:
            return
        # Stop background work first, without holding the lock: a worker may be waiting for it
        # (and conversations archive their windows here).
        while self._closers:
            self._closers.pop()()
        # New writes are refused from here on; the lock is fair, so the writers already queued
        # finish first and close() waits for no one else (issue 11.6).
        self._parts.closing = True
        with self._rw.write:
            if self._parts.closed:
                return
            try:
                if not self.read_only:
                    self._tiers.persist(MaintenanceReport())
            finally:
                self._parts.closed = True
                with self._mutex:
                    self.hot.clear()
                self.cold_parts.close()
                self.cold.close()
                self._dirlock.release()

    @property
    def shared(self) -> bool:
        """Whether other processes may write this store's cold tier too (a shared server store):
        then a record read may find a memory another process deleted a moment ago."""
        return self._shared_cold

    @property
    def closed(self) -> bool:
        return self._parts.closed

    def _check_open(self) -> None:
        self._parts.check_open()

    def _check_writable(self) -> None:
        self._parts.check_writable()

    # -- adding ---------------------------------------------------------------------------

    def add(
        self,
        text: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        kind: str = DEFAULT_KIND,
        metadata: Mapping[str, Any] | None = None,
        importance: float = 0.5,
        created_at: float | Any = None,
        vector: Any = None,
        id: str | None = None,
        sensitive: bool = False,
        dedup: bool | None = None,
        ttl_s: float | None = None,
        expires_at: float | Any = None,
    ) -> str:
        """Store one memory durably; returns its id. ``vector=`` skips encoding the text;
        ``sensitive=True`` seals its text, metadata and vectors at rest (needs encryption_key).
        ``ttl_s`` (seconds from now; math.inf: never) or ``expires_at`` (seconds or a datetime)
        makes it expire; without either, ``MemoryConfig.default_ttl_s`` applies."""
        vectors = None if vector is None else as_unit_vectors(vector, self.dimension)
        if vectors is not None and len(vectors) != 1:
            raise InvalidInputError(f"add() takes one vector, got {len(vectors)}; use add_many()")
        if isinstance(ttl_s, (list, tuple)) or isinstance(expires_at, (list, tuple)):
            raise InvalidInputError("add() takes one ttl_s / expires_at; lists are for add_many()")
        return self.add_many([text], namespace=namespace, kind=kind, metadata=None if metadata is None else [metadata],
                             importance=importance, created_at=created_at, vectors=vectors,
                             ids=None if id is None else [id], sensitive=sensitive, dedup=dedup, ttl_s=ttl_s,
                             expires_at=expires_at)[0]

    def add_many(
        self,
        texts: Sequence[str],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        kind: str | Sequence[str] = DEFAULT_KIND,
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
        importance: float | Sequence[float] = 0.5,
        created_at: Any = None,
        vectors: Any = None,
        ids: Sequence[str] | None = None,
        sensitive: bool = False,
        dedup: bool | None = None,
        ttl_s: float | Sequence[float | None] | None = None,
        expires_at: Any = None,
    ) -> list[str]:
        """Store many memories in one durable transaction (all or none); returns their ids.

        Per-memory arguments take one value for all or a sequence with one value each. A text the
        namespace already holds (case-folded, white space collapsed) is not stored again: its id is
        the existing memory's, which counts an access (and keeps the later of its expiry and the
        one asked for), and the returned list's ``duplicates`` names its index. ``dedup`` (default
        ``MemoryConfig.dedup``) switches that; with ``ids=`` given, the caller owns identity and
        nothing is deduplicated. ``ttl_s`` / ``expires_at``: see :meth:`add` (None in a list: the
        default).
        """
        if dedup is not None and not isinstance(dedup, bool):
            raise InvalidInputError(f"dedup must be True, False or None, got {dedup!r:.40}")
        self._check_writable()
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInputError("add_many() takes a list of texts; use add() for a single text")
        n = len(texts)
        if n == 0:
            return []
        memories = self._new_memories(texts, namespace, kind, metadata, importance, created_at, ids, sensitive,
                                      ttl_s, expires_at)
        if vectors is not None:
            matrix = as_unit_vectors(vectors, self.dimension)
            if len(matrix) != n:
                raise InvalidInputError(f"{n} texts but {len(matrix)} vectors; give one vector per text")
        else:
            matrix = self._encode([memory.text for memory in memories])
        with self._rw.write:
            self._check_writable()
            use_dedup = (self.config.dedup if dedup is None else dedup) and ids is None
            # Another process may store one of these texts between our lookup and our write: then
            # again, and the text is a duplicate of its memory.
            added = self._again_if_overtaken(
                lambda: self._insert(memories, matrix, check_ids=ids is not None, dedup=use_dedup),
                f"add to {namespace!r}")
        self._tiers.after_ops(n)
        return added

    def _new_memories(self, texts: Sequence[str], namespace: str, kind: Any, metadata: Any, importance: Any,
                      created_at: Any, ids: Sequence[str] | None, sensitive: bool, ttl_s: Any = None,
                      expires_at: Any = None) -> list[Memory]:
        config = self.config
        n = len(texts)
        namespace = check_label(namespace, "namespace")
        if not isinstance(sensitive, bool):
            raise InvalidInputError(f"sensitive must be True or False, got {sensitive!r}")
        sensitive = sensitive or namespace in self._sealed_namespaces
        if sensitive and self._sealer is None:
            raise EncryptionRequiredError("sensitive memories are sealed at rest: open the store with "
                                          "encryption_key= (16, 24 or 32 bytes you keep outside the store)")
        kinds = _per_item(kind, n, "kind", str)
        metas = _per_item(metadata, n, "metadata", Mapping)
        importances = _per_item(importance, n, "importance", (int, float))
        created = _per_item(created_at, n, "created_at", (int, float, object))
        if ids is not None and (isinstance(ids, str) or len(ids) != n):
            raise InvalidInputError(f"ids must be a list of {n} ids, one per text")
        now = self.clock()
        expiries = new_expiries(ttl_s, expires_at, n, now, config.default_ttl_s)
        memories = []
        seen: set[str] = set()
        for i, text in enumerate(texts):
            memory_id = new_id() if ids is None else check_id(ids[i])
            if memory_id in seen:
                raise InvalidInputError(f"id {memory_id!r} appears twice in this call")
            seen.add(memory_id)
            stamp = now if created[i] is None else check_timestamp(created[i], "created_at")
            memories.append(Memory(
                id=memory_id,
                namespace=namespace,
                text=check_text(text, config.max_text_chars),
                kind=check_label(kinds[i], "kind"),
                metadata=check_metadata(metas[i], config.max_metadata_bytes, config.max_metadata_depth),
                created_at=stamp,
                updated_at=stamp,
                last_accessed=stamp,  # a replayed old memory starts as old as it is
                access_count=0,
                importance=check_importance(importances[i]),
                topic=-1,
                tier=Tier.WARM,
                sensitive=sensitive,
                expires_at=expiries[i],
            ))
        return memories

    def seal_namespace(self, namespace: str) -> None:
        """Make every memory added to `namespace` from now on sensitive (sealed at rest).

        Only for a namespace that holds no unsealed memory yet: rewriting existing ones would
        leave their old plaintext in LMDB's free pages until reused."""
        self._check_writable()
        namespace = check_label(namespace, "namespace")
        if self._sealer is None:
            raise EncryptionRequiredError("sealing a namespace needs the store opened with encryption_key=")
        with self._rw.write:
            self._check_writable()
            catalog = self.catalog
            ns = self._tiers.load(namespace)
            if ns is not None:
                slots = catalog.slots(namespace=ns)
                plain = int(len(slots) - np.asarray(catalog.sensitive)[slots].sum()) if len(slots) else 0
                if plain:
                    raise InvalidInputError(
                        f"namespace {namespace!r} already holds {plain} unsealed memories; seal a namespace "
                        "before writing to it (or add its memories with sensitive=True)")
            sealed = sorted(self._sealed_namespaces | {namespace})
            self.cold.write([self.cold.meta_op("sealed_namespaces", sealed)])
            self._sealed_namespaces.add(namespace)  # in place: the parts share this set

    def encode_query(self, text: str) -> np.ndarray:
        """The query embedding of a text, from the query cache or freshly encoded (and cached).

        Thread-safe; call it from a background thread to have a later ``search(text)`` find the
        vector ready."""
        self._check_open()
        return self._searcher.query_vector(text, None)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            raise EncoderError("this store has no encoder: pass vector= / vectors= with your own embeddings, "
                               "or open it with an encoder")
        return encode_checked(self.encoder, texts)

    def _insert(self, memories: list[Memory], vectors: np.ndarray, check_ids: bool = True,
                dedup: bool = False) -> AddedIds:
        """Write new memories to cold (durably), then index them; returns the id of each (an
        existing memory's for a duplicate text). Caller holds the write lock.

        Everything that can fail for a reason of the caller's happens before the cold write; what
        follows it only updates RAM, and a failed graph insertion leaves the memories in cold
        blocks (still found by search) instead of failing a write that is already durable."""
        if check_ids:
            # Ids are store-wide: the message does not say where a taken id lives (issue 11.13).
            taken = [memory.id for memory, found in zip(memories, self.cold.get_many([m.id for m in memories]))
                     if found is not None]
            if taken:
                raise InvalidInputError(f"the id {taken[0]!r} is taken; choose another id, or use update() to "
                                        "change your own memory")
        namespace = memories[0].namespace
        if dedup and self._shared_cold:
            # Several writers: a text another process stored is a duplicate only if its memory is
            # in our copy of the namespace; a stale copy stored it again (and repointed the index).
            self._tiers.reload_changed([namespace])
        ns = self._tiers.load(namespace, create=True)
        answer = AddedIds(memory.id for memory in memories)
        text_keys: list[bytes | None] = [None] * len(memories)
        holders: list[str | None] = [None] * len(memories)  # who held each text at the lookup
        raised: dict[int, float] = {}  # slot -> the later expiry a duplicate asked for
        if dedup:
            memories, vectors, text_keys, holders = self._without_duplicates(ns, memories, vectors, answer, raised)
            if not memories:
                if raised:
                    self.cold.write(self._expiry.expiry_ops(raised))
                    self._expiry.set_expiries(raised)
                return answer
        else:
            # Still indexed (the latest memory of a text wins), so a later deduplicating add finds
            # it: no lookup on this path, which archives and benchmark builds take.
            text_keys = [None if memory.sensitive else text_key(ns, memory.text) for memory in memories]
        self._tiers.calibrate_if_due(vectors)
        quantizer = self.cold.quantizer
        model = self.topics.get(namespace)
        if model is not None:
            topics, _ = model.assign(vectors)
            memories = [memory._replace(topic=topic) for memory, topic in zip(memories, topics.tolist())]
        to_warm = self._warm_admissions(memories)
        # A large add into a namespace with a graph: its warm memories enter the graph in the
        # background (MemoryConfig.admission_backlog_max); until then they are cold, found by scan.
        later = self._tiers.admits_later(namespace, int(to_warm.sum()))
        # Stored as warm either way: a load finds the ones its graph lacks and queues them again
        # (TierManager._repair_graph), so a close, an unload or a crash loses no admission.
        memories = [memory._replace(tier=Tier.WARM if to_warm[i] else Tier.COLD) for i, memory in enumerate(memories)]
        codes = quantizer.encode(vectors)
        sealing = self._key_check_ops() if any(memory.sensitive for memory in memories) and \
            not self._has_sealed else []
        if dedup and self._shared_cold:
            # Another process may store the same text between the lookup and this write: the
            # store refuses the claim then (ConcurrentUpdateError; add_many looks again).
            dedup_ops = [self.cold.text_claim_op(key, memory.id, holder)
                         for key, memory, holder in zip(text_keys, memories, holders) if key is not None]
        else:
            dedup_ops = [("texts", key, memory.id.encode("utf-8")) for key, memory in zip(text_keys, memories)
                         if key is not None]
        bound_ops, bound = self._expiry.lowered_bound_ops(ns, [memory.expires_at for memory in memories])
        self.cold.write([*self.cold.memory_ops(ns, memories, codes, vectors), *dedup_ops, *sealing, *bound_ops,
                         *self._expiry.expiry_ops(raised),
                         *self._changes.ops(ns, [memory.id for memory in memories])])
        if sealing:
            self._key_checked = self._has_sealed = True
        if bound_ops:
            self._expiry.set_bound(ns, bound)
        self._expiry.set_expiries(raised)
        # Durable from here on; what follows only updates in-RAM structures.
        self._tiers.count_coded(vectors)
        if later:  # cold blocks (found by scan) until the background thread puts them in the graph
            memories = [memory._replace(tier=Tier.COLD) for memory in memories]
        with self._mutex:
            slots = [self.catalog.insert(memory, code) for memory, code in zip(memories, codes)]
        if model is not None:
            model.absorb(vectors, topics)
            self._topics_dirty.add(namespace)
        self.lexical.added(namespace, [Doc(m.id, m.text, m.kind, m.created_at, m.sensitive) for m in memories])
        chosen = [slots[i] for i in np.flatnonzero(to_warm)]
        if later:
            self._tiers.admit_later(chosen)
        else:
            self._tiers.warm_put_or_cold(namespace, chosen)
        self._tiers.namespace_grew(namespace)
        if not later:
            self._tiers.enforce_warm_capacity(protect=set(chosen))
        if not to_warm.all():  # memories went straight to cold: maybe enough for an on-disk index
            self._tiers.wake_for_cold_index([ns])
        if answer.repeats:  # a repeat within the batch counts as a use of the memory it repeats
            now = self.clock()
            with self._mutex:
                for i in answer.repeats:
                    slot = self.catalog.slot_of.get(answer[i])
                    if slot is not None:
                        self.catalog.touch(slot, now)
        return answer

    def _without_duplicates(self, ns: int, memories: list[Memory], vectors: np.ndarray, answer: AddedIds,
                            raised: dict[int, float]
                            ) -> tuple[list[Memory], np.ndarray, list[bytes | None], list[str | None]]:
        """Drop memories whose text the namespace (or this batch) already holds; each counts as an
        access of the memory it repeats, and `answer` gets that memory's id and the index. A
        repeated memory keeps the later of its expiry and the repeat's (`raised` gets the stored
        ones to change); an expired memory is no longer held: its text is stored anew. Returns the
        memories to store, their vectors, dedup keys and the ids the keys named (None: none, or
        one this copy of the namespace does not hold)."""
        keys = [None if memory.sensitive else text_key(ns, memory.text) for memory in memories]
        found = self.cold.find_texts(keys)
        catalog = self.catalog
        first: dict[bytes, int] = {}
        keep = []
        now = self.clock()
        for i, (key, existing) in enumerate(zip(keys, found)):
            wanted = NEVER if memories[i].expires_at is None else memories[i].expires_at
            slot = catalog.slot_of.get(existing) if key is not None and existing is not None else None
            if slot is not None and catalog.expires[slot] > now:
                answer[i] = existing
                answer.duplicates.append(i)
                if wanted > raised.get(slot, catalog.expires[slot]):
                    raised[slot] = wanted
                with self._mutex:
                    catalog.touch(slot, now)
            elif key is not None and key in first:
                repeated = memories[first[key]]
                answer[i] = repeated.id  # touched once the first is stored
                answer.duplicates.append(i)
                answer.repeats.append(i)
                if repeated.expires_at is not None and wanted > repeated.expires_at:
                    memories[first[key]] = repeated._replace(expires_at=None if wanted == NEVER else wanted)
            else:
                if key is not None:
                    first[key] = i
                keep.append(i)
        # The holders this add replaces: only those in our copy (an expired memory); one missing
        # from it was stored by another process since our copy was made, and must refuse the claim.
        holders = [holder if holder in catalog.slot_of else None for holder in found]
        if len(keep) == len(memories):
            return memories, vectors, keys, holders
        return [memories[i] for i in keep], vectors[keep], [keys[i] for i in keep], [holders[i] for i in keep]

    def _warm_admissions(self, memories: list[Memory]) -> np.ndarray:
        """Which new memories enter the warm index (bool per memory).

        All of them, while they fit (give or take the 1% slack that capacity enforcement frees).
        A batch larger than the room left sends only its most important (then newest) memories
        to warm and the rest straight to cold: inserting into hnswlib only to demote right after
        would cost a graph insertion per memory for nothing."""
        room = max(self.config.warm_capacity - self.catalog.warm_count, 0)
        admit = np.ones(len(memories), dtype=bool)
        if len(memories) > room + self.config.warm_capacity // 100:
            order = sorted(range(len(memories)), key=lambda i: (-memories[i].importance, -memories[i].created_at))
            admit[:] = False
            admit[order[:room]] = True
        return admit

    # -- reading ---------------------------------------------------------------------------

    def get(self, memory_id: str, *, namespace: str | None = None) -> Memory:
        """The memory with this id (raises MemoryNotFoundError; MemoryExpiredError, a subclass,
        once its expires_at has passed). Promotes it to the hot tier."""
        # The hot path, kept flat (every call and attribute lookup shows at ~1 us): one LRU
        # lookup, the use counters, a fresh record. close() empties the hot tier, so a closed
        # store always takes the slow path, which raises.
        if self._shared_cold:  # several writers: the hot copy may be stale, the slow path checks
            return self._get_from_disk(memory_id, namespace)
        parts, catalog = self._parts, self.catalog
        with self._mutex:
            try:
                entry = self._hot_entries[memory_id]
            except (KeyError, TypeError):  # TypeError: an unhashable id, refused by the slow path
                entry = None
            if entry is not None and (namespace is None or entry.memory.namespace == namespace):
                self._hot_touch(memory_id)  # most recently used
                slot = catalog.slot_of[memory_id]
                now = self.clock()
                expires = catalog.expires[slot]
                if expires <= now:
                    raise expired_error(memory_id, expires)
                memory = catalog.read_hot(slot, entry.memory, now)
                self._hits["hot"] += 1
                parts.ops += 1
                # Past the bound, maintenance is asked for once (the background thread clears
                # maintenance_due when it has run): asking again on every get cost ~0.4 us.
                if parts.ops < self._maintain_every_ops or parts.maintenance_due:
                    return memory
            else:
                memory = None
        if memory is None:
            return self._get_from_disk(memory_id, namespace)
        self._tiers.maintain_if_due()
        return memory

    def _get_from_disk(self, memory_id: str, namespace: str | None) -> Memory:
        check_id(memory_id)
        if namespace is not None:
            check_label(namespace, "namespace")
        with self._rw.read:
            self._check_open()
            content = self.cold.get(memory_id)
        names = [content.namespace] if content is not None and (namespace is None or
                                                                content.namespace == namespace) else []
        if names:
            self._tiers.ensure_loaded(names)
        with self._tiers.loaded_read(names):
            self._check_open()
            slot = self.catalog.slot_of.get(memory_id, -1)
            if slot >= 0:
                content = self.cold.get(memory_id)
            # The record's namespace must be the catalog's: a reader whose writer deleted the id
            # and re-added it elsewhere must not serve the other namespace's record (issue 11.4).
            if content is None or slot < 0 or (namespace is not None and content.namespace != namespace) or \
                    self.catalog.namespaces.codes.get(content.namespace) != self.catalog.ns[slot]:
                with self._mutex:
                    for tier in ("hot", "warm", "cold"):
                        self._misses[tier] += 1
                where = "" if namespace is None else f" in namespace {namespace!r}"
                raise MemoryNotFoundError(f"no memory with id {memory_id!r}{where}")
            self._expiry.check_unexpired(slot)
            with self._mutex:
                self._tiers.serve(slot)
                memory = self.catalog.memory(slot, content)
        self._tiers.after_promotion_requests()
        self._tiers.after_ops(1)
        return memory

    def search(
        self,
        query: str | None = None,
        *,
        vector: Any = None,
        namespace: str | Sequence[str] = DEFAULT_NAMESPACE,
        k: int = 10,
        kinds: Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        only_ids: Collection[str] | None = None,
        mode: str | None = None,
        since: Any = None,
        until: Any = None,
    ) -> list[Hit]:
        """The k memories most similar to a query text (or ``vector=``), best first.

        ``mode``: "hybrid" (the default with a text: dense and BM25 candidates fused by z-scored
        scores, equal weights), "dense" (cosine only; the only mode with ``vector=`` alone) or
        "lexical" (BM25 only). Filters apply alike in every mode; ``min_score`` is a floor on
        the cosine in every mode. ``since`` / ``until`` (datetimes or seconds since the epoch, both
        inclusive) keep memories created in that period ("what did we discuss last Tuesday?"),
        checked on catalog columns across tiers.

        Covers every tier of the namespace(s) given, and nothing else. ``kinds`` keeps only those
        kinds; ``where`` filters on metadata (see :mod:`tiered_memory.search.filters`); ``only_ids``
        restricts the results to a set of ids (checked on the catalog, no record read). Returned
        memories are promoted to the hot tier.
        """
        self._check_open()
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidInputError(f"k must be an int from 1 to {MAX_K}, got {k!r}")
        if isinstance(namespace, str):
            namespaces = [check_label(namespace, "namespace")]
        elif isinstance(namespace, (list, tuple, set, frozenset)):
            if not namespace:
                raise InvalidInputError("namespace must name at least one namespace")
            namespaces = list(dict.fromkeys(check_label(ns, "namespace") for ns in namespace))
        else:
            raise InvalidInputError(f"namespace must be a str or a list of str, got {namespace!r:.80}")
        kind_names = _check_kinds(kinds)
        predicate = compile_where(where)
        if min_score is not None:
            if not is_real_number(min_score) or not math.isfinite(float(min_score)):
                raise InvalidInputError(f"min_score must be a finite number, got {short_repr(min_score)}")
            min_score = float(min_score)
        if only_ids is not None:
            if isinstance(only_ids, str) or not isinstance(only_ids, Collection) or \
                    not all(isinstance(i, str) for i in only_ids):
                raise InvalidFilterError("only_ids takes a collection of str memory ids (a set is fastest)")
        mode = _check_mode(mode, query, vector)
        period = check_period(since, until)
        q = self._searcher.query_vector(query, vector)
        self._tiers.ensure_loaded(namespaces)
        explained = None
        with self._tiers.loaded_read(namespaces):
            self._check_open()
            lookup = Lookup(self._parts)
            if mode == "dense":
                ranked = self._searcher.dense(q, namespaces, k, kind_names, predicate, only_ids, min_score, lookup,
                                              period)
            else:
                ranked, explained = self._searcher.fused(query, q, namespaces, k, kind_names, predicate, min_score,
                                                         only_ids, mode, lookup, period)
            hits = self._tiers.serve_hits(ranked, lookup)  # counts the operation
        self._tiers.after_promotion_requests()
        self._tiers.maintain_if_due()
        if explained is not None:
            hits = [hit._replace(dense_score=explained[hit.memory.id][0], lexical_score=explained[hit.memory.id][1])
                    for hit in hits]
        return hits

    # -- changing and deleting -------------------------------------------------------------

    def update(
        self,
        memory_id: str,
        *,
        text: str | None = None,
        kind: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        importance: float | None = None,
        vector: Any = None,
        namespace: str | None = None,
        ttl_s: float | None = None,
        expires_at: Any = UNCHANGED,
    ) -> Memory:
        """Change a memory's text (re-encoded), kind, metadata (replaced), importance or expiry.

        ``ttl_s`` sets the expiry to that many seconds from now (math.inf: never); ``expires_at``
        sets it to a time, and ``expires_at=None`` (passed explicitly) clears it; left out, the
        expiry stays. The change is durable before this returns; the version is bumped. An
        expired memory cannot be changed (MemoryExpiredError).
        """
        self._check_writable()
        check_id(memory_id)
        config = self.config
        text = None if text is None else check_text(text, config.max_text_chars)
        kind = None if kind is None else check_label(kind, "kind")
        metadata = None if metadata is None else check_metadata(metadata, config.max_metadata_bytes,
                                                                 config.max_metadata_depth)
        importance = None if importance is None else check_importance(importance)
        new_expiry = changed_expiry(ttl_s, expires_at, self.clock())
        new_vector = None
        if vector is not None:
            new_vector = as_unit_vectors(vector, self.dimension)
            if len(new_vector) != 1:
                raise InvalidInputError(f"update() takes one vector, got {len(new_vector)}")
        elif text is not None:
            new_vector = self._encode([text])
        # Another process may update the memory between our read and our write: then read it
        # again (the namespace reloads) and apply the change on top.
        result = self._again_if_overtaken(
            lambda: self._write_update(memory_id, namespace, text, kind, metadata, importance, new_vector, new_expiry),
            f"update of {memory_id!r}")
        self._tiers.after_ops(1)
        return result

    @staticmethod
    def _again_if_overtaken(write: Callable[[], Any], what: str) -> Any:
        """write(), again while the store refuses it whole because another process's write of the
        same memory or text came between its read and its write (ConcurrentUpdateError); each
        attempt reads afresh. The last attempt's refusal is raised."""
        for attempt in range(1, RACE_ATTEMPTS):
            try:
                return write()
            except ConcurrentUpdateError as err:
                log.debug("%s overtaken by another process's write (%s); again (%d of %d)", what, err, attempt + 1,
                          RACE_ATTEMPTS)
        return write()

    def _write_update(self, memory_id: str, namespace: str | None, text: str | None, kind: str | None,
                      metadata: Mapping[str, Any] | None, importance: float | None, new_vector: np.ndarray | None,
                      new_expiry: Any) -> Memory:
        """update()'s change, made from the memory as the store holds it now, under the write lock."""
        with self._rw.write:
            self._check_writable()
            slot = self._tiers.slot_for_change(memory_id, namespace)
            self._expiry.check_unexpired(slot)
            catalog = self.catalog
            ns = catalog.ns[slot]
            entry = self.hot.peek(memory_id)
            old = entry.memory if entry is not None else self.cold.get(memory_id)
            if old is None:
                raise MemoryNotFoundError(f"no memory with id {memory_id!r}")
            now = self.clock()
            current = catalog.memory(slot, old)
            changed = Memory(
                memory_id, old.namespace, text if text is not None else old.text, kind or old.kind,
                metadata if metadata is not None else old.metadata, current.created_at, now,
                current.last_accessed, current.access_count,
                importance if importance is not None else current.importance, current.topic, current.tier,
                current.version + 1, old.sensitive, current.expires_at if new_expiry is UNCHANGED else new_expiry,
            )
            model = self.topics.get(old.namespace)
            ops = self.cold.record_ops([changed])
            if text is not None and not old.sensitive:
                old_key, new_key = text_key(ns, old.text), text_key(ns, changed.text)
                if old_key != new_key:
                    holders = self.cold.find_texts([old_key, new_key])
                    if holders[0] == memory_id:
                        ops.append(("texts", old_key, None))
                    if holders[1] is None:
                        ops.append(("texts", new_key, memory_id.encode("utf-8")))
            if new_vector is not None:
                if model is not None:
                    changed = changed._replace(topic=int(model.assign(new_vector)[0][0]))
                code = self.cold.quantizer.encode(new_vector)
                ops += self.cold.vector_ops(ns, changed, code[0], new_vector[0])
                ops.append(self.cold.count_op(ns, 0))  # the namespace's vectors changed: saved graphs are stale
            with self._mutex:
                changed = changed._replace(tier=catalog.tier_of(slot))
            ops += self.cold.row_ops(ns, [memory_id], [row_bytes(catalog, slot, changed)])
            bound_ops, bound = self._expiry.lowered_bound_ops(ns, [changed.expires_at])
            self.cold.write(ops + bound_ops + self._changes.ops(ns, [memory_id]))
            if bound_ops:
                self._expiry.set_bound(ns, bound)
            with self._mutex:
                if new_expiry is not UNCHANGED:
                    catalog.set_expiry(slot, NEVER if new_expiry is None else new_expiry)
                catalog.updated[slot] = now
                catalog.version[slot] = changed.version
                catalog.importance[slot] = changed.importance
                if changed.kind != old.kind:
                    catalog.set_kind(slot, changed.kind)
                if new_vector is not None:
                    catalog.set_code(slot, code[0])
                    catalog.set_topic(slot, changed.topic)
                if entry is not None:
                    if not self.hot.put(changed, entry.vector if new_vector is None else
                                        self._tiers.as_stored(slot, new_vector[0])):
                        catalog.set_tier(slot, WARM)
            if new_vector is not None and catalog.tier[slot] != COLD:
                self._tiers.warm_put_or_cold(old.namespace, [slot])
            if text is not None or kind is not None:
                self.lexical.added(old.namespace, [Doc(memory_id, changed.text, changed.kind, changed.created_at,
                                                       changed.sensitive)])
            return catalog.memory(slot, changed)

    def delete(self, memory_id: str, *, namespace: str | None = None) -> None:
        """Remove a memory from every tier, durably. Raises MemoryNotFoundError if unknown. An
        expired memory the sweep has not reached yet is deleted like any other."""
        self._check_writable()
        check_id(memory_id)
        with self._rw.write:
            self._check_writable()
            slot = self._tiers.slot_for_change(memory_id, namespace)
            ns = self.catalog.ns[slot]
            ns_name = self.catalog.namespaces.names[ns]
            ops = self.cold.delete_ops(ns, [memory_id])
            record = self.cold.get(memory_id)
            if record is not None and not record.sensitive:
                key = text_key(ns, record.text)
                if self.cold.find_texts([key])[0] == memory_id:
                    ops.append(("texts", key, None))
            self.cold.write(ops + self._changes.ops(ns, [memory_id], deleted=True))
            self._tiers.drop_deleted(ns_name, [memory_id])
        self._tiers.after_ops(1)

    def extend(self, memory_id: str, *, ttl_s: float, namespace: str | None = None) -> float | None:
        """Push a memory's expiry to ``ttl_s`` seconds from now, durably; returns its expires_at.

        Never shortens: an expiry already later stays, and a memory that never expires keeps
        never expiring (``update(expires_at=)`` sets any expiry). Not an access and not a new
        version. Raises MemoryExpiredError if it has already expired."""
        return self.extend_many([memory_id], ttl_s=ttl_s, namespace=namespace)[0]

    def extend_many(self, memory_ids: Sequence[str], *, ttl_s: float | Sequence[float],
                    namespace: str | None = None) -> list[float | None]:
        """:meth:`extend` for several memories in one durable transaction (all or none); ``ttl_s``
        one value or one per id. For a read that refreshes what it returns (``refresh_on_read``)."""
        self._check_writable()
        if isinstance(memory_ids, str) or not isinstance(memory_ids, Sequence):
            raise InvalidInputError("extend_many() takes a list of ids; use extend() for one")
        ids = [check_id(memory_id) for memory_id in memory_ids]
        ttls = [check_ttl(value) for value in per_memory(ttl_s, len(ids), "ttl_s")]
        if not ids:
            return []
        with self._rw.write:
            self._check_writable()
            now = self.clock()
            catalog = self.catalog
            targets: dict[int, float] = {}
            for memory_id, ttl in zip(ids, ttls):
                slot = self._tiers.slot_for_change(memory_id, namespace)
                current = catalog.expires[slot]
                if current <= now:
                    raise expired_error(memory_id, current)
                wanted = max(targets.get(slot, current), current, now + ttl)
                if current != NEVER and wanted > current:
                    targets[slot] = wanted
            if targets:
                self.cold.write(self._expiry.expiry_ops(targets))
                self._expiry.set_expiries(targets)
            result = [catalog.expires[catalog.slot_of[memory_id]] for memory_id in ids]
        self._tiers.after_ops(len(ids))
        return [None if expires == NEVER else expires for expires in result]

    # -- maintenance -----------------------------------------------------------------------

    def maintain(self) -> MaintenanceReport:
        """Apply decay (demote hot and warm memories whose score fell below the thresholds),
        enforce capacities, refit topics and int8 ranges when due, and persist statistics and
        the warm index. Also runs by itself every ``maintain_every_ops`` operations or
        ``maintain_every_s`` seconds, inside the operation that crosses the bound."""
        self._check_writable()
        with self._rw.write:
            self._check_writable()
            return self._tiers.maintain()

    # -- tiering (the tier manager does it) --------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until background promotions asked for so far are done; False if the timeout ends."""
        return self._tiers.wait_idle(timeout)

    def decay_scores(self, slots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(slots, decayed importance) of the given or all live memories, at the clock's now."""
        return self._tiers.decay_scores(slots)

    def index_cold(self, namespace: str) -> int:
        """Build (or rebuild) the on-disk index of a loaded namespace's cold part now, in the
        caller's thread, without holding the store's lock while it builds; returns the rows it
        covers (0: nothing to index, a sealed namespace, or usearch missing). The background
        thread does this by itself once ``cold_index_min_rows`` cold rows are unindexed."""
        return self._tiers.index_cold(namespace)

    def promote(self, memory_ids: Iterable[str], tier: Tier = Tier.HOT) -> int:
        """Move memories up to `tier` ahead of use (prefetch); not counted as accesses.

        Use counts and hit statistics do not change, but each moved memory's idle clock restarts
        (``last_accessed`` reads the move's time). Unknown ids are skipped. Returns how many
        moves were made (cold -> warm -> hot counts two)."""
        return self._tiers.promote(memory_ids, tier)

    def nearest_topics(self, namespace: str, vector: np.ndarray, n: int = 1) -> list[int]:
        """The namespace's n topics nearest a unit vector (empty before it has a topic model)."""
        return self._tiers.nearest_topics(namespace, vector, n)

    def top_by_decay(self, namespace: str, topics: Iterable[int] | None = None, limit: int = 100,
                     exclude_tiers: tuple[Tier, ...] = (), near: np.ndarray | None = None,
                     near_weight: float = 1.0) -> list[str]:
        """Ids of the namespace's memories (optionally of some topics) with the highest decayed
        importance, best first: what prefetch should warm up. With `near` (a unit vector) each
        score gains ``near_weight`` x the memory's cosine to it (from its int8 code), so memories
        close to a conversation come first (compare modes `prefetch` and `prefetch-decay` in
        benchmarks/results/prefetch/)."""
        return self._tiers.top_by_decay(namespace, topics, limit, exclude_tiers, near, near_weight)

    # -- introspection ---------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """Per tier: count, bytes, hits, misses; promotions and demotions since open; loaded
        namespaces (count, bytes, loads, unloads, load latency). Counts are of what is stored:
        ``expired`` says how many of ``memories`` have expired and wait for the sweep."""
        self._check_open()
        if self._expiry.bounds():  # expired memories may read rows: not under the mutex hot gets take
            with self._rw.read:
                expired = self._expiry.expired_count()
        else:
            expired = 0
        with self._rw.read, self._mutex:
            catalog = self.catalog
            # Codes of loaded namespaces are in RAM (the blocks searches scan): warm rows count
            # with the warm tier, cold rows with the cold tier, beside its LMDB file on disk.
            codes = {True: 0, False: 0}
            for key, block in catalog.blocks.blocks.items():
                codes[key[2]] += block.codes.nbytes + block.slots.nbytes
            warm_files = sum(p.stat().st_blocks * 512 for p in (self.path / "warm").glob("*")) \
                if (self.path / "warm").is_dir() else 0
            total = len(self.cold)
            return StoreStats(
                memories=total,
                namespaces=sum(1 for _, count in self.cold.namespace_counts() if count),
                hot=TierStats(len(self.hot), self.hot.nbytes(), self._hits["hot"], self._misses["hot"],
                              self.config.hot_capacity),
                warm=TierStats(catalog.warm_count, self.warm.nbytes() + codes[False], self._hits["warm"],
                               self._misses["warm"], self.config.warm_capacity, warm_files),
                cold=TierStats(total, codes[True], self._hits["cold"],
                               self._misses["cold"], None, self.cold.nbytes()),
                promotions=dict(self._traffic.promotions),
                demotions=dict(self._traffic.demotions),
                quantizer={"scheme": self.cold.quantizer.name, "calibrated": self.cold.quantizer.calibrated,
                           "calibrated_on": self._tiers.calibrated_on},
                loaded=self.registry.stats(),
                cold_index=self.cold_parts.stats(),
                expired=expired,
            )

    def __len__(self) -> int:
        """Memories stored and not expired."""
        self._check_open()
        if not self._expiry.bounds():  # no memory of the store expires: the archive's count
            return len(self.cold)
        with self._rw.read:  # the catalog's expiring sets change under the write lock
            return len(self.cold) - self._expiry.expired_count()

    def __contains__(self, memory_id: object) -> bool:
        if not isinstance(memory_id, str) or self._parts.closed:
            return False
        slot = self.catalog.slot_of.get(memory_id)
        if slot is not None:
            return self.catalog.expires[slot] > self.clock()
        return self._expiry.live(self.cold.get_many([memory_id])[0]) is not None

    def count(self, namespace: str | None = None) -> int:
        """Memories in one namespace, or in all, expired ones left out (read from the cold tier's
        counts, no load; the rows of a namespace are read only when one of its memories may have
        expired since the last sweep)."""
        self._check_open()
        if namespace is None:
            return len(self)
        ns = self.cold.namespace_id(check_label(namespace, "namespace"))
        if ns is None:
            return 0
        if ns not in self._expiry.bounds():
            return self.cold.namespace_info(ns)[1]
        with self._rw.read:
            stored = self.cold.namespace_info(ns)[1]
            return stored - self._expiry.expired_count(ns) if stored else 0

    def namespaces(self) -> list[str]:
        """Namespaces that hold at least one memory that has not expired."""
        self._check_open()
        if not self._expiry.bounds():  # no memory of the store expires
            return [name for name, count in self.cold.namespace_counts() if count]
        with self._rw.read:
            now = self.clock()
            due = set(self._expiry.due_namespaces(now))
            found = []
            for name, count in self.cold.namespace_counts():
                ns = self.cold.namespace_id(name) if count and due else None
                if ns in due:
                    count -= len(self._expiry.expired_ids(ns, now))  # type: ignore[arg-type]
                if count:
                    found.append(name)
            return found

    def ids(self, namespace: str | None = None) -> list[str]:
        """Ids of one namespace's memories, or of all, expired ones left out (keys read from cold:
        no load)."""
        self._check_open()
        with self._rw.read:
            now = self.clock()
            if namespace is None:
                due = self._expiry.due_namespaces(now)
                gone = set().union(*(self._expiry.expired_ids(ns, now) for ns in due)) if due else set()
                return [i for i in self.cold.ids() if i not in gone] if gone else list(self.cold.ids())
            ns = self.cold.namespace_id(check_label(namespace, "namespace"))
            if ns is None:
                return []
            gone = self._expiry.expired_ids(ns, now)
            return [i for i in self.cold.namespace_ids(ns) if i not in gone] if gone else self.cold.namespace_ids(ns)

    def tier_of(self, memory_id: str) -> Tier:
        """Where a memory sits now, without counting as an access (cold if its namespace is not loaded)."""
        self._check_open()
        check_id(memory_id)
        with self._mutex:
            slot = self.catalog.slot_of.get(memory_id)
            if slot is not None:
                if self.catalog.expires[slot] <= self.clock():
                    raise expired_error(memory_id, self.catalog.expires[slot])
                return self.catalog.tier_of(slot)
        if self._expiry.live(self.cold.get_many([memory_id])[0]) is None:
            raise MemoryNotFoundError(f"no memory with id {memory_id!r}")
        return Tier.COLD

    def list_memories(self, namespace: str = DEFAULT_NAMESPACE, *, since: Any = None, until: Any = None,
                      limit: int = 100, offset: int = 0, newest_first: bool = False) -> list[Memory]:
        """A namespace's memories in created_at order (then id), a page at a time, optionally within
        [since, until]: for agents that replay a period. Not counted as accesses; expired
        memories are left out."""
        self._check_open()
        namespace = check_label(namespace, "namespace")
        for name, value, low in (("limit", limit, 1), ("offset", offset, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{name} must be an int >= {low}, got {value!r:.40}")
        if not isinstance(newest_first, bool):
            raise InvalidInputError(f"newest_first must be True or False, got {newest_first!r:.40}")
        period = check_period(since, until)
        self._tiers.ensure_loaded([namespace])
        with self._tiers.loaded_read([namespace]):
            self._check_open()
            catalog = self.catalog
            ns = catalog.namespaces.codes.get(namespace)
            if ns is None or namespace not in self.registry:
                return []
            slots = catalog.slots(namespace=ns).tolist()
            created, ids = catalog.created, catalog.ids
            expired = catalog.expired(ns, self.clock)
            if expired:
                slots = [slot for slot in slots if slot not in expired]
            if period is not None:
                slots = [slot for slot in slots if period[0] <= created[slot] <= period[1]]
            slots.sort(key=lambda slot: (created[slot], ids[slot]), reverse=newest_first)
            page = slots[offset:offset + limit]
            records = self.cold.get_many([ids[slot] for slot in page])
            with self._mutex:
                return [catalog.memory(slot, record) for slot, record in zip(page, records) if record is not None]

    def preload(self, namespace: str | Sequence[str]) -> None:
        """Load namespaces now (e.g. from a background thread when a returning user's conversation
        starts), so that their first search does not pay the range read."""
        self._check_open()
        names = [namespace] if isinstance(namespace, str) else list(namespace)
        self._tiers.ensure_loaded([check_label(name, "namespace") for name in names])

    # -- the surface features build on (agents, conversations, prefetch) -------------------

    def check_open(self) -> None:
        """Raise StoreClosedError if the store is closed."""
        self._check_open()

    def check_writable(self) -> None:
        """Raise if the store is closed or open read-only."""
        self._check_writable()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the store closes (last registered first), before the final persist,
        without the store's lock held: background workers stop and join here."""
        self._closers.append(callback)

    def cancel_on_close(self, callback: Callable[[], None]) -> None:
        if callback in self._closers:
            self._closers.remove(callback)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of texts with the store's encoder (EncoderError if it has none)."""
        return self._encode(texts)

    def is_sealed(self, namespace: str) -> bool:
        """Whether every memory added to `namespace` is sealed at rest."""
        return namespace in self._sealed_namespaces

    @property
    def has_key(self) -> bool:
        """Whether the store was opened with an encryption key."""
        return self._sealer is not None

    def record(self, memory_id: str) -> Memory | None:
        """A memory as stored in cold, without counting an access or promoting it; None if unknown
        or expired (as for every read, an expired memory is gone)."""
        check_id(memory_id)
        with self._rw.read:
            self._check_open()
            return self._expiry.live(self.cold.get(memory_id))

    def version_of(self, memory_id: str) -> int:
        """The version the store holds for a memory, 0 if it holds none."""
        record = self.record(memory_id)
        return 0 if record is None else record.version

    def namespace_of(self, memory_id: str) -> str | None:
        """The namespace of a memory, None if unknown."""
        if not isinstance(memory_id, str):
            return None
        record = self.record(memory_id)
        return None if record is None else record.namespace

    def vector(self, memory_id: str) -> np.ndarray | None:
        """The best float vector kept for a memory (its original, else its decoded code); None if
        unknown or expired."""
        check_id(memory_id)
        with self._rw.read:
            self._check_open()
            if self._expiry.bounds() and self._expiry.live(self.cold.get(memory_id)) is None:
                return None
            return self.cold.vector(memory_id)

    def attachment(self, key: str, factory: Callable[[], Any]) -> Any:
        """A feature's per-store object (made by `factory` on first use, the same one afterwards):
        state that lives as long as this open store, e.g. the agent hubs open on it. Kept on the
        store, not in a registry beside it, so that it never keeps a closed store alive."""
        with self._mutex:
            if key not in self._attachments:
                self._attachments[key] = factory()
            return self._attachments[key]

    def extra(self, prefix: bytes) -> ExtraStore:
        """A key-value store of this store's cold tier, scoped to keys starting with `prefix`."""
        return ExtraStore(prefix, self.cold, self._rw, self._sealer, self._check_open, self._check_writable)

    def conversation(self, namespace: str = DEFAULT_NAMESPACE, max_tokens: int = 4000, **options: Any) -> Conversation:
        """Working memory bound to this store: a token-budgeted window whose evicted messages become
        memories, with topic prefetch. Options: see :class:`tiered_memory.conversation.session.Conversation`."""
        from tiered_memory.conversation.session import Conversation

        return Conversation(self, namespace, max_tokens, **options)

    def agents(self, user: str = "default", *, seal_shared: bool = False) -> AgentHub:
        """The coordinator of one user's agents over this store: private and shared memories,
        grants, coordinated updates, notifications. See :mod:`tiered_memory.agents.hub`."""
        from tiered_memory.agents.hub import hub_for

        return hub_for(self, user, seal_shared=seal_shared)

    # -- offline sync (tiered_memory/sync) ---------------------------------------------------

    def sync(self, remote: TieredMemory | str | os.PathLike[str], *, namespaces: Sequence[str] | None = None,
             batch_size: int = 1_000, encryption_key: bytes | None = None) -> SyncReport:
        """Push this store's changes since the last sync with `remote` and pull the remote's, for
        every namespace or only `namespaces`; returns what moved (:class:`~tiered_memory.sync.SyncReport`).

        `remote`: another open store, a store directory, or a PostgreSQL DSN
        (``postgresql://...``; opened with a temporary cache directory). ``encryption_key`` opens a
        remote given by path or DSN (sealed memories need it on both sides; they travel sealed).
        Conflicts (both sides changed a memory) end the same on both sides: the newest change
        wins, the other version is kept in :meth:`sync_history`. See :mod:`tiered_memory.sync`."""
        from tiered_memory.sync.session import sync_with

        return sync_with(self, remote, namespaces=namespaces, batch_size=batch_size, encryption_key=encryption_key)

    @property
    def sync_endpoint(self) -> SyncEndpoint:
        """This store's side of a sync: its changes as batches, and applying another store's."""
        self._check_open()
        return self.attachment("sync", self._make_sync_endpoint)

    def _make_sync_endpoint(self) -> SyncEndpoint:
        def forget(namespace: str) -> None:  # under the write lock: flush, then drop the RAM copy
            self._tiers.unload(namespace)

        def bound_ops(ns: int, expiries: list[float | None]) -> tuple[list[Op], Callable[[], None]]:
            ops, bound = self._expiry.lowered_bound_ops(ns, expiries)

            def commit() -> None:
                if ops:
                    self._expiry.set_bound(ns, bound)
            return ops, commit

        def calibrate(vectors: np.ndarray) -> None:
            self._tiers.calibrate_if_due(vectors)

        return SyncEndpoint(self.cold, store_id=self._changes.store_id, clock=self._changes.clock,
                            wall_clock=self.clock, dimension=self.dimension,
                            encoder_name=lambda: self.cold.meta_get("encoder"), sealer=self._sealer,
                            read_lock=self._rw.read, write_lock=self._rw.write, check_writable=self._check_writable,
                            forget_namespace=forget, calibrate=calibrate, expiry_bound_ops=bound_ops,
                            is_sealed=self.is_sealed, topics=self._tiers.assign_topics,
                            tombstone_retention_s=self.config.sync_tombstone_retention_s)

    def sync_history(self, memory_id: str, *, namespace: str | None = None) -> list[LostVersion]:
        """The versions of a memory that lost a conflict in a sync on this store, oldest first.
        ``namespace`` is needed only for a memory that is gone (deleted by the winning version)."""
        check_id(memory_id)
        if namespace is None:
            namespace = self.namespace_of(memory_id)
            if namespace is None:
                raise MemoryNotFoundError(f"no memory with id {memory_id!r}: pass namespace= for a deleted one")
        return self.sync_endpoint.history(check_label(namespace, "namespace"), memory_id)




def _per_item(value: Any, n: int, name: str, kind: type | tuple[type, ...]) -> list[Any]:
    """One value for every item, or a sequence with one per item."""
    if value is None or isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        return [value] * n
    if len(value) != n:
        raise InvalidInputError(f"{name} has {len(value)} values for {n} texts; give one value or one per text")
    return list(value)


SEARCH_MODES = ("hybrid", "dense", "lexical")


class AddedIds(list):  # type: ignore[type-arg]
    """The ids add_many() returns, one per text given; ``duplicates`` holds the indices of texts the
    namespace already had (their id is the existing memory's, which counted an access)."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        super().__init__(ids)
        self.duplicates: list[int] = []
        self.repeats: list[int] = []  # the duplicates of texts earlier in the same call


def check_period(since: Any, until: Any) -> tuple[float, float] | None:
    """(since, until) in seconds from datetimes or numbers; None when neither is given."""
    if since is None and until is None:
        return None
    if isinstance(since, datetime) and isinstance(until, datetime) and \
            (since.tzinfo is None) != (until.tzinfo is None):
        raise InvalidFilterError("since and until mix a naive and an aware datetime; give both with a timezone "
                                 "(or both naive, taken as UTC)")
    try:
        low = -math.inf if since is None else check_timestamp(since, "since")
        high = math.inf if until is None else check_timestamp(until, "until")
    except InvalidInputError as err:
        raise InvalidFilterError(str(err)) from err
    if low > high:
        raise InvalidFilterError(f"since ({since!r:.60}) is after until ({until!r:.60}); swap them")
    return low, high


def _check_mode(mode: str | None, query: str | None, vector: Any) -> str:
    if mode is None:
        return "dense" if query is None else "hybrid"
    if mode not in SEARCH_MODES:
        raise InvalidInputError(f"mode must be one of {SEARCH_MODES}, got {mode!r:.80}")
    if mode != "dense" and query is None:
        raise InvalidInputError(f"mode={mode!r} needs a query text; with vector= alone, search is dense")
    return mode


def _check_kinds(kinds: Iterable[str] | None) -> list[str] | None:
    if kinds is None:
        return None
    if isinstance(kinds, str):
        raise InvalidFilterError(f"kinds takes a list of kinds, e.g. [{kinds!r}], not a bare str")
    names = list(kinds)
    if not names:
        raise InvalidFilterError("kinds is empty; pass None to search every kind")
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidFilterError(f"kinds must be non-empty str, got {name!r}")
    return names
