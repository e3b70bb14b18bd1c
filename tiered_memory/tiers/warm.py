"""Warm tier: one hnswlib graph per namespace, over dequantized int8 codes.

One graph per namespace keeps tenants apart without hnswlib's per-candidate Python ``filter=``
callable, which costs 3.5x at 50% selectivity and 64x at 1% (measured on this machine).

Labels are never reused within a graph: hnswlib 0.8 mis-tracks a label that is re-added while a
deleted element still carries it, so each graph hands out increasing labels and recycles the
*slots* of deleted elements instead (``replace_deleted=True``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import hnswlib
import msgpack
import numpy as np

from tiered_memory.crypto import OVERHEAD, Sealer
from tiered_memory.errors import EncryptionRequiredError, TieredMemoryError
from tiered_memory.records import Memory

log = logging.getLogger(__name__)

_INITIAL_CAPACITY = 64  # doubles as needed; hnswlib allocates every slot up front
_GRAPH_FIXED_BYTES = 65_536 * 40  # hnswlib's label_op_locks_: MAX_LABEL_OPERATION_LOCKS std::mutex of 40 B
_FILE_VERSION = 2  # 2: the sidecar carries its own checksum (meta_crc32); version 1 sidecars are rebuilt once
# The sidecar's fields, in the order its checksum covers them, and the type each must have.
_META_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("version", int), ("namespace", str), ("labels", list), ("ids", list), ("next_label", int),
    ("max_elements", int), ("crc32", int), ("size", int), ("generation", int), ("stamp", str), ("sealed", bool))
_STATE_READ_MIN = 256  # Graph.verify reads this many labels or more from one copy of the index
_DELETE_MARK = 0x01  # hnswlib 0.8: the deleted flag, third byte of an element's level-0 link list header
_MAX_LABEL = 1 << 62  # labels are int64 in the graph; next_label + a batch must not overflow


_COMPACTION_FLOOR = 16  # tombstones a graph may hold whatever its size


class Graph:
    """One namespace's hnswlib index and its label <-> memory id maps."""

    def __init__(self, namespace: str, dimension: int, m: int, ef_construction: int, ef_search: int,
                 index: hnswlib.Index | None = None) -> None:
        self.namespace = namespace
        self.dimension = dimension
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.index = index if index is not None else self._new_index(_INITIAL_CAPACITY)
        self.label_of: dict[str, int] = {}
        self.id_of: dict[int, str] = {}
        self.next_label = 0
        self.touched: set[str] | None = None  # while a compacted copy is being built: ids changed since

    def _new_index(self, capacity: int) -> hnswlib.Index:
        index = hnswlib.Index(space="ip", dim=self.dimension)
        index.init_index(max_elements=capacity, ef_construction=self.ef_construction, M=self.m,
                         random_seed=100)
        index.set_ef(self.ef_search)
        index.set_num_threads(1)
        return index

    def __len__(self) -> int:
        return len(self.label_of)

    def put_many(self, memory_ids: list[str], vectors: np.ndarray) -> None:
        """Insert these memories; a memory already present gets a new label and its old element
        becomes a tombstone."""
        if not memory_ids:  # hnswlib's add_items raises IndexError on an empty batch
            return
        for memory_id in memory_ids:
            if memory_id in self.label_of:
                self.discard(memory_id)
        labels = np.arange(self.next_label, self.next_label + len(memory_ids), dtype=np.int64)
        self.next_label += len(memory_ids)
        needed = self.index.element_count + len(memory_ids)
        if needed > self.index.get_max_elements():
            self.index.resize_index(max(needed, 2 * self.index.get_max_elements()))
        # Tombstones are not recycled (hnswlib's replace_deleted): re-linking a recycled slot cost
        # 6.2 ms against 1.35 ms for a fresh insertion here, and after many demote/promote cycles
        # it left live nodes unreachable (tests/test_concurrency.py). Deleted nodes keep serving
        # as stepping stones; compaction (tiering) rebuilds a graph once they outnumber the living.
        # Batches use every core (we hold the write lock, so no knn_query runs meanwhile).
        threads = 1 if len(memory_ids) < 64 else (os.cpu_count() or 1)
        self.index.add_items(vectors, labels, num_threads=threads)
        for memory_id, label in zip(memory_ids, labels.tolist()):
            self.label_of[memory_id] = label
            self.id_of[label] = memory_id
        if self.touched is not None:
            self.touched.update(memory_ids)

    def discard(self, memory_id: str) -> bool:
        label = self.label_of.pop(memory_id, None)
        if label is None:
            return False
        del self.id_of[label]
        self.index.mark_deleted(label)
        if self.touched is not None:
            self.touched.add(memory_id)
        return True

    @property
    def needs_compaction(self) -> bool:
        # Tombstones past the living: a floor of 1,024 let small graphs pile them up, and with 25
        # live nodes among 68 (or 4 among 100) hnswlib stopped reaching some live ones at all
        # (knn_query could not return every live label; the crash trials of
        # tests/test_crash.py under a tiny budget found such memories by scan, not by graph).
        # Rebuilding a graph of a few dozen vectors costs about a millisecond.
        return self.tombstones > max(_COMPACTION_FLOOR, len(self))

    def search(self, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray] | None:
        """Top-k ids and inner products; None when hnswlib cannot fill k (tombstones), so the
        caller falls back to an exact scan instead of returning fewer results."""
        k = min(k, len(self.label_of))
        if k == 0:
            return [], np.zeros(0, dtype=np.float32)
        try:
            labels, distances = self.index.knn_query(query, k=k, num_threads=1)
        except RuntimeError:
            return None
        return list(map(self.id_of.__getitem__, labels[0].tolist())), 1.0 - distances[0]

    def vectors(self, memory_ids: list[str]) -> np.ndarray:
        labels = [self.label_of[memory_id] for memory_id in memory_ids]
        return np.asarray(self.index.get_items(labels), dtype=np.float32).reshape(len(labels), self.dimension)

    def verify(self, memory_ids: list[str], vectors: np.ndarray, atol: float = 1e-5) -> list[str]:
        """The ids among `memory_ids` whose vector in this graph is not the given one (row i for
        id i), or that the graph cannot return (absent, or its element deleted in hnswlib); in
        the order given.

        A loaded graph's sidecar maps labels to ids; a well-formed sidecar can still map them
        wrongly (two ids swapped: a memory's own vector then finds another). Only the owner of the
        true vectors (the engine, from the cold tier's codes) can tell: it calls this after a load
        and re-indexes what comes back."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(memory_ids), self.dimension)
        present = [i for i, memory_id in enumerate(memory_ids) if memory_id in self.label_of]
        bad = np.ones(len(memory_ids), dtype=bool)
        if present:
            labels = np.fromiter((self.label_of[memory_ids[i]] for i in present), dtype=np.uint64, count=len(present))
            stored, served = self._stored_rows(labels)
            same = np.isclose(stored, vectors[present], atol=atol).all(axis=1) & served
            bad[present] = ~same
        return [memory_ids[i] for i in np.flatnonzero(bad).tolist()]

    def _stored_rows(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The float vectors hnswlib holds for these labels, and whether each is there and live."""
        if len(labels) >= _STATE_READ_MIN:
            found = self._rows_from_state(labels)
            if found is not None:
                return found
        rows = np.zeros((len(labels), self.dimension), dtype=np.float32)
        served = np.zeros(len(labels), dtype=bool)
        try:
            rows[:] = np.asarray(self.index.get_items(labels.tolist()), dtype=np.float32)
            served[:] = True
        except RuntimeError:  # a deleted or unknown label: one by one
            for i, label in enumerate(labels.tolist()):
                try:
                    rows[i] = np.asarray(self.index.get_items([label]), dtype=np.float32)[0]
                    served[i] = True
                except RuntimeError:
                    pass
        return rows, served

    def _rows_from_state(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Vectors read from one copy of the index (hnswlib's pickle state): hnswlib's get_items
        converts each vector through Python lists, 108 us a vector at d=384 against ~4 us this
        way (50k vectors: 5.4 s against 0.2 s, measured). None when the state is not laid out as
        hnswlib 0.8 lays it out (the caller then uses get_items)."""
        try:
            state = self.index.__getstate__()[0]
            n, per = int(state["cur_element_count"]), int(state["size_data_per_element"])
            offset, label_at = int(state["offset_data"]), int(state["label_offset"])
            width = 4 * self.dimension
            if state["ser_version"] != 1 or state["dim"] != self.dimension or not offset + width <= label_at <= per - 8:
                return None
            level0 = np.asarray(state["data_level0"]).view(np.uint8)[: n * per].reshape(n, per)
            external = np.asarray(state["label_lookup_external"], dtype=np.uint64)
            internal = np.asarray(state["label_lookup_internal"], dtype=np.int64)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, IndexError):
            return None
        order = np.argsort(external)
        sorted_labels = external[order]
        at = np.minimum(np.searchsorted(sorted_labels, labels), max(len(sorted_labels) - 1, 0))
        known = (sorted_labels[at] == labels) if len(sorted_labels) else np.zeros(len(labels), dtype=bool)
        rows_at = np.where(known, internal[order][at] if len(order) else 0, 0)
        known &= (rows_at >= 0) & (rows_at < n)
        rows_at = np.where(known, rows_at, 0)
        if n == 0:
            return np.zeros((len(labels), self.dimension), dtype=np.float32), np.zeros(len(labels), dtype=bool)
        picked = level0[rows_at]
        rows = np.ascontiguousarray(picked[:, offset:offset + width]).view(np.float32)
        live = (picked[:, 2] & _DELETE_MARK) == 0  # hnswlib's mark, in the level-0 link list header
        own = np.ascontiguousarray(picked[:, label_at:label_at + 8]).view(np.uint64).ravel() == labels
        return rows, known & live & own

    @property
    def tombstones(self) -> int:
        return self.index.element_count - len(self.label_of)

    def nbytes(self) -> int:
        """RAM of the graph as hnswlib allocates it, not the 1-byte codes it was built from:
        level-0 block (float32 vector + 2M links + label) for *every* preallocated slot,
        upper-level links, hnswlib's label map, our two Python dicts, and a fixed 2.6 MB per
        graph (hnswlib's 65,536 label-operation mutexes: a 64-vector graph grows a fresh
        process's resident set by 2.8 MB, measured with tiered_memory.reports.rss_probe)."""
        capacity = self.index.get_max_elements()
        level0 = 4 * self.dimension + 4 * (2 * self.m) + 4 + 8
        upper = (4 * self.m + 4) / max(self.m - 1, 1)  # expected upper levels per element: 1/(M-1)
        return int(_GRAPH_FIXED_BYTES + capacity * (level0 + 2) + self.index.element_count * (upper + 48)
                   + len(self) * 200)


class WarmTier:
    """All namespaces' graphs, bounded in total by ``capacity`` memories (enforced by the engine)."""

    name = "warm"

    def __init__(self, dimension: int, capacity: int, m: int = 16, ef_construction: int = 200,
                 ef_search: int = 64) -> None:
        self.dimension = dimension
        self.capacity = capacity
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.graphs: dict[str, Graph] = {}
        self.dirty: set[str] = set()  # namespaces changed since the last save
        self.sealer: Sealer | None = None  # with a key, saved graph files are sealed
        self._size = 0

    def graph(self, namespace: str) -> Graph:
        graph = self.graphs.get(namespace)
        if graph is None:
            graph = self.graphs[namespace] = Graph(namespace, self.dimension, self.m, self.ef_construction,
                                                   self.ef_search)
        return graph

    def put(self, memory: Memory, vector: np.ndarray) -> None:
        self.put_many(memory.namespace, [memory.id], vector.reshape(1, -1))

    def put_many(self, namespace: str, memory_ids: list[str], vectors: np.ndarray) -> None:
        graph = self.graph(namespace)
        before = len(graph)
        graph.put_many(memory_ids, vectors)
        self._size += len(graph) - before
        self.dirty.add(namespace)

    def discard(self, memory_id: str, namespace: str | None = None) -> bool:
        graphs = [self.graphs[namespace]] if namespace in self.graphs else (
            self.graphs.values() if namespace is None else [])
        for graph in graphs:
            if graph.discard(memory_id):
                self._size -= 1
                self.dirty.add(graph.namespace)
                return True
        return False

    def vector(self, memory_id: str, namespace: str | None = None) -> np.ndarray | None:
        for graph in self._graphs_of(namespace):
            if memory_id in graph.label_of:
                return graph.vectors([memory_id])[0]
        return None

    def __contains__(self, memory_id: object) -> bool:
        return any(memory_id in graph.label_of for graph in self.graphs.values())

    def contains(self, memory_id: str, namespace: str) -> bool:
        graph = self.graphs.get(namespace)
        return graph is not None and memory_id in graph.label_of

    def __len__(self) -> int:
        return self._size

    def ids(self) -> Iterator[str]:
        for graph in list(self.graphs.values()):
            yield from list(graph.label_of)

    def search(self, namespace: str, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray] | None:
        graph = self.graphs.get(namespace)
        if graph is None:
            return [], np.zeros(0, dtype=np.float32)
        return graph.search(query, k)

    def set_ef(self, ef_search: int) -> None:
        self.ef_search = ef_search
        for graph in self.graphs.values():
            graph.ef_search = ef_search
            graph.index.set_ef(ef_search)

    def nbytes(self) -> int:
        return sum(graph.nbytes() for graph in self.graphs.values())

    def _graphs_of(self, namespace: str | None) -> Iterable[Graph]:
        if namespace is None:
            return list(self.graphs.values())
        graph = self.graphs.get(namespace)
        return [graph] if graph is not None else []

    def drop(self, namespace: str) -> None:
        graph = self.graphs.pop(namespace, None)
        if graph is not None:
            self._size -= len(graph)
            self.dirty.add(namespace)

    def new_graph(self, namespace: str) -> Graph:
        """A graph with this tier's settings that no search sees until swap() puts it in place."""
        return Graph(namespace, self.dimension, self.m, self.ef_construction, self.ef_search)

    def swap(self, graph: Graph) -> None:
        """Put a (compacted) graph in place of the namespace's current one."""
        old = self.graphs.get(graph.namespace)
        self._size += len(graph) - (len(old) if old is not None else 0)
        self.graphs[graph.namespace] = graph
        self.dirty.add(graph.namespace)

    def rebuild(self, namespace: str, memory_ids: list[str], vectors: np.ndarray) -> None:
        """Replace a namespace's graph by a fresh one holding exactly these memories."""
        self.drop(namespace)
        if memory_ids:
            self.put_many(namespace, memory_ids, vectors)

    # Persistence: <dir>/<key>.hnsw beside <dir>/<key>.meta (msgpack: the labels and ids, the file's
    # size and CRC-32, and the sidecar's own CRC-32 over its fields; see sidecar_problem).

    @staticmethod
    def file_key(namespace: str) -> str:
        return hashlib.sha1(namespace.encode("utf-8")).hexdigest()[:20]

    def _save_graph(self, graph: Graph, index_path: Path, meta_path: Path, generation: int, stamp: str) -> None:
        tmp = index_path.with_suffix(".hnsw.tmp")
        if self.sealer is None:
            graph.index.save_index(str(tmp))
        else:
            # The graph holds (dequantized) embeddings, which can leak content: with a key the file
            # is sealed whole. hnswlib only writes to paths, so it writes into an anonymous
            # in-memory file first; plaintext never reaches the disk.
            with _memory_file() as path:
                graph.index.save_index(path)
                tmp.write_bytes(self.sealer.seal(Path(path).read_bytes(), b"warm:" + graph.namespace.encode()))
        crc, size = _crc32(tmp)
        _fsync(tmp)
        os.replace(tmp, index_path)
        labels = list(graph.id_of)
        meta = {
            "version": _FILE_VERSION,
            "namespace": graph.namespace,
            "labels": labels,
            "ids": [graph.id_of[label] for label in labels],
            "next_label": graph.next_label,
            "max_elements": graph.index.get_max_elements(),
            "crc32": crc,
            "size": size,
            "generation": generation,
            "stamp": stamp,
            "sealed": self.sealer is not None,
        }
        _write_meta(meta_path, meta)

    def _load_checked(self, index: hnswlib.Index, index_path: Path, meta: dict[str, Any] | None) -> str | None:
        """Load a graph file into `index` if it is the one its sidecar describes; else say why not.

        One open file serves the check and the load: a writer saving meanwhile replaces the path
        with a new file, while this descriptor keeps the bytes whose checksum was checked. hnswlib
        reads a file only after its size and CRC-32 match: its loader trusts the header and can
        overrun its buffers on a damaged file."""
        if meta is None:
            return "its .meta file is missing or unreadable"
        problem = sidecar_problem(meta)
        if problem is not None:
            return problem
        try:
            fd = os.open(index_path, os.O_RDONLY)
        except FileNotFoundError:
            return "the index file is missing"
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read() if meta["sealed"] else None
                crc, size = (zlib.crc32(data), len(data)) if data is not None else _crc32(f)
            if size != meta["size"] or crc != meta["crc32"]:
                return "size or checksum differs from what was saved"
            # hnswlib allocates max_elements slots up front: bound it by what the (checked) file can
            # hold, at least one level-0 block per element, times the growth factor (2) of put_many.
            plain = size - (OVERHEAD if meta["sealed"] else 0)
            per_element = 4 * self.dimension + 8 * self.m + 16
            most = max(_INITIAL_CAPACITY, 2 * (plain // per_element))
            if not len(meta["labels"]) <= meta["max_elements"] <= most:
                return (f"max_elements={meta['max_elements']} is out of range for {len(meta['labels'])} labels in "
                        f"a file of {size} bytes (at most {most})")
            if data is None:
                index.load_index(f"/proc/self/fd/{fd}", max_elements=meta["max_elements"])
                return None
            if self.sealer is None:
                raise EncryptionRequiredError("the file is sealed and the store was opened without its key")
            plain_bytes = self.sealer.open(data, b"warm:" + meta["namespace"].encode())
            with _memory_file() as path:
                Path(path).write_bytes(plain_bytes)
                index.load_index(path, max_elements=meta["max_elements"])
            return None
        finally:
            os.close(fd)

    @staticmethod
    def _labels_problem(index: hnswlib.Index, meta: dict[str, Any]) -> str | None:
        """Whether the loaded file holds every label the sidecar names (a sidecar of another file,
        or damaged, would map memories to elements that are not there)."""
        held = set(index.get_ids_list())
        missing = sum(1 for label in meta["labels"] if label not in held)
        return None if not missing else f"{missing} of its labels are not in the index file"

    def load_one(self, directory: Path, namespace: str) -> dict[str, Any] | None:
        """Load one namespace's saved graph if its file and sidecar pass every check;
        returns its sidecar, or None when there is no usable file (a namespace loads its own graph only)."""
        meta_path = directory / f"{self.file_key(namespace)}.meta"
        if not meta_path.is_file():
            return None
        meta = _read_meta(meta_path)
        index = hnswlib.Index(space="ip", dim=self.dimension)
        try:
            problem = self._load_checked(index, meta_path.with_suffix(".hnsw"), meta)
            if problem is None and meta is not None and self.file_key(meta["namespace"]) != meta_path.stem:
                problem = f"it describes namespace {meta['namespace'][:80]!r}, whose files are named otherwise"
            if problem is None and meta is not None:
                problem = self._labels_problem(index, meta)
        except (RuntimeError, MemoryError, ValueError, OSError, TieredMemoryError) as err:
            problem = f"it failed to load: {err}"
        if meta is None or problem is not None:
            log.warning("warm index of %r is unusable (%s); it will be rebuilt from the cold tier", namespace, problem)
            return None
        if index.dim != self.dimension or index.M != self.m:
            log.warning("warm index of %r was built with other settings; it will be rebuilt", namespace)
            return None
        graph = Graph(namespace, self.dimension, self.m, self.ef_construction, self.ef_search, index)
        graph.index.set_ef(self.ef_search)
        graph.index.set_num_threads(1)
        graph.id_of = dict(zip(meta["labels"], meta["ids"]))
        graph.label_of = {memory_id: label for label, memory_id in graph.id_of.items()}
        graph.next_label = meta["next_label"]
        self.forget(namespace)
        self.graphs[namespace] = graph
        self._size += len(graph)
        return meta

    def forget(self, namespace: str) -> None:
        """Drop a namespace's graph from RAM and keep its file (the namespace is being unloaded;
        it was saved first, or the next load repairs it from cold)."""
        graph = self.graphs.pop(namespace, None)
        if graph is not None:
            self._size -= len(graph)
        self.dirty.discard(namespace)

    def save_some(self, directory: Path, generations: dict[str, int], stamp: str, only: set[str]) -> None:
        """Write the dirty graphs among `only` (atomically) and remove dropped ones' files; each
        file remembers its namespace's generation, so a load knows whether it is up to date."""
        directory.mkdir(parents=True, exist_ok=True)
        for namespace in sorted(self.dirty & only):
            key = self.file_key(namespace)
            graph = self.graphs.get(namespace)
            if graph is None:
                for suffix in (".hnsw", ".meta"):
                    (directory / (key + suffix)).unlink(missing_ok=True)
            else:
                self._save_graph(graph, directory / f"{key}.hnsw", directory / f"{key}.meta",
                                 generations.get(namespace, 0), stamp)
            self.dirty.discard(namespace)
        for namespace in only:
            if namespace not in self.graphs:
                continue
            meta_path = directory / f"{self.file_key(namespace)}.meta"
            meta = _read_meta(meta_path)
            generation = generations.get(namespace, 0)
            if meta is not None and (meta.get("generation") != generation or meta.get("stamp") != stamp):
                meta["generation"] = generation
                meta["stamp"] = stamp
                _write_atomic(meta_path, msgpack.packb(meta, use_bin_type=True))


@contextmanager
def _memory_file() -> Iterator[str]:
    """A path to an anonymous file in RAM (Linux memfd), removed on exit."""
    fd = os.memfd_create("tiered-memory-warm")
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _meta_checksum(meta: dict[str, Any]) -> int:
    """CRC-32 of the sidecar's fields in a fixed order (the sidecar's own checksum, beside them)."""
    return zlib.crc32(msgpack.packb([meta[name] for name, _ in _META_FIELDS], use_bin_type=True))


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    meta = {name: meta[name] for name, _ in _META_FIELDS}
    meta["meta_crc32"] = _meta_checksum(meta)
    _write_atomic(path, msgpack.packb(meta, use_bin_type=True))


def sidecar_problem(meta: dict[str, Any]) -> str | None:
    """What makes a graph's sidecar unusable (its graph is then rebuilt from the cold tier), or None.

    Every field is checked before use: present, of its type, consistent with the others (as many
    ids as labels, both unique, labels below next_label), and covered by the sidecar's checksum."""
    version = meta.get("version")
    if type(version) is not int or version != _FILE_VERSION:
        return f"file version {version!r}" if type(version) in (int, str) else "no file version"
    for name, kind in _META_FIELDS:
        if name not in meta:
            return f"its field {name!r} is missing"
        if type(meta[name]) not in (kind if isinstance(kind, tuple) else (kind,)):
            return f"its field {name!r} is a {type(meta[name]).__name__}, not {getattr(kind, '__name__', kind)}"
    if type(meta.get("meta_crc32")) is not int or meta["meta_crc32"] != _meta_checksum(meta):
        return "the sidecar's own checksum differs from its fields"
    labels, ids, next_label = meta["labels"], meta["ids"], meta["next_label"]
    if len(labels) != len(ids):
        return f"it lists {len(labels)} labels for {len(ids)} ids"
    if not {int} >= set(map(type, labels)) or not {str} >= set(map(type, ids)):
        return "a label that is not an int or an id that is not a str"
    if not 0 <= next_label <= _MAX_LABEL or meta["size"] < 0 or meta["max_elements"] < 0:
        return f"next_label={next_label}, size={meta['size']} or max_elements={meta['max_elements']} is out of range"
    if labels and (min(labels) < 0 or max(labels) >= next_label):
        return f"a label is outside 0..next_label-1 ({next_label - 1})"
    if ids and not 1 <= min(map(len, ids)) <= max(map(len, ids)) <= 128:
        return "an id is empty or longer than 128 characters"
    if len(set(labels)) != len(labels) or len(set(ids)) != len(ids):
        return "a label or an id is listed twice"
    return None


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
    except (OSError, ValueError, msgpack.UnpackException):
        return None
    return meta if isinstance(meta, dict) else None


def _crc32(source: Path | BinaryIO) -> tuple[int, int]:
    if isinstance(source, Path):
        with open(source, "rb") as f:
            return _crc32(f)
    crc, size = 0, 0
    while chunk := source.read(1 << 20):
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
    return crc, size


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
