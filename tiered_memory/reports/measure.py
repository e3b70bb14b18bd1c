"""Recall and latency of one search configuration: exact scans over codes, hnswlib graphs, rescoring.

Recall is computed on every query in batches (the same scores a single query gets, computed as
a matrix); latency is timed separately, one query at a time on one thread, as an agent calls it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiered_memory.quantization import Quantizer

KS = (1, 10, 100)
_WARMUP_QUERIES = 10
_QUERY_CHUNK = 64  # queries per gather of candidate rows (64 x 1,000 x 384 floats: 98 MB)
# Queries per scan of all codes: each scan widens every code to float32 once, so more queries
# per scan means fewer passes (256 x 62k scores: 64 MB).
_SCAN_CHUNK = 256


@dataclass(frozen=True)
class Rescore:
    """Re-rank oversample x k candidates by their float originals (as MemoryConfig.rescore does)."""

    originals: str  # "float16" or "float32": what the cold tier keeps
    oversample: int
    vectors: np.ndarray = field(compare=False, repr=False)  # the originals, row i for indexed row i

    @property
    def label(self) -> str:
        return f"{self.originals} x{self.oversample}"

    def rerank(self, query: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
        """One query's k best candidates by inner product with the originals."""
        scores = self.vectors[candidates].astype(np.float32) @ query
        return candidates[np.argsort(-scores, kind="stable")[:k]]


@dataclass(frozen=True)
class Latency:
    p50_us: float
    p99_us: float
    mean_us: float
    queries: int

    @property
    def qps(self) -> float:
        return 1e6 / self.mean_us


MISSING = -1  # a result hnswlib could not return


