"""What a user would use instead, each behind the same small interface, built on the same data.

Floors (the least any design on these libraries can cost): raw hnswlib ``knn_query`` for warm
search, numpy exact search, raw ``lmdb`` get + msgpack for cold reads, a raw cachetools get for
hot. Peers: ChromaDB embedded (the design of the source article, with SentenceTransformer) and
usearch with native int8. The optional ones come from the ``peers`` extra and are imported
lazily; a missing one raises PeerUnavailable, which the runner reports and skips.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory.errors import TieredMemoryError

EXTRA_HINT = "pip install 'tiered-memory[peers]'"


class PeerUnavailable(TieredMemoryError):
    """An optional peer's library is not installed."""


def require(module: str) -> Any:
    """Import an optional peer library, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise PeerUnavailable(f"{module} is not installed ({EXTRA_HINT}); skipping it") from err


class HnswlibPeer:
    """Raw hnswlib over float32, with the engine's graph settings: the floor for warm search."""

    key, name, role = "hnswlib", "raw hnswlib (float32)", "floor"

    def __init__(self, m: int, ef_construction: int, ef_search: int) -> None:
        import hnswlib

        self._hnswlib = hnswlib
        self.settings = {"space": "ip", "M": m, "ef_construction": ef_construction, "ef": ef_search, "threads": 1}
        self.index: Any = None

    def build(self, vectors: np.ndarray) -> None:
        self.index = self._hnswlib.Index(space="ip", dim=vectors.shape[1])
        self.index.init_index(max_elements=len(vectors), ef_construction=self.settings["ef_construction"],
                              M=self.settings["M"], random_seed=100)
        for start in range(0, len(vectors), 100_000):  # chunks: a memory-mapped 1M set stays on disk
            block = np.asarray(vectors[start:start + 100_000], dtype=np.float32)
            self.index.add_items(block, np.arange(start, start + len(block)), num_threads=os.cpu_count() or 1)
        self.index.set_ef(self.settings["ef"])

    def search(self, query: np.ndarray, k: int) -> Any:
        return self.index.knn_query(query, k=k, num_threads=1)

    @staticmethod
    def rows(result: Any) -> list[int]:
        return result[0][0].tolist()

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))


class NumpyExactPeer:
    """Brute-force float32 inner products with numpy: exact, and the cost ANN avoids."""

    key, name, role = "numpy", "numpy exact (float32)", "floor"
    settings: dict[str, Any] = {"dtype": "float32"}

    def __init__(self) -> None:
        self.matrix = np.zeros((0, 0), dtype=np.float32)

    def build(self, vectors: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        scores = self.matrix @ query
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top], kind="stable")]

    @staticmethod
    def rows(result: np.ndarray) -> list[int]:
        return result.tolist()


class UsearchPeer:
    """usearch HNSW storing native int8 (its cosine kernel on i8): the strongest int8 peer."""

    key, name, role = "usearch", "usearch (int8)", "peer"

    def __init__(self, m: int, ef_construction: int, ef_search: int) -> None:
        self._index_cls = require("usearch.index").Index
        # usearch scales unit float vectors by 127 into i8 for the cosine metric (its guidance
        # for i8); inner product on i8 would see the unscaled, rounded values.
        self.settings = {"dtype": "i8", "metric": "cos", "connectivity": m, "expansion_add": ef_construction,
                         "expansion_search": ef_search, "threads": 1}
        self.index: Any = None

    def build(self, vectors: np.ndarray) -> None:
        self.index = self._index_cls(ndim=vectors.shape[1], metric="cos", dtype="i8",
                                     connectivity=self.settings["connectivity"],
                                     expansion_add=self.settings["expansion_add"],
                                     expansion_search=self.settings["expansion_search"])
        for start in range(0, len(vectors), 100_000):
            block = np.asarray(vectors[start:start + 100_000], dtype=np.float32)
            self.index.add(np.arange(start, start + len(block)), block, threads=os.cpu_count() or 1)

    def search(self, query: np.ndarray, k: int) -> Any:
        return self.index.search(query, k, threads=1)

    @staticmethod
    def rows(result: Any) -> list[int]:
        return result.keys.tolist()

    def save(self, path: Path) -> None:
        self.index.save(str(path))


