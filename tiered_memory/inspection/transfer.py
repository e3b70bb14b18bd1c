"""Export a store to JSON Lines, and import such a file into a new directory: an exact copy.

The file, one JSON object a line, each with a ``type``:

- ``header``: format and version, the store's schema, ``dimension``, ``encoder`` (the vector
  space's name), ``quantizer`` state and ``created_at`` as stored, the precision originals are
  kept in, whether sealed memories were opened (``decrypted``), counts, and ``meta``: every other
  store-level entry (key check, sealed namespaces, per-namespace topic models, ...) as stored.
- ``namespace``: name, id, memory count and generation; its ``memory`` lines follow.
- ``memory``: every field (id, namespace, kind, text, metadata, created_at, updated_at,
  last_accessed, access_count, importance, topic, tier, version, sensitive), ``dedup`` (whether the
  dedup index names it for its text), the int8 ``code`` and float ``original`` as stored (base64).
  A sealed memory not opened has ``text`` and ``metadata`` null and its stored ``record`` (base64):
  nothing of its content is in the file in clear.
- ``extra``: a feature's record (agent hubs) as stored: key, value (base64).
- ``file``: a chunk of a saved warm graph (``warm/*.hnsw``) or its sidecar, base64, so the copy
  answers searches with the very graphs of the original instead of rebuilt ones.
- ``end``: the counts again; an import without it refuses a file that was cut short.

Byte-level values use the tags of :mod:`.jsonvalues`. Ids are kept, and so are namespace ids and
generations, because sealed codes are bound to their namespace id and saved graphs name the
generation they match: the copy has to be the same store, not a re-insertion of its memories.

Sealed memories stay sealed unless the export is asked to open them (``decrypt=True``, which
needs the key); the store-level sealed state (quantizer, topic models, hub records, key check) is
copied as stored in either case, so the copy opens with the original's key. Importing a decrypted
export seals its sensitive memories again and needs that same key.

One thing is not copied byte for byte: a record's own copy of the use statistics, written when
the memory was last added or updated and never read back (the catalog row holds the statistics
the engine serves), is written from the row.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from tiered_memory.config import MemoryConfig
from tiered_memory.crypto import OVERHEAD, Sealer
from tiered_memory.dirlock import DirectoryLock
from tiered_memory.errors import EncryptionRequiredError, InvalidInputError, StorageError
from tiered_memory.inspection.jsonvalues import b64, from_json, to_json, unb64
from tiered_memory.inspection.snapshot import StoredMemory, StoreSnapshot
from tiered_memory.records import TIER_CODES, Memory, Tier, check_id, check_label
from tiered_memory.tiers.cold import ColdTier, Op, pack_row, row_key, text_key
from tiered_memory.tiers.warm import WarmTier

FORMAT = "tiered-memory-export"
FORMAT_VERSION = 1
# Store-level entries shown at the top of the header; every other one goes under "meta".
HEADER_ENTRIES = ("store_schema", "schema_version", "dimension", "encoder", "quantizer", "created_at")
# The store's count of committed writes: the copy counts its own.
NOT_COPIED = ("generation",)
# Sync state (tiered_memory.sync): the store's id, change numbers, cursors and conflict history. The
# copy is a new replica: its first sync stamps its memories anew (change stamps are not exported).
SYNC_META = ("store_id", "sync_backfilled")
SYNC_PREFIX = "sync/"
BATCH = 1_000  # memories (or hub records) per import transaction
FILE_CHUNK = 4 << 20  # bytes of a graph file per line
_GRAPH_FILE = re.compile(r"warm/[0-9a-f]{20}\.(hnsw|meta)")

Progress = Callable[[int], None]


class ExportFileError(StorageError):
    """An export file that cannot be imported: not an export, damaged, or cut short."""


@dataclass
class TransferSummary:
    namespaces: int = 0
    memories: int = 0
    sealed: int = 0  # memories whose content stayed sealed
    extra: int = 0
    files: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def _expiry(item: dict[str, Any]) -> float | None:
    """A memory line's expires_at (absent in exports made before expiry existed: never)."""
    value = item.get("expires_at")
    if value is not None and (type(value) not in (int, float) or math.isnan(value)):
        raise ValueError(f"memory {item.get('id')!r} has expires_at {value!r}")
    return None if value is None else float(value)


