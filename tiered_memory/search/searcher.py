"""The searcher: ranked candidates from warm ANN, exact and IVF scans of int8 codes, the on-disk
index of huge cold parts and BM25, with filters and rescoring. No side effects: serving the hits
(counting accesses, asking for promotions) is the tier manager's.

Held by :class:`~tiered_memory.engine.TieredMemory`; every ranking runs with the store's
readers-writer lock held shared (the store takes it), so it reads the indexes but never changes
them.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from cachetools import LRUCache

from tiered_memory.encoders import as_unit_vectors
from tiered_memory.errors import InvalidInputError, TieredMemoryError
from tiered_memory.namespaces.catalog import Catalog
from tiered_memory.quantization import Int8Quantizer
from tiered_memory.records import Memory, check_text
from tiered_memory.search.filters import Predicate
from tiered_memory.search.fusion import NEIGHBOUR_WEIGHTS
from tiered_memory.search.lexical_tier import Doc
from tiered_memory.tiering.topics import TopicModel
from tiered_memory.tiers.blocks import INDEXED, scan
from tiered_memory.tiers.cold_parts import IndexedPart

if TYPE_CHECKING:
    from tiered_memory.parts import StoreParts
    from tiered_memory.tiers.cold_store import ColdStore


Period = tuple[float, float]  # created_at bounds, seconds, both inclusive

# How far from 1 a float32 query's squared norm may be for it to count as unit length: a few
# float32 roundings of a 384-1024-d sum. Within it, scaling the vector would change every score
# by the same factor of at most 1 +- 1e-6, and so no ranking.
_UNIT_TOLERANCE = 4e-6


def _z_scores(values: np.ndarray) -> np.ndarray:
    """fusion.z_score on an array (all 0.0 when the values are all equal)."""
    spread = values.std()
    return np.zeros_like(values) if spread == 0 else (values - values.mean()) / spread


class Lookup:
    """Records and metadata fetched during one search, so each is read at most once."""

    def __init__(self, parts: StoreParts) -> None:
        self.parts = parts
        self.contents: dict[int, Memory | None] = {}

    def content(self, slot: int) -> Memory | None:
        """The record of a slot; None if cold no longer has it as the catalog knows it (a
        read-only opener whose writer deleted it, or moved its id to another namespace, since; or
        a store shared with other writers: such a memory is left out of results, never served from
        the other namespace)."""
        if slot in self.contents:
            return self.contents[slot]
        parts = self.parts
        memory_id = parts.catalog.ids[slot]
        entry = parts.hot.peek(memory_id)
        content = entry.memory if entry is not None else self.checked(slot, parts.cold.get(memory_id))
        # -- several writers: another process may delete it between this call's version check and
        # this read (as for a read-only opener, it is left out of the results)
        if content is None and not parts.read_only and not parts.shared_cold:
            raise TieredMemoryError(f"memory {memory_id!r} is in the catalog but not in cold storage")
        self.contents[slot] = content
        return content

    def checked(self, slot: int, content: Memory | None) -> Memory | None:
        """The record if it belongs to the slot's namespace (issue 11.4), else None."""
        catalog = self.parts.catalog
        if content is None or catalog.namespaces.codes.get(content.namespace) != catalog.ns[slot]:
            return None
        return content

    def metadata(self, slot: int) -> Mapping[str, Any]:
        content = self.content(slot)
        return {} if content is None else content.metadata  # a gone memory is dropped when served



