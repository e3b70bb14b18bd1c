"""What the parts of a store share: the one object :class:`~tiered_memory.engine.TieredMemory`
builds at open and hands to its searcher, tier manager and expiry.

Everything a part reads of another lives here, declared; anything else a part keeps is its own.
Fields other than ``ops``, ``maintenance_due``, ``closed`` and ``closing`` are set once at open (the objects they
name change, the fields do not), so a part may keep a reference to them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiered_memory.config import MemoryConfig
from tiered_memory.crypto import Sealer
from tiered_memory.errors import InvalidInputError, StoreClosedError
from tiered_memory.locks import RWLock
from tiered_memory.namespaces.catalog import Catalog
from tiered_memory.namespaces.registry import NamespaceRegistry
from tiered_memory.search.lexical_tier import LexicalTier
from tiered_memory.tiering.topics import TopicModel
from tiered_memory.tiers.cold_parts import ColdParts
from tiered_memory.tiers.cold_store import ColdStore
from tiered_memory.tiers.hot import HotTier
from tiered_memory.tiers.warm import WarmTier


def _tiers() -> dict[str, int]:
    return {"hot": 0, "warm": 0, "cold": 0}


@dataclass(eq=False)
class Traffic:
    """Lookups and moves between tiers since the store was opened (StoreStats reports them).
    Updated under ``StoreParts.mutex``."""

    hits: dict[str, int] = field(default_factory=_tiers)
    misses: dict[str, int] = field(default_factory=_tiers)
    promotions: dict[str, int] = field(default_factory=lambda: {"cold->warm": 0, "warm->hot": 0})
    demotions: dict[str, int] = field(default_factory=lambda: {"hot->warm": 0, "warm->cold": 0})


@dataclass(eq=False, slots=True)  # slots: the hot get reads and bumps `ops` on every call
class StoreParts:
    """The state the store's parts share. Locks: ``rw`` (readers-writer) guards the indexes and
    the cold map; ``mutex`` the hot LRU, the catalog's counters and ``traffic``; ``rw`` first."""

    path: Path
    config: MemoryConfig
    clock: Callable[[], float]
    read_only: bool
    dimension: int
    cold: ColdStore
    shared_cold: bool  # other processes may write the cold store: loaded namespaces are checked on use
    sealer: Sealer | None
    sealed_namespaces: set[str]  # every memory added to these is sealed at rest
    catalog: Catalog
    registry: NamespaceRegistry
    hot: HotTier
    warm: WarmTier
    lexical: LexicalTier
    cold_parts: ColdParts
    rw: RWLock
    mutex: threading.Lock
    traffic: Traffic
    topics: dict[str, TopicModel] = field(default_factory=dict)
    topics_dirty: set[str] = field(default_factory=set)  # topic models changed since they were written
    ops: int = 0  # operations since the last maintenance (under `mutex`)
    # The background thread has been asked to maintain and has not yet begun: the hot get then
    # does not ask again on every call (the tier manager sets and clears it).
    maintenance_due: bool = False
    closed: bool = True  # until the store is open
    closing: bool = False  # close() has begun: writes are refused

    def check_open(self) -> None:
        if self.closed:
            raise StoreClosedError(f"the store at {self.path} is closed; open a new TieredMemory to continue")

    def check_writable(self) -> None:
        self.check_open()
        if self.closing:
            raise StoreClosedError(f"the store at {self.path} is closing; open a new TieredMemory to write")
        if self.read_only:
            raise InvalidInputError(f"{self.path} is open read-only; open it without read_only=True to write")

    def decoded(self, slots: Sequence[int]) -> np.ndarray:
        """The float vectors of these slots, decoded from their int8 codes."""
        return self.cold.quantizer.decode(self.catalog.blocks.codes(slots))
