"""TieredMemory: the public store, and the tier manager that moves memories between tiers.

Tiers are inclusive: every memory is in cold (LMDB); warm (hnswlib) holds a bounded subset;
hot (LRU) a smaller subset of warm. A memory's tier changes its latency, never whether search
finds it: search merges the warm index with a scan of the cold codes.

Locking: ``_rw`` (readers-writer) guards the indexes and the LMDB map: searches and cold reads
share it, anything that changes an index, a code block or the map takes it alone. ``_mutex``
guards the hot LRU and the catalog's counters, which readers update too. A hot ``get`` takes
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cachetools import LRUCache

from .catalog import COLD, Catalog
from .cold import ColdTier
from .config import MemoryConfig
from .crypto import Sealer
from .dirlock import DirectoryLock
from .encoders import Encoder, as_unit_vectors, check_store_encoder, encode_checked, make_encoder
from .errors import (
    ConfigError,
    EncoderError,
    EncryptionRequiredError,
    InvalidFilterError,
    InvalidInputError,
    MemoryNotFoundError,
    SchemaVersionError,
    StoreClosedError,
)
from .filters import compile_where
from .hot import HotTier
from .locks import RWLock
from .promoter import Promoter
from .records import (
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
    new_id,
)
from .searching import Lookup, SearchMixin
from .tiering import MaintenanceReport, TierManagerMixin
from .topics import TopicModel
from .warm import WarmTier

if TYPE_CHECKING:
    from .agents import AgentHub
    from .conversation import Conversation

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
DEFAULT_KIND = "fact"
MAX_K = 10_000


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

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class TieredMemory(SearchMixin, TierManagerMixin):
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
        **settings: Any,
    ) -> None:
        config = config or MemoryConfig()
        self.config = config.replace(**settings) if settings else config
        self.path = Path(path)
        self.clock = clock
        self.read_only = read_only
        self._closed = True
        self.encoder = self._resolve_encoder(encoder)
        self._sealer = Sealer(encryption_key) if encryption_key is not None else None
        if read_only:
            if not (self.path / "cold" / "data.mdb").is_file():
                raise StoreClosedError(f"no tiered_memory store at {self.path} to open read-only")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
        self._dirlock = DirectoryLock(self.path)
        if not read_only:
            self._dirlock.acquire()
        try:
            self.cold = ColdTier(self.path / "cold", self.config, read_only=read_only)
            self.dimension = self._resolve_dimension(dimension)
            self.cold.use_dimension(self.dimension)
            self._check_key()
            self._open()
        except BaseException:
            if hasattr(self, "cold"):
                self.cold.close()
            self._dirlock.release()
            raise
        self._closed = False

    # -- opening ---------------------------------------------------------------------------

    def _check_key(self) -> None:
        """With a key: verify it against the store's key check (written on first use)."""
        self.cold.sealer = self._sealer
        check = self.cold.meta_get("key_check")
        if self._sealer is None:
            return
        if check is None:
            if not self.read_only:
                self.cold.write([self.cold.meta_op("key_check", self._sealer.key_check())])
        else:
            self._sealer.verify(check)

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
                self.cold.meta_op("dimension", resolved),
                self.cold.meta_op("encoder", self.encoder.name if self.encoder is not None else None),
                self.cold.meta_op("created_at", self.clock()),
            ])
        return resolved

    def _open(self) -> None:
        config = self.config
        self.catalog = Catalog(self.dimension)
        self.hot = HotTier(config.hot_capacity, on_evict=self._hot_evicted)
        self._hot_cache = self.hot.cache
        self._maintain_every_ops = config.maintain_every_ops
        self.warm = WarmTier(self.dimension, config.warm_capacity, config.hnsw_m, config.hnsw_ef_construction,
                             config.hnsw_ef_search)
        self.warm.sealer = self._sealer
        self._sealed_namespaces: set[str] = set(self.cold.meta_get("sealed_namespaces", []))
        self.topics: dict[str, TopicModel] = {}
        # Called (last registered first) by close(), before it takes the write lock for the final
        # persist: features with background work (e.g. prefetch workers) stop and join here.
        self._closers: list[Callable[[], None]] = []
        self._pending: dict[int, str] = {}  # slot -> id of memories served from warm/cold, to promote
        self._promoter = Promoter(self._background_work, self._has_background_work)
        self._closers.append(self._promoter.stop)
        self._rw = RWLock()
        self._mutex = threading.Lock()
        self._query_cache: LRUCache = LRUCache(max(config.query_cache_size, 1))
        self._query_lock = threading.Lock()
        self._hits = {"hot": 0, "warm": 0, "cold": 0}
        self._misses = {"hot": 0, "warm": 0, "cold": 0}
        self._promotions = {"cold->warm": 0, "warm->hot": 0}
        self._demotions = {"hot->warm": 0, "warm->cold": 0}
        self._ops = 0
        self._last_maintain = self.clock()
        self._clipped = 0.0  # clipped values among codes written since the last calibration
        self._coded = 0
        self._calibrated_on = self.cold.meta_get("calibrated_on", 0)
        memories, codes = self.cold.load_all()
        self.catalog.load(memories, codes)
        for namespace in self.catalog.namespaces.names:
            state = self.cold.meta_get(f"topics/{namespace}")
            if state is not None:
                self.topics[namespace] = TopicModel.from_state(state)
        self._restore_warm()
        self._restore_hot()
        if not self.read_only:
            self._enforce_warm_capacity()

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> TieredMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Persist statistics and the warm index, then release the directory. Safe to call twice."""
        if self._closed:
            return
        # Stop background work first, without holding the lock: a worker may be waiting for it.
        while self._closers:
            self._closers.pop()()
        with self._rw.write:
            if self._closed:
                return
            try:
                if not self.read_only:
                    self._persist(MaintenanceReport())
            finally:
                self._closed = True
                with self._mutex:
                    self.hot.clear()
                self.cold.close()
                self._dirlock.release()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the store at {self.path} is closed; open a new TieredMemory to continue")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise InvalidInputError(f"{self.path} is open read-only; open it without read_only=True to write")

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
    ) -> str:
        """Store one memory durably; returns its id. ``vector=`` skips encoding the text;
        ``sensitive=True`` seals its text, metadata and vectors at rest (needs encryption_key)."""
        vectors = None if vector is None else as_unit_vectors(vector, self.dimension)
        if vectors is not None and len(vectors) != 1:
            raise InvalidInputError(f"add() takes one vector, got {len(vectors)}; use add_many()")
        return self.add_many([text], namespace=namespace, kind=kind, metadata=None if metadata is None else [metadata],
                             importance=importance, created_at=created_at, vectors=vectors,
                             ids=None if id is None else [id], sensitive=sensitive)[0]

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
    ) -> list[str]:
        """Store many memories in one durable transaction (all or none); returns their ids.

        Per-memory arguments take one value for all or a sequence with one value each.
        """
        self._check_writable()
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInputError("add_many() takes a list of texts; use add() for a single text")
        n = len(texts)
        if n == 0:
            return []
        memories = self._new_memories(texts, namespace, kind, metadata, importance, created_at, ids, sensitive)
        if vectors is not None:
            matrix = as_unit_vectors(vectors, self.dimension)
            if len(matrix) != n:
                raise InvalidInputError(f"{n} texts but {len(matrix)} vectors; give one vector per text")
        else:
            matrix = self._encode([memory.text for memory in memories])
        with self._rw.write:
            self._check_writable()
            self._insert(memories, matrix)
        self._after_ops(n)
        return [memory.id for memory in memories]

    def _new_memories(self, texts: Sequence[str], namespace: str, kind: Any, metadata: Any, importance: Any,
                      created_at: Any, ids: Sequence[str] | None, sensitive: bool) -> list[Memory]:
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
            catalog = self.catalog
            ns = catalog.namespaces.codes.get(namespace)
            if ns is not None:
                slots = catalog.slots(namespace=ns)
                plain = int(len(slots) - np.asarray(catalog.sensitive)[slots].sum()) if len(slots) else 0
                if plain:
                    raise InvalidInputError(
                        f"namespace {namespace!r} already holds {plain} unsealed memories; seal a namespace "
                        "before writing to it (or add its memories with sensitive=True)")
            sealed = sorted(self._sealed_namespaces | {namespace})
            self.cold.write([self.cold.meta_op("sealed_namespaces", sealed)])
            self._sealed_namespaces = set(sealed)

    def encode_query(self, text: str) -> np.ndarray:
        """The query embedding of a text, from the query cache or freshly encoded (and cached).

        Thread-safe; call it from a background thread to have a later ``search(text)`` find the
        vector ready."""
        self._check_open()
        return self._query_vector(text, None)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            raise EncoderError("this store has no encoder: pass vector= / vectors= with your own embeddings, "
                               "or open it with an encoder")
        return encode_checked(self.encoder, texts)

    def _insert(self, memories: list[Memory], vectors: np.ndarray) -> None:
        """Write new memories to cold (durably), then index them. Caller holds the write lock."""
        for memory in memories:
            if memory.id in self.catalog:
                raise InvalidInputError(f"a memory with id {memory.id!r} exists; use update() to change it")
        self._calibrate_if_due(vectors)
        quantizer = self.cold.quantizer
        namespace = memories[0].namespace
        model = self.topics.get(namespace)
        if model is not None:
            topics, _ = model.assign(vectors)
            for memory, topic in zip(memories, topics.tolist()):
                memory.topic = topic
        to_warm = self._warm_admissions(memories)
        for i, memory in enumerate(memories):
            memory.tier = Tier.WARM if to_warm[i] else Tier.COLD
        codes = quantizer.encode(vectors)
        self.cold.write(self.cold.memory_ops(memories, codes, vectors))
        # Durable from here on; what follows only updates in-RAM structures.
        self._clipped += quantizer.clip_rate(vectors) * vectors.size
        self._coded += vectors.size
        with self._mutex:
            slots = [self.catalog.insert(memory, code) for memory, code in zip(memories, codes)]
        if model is not None:
            model.absorb(vectors, topics)
        chosen = np.flatnonzero(to_warm)
        self._warm_put(namespace, [slots[i] for i in chosen])
        self._enforce_warm_capacity(protect={slots[i] for i in chosen})

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
        """The memory with this id (raises MemoryNotFoundError). Promotes it to the hot tier."""
        # The hot path, kept flat (every call and attribute lookup shows at ~2 us): one LRU
        # lookup, the use counters, a fresh copy. close() empties the hot tier, so a closed
        # store always takes the slow path, which raises.
        with self._mutex:
            try:
                entry = self._hot_cache[memory_id]  # cachetools LRU: marks it most recently used
            except (KeyError, TypeError):
                entry = None
            memory = None
            if entry is not None and (namespace is None or entry.memory.namespace == namespace):
                catalog = self.catalog
                slot = catalog.slot_of[memory_id]
                catalog.uses[slot] += 1
                catalog.accessed[slot] = self.clock()
                catalog.dirty.add(slot)
                self._hits["hot"] += 1
                self._ops += 1
                memory = catalog.memory(slot, entry.memory)
                if self._ops < self._maintain_every_ops:
                    return memory
        if memory is None:
            return self._get_from_disk(memory_id, namespace)
        self._maintain_if_due()
        return memory

    def _get_from_disk(self, memory_id: str, namespace: str | None) -> Memory:
        check_id(memory_id)
        with self._rw.read:
            self._check_open()
            slot = self.catalog.slot_of.get(memory_id, -1)
            content = self.cold.get(memory_id) if slot >= 0 else None
            if content is None or (namespace is not None and content.namespace != namespace):
                with self._mutex:
                    for tier in ("hot", "warm", "cold"):
                        self._misses[tier] += 1
                where = "" if namespace is None else f" in namespace {namespace!r}"
                raise MemoryNotFoundError(f"no memory with id {memory_id!r}{where}")
            with self._mutex:
                self._serve(slot)
                memory = self.catalog.memory(slot, content)
        self._after_promotion_requests()
        self._after_ops(1)
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
    ) -> list[Hit]:
        """The k memories most similar to a query text (or ``vector=``), best first.

        Covers every tier of the namespace(s) given, and nothing else. ``kinds`` keeps only those
        kinds; ``where`` filters on metadata (see :mod:`tiered_memory.filters`); ``only_ids``
        restricts the results to a set of ids (checked on the catalog, no record read). Returned
        memories are promoted to the hot tier.
        """
        self._check_open()
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidInputError(f"k must be an int from 1 to {MAX_K}, got {k!r}")
        namespaces = [namespace] if isinstance(namespace, str) else list(namespace)
        if not namespaces:
            raise InvalidInputError("namespace must name at least one namespace")
        namespaces = list(dict.fromkeys(check_label(ns, "namespace") for ns in namespaces))
        kind_names = _check_kinds(kinds)
        predicate = compile_where(where)
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or not math.isfinite(min_score)):
            raise InvalidInputError(f"min_score must be a finite number, got {min_score!r}")
        if only_ids is not None and (isinstance(only_ids, str) or not isinstance(only_ids, Collection)):
            raise InvalidFilterError("only_ids takes a collection of memory ids (a set is fastest)")
        q = self._query_vector(query, vector)
        fetch = k * self.config.rescore_oversample if self.config.rescore else k
        with self._rw.read:
            self._check_open()
            lookup = Lookup(self)
            found: dict[int, float] = {}
            for ns in namespaces:
                for slot, score in self._search_namespace(ns, q, fetch, kind_names, predicate, only_ids, lookup):
                    if score > found.get(slot, -math.inf):
                        found[slot] = score
            ranked = sorted(found.items(), key=lambda item: -item[1])[:fetch]
            if self.config.rescore:
                ranked = self._rescore(q, ranked)[:k]
            if min_score is not None:
                ranked = [(slot, score) for slot, score in ranked if score >= min_score]
            hits = self._serve_hits(ranked, lookup)
        self._after_promotion_requests()
        self._after_ops(1)
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
    ) -> Memory:
        """Change a memory's text (re-encoded), kind, metadata (replaced) or importance.

        The change is durable before this returns; the version is bumped.
        """
        self._check_writable()
        check_id(memory_id)
        config = self.config
        text = None if text is None else check_text(text, config.max_text_chars)
        kind = None if kind is None else check_label(kind, "kind")
        metadata = None if metadata is None else check_metadata(metadata, config.max_metadata_bytes,
                                                                 config.max_metadata_depth)
        importance = None if importance is None else check_importance(importance)
        new_vector = None
        if vector is not None:
            new_vector = as_unit_vectors(vector, self.dimension)
            if len(new_vector) != 1:
                raise InvalidInputError(f"update() takes one vector, got {len(new_vector)}")
        elif text is not None:
            new_vector = self._encode([text])
        with self._rw.write:
            self._check_writable()
            slot = self._slot(memory_id, namespace)
            catalog = self.catalog
            entry = self.hot.peek(memory_id)
            old = entry.memory if entry is not None else self.cold.get(memory_id)
            if old is None:
                raise MemoryNotFoundError(f"no memory with id {memory_id!r}")
            now = self.clock()
            current = catalog.memory(slot, old)
            changed = Memory(
                memory_id, old.namespace, text if text is not None else old.text, kind or old.kind,
                metadata if metadata is not None else dict(old.metadata), current.created_at, now,
                current.last_accessed, current.access_count,
                importance if importance is not None else current.importance, current.topic, current.tier,
                current.version + 1, old.sensitive,
            )
            model = self.topics.get(old.namespace)
            if new_vector is not None:
                if model is not None:
                    changed.topic = int(model.assign(new_vector)[0][0])
                code = self.cold.quantizer.encode(new_vector)
                self.cold.write(self.cold.memory_ops([changed], code, new_vector))
            else:
                self.cold.write(self.cold.record_ops([changed]))
            with self._mutex:
                catalog.updated[slot] = now
                catalog.version[slot] = changed.version
                catalog.importance[slot] = changed.importance
                if changed.kind != old.kind:
                    catalog.set_kind(slot, changed.kind)
                if new_vector is not None:
                    catalog.set_code(slot, code[0])
                    catalog.set_topic(slot, changed.topic)
                if entry is not None:
                    self.hot.put(changed, entry.vector if new_vector is None else self._as_stored(slot, new_vector[0]))
            if new_vector is not None and catalog.tier[slot] != COLD:
                self._warm_put(old.namespace, [slot])
            result = catalog.memory(slot, changed)
        self._after_ops(1)
        return result

    def delete(self, memory_id: str, *, namespace: str | None = None) -> None:
        """Remove a memory from every tier, durably. Raises MemoryNotFoundError if unknown."""
        self._check_writable()
        check_id(memory_id)
        with self._rw.write:
            self._check_writable()
            slot = self._slot(memory_id, namespace)
            ns_name = self.catalog.namespaces.names[self.catalog.ns[slot]]
            self.cold.write(self.cold.delete_ops([memory_id]))
            with self._mutex:
                self.hot.discard(memory_id)
                self.catalog.remove(memory_id)
            self.warm.discard(memory_id, ns_name)
        self._after_ops(1)

    def _slot(self, memory_id: str, namespace: str | None) -> int:
        slot = self.catalog.slot_of.get(memory_id)
        if slot is None or (namespace is not None and
                            self.catalog.namespaces.names[self.catalog.ns[slot]] != namespace):
            where = "" if namespace is None else f" in namespace {namespace!r}"
            raise MemoryNotFoundError(f"no memory with id {memory_id!r}{where}")
        return slot

    # -- maintenance -----------------------------------------------------------------------

    def maintain(self) -> MaintenanceReport:
        """Apply decay (demote hot and warm memories whose score fell below the thresholds),
        enforce capacities, refit topics and int8 ranges when due, and persist statistics and
        the warm index. Also runs by itself every ``maintain_every_ops`` operations or
        ``maintain_every_s`` seconds, inside the operation that crosses the bound."""
        self._check_writable()
        with self._rw.write:
            self._check_writable()
            return self._maintain()

    def _maintain_if_due(self) -> None:
        if self._closed or self.read_only:
            return
        if self._ops >= self.config.maintain_every_ops or \
                self.clock() - self._last_maintain >= self.config.maintain_every_s:
            with self._rw.write:
                if not self._closed and (self._ops >= self.config.maintain_every_ops or
                                         self.clock() - self._last_maintain >= self.config.maintain_every_s):
                    self._maintain()

    def _after_ops(self, n: int) -> None:
        with self._mutex:
            self._ops += n
        self._maintain_if_due()



    # -- introspection ---------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """Per tier: count, bytes, hits, misses; promotions and demotions since open."""
        self._check_open()
        with self._rw.read, self._mutex:
            catalog = self.catalog
            # Every memory's int8 code is in RAM (the blocks searches scan): warm rows count
            # with the warm tier, cold rows with the cold tier, beside its LMDB file on disk.
            codes = {True: 0, False: 0}
            for key, block in catalog.blocks.blocks.items():
                codes[key[2]] += block.codes.nbytes + block.slots.nbytes
            warm_files = sum(p.stat().st_blocks * 512 for p in (self.path / "warm").glob("*")) \
                if (self.path / "warm").is_dir() else 0
            return StoreStats(
                memories=len(catalog),
                namespaces=sum(1 for count in catalog.count_by_ns.values() if count),
                hot=TierStats(len(self.hot), self.hot.nbytes(), self._hits["hot"], self._misses["hot"],
                              self.config.hot_capacity),
                warm=TierStats(catalog.warm_count, self.warm.nbytes() + codes[False], self._hits["warm"],
                               self._misses["warm"], self.config.warm_capacity, warm_files),
                cold=TierStats(len(catalog), codes[True], self._hits["cold"], self._misses["cold"], None,
                               self.cold.nbytes()),
                promotions=dict(self._promotions),
                demotions=dict(self._demotions),
                quantizer={"scheme": self.cold.quantizer.name, "calibrated": self.cold.quantizer.calibrated,
                           "calibrated_on": self._calibrated_on},
            )

    def __len__(self) -> int:
        return len(self.catalog)

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self.catalog

    def count(self, namespace: str | None = None) -> int:
        """Memories in one namespace, or in all."""
        if namespace is None:
            return len(self.catalog)
        ns = self.catalog.namespaces.codes.get(namespace)
        return 0 if ns is None else self.catalog.count_by_ns[ns]

    def namespaces(self) -> list[str]:
        return [name for name, ns in self.catalog.namespaces.codes.items() if self.catalog.count_by_ns[ns]]

    def ids(self, namespace: str | None = None) -> list[str]:
        with self._rw.read:
            ns = None if namespace is None else self.catalog.namespaces.codes.get(namespace)
            if namespace is not None and ns is None:
                return []
            return [self.catalog.ids[slot] for slot in self.catalog.slots(namespace=ns).tolist()]

    def tier_of(self, memory_id: str) -> Tier:
        """Where a memory sits now, without counting as an access."""
        slot = self.catalog.slot_of.get(memory_id)
        if slot is None:
            raise MemoryNotFoundError(f"no memory with id {memory_id!r}")
        return self.catalog.tier_of(slot)

    def conversation(self, namespace: str = DEFAULT_NAMESPACE, max_tokens: int = 4000, **options: Any) -> Conversation:
        """Working memory bound to this store: a token-budgeted window whose evicted messages become
        memories, with topic prefetch. Options: see :class:`tiered_memory.conversation.Conversation`."""
        from .conversation import Conversation

        return Conversation(self, namespace, max_tokens, **options)

    def agents(self, user: str = "default", *, seal_shared: bool = False) -> AgentHub:
        """The coordinator of one user's agents over this store: private and shared memories,
        grants, coordinated updates, notifications. See :mod:`tiered_memory.agents`."""
        from .agents import hub_for

        return hub_for(self, user, seal_shared=seal_shared)




def _per_item(value: Any, n: int, name: str, kind: type | tuple[type, ...]) -> list[Any]:
    """One value for every item, or a sequence with one per item."""
    if value is None or isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        return [value] * n
    if len(value) != n:
        raise InvalidInputError(f"{name} has {len(value)} values for {n} texts; give one value or one per text")
    return list(value)


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