class RowFilter:
    """The filters of one search, in one namespace: kinds and allowed ids (checked on catalog
    columns, vectorized), expired slots (left out), and the metadata predicate (which needs the
    record)."""

    def __init__(self, kind_codes: list[int] | None, allowed: np.ndarray | None, predicate: Predicate | None,
                 eligible: int, total: int, catalog: Catalog, expired: set[int] | None = None) -> None:
        self.kind_codes = kind_codes
        self.allowed = allowed
        self._allowed_set = None if allowed is None else set(allowed.tolist())
        self.predicate = predicate
        self.eligible = eligible
        self.selectivity = eligible / total if total else 0.0
        self.expired = expired
        self._expired_array = None if expired is None else np.fromiter(expired, dtype=np.int64, count=len(expired))
        self.active = kind_codes is not None or allowed is not None or predicate is not None or expired is not None
        self._kind_column = catalog.kind

    @classmethod
    def build(cls, catalog: Catalog, ns: int, kinds: list[str] | None, predicate: Predicate | None,
              only_ids: Collection[str] | None, period: Period | None = None,
              expired: set[int] | None = None) -> RowFilter:
        total = catalog.count_by_ns[ns]
        eligible = total
        kind_codes = None
        if kinds is not None:
            kind_codes = [catalog.kinds.codes[name] for name in kinds if name in catalog.kinds.codes]
            eligible = sum(catalog.count_by_kind[ns, code] for code in kind_codes)
            if expired:
                kind_column = catalog.kind
                eligible -= sum(1 for slot in expired if kind_column[slot] in kind_codes)
        elif expired:
            eligible -= len(expired)
        allowed = None
        if only_ids is not None:
            slot_of, ns_column = catalog.slot_of, catalog.ns
            chosen = [slot_of[i] for i in only_ids if i in slot_of]
            allowed = np.array([slot for slot in chosen if ns_column[slot] == ns], dtype=np.int64)
            eligible = min(eligible, len(allowed))
        if period is not None:  # created_at in [since, until], on the catalog column: no record read
            members = catalog.slots(namespace=ns)
            created = np.asarray(catalog.created)[members] if len(members) else np.zeros(0)
            inside = members[(created >= period[0]) & (created <= period[1])]
            allowed = inside if allowed is None else np.intersect1d(allowed, inside)
            eligible = min(eligible, len(allowed))
        if allowed is not None and expired:
            allowed = allowed[~np.isin(allowed, np.fromiter(expired, dtype=np.int64, count=len(expired)))]
            eligible = min(eligible, len(allowed))
        return cls(kind_codes, allowed, predicate, eligible, total, catalog, expired)

    def accepts(self, slot: int, lookup: Lookup) -> bool:
        if self.expired is not None and slot in self.expired:
            return False
        if self.kind_codes is not None and self._kind_column[slot] not in self.kind_codes:
            return False
        if self._allowed_set is not None and slot not in self._allowed_set:
            return False
        return self.predicate is None or self.predicate(lookup.metadata(slot))

    def mask(self, slots: np.ndarray) -> np.ndarray | None:
        """Rows that pass the column filters (None: all do); the predicate is applied later."""
        keep = None
        if self.kind_codes is not None and len(slots):
            keep = np.isin(np.asarray(self._kind_column)[slots], self.kind_codes)
        if self.allowed is not None and len(slots):
            inside = np.isin(slots, self.allowed)
            keep = inside if keep is None else keep & inside
        if self._expired_array is not None and len(slots):
            live = ~np.isin(slots, self._expired_array)
            keep = live if keep is None else keep & live
        return keep


def lexical_docs(catalog: Catalog, cold: ColdStore, namespace: str) -> list[Doc]:
    """Every memory of a loaded namespace as the lexical index needs it (records read in one
    transaction). Runs under the caller's shared lock, the first time a text search needs it."""
    ns = catalog.namespaces.codes.get(namespace)
    if ns is None:
        return []
    slots = sorted(catalog.slots_by_ns.get(ns, ()))
    ids = [catalog.ids[slot] for slot in slots]
    docs = []
    for slot, record in zip(slots, cold.get_many(ids)):
        if record is not None and record.namespace == namespace:
            docs.append(Doc(record.id, record.text, catalog.kinds.names[catalog.kind[slot]],
                            catalog.created[slot], bool(catalog.sensitive[slot])))
    return docs


