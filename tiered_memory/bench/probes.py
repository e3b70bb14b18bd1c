"""Reopen probes: a new Python process opens a store and answers one search.

Run as ``python -m tiered_memory.bench.probes KIND PATH QUERY.npy DIMENSION NAMESPACE SETTINGS``;
prints one JSON line. Libraries are imported before the clock starts: the figure is what an
agent restarting pays to get its memory back, not Python's import time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory.bench.machine import rss_parts, warm_occupancy
from tiered_memory.errors import TieredMemoryError


def _open_ours(path: str, dimension: int, namespace: str, settings: dict[str, Any]) -> Any:
    from tiered_memory import TieredMemory

    def run(query: np.ndarray, clock: Any) -> tuple[float, float, Any]:  # (open s, first search s, handle)
        started = clock()
        mem = TieredMemory(path, encoder=None, dimension=dimension, **settings)
        opened = clock()
        mem.search(vector=query, k=10, namespace=namespace)
        return opened - started, clock() - opened, mem
    return run


def _open_hnswlib(path: str, dimension: int, namespace: str, settings: dict[str, Any]) -> Any:
    import hnswlib

    def run(query: np.ndarray, clock: Any) -> tuple[float, float, Any]:
        started = clock()
        index = hnswlib.Index(space="ip", dim=dimension)
        index.load_index(path)
        index.set_ef(settings.get("hnsw_ef_search", 64))
        opened = clock()
        index.knn_query(query, k=10, num_threads=1)
        return opened - started, clock() - opened, index
    return run


def _open_usearch(path: str, dimension: int, namespace: str, settings: dict[str, Any]) -> Any:
    from usearch.index import Index

    def run(query: np.ndarray, clock: Any) -> tuple[float, float, Any]:
        started = clock()
        index = Index.restore(path)
        opened = clock()
        index.search(query, 10, threads=1)
        return opened - started, clock() - opened, index
    return run


def _open_chromadb(path: str, dimension: int, namespace: str, settings: dict[str, Any]) -> Any:
    import chromadb
    from chromadb.config import Settings

    def run(query: np.ndarray, clock: Any) -> tuple[float, float, Any]:
        started = clock()
        client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
        collection = client.get_collection("bench")
        opened = clock()
        collection.query(query_embeddings=[query], n_results=10, include=["documents", "distances"])
        return opened - started, clock() - opened, client
    return run


OPENERS = {"ours": _open_ours, "hnswlib": _open_hnswlib, "usearch": _open_usearch, "chromadb": _open_chromadb}


def probe(kind: str, path: str, query_file: str, dimension: int, namespace: str,
          settings: dict[str, Any]) -> dict[str, Any]:
    run = OPENERS[kind](path, dimension, namespace, settings)  # imports happen here, before timing
    query = np.load(query_file)[0].astype(np.float32)
    baseline = rss_parts()  # the interpreter with the libraries imported, no store open yet
    # The store's handle stays referenced until RSS is read: dropping it would free the index.
    open_s, first_s, handle = run(query, time.perf_counter)
    after = rss_parts()
    result = {"open_s": open_s, "first_search_s": first_s, "total_s": open_s + first_s, "rss_bytes": after["rss"],
              "store_rss_bytes": after["rss"] - baseline["rss"], "store_anon_bytes": after["anon"] - baseline["anon"],
              "store_file_bytes": after["file"] - baseline["file"]}
    if kind == "ours":  # what the engine knows it holds, to explain the RSS
        stats = handle.stats()
        result.update(memories=stats.memories, hot_bytes=stats.hot.bytes, warm_bytes=stats.warm.bytes,
                      warm_occupancy=warm_occupancy(handle),
                      tiers={"hot": stats.hot.count, "warm": stats.warm.count, "cold": stats.cold.count})
    if hasattr(handle, "close"):
        handle.close()
    return result


def probe_in_subprocess(kind: str, path: str, query_file: Path, dimension: int, namespace: str,
                        settings: dict[str, Any]) -> dict[str, Any]:
    """Run `probe` in a new interpreter and return what it measured."""
    command = [sys.executable, "-m", "tiered_memory.bench.probes", kind, path, str(query_file), str(dimension),
               namespace, json.dumps(settings)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3_600)
    if done.returncode != 0:
        raise TieredMemoryError(f"reopen probe for {kind} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    kind_arg, path_arg, query_arg, dimension_arg, namespace_arg, settings_arg = sys.argv[1:7]
    print(json.dumps(probe(kind_arg, path_arg, query_arg, int(dimension_arg), namespace_arg,
                           json.loads(settings_arg))))
