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
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from cachetools import LRUCache

from .blocks import scan
from .catalog import COLD, HOT, WARM, Catalog
from .cold import ColdTier, Op
from .config import MemoryConfig
from .decay import decay_scores
from .dirlock import DirectoryLock
from .encoders import Encoder, MiniLMEncoder, as_unit_vectors, encode_checked
from .errors import (
    ConfigError,
    DimensionMismatchError,
    EncoderError,
    InvalidFilterError,
    InvalidInputError,
    MemoryNotFoundError,
    SchemaVersionError,
    StoreClosedError,
    TieredMemoryError,
)
from .filters import Predicate, compile_where
from .hot import HotEntry, HotTier
from .locks import RWLock
from .quantization import Int8Quantizer
from .records import (
    SCHEMA_VERSION,
    TIERS_BY_CODE,
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
from .topics import TopicModel, topics_for
from .warm import WarmTier

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
DEFAULT_KIND = "fact"
MAX_K = 10_000
_CALIBRATION_SAMPLE_MAX = 50_000
_RECALIBRATE_GROWTH = 8  # re-learn int8 ranges when the store is 8x the size they were learned on


class _DefaultEncoder:
    def __repr__(self) -> str:
        return "DEFAULT_ENCODER"


DEFAULT_ENCODER: Any = _DefaultEncoder()


@dataclass
class TierStats:
    count: int
    bytes: int
    hits: int
    misses: int
    capacity: int | None = None


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


@dataclass
class MaintenanceReport:
    demoted_to_warm: int = 0
    demoted_to_cold: int = 0
    flushed: int = 0
    topics_fitted: list[str] = field(default_factory=list)
    recalibrated: bool = False
    graphs_compacted: int = 0
    seconds: float = 0.0


class _Lookup:
    """Records and metadata fetched during one search, so each is read at most once."""

    def __init__(self, engine: TieredMemory) -> None:
        self.engine = engine
        self.contents: dict[int, Memory] = {}

    def content(self, slot: int) -> Memory:
        content = self.contents.get(slot)
        if content is None:
            engine = self.engine
            memory_id = engine.catalog.ids[slot]
            entry = engine.hot.peek(memory_id)
            if entry is not None:
                content = entry.memory
            else:
                content = engine.cold.get(memory_id)
                if content is None:
                    raise TieredMemoryError(f"memory {memory_id!r} is in the catalog but not in cold storage")
            self.contents[slot] = content
        return content

    def metadata(self, slot: int) -> Mapping[str, Any]:
        return self.content(slot).metadata


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
        **settings: Any,
    ) -> None:
        config = config or MemoryConfig()
        self.config = config.replace(**settings) if settings else config
        self.path = Path(path)
        self.clock = clock
        self.read_only = read_only
        self._closed = True
        self.encoder = self._resolve_encoder(encoder)
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
            self._open()
        except BaseException:
            if hasattr(self, "cold"):
                self.cold.close()
            self._dirlock.release()
            raise
        self._closed = False

    # -- opening ---------------------------------------------------------------------------

    @staticmethod
    def _resolve_encoder(encoder: Any) -> Encoder | None:
        if encoder is DEFAULT_ENCODER:
            return MiniLMEncoder()
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
            encoder_name = self.cold.meta_get("encoder")
            if encoder_name is not None and encoder_name != self.encoder.name:
                raise ConfigError(f"{self.path} was built with encoder {encoder_name!r}, not {self.encoder.name!r}; "
                                  "vectors from different encoders are not comparable")
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
        self.warm = WarmTier(self.dimension, config.warm_capacity, config.hnsw_m, config.hnsw_ef_construction,
                             config.hnsw_ef_search)
        self.topics: dict[str, TopicModel] = {}
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
        for memory, code in self.cold.load_all():
            self.catalog.insert(memory, np.frombuffer(code, dtype=np.int8))
        for namespace in self.catalog.namespaces.names:
            state = self.cold.meta_get(f"topics/{namespace}")
            if state is not None:
                self.topics[namespace] = TopicModel.from_state(state)
        self._restore_warm()
        self._restore_hot()
        if not self.read_only:
            self._enforce_warm_capacity()

    def _quantizer_stamp(self) -> str:
        state = msgpack.packb(self.cold.quantizer.state(), use_bin_type=True)
        return f"{zlib.crc32(state):08x}"

    def _restore_warm(self) -> None:
        """Load saved graphs and make them agree with the catalog: the archive decides which
        memories are warm; a graph saved before the last write is checked vector by vector."""
        loaded = self.warm.load(self.path / "warm")
        generation = self.cold.meta_get("generation", 0)
        stamp = self._quantizer_stamp()
        expected: dict[str, list[int]] = {}
        for slot in self.catalog.slots(tiers=(WARM, HOT)).tolist():
            expected.setdefault(self.catalog.namespaces.names[self.catalog.ns[slot]], []).append(slot)
        repaired = 0
        for namespace in set(expected) | set(self.warm.graphs):
            slots = expected.get(namespace, [])
            ids = [self.catalog.ids[slot] for slot in slots]
            meta = loaded.get(namespace)
            graph = self.warm.graphs.get(namespace)
            if graph is None or meta is None or meta.get("stamp") != stamp:
                self._rebuild_graph(namespace, slots)
                repaired += len(slots)
                continue
            wanted = set(ids)
            for memory_id in [i for i in graph.label_of if i not in wanted]:
                self.warm.discard(memory_id, namespace)
                repaired += 1
            missing = [slot for slot, memory_id in zip(slots, ids) if memory_id not in graph.label_of]
            if meta.get("generation") != generation:
                present = [slot for slot, memory_id in zip(slots, ids) if memory_id in graph.label_of]
                if present:
                    stored = graph.vectors([self.catalog.ids[slot] for slot in present])
                    expected_vectors = self._decoded(present)
                    differs = ~np.isclose(stored, expected_vectors, atol=1e-5).all(axis=1)
                    missing.extend(np.asarray(present)[differs].tolist())
            if missing:
                self.warm.put_many(namespace, [self.catalog.ids[s] for s in missing], self._decoded(missing))
                repaired += len(missing)
        if repaired:
            log.warning("warm index of %s repaired from the cold tier: %d memories re-indexed or removed",
                        self.path, repaired)

    def _rebuild_graph(self, namespace: str, slots: list[int]) -> None:
        ids = [self.catalog.ids[slot] for slot in slots]
        self.warm.rebuild(namespace, ids, self._decoded(slots) if slots else np.zeros((0, self.dimension)))

    def _decoded(self, slots: Sequence[int]) -> np.ndarray:
        return self.cold.quantizer.decode(self.catalog.blocks.codes(slots))

    def _restore_hot(self) -> None:
        slots = self.catalog.slots(tiers=(HOT,))
        if not len(slots):
            return
        slots = slots[np.argsort(np.asarray(self.catalog.accessed)[slots], kind="stable")]
        self._fill_hot(slots.tolist())

    def _fill_hot(self, slots: list[int]) -> None:
        """Read records (and originals) of these slots from cold and put them in the hot LRU."""
        fetched = self.cold.fetch([self.catalog.ids[slot] for slot in slots], originals=True)
        decoded = self._decoded(slots)
        for slot, (memory, original), fallback in zip(slots, fetched, decoded):
            if memory is None:
                continue
            self.hot.put(memory, original if original is not None else fallback)
            self.catalog.tier[slot] = HOT

    def _hot_evicted(self, memory_id: str, entry: HotEntry) -> None:
        # Called by the LRU, inside self._mutex, when a put pushes the least recent entry out.
        slot = self.catalog.slot_of.get(memory_id)
        if slot is not None and self.catalog.tier[slot] == HOT:
            self.catalog.set_tier(slot, WARM)
            self._demotions["hot->warm"] += 1

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> TieredMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Persist statistics and the warm index, then release the directory. Safe to call twice."""
        if self._closed:
            return
        with self._rw.write:
            if self._closed:
                return
            try:
                if not self.read_only:
                    self._persist(MaintenanceReport())
            finally:
                self._closed = True
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
    ) -> str:
        """Store one memory durably; returns its id. ``vector=`` skips encoding the text."""
        vectors = None if vector is None else as_unit_vectors(vector, self.dimension)
        if vectors is not None and len(vectors) != 1:
            raise InvalidInputError(f"add() takes one vector, got {len(vectors)}; use add_many()")
        return self.add_many([text], namespace=namespace, kind=kind, metadata=None if metadata is None else [metadata],
                             importance=importance, created_at=created_at, vectors=vectors,
                             ids=None if id is None else [id])[0]

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
        memories = self._new_memories(texts, namespace, kind, metadata, importance, created_at, ids)
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
                      created_at: Any, ids: Sequence[str] | None) -> list[Memory]:
        config = self.config
        n = len(texts)
        namespace = check_label(namespace, "namespace")
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
            ))
        return memories

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
        codes = quantizer.encode(vectors)
        self.cold.write(self.cold.memory_ops(memories, codes, vectors))
        # Durable from here on; what follows only updates in-RAM structures.
        self._clipped += quantizer.clip_rate(vectors) * vectors.size
        self._coded += vectors.size
        with self._mutex:
            slots = [self.catalog.insert(memory, code) for memory, code in zip(memories, codes)]
        if model is not None:
            model.absorb(vectors, topics)
        self.warm.put_many(namespace, [memory.id for memory in memories], quantizer.decode(codes))
        self._enforce_warm_capacity(protect=set(slots))

    # -- reading ---------------------------------------------------------------------------

    def get(self, memory_id: str, *, namespace: str | None = None) -> Memory:
        """The memory with this id (raises MemoryNotFoundError). Promotes it to the hot tier."""
        with self._mutex:
            if self._closed:
                raise StoreClosedError(f"the store at {self.path} is closed; open a new TieredMemory to continue")
            entry = self.hot.get(memory_id)
            if entry is not None and (namespace is None or entry.memory.namespace == namespace):
                slot = self.catalog.slot_of[memory_id]
                self.catalog.touch(slot, self.clock())
                self._hits["hot"] += 1
                memory = self.catalog.memory(slot, entry.memory)
                self._ops += 1
                due = self._ops >= self.config.maintain_every_ops
            else:
                memory = None
        if memory is None:
            return self._get_from_disk(memory_id, namespace)
        if due:
            self._maintain_if_due()
        return memory

    def _get_from_disk(self, memory_id: str, namespace: str | None) -> Memory:
        check_id(memory_id)
        with self._rw.read:
            self._check_open()
            slot = self.catalog.slot_of.get(memory_id, -1)
            content, original = self.cold.fetch([memory_id], originals=True)[0] if slot >= 0 else (None, None)
            if content is None or (namespace is not None and content.namespace != namespace):
                with self._mutex:
                    for tier in ("hot", "warm", "cold"):
                        self._misses[tier] += 1
                where = "" if namespace is None else f" in namespace {namespace!r}"
                raise MemoryNotFoundError(f"no memory with id {memory_id!r}{where}")
            vector = original if original is not None else self._decoded([slot])[0]
            with self._mutex:
                tier = self._serve(slot, content, vector)
                memory = self.catalog.memory(slot, content)
        if tier == COLD:
            self._promote_from_cold({slot: (content, vector)})
            memory.tier = self.catalog.tier_of(slot) if self.catalog.ids[slot] == memory_id else memory.tier
        self._after_ops(1)
        return memory

    def _serve(self, slot: int, content: Memory, vector: np.ndarray) -> int:
        """Account one lookup and promote warm -> hot. Caller holds _mutex (and _rw shared)."""
        tier = self.catalog.tier[slot]
        self.catalog.touch(slot, self.clock())
        if tier == HOT:
            self._hits["hot"] += 1
            self.hot.get(content.id)  # refresh recency
        elif tier == WARM:
            self._misses["hot"] += 1
            self._hits["warm"] += 1
            self._to_hot(slot, content, vector)
        else:
            self._misses["hot"] += 1
            self._misses["warm"] += 1
            self._hits["cold"] += 1
        return tier

    def _to_hot(self, slot: int, content: Memory, vector: np.ndarray) -> None:
        self.catalog.set_tier(slot, HOT)  # before put: the put may evict (and demote) another entry
        self.hot.put(content, vector)
        self._promotions["warm->hot"] += 1

    def _promote_from_cold(self, items: dict[int, tuple[Memory, np.ndarray]]) -> None:
        """cold -> warm -> hot for memories found in cold. Takes the write lock (hnswlib insert)."""
        with self._rw.write:
            if self._closed:
                return
            by_namespace: dict[str, list[int]] = {}
            for slot, (content, _) in items.items():
                if self.catalog.ids[slot] == content.id and self.catalog.tier[slot] == COLD:
                    by_namespace.setdefault(content.namespace, []).append(slot)
            for namespace, slots in by_namespace.items():
                self.warm.put_many(namespace, [self.catalog.ids[s] for s in slots], self._decoded(slots))
                with self._mutex:
                    for slot in slots:
                        self.catalog.set_tier(slot, WARM)
                        self._promotions["cold->warm"] += 1
                        content, vector = items[slot]
                        self._to_hot(slot, content, vector)
            protect = {slot for slots in by_namespace.values() for slot in slots}
            self._enforce_warm_capacity(protect=protect)

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
    ) -> list[Hit]:
        """The k memories most similar to a query text (or ``vector=``), best first.

        Covers every tier of the namespace(s) given, and nothing else. ``kinds`` keeps only those
        kinds; ``where`` filters on metadata (see :mod:`tiered_memory.filters`). Returned
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
        q = self._query_vector(query, vector)
        fetch = k * self.config.rescore_oversample if self.config.rescore else k
        promote: dict[int, tuple[Memory, np.ndarray]] = {}
        with self._rw.read:
            self._check_open()
            lookup = _Lookup(self)
            found: dict[int, float] = {}
            for ns in namespaces:
                for slot, score in self._search_namespace(ns, q, fetch, kind_names, predicate, lookup):
                    if score > found.get(slot, -math.inf):
                        found[slot] = score
            ranked = sorted(found.items(), key=lambda item: -item[1])[:fetch]
            if self.config.rescore:
                ranked = self._rescore(q, ranked)[:k]
            if min_score is not None:
                ranked = [(slot, score) for slot, score in ranked if score >= min_score]
            hits = self._serve_hits(ranked, lookup, promote)
        if promote:
            self._promote_from_cold(promote)
            for hit in hits:
                slot = self.catalog.slot_of.get(hit.memory.id)
                if slot is not None:
                    hit.memory.tier = self.catalog.tier_of(slot)
        self._after_ops(1)
        return hits

    def _serve_hits(self, ranked: list[tuple[int, float]], lookup: _Lookup,
                    promote: dict[int, tuple[Memory, np.ndarray]]) -> list[Hit]:
        """Build the hits, count the accesses and promote: warm -> hot now, cold via `promote`."""
        catalog = self.catalog
        ids, tiers = catalog.ids, catalog.tier
        # Warm and cold hits go to the hot tier: read their records in one go, with the float
        # originals only when rescoring will use them (else the decoded code will do).
        needing = [slot for slot, _ in ranked if tiers[slot] != HOT]
        vectors: dict[int, np.ndarray] = {}
        if needing:
            fetched = self.cold.fetch([ids[slot] for slot in needing], originals=self.config.rescore)
            decoded = None if self.config.rescore else self._decoded(needing)
            for i, (slot, (content, original)) in enumerate(zip(needing, fetched)):
                if content is not None:
                    lookup.contents.setdefault(slot, content)
                if original is not None:
                    vectors[slot] = original
                elif decoded is not None:
                    vectors[slot] = decoded[i]
        hits = []
        now = self.clock()
        hot_get, uses, accessed, dirty = self.hot.get, catalog.uses, catalog.accessed, catalog.dirty
        with self._mutex:
            for slot, score in ranked:
                if tiers[slot] == HOT:  # the common case, kept lean: one LRU lookup, no disk
                    content = hot_get(ids[slot]).memory
                    uses[slot] += 1  # catalog.touch(), inlined: this loop is on every search
                    accessed[slot] = now
                    dirty.add(slot)
                    self._hits["hot"] += 1
                    tier = HOT
                else:
                    content = lookup.content(slot)
                    vector = vectors.get(slot)
                    if vector is None:
                        vector = vectors[slot] = self._decoded([slot])[0]
                    tier = self._serve(slot, content, vector)
                    if tier == COLD:
                        promote[slot] = (content, vector)
                hits.append(Hit(catalog.memory(slot, content), float(score), TIERS_BY_CODE[tier]))
        return hits

    def _query_vector(self, query: str | None, vector: Any) -> np.ndarray:
        if (query is None) == (vector is None):
            raise InvalidInputError("pass either a query text or vector=, not both and not neither")
        if vector is not None:
            matrix = as_unit_vectors(vector, self.dimension)
            if len(matrix) != 1:
                raise InvalidInputError(f"search takes one query vector, got {len(matrix)}")
            return matrix[0]
        text = check_text(query, self.config.max_text_chars)
        with self._query_lock:
            cached = self._query_cache.get(text)
        if cached is not None:
            return cached
        encoded = self._encode([text])[0]
        encoded.setflags(write=False)
        with self._query_lock:
            self._query_cache[text] = encoded
        return encoded

    def _search_namespace(self, namespace: str, q: np.ndarray, k: int, kinds: list[str] | None,
                          predicate: Predicate | None, lookup: _Lookup) -> list[tuple[int, float]]:
        catalog = self.catalog
        ns = catalog.namespaces.codes.get(namespace)
        if ns is None or not catalog.count_by_ns.get(ns):
            return []
        kind_codes = None
        total = catalog.count_by_ns[ns]
        eligible = total
        if kinds is not None:
            kind_codes = [catalog.kinds.codes[name] for name in kinds if name in catalog.kinds.codes]
            eligible = sum(catalog.count_by_kind[ns, code] for code in kind_codes)
            if not eligible:
                return []
        if total <= self.config.exact_search_max or eligible <= self.config.exact_search_max:
            return self._scan(ns, q, k, kind_codes, predicate, lookup, cold_only=False, warm_only=False)
        results: dict[int, float] = {}
        if self.warm.graphs.get(namespace) is not None and len(self.warm.graphs[namespace]):
            results.update(self._warm_search(namespace, ns, q, k, kind_codes, predicate, lookup, eligible / total))
        cold_count = catalog.blocks.cold_count.get(ns, 0)
        if cold_count:
            topics = None
            model = self.topics.get(namespace)
            if model is not None and cold_count > self.config.cold_exact_max:
                topics = self._probe_topics(ns, model, q, cold_count)
            for slot, score in self._scan(ns, q, k, kind_codes, predicate, lookup, cold_only=True,
                                          warm_only=False, topics=topics):
                results[slot] = score
        return sorted(results.items(), key=lambda item: -item[1])[:k]

    def _probe_topics(self, ns: int, model: TopicModel, q: np.ndarray, cold_count: int) -> list[int]:
        """Nearest topics first, until they hold cold_probe_fraction of the cold rows."""
        budget = self.config.cold_probe_fraction * cold_count
        sizes = self.catalog.blocks.cold_sizes(ns)
        chosen, rows = [], 0
        for topic in model.nearest(q, len(model)).tolist():
            chosen.append(topic)
            rows += sizes.get(topic, 0)
            if rows >= budget:
                break
        return chosen

    def _warm_search(self, namespace: str, ns: int, q: np.ndarray, k: int, kind_codes: list[int] | None,
                     predicate: Predicate | None, lookup: _Lookup, selectivity: float) -> list[tuple[int, float]]:
        graph_size = len(self.warm.graphs[namespace])
        filtered = kind_codes is not None or predicate is not None
        if not filtered:
            result = self.warm.search(namespace, q, k)
            if result is not None:
                slot_of = self.catalog.slot_of
                return [(slot_of[memory_id], score) for memory_id, score in zip(result[0], result[1].tolist())]
        fetch = k if not filtered else min(graph_size, max(4 * k, int(2 * k / max(selectivity, 1e-3))))
        slot_of, kind_column = self.catalog.slot_of, self.catalog.kind
        for _ in range(3):
            result = self.warm.search(namespace, q, fetch)
            if result is None:  # hnswlib could not fill k past tombstones: scan instead
                break
            ids, scores = result
            accepted: list[tuple[int, float]] = []
            for memory_id, score in zip(ids, scores.tolist()):
                slot = slot_of[memory_id]
                if kind_codes is not None and kind_column[slot] not in kind_codes:
                    continue
                if predicate is not None and not predicate(lookup.metadata(slot)):
                    continue
                accepted.append((slot, score))
                if len(accepted) == k:
                    return accepted
            if fetch >= graph_size:
                return accepted
            fetch = min(graph_size, fetch * 4)
        return self._scan(ns, q, k, kind_codes, predicate, lookup, cold_only=False, warm_only=True)

    def _scan(self, ns: int, q: np.ndarray, k: int, kind_codes: list[int] | None, predicate: Predicate | None,
              lookup: _Lookup, cold_only: bool, warm_only: bool, topics: list[int] | None = None
              ) -> list[tuple[int, float]]:
        """Exact top-k over int8 codes of chosen blocks, filtered; the cost is one pass per row."""
        blocks = self.catalog.blocks.chosen(ns, topics, cold_only=cold_only)
        if warm_only:
            blocks = [b for key, b in self.catalog.blocks.iter_namespace(ns) if not key[2]]
        quantizer = self.cold.quantizer
        assert isinstance(quantizer, Int8Quantizer)
        weights, offset = quantizer.scan_weights(q)
        slots, scores = scan(blocks, weights, offset)
        if kind_codes is not None and len(slots):
            keep = np.isin(np.asarray(self.catalog.kind)[slots], kind_codes)
            slots, scores = slots[keep], scores[keep]
        if not len(slots):
            return []
        if predicate is None:
            top = np.argpartition(-scores, min(k, len(scores)) - 1)[:k] if len(scores) > k else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            return list(zip(slots[top].tolist(), scores[top].tolist()))
        accepted = []
        for i in np.argsort(-scores, kind="stable").tolist():
            slot = int(slots[i])
            if predicate(lookup.metadata(slot)):
                accepted.append((slot, float(scores[i])))
                if len(accepted) == k:
                    break
        return accepted

    def _rescore(self, q: np.ndarray, ranked: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """Re-rank candidates by the inner product with their float originals (hot copies first)."""
        if not ranked:
            return ranked
        slots = [slot for slot, _ in ranked]
        vectors = np.empty((len(slots), self.dimension), dtype=np.float32)
        missing = []
        for i, slot in enumerate(slots):
            entry = self.hot.peek(self.catalog.ids[slot])
            if entry is not None:
                vectors[i] = entry.vector
            else:
                missing.append(i)
        if missing:
            originals = self.cold.originals([self.catalog.ids[slots[i]] for i in missing])
            vectors[missing] = originals if originals is not None else self._decoded([slots[i] for i in missing])
        scores = vectors @ q
        order = np.argsort(-scores, kind="stable")
        return [(slots[i], float(scores[i])) for i in order.tolist()]

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
                current.version + 1,
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
                    self.hot.put(changed, new_vector[0] if new_vector is not None else entry.vector)
            if new_vector is not None and catalog.tier[slot] != COLD:
                self.warm.put_many(old.namespace, [memory_id], self.cold.quantizer.decode(code))
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

    # -- the tier manager ------------------------------------------------------------------

    def decay_scores(self, slots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(slots, decayed importance) of the given or all live memories, at the clock's now."""
        catalog = self.catalog
        if slots is None:
            slots = catalog.slots()
        config = self.config
        scores = decay_scores(np.asarray(catalog.importance)[slots], np.asarray(catalog.accessed)[slots],
                              np.asarray(catalog.uses)[slots], self.clock(), config.half_life_s, config.use_weight)
        return slots, scores

    def _enforce_warm_capacity(self, protect: set[int] | None = None) -> int:
        """Demote the lowest-scoring warm memories to cold until warm is within capacity.

        Goes 1% below capacity so that a stream of promotions does not pay this every time.
        Caller holds the write lock.
        """
        excess = len(self.warm) - self.config.warm_capacity
        if excess <= 0:
            return 0
        target = excess + self.config.warm_capacity // 100
        slots, scores = self.decay_scores(self.catalog.slots(tiers=(WARM, HOT)))
        if protect:
            scores = np.where(np.isin(slots, list(protect)), np.inf, scores)
        # Warm-only memories leave before hot ones at equal score.
        hot_bias = (np.asarray(self.catalog.tier)[slots] == HOT).astype(np.float64)
        order = np.lexsort((hot_bias, scores))[:target]
        self._demote_to_cold(slots[order].tolist())
        return len(order)

    def _demote_to_cold(self, slots: list[int]) -> None:
        catalog = self.catalog
        for slot in slots:
            memory_id = catalog.ids[slot]
            with self._mutex:
                if catalog.tier[slot] == HOT:
                    self.hot.discard(memory_id)
                    catalog.set_tier(slot, WARM)
                    self._demotions["hot->warm"] += 1
                catalog.set_tier(slot, COLD)
                self._demotions["warm->cold"] += 1
            self.warm.discard(memory_id, catalog.namespaces.names[catalog.ns[slot]])

    def maintain(self) -> MaintenanceReport:
        """Apply decay (demote hot and warm memories whose score fell below the thresholds),
        enforce capacities, refit topics and int8 ranges when due, and persist statistics and
        the warm index. Also runs by itself every ``maintain_every_ops`` operations or
        ``maintain_every_s`` seconds, inside the operation that crosses the bound."""
        self._check_writable()
        with self._rw.write:
            self._check_writable()
            return self._maintain()

    def _maintain(self) -> MaintenanceReport:
        started = time.perf_counter()
        report = MaintenanceReport()
        config = self.config
        catalog = self.catalog
        slots, scores = self.decay_scores(catalog.slots(tiers=(WARM, HOT)))
        tiers = np.asarray(catalog.tier)[slots]
        with self._mutex:
            for slot in slots[(tiers == HOT) & (scores < config.hot_min_score)].tolist():
                self.hot.discard(catalog.ids[slot])
                catalog.set_tier(slot, WARM)
                self._demotions["hot->warm"] += 1
                report.demoted_to_warm += 1
        to_cold = slots[scores < config.warm_min_score].tolist()
        self._demote_to_cold(to_cold)
        report.demoted_to_cold = len(to_cold) + self._enforce_warm_capacity()
        report.topics_fitted = self._fit_topics()
        report.recalibrated = self._recalibrate_if_drifted()
        report.graphs_compacted = self._compact_graphs()
        self._persist(report)
        self._ops = 0
        self._last_maintain = self.clock()
        report.seconds = time.perf_counter() - started
        return report

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

    def _fit_topics(self) -> list[str]:
        fitted = []
        catalog = self.catalog
        for namespace, ns in list(catalog.namespaces.codes.items()):
            count = catalog.count_by_ns.get(ns, 0)
            model = self.topics.get(namespace)
            if count < self.config.topic_min_memories or (model is not None and count < 2 * model.fitted_on):
                continue
            slots = catalog.slots(namespace=ns)
            vectors = self._decoded(slots.tolist())
            model = TopicModel.fit(vectors, topics_for(count, self.config.topics_per_namespace))
            topics, _ = model.assign(vectors)
            with self._mutex:
                for slot, topic in zip(slots.tolist(), topics.tolist()):
                    catalog.set_topic(slot, topic)
            self.topics[namespace] = model
            fitted.append(namespace)
        return fitted

    def _compact_graphs(self) -> int:
        compacted = 0
        for namespace, graph in list(self.warm.graphs.items()):
            if graph.tombstones > max(1_000, len(graph)):
                ids = list(graph.label_of)
                self._rebuild_graph(namespace, [self.catalog.slot_of[i] for i in ids])
                compacted += 1
        return compacted

    # -- int8 calibration ------------------------------------------------------------------

    def _calibrate_if_due(self, incoming: np.ndarray) -> None:
        """Learn int8 ranges once the store (with this batch) reaches calibration_size memories,
        and again each time it has grown 8x since, up to a 50k sample."""
        quantizer = self.cold.quantizer
        total = len(self.catalog) + len(incoming)
        if quantizer.calibrated:
            grown = 0 < self._calibrated_on < _CALIBRATION_SAMPLE_MAX and \
                total >= _RECALIBRATE_GROWTH * self._calibrated_on
            if not grown:
                return
        elif total < self.config.calibration_size:
            return
        self._recalibrate(incoming)

    def _recalibrate_if_drifted(self) -> bool:
        if self._coded < 100 * self.dimension or self._clipped / self._coded <= self.config.drift_clip_rate:
            return False
        log.info("int8 clip rate %.4f over %.4f: re-calibrating", self._clipped / self._coded,
                 self.config.drift_clip_rate)
        self._recalibrate(np.zeros((0, self.dimension), dtype=np.float32))
        return True

    def _recalibrate(self, incoming: np.ndarray) -> None:
        """Fit int8 ranges on a sample of every memory (originals when kept) plus `incoming`, re-encode
        every stored code in one transaction, and rebuild the warm graphs. No memory is rewritten
        except its code; a crash leaves either the old codes and ranges or the new ones."""
        catalog = self.catalog
        slots = catalog.slots()
        ids = [catalog.ids[slot] for slot in slots.tolist()]
        originals = self.cold.originals(ids) if ids else None
        existing = originals if originals is not None else self._decoded(slots.tolist())
        everything = np.concatenate([existing, incoming]) if len(existing) else incoming
        rng = np.random.default_rng(len(everything))
        sample = everything
        if len(sample) > _CALIBRATION_SAMPLE_MAX:
            sample = sample[rng.choice(len(sample), _CALIBRATION_SAMPLE_MAX, replace=False)]
        quantizer = self.cold.quantizer
        quantizer.fit(sample)
        codes = quantizer.encode(existing) if len(existing) else np.zeros((0, self.dimension), dtype=np.int8)
        ops: list[Op] = [("codes", memory_id.encode("utf-8"), code.tobytes()) for memory_id, code in zip(ids, codes)]
        ops.append(self.cold.quantizer_op())
        ops.append(self.cold.meta_op("calibrated_on", len(sample)))
        self.cold.write(ops)
        self._calibrated_on = len(sample)
        self._clipped = 0.0
        self._coded = 0
        with self._mutex:
            for slot, code in zip(slots.tolist(), codes):
                catalog.set_code(slot, code)
        for namespace in list(self.warm.graphs):
            ns = catalog.namespaces.codes[namespace]
            self._rebuild_graph(namespace, catalog.slots(namespace=ns, tiers=(WARM, HOT)).tolist())

    # -- persistence -----------------------------------------------------------------------

    def _persist(self, report: MaintenanceReport) -> None:
        """Write changed statistics and topic models to cold, then save the warm graphs."""
        catalog = self.catalog
        with self._mutex:
            dirty = [slot for slot in catalog.dirty if catalog.ids[slot] is not None]
            catalog.dirty.clear()
        ops: list[Op] = []
        if dirty:
            need_cold = []
            for slot in dirty:
                entry = self.hot.peek(catalog.ids[slot])
                if entry is not None:
                    ops.extend(self.cold.record_ops([catalog.memory(slot, entry.memory)]))
                else:
                    need_cold.append(slot)
            contents = self.cold.get_many([catalog.ids[slot] for slot in need_cold])
            ops.extend(self.cold.record_ops(
                catalog.memory(slot, content) for slot, content in zip(need_cold, contents) if content is not None))
        for namespace, model in self.topics.items():
            ops.append(self.cold.meta_op(f"topics/{namespace}", model.state()))
        generation = self.cold.write(ops)
        report.flushed = len(dirty)
        self.warm.save(self.path / "warm", generation, self._quantizer_stamp())

    # -- introspection ---------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """Per tier: count, bytes, hits, misses; promotions and demotions since open."""
        self._check_open()
        with self._rw.read, self._mutex:
            catalog = self.catalog
            codes_bytes = sum(block.codes.nbytes for block in catalog.blocks.blocks.values())
            return StoreStats(
                memories=len(catalog),
                namespaces=sum(1 for count in catalog.count_by_ns.values() if count),
                hot=TierStats(len(self.hot), self.hot.nbytes(), self._hits["hot"], self._misses["hot"],
                              self.config.hot_capacity),
                warm=TierStats(len(self.warm), self.warm.nbytes(), self._hits["warm"], self._misses["warm"],
                               self.config.warm_capacity),
                cold=TierStats(len(catalog), self.cold.nbytes() + codes_bytes, self._hits["cold"],
                               self._misses["cold"]),
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
