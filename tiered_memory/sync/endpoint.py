"""One store's side of a sync: what it sends (its changes, as stored) and how it takes another's.

The engine builds one :class:`SyncEndpoint` over its cold store and hands it, explicitly, the few
engine operations it needs (the write lock, dropping a namespace's RAM copy, int8 calibration,
expiry bounds). Everything else goes through the cold store's contract, so the same code syncs
LMDB and PostgreSQL stores, in either direction.

Applying a batch is one cold-store transaction holding every memory it changes, their stamps, the
losers of conflicts (history) and the receiver's cursor for the sender: an interrupted sync has
applied whole batches or nothing of one, and the next resumes after the last applied batch.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from tiered_memory.crypto import Sealer
from tiered_memory.errors import (
    ConcurrentUpdateError,
    EncryptionRequiredError,
    IncompatibleStoresError,
    InvalidInputError,
    SyncError,
)
from tiered_memory.quantization import Quantizer, quantizer_from_state
from tiered_memory.records import Memory, Tier, unpack_record
from tiered_memory.sync.batch import ChangeBatch
from tiered_memory.sync.clock import HybridClock, stamp_time
from tiered_memory.sync.merge import Outcome, decide, merged_ancestry, theirs_win
from tiered_memory.tiers.cold_ops import (
    SEQ,
    Op,
    StoredStamp,
    StoredVersion,
    memory_of,
    memory_row,
    ns_prefix,
    row_key,
    stamp_op,
    text_key,
    unpack_row,
)
from tiered_memory.tiers.cold_store import ColdStore

log = logging.getLogger(__name__)

_PLAN_ATTEMPTS = 5  # a batch re-planned when another writer of a shared store changed its memories meanwhile
_CURSOR = b"sync/cursor/"  # + peer store id (8) + namespace: the last change of the peer applied here
_ACKED = b"sync/acked/"  # + peer store id (8) + namespace: the last change of ours the peer applied
_PEER = b"sync/peer/"  # + peer store id: when it last synced with this store
_HISTORY = b"sync/history/"  # + ns id + id length (2) + id + loser stamp: versions lost in conflicts
_COLLECTED = b"sync/collected/"  # + ns id: tombstones up to this change number were looked at
_COLLECTED_AT = "sync/collected_at"  # meta: when tombstones were last looked for
_NS = struct.Struct(">I")
_ID_LENGTH = struct.Struct(">H")
_DTYPES = {"float16": np.float16, "float32": np.float32}
BACKFILLED = "sync_backfilled"  # meta: every memory written before change stamps existed is stamped


@dataclass(frozen=True)
class Conflict:
    """Both stores changed a memory since they last agreed: which version won."""

    namespace: str
    memory_id: str
    winner: str  # "local" or "remote", from the store that resolved it
    winner_deleted: bool
    loser_deleted: bool
    winner_stamp: bytes
    loser_stamp: bytes


@dataclass
class Applied:
    """What applying one batch did."""

    taken: int = 0  # versions applied (new, changed or deleted memories)
    unchanged: int = 0  # versions this store already had, or older ones
    conflicts: list[Conflict] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # ids held by another namespace here
    upto: int = 0
    more: bool = False


@dataclass(frozen=True)
class LostVersion:
    """A version of a memory that lost a conflict, as the history keeps it."""

    stamp: bytes
    made_at: float  # when the losing change was made (its stamp's clock)
    deleted: bool
    memory: Memory | None  # its content (None for a delete)
    lost_to: bytes  # the stamp of the version that replaced it
    resolved_at: float


# A version to write: (its source, this store's version, the stamp it gets, whether it is a merge)
_Write = tuple[StoredVersion, StoredVersion, StoredStamp, bool]


@dataclass
class _Version:
    """A version about to be written: content, vector (float32) and where it came from."""

    memory: Memory
    vector: np.ndarray | None
    code: np.ndarray | None  # the code as received, usable when both quantizers agree


class SyncEndpoint:
    """The sync surface of one open store (see the module doc)."""

    def __init__(self, cold: ColdStore, *, store_id: bytes, clock: HybridClock, wall_clock: Callable[[], float],
                 dimension: int, encoder_name: Callable[[], str | None], sealer: Sealer | None,
                 read_lock: AbstractContextManager[Any], write_lock: AbstractContextManager[Any],
                 check_writable: Callable[[], None], forget_namespace: Callable[[str], None],
                 calibrate: Callable[[np.ndarray], None],
                 expiry_bound_ops: Callable[[int, list[float | None]], tuple[list[Op], Callable[[], None]]],
                 is_sealed: Callable[[str], bool] = lambda namespace: False,
                 topics: Callable[[str, int, np.ndarray], list[int] | None] = lambda namespace, ns, vectors: None,
                 tombstone_retention_s: float = 30 * 86_400.0) -> None:
        self.cold = cold
        self.store_id = store_id
        self.clock = clock
        self._wall = wall_clock
        self.dimension = dimension
        self._encoder_name = encoder_name
        self._sealer = sealer
        self._read_lock = read_lock
        self._write_lock = write_lock
        self._check_writable = check_writable
        self._forget = forget_namespace
        self._calibrate = calibrate
        self._expiry_bound_ops = expiry_bound_ops
        self._is_sealed = is_sealed
        self._topics = topics
        self._tombstone_retention_s = tombstone_retention_s
        self._backfill_lock = threading.Lock()
        self._conflict_listeners: list[Callable[[list[Conflict]], None]] = []

    # -- what the store is -------------------------------------------------------------------

    @property
    def encoder(self) -> str | None:
        return self._encoder_name()

    @property
    def originals(self) -> str:
        dtype = self.cold.originals_dtype
        return "none" if dtype is None else np.dtype(dtype).name

    @property
    def has_key(self) -> bool:
        return self._sealer is not None

    def check_compatible(self, encoder: str | None, dimension: int) -> None:
        """Refuse a peer whose vectors are not comparable with this store's."""
        if dimension != self.dimension:
            raise IncompatibleStoresError(f"the other store holds {dimension}-d vectors, this one {self.dimension}-d: "
                                          "stores sync only within one vector space")
        mine = self.encoder
        if encoder is not None and mine is not None and encoder != mine:
            raise IncompatibleStoresError(f"the other store was built with encoder {encoder!r}, this one with "
                                          f"{mine!r}; their vectors are not comparable, so they cannot sync (a store "
                                          "would have to re-embed every memory it receives): sync stores of one "
                                          "encoder")

    # -- sending -------------------------------------------------------------------------------

    def change_seqs(self) -> dict[str, int]:
        """namespace -> the number of its latest change."""
        names = self._namespace_names()
        return {names[ns]: seq for ns, seq in self.cold.change_seqs().items() if ns in names}

    def namespaces(self) -> list[str]:
        return [name for name, _ in self.cold.namespace_counts()]

    def _namespace_names(self) -> dict[int, str]:
        out = {}
        for name, _ in self.cold.namespace_counts():
            ns = self.cold.namespace_id(name)
            if ns is not None:
                out[ns] = name
        return out

    def export(self, namespace: str, after: int, limit: int = 1_000, skip_origin: bytes | None = None) -> bytes:
        """The namespace's changes numbered after `after` (at most `limit`), as a batch. Versions
        made in the store `skip_origin` are left out (that store has them or newer ones) but
        counted in the range, so the receiver's cursor moves past them."""
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit!r}")
        ns = self.cold.namespace_id(namespace)
        for _ in range(_PLAN_ATTEMPTS):
            # The int8 ranges the codes were made with: as stored, read before and after the codes
            # (another process of a shared store may re-calibrate, re-encoding every code, between).
            with self._read_lock:
                quantizer = self._stored_quantizer()
                found = [] if ns is None else self.cold.changes_after(ns, after, limit)
                if self._stored_quantizer() == quantizer:
                    break
        else:
            raise SyncError("the other store's int8 ranges kept changing while its changes were read: sync again")
        upto = found[-1].stamp.seq if found else after
        versions = [v for v in found if skip_origin is None or v.stamp.origin != skip_origin]
        return ChangeBatch(self.store_id, self.encoder, self.dimension, self.originals, quantizer, namespace,
                           0 if ns is None else ns, after, upto, len(found) == limit, versions).to_bytes()

    def _stored_quantizer(self) -> bytes:
        state = self.cold.meta_get("quantizer")
        return b"" if state is None else msgpack.packb(state, use_bin_type=True)

    # -- cursors and acknowledgements ------------------------------------------------------------

    def cursors(self, peer: bytes) -> dict[str, int]:
        """namespace -> the last change of store `peer` applied here."""
        return self._seqs(_CURSOR + peer)

    def acknowledged(self, peer: bytes) -> dict[str, int]:
        """namespace -> the last change of this store that `peer` has applied."""
        return self._seqs(_ACKED + peer)

    def _seqs(self, prefix: bytes) -> dict[str, int]:
        return {key[len(prefix):].decode("utf-8"): SEQ.unpack(value)[0]
                for key, value in self.cold.extra_items(prefix)}

    def acknowledge(self, peer: bytes, seqs: dict[str, int]) -> None:
        """Record that `peer` has applied this store's changes up to these numbers (and when it
        last synced): what tombstones wait for."""
        ops: list[Op] = [("extra", _ACKED + peer + name.encode("utf-8"), SEQ.pack(seq)) for name, seq in seqs.items()]
        ops.append(("extra", _PEER + peer, msgpack.packb({"synced_at": self._wall()})))
        with self._write_lock:
            self._check_writable()
            self.cold.write(ops)

    def peers(self) -> dict[bytes, float]:
        """Every store that has synced with this one -> when it last did."""
        return {key[len(_PEER):]: msgpack.unpackb(value)["synced_at"] for key, value in self.cold.extra_items(_PEER)}

    def forget_peer(self, peer: bytes) -> None:
        """Stop keeping tombstones for a store that will not sync again."""
        ops: list[Op] = [("extra", key, None) for key, _ in self.cold.extra_items(_ACKED + peer)]
        ops.append(("extra", _PEER + peer, None))
        with self._write_lock:
            self._check_writable()
            self.cold.write(ops)

    def collect_due_tombstones(self) -> int:
        """collect_tombstones of every namespace whose peers have applied changes past what was
        looked at, at most once per tenth of the retention (a pass reads those changes again)."""
        last = self.cold.meta_get(_COLLECTED_AT, 0.0)
        now = self._wall()
        if now - last < self._tombstone_retention_s / 10:
            return 0
        peers = list(self.peers())
        if not peers:
            return 0
        acked = [self.acknowledged(peer) for peer in peers]
        names = self._namespace_names()
        marks = {names.get(_NS.unpack(key[len(_COLLECTED):])[0]): SEQ.unpack(value)[0]
                 for key, value in self.cold.extra_items(_COLLECTED)}
        dropped = 0
        for name in sorted(set.intersection(*(set(a) for a in acked))):
            if min(a[name] for a in acked) > marks.get(name, 0):
                dropped += self.collect_tombstones(name)
        with self._write_lock:
            self._check_writable()
            self.cold.write([self.cold.meta_op(_COLLECTED_AT, now)])
        return dropped

    def collect_tombstones(self, namespace: str, limit: int = 1_000) -> int:
        """Drop the stamp rows of deletes every known peer has applied and that are older than the
        retention (MemoryConfig.sync_tombstone_retention_s); returns how many. A store that syncs
        with this one only through a third (so is not known here) and has been away longer than
        the retention can bring such a memory back: the retention is what bounds that."""
        peers = list(self.peers())
        ns = self.cold.namespace_id(namespace)
        if not peers or ns is None:
            return 0
        seen_by_all = min(self.acknowledged(peer).get(namespace, 0) for peer in peers)
        old_enough = self._wall() - self._tombstone_retention_s
        done_key = _COLLECTED + ns_prefix(ns)
        done = next((SEQ.unpack(value)[0] for key, value in self.cold.extra_items(done_key) if key == done_key), 0)
        dropped = 0
        while done < seen_by_all:
            page = [v for v in self.cold.changes_after(ns, done, limit) if v.stamp.seq <= seen_by_all]
            if not page:
                break
            # Stop at the first tombstone too young to go: the pass resumes there next time.
            young = next((i for i, v in enumerate(page) if v.stamp.deleted and stamp_time(v.stamp.stamp) > old_enough),
                         len(page))
            page = page[:young]
            if not page:
                break
            tombstones = [v for v in page if v.stamp.deleted]
            try:
                with self._write_lock:
                    self._check_writable()
                    # Each drop names the tombstone it saw: a memory added again meanwhile keeps its row.
                    self.cold.write([*(stamp_op(ns, v.memory_id, None, expect=v.stamp.stamp) for v in tombstones),
                                     ("extra", done_key, SEQ.pack(page[-1].stamp.seq))])
            except ConcurrentUpdateError:
                break  # the next sync collects them
            done = page[-1].stamp.seq
            dropped += len(tombstones)
            if young < limit and len(page) < limit:
                break
        return dropped

    # -- stamping what was written before change stamps existed ----------------------------------

    def backfill(self, chunk: int = 5_000) -> int:
        """Stamp every memory that has no stamp yet (stores written by an earlier tiered_memory);
        runs once per store. Returns how many were stamped."""
        with self._backfill_lock:
            if self.cold.meta_get(BACKFILLED):
                return 0
            stamped = 0
            with self._write_lock:
                self._check_writable()
                for ns in self._namespace_names():
                    ids = self.cold.namespace_ids(ns)
                    for start in range(0, len(ids), chunk):
                        part = ids[start:start + chunk]
                        missing = [v.memory_id for v in self.cold.stored_versions(ns, part) if v.stamp is None]
                        if missing:
                            self.cold.write([stamp_op(ns, memory_id, self.clock.now(), origin=self.store_id)
                                             for memory_id in missing])
                            stamped += len(missing)
                self.cold.write([self.cold.meta_op(BACKFILLED, True)])
            return stamped

    # -- receiving -------------------------------------------------------------------------------

    def add_conflict_listener(self, callback: Callable[[list[Conflict]], None]) -> None:
        """Call ``callback(conflicts)`` after a batch that resolved conflicts is committed here
        (agent hubs notify the agents with access to a conflicted shared memory)."""
        self._conflict_listeners.append(callback)

    def apply(self, data: bytes) -> Applied:
        """Apply a batch from another store (see the module doc and :mod:`.merge`), with this
        store's cursor for the sender, in one transaction."""
        batch = ChangeBatch.from_bytes(data)
        if batch.store_id == self.store_id:
            raise SyncError("a store cannot sync with itself (both sides have the same store id: is one a copy of "
                            "the other's directory? give the copy a new id with a fresh store and sync into it)")
        self.check_compatible(batch.encoder, batch.dimension)
        outcome = Applied(upto=batch.upto, more=batch.more)
        cursor_op: Op = ("extra", _CURSOR + batch.store_id + batch.namespace.encode("utf-8"), SEQ.pack(batch.upto))
        with self._write_lock:
            self._check_writable()
            if not batch.versions:
                self.cold.write([cursor_op])
                return outcome
            for version in batch.versions:
                self.clock.observe(version.stamp.stamp)
            ns = self.cold.namespace_id(batch.namespace, create=True)
            assert ns is not None
            for attempt in range(1, _PLAN_ATTEMPTS + 1):
                self._forget(batch.namespace)  # statistics flushed; the next use loads what this writes
                outcome = Applied(upto=batch.upto, more=batch.more)
                ops, commit = self._plan(batch, ns, outcome)
                try:
                    # Each stamp op names the stamp it was planned against: on a shared store another
                    # process's change of one of these memories since the plan refuses the whole write.
                    self.cold.write([*ops, cursor_op])
                except ConcurrentUpdateError:
                    if attempt == _PLAN_ATTEMPTS:
                        raise
                    continue
                commit()
                break
        if outcome.conflicts:
            for listener in self._conflict_listeners:
                try:
                    listener(outcome.conflicts)
                except Exception:  # the batch is committed; a listener's failure must not undo the sync
                    log.exception("a sync conflict listener failed")
        return outcome

    def _plan(self, batch: ChangeBatch, ns: int, outcome: Applied) -> tuple[list[Op], Callable[[], None]]:
        mine_by_id = {v.memory_id: v for v in self.cold.stored_versions(ns, [v.memory_id for v in batch.versions])}
        ops: list[Op] = []
        writes: list[_Write] = []
        for theirs in batch.versions:
            mine = mine_by_id[theirs.memory_id]
            decision = decide(theirs.stamp, mine.stamp)
            if decision in (Outcome.SAME, Outcome.STALE):
                outcome.unchanged += 1
                continue
            if decision is Outcome.TAKE:
                if not theirs.stamp.deleted and not theirs.live:
                    outcome.unchanged += 1  # expired and swept on the sender since it changed
                    continue
                writes.append((theirs, mine, theirs.stamp, False))
                continue
            # A conflict: the newer version's content, under a new stamp descending from both.
            assert mine.stamp is not None
            won = theirs_win(theirs.stamp, mine.stamp)
            winner, loser = (theirs, mine) if won else (mine, theirs)
            if not winner.stamp.deleted and not winner.live:
                winner, loser, won = loser, winner, not won  # the winner expired meanwhile: nothing of it is left
            if not winner.stamp.deleted and not winner.live:
                outcome.unchanged += 1  # both expired and swept: nothing to keep
                continue
            merged = StoredStamp(0, self.clock.now(), winner.stamp.deleted, merged_ancestry(theirs.stamp, mine.stamp),
                                 self.store_id)
            if self._same_content(theirs, mine, batch.namespace):
                # Both made the same version (a store and its imported copy, or the same delete on
                # both): nothing was lost, so nothing to report or keep; the merged stamp makes
                # later syncs see one version.
                outcome.unchanged += 1
                ops.append(stamp_op(ns, mine.memory_id, merged.stamp, merged.deleted, merged.ancestry, merged.origin,
                                    expect=mine.stamp.stamp))
                continue
            outcome.conflicts.append(Conflict(batch.namespace, theirs.memory_id, "remote" if won else "local",
                                              winner.stamp.deleted, loser.stamp.deleted, winner.stamp.stamp,
                                              loser.stamp.stamp))
            ops.append(self._history_op(ns, loser, merged.stamp))
            writes.append((winner, mine, merged, True))
        taken = self._taken_ids(ns, [(source, mine) for source, mine, _, _ in writes], outcome)
        writes = [w for w in writes if w[0].memory_id in taken]
        outcome.taken += len(writes)
        more, commit = self._write_ops(batch, ns, writes)
        return ops + more, commit

    def _same_content(self, theirs: StoredVersion, mine: StoredVersion, namespace: str) -> bool:
        """Whether two versions say the same: both deletes, or the same text, metadata, kind,
        importance, times, version and expiry (statistics aside; sealed ones opened to compare)."""
        if theirs.stamp.deleted or mine.stamp is None or mine.stamp.deleted:
            return theirs.stamp.deleted and mine.stamp is not None and mine.stamp.deleted
        if not (theirs.live and mine.live):
            return False

        def said(stored: StoredVersion) -> tuple[Any, ...]:
            assert stored.record is not None and stored.row is not None
            record = unpack_record(stored.record, self._sealer)
            row = unpack_row(row_key(0, stored.memory_id), stored.row)
            return (record.text, record.metadata, row[0], row[1], row[2], row[3], row[8], row[9], row[10])

        try:
            return said(theirs) == said(mine)
        except EncryptionRequiredError:
            return False

    def _taken_ids(self, ns: int, pairs: list[tuple[StoredVersion, StoredVersion]], outcome: Applied) -> set[str]:
        """Ids that may be written: not held here by a memory of another namespace (ids are
        store-wide; such a version is refused and reported)."""
        new = [source.memory_id for source, mine in pairs if mine.row is None and not source.stamp.deleted]
        elsewhere: set[str] = set()
        if new:
            try:
                elsewhere = {memory_id for memory_id, record in zip(new, self.cold.get_many(new)) if record is not None}
            except EncryptionRequiredError:  # a sealed record among them (held, so taken): one by one
                elsewhere = {memory_id for memory_id in new if self._held(memory_id)}
        outcome.refused.extend(sorted(elsewhere))
        return {source.memory_id for source, _ in pairs} - elsewhere

    def _held(self, memory_id: str) -> bool:
        try:
            return self.cold.get(memory_id) is not None
        except EncryptionRequiredError:
            return True

    def _write_ops(self, batch: ChangeBatch, ns: int, writes: list[_Write]) -> tuple[list[Op], Callable[[], None]]:
        cold = self.cold
        ops: list[Op] = []
        inserts: list[_Version] = []
        replaces: list[tuple[_Version, bool]] = []  # (version, its vector changed)
        deletes: list[str] = []
        old_texts: dict[str, str | None] = {}
        for source, mine, stamp, merged in writes:
            memory_id = source.memory_id
            old_texts[memory_id] = self._plain_text(mine, batch.namespace)
            if stamp.deleted:
                if mine.row is not None:
                    deletes.append(memory_id)
            else:
                from_here = source is mine
                version = self._version(source, mine, batch, from_here=from_here)
                if merged:
                    version.memory = version.memory._replace(version=self._merged_version(source, mine))
                if mine.row is None:
                    inserts.append(version)
                else:
                    replaces.append((version, not from_here))
            ops.append(stamp_op(ns, memory_id, stamp.stamp, stamp.deleted, stamp.ancestry, stamp.origin,
                                expect=None if mine.stamp is None else mine.stamp.stamp))
        received = inserts + [v for v, changed in replaces if changed]
        if received:
            stacked = np.stack([v.vector for v in received])
            self._calibrate(stacked)
            topics = self._topics(batch.namespace, ns, stacked)
            if topics is not None:
                for version, topic in zip(received, topics):
                    version.memory = version.memory._replace(topic=topic)
        quantizer_agrees = self._quantizer_agrees(batch)
        if inserts:
            codes = self._codes(inserts, quantizer_agrees)
            ops += cold.memory_ops(ns, [v.memory for v in inserts], codes, np.stack([v.vector for v in inserts]))
        for version, changed in replaces:
            ops += cold.record_ops([version.memory])
            if changed:
                code = self._codes([version], quantizer_agrees)[0]
                ops += cold.vector_ops(ns, version.memory, code, version.vector)
            ops += cold.row_ops(ns, [version.memory.id], [memory_row(version.memory)])
        if replaces:
            ops.append(cold.count_op(ns, 0))  # the namespace's memories changed: saved graphs are stale
        if deletes:
            ops += cold.delete_ops(ns, deletes)
        ops += self._text_ops(ns, old_texts, inserts + [v for v, _ in replaces])
        expiries = [v.memory.expires_at for v in inserts] + [v.memory.expires_at for v, _ in replaces]
        bound_ops, commit = self._expiry_bound_ops(ns, expiries) if expiries else ([], lambda: None)
        return ops + bound_ops, commit

    @staticmethod
    def _merged_version(source: StoredVersion, mine: StoredVersion) -> int:
        """max(both versions) + 1: above every version either store has had of the memory."""
        numbers = [unpack_row(row_key(0, stored.memory_id), stored.row)[8]
                   for stored in (source, mine) if stored.row is not None]
        return max(numbers, default=0) + 1

    def _version(self, source: StoredVersion, mine: StoredVersion, batch: ChangeBatch, from_here: bool) -> _Version:
        """A stored version (received, or this store's own) as a Memory and float vector.
        Statistics (uses, last access) stay this store's where it has them: they are local."""
        assert source.record is not None and source.row is not None and source.code is not None
        memory_id = source.memory_id
        record = unpack_record(source.record, self._sealer)
        memory = memory_of(record, unpack_row(row_key(0, memory_id), source.row))._replace(tier=Tier.WARM)
        if not from_here:
            # A namespace sealed here seals what arrives in it, as it seals what is added to it; the
            # topic is this store's model's (assigned in _write_ops).
            memory = memory._replace(sensitive=memory.sensitive or self._is_sealed(batch.namespace), topic=-1)
        if memory.sensitive and self._sealer is None:
            raise EncryptionRequiredError(f"memory {memory_id!r} of namespace {batch.namespace!r} is sealed: open both "
                                          "stores with the encryption key to sync sealed memories (the key stays on "
                                          "the devices; the memories travel sealed)")
        if record.namespace != batch.namespace:
            raise SyncError(f"memory {memory_id!r} came in a batch of namespace {batch.namespace!r} but belongs to "
                            f"{record.namespace!r}: the other store is damaged; nothing of the batch was applied")
        if mine.row is not None and not from_here:
            local = unpack_row(row_key(0, memory_id), mine.row)
            memory = memory._replace(last_accessed=local[4], access_count=local[5])
        if from_here:
            return _Version(memory, None, None)
        vector, code = self._received_vector(source, batch)
        return _Version(memory, vector, code)

    def _received_vector(self, source: StoredVersion, batch: ChangeBatch) -> tuple[np.ndarray, np.ndarray]:
        memory_id = source.memory_id
        assert source.code is not None
        code = np.frombuffer(self.cold.opened_vector(memory_id, "code", source.code, self.dimension,
                                                     row_key(batch.ns_id, memory_id)), dtype=np.int8)
        if batch.originals != "none" and source.original is not None:
            dtype = _DTYPES[batch.originals]
            plain = self.cold.opened_vector(memory_id, "original", source.original,
                                            self.dimension * np.dtype(dtype).itemsize)
            vector = np.frombuffer(plain, dtype=dtype).astype(np.float32)
        else:
            vector = self._sender_quantizer(batch).decode(code.reshape(1, -1))[0]
        return vector, code

    def _sender_quantizer(self, batch: ChangeBatch) -> Quantizer:
        state = msgpack.unpackb(batch.quantizer, raw=False, strict_map_key=False) if batch.quantizer else None
        if isinstance(state, dict) and "sealed" in state:
            if self._sealer is None:
                raise EncryptionRequiredError("the other store keeps its int8 ranges sealed: open this store with the "
                                              "encryption key to sync with it")
            state = msgpack.unpackb(self._sealer.open(state["sealed"], b"quantizer"), raw=False)
        if state is None:
            raise SyncError("a batch of changes without the int8 ranges its codes were made with; nothing of it "
                            "was applied: sync again")
        return quantizer_from_state(state)

    def _quantizer_agrees(self, batch: ChangeBatch) -> bool:
        try:
            return self._sender_quantizer(batch).state() == self.cold.quantizer.state()
        except SyncError:
            return False

    def _codes(self, versions: list[_Version], quantizer_agrees: bool) -> np.ndarray:
        if quantizer_agrees and all(v.code is not None for v in versions):
            return np.stack([v.code for v in versions])  # as the sender made them: bit for bit
        return self.cold.quantizer.encode(np.stack([v.vector for v in versions]))

    def _plain_text(self, stored: StoredVersion, namespace: str) -> str | None:
        """The text of a stored unsealed memory (what its dedup key is made from), else None."""
        if stored.record is None or stored.row is None or unpack_row(row_key(0, stored.memory_id), stored.row)[9]:
            return None
        return unpack_record(stored.record, None).text

    def _text_ops(self, ns: int, old_texts: dict[str, str | None], written: Iterable[_Version]) -> list[Op]:
        """Keep the dedup index naming each unsealed text's memory: keys of texts a memory no
        longer has are dropped (if they name it), keys of new texts added where free."""
        new_texts = {v.memory.id: v.memory.text for v in written if not v.memory.sensitive}
        ops: list[Op] = []
        pairs = []
        for memory_id, old in old_texts.items():
            new = new_texts.get(memory_id)
            old_key = None if old is None else text_key(ns, old)
            new_key = None if new is None else text_key(ns, new)
            if old_key != new_key:
                pairs.append((memory_id, old_key, new_key))
        keys = [key for _, old_key, new_key in pairs for key in (old_key, new_key)]
        holders = self.cold.find_texts(keys) if keys else []
        for i, (memory_id, old_key, new_key) in enumerate(pairs):
            if old_key is not None and holders[2 * i] == memory_id:
                ops.append(("texts", old_key, None))
            if new_key is not None and holders[2 * i + 1] is None:
                ops.append(("texts", new_key, memory_id.encode("utf-8")))
        return ops

    # -- history -------------------------------------------------------------------------------

    def _history_op(self, ns: int, loser: StoredVersion, lost_to: bytes) -> Op:
        memory_id = loser.memory_id.encode("utf-8")
        assert loser.stamp is not None
        key = _HISTORY + ns_prefix(ns) + _ID_LENGTH.pack(len(memory_id)) + memory_id + loser.stamp.stamp
        value = {"deleted": loser.stamp.deleted, "origin": loser.stamp.origin, "lost_to": lost_to,
                 "at": self._wall(), "record": loser.record if not loser.stamp.deleted else None,
                 "row": loser.row if not loser.stamp.deleted else None}
        return ("extra", key, msgpack.packb(value, use_bin_type=True))

    def history(self, namespace: str, memory_id: str) -> list[LostVersion]:
        """The versions of a memory that lost conflicts here, oldest first (sealed ones opened
        with this store's key)."""
        ns = self.cold.namespace_id(namespace)
        if ns is None:
            return []
        encoded = memory_id.encode("utf-8")
        prefix = _HISTORY + ns_prefix(ns) + _ID_LENGTH.pack(len(encoded)) + encoded
        out = []
        for key, value in self.cold.extra_items(prefix):
            stamp = key[len(prefix):]
            item = msgpack.unpackb(value, raw=False)
            memory = None
            if item["record"] is not None:
                memory = memory_of(unpack_record(item["record"], self._sealer),
                                   unpack_row(row_key(ns, memory_id), item["row"]))
            out.append(LostVersion(stamp, stamp_time(stamp), item["deleted"], memory, item["lost_to"], item["at"]))
        return sorted(out, key=lambda lost: lost.stamp)
