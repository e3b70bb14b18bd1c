"""A sync between two stores: pull the other's changes, push this one's, per namespace.

Each direction is a loop of batches (:meth:`SyncEndpoint.export` on the sender, :meth:`SyncEndpoint.apply`
on the receiver, which commits the batch and its cursor together); the receiver's cursor says
where the next batch starts, so a sync killed at any moment resumes after the last applied batch.
Namespaces whose latest change number is not past the receiver's cursor are not asked for: a sync
with nothing to do reads four small ranges (two lists of change numbers, two of cursors).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiered_memory.errors import ConfigError, IncompatibleStoresError, InvalidInputError, SyncError
from tiered_memory.records import check_label
from tiered_memory.sync.endpoint import Conflict, SyncEndpoint

if TYPE_CHECKING:
    from tiered_memory.engine import TieredMemory


@dataclass
class SyncReport:
    """What one sync moved. ``pushed``/``pulled``: versions applied on the remote / on this store
    (new, changed and deleted memories); ``unchanged``: versions a side already had (or older ones);
    ``conflicts``: memories both sides had changed (how each was resolved); ``refused``: ids the
    receiving side holds in another namespace (ids are store-wide), left as they are."""

    pushed: int = 0
    pulled: int = 0
    unchanged: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)  # the namespaces that had something to move
    batches: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    tombstones_dropped: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["conflicts"] = [{"namespace": c.namespace, "memory_id": c.memory_id, "winner": c.winner,
                             "winner_deleted": c.winner_deleted, "loser_deleted": c.loser_deleted}
                            for c in self.conflicts]
        return out


def sync_stores(local: SyncEndpoint, remote: SyncEndpoint, namespaces: Sequence[str] | None = None,
                batch_size: int = 1_000) -> SyncReport:
    """Pull `remote`'s changes into `local`, then push `local`'s (conflicts resolved as
    :mod:`tiered_memory.sync.merge` says), and drop tombstones both have seen."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
    if local.store_id == remote.store_id:
        raise SyncError("both stores have the same store id: one is a copy of the other's directory. Sync the copy's "
                        "memories into a fresh store (export/import), which gets its own id")
    local.check_compatible(remote.encoder, remote.dimension)
    wanted = None if namespaces is None else [check_label(name, "namespace") for name in namespaces]
    started = time.perf_counter()
    report = SyncReport()
    local.backfill()
    remote.backfill()
    touched: set[str] = set()
    for sender, receiver, pulling in ((remote, local, True), (local, remote, False)):
        cursors = receiver.cursors(sender.store_id)
        due = {name: seq for name, seq in sender.change_seqs().items()
               if seq > cursors.get(name, 0) and (wanted is None or name in wanted)}
        for name in sorted(due):
            touched.add(name)
            cursor = cursors.get(name, 0)
            while True:
                data = sender.export(name, cursor, batch_size, skip_origin=receiver.store_id)
                applied = receiver.apply(data)
                report.batches += 1
                if pulling:
                    report.bytes_received += len(data)
                    report.pulled += applied.taken
                else:
                    report.bytes_sent += len(data)
                    report.pushed += applied.taken
                report.unchanged += applied.unchanged
                report.conflicts += applied.conflicts
                report.refused += applied.refused
                cursor = applied.upto
                if not applied.more:
                    break
            cursors[name] = cursor
        sender.acknowledge(receiver.store_id, cursors)
    for endpoint in (local, remote):
        report.tombstones_dropped += endpoint.collect_due_tombstones()
    report.namespaces = sorted(touched)
    report.seconds = time.perf_counter() - started
    return report


def sync_with(engine: TieredMemory, remote: TieredMemory | str | os.PathLike[str], *,
              namespaces: Sequence[str] | None = None, batch_size: int = 1_000,
              encryption_key: bytes | None = None) -> SyncReport:
    """:meth:`TieredMemory.sync`: `remote` an open store, a directory or a PostgreSQL DSN."""
    from tiered_memory.engine import TieredMemory

    engine.check_writable()
    if isinstance(remote, TieredMemory):
        if remote is engine:
            raise SyncError("a store cannot sync with itself")
        return sync_stores(engine.sync_endpoint, remote.sync_endpoint, namespaces, batch_size)
    if not isinstance(remote, (str, os.PathLike)):
        raise InvalidInputError(f"remote must be a TieredMemory, a store directory or a postgresql:// DSN, got "
                                f"{type(remote).__name__}")
    with open_remote(engine, remote, encryption_key) as other:
        return sync_stores(engine.sync_endpoint, other.sync_endpoint, namespaces, batch_size)


class open_remote:
    """The remote store of a sync by path or DSN, opened with this engine's encoder and
    dimension (a fresh directory becomes a store of the same vector space), closed after."""

    def __init__(self, engine: TieredMemory, remote: str | os.PathLike[str], encryption_key: bytes | None) -> None:
        self.engine, self.remote, self.key = engine, remote, encryption_key
        self._cache: tempfile.TemporaryDirectory[str] | None = None
        self.store: TieredMemory | None = None

    def __enter__(self) -> TieredMemory:
        from tiered_memory.engine import TieredMemory

        engine, remote = self.engine, self.remote
        options: dict[str, Any] = {"encoder": engine.encoder, "dimension": engine.dimension,
                                   "encryption_key": self.key, "config": engine.config}
        try:
            if isinstance(remote, str) and remote.startswith(("postgresql://", "postgres://")):
                from tiered_memory.tiers.pg_cold import postgres_cold

                self._cache = tempfile.TemporaryDirectory(prefix="tiered-memory-sync-")
                self.store = TieredMemory(self._cache.name, cold=postgres_cold(remote), **options)
            else:
                if Path(remote).resolve() == engine.path.resolve():
                    raise SyncError("a store cannot sync with itself")
                self.store = TieredMemory(remote, **options)
        except ConfigError as err:
            self._cleanup()
            raise IncompatibleStoresError(f"the remote store cannot sync with this one: {err}") from err
        except BaseException:
            self._cleanup()
            raise
        return self.store

    def __exit__(self, *exc: object) -> None:
        if self.store is not None:
            self.store.close()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._cache is not None:
            self._cache.cleanup()
            self._cache = None
