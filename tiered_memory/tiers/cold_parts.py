"""The cold part of huge namespaces, found through an on-disk index instead of a scan.

A namespace whose cold rows outnumber ``MemoryConfig.cold_index_min_rows`` gets a
:class:`~tiered_memory.tiers.cold_index.ColdIndex` (a usearch int8 graph, memory-mapped) over them, built
on the background thread. Its rows then sit in their own code block (topic
:data:`~tiered_memory.tiers.blocks.INDEXED`): a search asks the index for ``k * oversample`` candidates
and scores them with their int8 codes exactly as a scan would, so they merge with the warm graph's
and the scanned rows' on one scale. Rows that turned cold after the build, or whose code changed,
are not in that block and are scanned as before, until the next build takes them in.

What the file holds is checked, not trusted: at load (and at install) a row counts as indexed only
if its id is in the file and its code's fingerprint equals the one indexed. So an update, a delete
and re-add, a re-calibration or a crash between a write and the next build can make the index miss
nothing; such rows are scanned. Measured choice of index: benchmarks/results/cold-index/.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory.errors import InvalidInputError
from tiered_memory.tiers.cold_index import ColdIndex

log = logging.getLogger(__name__)

# Exact integer fingerprints: an int8 code (|x| <= 127) times integer weights (|w| <= 256 at d=384) sums to
# at most 384 * 127 * 256 ~ 1.25e7 in magnitude, below 2**24, so every partial sum is an integer
# float32 holds exactly and BLAS computes it without rounding in any order of summation: the same
# code gives the same fingerprint on every run. float32, not float64: at 930k rows the float64
# widening was a quarter of a huge namespace's load (benchmarks/results/huge-namespace/).
_PRINT_COLUMNS = 2
# Rows widened per step: 65,536 made a 100 MB temporary that is faulted in again for every chunk
# (64-254 ms over 120,968 codes in a fresh process); 1,024 rows (1.5 MB) took 15 ms.
_PRINT_CHUNK = 1_024


def _print_weights(dimension: int) -> np.ndarray:
    # Longer codes get smaller weights, so that the sums stay below 2**24 (86 at 1,536 dimensions).
    bound = min(256, (2**24 - 1) // (127 * dimension))
    return np.random.default_rng(20_261_201).integers(-bound, bound + 1, (dimension, _PRINT_COLUMNS)).astype(
        np.float32)


def fingerprints(codes: np.ndarray) -> np.ndarray:
    """(n, 2) float32 fingerprints of int8 codes (equal codes, equal fingerprints; two different
    codes collide only if both weighted sums agree exactly)."""
    weights = _print_weights(codes.shape[1])
    out = np.empty((len(codes), _PRINT_COLUMNS), dtype=np.float32)
    for start in range(0, len(codes), _PRINT_CHUNK):
        out[start:start + _PRINT_CHUNK] = codes[start:start + _PRINT_CHUNK].astype(np.float32) @ weights
    return out


def _id_bytes(ids: Sequence[str], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ids as a fixed-width bytes array (numpy compares and sorts it in UTF-8 byte order, which is
    code-point order), and which ids fit the width."""
    raw = [memory_id.encode("utf-8") for memory_id in ids]
    if width is None:
        width = max((len(r) for r in raw), default=1)
    fits = np.fromiter((len(r) <= width for r in raw), dtype=bool, count=len(raw))
    return np.array(raw, dtype=f"S{max(width, 1)}"), fits


class _Decoded:
    """Codes decoded to float rows on demand, a chunk at a time (ColdIndex.build slices it): the
    whole cold part as float32 would be 1.5 GiB at 1M rows."""

    def __init__(self, codes: np.ndarray, decode: Callable[[np.ndarray], np.ndarray]) -> None:
        self.codes = codes
        self.decode = decode
        self.shape = codes.shape

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.decode(self.codes[rows])


