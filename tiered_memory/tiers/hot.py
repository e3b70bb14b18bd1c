"""Hot tier: decoded records and their float vectors in an in-process LRU.

The LRU is an ``OrderedDict`` kept here rather than a cachetools ``LRUCache``: a hot ``get``
then costs two C calls (a lookup and ``move_to_end``) instead of two Python frames around them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

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


class HotTier:
    """Bounded in bytes (``budget_bytes``) and in entries (``capacity``); the least recently used
    entry leaves first, and ``on_evict`` hears of it (hot -> warm demotions).

    ``entries`` (id -> entry, least recently used first) is public for the store's hot ``get``,
    which looks an id up and calls ``entries.move_to_end(id)`` itself under the store's mutex;
    every change of membership goes through :meth:`put`, :meth:`discard` and :meth:`clear`, which
    keep the byte count."""

    name = "hot"

    def __init__(self, capacity: int, on_evict: Callable[[str, HotEntry], None] | None = None,
                 budget_bytes: int = 64 * 2**20) -> None:
        self.capacity = capacity
        self.budget_bytes = budget_bytes
        self._on_evict = on_evict
        self.entries: OrderedDict[str, HotEntry] = OrderedDict()
        self._bytes = 0

    def put(self, memory: Memory, vector: np.ndarray) -> bool:
        """Cache an entry (evicting others as needed); False if it alone exceeds the budget."""
        entry = HotEntry(memory, vector)
        size = entry_bytes(entry)
        if size > self.budget_bytes:
            self.discard(memory.id)
            return False  # larger than the whole budget: not cached
        entries = self.entries
        old = entries.pop(memory.id, None)  # a replacement, not an eviction: no hook
        if old is not None:
            self._bytes -= entry_bytes(old)
        while entries and (self._bytes + size > self.budget_bytes or len(entries) >= self.capacity):
            evicted_id, evicted = entries.popitem(last=False)
            self._bytes -= entry_bytes(evicted)
            if self._on_evict is not None:
                self._on_evict(evicted_id, evicted)
        entries[memory.id] = entry
        self._bytes += size
        return True

    def get(self, memory_id: str) -> HotEntry | None:
        """The entry, marked as most recently used; None if absent."""
        entry = self.entries.get(memory_id)
        if entry is not None:
            self.entries.move_to_end(memory_id)
        return entry

    def peek(self, memory_id: str) -> HotEntry | None:
        """The entry without changing its recency."""
        return self.entries.get(memory_id)

    def vector(self, memory_id: str) -> np.ndarray | None:
        entry = self.entries.get(memory_id)
        return None if entry is None else entry.vector

    def discard(self, memory_id: str) -> bool:
        entry = self.entries.pop(memory_id, None)
        if entry is None:
            return False
        self._bytes -= entry_bytes(entry)
        return True

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def ids(self) -> Iterator[str]:
        return iter(list(self.entries))

    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        self.entries.clear()
        self._bytes = 0
