"""An on-disk index over the cold part of one huge namespace: an int8 HNSW graph, memory-mapped.

Where a namespace outgrows its share of the warm budget, its cold memories are found through
this index instead of a scan of their codes (issue 10, "Huge namespaces tier inside"). The graph
is usearch's (dtype int8, cosine), saved to a file and opened with ``view=True``: the vectors and
links are read through the page cache, not copied onto the heap, so a process pays RAM only for
the pages its searches touch, and the kernel may drop them under pressure. Chosen by measurement
against IVF lists in a memory-mapped file and against the present partition scan
(benchmarks/cold_index.py, results in benchmarks/results/cold-index/): at 1M rows it answered in
1.0 ms p50 (expansion 128) where the 40% scan took 109 ms and IVF over memmap 2.4-18 ms, with
8 MiB of heap, a 522 MiB file and 1.6 s from open (checksums included) to the first answer.
Its int8 ranking alone reached recall@10 0.90 there (near-duplicate rows that int8 cannot order):
rescore ``k * 2`` candidates with the float16 originals to rank them as float does.

Contract with the engine:

* The file holds the cold rows given to ``build`` and nothing else. Memories that became cold
  after the build are not in it: the caller scans those exactly (they are few, and it holds their
  codes), and merges them with this index's candidates and the warm graph's.
* A memory the file holds may have left the cold part since (promoted, updated, deleted): the
  caller drops such ids from the results, which is why ``search`` takes ``oversample``; it also
  rescores the candidates (float16 originals) so that they merge with the warm graph's on one scale.
* ``open`` never raises for a bad file: a missing, damaged or mismatched file (checksum, count,
  dimension, generation) gives None and a logged warning, and the caller falls back to its scan.
* A sealed (encrypted) namespace must not be indexed: the file holds its vectors in clear. Such
  namespaces keep the scan of their codes, which the engine holds in RAM anyway.

Files: ``path`` is a small JSON sidecar (format, count, dimension, generation, the data files'
names, sizes and CRC-32s). The graph and the ids live beside it under names unique to each build,
so a rebuild never writes into a file that a reader has mapped: the new files are written to
temporary names, fsync'ed and renamed, then the sidecar is replaced (the commit point), then the
previous build's files are unlinked (a reader that has them mapped keeps reading them).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory.errors import (
    ConfigError,
    DimensionMismatchError,
    InvalidInputError,
    InvalidVectorError,
    StorageError,
)
from tiered_memory.fileio import fsync_dir
from tiered_memory.records import check_id

log = logging.getLogger(__name__)

FORMAT = "tiered-memory-cold-index/1"
_IDS_MAGIC = b"TMCIDS01"
_CRC_CHUNK = 1 << 22  # 4 MiB per zlib.crc32 call

Allowed = Callable[[str], bool] | Collection[str]


def _usearch() -> Any:
    try:
        from usearch.index import Index
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ConfigError("the cold index needs usearch, a dependency of tiered-memory: pip install 'usearch>=2.12'"
                          ) from err
    return Index


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as file:
        while chunk := file.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def quantize(vectors: np.ndarray, scale: float) -> np.ndarray:
    """float32 rows -> int8 codes for the graph: one scale for every coordinate, clipped at +-127.

    usearch's own float-to-int8 cast multiplies by 127, which suits coordinates spread over
    [-1, 1]; a unit MiniLM vector's coordinates are about +-0.05, so that cast keeps 6 or 7
    levels of them. A scale learned from the data (its 0.9999 quantile of |x| maps to 127)
    keeps about 120. Cosine ignores the scale, so no per-row constant is needed."""
    return np.clip(np.rint(vectors * np.float32(scale)), -127, 127).astype(np.int8)


_BUILD_CHUNK = 65_536  # rows converted to float32 at a time: 96 MiB at d=384, not 1.5 GiB for 1M rows


def _checked_rows(vectors: Any, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as float32, refused if any is not finite or is all zeros. `vectors`
    may be an array or anything with a shape that slices into arrays (rows decoded on demand)."""
    rows = np.asarray(vectors[start:stop], dtype=np.float32)
    if not np.isfinite(rows).all():
        raise InvalidVectorError("a vector given to ColdIndex.build holds NaN or infinity")
    if not (np.abs(rows).max(axis=1) > 0).all():
        raise InvalidVectorError("a vector given to ColdIndex.build is all zeros; cosine needs a direction")
    return rows