class IndexedPart:
    """One loaded namespace's index and the catalog slot of each of its rows (-1: not indexed)."""

    __slots__ = ("index", "slot_by_key")

    def __init__(self, index: ColdIndex, slot_by_key: np.ndarray) -> None:
        self.index = index
        self.slot_by_key = slot_by_key

    @property
    def rows(self) -> int:
        return int((self.slot_by_key >= 0).sum())


def match(index: ColdIndex, ids: Sequence[str], codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of these rows the index holds as they are now (id present, same code): a boolean mask
    over the rows and the index position of each matched row."""
    if not len(ids):
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    stored = index.array("sorted_ids")
    row_ids, fits = _id_bytes(ids, stored.dtype.itemsize)
    positions = np.minimum(np.searchsorted(stored, row_ids), len(stored) - 1)
    mask = fits & (stored[positions] == row_ids)
    if mask.any():
        same = (index.array("prints")[positions[mask]] == fingerprints(codes[mask])).all(axis=1)
        mask[np.flatnonzero(mask)[~same]] = False
    return mask, positions[mask].astype(np.int64)


class ColdParts:
    """The on-disk indexes of the loaded namespaces, and their files under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.parts: dict[str, IndexedPart] = {}
        self.builds = 0
        self.build_seconds: list[float] = []
        self.skipped: dict[str, int] = {}  # namespace -> cold count when a build was refused or failed

    @staticmethod
    def available() -> bool:
        """Whether the index's library (usearch, the `coldindex` extra) is installed."""
        return importlib.util.find_spec("usearch") is not None

    def path(self, ns: int) -> Path:
        return self.directory / f"{ns:08x}.json"

    def get(self, namespace: str) -> IndexedPart | None:
        return self.parts.get(namespace)

    def open_file(self, ns: int, dimension: int) -> ColdIndex | None:
        """The namespace's index file if it exists and is sound (checksums verified), else None."""
        path = self.path(ns)
        if not path.is_file() or not self.available():
            return None
        index = ColdIndex.open(path, dimension=dimension)
        if index is not None:
            try:
                index.array("sorted_ids"), index.array("prints")
            except InvalidInputError:  # an index written without the engine's bookkeeping: not ours to use
                log.warning("cold index %s has no row fingerprints; its namespace is scanned", path)
                index.close()
                return None
        return index

    def attach(self, namespace: str, index: ColdIndex, keys: np.ndarray, slots: np.ndarray) -> None:
        slot_by_key = np.full(len(index), -1, dtype=np.int64)
        slot_by_key[keys] = slots
        previous = self.parts.get(namespace)
        self.parts[namespace] = IndexedPart(index, slot_by_key)
        if previous is not None and previous.index is not index:
            previous.index.close()

    def detach(self, namespace: str) -> None:
        part = self.parts.pop(namespace, None)
        if part is not None:
            part.index.close()

    def close(self) -> None:
        for namespace in list(self.parts):
            self.detach(namespace)

    def build(self, ns: int, ids: list[str], codes: np.ndarray, decode: Callable[[np.ndarray], np.ndarray],
              generation: int, *, threads: int, expansion_add: int, expansion_search: int) -> ColdIndex:
        """Write a new index file of these rows (runs outside the engine's locks: minutes at 1M)."""
        raw, _ = _id_bytes(ids)
        order = np.argsort(raw, kind="stable")
        sorted_ids = [ids[i] for i in order.tolist()]
        sorted_codes = codes[order]
        self.directory.mkdir(parents=True, exist_ok=True)
        return ColdIndex.build(self.path(ns), sorted_ids, _Decoded(sorted_codes, decode), generation,
                               threads=threads, expansion_add=expansion_add, expansion_search=expansion_search,
                               arrays={"sorted_ids": raw[order], "prints": fingerprints(sorted_codes)})

    def stats(self) -> dict[str, Any]:
        return {
            "namespaces": len(self.parts),
            "rows": sum(part.rows for part in self.parts.values()),
            "file_bytes": sum(part.index.file_bytes() for part in self.parts.values()),
            "builds": self.builds,
            "build_s_last": round(self.build_seconds[-1], 3) if self.build_seconds else None,
        }
