"""The data of one benchmark run: stored vectors (and texts), held-out queries, exact ground truth.

Every system in a run is measured on the same `Workload`: the same stored vectors in the same
order, the same queries, and recall against the same exact (float32, brute force) neighbours.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from tiered_memory.corpora import DatasetNotFoundError, exact_neighbors, load_dailydialog, scaled_vectors
from tiered_memory.errors import TieredMemoryError

K = 10
SCALE_SET_FILES = ("vectors.npy", "queries.npy", "truth_ids.npy", "truth_scores.npy", "meta.json")


@dataclass
class Workload:
    """Stored rows and held-out queries; ground truth is row numbers into `stored`."""

    name: str
    stored: np.ndarray  # (n, d) float32 unit rows; may be memory-mapped
    queries: np.ndarray  # (q, d) float32 unit rows, none of them stored
    truth_ids: np.ndarray  # (q, K) exact top-K row numbers, best first
    truth_scores: np.ndarray  # (q, K) their inner products
    texts: Sequence[str] | None  # one per stored row, or None when only vectors are known
    query_texts: list[str] | None  # one per query (distinct), or None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.stored)

    @property
    def dimension(self) -> int:
        return int(self.stored.shape[1])

    def text(self, row: int) -> str:
        """A stored row's text; vector-only workloads get a short label, so records are not empty."""
        return self.texts[row] if self.texts is not None else f"memory {row}"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "stored": self.size, "queries": len(self.queries), "dimension": self.dimension,
                "k": K, "texts": self.texts is not None, "query_texts": self.query_texts is not None, **self.source}


def _distinct_query_rows(texts: Sequence[str] | None, order: np.ndarray, count: int) -> np.ndarray:
    """The first `count` rows of `order` whose texts are all different, so that a text search
    never hits the engine's query cache (it would measure a dict lookup, not an encoding)."""
    if texts is None:
        return order[:count]
    chosen, seen = [], set()
    for row in order.tolist():
        if texts[row] not in seen:
            seen.add(texts[row])
            chosen.append(row)
            if len(chosen) == count:
                break
    return np.asarray(chosen, dtype=np.int64)


def split_workload(name: str, vectors: np.ndarray, texts: list[str] | None, queries: int, size: int | None,
                   seed: int, source: dict[str, Any]) -> Workload:
    """Hold out `queries` random rows as queries; store the others (the first `size` of them)."""
    if queries < 1 or queries >= len(vectors):
        raise TieredMemoryError(f"need 1 <= queries < {len(vectors)} rows, got {queries}")
    order = np.random.default_rng(seed).permutation(len(vectors))
    query_rows = _distinct_query_rows(texts, order, queries)
    keep = np.ones(len(vectors), dtype=bool)
    keep[query_rows] = False
    stored_rows = np.flatnonzero(keep)  # file order: conversations stay in sequence
    if size is not None:
        stored_rows = stored_rows[:size]
    stored = np.ascontiguousarray(vectors[stored_rows], dtype=np.float32)
    query_vectors = np.ascontiguousarray(vectors[query_rows], dtype=np.float32)
    truth_ids, truth_scores = exact_neighbors(query_vectors, stored, K)
    return Workload(
        name=name, stored=stored, queries=query_vectors, truth_ids=truth_ids, truth_scores=truth_scores,
        texts=None if texts is None else [texts[i] for i in stored_rows.tolist()],
        query_texts=None if texts is None else [texts[i] for i in query_rows.tolist()],
        source={**source, "seed": seed},
    )


def dailydialog_workload(root: str | os.PathLike[str] | None = None, queries: int = 500, size: int | None = None,
                         seed: int = 0) -> Workload:
    """DailyDialog's 62,142 utterances and their MiniLM embeddings; `queries` held out."""
    data = load_dailydialog(root)
    vectors = data.embeddings()
    stored = (len(vectors) - queries) if size is None else size
    name = f"dailydialog-{round(stored / 1000)}k"
    return split_workload(name, vectors, data.utterances, queries, size, seed,
                          {"dataset": "DailyDialog", "path": str(data.embeddings_path)})


def vectors_workload(path: str | os.PathLike[str], queries: int = 500, size: int | None = None,
                     seed: int = 0) -> Workload:
    """Your own embeddings (an (n, d) .npy file); rows are normalised, text scenarios are skipped."""
    file = Path(path)
    if not file.is_file():
        raise DatasetNotFoundError(f"no vectors file at {file}; give an (n, d) float .npy file")
    vectors = np.load(file, mmap_mode="r")
    if vectors.ndim != 2:
        raise TieredMemoryError(f"{file} holds shape {vectors.shape}; expected (n, d)")
    unit = np.asarray(vectors, dtype=np.float32)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    return split_workload(f"{file.stem}-{len(vectors)}", unit, None, queries, size, seed,
                          {"dataset": "vectors file", "path": str(file)})


