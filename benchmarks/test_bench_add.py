"""add_many with vectors given: durable batches of 1,000 into a fresh store per round."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tiered_memory import TieredMemory

pytestmark = pytest.mark.benchmark(group="add_many 1,000 vectors")


def test_add_many_vectors(benchmark, bench, tmp_path) -> None:
    workload = bench.workload
    rows = range(min(1_000, workload.size))
    texts = [workload.text(i) for i in rows]
    vectors = np.asarray(workload.stored[:len(texts)], dtype=np.float32)
    counter = iter(range(10**6))

    def fresh_store() -> tuple[tuple, dict]:
        path = tmp_path / f"store{next(counter)}"
        shutil.rmtree(path, ignore_errors=True)
        return (TieredMemory(path, encoder=None, dimension=workload.dimension),), {}

    def add(mem: TieredMemory) -> None:
        mem.add_many(texts, namespace="bench", vectors=vectors)
        mem.close()

    benchmark.pedantic(add, setup=fresh_store, rounds=5)
    benchmark.extra_info["memories_per_call"] = len(texts)
