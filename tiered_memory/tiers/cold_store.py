"""The cold store's contract: what the engine asks of the store that is its source of truth.

Two stores keep it: :class:`~tiered_memory.tiers.cold.ColdTier` (LMDB, one directory, one process
writing) and :class:`~tiered_memory.tiers.pg_cold.PostgresColdStore` (PostgreSQL, shared). The engine,
its tier manager, search and the features layered on it (agents, conversations, extra stores)
call exactly the members listed here; ``tests/test_cold_store_contract.py`` runs one test class
against every store.

Keys and values are the LMDB layout (store schema 3, :mod:`tiered_memory.tiers.cold`): writes are lists
of ``(database, key, value)`` op tuples, most built by the store's own builders (shared in
:class:`~tiered_memory.tiers.cold_ops.ColdOps`), a few by the engine (``texts`` dedup keys, ``rows``,
``extra`` records). Databases: ``records``, ``rows``, ``nscodes``, ``originals``, ``texts``,
``meta``, ``extra``, and the pseudo-databases ``nscount`` of :meth:`ColdStore.count_op` and
``stamps`` of :func:`~tiered_memory.tiers.cold_ops.stamp_op` (change stamps for offline sync: the
store numbers each stamp with its namespace's next change number inside the write).

Common rules:

- Every write is atomic and durable: all of its ops or none, committed before ``write`` returns;
  an op that fails (an unknown namespace in a count op, a full disk, a lost connection) leaves the
  store as it was and raises :class:`~tiered_memory.errors.StorageError`.
- A read sees committed writes only, each read one consistent snapshot.
- Values are bytes the store never interprets beyond what is documented here: sealed (encrypted)
  values arrive sealed and leave sealed, except where a read decodes records or vectors with the
  store's ``sealer``.
- A damaged value is reported as ``StorageError`` naming the memory; a sealed value read without
  a key as :class:`~tiered_memory.errors.EncryptionRequiredError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from tiered_memory.crypto import Sealer
    from tiered_memory.quantization import Quantizer
    from tiered_memory.records import Memory
    from tiered_memory.tiers.cold_ops import NamespaceRows, Op, StoredVersion


@runtime_checkable
class ColdStore(Protocol):
    """The members of a cold store the engine calls (attributes first, then methods)."""

    # The store-wide quantizer: loaded by use_dimension(), replaced by the engine after a
    # re-calibration (together with recode_all() and a write of quantizer_op()).
    quantizer: Quantizer
    # Set by the engine before any read that decodes: seals sensitive values in the op builders,
    # opens them in get/get_many/fetch/originals/vector/load_namespace.
    sealer: Sealer | None
    # np.float16, np.float32, or None when float originals are not kept (MemoryConfig.keep_originals).
    originals_dtype: Any

    # -- opening and closing ---------------------------------------------------------------

    def use_dimension(self, dimension: int) -> None:
        """Fix the vector dimension and load the stored quantizer (a new one if none is stored).
        A sealed quantizer without a sealer: EncryptionRequiredError."""
        ...

    def schema(self) -> int:
        """The layout's store schema (3; 2 for an LMDB store written before namespaces loaded lazily)."""
        ...

    def migrate_from_schema_2(self) -> int:
        """Bring a schema-2 store to schema 3 in one transaction; returns how many memories moved.
        Called only when schema() < 3."""
        ...

    def close(self) -> None:
        """Release the store's resources (files, connections). The engine calls it once, at close."""
        ...

    # -- writing ---------------------------------------------------------------------------

    def write(self, ops: Iterable[Op], grow: bool = True) -> int:
        """Apply the ops, in order, as one transaction committed before returning; returns the
        store's new generation (increases with every write). A put replaces, a value of None
        deletes (deleting an absent key is no error). All or nothing: an op that fails raises
        StorageError and nothing of the call is stored. grow=False: an LMDB writer holding only
        the engine's shared lock must not grow the map (it raises lmdb.MapFullError instead);
        other stores ignore it. A shared store refuses (StorageError, nothing written) codes made
        with a quantizer another writer has since replaced, and loads the new one: retry the call."""
        ...

    @staticmethod
    def count_op(ns_id: int, delta: int) -> Op:
        """An op adding delta to a namespace's memory count and bumping its generation (delta 0:
        only the bump, "this namespace's vectors changed"). The namespace must exist (else the
        whole write fails). The delta must equal the memories the same write adds or deletes."""
        ...

    def memory_ops(self, ns_id: int, memories: list[Memory], codes: np.ndarray,
                   originals: np.ndarray | None) -> list[Op]:
        """Puts of whole new memories of one namespace: record, catalog row, code, original (if
        kept), and the count op; sensitive memories' values sealed."""
        ...

    def vector_ops(self, ns_id: int, memory: Memory, code: np.ndarray, original: np.ndarray | None) -> list[Op]:
        """Puts of a changed memory's code and original."""
        ...

    def record_ops(self, memories: Iterable[Memory]) -> list[Op]:
        """Puts of memories' records (text, metadata; sealed when sensitive)."""
        ...

    def row_ops(self, ns_id: int, memory_ids: Iterable[str], rows: Iterable[bytes]) -> list[Op]:
        """Puts of catalog rows only (statistics flushes)."""
        ...

    def delete_ops(self, ns_id: int, memory_ids: list[str]) -> list[Op]:
        """Deletes of memories (record, row, code, original) and the count op."""
        ...

    def meta_op(self, name: str, value: Any) -> Op:
        """A put of a store-level value (msgpack-able)."""
        ...

    def quantizer_op(self) -> Op:
        """A put of the quantizer's state, sealed when the store has a sealer."""
        ...

    def recode_all(self, encode: Callable[[np.ndarray], np.ndarray],
                   decode_old: Callable[[np.ndarray], np.ndarray], then: Iterable[Op] = ()) -> None:
        """Re-encode every stored code (re-calibration) in one transaction: from the original when
        kept, else from the old code decoded with decode_old; sealed codes stay sealed. The puts
        in `then` (the new quantizer's state) commit in the same transaction. A shared store whose
        quantizer another writer changed meanwhile raises StorageError and changes nothing."""
        ...

    # -- namespaces --------------------------------------------------------------------------

    def namespace_id(self, name: str, create: bool = False) -> int | None:
        """The namespace's fixed id (never changes once given); None if absent and not create.
        create=True makes the namespace durably (count 0, generation 0) before returning."""
        ...

    def namespace_info(self, ns_id: int) -> tuple[str, int, int]:
        """(name, memory count, generation) of a namespace; an unknown id is StorageError. A shared
        store gives the generation of the copy this process loaded, if it loaded one (what its
        saved warm graph may be stamped with); the count is always the store's."""
        ...

    def namespace_counts(self) -> list[tuple[str, int]]:
        """(name, memory count) of every namespace ever created (empty ones too), in id order."""
        ...

    def namespace_ids(self, ns_id: int) -> list[str]:
        """Ids of a namespace's memories, in key order (UTF-8 byte order of the ids)."""
        ...

    def load_namespace(self, ns_id: int, count_hint: int = 0) -> NamespaceRows:
        """Every catalog row and (opened) code of one namespace, in key order: one range read.
        A row without its code is StorageError."""
        ...

    def find_texts(self, keys: list[bytes | None]) -> list[str | None]:
        """The memory id each dedup key (text_key: ns id + digest) names; None for no key or no match."""
        ...

    def exclusive(self, name: str) -> AbstractContextManager[None]:
        """``with store.exclusive(name):`` held by one process at a time among every process of the
        store (LMDB: one process writes anyway, so it holds nothing): agent hubs change their
        state under it."""
        ...

    # -- change stamps (offline sync, tiered_memory/sync) -------------------------------------

    def change_seqs(self) -> dict[int, int]:
        """ns id -> the number of its latest change (stamp op), for every namespace that has one.
        Numbers are per namespace, in commit order (writers of a namespace serialise), from 1."""
        ...

    def changes_after(self, ns_id: int, after: int, limit: int) -> list[StoredVersion]:
        """The memories of a namespace whose latest change is numbered after `after`, in change
        order, at most `limit`: stamp rows and stored bytes (sealed stay sealed), one snapshot."""
        ...

    def stored_versions(self, ns_id: int, memory_ids: list[str]) -> list[StoredVersion]:
        """Stamp rows and stored bytes of these memories (in order; stamp None: never stamped),
        from one snapshot."""
        ...

    # -- expiry (tiered_memory/tiering/expiry.py) ------------------------------------------------------

    def expired_rows(self, ns_id: int, now: float) -> tuple[list[str], list[bool], float]:
        """One range read of a namespace's catalog rows (no code read, nothing decrypted): ids and
        sensitive flags of the memories whose expiry is at or before `now`, in key order, and the
        earliest expiry of the others (math.inf: none expires)."""
        ...

    def row_expires_at(self, ns_id: int, memory_id: str) -> float:
        """The expiry in a memory's catalog row (math.inf: never, or no such row)."""
        ...

    def expiry_bounds(self) -> dict[int, float]:
        """ns id -> the lower bound on its memories' expiries written by expiry_bound_op, for every
        namespace that has one. A damaged entry is StorageError."""
        ...

    @staticmethod
    def expiry_bound_op(ns_id: int, bound: float) -> Op:
        """A put of a namespace's expiry bound (math.inf: its delete)."""
        ...

    # -- reading -----------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        """The stored record (statistics as of its last record write), or None."""
        ...

    def get_many(self, memory_ids: Iterable[str]) -> list[Memory | None]:
        """get() of each id, in order, from one snapshot."""
        ...

    def fetch(self, memory_ids: list[str], originals: bool) -> list[tuple[Memory | None, np.ndarray | None]]:
        """(record, float32 original or None) of each id, from one snapshot."""
        ...

    def originals(self, memory_ids: list[str]) -> np.ndarray | None:
        """Float32 originals of these ids, or None if not kept or any one is missing."""
        ...

    def vector(self, memory_id: str) -> np.ndarray | None:
        """The best float vector kept: the original, else the decoded code; None if unknown."""
        ...

    def meta_get(self, name: str, default: Any = None) -> Any:
        """A store-level value written by meta_op, or default. Unreadable: StorageError."""
        ...

    def extra_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of the ``extra`` entries whose key starts with prefix, in byte order of keys."""
        ...

    def ids(self) -> Iterator[str]:
        """Every memory id, in key order."""
        ...

    def __len__(self) -> int:
        """How many memories the store holds."""
        ...

    def nbytes(self) -> int:
        """Bytes the store occupies on its storage (files, tables and indexes)."""
        ...


@runtime_checkable
class SharedColdStore(ColdStore, Protocol):
    """A cold store several processes write to at once (PostgreSQL; LMDB admits one writer).

    The engine then checks, on each use of a loaded namespace, whether another process changed
    it, and reloads it if so (its RAM copy: catalog rows, codes, graph, hot entries)."""

    def changed_elsewhere(self, ns_ids: list[int]) -> list[int]:
        """Those of these namespaces, loaded through this store, that another writer changed
        since this process loaded them (its own writes do not count). Cheap: one indexed read."""
        ...

    def text_claim_op(self, key: bytes, memory_id: str, holder: str | None) -> Op:
        """A put of the dedup entry ``key -> memory_id`` for a deduplicating add that found the
        entry naming `holder` (None: no entry): the whole write is refused
        (ConcurrentUpdateError) if the entry names another stored memory by then."""
        ...

    def changes_since_loaded(self, ns_id: int, limit: int) -> tuple[list[StoredVersion], Any] | None:
        """The memories another writer changed (stamped) since this process's copy of a namespace
        (stored bytes; not live: deleted), and the state to mark the copy with once it has applied
        them (:meth:`refreshed`), one snapshot; None when the copy must be reloaded instead (never
        loaded, more than `limit` changes, codes re-calibrated since)."""
        ...

    def refreshed(self, ns_id: int, state: Any) -> None:
        """The copy of a namespace now holds the changes changes_since_loaded gave with `state`."""
        ...

    def listen(self, callback: Callable[[list[int] | None], None]) -> None:
        """Call ``callback(ns_ids)`` (from a thread of the store) soon after another writer commits
        a change to those namespaces (None: any of them): a hint to drop stale copies early, never
        what a use relies on (changed_elsewhere is)."""
        ...