def _query_code(q: np.ndarray) -> np.ndarray:
    # A query has its own scale (its largest coordinate maps to 127): cosine ignores it, and
    # this keeps the most levels of the query that rounding allows.
    top = float(np.abs(q).max())
    return quantize(q, 127.0 / top)


class _Ids:
    """Ids by graph key, memory-mapped: a header, (count + 1) uint64 offsets, then UTF-8 bytes."""

    def __init__(self, path: Path, count: int) -> None:
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        header = len(_IDS_MAGIC) + 8
        if len(raw) < header + 8 * (count + 1) or bytes(raw[: len(_IDS_MAGIC)]) != _IDS_MAGIC:
            raise StorageError(f"{path} is not an ids file of {count} ids")
        stored = int(np.frombuffer(raw[len(_IDS_MAGIC):header], dtype="<u8")[0])
        if stored != count:
            raise StorageError(f"{path} holds {stored} ids, the sidecar says {count}")
        self.offsets = raw[header:header + 8 * (count + 1)].view("<u8")
        self.blob = raw[header + 8 * (count + 1):]
        if int(self.offsets[-1]) != len(self.blob):
            raise StorageError(f"{path} is truncated: its offsets end at {int(self.offsets[-1])}, "
                               f"its text holds {len(self.blob)} bytes")

    @staticmethod
    def encode(ids: Sequence[str]) -> bytes:
        encoded = [memory_id.encode("utf-8") for memory_id in ids]
        offsets = np.zeros(len(encoded) + 1, dtype="<u8")
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return b"".join([_IDS_MAGIC, np.uint64(len(encoded)).astype("<u8").tobytes(), offsets.tobytes(), *encoded])

    def __getitem__(self, key: int) -> str:
        return bytes(self.blob[int(self.offsets[key]):int(self.offsets[key + 1])]).decode("utf-8")


