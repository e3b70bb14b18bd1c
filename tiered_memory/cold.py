"""Cold tier: the LMDB archive of msgpack records, int8 codes and optional float originals.

This is the source of truth. Every write is one LMDB transaction, committed (and, with
``durability="sync"``, fsync'ed) before the call that asked for it returns; LMDB never exposes a
half-written transaction, so a crash leaves either all of a write or none of it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import numpy as np

from .config import MemoryConfig
from .crypto import OVERHEAD, Sealer
from .errors import EncryptionRequiredError, StorageError
from .quantization import Quantizer, make_quantizer, quantizer_from_state
from .records import Memory, pack_record, unpack_record

log = logging.getLogger(__name__)

# (database, key, value or None to delete)
Op = tuple[str, bytes, bytes | None]

_DATABASES = ("records", "codes", "originals", "meta", "extra")


def _key(memory_id: str) -> bytes:
    return memory_id.encode("utf-8")


class ColdTier:
    """LMDB environment with sub-databases: records, codes, originals, meta, extra.

    ``extra`` belongs to features layered on the engine (agent grants, histories, topic
    models); they write to it through :meth:`write` so their state commits atomically with
    the memories it refers to.
    """

    name = "cold"

    def __init__(self, path: Path, config: MemoryConfig, read_only: bool = False) -> None:
        self.path = path
        self.config = config
        self.read_only = read_only
        self.dimension = 0  # set by use_dimension() once the engine has checked it against meta
        durable = config.durability == "sync"
        try:
            self.env = lmdb.open(
                str(path),
                # A reader maps the most the writer may ever grow to (address space, not memory):
                # once the writer's map outgrows a reader's, every read fails with MDB_MAP_RESIZED.
                map_size=config.max_map_size_bytes if read_only else config.map_size_bytes,
                subdir=True,
                max_dbs=len(_DATABASES),
                max_readers=config.max_readers,
                sync=durable,
                metasync=durable,
                readonly=read_only,
                create=not read_only,
            )
        except lmdb.Error as err:
            raise StorageError(f"cannot open the cold tier at {path}: {err}") from err
        self._check_file_size()
        # A process killed while reading leaves its reader slot taken; free such slots now.
        self.env.reader_check()
        # Another process may have grown the map; LMDB adopts the larger size at open.
        self.map_size = max(self.env.info()["map_size"], config.map_size_bytes)
        try:
            self.dbs = {name: self.env.open_db(name.encode(), create=not read_only) for name in _DATABASES}
        except lmdb.Error as err:
            raise StorageError(f"the cold tier at {path} lacks its databases ({err}); was it created by "
                               "tiered_memory?") from err
        self.originals_dtype = {"none": None, "float16": np.float16, "float32": np.float32}[config.keep_originals]
        self.quantizer: Quantizer = make_quantizer("int8", 1)
        self.sealer: Sealer | None = None  # set by the engine when the store has an encryption key

    def _check_file_size(self) -> None:
        """LMDB maps data.mdb and trusts it: pages past the end of a truncated file kill the
        process with SIGBUS on first touch. The meta page says how many pages are in use."""
        info, page_size = self.env.info(), self.env.stat()["psize"]
        needed = (info["last_pgno"] + 1) * page_size
        actual = os.stat(self.path / "data.mdb").st_size
        if actual < needed:
            self.env.close()
            raise StorageError(f"{self.path / 'data.mdb'} is truncated ({actual:,} bytes, {needed:,} in use): "
                               "the store is damaged; restore it from a backup")

    def use_dimension(self, dimension: int) -> None:
        """Fix the vector dimension and load the quantizer persisted with the store (if any)."""
        self.dimension = dimension
        state = self.meta_get("quantizer")
        if state is None:
            self.quantizer = make_quantizer("int8", dimension, self.config.clip_quantile)
        else:
            self.quantizer = quantizer_from_state(state)

    @property
    def _original_size(self) -> int:
        return self.dimension * np.dtype(self.originals_dtype).itemsize

    def close(self) -> None:
        self.env.close()

    # -- writing ---------------------------------------------------------------------------

    def write(self, ops: Iterable[Op]) -> int:
        """Apply puts and deletes in one transaction; returns the store's new generation number.

        The generation counts committed writes; saved warm indexes remember the generation they
        match, so an index older than the archive is detected at open. A full map is grown and
        the whole transaction retried, so ``MapFullError`` never reaches the caller.
        """
        ops = list(ops)
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for db, key, value in ops:
                        if value is None:
                            txn.delete(key, db=self.dbs[db])
                        else:
                            txn.put(key, value, db=self.dbs[db])
                    meta = self.dbs["meta"]
                    generation = msgpack.unpackb(txn.get(b"generation", b"\x00", db=meta)) + 1
                    txn.put(b"generation", msgpack.packb(generation), db=meta)
                return generation
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as err:
                raise StorageError(
                    f"writing to the cold tier at {self.path} failed ({err}); nothing of this call was "
                    "stored. Free disk space or check permissions, then retry"
                ) from err

    def _grow(self) -> None:
        # Called with the engine's write lock held, so no transaction of this process is open.
        new_size = min(self.map_size * 2, self.config.max_map_size_bytes)
        if new_size <= self.map_size:
            raise StorageError(
                f"the cold tier is full at max_map_size_bytes={self.config.max_map_size_bytes:,}; "
                "raise MemoryConfig.max_map_size_bytes or delete memories. Nothing of this call was stored"
            )
        log.info("growing the LMDB map of %s from %d to %d bytes", self.path, self.map_size, new_size)
        self.env.set_mapsize(new_size)
        self.map_size = new_size

    def memory_ops(self, memories: list[Memory], codes: np.ndarray, originals: np.ndarray | None) -> list[Op]:
        """Puts for whole memories: record, int8 code and (if kept) the float original."""
        ops: list[Op] = []
        for i, memory in enumerate(memories):
            key = _key(memory.id)
            ops.append(("records", key, pack_record(memory, self.sealer)))
            ops.append(("codes", key, self._vector_bytes(memory.id, memory.sensitive, "code", codes[i].tobytes())))
            if self.originals_dtype is not None and originals is not None:
                raw = originals[i].astype(self.originals_dtype).tobytes()
                ops.append(("originals", key, self._vector_bytes(memory.id, memory.sensitive, "original", raw)))
        return ops

    def _vector_bytes(self, memory_id: str, sensitive: bool, field: str, raw: bytes) -> bytes:
        # Embeddings can be inverted back to text: a sensitive memory's code and original are
        # sealed like its text. Sealed values are OVERHEAD bytes longer, which is how reads
        # tell them apart without reading the record.
        if not sensitive:
            return raw
        if self.sealer is None:
            raise EncryptionRequiredError(f"memory {memory_id!r} is sensitive: open the store with encryption_key=")
        return self.sealer.seal(raw, f"{field}:{memory_id}".encode())

    def _plain_vector_bytes(self, memory_id: str, field: str, stored: bytes, plain_size: int) -> bytes:
        if len(stored) == plain_size:
            return stored
        if len(stored) != plain_size + OVERHEAD:
            raise StorageError(f"the stored {field} of memory {memory_id!r} has {len(stored)} bytes, neither "
                               f"{plain_size} nor {plain_size + OVERHEAD} (sealed): the store is damaged")
        if self.sealer is None:
            raise EncryptionRequiredError(f"memory {memory_id!r} is sealed: open the store with its encryption_key")
        return self.sealer.open(stored, f"{field}:{memory_id}".encode())

    def code_ops(self, memory_ids: list[str], sensitive: list[bool], codes: np.ndarray) -> list[Op]:
        """Puts of new int8 codes only (re-calibration)."""
        return [("codes", _key(memory_id), self._vector_bytes(memory_id, sealed, "code", code.tobytes()))
                for memory_id, sealed, code in zip(memory_ids, sensitive, codes)]

    def record_ops(self, memories: Iterable[Memory]) -> list[Op]:
        return [("records", _key(memory.id), pack_record(memory, self.sealer)) for memory in memories]

    @staticmethod
    def delete_ops(memory_ids: Iterable[str]) -> list[Op]:
        ops: list[Op] = []
        for memory_id in memory_ids:
            key = _key(memory_id)
            ops.extend((("records", key, None), ("codes", key, None), ("originals", key, None)))
        return ops

    def meta_op(self, name: str, value: Any) -> Op:
        return ("meta", name.encode(), msgpack.packb(value, use_bin_type=True))

    def quantizer_op(self) -> Op:
        return self.meta_op("quantizer", self.quantizer.state())

    # -- the tier contract -----------------------------------------------------------------

    def put(self, memory: Memory, vector: np.ndarray) -> None:
        """Store one memory durably (quantizing its vector with the store's quantizer)."""
        vectors = vector.reshape(1, -1).astype(np.float32)
        self.write(self.memory_ops([memory], self.quantizer.encode(vectors), vectors))

    def get(self, memory_id: str) -> Memory | None:
        data = self._read("records", memory_id)
        return None if data is None else unpack_record(data, self.sealer)

    def get_many(self, memory_ids: Iterable[str]) -> list[Memory | None]:
        with self.env.begin(db=self.dbs["records"]) as txn:
            found = [txn.get(_key(memory_id)) for memory_id in memory_ids]
        return [None if data is None else unpack_record(data, self.sealer) for data in found]

    def vector(self, memory_id: str) -> np.ndarray | None:
        """The best float vector kept: the original if stored, else the decoded code."""
        original = self.originals([memory_id])
        if original is not None:
            return original[0]
        code = self._read("codes", memory_id)
        if code is None:
            return None
        code = self._plain_vector_bytes(memory_id, "code", code, self.dimension)
        return self.quantizer.decode(np.frombuffer(code, dtype=np.int8).reshape(1, -1))[0]

    def fetch(self, memory_ids: list[str], originals: bool) -> list[tuple[Memory | None, np.ndarray | None]]:
        """Records (and float originals, if asked and kept) of several memories, in one read."""
        out: list[tuple[Memory | None, np.ndarray | None]] = []
        want_originals = originals and self.originals_dtype is not None
        with self.env.begin(buffers=True) as txn:
            records, kept = self.dbs["records"], self.dbs["originals"]
            for memory_id in memory_ids:
                key = _key(memory_id)
                data = txn.get(key, db=records)
                memory = None if data is None else unpack_record(data, self.sealer)
                vector = None
                if want_originals and memory is not None:
                    raw = txn.get(key, db=kept)
                    if raw is not None:
                        raw = self._plain_vector_bytes(memory_id, "original", raw, self._original_size)
                        vector = np.frombuffer(raw, dtype=self.originals_dtype).astype(np.float32)
                out.append((memory, vector))
        return out

    def originals(self, memory_ids: list[str]) -> np.ndarray | None:
        """Float32 originals of these memories, or None if originals are not kept (or one is missing)."""
        if self.originals_dtype is None:
            return None
        out = np.empty((len(memory_ids), self.dimension), dtype=np.float32)
        with self.env.begin(db=self.dbs["originals"], buffers=True) as txn:
            for i, memory_id in enumerate(memory_ids):
                data = txn.get(_key(memory_id))
                if data is None:
                    return None
                data = self._plain_vector_bytes(memory_id, "original", data, self._original_size)
                out[i] = np.frombuffer(data, dtype=self.originals_dtype)
        return out

    def discard(self, memory_id: str) -> bool:
        if memory_id not in self:
            return False
        self.write(self.delete_ops([memory_id]))
        return True

    def __contains__(self, memory_id: object) -> bool:
        return isinstance(memory_id, str) and self._read("records", memory_id) is not None

    def __len__(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self.dbs["records"])["entries"])

    def ids(self) -> Iterator[str]:
        with self.env.begin(db=self.dbs["records"]) as txn:
            keys = [bytes(key).decode("utf-8") for key in txn.cursor().iternext(keys=True, values=False)]
        return iter(keys)

    def nbytes(self) -> int:
        """Bytes the archive occupies on disk (allocated blocks, not the map's reserved size)."""
        data_file = self.path / "data.mdb"
        try:
            return os.stat(data_file).st_blocks * 512
        except OSError:
            return 0

    # -- reading in bulk ---------------------------------------------------------------------

    def load_all(self) -> tuple[list[Memory], np.ndarray]:
        """Every memory and its int8 code (one row each), in key order: the catalog at open."""
        with self.env.begin() as txn:
            count = int(txn.stat(self.dbs["records"])["entries"])
            codes = np.empty((count, self.dimension), dtype=np.int8)
            memories: list[Memory] = []
            # Both databases hold the same keys, so two cursors walk them side by side: sequential
            # reads of each file region instead of one B-tree descent per code (16x faster at 62k).
            code_cursor = iter(txn.cursor(db=self.dbs["codes"]))
            for key, data in txn.cursor(db=self.dbs["records"]):
                code_key, code = next(code_cursor, (None, None))
                if code_key != key:
                    raise StorageError(f"memory {bytes(key)!r} has a record but no code; the store is damaged "
                                       "(restore it from a backup)")
                memory = unpack_record(data, self.sealer)
                codes[len(memories)] = np.frombuffer(
                    self._plain_vector_bytes(memory.id, "code", code, self.dimension), dtype=np.int8)
                memories.append(memory)
        return memories, codes

    def meta_get(self, name: str, default: Any = None) -> Any:
        with self.env.begin(db=self.dbs["meta"]) as txn:
            data = txn.get(name.encode())
        if data is None:
            return default
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as err:
            raise StorageError(f"the store's {name!r} entry is not readable ({err!r}): the store is damaged; "
                               "restore it from a backup") from err

    def extra_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Entries of the ``extra`` database whose key starts with prefix, in key order."""
        with self.env.begin(db=self.dbs["extra"]) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return
            items = []
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                items.append((bytes(key), bytes(value)))
        yield from items

    def _read(self, db: str, memory_id: str) -> bytes | None:
        with self.env.begin(db=self.dbs[db]) as txn:
            return txn.get(_key(memory_id))
