"""What a report measures on: indexed vectors, held-out queries, and the texts behind them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory.corpora import load_dailydialog
from tiered_memory.encoders import Encoder, as_unit_vectors
from tiered_memory.errors import ConfigError, InvalidInputError

MIN_INDEXED = 200  # recall@100 needs a corpus well above 100 rows


@dataclass
class Inputs:
    """Indexed rows and queries, unit length, float32; `texts` of the indexed rows when known."""

    base: np.ndarray
    queries: np.ndarray
    texts: list[str] | None
    description: dict[str, Any] = field(default_factory=dict)


def read_rows(path: Path, encoder: Callable[[], Encoder]) -> tuple[np.ndarray, list[str] | None]:
    """A .npy of (n, d) embeddings, or a text file of one text per line, encoded with the bundled model."""
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist; give a .npy of embeddings or a .txt with one text a line")
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise InvalidInputError(f"{path} is not a readable .npy array: {err}") from err
        if array.ndim != 2:
            raise InvalidInputError(f"{path} holds an array of shape {array.shape}; expected (rows, dimension)")
        return np.asarray(array, dtype=np.float32), None
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise InvalidInputError(f"{path} has no non-empty lines to encode")
    return np.asarray(encoder().encode(texts), dtype=np.float32), texts


def unit_rows(array: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    """Rows scaled to unit length (the engine ranks by inner product of unit vectors), and how
    many were not unit length already."""
    norms = np.linalg.norm(array, axis=1)
    rescaled = int((np.abs(norms - 1.0) > 1e-3).sum())
    try:
        return as_unit_vectors(array, array.shape[1]), rescaled
    except InvalidInputError as err:
        raise InvalidInputError(f"{what}: {err}") from err


def load_inputs(vectors: Path | None, queries: Path | None, query_count: int, limit: int | None, seed: int,
                encoder: Callable[[], Encoder]) -> Inputs:
    """Read the rows (DailyDialog's embeddings when no path is given), hold out queries unless a
    query file is given, and keep at most `limit` indexed rows (a seeded random subset)."""
    rng = np.random.default_rng(seed)
    if vectors is None:
        dailydialog = load_dailydialog()
        rows, texts = np.asarray(dailydialog.embeddings(), dtype=np.float32), dailydialog.utterances
        source = f"DailyDialog utterances, all-MiniLM-L6-v2 embeddings ({dailydialog.embeddings_path})"
    else:
        rows, texts = read_rows(vectors, encoder)
        source = str(vectors)
    rows, rescaled = unit_rows(rows, source)
    order = rng.permutation(len(rows))
    if queries is None:
        if query_count >= len(rows) - MIN_INDEXED:
            raise ConfigError(f"{source} has {len(rows)} rows: too few to hold out {query_count} queries "
                              f"and keep {MIN_INDEXED} to index; lower --query-count")
        query_rows, query_texts = rows[order[:query_count]], None
        order = order[query_count:]
        query_source = f"{query_count} rows held out of the input at random (seed {seed}), not indexed"
    else:
        raw_queries, query_texts = read_rows(queries, encoder)
        if raw_queries.shape[1] != rows.shape[1]:
            raise InvalidInputError(f"queries in {queries} have dimension {raw_queries.shape[1]}, "
                                    f"the vectors {rows.shape[1]}")
        query_rows, _ = unit_rows(raw_queries, str(queries))
        query_source = str(queries)
    if limit is not None:
        order = order[:limit]
    if len(order) < MIN_INDEXED:
        raise ConfigError(f"only {len(order)} rows left to index; a report needs at least {MIN_INDEXED}")
    order = np.sort(order)  # keep the input's order among the indexed rows
    base = np.ascontiguousarray(rows[order])
    return Inputs(
        base=base,
        queries=np.ascontiguousarray(query_rows),
        texts=None if texts is None else [texts[i] for i in order.tolist()],
        description={
            "source": source,
            "indexed": len(base),
            "dimension": int(base.shape[1]),
            "queries": len(query_rows),
            "query_source": query_source,
            "rows_rescaled_to_unit_length": rescaled,
            "query_texts": query_texts is not None,
        },
    )
