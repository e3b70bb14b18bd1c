"""Fixtures for the pytest-benchmark suite: one Bench (ours + peers) on DailyDialog per session.

Run with ``pytest benchmarks/ --benchmark-only`` (not part of the default test run, whose
testpaths is tests/). $TIERED_MEMORY_BENCH_SIZE stores fewer rows for a quicker look.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tiered_memory.bench.runner import Bench, Options
from tiered_memory.bench.workload import Workload, dailydialog_workload
from tiered_memory.corpora import DatasetNotFoundError


@pytest.fixture(scope="session")
def workload() -> Workload:
    size = os.environ.get("TIERED_MEMORY_BENCH_SIZE")
    try:
        return dailydialog_workload(queries=500, size=int(size) if size else None)
    except DatasetNotFoundError as err:
        pytest.skip(f"DailyDialog is absent, nothing to measure on: {err}")


@pytest.fixture(scope="session")
def bench(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    options = Options(workdir=Path(tmp_path_factory.mktemp("bench")), progress=False)
    bench = Bench(workload, options)
    bench.engine()
    yield bench
    bench.close()


def peer_or_skip(bench: Bench, key: str) -> object:
    peer = bench.peer(key)
    if peer is None:
        pytest.skip(bench.skipped.get(key, f"{key} not selected"))
    return peer


def cycling(items: list) -> Iterator:
    return itertools.cycle(items)