def exact_scores_of(queries: np.ndarray, base: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Exact float32 inner products of each query with the rows it returned (-inf where missing)."""
    out = np.empty(found.shape, dtype=np.float32)
    for start in range(0, len(queries), _QUERY_CHUNK):
        stop = start + _QUERY_CHUNK
        block = found[start:stop]
        scores = np.einsum("md,mkd->mk", queries[start:stop], base[np.maximum(block, 0)])
        out[start:stop] = np.where(block == MISSING, -np.inf, scores)
    return out


def recall_at(found: np.ndarray, queries: np.ndarray, base: np.ndarray, truth_scores: np.ndarray, k: int) -> float:
    """Tie-aware recall@k: a returned row counts when its exact score reaches the k-th best exact
    score minus 1e-5 (duplicate texts have identical vectors; an equal twin is not a miss)."""
    found = found[:, :k]
    exact = exact_scores_of(queries, base, found)
    return float((exact >= truth_scores[:, k - 1, None] - 1e-5).sum() / (len(found) * k))


def top_sorted(scores: np.ndarray, fetch: int) -> np.ndarray:
    """Indices of the `fetch` best scores of each row, best first."""
    fetch = min(fetch, scores.shape[1])
    top = np.argpartition(-scores, fetch - 1, axis=1)[:, :fetch]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def flat_candidates(quantizer: Quantizer, queries: np.ndarray, codes: np.ndarray, fetch: int) -> np.ndarray:
    """Each query's `fetch` best rows by an exact scan of the codes, best first."""
    out = np.empty((len(queries), min(fetch, len(codes))), dtype=np.int64)
    for start in range(0, len(queries), _SCAN_CHUNK):
        stop = start + _SCAN_CHUNK
        out[start:stop] = top_sorted(quantizer.score_matrix(queries[start:stop], codes), fetch)
    return out


def rescored(queries: np.ndarray, candidates: np.ndarray, rescore: Rescore, k: int) -> np.ndarray:
    """The k best of each query's candidates by inner product with the float originals."""
    out = np.empty((len(queries), min(k, candidates.shape[1])), dtype=np.int64)
    for start in range(0, len(queries), _QUERY_CHUNK):
        stop = start + _QUERY_CHUNK
        block = candidates[start:stop]
        scores = np.einsum("md,mkd->mk", queries[start:stop], rescore.vectors[np.maximum(block, 0)].astype(np.float32))
        scores[block == MISSING] = -np.inf
        out[start:stop] = np.take_along_axis(block, top_sorted(scores, k), axis=1)
    return out


def recalls(candidates_for: Callable[[int], np.ndarray], queries: np.ndarray, base: np.ndarray,
            truth_scores: np.ndarray, rescore: Rescore | None) -> dict[int, float]:
    """Recall@1, @10, @100; `candidates_for(fetch)` gives each query's best `fetch` rows, best first."""
    out = {}
    for k in KS:
        if rescore is None:
            found = candidates_for(k)[:, :k]
        else:
            found = rescored(queries, candidates_for(rescore.oversample * k), rescore, k)
        out[k] = recall_at(found, queries, base, truth_scores, k)
    return out


@contextlib.contextmanager
def one_blas_thread() -> Iterator[bool]:
    """BLAS on one thread (yields True), or unchanged when threadpoolctl is missing (False).

    A single query's product is too small to split: on 2 cores, 2-thread OpenBLAS made a
    3,000-row float32 scan 5x slower (585 vs 122 us) than 1 thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield False
        return
    with threadpool_limits(limits=1):
        yield True


def time_queries(search: Callable[[np.ndarray], object], queries: np.ndarray,
                 clock: Callable[[], int] = time.perf_counter_ns) -> Latency:
    """Latency of `search` over these queries, one at a time on one thread, after a few
    discarded warm-up calls."""
    samples = np.empty(len(queries), dtype=np.float64)
    with one_blas_thread():
        for query in queries[:_WARMUP_QUERIES]:
            search(query)
        for i, query in enumerate(queries):
            started = clock()
            search(query)
            samples[i] = (clock() - started) / 1e3
    return Latency(float(np.percentile(samples, 50)), float(np.percentile(samples, 99)), float(samples.mean()),
                   len(samples))


def single_flat_search(quantizer: Quantizer, codes: np.ndarray, k: int,
                       rescore: Rescore | None) -> Callable[[np.ndarray], np.ndarray]:
    """One query's search as an agent would run it: scan the codes, take the top, maybe rescore."""
    fetch = k if rescore is None else k * rescore.oversample

    def search(query: np.ndarray) -> np.ndarray:
        scores = quantizer.scores(query, codes)
        top = top_sorted(scores[None, :], fetch)[0]
        return top if rescore is None else rescore.rerank(query, top, k)

    return search


def graph_candidates(index: Any, queries: np.ndarray, fetch: int, threads: int) -> np.ndarray:
    """Each query's `fetch` nearest labels from hnswlib, best first; MISSING where hnswlib could
    not fill `fetch` results (it raises for the whole batch, so those queries are retried alone)."""
    fetch = min(fetch, index.element_count)
    try:
        return index.knn_query(queries, k=fetch, num_threads=threads)[0].astype(np.int64)
    except RuntimeError:
        out = np.full((len(queries), fetch), MISSING, dtype=np.int64)
        for i, query in enumerate(queries):
            with contextlib.suppress(RuntimeError):
                out[i] = index.knn_query(query, k=fetch, num_threads=1)[0][0]
        return out


def single_graph_search(index: Any, k: int, rescore: Rescore | None) -> Callable[[np.ndarray], np.ndarray]:
    """One query against an hnswlib index on one thread, maybe rescored (empty when hnswlib
    cannot fill the results; the engine then falls back to an exact scan)."""
    fetch = min(k if rescore is None else k * rescore.oversample, index.element_count)
    knn_query = index.knn_query

    def search(query: np.ndarray) -> np.ndarray:
        try:
            labels = knn_query(query, k=fetch, num_threads=1)[0][0].astype(np.int64)
        except RuntimeError:
            return np.zeros(0, dtype=np.int64)
        return labels if rescore is None else rescore.rerank(query, labels, k)

    return search
