"""ColdIndex: the on-disk int8 graph over a huge namespace's cold part, against numpy brute force."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("usearch")

from tiered_memory.errors import (  # noqa: E402
    DimensionMismatchError,
    InvalidInputError,
    InvalidVectorError,
    StorageError,
)
from tiered_memory.tiers.cold_index import ColdIndex  # noqa: E402

N, D, K = 3_000, 64, 10


def _clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors in 30 loose clusters (real embeddings cluster, uniform noise does not)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, D)).astype(np.float32)
    rows = centres[rng.integers(0, 30, n)] + 0.6 * rng.standard_normal((n, D)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray, np.ndarray]:
    vectors = _clustered(N, seed=1)
    queries = _clustered(50, seed=2)
    return [f"m{i}" for i in range(N)], vectors, queries


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data: tuple[list[str], np.ndarray, np.ndarray]) -> ColdIndex:
    ids, vectors, _ = data
    # Breadth 128: these loose 64-d clusters pack scores tightly (exact int8 ranking itself reaches 0.96).
    return ColdIndex.build(tmp_path_factory.mktemp("cold") / "cold.json", ids, vectors, generation=3,
                           expansion_search=128, threads=1)


def _recall(found: list[list[str]], queries: np.ndarray, vectors: np.ndarray, k: int,
            allowed: np.ndarray | None = None) -> float:
    """Tie-aware: a returned row counts if its exact score reaches the k-th best allowed score."""
    scores = queries @ vectors.T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    kth = -np.sort(-scores, axis=1)[:, k - 1]
    hits = sum(int((scores[i, [int(m[1:]) for m in row]] >= kth[i] - 1e-5).sum()) for i, row in enumerate(found))
    return hits / (len(queries) * k)


def test_congruent_with_brute_force(built: ColdIndex, data: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    ids, vectors, queries = data
    results = [built.search(q, K) for q in queries]
    assert all(len(found) == K for found, _ in results)
    # Stated bound: recall@10 >= 0.95 against exact float32 inner products.
    assert _recall([found for found, _ in results], queries, vectors, K) >= 0.95
    for q, (found, scores) in zip(queries, results):
        exact = vectors[[int(m[1:]) for m in found]] @ q
        assert np.all(np.diff(scores) <= 1e-6)  # best first
        assert np.abs(scores - exact).max() < 0.02  # cosines of int8 codes, close to the exact ones


def test_oversample_returns_more_candidates(built: ColdIndex, data: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    _, _, queries = data
    found, scores = built.search(queries[0], K, oversample=4)
    assert len(found) == len(set(found)) == 4 * K and len(scores) == 4 * K
    # A wider fetch searches more broadly: its best k hold (nearly) the plain search's k.
    assert len(set(found[:K]) & set(built.search(queries[0], K)[0])) >= K - 2


def test_allowed_filter(built: ColdIndex, data: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    ids, vectors, queries = data
    keep = np.arange(N) % 3 == 0
    allowed = {memory_id for memory_id, kept in zip(ids, keep) if kept}
    by_set = [built.search(q, K, allowed)[0] for q in queries]
    by_predicate = [built.search(q, K, lambda m: int(m[1:]) % 3 == 0)[0] for q in queries]
    assert by_set == by_predicate
    assert all(len(found) == K and set(found) <= allowed for found in by_set)
    assert _recall(by_set, queries, vectors, K, allowed=keep) >= 0.95
    assert built.search(queries[0], K, set())[0] == []
    rare = {ids[7]}  # one allowed row the graph's neighbourhood will not reach: fewer than k back, no error
    found, _ = built.search(queries[0], K, rare)
    assert set(found) <= rare


def test_ids_round_trip(tmp_path) -> None:
    vectors = _clustered(40, seed=5)
    ids = [f"{i:02d}-" + "é漢🙂"[i % 3] * (119 if i % 3 == 2 else 125) for i in range(39)] + ["x" * 128]
    assert all(len(memory_id) <= 128 for memory_id in ids)
    index = ColdIndex.build(tmp_path / "cold.json", ids, vectors, generation=0, threads=1)
    again = ColdIndex.open(tmp_path / "cold.json")
    assert again is not None
    for i in range(len(ids)):
        assert again.search(vectors[i], 1)[0] == [ids[i]]
    assert sorted(again.search(vectors[0], 40)[0]) == sorted(ids)
    index.close()
    again.close()


def test_bad_ids_and_vectors_raise(tmp_path) -> None:
    vectors = _clustered(4, seed=6)
    target = tmp_path / "cold.json"
    with pytest.raises(InvalidInputError):
        ColdIndex.build(target, ["a", "a", "b", "c"], vectors, generation=1)
    with pytest.raises(InvalidInputError):
        ColdIndex.build(target, ["a", "b", "c", "d" * 129], vectors, generation=1)
    with pytest.raises(InvalidInputError):
        ColdIndex.build(target, [], np.zeros((0, D), dtype=np.float32), generation=1)
    with pytest.raises(DimensionMismatchError):
        ColdIndex.build(target, ["a", "b", "c"], vectors, generation=1)
    broken = vectors.copy()
    broken[2, 5] = np.nan
    with pytest.raises(InvalidVectorError):
        ColdIndex.build(target, list("abcd"), broken, generation=1)
    with pytest.raises(InvalidInputError):
        ColdIndex.build(target, list("abcd"), vectors, generation=-1)
    assert not target.exists()


def test_search_input_and_closed(tmp_path) -> None:
    vectors = _clustered(20, seed=7)
    index = ColdIndex.build(tmp_path / "cold.json", [f"m{i}" for i in range(20)], vectors, generation=1)
    with pytest.raises(DimensionMismatchError):
        index.search(np.ones(D + 1, dtype=np.float32), K)
    with pytest.raises(InvalidVectorError):
        index.search(np.zeros(D, dtype=np.float32), K)
    with pytest.raises(InvalidInputError):
        index.search(vectors[0], 0)
    assert len(index.search(vectors[0], K, oversample=5)[0]) == 20  # capped at the rows held
    index.close()
    with pytest.raises(StorageError):
        index.search(vectors[0], K)


def _files(path) -> dict[str, object]:
    meta = json.loads(path.read_text())
    return {part: path.parent / entry["name"] for part, entry in meta["files"].items()}


def test_missing_damaged_or_mismatched_gives_none(tmp_path, data, caplog) -> None:
    ids, vectors, _ = data
    target = tmp_path / "cold.json"
    assert ColdIndex.open(target) is None
    ColdIndex.build(target, ids[:500], vectors[:500], generation=4, threads=1).close()
    assert ColdIndex.open(target, generation=4, count=500, dimension=D) is not None
    caplog.set_level(logging.WARNING, logger="tiered_memory.tiers.cold_index")
    assert ColdIndex.open(target, generation=5) is None
    assert ColdIndex.open(target, count=499) is None
    assert ColdIndex.open(target, dimension=D + 1) is None
    assert "generation is 4, the caller expects 5" in caplog.text

    graph = _files(target)["graph"]
    original = graph.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    graph.write_bytes(bytes(damaged))
    assert ColdIndex.open(target) is None
    assert "checksum" in caplog.text
    graph.write_bytes(original[:-10])  # truncated
    assert ColdIndex.open(target) is None
    graph.write_bytes(original)
    assert ColdIndex.open(target) is not None

    ids_file = _files(target)["ids"]
    ids_file.unlink()
    assert ColdIndex.open(target) is None
    target.write_text("{not json")
    assert ColdIndex.open(target) is None


def test_rebuild_replaces_atomically(tmp_path, data) -> None:
    ids, vectors, queries = data
    target = tmp_path / "cold.json"
    old = ColdIndex.build(target, ids[:1_000], vectors[:1_000], generation=1, threads=1)
    old_files = _files(target)
    before = [old.search(q, K)[0] for q in queries[:10]]
    fresh_ids = [f"n{i}" for i in range(1_000)]
    new = ColdIndex.build(target, fresh_ids, vectors[1_000:2_000], generation=2, threads=1)
    assert not any(path.exists() for path in old_files.values())  # the old build's files are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, *(p.name for p in _files(target)
                                                                                .values())])
    # A reader holding the old build keeps reading it, whole.
    assert [old.search(q, K)[0] for q in queries[:10]] == before
    opened = ColdIndex.open(target)
    assert opened is not None and opened.generation == 2 and len(opened) == 1_000
    assert all(m.startswith("n") for m in opened.search(queries[0], K)[0])
    assert new.file_bytes() == sum(p.stat().st_size for p in tmp_path.iterdir())
    assert 0 < new.nbytes() < new.file_bytes()
    for index in (old, new, opened):
        index.close()