def memory_line(memory: StoredMemory, vectors: bool = True) -> dict[str, Any]:
    """A memory's line of the export (``get`` shows the same fields)."""
    line: dict[str, Any] = {
        "type": "memory", "namespace": memory.namespace, "id": memory.id, "kind": memory.kind,
        "text": memory.text, "metadata": None if memory.metadata is None else to_json(memory.metadata),
        "created_at": memory.created_at, "updated_at": memory.updated_at, "last_accessed": memory.last_accessed,
        "access_count": memory.access_count, "importance": memory.importance, "topic": memory.topic,
        "tier": memory.tier, "version": memory.version, "sensitive": memory.sensitive, "dedup": memory.dedup,
        "expires_at": memory.expires_at,
    }
    if vectors:
        line["code"] = b64(memory.code)
        line["original"] = None if memory.original is None else b64(memory.original)
        line["record"] = None if memory.record is None else b64(memory.record)
    return line


def _key_json(key: bytes) -> Any:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return to_json(key)


def _dump(value: dict[str, Any]) -> str:
    # ASCII only: the file is the same bytes whatever the terminal's or the locale's encoding.
    return json.dumps(value, allow_nan=False, separators=(",", ":")) + "\n"


def export_store(snapshot: StoreSnapshot, out: TextIO, *, decrypt: bool = False,
                 on_progress: Progress | None = None) -> TransferSummary:
    """Write the store to `out` as JSON Lines (see the module doc); sealed memories are opened
    only with ``decrypt=True`` (the snapshot needs the key)."""
    from tiered_memory import __version__

    if decrypt and not snapshot.has_key:
        raise InvalidInputError("decrypt=True opens sealed memories: give the store's encryption key")
    meta = snapshot.meta()
    for name in [*NOT_COPIED, *SYNC_META, *(name for name in meta if name.startswith(SYNC_PREFIX))]:
        meta.pop(name, None)
    namespaces = snapshot.namespaces()
    header: dict[str, Any] = {
        "type": "header", "format": FORMAT, "format_version": FORMAT_VERSION, "tiered_memory": __version__,
        "exported_at": time.time(), "decrypted": decrypt, "originals": snapshot.originals,
        "counts": {"namespaces": len(namespaces), "memories": sum(ns.count for ns in namespaces)},
    }
    for name in HEADER_ENTRIES:
        if name in meta:
            header[name] = to_json(meta.pop(name))
    header["meta"] = {name: to_json(value) for name, value in meta.items()}
    out.write(_dump(header))
    summary = TransferSummary(namespaces=len(namespaces))
    for namespace in namespaces:
        out.write(_dump({"type": "namespace", "name": namespace.name, "id": namespace.ns_id,
                         "count": namespace.count, "generation": namespace.generation}))
        held = 0
        for memory in snapshot.memories(namespace, open_sealed=decrypt):
            out.write(_dump(memory_line(memory)))
            held += 1
            summary.sealed += memory.sealed
            if on_progress is not None:
                on_progress(1)
        if held != namespace.count:
            raise StorageError(f"namespace {namespace.name!r} counts {namespace.count} memories but holds {held}: "
                               "the store is damaged; run `tiered-memory verify` on it")
        summary.memories += held
    for key, value in snapshot.extra_items():
        if key.startswith(SYNC_PREFIX.encode()):
            continue
        out.write(_dump({"type": "extra", "key": _key_json(key), "value": b64(value)}))
        summary.extra += 1
    for namespace in namespaces:
        stem = WarmTier.file_key(namespace.name)
        for suffix in (".hnsw", ".meta"):
            path = snapshot.path / "warm" / (stem + suffix)
            if not path.is_file():
                continue
            with open(path, "rb") as f:
                offset = 0
                while True:  # an empty file is one empty chunk
                    chunk = f.read(FILE_CHUNK)
                    if offset and not chunk:
                        break
                    out.write(_dump({"type": "file", "path": f"warm/{stem}{suffix}", "offset": offset,
                                     "data": b64(chunk)}))
                    offset += len(chunk)
                    if len(chunk) < FILE_CHUNK:
                        break
            summary.files += 1
    out.write(_dump({"type": "end", **summary.as_dict()}))
    return summary


# -- import -------------------------------------------------------------------------------------


def import_store(target: str | Path, lines: Iterable[str], *, key: bytes | None = None,
                 on_progress: Progress | None = None, on_header: Callable[[dict[str, Any]], None] | None = None,
                 ) -> TransferSummary:
    """Build the store an export describes in `target`, a new or empty directory.

    It is built beside `target` and moved into place only once complete and verified, so a
    failure (a file cut short, a wrong key, a full disk) leaves no partial store behind."""
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidInputError(f"{target} is not empty: import builds a new store; give a new or empty directory")
    numbered = enumerate(lines, 1)
    header = _header(next(numbered, (1, "")))
    if on_header is not None:
        on_header(header)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.import-", dir=target.parent))
    try:
        summary = _Importer(building, header, key).run(numbered, on_progress)
        from tiered_memory.inspection.verify import verify_store

        report = verify_store(building, key)
        if report.damage:
            raise ExportFileError("the imported copy fails verification (" + "; ".join(report.damage[:3]) +
                                  "): the export file is damaged; export the store again")
        os.replace(building, target)  # an empty target directory is replaced whole
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return summary


