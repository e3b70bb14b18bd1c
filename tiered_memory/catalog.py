"""The catalog: what the engine knows about every memory without reading the cold tier.

One row ("slot") per memory: namespace, kind, importance, timestamps, use count, tier, topic;
its int8 code sits in :class:`~tiered_memory.blocks.CodeBlocks`. Scalar columns are
``array.array``s, not numpy arrays: a single-element update costs 0.2 us instead of 0.5 us
(measured), and one runs on every ``get``; decay scoring copies them into numpy at once.
"""

from __future__ import annotations

import array
from collections import defaultdict

import numpy as np

from .blocks import CodeBlocks
from .records import TIER_CODES, TIERS_BY_CODE, Memory, Tier

COLD, WARM, HOT = TIER_CODES[Tier.COLD], TIER_CODES[Tier.WARM], TIER_CODES[Tier.HOT]


class Interner:
    """Strings <-> small ints, so per-row columns hold ints."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, name: str) -> int:
        code = self.codes.get(name)
        if code is None:
            code = self.codes[name] = len(self.names)
            self.names.append(name)
        return code


class Catalog:
    """Columns of per-memory state, addressed by slot; slots of deleted memories are reused."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self.namespaces = Interner()
        self.kinds = Interner()
        self.ids: list[str | None] = []
        self.slot_of: dict[str, int] = {}
        self.ns = array.array("i")
        self.kind = array.array("i")
        self.importance = array.array("d")
        self.created = array.array("d")
        self.updated = array.array("d")
        self.accessed = array.array("d")
        self.uses = array.array("q")
        self.topic = array.array("i")
        self.tier = array.array("b")
        self.version = array.array("q")
        self.sensitive = array.array("b")  # 1: sealed at rest
        self.blocks = CodeBlocks(dimension)
        self._free: list[int] = []
        self.count_by_ns: dict[int, int] = defaultdict(int)
        self.count_by_kind: dict[tuple[int, int], int] = defaultdict(int)  # (namespace, kind) -> memories
        self.dirty: set[int] = set()  # slots whose record changed in RAM since the last flush to cold
        self.tier_counts = [0, 0, 0]  # memories per tier code (COLD, WARM, HOT)

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self.slot_of

    def _columns(self) -> tuple[array.array, ...]:
        return (self.ns, self.kind, self.importance, self.created, self.updated, self.accessed, self.uses,
                self.topic, self.tier, self.version, self.sensitive)

    def insert(self, memory: Memory, code: np.ndarray) -> int:
        """Add a row for a new memory; returns its slot."""
        ns = self.namespaces.code(memory.namespace)
        kind = self.kinds.code(memory.kind)
        tier = TIER_CODES[memory.tier]
        values = (ns, kind, memory.importance, memory.created_at, memory.updated_at, memory.last_accessed,
                  memory.access_count, memory.topic, tier, memory.version, int(memory.sensitive))
        if self._free:
            slot = self._free.pop()
            self.ids[slot] = memory.id
            for column, value in zip(self._columns(), values):
                column[slot] = value
        else:
            slot = len(self.ids)
            self.ids.append(memory.id)
            for column, value in zip(self._columns(), values):
                column.append(value)
        self.slot_of[memory.id] = slot
        self.tier_counts[tier] += 1
        self.count_by_ns[ns] += 1
        self.count_by_kind[ns, kind] += 1
        self.blocks.add(slot, (ns, memory.topic, tier == COLD), code)
        return slot

    def load(self, memories: list[Memory], codes: np.ndarray) -> None:
        """Fill an empty catalog at open: column extends and one block write per block (the
        row-at-a-time insert() would cost ~10 us per memory, a second per 100k)."""
        if self.slot_of:
            raise ValueError("Catalog.load() fills an empty catalog")
        ns_codes = [self.namespaces.code(m.namespace) for m in memories]
        kind_codes = [self.kinds.code(m.kind) for m in memories]
        tiers = [TIER_CODES[m.tier] for m in memories]
        self.ids.extend(m.id for m in memories)
        self.slot_of.update((m.id, slot) for slot, m in enumerate(memories))
        self.ns.extend(ns_codes)
        self.kind.extend(kind_codes)
        self.importance.extend(m.importance for m in memories)
        self.created.extend(m.created_at for m in memories)
        self.updated.extend(m.updated_at for m in memories)
        self.accessed.extend(m.last_accessed for m in memories)
        self.uses.extend(m.access_count for m in memories)
        self.topic.extend(m.topic for m in memories)
        self.tier.extend(tiers)
        self.version.extend(m.version for m in memories)
        self.sensitive.extend(int(m.sensitive) for m in memories)
        for ns, kind, tier in zip(ns_codes, kind_codes, tiers):
            self.count_by_ns[ns] += 1
            self.count_by_kind[ns, kind] += 1
            self.tier_counts[tier] += 1
        keys = [(ns, m.topic, tier == COLD) for ns, m, tier in zip(ns_codes, memories, tiers)]
        self.blocks.add_many(list(range(len(memories))), keys, codes)

    def remove(self, memory_id: str) -> int:
        slot = self.slot_of.pop(memory_id)
        self.blocks.remove(slot)
        self.tier_counts[self.tier[slot]] -= 1
        self.count_by_ns[self.ns[slot]] -= 1
        self.count_by_kind[self.ns[slot], self.kind[slot]] -= 1
        self.ids[slot] = None
        self.dirty.discard(slot)
        self._free.append(slot)
        return slot

    def set_tier(self, slot: int, tier: int) -> None:
        if self.tier[slot] == tier:
            return
        if (self.tier[slot] == COLD) != (tier == COLD):
            self.blocks.move(slot, (self.ns[slot], self.topic[slot], tier == COLD))
        self.tier_counts[self.tier[slot]] -= 1
        self.tier_counts[tier] += 1
        self.tier[slot] = tier
        self.dirty.add(slot)

    def set_topic(self, slot: int, topic: int) -> None:
        if self.topic[slot] == topic:
            return
        self.blocks.move(slot, (self.ns[slot], topic, self.tier[slot] == COLD))
        self.topic[slot] = topic
        self.dirty.add(slot)

    def set_kind(self, slot: int, kind: str) -> None:
        ns = self.ns[slot]
        self.count_by_kind[ns, self.kind[slot]] -= 1
        self.kind[slot] = self.kinds.code(kind)
        self.count_by_kind[ns, self.kind[slot]] += 1

    def set_code(self, slot: int, code: np.ndarray) -> None:
        key = self.blocks.key_of(slot)
        self.blocks.remove(slot)
        self.blocks.add(slot, key, code)

    @property
    def warm_count(self) -> int:
        """Memories in the warm tier, hot ones included (hot is a subset of warm)."""
        return self.tier_counts[WARM] + self.tier_counts[HOT]

    def touch(self, slot: int, now: float) -> None:
        """Record one use; runs on every get and every search hit."""
        self.uses[slot] += 1
        self.accessed[slot] = now
        self.dirty.add(slot)

    def slots(self, namespace: int | None = None, tiers: tuple[int, ...] | None = None) -> np.ndarray:
        """Live slots, optionally of one namespace and some tiers (int64 array)."""
        slots = np.fromiter(self.slot_of.values(), dtype=np.int64, count=len(self.slot_of))
        if namespace is not None and len(slots):
            slots = slots[np.asarray(self.ns)[slots] == namespace]
        if tiers is not None and len(slots):
            slots = slots[np.isin(np.asarray(self.tier)[slots], tiers)]
        return slots

    def tier_of(self, slot: int) -> Tier:
        return TIERS_BY_CODE[self.tier[slot]]

    def memory(self, slot: int, content: Memory) -> Memory:
        """A fresh Memory for a caller: content from a cached or cold record, statistics from here."""
        return Memory(
            content.id, content.namespace, content.text, content.kind, dict(content.metadata),
            self.created[slot], self.updated[slot], self.accessed[slot], self.uses[slot],
            self.importance[slot], self.topic[slot], TIERS_BY_CODE[self.tier[slot]], self.version[slot],
            content.sensitive,
        )