class ChromaPeer:
    """ChromaDB embedded (PersistentClient, telemetry off) with its defaults: the source
    article's design. Vectors are passed in; `search_text` adds SentenceTransformer encoding
    of the query, as that design does, through Chroma's own embedding function."""

    key, name, role = "chromadb", "ChromaDB embedded", "peer"

    def __init__(self, path: Path, model_path: str | None = None) -> None:
        chromadb = require("chromadb")
        self._settings_cls = require("chromadb.config").Settings
        self._chromadb = chromadb
        self.path = path
        self.model_path = model_path
        self.client = chromadb.PersistentClient(path=str(path), settings=self._settings_cls(anonymized_telemetry=False))
        self.collection: Any = None
        self.settings: dict[str, Any] = {"version": chromadb.__version__, "space": "cosine",
                                         "include": ["documents", "distances"]}

    def embedding_function(self) -> Any:
        """Chroma's SentenceTransformer embedding function on the bundled model (no hub access)."""
        if self.model_path is None:
            return None
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar between our progress bars
        functions = require("chromadb.utils.embedding_functions")
        return functions.SentenceTransformerEmbeddingFunction(model_name=self.model_path, device="cpu",
                                                             normalize_embeddings=True)

    def build(self, vectors: np.ndarray, texts: Sequence[str] | None = None, name: str = "bench") -> None:
        self.collection = self.client.create_collection(name, embedding_function=self.embedding_function(),
                                                        metadata={"hnsw:space": "cosine"})
        batch = self.client.get_max_batch_size()
        for start in range(0, len(vectors), batch):
            stop = min(start + batch, len(vectors))
            self.collection.add(ids=[str(i) for i in range(start, stop)],
                                embeddings=np.asarray(vectors[start:stop], dtype=np.float32),
                                documents=None if texts is None else [texts[i] for i in range(start, stop)])
        self.settings["configuration"] = _plain(getattr(self.collection, "configuration", None))

    def add_texts(self, texts: Sequence[str], name: str) -> float:
        """Seconds to add these texts to a new collection, encoding them as the design does."""
        collection = self.client.create_collection(name, embedding_function=self.embedding_function(),
                                                   metadata={"hnsw:space": "cosine"})
        started = time.perf_counter()
        collection.add(ids=[str(i) for i in range(len(texts))], documents=list(texts))
        return time.perf_counter() - started

    def search(self, query: np.ndarray, k: int) -> Any:
        return self.collection.query(query_embeddings=[query], n_results=k, include=["documents", "distances"])

    def search_text(self, text: str, k: int) -> Any:
        return self.collection.query(query_texts=[text], n_results=k, include=["documents", "distances"])

    @staticmethod
    def rows(result: Any) -> list[int]:
        return [int(i) for i in result["ids"][0]]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class LmdbMsgpackPeer:
    """Raw py-lmdb get + msgpack unpack of the engine's own record bytes: the floor for a read
    from disk (one key, no Memory object, no vector, no locks)."""

    key, name, role = "lmdb", "raw lmdb + msgpack", "floor"
    settings: dict[str, Any] = {"sync": True, "value": "the engine's msgpack record"}

    def __init__(self, path: Path) -> None:
        import lmdb
        import msgpack

        self._unpack = msgpack.unpackb
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=2**36, subdir=True)

    def build(self, items: Sequence[tuple[str, bytes]]) -> None:
        for start in range(0, len(items), 10_000):
            with self.env.begin(write=True) as txn:
                for key, value in items[start:start + 10_000]:
                    txn.put(key.encode("utf-8"), value)

    def get(self, key: str) -> Any:
        with self.env.begin(buffers=True) as txn:
            return self._unpack(txn.get(key.encode("utf-8")), raw=False, strict_map_key=False)

    def close(self) -> None:
        self.env.close()


class CachetoolsPeer:
    """A raw cachetools LRUCache get of the same decoded records: the floor for the hot tier."""

    key, name, role = "cachetools", "raw cachetools LRUCache", "floor"

    def __init__(self, capacity: int) -> None:
        from cachetools import LRUCache

        self.cache: LRUCache = LRUCache(maxsize=capacity)
        self.settings = {"maxsize": capacity}

    def build(self, items: Sequence[tuple[str, Any]]) -> None:
        for key, value in items:
            self.cache[key] = value

    def get(self, key: str) -> Any:
        return self.cache[key]


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a configuration object (dicts, lists, scalars; else its repr)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