def write_scale_set(out: Path, size: int, queries: int = 1_000, noise: float = 0.5, seed: int = 0,
                    root: str | os.PathLike[str] | None = None, log: Any = print) -> dict[str, Any]:
    """Write a `size`-row set made from real DailyDialog embeddings (see datasets/README.md).

    Queries are real held-out utterances; stored row i is base row i % len(base) plus Gaussian
    noise of norm about `noise`, renormalised; ground truth is exact search over all `size` rows.
    """
    started = time.perf_counter()
    data = load_dailydialog(root)
    vectors = np.asarray(data.embeddings(), dtype=np.float32)
    order = np.random.default_rng(seed).permutation(len(vectors))
    query_rows = _distinct_query_rows(data.utterances, order, queries)
    keep = np.ones(len(vectors), dtype=bool)
    keep[query_rows] = False
    base_rows = np.flatnonzero(keep)
    out.mkdir(parents=True, exist_ok=True)
    stored = np.lib.format.open_memmap(out / "vectors.npy", mode="w+", dtype=np.float32,
                                       shape=(size, vectors.shape[1]))
    chunk = 131_072
    for start in range(0, size, chunk):
        stop = min(start + chunk, size)
        # scaled_vectors cycles through its base; feeding it the slice of base rows this chunk
        # needs (in order) keeps row i = base[i % len(base)] + noise across chunks.
        base = vectors[base_rows[np.arange(start, stop) % len(base_rows)]]
        stored[start:stop] = scaled_vectors(base, stop - start, noise=noise, seed=seed + 1 + start // chunk)
    stored.flush()
    log(f"vectors: {size:,} x {vectors.shape[1]} in {time.perf_counter() - started:.0f} s; exact ground truth ...")
    query_vectors = vectors[query_rows]
    truth_ids, truth_scores = exact_neighbors(query_vectors, stored, K)
    np.save(out / "queries.npy", query_vectors)
    np.save(out / "truth_ids.npy", truth_ids)
    np.save(out / "truth_scores.npy", truth_scores)
    np.save(out / "base_rows.npy", base_rows)
    np.save(out / "query_rows.npy", query_rows)
    # How close the made-up neighbours are, next to the real ones: the set is only useful if
    # a copy is about as near its base as real neighbours are to each other.
    sample = np.arange(min(size, 2_000))
    copy_to_base = np.sum(stored[sample] * vectors[base_rows[sample % len(base_rows)]], axis=1)
    meta = {
        "size": size, "queries": len(query_rows), "dimension": int(vectors.shape[1]), "noise": noise, "seed": seed,
        "k": K, "dataset": "DailyDialog (real MiniLM embeddings + Gaussian noise)",
        "source": str(data.embeddings_path), "base_rows": len(base_rows),
        "median_copy_to_base_similarity": float(np.median(copy_to_base)),
        "median_kth_truth_score": float(np.median(truth_scores[:, -1])),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    log(f"wrote {out} in {meta['seconds']} s: {json.dumps(meta)}")
    return meta


def scale_set_workload(path: str | os.PathLike[str], queries: int | None = None,
                       root: str | os.PathLike[str] | None = None) -> Workload:
    """Read a set written by write_scale_set (datasets/make_scale_set.py); texts come from
    DailyDialog when it is found (row i carries its base utterance), else short labels."""
    folder = Path(path)
    missing = [name for name in SCALE_SET_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(f"{folder} lacks {missing}; make it with: python datasets/make_scale_set.py "
                                   f"--out {folder}")
    meta = json.loads((folder / "meta.json").read_text())
    stored = np.load(folder / "vectors.npy", mmap_mode="r")
    take = slice(None) if queries is None else slice(0, queries)
    query_vectors = np.load(folder / "queries.npy")[take]
    texts: Sequence[str] | None = None
    query_texts: list[str] | None = None
    try:
        utterances = load_dailydialog(root).utterances
    except DatasetNotFoundError:
        utterances = None
    if utterances is not None:
        base_rows = np.load(folder / "base_rows.npy")
        texts = CyclingTexts(utterances, base_rows, len(stored))
        query_texts = [utterances[i] for i in np.load(folder / "query_rows.npy")[take].tolist()]
    return Workload(
        name=f"scale-{len(stored) // 1000}k", stored=stored, queries=query_vectors,
        truth_ids=np.load(folder / "truth_ids.npy")[take], truth_scores=np.load(folder / "truth_scores.npy")[take],
        texts=texts, query_texts=query_texts, source={**meta, "path": str(folder)},
    )


class CyclingTexts(Sequence[str]):
    """Row i's text is its base utterance, looked up on access (a million strings would cost
    about 100 MB of RAM and blur the engine's own memory figures)."""

    def __init__(self, utterances: list[str], base_rows: np.ndarray, size: int) -> None:
        self._utterances = utterances
        self._base_rows = base_rows
        self._size = size

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, row: int) -> str: ...

    @overload
    def __getitem__(self, row: slice) -> list[str]: ...

    def __getitem__(self, row: int | slice) -> str | list[str]:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(self._size))]
        if not -self._size <= row < self._size:
            raise IndexError(row)
        return self._utterances[int(self._base_rows[(row % self._size) % len(self._base_rows)])]
