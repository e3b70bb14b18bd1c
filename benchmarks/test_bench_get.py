"""get(id): ours hot against a raw cachetools get; a raw lmdb + msgpack read for scale."""

from __future__ import annotations

import pytest

from .conftest import cycling, peer_or_skip

pytestmark = pytest.mark.benchmark(group="get", warmup=True)


def test_ours_hot(benchmark, bench) -> None:
    mem = bench.engine()
    ids = bench.get_sample()
    for memory_id in ids:  # first touch promotes to hot
        mem.get(memory_id)
    stream = cycling(ids)
    benchmark(lambda: mem.get(next(stream)))


def test_cachetools_floor(benchmark, bench) -> None:
    peer = peer_or_skip(bench, "cachetools")
    stream = cycling(bench.get_sample())
    benchmark(lambda: peer.get(next(stream)))


def test_lmdb_msgpack_floor(benchmark, bench) -> None:
    peer = peer_or_skip(bench, "lmdb")
    stream = cycling(bench.get_sample())
    benchmark(lambda: peer.get(next(stream)))


def test_ours_cold_tier_read(benchmark, bench) -> None:
    mem = bench.engine()
    stream = cycling(bench.get_sample())
    benchmark(lambda: mem.cold.get(next(stream)))
