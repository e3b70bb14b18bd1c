"""Bytes per memory, counted where they really go: LMDB pages on disk, hnswlib's allocation, RAM.

LMDB entries are measured by writing them (with fresh memory ids as keys, as the engine makes them) into a
scratch environment and counting its pages, so B-tree overhead and page fill are included. The
warm graph is measured as the engine's ``Graph`` reports it and, in a fresh process, as the
growth of the resident set while it is built (``rss_probe``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from tiered_memory.records import Memory, Tier, new_id, pack_record
from tiered_memory.tiers.hot import HotEntry, entry_bytes
from tiered_memory.tiers.warm import Graph

ORIGINAL_DTYPES = {"float16": np.float16, "float32": np.float32}


def lmdb_bytes_per_entry(values: Iterable[bytes], directory: Path) -> float:
    """Pages (branch, leaf, overflow) per entry of an LMDB database holding these values."""
    env = lmdb.open(str(directory), map_size=2**33, max_dbs=1, sync=False, metasync=False)
    try:
        db = env.open_db(b"entries")
        with env.begin(write=True, db=db) as txn:
            for value in values:
                txn.put(new_id().encode(), value)
            stat = txn.stat(db)
    finally:
        env.close()
    pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
    return stat["psize"] * pages / max(stat["entries"], 1)


def sample_memories(texts: list[str] | None, count: int) -> list[Memory]:
    """Records as the engine writes them (default namespace and kind, no metadata)."""
    chosen = texts[:count] if texts else [""] * count
    return [Memory(new_id(), "default", text, "fact", {}, 1.7e9, 1.7e9, 1.7e9, 0, 0.5, -1, Tier.WARM)
            for text in chosen]


def cold_bytes(codes: dict[str, np.ndarray], originals: np.ndarray, memories: list[Memory],
               has_texts: bool) -> dict[str, Any]:
    """LMDB bytes per entry: each scheme's code, each kind of float original, the record."""
    with tempfile.TemporaryDirectory(prefix="tm-footprint-") as scratch:
        root = Path(scratch)
        out: dict[str, Any] = {
            "code": {scheme: lmdb_bytes_per_entry((row.tobytes() for row in rows), root / f"code-{scheme}")
                     for scheme, rows in codes.items()},
            "original": {name: lmdb_bytes_per_entry((row.astype(dtype).tobytes() for row in originals),
                                                    root / f"original-{name}")
                         for name, dtype in ORIGINAL_DTYPES.items()},
        }
        out["record"] = (lmdb_bytes_per_entry((pack_record(m) for m in memories), root / "records")
                         if has_texts else None)
    return out


def hot_entry_bytes(memories: list[Memory], dimension: int) -> float:
    """Mean RAM of a hot entry: the float32 vector every hot memory carries, its text and record."""
    vector = np.zeros(dimension, dtype=np.float32)
    return float(np.mean([entry_bytes(HotEntry(memory, vector)) for memory in memories]))


def graph_file_bytes(graph: Graph) -> int:
    """Size of the graph as the warm tier saves it (warm/*.hnsw)."""
    with tempfile.TemporaryDirectory(prefix="tm-graph-") as scratch:
        path = Path(scratch) / "graph.hnsw"
        graph.index.save_index(str(path))
        return path.stat().st_size


def probe_rss(vectors: np.ndarray, m: int) -> dict[str, Any] | None:
    """Build a warm graph over these vectors in a fresh Python and measure its resident-set growth.

    None where /proc/self/statm does not exist (not Linux)."""
    if not Path("/proc/self/statm").exists():
        return None
    with tempfile.TemporaryDirectory(prefix="tm-rss-") as scratch:
        path = Path(scratch) / "vectors.npy"
        np.save(path, np.ascontiguousarray(vectors, dtype=np.float32))
        done = subprocess.run([sys.executable, "-m", "tiered_memory.reports.rss_probe", str(path), str(m)],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout)