class Searcher:
    """Ranked (slot, score) candidates of a query in the loaded namespaces, best first."""

    def __init__(self, parts: StoreParts, encode: Callable[[list[str]], np.ndarray]) -> None:
        self.catalog = parts.catalog
        self.cold = parts.cold
        self.config = parts.config
        self.clock = parts.clock
        self.dimension = parts.dimension
        self.registry = parts.registry
        self.hot = parts.hot
        self.warm = parts.warm
        self.lexical = parts.lexical
        self.cold_parts = parts.cold_parts
        self.topics = parts.topics
        self._decoded = parts.decoded
        self._encode = encode  # the store's encoder (EncoderError without one)
        self.query_cache: LRUCache = LRUCache(max(parts.config.query_cache_size, 1))  # digest -> query vector
        self._query_lock = threading.Lock()

    def dense(self, q: np.ndarray, namespaces: list[str], k: int, kinds: list[str] | None,
              predicate: Predicate | None, only_ids: Collection[str] | None, min_score: float | None,
              lookup: Lookup, period: Period | None = None) -> list[tuple[int, float]]:
        """The top k by cosine across namespaces (by the float originals with rescore=True)."""
        fetch = k * self.config.rescore_oversample if self.config.rescore else k
        if len(namespaces) == 1:  # one list, already best first: nothing to merge
            ranked = self._search_namespace(namespaces[0], q, fetch, kinds, predicate, only_ids, lookup, period)
        else:
            found: dict[int, float] = {}
            for ns in namespaces:
                for slot, score in self._search_namespace(ns, q, fetch, kinds, predicate, only_ids, lookup, period):
                    if score > found.get(slot, -math.inf):
                        found[slot] = score
            ranked = sorted(found.items(), key=lambda item: -item[1])[:fetch]
        if self.config.rescore:
            ranked = self._rescore(q, ranked)[:k]
        if min_score is not None:
            ranked = [(slot, score) for slot, score in ranked if score >= min_score]
        return ranked

    def _dense_candidates(self, namespace: str, ns: int, q: np.ndarray, depth: int, kinds: list[str] | None,
                          predicate: Predicate | None, only_ids: Collection[str] | None, lookup: Lookup,
                          period: Period | None) -> list[tuple[int, float]]:
        """The dense list for fusion. In a small namespace holding conversation turns, every row is
        scored (an exact scan) and each turn's cosine gains its session neighbours' (0.5 / 0.25 of
        their mean per step, as on the lexical side: LoCoMo dev hit@10 0.557 -> 0.593 dense alone)."""
        catalog = self.catalog
        count = catalog.count_by_ns.get(ns, 0)
        turns = self.lexical.neighbours(namespace) if count <= self.config.exact_search_max else None
        if turns is None:
            return self._search_namespace(namespace, q, depth, kinds, predicate, only_ids, lookup, period)
        position, table = turns
        scored = self._search_namespace(namespace, q, count, kinds, predicate, only_ids, lookup, period)
        if not scored:
            return []
        slots = np.fromiter((slot for slot, _ in scored), dtype=np.int64, count=len(scored))
        scores = np.fromiter((score for _, score in scored), dtype=np.float64, count=len(scored))
        ids = catalog.ids
        where = np.fromiter((position.get(ids[slot], -1) for slot in slots.tolist()), dtype=np.int64,
                            count=len(slots))
        by_turn = np.full(len(table) + 1, scores.min())  # a neighbour the filters dropped counts as the floor
        by_turn[where[where >= 0]] = scores[where >= 0]
        smoothed = scores.copy()
        turn_rows = np.flatnonzero(where >= 0)
        for level, weight in enumerate(NEIGHBOUR_WEIGHTS):
            near = table[where[turn_rows], level]  # (rows, 2), -1 = none
            present = near >= 0
            counts = present.sum(axis=1)
            sums = np.where(present, by_turn[np.where(present, near, len(table))], 0.0).sum(axis=1)
            smoothed[turn_rows] += np.where(counts > 0, weight * sums / np.maximum(counts, 1), 0.0)
        order = np.argsort(-smoothed, kind="stable")[:depth]
        return list(zip(slots[order].tolist(), smoothed[order].tolist()))

    def fused(self, query: str, q: np.ndarray, namespaces: list[str], k: int, kinds: list[str] | None,
              predicate: Predicate | None, min_score: float | None, only_ids: Collection[str] | None,
              mode: str, lookup: Lookup, period: Period | None = None,
              ) -> tuple[list[tuple[int, float]], dict[str, tuple[float, float]]]:
        """Hybrid or lexical search: candidates of both kinds per namespace (filters applied to
        each), fused by z-scored scores with equal weights (LoCoMo dev: hit@10 0.805 with
        neighbour context vs 0.557 dense, 0.789 BM25; min-max 0.797, RRF 0.749:
        benchmarks/reports/retrieval.md), every candidate's cosine computed for Hit.dense_score
        and for min_score. Returns the ranked slots and, by memory id, each one's (cosine, BM25)."""
        catalog = self.catalog
        depth = max(4 * k, 50)  # candidates per list: the fusion measured fused the top 100 of each
        dense: dict[int, float] = {}
        lexical: dict[int, float] = {}
        for namespace in namespaces:
            ns = catalog.namespaces.codes.get(namespace)
            if ns is None or namespace not in self.registry or not catalog.count_by_ns.get(ns):
                continue
            if mode == "hybrid":
                for slot, score in self._dense_candidates(namespace, ns, q, depth, kinds, predicate, only_ids,
                                                          lookup, period):
                    dense[slot] = max(score, dense.get(slot, -np.inf))
            rows = RowFilter.build(catalog, ns, kinds, predicate, only_ids, period, catalog.expired(ns, self.clock))
            if rows.eligible == 0:
                continue
            ids, scores = self.lexical.search(namespace, query, depth * 2 if rows.active else depth)
            kept = 0
            for memory_id, score in zip(ids, scores):
                slot = catalog.slot_of.get(memory_id)
                if slot is not None and catalog.ns[slot] == ns and rows.accepts(slot, lookup):
                    lexical[slot] = score
                    kept += 1
                    if kept == depth:
                        break
        candidates = list(dict.fromkeys([*dense, *lexical]))
        if not candidates:
            return [], {}
        # Cosines from the int8 codes (what dense mode ranks by); with rescore=True, from the
        # float originals, as dense mode does.
        if self.config.rescore:
            cosine = dict(self._rescore(q, [(slot, 0.0) for slot in candidates]))
        else:
            weights, offset = self._scan_weights(q)
            values = catalog.blocks.codes(candidates).astype(np.float32) @ weights + np.float32(offset)
            cosine = dict(zip(candidates, values.tolist()))
        if mode == "hybrid":
            # Every candidate has both scores for real: its cosine (neighbour-smoothed where the
            # dense list smoothed it) and its BM25 (0.0: none of the query's words), so nothing
            # is imputed, and a list of one candidate cannot zero the other signal's z-scores.
            dense_side = np.array([dense.get(slot, cosine[slot]) for slot in candidates])
            lexical_side = np.array([lexical.get(slot, 0.0) for slot in candidates])
            fused = _z_scores(dense_side) + _z_scores(lexical_side)  # equal weights
            order = np.argsort(-fused, kind="stable")
            fused_ids, fused_scores = [candidates[i] for i in order.tolist()], fused[order].tolist()
        else:
            fused_ids, fused_scores = list(lexical), list(lexical.values())
            order = sorted(range(len(fused_ids)), key=lambda i: -fused_scores[i])
            fused_ids, fused_scores = [fused_ids[i] for i in order], [fused_scores[i] for i in order]
        ranked = [(slot, score) for slot, score in zip(fused_ids, fused_scores)
                  if min_score is None or cosine[slot] >= min_score][:k]
        return ranked, {catalog.ids[slot]: (cosine[slot], lexical.get(slot, 0.0)) for slot, _ in ranked}

    def query_vector(self, query: str | None, vector: Any) -> np.ndarray:
        if (query is None) == (vector is None):
            raise InvalidInputError("pass either a query text or vector=, not both and not neither")
        if vector is not None:
            if type(vector) is np.ndarray and vector.dtype == np.float32 and vector.shape == (self.dimension,):
                # Already a float32 unit vector (what encoders give): used as it is, for it is
                # only read during the search. One float32 dot product checks it (NaN or inf
                # make it non-finite); normalising it again cost ~3 us and four arrays per search.
                # vdot, not @: it overflows to inf without a RuntimeWarning (huge vectors go on
                # to as_unit_vectors, which scales them safely).
                squared = float(np.vdot(vector, vector))
                if abs(squared - 1.0) <= _UNIT_TOLERANCE:
                    return vector
            matrix = as_unit_vectors(vector, self.dimension)
            if len(matrix) != 1:
                raise InvalidInputError(f"search takes one query vector, got {len(matrix)}")
            return matrix[0]
        text = check_text(query, self.config.max_text_chars)
        # Keyed by a digest, not the text: 1,024 cached queries of up to 1M characters could hold
        # ~4 GiB (300 long queries took RSS from 45 to 332 MiB: issue 11.9). An entry is now one
        # 16-byte key and one vector, so the cache's bytes are bounded by its entry count.
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        with self._query_lock:
            cached = self.query_cache.get(digest)
        if cached is not None:
            return cached
        encoded = self._encode([text])[0]
        encoded.setflags(write=False)
        with self._query_lock:
            self.query_cache[digest] = encoded
        return encoded

    def _search_namespace(self, namespace: str, q: np.ndarray, k: int, kinds: list[str] | None,
                          predicate: Predicate | None, only_ids: Collection[str] | None,
                          lookup: Lookup, period: Period | None = None) -> list[tuple[int, float]]:
        catalog = self.catalog
        ns = catalog.namespaces.codes.get(namespace)
        if ns is None or not catalog.count_by_ns.get(ns):
            return []
        expired = catalog.expired(ns, self.clock)  # None (one dict lookup) where nothing expires
        if kinds is None and predicate is None and only_ids is None and period is None and expired is None and \
                catalog.count_by_ns[ns] > self.config.exact_search_max and not catalog.blocks.cold_count.get(ns):
            # The common case, taken straight: no filter, everything in the warm graph.
            graph = self.warm.graphs.get(namespace)
            result = graph.search(q, k) if graph is not None else None
            if result is not None:  # map(), not a comprehension: this runs on every plain search
                return list(zip(map(catalog.slot_of.__getitem__, result[0]), result[1].tolist()))
        rows = RowFilter.build(catalog, ns, kinds, predicate, only_ids, period, expired)
        if rows.eligible == 0:
            return []
        if rows.allowed is not None and len(rows.allowed) <= self.config.exact_search_max:
            return self._scan_slots(rows.allowed, q, k, rows, lookup)
        if catalog.count_by_ns[ns] <= self.config.exact_search_max or rows.eligible <= self.config.exact_search_max:
            return self._scan(ns, q, k, rows, lookup, cold_only=False, warm_only=False)
        results: dict[int, float] = {}
        graph = self.warm.graphs.get(namespace)
        if graph is not None and len(graph):
            results.update(self._warm_search(namespace, ns, q, k, rows, lookup))
        elif graph is None and catalog.blocks.cold_count.get(ns, 0) < catalog.count_by_ns[ns]:
            results.update(self._scan(ns, q, k, rows, lookup, cold_only=False, warm_only=True))
        cold_count = catalog.blocks.cold_count.get(ns, 0)
        part = self.cold_parts.get(namespace) if cold_count else None
        indexed = catalog.blocks.size_of((ns, INDEXED, True)) if part is not None else 0
        if indexed:
            results.update(self._indexed_search(ns, part, q, k, rows, lookup))
        if cold_count - indexed:
            topics = None
            model = self.topics.get(namespace)
            if model is not None and cold_count - indexed > self.config.cold_exact_max:
                topics = self._probe_topics(ns, model, q, cold_count - indexed)
            results.update(self._scan(ns, q, k, rows, lookup, cold_only=True, warm_only=False, topics=topics,
                                      skip_indexed=True))
        return sorted(results.items(), key=lambda item: -item[1])[:k]

    def _indexed_search(self, ns: int, part: IndexedPart, q: np.ndarray, k: int, rows: RowFilter,
                        lookup: Lookup) -> list[tuple[int, float]]:
        """Top-k of the namespace's indexed cold rows: k * cold_index_oversample candidates from the
        on-disk index (still indexed, passing the filters), scored by their int8 codes as a scan
        scores them. A filter that the index's neighbourhood mostly fails falls back to an exact
        scan of the indexed rows, so a filtered search loses nothing to the index."""
        blocks = self.catalog.blocks
        place, slot_by_key, key = blocks.place, part.slot_by_key, (ns, INDEXED, True)

        def live(position: int) -> bool:
            slot = int(slot_by_key[position])
            return slot >= 0 and place.get(slot, (None,))[0] == key and (not rows.active or rows.accepts(slot, lookup))

        config = self.config
        keys, _ = part.index.search_keys(q, k, live, oversample=config.cold_index_oversample,
                                         expansion=config.cold_index_expansion)
        if rows.active and len(keys) < k:
            indexed_block = blocks.blocks.get(key)
            if indexed_block is None:
                return []
            weights, offset = self._scan_weights(q)
            return self._top(*scan([indexed_block], weights, offset), k, rows, lookup)
        if not len(keys):
            return []
        slots = slot_by_key[keys]
        weights, offset = self._scan_weights(q)
        scores = blocks.codes(slots.tolist()).astype(np.float32) @ weights + np.float32(offset)
        top = np.argsort(-scores, kind="stable")[:k]
        return list(zip(slots[top].tolist(), scores[top].tolist()))

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

    def _warm_search(self, namespace: str, ns: int, q: np.ndarray, k: int, rows: RowFilter,
                     lookup: Lookup) -> list[tuple[int, float]]:
        """ANN over the namespace's graph; with filters, oversample (by the filter's selectivity),
        then widen 4x twice, then fall back to an exact filtered scan of the warm rows."""
        slot_of = self.catalog.slot_of
        if not rows.active:
            result = self.warm.search(namespace, q, k)
            if result is not None:
                return [(slot_of[memory_id], score) for memory_id, score in zip(result[0], result[1].tolist())]
        graph_size = len(self.warm.graphs[namespace])
        fetch = k if not rows.active else min(graph_size, max(4 * k, int(2 * k / max(rows.selectivity, 1e-3))))
        for _ in range(3):
            result = self.warm.search(namespace, q, fetch)
            if result is None:  # hnswlib could not fill k past tombstones: scan instead
                break
            accepted: list[tuple[int, float]] = []
            for memory_id, score in zip(result[0], result[1].tolist()):
                slot = slot_of[memory_id]
                if rows.accepts(slot, lookup):
                    accepted.append((slot, score))
                    if len(accepted) == k:
                        return accepted
            if fetch >= graph_size:
                return accepted
            fetch = min(graph_size, fetch * 4)
        return self._scan(ns, q, k, rows, lookup, cold_only=False, warm_only=True)

    def _scan(self, ns: int, q: np.ndarray, k: int, rows: RowFilter, lookup: Lookup, cold_only: bool,
              warm_only: bool, topics: list[int] | None = None, skip_indexed: bool = False) -> list[tuple[int, float]]:
        """Exact top-k over the int8 codes of chosen blocks; the cost is one pass per row."""
        if warm_only:
            blocks = [b for key, b in self.catalog.blocks.iter_namespace(ns) if not key[2]]
        else:
            blocks = self.catalog.blocks.chosen(ns, topics, cold_only=cold_only, skip_indexed=skip_indexed)
        weights, offset = self._scan_weights(q)
        slots, scores = scan(blocks, weights, offset)
        return self._top(slots, scores, k, rows, lookup)

    def _scan_slots(self, slots: np.ndarray, q: np.ndarray, k: int, rows: RowFilter,
                    lookup: Lookup) -> list[tuple[int, float]]:
        """Exact top-k over a few given slots (gathered: cheap below exact_search_max rows)."""
        weights, offset = self._scan_weights(q)
        codes = self.catalog.blocks.codes(slots.tolist())
        return self._top(slots, codes.astype(np.float32) @ weights + np.float32(offset), k, rows, lookup)

    def _scan_weights(self, q: np.ndarray) -> tuple[np.ndarray, float]:
        quantizer = self.cold.quantizer
        if not isinstance(quantizer, Int8Quantizer):
            raise TieredMemoryError(f"the store's codes are {quantizer.name}, but scans read int8")
        return quantizer.scan_weights(q)

    @staticmethod
    def _top(slots: np.ndarray, scores: np.ndarray, k: int, rows: RowFilter,
             lookup: Lookup) -> list[tuple[int, float]]:
        keep = rows.mask(slots)
        if keep is not None:
            slots, scores = slots[keep], scores[keep]
        if not len(slots):
            return []
        if rows.predicate is None:
            top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            return list(zip(slots[top].tolist(), scores[top].tolist()))
        accepted = []
        for i in np.argsort(-scores, kind="stable").tolist():
            slot = int(slots[i])
            if rows.predicate(lookup.metadata(slot)):
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

