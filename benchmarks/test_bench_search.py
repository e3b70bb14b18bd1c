"""search(vector=...), k=10: ours (steady state) against the floors and peers, same queries."""

from __future__ import annotations

import numpy as np
import pytest

from tiered_memory.bench.runner import NAMESPACE
from tiered_memory.bench.stats import recall_at_k
from tiered_memory.bench.workload import K

from .conftest import cycling, peer_or_skip

pytestmark = pytest.mark.benchmark(group="search k=10", warmup=True)


def _recall(bench, rows: list[list[int]]) -> float:
    found = np.array([r[:K] + [-1] * (K - len(r[:K])) for r in rows])
    return recall_at_k(found, bench.workload.queries, bench.workload.stored, bench.workload.truth_scores[:, -1])


def test_ours_steady_state(benchmark, bench) -> None:
    mem = bench.engine()
    queries = list(bench.workload.queries)
    results = [mem.search(vector=q, k=K, namespace=NAMESPACE) for q in queries]  # warm-up: hits become hot
    benchmark.extra_info["recall_at_10"] = _recall(bench, [[bench.row_of[h.memory.id] for h in r] for r in results])
    stream = cycling(queries)
    benchmark(lambda: mem.search(vector=next(stream), k=K, namespace=NAMESPACE))


@pytest.mark.parametrize("key", ["hnswlib", "usearch", "numpy", "chromadb"])
def test_peer(benchmark, bench, key: str) -> None:
    peer = peer_or_skip(bench, key)
    queries = list(bench.workload.queries)
    benchmark.extra_info["recall_at_10"] = _recall(bench, [peer.rows(peer.search(q, K)) for q in queries])
    stream = cycling(queries)
    benchmark(lambda: peer.search(next(stream), K))
