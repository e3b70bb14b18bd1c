"""Check a store's invariants on disk and report damage, changing nothing.

What is checked (one pass over each database, then the graph files):

- store entries: each readable; the quantizer state loads (opened with the key when sealed); a
  store with sealed memories keeps a key check; namespace ids below ``next_namespace_id``.
- namespaces: the name index and the id entries agree; each count equals its catalog rows.
- every catalog row: readable; under a known namespace; has a record, an int8 code and (when the
  store keeps originals) a float original, of the right sizes; sealed exactly when the memory is
  sensitive (a sensitive memory's plain bytes on disk are damage); record and row agree (id,
  namespace, kind, version, sensitive); with the key, sealed values open; the code decodes to the
  direction of the original (cosine >= 0.9: a code swapped with another memory's is caught).
- the other way round: no record, code or original without its catalog row.
- the dedup index: each entry names a memory of its namespace, not sealed, whose text it digests.
- topic models: readable (opened with the key when sealed), of the store's dimension, of a namespace.
- warm graph files: each index has its sidecar and the reverse; the sidecar passes the engine's
  own checks; the index file's size and CRC-32 are the sidecar's; a sealed one opens with the key;
  no plaintext graph of a sealed namespace.

Damage is what the disk should not hold; notes are states the engine handles by design (a graph
saved before its namespace's last write is repaired at the next load, files of an interrupted
save are ignored). The engine repairs a damaged graph from cold too, but a damaged file still
means the disk or something outside the library altered it: it is reported as damage.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from tiered_memory.crypto import OVERHEAD
from tiered_memory.errors import (
    DecryptionError,
    EncryptionRequiredError,
    SchemaVersionError,
    StorageError,
    StoreLockedError,
    TieredMemoryError,
)
from tiered_memory.inspection.snapshot import NamespaceEntry, StoreSnapshot
from tiered_memory.records import unpack_record
from tiered_memory.tiering.topics import TopicModel
from tiered_memory.tiers.cold import ns_prefix, text_key
from tiered_memory.tiers.warm import WarmTier, sidecar_problem

MAX_REPORTED = 1_000  # damage lines kept; past that they are only counted
MIN_CODE_COSINE = 0.9  # an int8 code decodes to within a few degrees of its original (MiniLM: > 0.99)
_NS_BYTES = len(ns_prefix(0))

Progress = Callable[[int], None]


@dataclass
class VerifyReport:
    path: str
    damage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    damage_count: int = 0  # all of it, also past MAX_REPORTED

    @property
    def ok(self) -> bool:
        return self.damage_count == 0

    def add(self, problem: str) -> None:
        self.damage_count += 1
        if len(self.damage) < MAX_REPORTED:
            self.damage.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "damage_count": self.damage_count, "damage": self.damage,
                "notes": self.notes, "checked": self.checked}


def verify_store(path: str | Path, key: bytes | None = None, *, on_progress: Progress | None = None) -> VerifyReport:
    """Check the store at `path` (holding its lock shared: no writer meanwhile). Without the key,
    sealed values are checked for presence and size only. A wrong key raises DecryptionError."""
    report = VerifyReport(str(path))
    try:
        snapshot = StoreSnapshot(path, key, hold=True)
    except (StoreLockedError, SchemaVersionError):
        raise
    except StorageError as err:  # a truncated archive, missing databases, an unreadable entry
        report.add(str(err))
        return report
    with snapshot:
        _Checker(snapshot, report, on_progress).run()
    return report


class _Checker:
    def __init__(self, snapshot: StoreSnapshot, report: VerifyReport, on_progress: Progress | None) -> None:
        self.snapshot = snapshot
        self.cold = snapshot.cold
        self.report = report
        self.on_progress = on_progress
        self.names: dict[int, str] = {}  # ns id -> name
        self.namespace_of: dict[str, int] = {}  # memory id -> ns id of its catalog row
        self.sensitive_in: set[int] = set()  # namespaces holding sealed memories
        self.counted: Counter[str] = Counter()

    def run(self) -> None:
        meta = self._meta()
        namespaces = self._namespaces(meta)
        if namespaces is None:
            return
        self._rows(namespaces)
        self._orphans()
        self._dedup_index()
        self._topic_models(meta)
        self._graphs(namespaces, set(meta.get("sealed_namespaces") or []))
        self.report.checked.update({name: count for name, count in self.counted.items()})

    # -- store entries and namespaces -----------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for key, data in self.cold.stored_items("meta"):
            name = key.decode("utf-8", "replace")
            try:
                meta[name] = msgpack.unpackb(data, raw=False, strict_map_key=False)
            except (ValueError, msgpack.UnpackException):
                self.report.add(f"store entry {name!r}: not readable")
        problem = self.snapshot.quantizer_problem
        if problem is not None:
            if problem.startswith("sealed"):
                self.report.notes.append("the quantizer state is sealed: give the key to check it")
            else:
                self.report.add(f"quantizer state: {problem}")
        if meta.get("has_sealed") and meta.get("key_check") is None:
            self.report.add("the store holds sealed memories but no key check: a wrong key could not be told "
                            "from damage")
        return meta

    def _namespaces(self, meta: dict[str, Any]) -> list[NamespaceEntry] | None:
        try:
            namespaces = self.snapshot.namespaces()
        except StorageError as err:
            self.report.add(str(err))
            return None
        self.names = {ns.ns_id: ns.name for ns in namespaces}
        next_id = meta.get("next_namespace_id", 1)
        for ns in namespaces:
            indexed = self.cold.namespace_id(ns.name)
            if indexed != ns.ns_id:
                self.report.add(f"namespace {ns.name!r}: its entry has id {ns.ns_id} but the name index gives "
                                f"{indexed}")
            if type(next_id) is int and ns.ns_id >= next_id:
                self.report.add(f"namespace {ns.name!r}: id {ns.ns_id} is not below next_namespace_id {next_id}: "
                                "a new namespace would take it")
        for key, value in self.cold.stored_items("namespaces", b"n"):
            ns_id = int.from_bytes(value, "big") if len(value) == _NS_BYTES else None
            if ns_id not in self.names:
                self.report.add(f"namespace name {key[1:].decode('utf-8', 'replace')!r} points to id {ns_id}, "
                                "which has no namespace entry")
        self.counted["namespaces"] = len(namespaces)
        return namespaces

    # -- catalog rows, records, codes, originals --------------------------------------------------

    def _rows(self, namespaces: list[NamespaceEntry]) -> None:
        rows_per_ns: Counter[int] = Counter()
        keeps_originals = self.snapshot.originals != "none"
        if self.snapshot.originals == "unknown":
            self.report.add("float originals have a size that is neither float16 nor float32 of the dimension")
            keeps_originals = False
        for key, row in self.cold.stored_items("rows"):
            ns_id = int.from_bytes(key[:_NS_BYTES], "big")
            memory_id = key[_NS_BYTES:].decode("utf-8", "replace")
            rows_per_ns[ns_id] += 1
            self.counted["memories"] += 1
            if self.on_progress is not None:
                self.on_progress(1)
            namespace = self.names.get(ns_id)
            where = f"memory {memory_id!r} ({namespace!r})" if namespace else f"memory {memory_id!r}"
            if namespace is None:
                self.report.add(f"{where}: a catalog row under namespace id {ns_id}, which the store does not know")
            if memory_id in self.namespace_of:
                self.report.add(f"{where}: catalog rows in two namespaces")
            self.namespace_of[memory_id] = ns_id
            try:
                fields = self.cold.stored_row(key, row)
            except StorageError:
                self.report.add(f"{where}: its catalog row is not readable")
                continue
            kind, version, sensitive = fields[0], fields[8], fields[9]
            if sensitive:
                self.sensitive_in.add(ns_id)
            self._record(where, memory_id, namespace, kind, version, sensitive)
            code = self._vector(where, "code", key, sensitive, required=True)
            original = None if not keeps_originals else \
                self._vector(where, "original", memory_id.encode("utf-8"), sensitive, required=True)
            if code is not None and original is not None and self.snapshot.quantizer is not None:
                decoded = self.snapshot.quantizer.decode(np.frombuffer(code, dtype=np.int8).reshape(1, -1))[0]
                vector = np.frombuffer(original, dtype=self.cold.originals_dtype).astype(np.float32)
                cosine = float(decoded @ vector) / max(float(np.linalg.norm(decoded) * np.linalg.norm(vector)), 1e-12)
                if cosine < MIN_CODE_COSINE:
                    self.report.add(f"{where}: its int8 code points elsewhere than its original (cosine "
                                    f"{cosine:.3f}): codes were altered or swapped")
        for ns in namespaces:
            if rows_per_ns.get(ns.ns_id, 0) != ns.count:
                self.report.add(f"namespace {ns.name!r}: counts {ns.count} memories but holds "
                                f"{rows_per_ns.get(ns.ns_id, 0)} catalog rows")

    def _record(self, where: str, memory_id: str, namespace: str | None, kind: str, version: int,
                sensitive: bool) -> None:
        data = self.cold.stored_value("records", memory_id.encode("utf-8"))
        if data is None:
            self.report.add(f"{where}: has a catalog row but no record")
            return
        self.counted["records"] += 1
        try:
            record = unpack_record(data, self.cold.sealer)
        except EncryptionRequiredError:  # every clear field passed its checks; only the blob is unopened
            if not sensitive:
                self.report.add(f"{where}: its record is sealed but its catalog row says it is not sensitive")
            return
        except DecryptionError:
            self.report.add(f"{where}: its sealed record does not open with this key: its bytes were altered")
            return
        except TieredMemoryError as err:
            self.report.add(f"{where}: {err}")
            return
        seen = (record.id, record.namespace, record.kind, record.version, record.sensitive)
        expected = (memory_id, namespace, kind, version, sensitive)
        if namespace is not None and seen != expected:
            self.report.add(f"{where}: record (id, namespace, kind, version, sensitive) {seen} disagrees with its "
                            f"catalog row {expected}")

    def _vector(self, where: str, field_name: str, key: bytes, sensitive: bool, required: bool) -> bytes | None:
        """A code's or original's plain bytes, once checked; None when absent, sealed without the
        key, or damaged (reported)."""
        database = "nscodes" if field_name == "code" else "originals"
        what = "int8 code" if field_name == "code" else "float original"
        stored = self.cold.stored_value(database, key)
        if stored is None:
            if required:
                self.report.add(f"{where}: has no {what}")
            return None
        self.counted[f"{field_name}s"] += 1
        plain_size = self.snapshot.dimension if field_name == "code" else \
            self.snapshot.dimension * np.dtype(self.cold.originals_dtype).itemsize
        if len(stored) == plain_size and sensitive:
            self.report.add(f"{where}: is sensitive but its {what} is stored in clear")
            return None
        if len(stored) == plain_size + OVERHEAD and not sensitive:
            self.report.add(f"{where}: its {what} is sealed but the memory is not sensitive")
            return None
        try:
            return self.cold.plain_vector(field_name, key, stored)
        except EncryptionRequiredError:
            return None
        except DecryptionError:
            self.report.add(f"{where}: its sealed {what} does not open with this key: its bytes were altered")
        except StorageError:
            self.report.add(f"{where}: its {what} has {len(stored)} bytes, not {plain_size} (or "
                            f"{plain_size + OVERHEAD} sealed)")
        return None

    def _orphans(self) -> None:
        """Records, codes and originals that no catalog row reaches: invisible to the engine."""
        for key, _ in self.cold.stored_items("nscodes"):
            memory_id = key[_NS_BYTES:].decode("utf-8", "replace")
            if self.namespace_of.get(memory_id) != int.from_bytes(key[:_NS_BYTES], "big"):
                self.report.add(f"memory {memory_id!r}: an int8 code without its catalog row")
        for database, what in (("records", "a record"), ("originals", "a float original")):
            for key, _ in self.cold.stored_items(database):
                memory_id = key.decode("utf-8", "replace")
                if memory_id not in self.namespace_of:
                    self.report.add(f"memory {memory_id!r}: {what} without a catalog row (the engine never sees it)")

    def _dedup_index(self) -> None:
        for key, value in self.cold.stored_items("texts"):
            self.counted["dedup_entries"] += 1
            ns_id = int.from_bytes(key[:_NS_BYTES], "big")
            memory_id = value.decode("utf-8", "replace")
            where = f"dedup entry of namespace {self.names.get(ns_id, ns_id)!r}"
            if self.namespace_of.get(memory_id) != ns_id:
                self.report.add(f"{where}: names memory {memory_id!r}, which that namespace does not hold")
                continue
            data = self.cold.stored_value("records", value)
            try:
                record = unpack_record(data, None) if data is not None else None
            except EncryptionRequiredError:
                self.report.add(f"{where}: names sealed memory {memory_id!r} (a digest of its text is on disk)")
                continue
            except TieredMemoryError:
                continue  # reported with its row
            if record is not None and text_key(ns_id, record.text) != key:
                self.report.add(f"{where}: names memory {memory_id!r}, whose text it is not the digest of")

    # -- topic models and graph files ---------------------------------------------------------------

    def _topic_models(self, meta: dict[str, Any]) -> None:
        sealer = self.cold.sealer
        for name, state in meta.items():
            if not name.startswith("topics/"):
                continue
            self.counted["topic_models"] += 1
            try:
                ns_id = int(name[len("topics/"):], 16)
            except ValueError:
                ns_id = -1
            where = f"topic model {name!r}"
            if ns_id not in self.names:
                self.report.add(f"{where}: of no namespace of the store")
                continue
            where = f"topic model of namespace {self.names[ns_id]!r}"
            if isinstance(state, dict) and "sealed" in state:
                if sealer is None:
                    continue
                try:
                    # Sealed bound to its own key, as the tier manager seals it (tiering._topics_op).
                    state = msgpack.unpackb(sealer.open(state["sealed"], name.encode()), raw=False,
                                            strict_map_key=False)
                except DecryptionError:
                    self.report.add(f"{where}: sealed, and does not open with this key: its bytes were altered")
                    continue
                except (ValueError, TypeError, msgpack.UnpackException):
                    state = None
            try:
                model = TopicModel.from_state(state)
                if model.centroids.ndim != 2 or model.centroids.shape[1] != self.snapshot.dimension:
                    raise ValueError(f"centroids of shape {model.centroids.shape}")
            except (KeyError, TypeError, ValueError) as err:
                self.report.add(f"{where}: not readable ({err}); the engine refits it at the next load")

    def _graphs(self, namespaces: list[NamespaceEntry], sealed_namespaces: set[str]) -> None:
        directory = self.snapshot.path / "warm"
        if not directory.is_dir():
            return
        by_stem = {WarmTier.file_key(ns.name): ns for ns in namespaces}
        stems: dict[str, set[str]] = {}
        for path in sorted(directory.iterdir()):
            if path.name.endswith(".tmp"):
                self.report.notes.append(f"{path.name}: left by an interrupted save; the engine ignores it")
            elif path.suffix in (".hnsw", ".meta"):
                stems.setdefault(path.stem, set()).add(path.suffix)
        for stem, suffixes in sorted(stems.items()):
            namespace = by_stem.get(stem)
            if namespace is None:
                self.report.notes.append(f"warm/{stem}.*: graph files of no namespace in the store (unused)")
                continue
            self.counted["warm_graphs"] += 1
            where = f"warm graph of namespace {namespace.name!r} (warm/{stem}.hnsw)"
            if suffixes != {".hnsw", ".meta"}:
                lacking = "sidecar (.meta)" if ".meta" not in suffixes else "index file (.hnsw)"
                self.report.add(f"{where}: lacks its {lacking}; the engine rebuilds it from cold at the next load")
                continue
            self._graph(where, directory / f"{stem}.hnsw", directory / f"{stem}.meta", namespace,
                        namespace.name in sealed_namespaces or namespace.ns_id in self.sensitive_in)

    def _graph(self, where: str, index_path: Path, meta_path: Path, namespace: NamespaceEntry,
               holds_sealed: bool) -> None:
        rebuilt = "; the engine rebuilds it from cold at the next load"
        try:
            meta = msgpack.unpackb(meta_path.read_bytes(), raw=False, strict_map_key=False)
        except (OSError, ValueError, msgpack.UnpackException):
            meta = None
        if not isinstance(meta, dict):
            self.report.add(f"{where}: its sidecar is not readable{rebuilt}")
            return
        problem = sidecar_problem(meta)
        if problem is not None:
            self.report.add(f"{where}: its sidecar is damaged ({problem}){rebuilt}")
            return
        if meta["namespace"] != namespace.name:
            self.report.add(f"{where}: its sidecar describes namespace {meta['namespace'][:80]!r}{rebuilt}")
            return
        data = index_path.read_bytes()
        if len(data) != meta["size"] or zlib.crc32(data) != meta["crc32"]:
            self.report.add(f"{where}: {len(data):,} bytes with CRC-32 {zlib.crc32(data):08x}, but it was saved "
                            f"with {meta['size']:,} bytes and {meta['crc32']:08x} (truncated or altered){rebuilt}")
            return
        if meta["sealed"]:
            if self.cold.sealer is not None:
                try:
                    self.cold.sealer.open(data, b"warm:" + namespace.name.encode())  # as the warm tier seals it
                except DecryptionError:
                    self.report.add(f"{where}: sealed, and does not open with this key{rebuilt}")
        elif holds_sealed:
            self.report.add(f"{where}: a plaintext graph of a namespace with sealed memories (embeddings can be "
                            "inverted to text)")
        if meta["generation"] != namespace.generation:
            self.report.notes.append(f"{where}: saved at generation {meta['generation']}, the namespace is at "
                                     f"{namespace.generation}: repaired from cold at the next load")
