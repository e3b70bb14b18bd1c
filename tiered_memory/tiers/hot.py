"""Hot tier: decoded records and their float vectors in an in-process LRU (cachetools)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
from cachetools import Cache, LRUCache

from tiered_memory.records import Memory


class HotEntry(NamedTuple):
    memory: Memory  # content only; the catalog holds the live statistics
    vector: np.ndarray  # float32, unit length


def entry_bytes(entry: HotEntry) -> int:
    """Approximate RAM of one entry: the vector, the strings, the metadata's top level."""
    memory = entry.memory
    # len() stands in for sys.getsizeof (3x cheaper; exact for ASCII, low for wide text): this
    # runs on every promotion to hot. 49 + 49 + 64: str and dict headers.
    return entry.vector.nbytes + len(memory.text) + len(memory.id) + 49 * 2 + 64 + 200


class _CountingLRU(LRUCache):
    """An LRU bounded in bytes that reports the entries it evicts (hot -> warm demotions)."""

    def __init__(self, maxsize: int, on_evict: Callable[[str, HotEntry], None]) -> None:
        super().__init__(maxsize, getsizeof=entry_bytes)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, HotEntry]:
        key, entry = super().popitem()
        self._on_evict(key, entry)
        return key, entry


class HotTier:
    """Bounded in bytes (``budget_bytes``) and in entries (``capacity``); the least recently used
    entry leaves first."""

    name = "hot"

    def __init__(self, capacity: int, on_evict: Callable[[str, HotEntry], None] | None = None,
                 budget_bytes: int = 64 * 2**20) -> None:
        self.capacity = capacity
        self.budget_bytes = budget_bytes
        self._evicted_hook = on_evict
        self.cache = _CountingLRU(budget_bytes, self._evicted)
        self._bytes = 0

    def _evicted(self, memory_id: str, entry: HotEntry) -> None:
        self._bytes -= entry_bytes(entry)
        if self._evicted_hook is not None:
            self._evicted_hook(memory_id, entry)

    def put(self, memory: Memory, vector: np.ndarray) -> bool:
        """Cache an entry (evicting others as needed); False if it alone exceeds the budget."""
        old = self.cache.get(memory.id)
        if old is not None:
            self._bytes -= entry_bytes(old)
        entry = HotEntry(memory, vector)
        size = entry_bytes(entry)
        if size > self.budget_bytes:
            self.discard(memory.id)
            return False  # larger than the whole budget (cachetools would raise): not cached
        self.cache[memory.id] = entry  # may evict the least recently used entries (bytes)
        self._bytes += size
        while len(self.cache) > self.capacity:
            self.cache.popitem()
        return True

    def get(self, memory_id: str) -> HotEntry | None:
        """The entry, marked as most recently used; None if absent."""
        try:
            return self.cache[memory_id]  # one lookup; Cache.get() would make two
        except KeyError:
            return None

    def peek(self, memory_id: str) -> HotEntry | None:
        """The entry without changing its recency."""
        if memory_id not in self.cache:
            return None
        return Cache.__getitem__(self.cache, memory_id)  # the base class does not touch LRU order

    def vector(self, memory_id: str) -> np.ndarray | None:
        entry = self.peek(memory_id)
        return None if entry is None else entry.vector

    def discard(self, memory_id: str) -> bool:
        entry = self.cache.pop(memory_id, None)
        if entry is None:
            return False
        self._bytes -= entry_bytes(entry)
        return True

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self.cache

    def __len__(self) -> int:
        return len(self.cache)

    def ids(self) -> Iterator[str]:
        return iter(list(self.cache.keys()))

    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        self.cache.clear()
        self._bytes = 0
