"""Shared fixtures: a fake clock, seeded vectors, stores in temporary directories, the real model."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tiered_memory import MemoryConfig, TieredMemory

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TIERED_MEMORY_SHARED", ROOT.parent / "shared" / "datasets"))
DIM = 32


class FakeClock:
    """A clock tests move by hand, so decay and promotion never depend on sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def unit_rows(n: int, dim: int = DIM, seed: int = 0, clusters: int = 8, spread: float = 0.35) -> np.ndarray:
    """Clustered unit vectors: a structure closer to sentence embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    members = centers[rng.integers(clusters, size=n)]
    rows = members + spread * rng.standard_normal((n, dim))
    rows = rows.astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def tie_aware_recall(exact_scores: np.ndarray, returned: list[int], k: int) -> float:
    """Share of returned items whose exact score reaches the k-th best exact score (ties count)."""
    kth = np.sort(exact_scores)[-k]
    return float(np.mean(exact_scores[returned] >= kth - 1e-5)) if returned else 0.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_store(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., TieredMemory]]:
    """Open (and at teardown close) vector-only stores in tmp_path; settings as keywords."""
    opened: list[TieredMemory] = []

    def _open(path: Path | None = None, preload: bool = True, **settings: object) -> TieredMemory:
        """preload=True loads every namespace after opening (as the first use of each would), so
        tests that look at warm graphs or the catalog see them; tests of lazy loading pass False."""
        settings.setdefault("encoder", None)
        settings.setdefault("dimension", DIM)
        settings.setdefault("clock", clock)
        # Promotions inside the call, so tests see tiers change deterministically (the background
        # promoter has its own tests).
        settings.setdefault("promote_in_background", False)
        mem = TieredMemory(path or tmp_path / "store", **settings)  # type: ignore[arg-type]
        opened.append(mem)
        if preload:
            mem.preload(mem.namespaces())
        return mem

    yield _open
    for mem in opened:
        mem.close()


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2, loaded once per test session."""
    from tiered_memory import MiniLMEncoder

    encoder = MiniLMEncoder()
    encoder.encode(["warm up"])
    return encoder


@pytest.fixture(scope="session")
def dailydialog_vectors() -> np.ndarray:
    path = SHARED / "dailydialog" / "embeddings_all-MiniLM-L6-v2_f32.npy"
    if not path.is_file():
        pytest.skip(f"DailyDialog embeddings not found at {path} (../shared/datasets is absent)")
    return np.load(path, mmap_mode="r")


def small_config(**changes: object) -> MemoryConfig:
    return MemoryConfig(**changes)  # type: ignore[arg-type]


# -- PostgreSQL ---------------------------------------------------------------------------------
# Tests marked `postgres` run against the server TIERED_MEMORY_PG_DSN names (default: the local
# one), each in a schema of its own that is dropped afterwards. Without a server they skip; in CI
# (CI and TIERED_MEMORY_PG_DSN set) a server that does not answer fails them instead.

PG_DSN_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"


def pg_unavailable(reason: str) -> None:
    """Skip, or in CI (which must run the PostgreSQL tests) fail, with this reason."""
    if os.environ.get("CI") and os.environ.get("TIERED_MEMORY_PG_DSN"):
        pytest.fail(f"CI must run the PostgreSQL tests, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    dsn = os.environ.get("TIERED_MEMORY_PG_DSN", PG_DSN_DEFAULT)
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError:
        pg_unavailable("psycopg 3 / psycopg_pool are not installed (pip install '.[postgres]')")
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as err:
        pg_unavailable(f"no PostgreSQL server answers at TIERED_MEMORY_PG_DSN={dsn!r} ({err})")
    return dsn


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh schema (tm_test_<random>) for one test, dropped with everything in it at the end."""
    import secrets

    import psycopg

    name = f"tm_test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
