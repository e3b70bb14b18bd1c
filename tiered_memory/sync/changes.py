"""The change stamps an engine writes with every add, update and delete (see cold_ops.stamp_op)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from tiered_memory.sync.clock import HybridClock
from tiered_memory.tiers.cold_ops import Op, stamp_op
from tiered_memory.tiers.cold_store import ColdStore

STORE_ID = "store_id"  # meta: 8 random bytes naming this store among the stores it syncs with


def store_id_of(cold: ColdStore, read_only: bool) -> bytes:
    """The store's id, made on its first read-write open (a shared store: whichever process wrote
    it first; the others read that one back)."""
    found = cold.meta_get(STORE_ID)
    if isinstance(found, bytes) and len(found) == 8:
        return found
    if read_only:
        return b"\x00" * 8  # a store never opened for writing by this version: it has made no change
    cold.write([cold.meta_op(STORE_ID, secrets.token_bytes(8))])
    return cold.meta_get(STORE_ID)


class ChangeRecorder:
    """Stamp ops for the memories a write changes: committed in the same transaction, they are the
    store's change log (what a sync sends)."""

    def __init__(self, clock: HybridClock, store_id: bytes) -> None:
        self.clock = clock
        self.store_id = store_id

    def ops(self, ns_id: int, memory_ids: Iterable[str], deleted: bool = False) -> list[Op]:
        return [stamp_op(ns_id, memory_id, self.clock.now(), deleted, None, self.store_id) for memory_id in memory_ids]