def _header(first: tuple[int, str]) -> dict[str, Any]:
    _, line = first
    try:
        header = json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("type") != "header" or header.get("format") != FORMAT:
        raise ExportFileError("the file does not start with a tiered-memory export header; give a file written "
                              "by `tiered-memory export`")
    if header.get("format_version") != FORMAT_VERSION:
        raise ExportFileError(f"the export is of format version {header.get('format_version')!r}; this "
                              f"tiered_memory reads version {FORMAT_VERSION}: use the version that wrote it")
    for name in ("dimension", "originals", "meta", "decrypted", "counts"):
        if name not in header:
            raise ExportFileError(f"the export header lacks {name!r}: the file is damaged; export the store again")
    return header


class _Importer:
    """Writes one export into a new store directory, a transaction per batch."""

    def __init__(self, directory: Path, header: dict[str, Any], key: bytes | None) -> None:
        self.directory = directory
        self.header = header
        try:
            self.meta = {name: from_json(header[name]) for name in HEADER_ENTRIES if name in header}
            self.meta.update({name: from_json(value) for name, value in header["meta"].items()})
        except (TypeError, ValueError, AttributeError) as err:
            raise ExportFileError(f"the export header's store entries are damaged ({err}); export the store again") \
                from err
        self.dimension = self.meta.get("dimension")
        if type(self.dimension) is not int or self.dimension < 1:
            raise ExportFileError(f"the export header gives dimension {self.dimension!r}: the file is damaged")
        if header["originals"] not in ("none", "float16", "float32"):
            raise ExportFileError(f"the export keeps originals as {header['originals']!r}, which no store does: "
                                  "the file is damaged")
        self.sealer = Sealer(key) if key is not None else None
        check = self.meta.get("key_check")
        if self.sealer is not None and check is not None:
            self.sealer.verify(check)
        if header["decrypted"] and self.meta.get("has_sealed") and self.sealer is None:
            raise EncryptionRequiredError("this export holds sealed memories in clear: import it with the key the "
                                          "store was sealed with, which seals them again")
        self.ns_ids: dict[str, int] = {}
        self.expected: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.file_sizes: dict[str, int] = {}
        self.summary = TransferSummary()
        self.lineno = 1

    def run(self, numbered: Iterable[tuple[int, str]], on_progress: Progress | None) -> TransferSummary:
        lock = DirectoryLock(self.directory)
        lock.acquire()
        try:
            self.cold = ColdTier(self.directory / "cold", MemoryConfig(keep_originals=self.header["originals"]))
            try:
                self.cold.dimension = self.dimension
                self.cold.sealer = self.sealer
                self.cold.write([self.cold.meta_op(name, value) for name, value in self.meta.items()])
                self._lines(numbered, on_progress)
            finally:
                self.cold.close()
        finally:
            lock.release()
        return self.summary

    def _lines(self, numbered: Iterable[tuple[int, str]], on_progress: Progress | None) -> None:
        ops: list[Op] = []
        batched = 0
        ended = False
        for self.lineno, line in numbered:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                kind = item["type"]
                if kind == "memory":
                    ops += self._memory_ops(item)
                    batched += 1
                    if on_progress is not None:
                        on_progress(1)
                elif kind == "namespace":
                    ops += self._namespace_ops(item)
                elif kind == "extra":
                    key = item["key"]
                    ops.append(("extra", key.encode("utf-8") if isinstance(key, str) else from_json(key),
                                unb64(item["value"])))
                    self.summary.extra += 1
                    batched += 1
                elif kind == "file":
                    self._file_chunk(item)
                elif kind == "end":
                    ended = True
                    self._check_end(item)
                    break
                else:
                    raise ValueError(f"unknown line type {kind!r}")
            except (KeyError, TypeError, ValueError, AttributeError, UnicodeError) as err:
                raise ExportFileError(f"line {self.lineno} of the export is damaged ({type(err).__name__}: "
                                      f"{err}); export the store again") from err
            if batched >= BATCH:
                self.cold.write(ops)
                ops, batched = [], 0
        if ops:
            self.cold.write(ops)
        if not ended:
            raise ExportFileError(f"the export ends at line {self.lineno} without its end line: the file was cut "
                                  "short; export the store again")

    def _namespace_ops(self, item: dict[str, Any]) -> list[Op]:
        name, ns_id = check_label(item["name"], "namespace"), item["id"]
        count, generation = item["count"], item["generation"]
        if any(type(v) is not int or v < 0 for v in (ns_id, count, generation)) or ns_id == 0:
            raise ValueError(f"namespace {name!r} has id {ns_id!r}, count {count!r}, generation {generation!r}")
        if name in self.ns_ids or ns_id in self.ns_ids.values():
            raise ValueError(f"namespace {name!r} (id {ns_id}) appears twice")
        self.ns_ids[name] = ns_id
        self.expected[name] = count
        self.held[name] = 0
        self.summary.namespaces += 1
        return self.cold.namespace_ops(ns_id, name, count, generation)

    def _memory_ops(self, item: dict[str, Any]) -> list[Op]:
        namespace = item["namespace"]
        ns_id = self.ns_ids.get(namespace)
        if ns_id is None:
            raise ValueError(f"memory {item.get('id')!r} comes before its namespace {namespace!r}")
        memory_id = check_id(item["id"])
        sensitive = item["sensitive"]
        if type(sensitive) is not bool:
            raise ValueError(f"sensitive is {sensitive!r}")
        tier = Tier(item["tier"])
        rkey, id_key = row_key(ns_id, memory_id), memory_id.encode("utf-8")
        code = unb64(item["code"])
        original = None if item["original"] is None else unb64(item["original"])
        ops: list[Op] = [("rows", rkey, pack_row(
            check_label(item["kind"], "kind"), item["importance"], item["created_at"], item["updated_at"],
            item["last_accessed"], item["access_count"], item["topic"], TIER_CODES[tier], item["version"],
            sensitive, _expiry(item)))]
        self.held[namespace] += 1
        self.summary.memories += 1
        if item["record"] is not None:  # sealed, as stored: its blobs are bound to this id and namespace id
            if not sensitive or len(code) != self.dimension + OVERHEAD:
                raise ValueError(f"memory {memory_id!r} has a sealed record but its code is not sealed")
            ops += [("records", id_key, unb64(item["record"])), ("nscodes", rkey, code)]
            if original is not None:
                ops.append(("originals", id_key, original))
            self.summary.sealed += 1
            return ops
        if len(code) != self.dimension:
            raise ValueError(f"memory {memory_id!r} has a code of {len(code)} bytes, not {self.dimension}")
        metadata = from_json(item["metadata"])
        if not isinstance(item["text"], str) or not isinstance(metadata, dict):
            raise ValueError(f"memory {memory_id!r} has no text or metadata")
        memory = Memory(memory_id, namespace, item["text"], item["kind"], metadata, item["created_at"],
                        item["updated_at"], item["last_accessed"], item["access_count"], item["importance"],
                        item["topic"], tier, item["version"], sensitive, _expiry(item))
        vector = None
        if original is not None:
            if self.cold.originals_dtype is None:
                raise ValueError(f"memory {memory_id!r} has an original but the header says none are kept")
            vector = np.frombuffer(original, dtype=self.cold.originals_dtype)
            if len(vector) != self.dimension:
                raise ValueError(f"memory {memory_id!r} has an original of {len(original)} bytes")
        # Sealed again here (with the key checked above) if it is sensitive and arrived opened.
        ops += self.cold.record_ops([memory])
        ops += self.cold.vector_ops(ns_id, memory, np.frombuffer(code, dtype=np.int8), vector)
        if item["dedup"] and not sensitive:
            ops.append(("texts", text_key(ns_id, memory.text), id_key))
        return ops

    def _file_chunk(self, item: dict[str, Any]) -> None:
        relative = item["path"]
        if not isinstance(relative, str) or not _GRAPH_FILE.fullmatch(relative):
            raise ValueError(f"file {relative!r} is not a warm graph file")
        offset, data = item["offset"], unb64(item["data"])
        if offset != self.file_sizes.get(relative, 0):
            raise ValueError(f"chunk of {relative} at offset {offset}, expected {self.file_sizes.get(relative, 0)}")
        path = self.directory / relative
        path.parent.mkdir(exist_ok=True)
        with open(path, "ab" if offset else "wb") as f:
            f.write(data)
        if not offset:
            self.summary.files += 1
        self.file_sizes[relative] = offset + len(data)

    def _check_end(self, item: dict[str, Any]) -> None:
        for name, count in self.expected.items():
            if self.held[name] != count:
                raise ValueError(f"namespace {name!r} should hold {count} memories, the file gives {self.held[name]}")
        mine = self.summary.as_dict()
        theirs = {name: item.get(name) for name in mine}
        if mine != theirs:
            raise ValueError(f"the end line counts {theirs}, the file holds {mine}")