class ColdIndex:
    """A read-only int8 HNSW graph over one namespace's cold rows, opened from a file."""

    def __init__(self, path: Path, meta: dict[str, Any], index: Any, ids: _Ids,
                 arrays: dict[str, np.ndarray] | None = None) -> None:
        self.path = path
        self.count: int = meta["count"]
        self.dimension: int = meta["dimension"]
        self.generation: int = meta["generation"]
        self._meta = meta
        self._index = index
        self._ids = ids
        self._arrays = arrays or {}

    def __repr__(self) -> str:
        return f"ColdIndex({str(self.path)!r}, count={self.count}, generation={self.generation})"

    def __len__(self) -> int:
        return self.count

    # -- build ---------------------------------------------------------------------------------------

    @classmethod
    def build(cls, path: str | os.PathLike[str], ids: Sequence[str], vectors: np.ndarray, generation: int, *,
              connectivity: int = 16, expansion_add: int = 128, expansion_search: int = 128,
              clip_quantile: float = 0.9999, threads: int = 0,
              arrays: Mapping[str, np.ndarray] | None = None) -> ColdIndex:
        """Write the index of these (id, unit vector) rows to `path` atomically and open it.

        `generation` is the caller's stamp (e.g. the namespace's cold-part version), checked by
        ``open``. `threads`: build threads, 0 = all cores. The benchmark built with expansion_add
        64 to fit its time budget (1M rows: 488 s on 2 busy cores); 128 builds a better graph
        (at 200k, recall 0.984 against 0.966 at expansion_search 64) for about twice the time.
        `arrays`: the caller's per-row bookkeeping (one row per id, e.g. fingerprints of the codes
        indexed), saved as .npy files under the same checksums and commit point, read back
        memory-mapped by :meth:`array`."""
        path = Path(path)
        ids = [check_id(memory_id) for memory_id in ids]
        shape = getattr(vectors, "shape", None)
        if shape is None or not hasattr(vectors, "__getitem__"):
            vectors = np.asarray(vectors, dtype=np.float32)
            shape = vectors.shape
        if len(shape) != 2 or shape[0] != len(ids):
            raise DimensionMismatchError(f"vectors must be ({len(ids)}, d) for {len(ids)} ids, got shape {shape}")
        if not ids:
            raise InvalidInputError("a cold index needs at least one row; search an empty cold part by scan")
        if len(set(ids)) != len(ids):
            raise InvalidInputError("ids given to ColdIndex.build must be distinct; pass each memory once")
        if isinstance(generation, bool) or not isinstance(generation, int | np.integer) or generation < 0:
            raise InvalidInputError(f"generation must be a non-negative int, got {generation!r}")
        for name, value in (("connectivity", connectivity), ("expansion_add", expansion_add),
                            ("expansion_search", expansion_search)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(f"{name} must be an int >= 2, got {value!r}")
        if not 0.5 < clip_quantile <= 1.0:
            raise ConfigError(f"clip_quantile must be in (0.5, 1], got {clip_quantile!r}")
        arrays = dict(arrays or {})
        for name, array in arrays.items():
            if not (isinstance(name, str) and name.isidentifier() and name not in ("graph", "ids")):
                raise InvalidInputError(f"array names must be identifiers other than graph and ids, got {name!r}")
            if not isinstance(array, np.ndarray) or len(array) != len(ids) or array.dtype == object:
                raise InvalidInputError(f"array {name!r} must be a numeric ndarray with one row per id")
        dimension = int(shape[1])
        step = max(1, len(ids) // 20_000)
        sample = np.concatenate([_checked_rows(vectors, start, min(start + _BUILD_CHUNK, len(ids)))[::step]
                                 for start in range(0, len(ids), _BUILD_CHUNK)])
        scale = 127.0 / float(np.quantile(np.abs(sample), clip_quantile))
        index = _usearch()(ndim=dimension, metric="cos", dtype="i8", connectivity=connectivity,
                           expansion_add=expansion_add, expansion_search=expansion_search)
        for start in range(0, len(ids), _BUILD_CHUNK):
            stop = min(start + _BUILD_CHUNK, len(ids))
            index.add(np.arange(start, stop, dtype=np.uint64), quantize(_checked_rows(vectors, start, stop), scale),
                      threads=threads)

        path.parent.mkdir(parents=True, exist_ok=True)
        token = f"{int(generation)}-{secrets.token_hex(4)}"
        names = {"graph": f"{path.name}.{token}.usearch", "ids": f"{path.name}.{token}.ids"}
        names.update({name: f"{path.name}.{token}.{name}.npy" for name in arrays})
        meta: dict[str, Any] = {
            "format": FORMAT, "count": len(ids), "dimension": dimension, "generation": int(generation),
            "metric": "cos", "dtype": "i8", "scale": scale, "connectivity": connectivity,
            "expansion_add": expansion_add, "expansion_search": expansion_search, "files": {},
        }
        written: list[Path] = []
        try:
            for part, name in names.items():
                temporary = path.parent / f".{name}.tmp"
                written.append(temporary)
                if part == "graph":
                    index.save(str(temporary))
                    with open(temporary, "rb+") as file:
                        os.fsync(file.fileno())
                elif part in arrays:
                    with open(temporary, "wb") as file:
                        np.save(file, np.ascontiguousarray(arrays[part]), allow_pickle=False)
                        file.flush()
                        os.fsync(file.fileno())
                else:
                    _write_synced(temporary, _Ids.encode(ids))
                meta["files"][part] = {"name": name, "bytes": temporary.stat().st_size, "crc32": _crc32(temporary)}
                os.replace(temporary, path.parent / name)
                written[-1] = path.parent / name
            previous = cls._read_meta(path)
            temporary = path.parent / f".{path.name}.{token}.tmp"
            written.append(temporary)
            _write_synced(temporary, json.dumps(meta, sort_keys=True).encode())
            os.replace(temporary, path)  # the commit point
            fsync_dir(path.parent)
        except OSError as err:
            for file in written:
                file.unlink(missing_ok=True)
            raise StorageError(f"could not write the cold index {path} ({err}); free disk space or fix "
                               "permissions, the namespace keeps its scan meanwhile") from err
        del index
        if previous is not None:  # readers holding the old files keep them open: unlink is safe
            for part in previous.get("files", {}).values():
                if isinstance(part, dict) and isinstance(part.get("name"), str) and part["name"] not in names.values():
                    (path.parent / Path(part["name"]).name).unlink(missing_ok=True)
        opened = cls.open(path, generation=int(generation), count=len(ids), dimension=dimension,
                          verify=False)
        if opened is None:
            raise StorageError(f"the cold index just written to {path} does not open; see the log")
        return opened

    # -- open ----------------------------------------------------------------------------------------

    @staticmethod
    def _read_meta(path: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, generation: int | None = None, count: int | None = None,
             dimension: int | None = None, verify: bool = True) -> ColdIndex | None:
        """The index at `path`, memory-mapped; None (logged) if it is missing, damaged, or disagrees
        with the given generation, count or dimension. `verify`: check the files' CRC-32 first
        (reads them once: 0.2-0.4 s per 1M rows here, and the pages read stay in the page cache)."""
        path = Path(path)
        if not path.is_file():
            log.info("no cold index at %s; the namespace's cold part is scanned", path)
            return None
        meta = cls._read_meta(path)
        try:
            if meta is None or meta.get("format") != FORMAT:
                raise StorageError("the sidecar is unreadable or of another format")
            for name, expected in (("generation", generation), ("count", count), ("dimension", dimension)):
                if not isinstance(meta.get(name), int) or isinstance(meta.get(name), bool):
                    raise StorageError(f"the sidecar has no valid {name}")
                if expected is not None and meta[name] != expected:
                    raise StorageError(f"its {name} is {meta[name]}, the caller expects {expected}")
            files = dict(meta["files"])
            if not {"graph", "ids"} <= set(files):
                raise StorageError("the sidecar names no graph or ids file")
            paths = {part: path.parent / Path(str(entry["name"])).name for part, entry in files.items()}
            for part, entry in files.items():
                size = paths[part].stat().st_size
                if size != entry["bytes"]:
                    raise StorageError(f"{paths[part].name} holds {size} bytes, the sidecar says {entry['bytes']}")
                if verify and _crc32(paths[part]) != entry["crc32"]:
                    raise StorageError(f"{paths[part].name} fails its checksum")
            ids = _Ids(paths["ids"], meta["count"])
            index = _usearch().restore(str(paths["graph"]), view=True)
            if index is None or len(index) != meta["count"] or index.ndim != meta["dimension"]:
                raise StorageError("the graph file disagrees with the sidecar")
            index.expansion_search = int(meta["expansion_search"])
            arrays = {part: np.load(paths[part], mmap_mode="r", allow_pickle=False)
                      for part in files if part not in ("graph", "ids")}
            if any(len(array) != meta["count"] for array in arrays.values()):
                raise StorageError("an array file disagrees with the sidecar's count")
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, StorageError) as err:
            log.warning("cold index %s not used (%s); the namespace's cold part is scanned instead", path, err)
            return None
        return cls(path, meta, index, ids, arrays)

    # -- search --------------------------------------------------------------------------------------

    def search(self, q: np.ndarray, k: int, allowed: Allowed | None = None, *, oversample: int = 1,
               expansion: int | None = None) -> tuple[list[str], np.ndarray]:
        """Up to ``k * oversample`` (id, cosine) candidates, best first, among ids `allowed` accepts.

        `allowed`: None, a predicate on ids, or a collection of ids. A filter the graph's nearest
        rows mostly fail widens the search 4x twice; then what was found is returned (an allowed
        set smaller than ``exact_search_max`` is better scored exactly by the caller). Scores are
        cosines of the int8 codes (error about 1e-3), not exact inner products; rescore if needed.
        `expansion`: the graph's search breadth for this query (default: the build's)."""
        accepts = None if allowed is None else (allowed if callable(allowed) else allowed.__contains__)
        ids = self._ids
        keys, scores = self.search_keys(q, k, None if accepts is None else (lambda key: accepts(ids[key])),
                                        oversample=oversample, expansion=expansion)
        return [ids[key] for key in keys.tolist()], scores

    def search_keys(self, q: np.ndarray, k: int, accepts: Callable[[int], bool] | None = None, *,
                    oversample: int = 1, expansion: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`search`, by row position (the order given to ``build``) instead of id: the
        engine maps positions to its own rows with an array, without decoding an id per candidate."""
        if self._index is None:
            raise StorageError(f"the cold index {self.path} is closed; open it again")
        q = np.asarray(q, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dimension:
            raise DimensionMismatchError(f"the query has {q.shape[0]} dimensions, the cold index {self.dimension}")
        if not np.isfinite(q).all() or not np.abs(q).max() > 0:
            raise InvalidVectorError("the query holds NaN or infinity or is all zeros")
        for name, value in (("k", k), ("oversample", oversample)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        wanted = min(k * oversample, self.count)
        code = _query_code(q)
        fetch = wanted
        index = self._index
        default_expansion = index.expansion_search
        for _ in range(3):
            # The graph's breadth must cover what is fetched, or usearch returns fewer than asked.
            index.expansion_search = max(expansion or default_expansion, fetch)
            try:
                matches = index.search(code, fetch, threads=1)
            finally:
                index.expansion_search = default_expansion
            keys = np.asarray(matches.keys, dtype=np.int64)
            scores = 1.0 - np.asarray(matches.distances, dtype=np.float32)
            if accepts is None:
                return keys[:wanted], scores[:wanted]
            kept = [i for i, key in enumerate(keys.tolist()) if accepts(key)]
            if len(kept) >= wanted or fetch >= self.count:
                kept = kept[:wanted]
                return keys[kept], scores[kept]
            fetch = min(self.count, fetch * 4)
        return keys[kept], scores[kept]

    def array(self, name: str) -> np.ndarray:
        """A per-row array saved by ``build(arrays=)``, memory-mapped read-only."""
        if name not in self._arrays:
            raise InvalidInputError(f"the cold index {self.path} holds no array {name!r}")
        return self._arrays[name]

    def id_of(self, key: int) -> str:
        """The id of the row at position `key` (the order given to ``build``)."""
        return self._ids[key]

    # -- housekeeping --------------------------------------------------------------------------------

    def nbytes(self) -> int:
        """Heap bytes this index holds (the mapped files are page cache, not counted)."""
        if self._index is None:
            return 0
        # usearch keeps a node table (pointer + level) per row even over a view; its
        # memory_usage counts what it allocated, not the mapping.
        return int(self._index.memory_usage)

    def file_bytes(self) -> int:
        """Bytes of this index's files on disk (graph, ids, sidecar)."""
        files = self._meta["files"]
        return sum(int(entry["bytes"]) for entry in files.values()) + len(json.dumps(self._meta, sort_keys=True))

    def close(self) -> None:
        """Unmap the files; searching afterwards raises StorageError."""
        if self._index is not None:
            self._index.reset()
            self._index = None
            self._arrays = {}

    def __enter__(self) -> ColdIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
