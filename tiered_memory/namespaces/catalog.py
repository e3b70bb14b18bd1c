"""The catalog: what the engine knows about the memories of loaded namespaces.

Only namespaces in use are here (see :mod:`tiered_memory.namespaces.registry`): a namespace is loaded by
one range read of its rows and codes and unloaded when the warm budget needs room, so RAM
follows the working set, not the archive. Namespace codes are the namespaces' ids in the cold
tier. One row ("slot") per memory: namespace, kind, importance, timestamps, use count, tier, topic;
its int8 code sits in :class:`~tiered_memory.tiers.blocks.CodeBlocks`. Scalar columns are
``array.array``s, not numpy arrays: a single-element update costs 0.2 us instead of 0.5 us
(measured), and one runs on every ``get``; decay scoring copies them into numpy at once.
"""

from __future__ import annotations

import array
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tiered_memory.tiers.blocks import INDEXED, CodeBlocks

if TYPE_CHECKING:
    from tiered_memory.tiers.cold import NamespaceRows
from tiered_memory.records import TIER_CODES, TIERS_BY_CODE, Memory, Tier

COLD, WARM, HOT = TIER_CODES[Tier.COLD], TIER_CODES[Tier.WARM], TIER_CODES[Tier.HOT]


class Interner:
    """Strings <-> small ints, so per-row columns hold ints."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: dict[int, str] = {}

    def code(self, name: str) -> int:
        code = self.codes.get(name)
        if code is None:
            code = self.codes[name] = len(self.names)
            self.names[code] = name
        return code

    def assign(self, name: str, code: int) -> None:
        """Give a name a code chosen elsewhere (namespaces: their fixed-size id in the cold tier)."""
        self.codes[name] = code
        self.names[code] = name


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
        self.expires = array.array("d")  # expires_at, seconds since the epoch; math.inf: never
        # Slots with a finite expiry, per namespace; a namespace absent here pays nothing for expiry.
        self.expiring: dict[int, set[int]] = {}
        # ns -> [since, until, slots]: the slots expired at any time in [since, until), so that
        # searches between two expiries reuse one answer. Kept in step by every change below.
        self._expired: dict[int, list] = {}
        self.blocks = CodeBlocks(dimension)
        self._free: list[int] = []
        self.count_by_ns: dict[int, int] = defaultdict(int)
        self.slots_by_ns: dict[int, set[int]] = defaultdict(set)
        self.count_by_kind: dict[tuple[int, int], int] = defaultdict(int)  # (namespace, kind) -> memories
        self.dirty: set[int] = set()  # slots whose record changed in RAM since the last flush to cold
        # slot -> id of memories headed for the warm graph (background admission): cold in RAM until
        # then, stored as warm (row_bytes), so the next load's graph repair queues them again.
        self.admitting: dict[int, str] = {}
        self.tier_counts = [0, 0, 0]  # memories per tier code (COLD, WARM, HOT)

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self.slot_of

    def _columns(self) -> tuple[array.array, ...]:
        return (self.ns, self.kind, self.importance, self.created, self.updated, self.accessed, self.uses,
                self.topic, self.tier, self.version, self.sensitive, self.expires)

    def insert(self, memory: Memory, code: np.ndarray) -> int:
        """Add a row for a new memory; returns its slot."""
        ns = self.namespaces.codes[memory.namespace]
        kind = self.kinds.code(memory.kind)
        tier = TIER_CODES[memory.tier]
        expires = math.inf if memory.expires_at is None else memory.expires_at
        values = (ns, kind, memory.importance, memory.created_at, memory.updated_at, memory.last_accessed,
                  memory.access_count, memory.topic, tier, memory.version, int(memory.sensitive), expires)
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
        self.slots_by_ns[ns].add(slot)
        self.tier_counts[tier] += 1
        self.count_by_ns[ns] += 1
        self.count_by_kind[ns, kind] += 1
        self.blocks.add(slot, (ns, memory.topic, tier == COLD), code)
        if expires != math.inf:
            self._expiry_added(ns, slot, expires)
        return slot

    def load_namespace(self, ns: int, rows: NamespaceRows, indexed: Sequence[bool] | None = None) -> list[int]:
        """Add a namespace's rows as read from cold in one go; returns their slots. Column
        extends and one block write per block: row-at-a-time insert() costs ~10 us per memory.
        `indexed`: per row, whether the namespace's on-disk index holds it (cold rows only)."""
        n = len(rows)
        kind_codes = [self.kinds.code(kind) for kind in rows.kinds]
        reused = self._free[-n:] if n else []
        del self._free[len(self._free) - len(reused):]
        fresh = list(range(len(self.ids), len(self.ids) + n - len(reused)))
        slots = reused + fresh
        columns = (([ns] * n, self.ns), (kind_codes, self.kind), (rows.importance, self.importance),
                   (rows.created, self.created), (rows.updated, self.updated), (rows.accessed, self.accessed),
                   (rows.uses, self.uses), (rows.topic, self.topic), (rows.tier, self.tier),
                   (rows.version, self.version), (rows.sensitive, self.sensitive), (rows.expires, self.expires))
        k = len(reused)
        for values, column in columns:
            for slot, value in zip(reused, values):
                column[slot] = value
            column.extend(values[k:])
        for slot, memory_id in zip(reused, rows.ids):
            self.ids[slot] = memory_id
        self.ids.extend(rows.ids[k:])
        self.slot_of.update(zip(rows.ids, slots))
        self.slots_by_ns[ns].update(slots)
        self.count_by_ns[ns] += n
        for kind in kind_codes:
            self.count_by_kind[ns, kind] += 1
        for tier in rows.tier:
            self.tier_counts[tier] += 1
        keys = [(ns, topic, tier == COLD) for topic, tier in zip(rows.topic, rows.tier)]
        if indexed is not None:
            keys = [(ns, INDEXED, True) if inside else key for key, inside in zip(keys, indexed)]
        self.blocks.add_many(slots, keys, rows.codes)
        expiring = [slot for slot, expires in zip(slots, rows.expires) if expires != math.inf]
        if expiring:
            self.expiring.setdefault(ns, set()).update(expiring)
            self._expired.pop(ns, None)
        return slots

    def unload_namespace(self, ns: int) -> None:
        """Forget every row of a namespace (its state must have been flushed to cold first)."""
        for slot in list(self.slots_by_ns.get(ns, ())):
            self.remove(self.ids[slot])
        self.slots_by_ns.pop(ns, None)
        self.count_by_ns.pop(ns, None)
        self.expiring.pop(ns, None)
        self._expired.pop(ns, None)
        for key in [key for key in self.count_by_kind if key[0] == ns]:
            del self.count_by_kind[key]

    def remove(self, memory_id: str) -> int:
        slot = self.slot_of.pop(memory_id)
        if self.expires[slot] != math.inf:
            self._expiry_removed(self.ns[slot], slot)
            self.expires[slot] = math.inf
        self.slots_by_ns[self.ns[slot]].discard(slot)
        self.blocks.remove(slot)
        self.tier_counts[self.tier[slot]] -= 1
        self.count_by_ns[self.ns[slot]] -= 1
        self.count_by_kind[self.ns[slot], self.kind[slot]] -= 1
        self.ids[slot] = None
        self.dirty.discard(slot)
        self.admitting.pop(slot, None)
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
        if self.blocks.key_of(slot)[1] != INDEXED:  # an indexed cold row stays with its index
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
        if key[1] == INDEXED:  # a new code is not the one the on-disk index holds: scan it instead
            key = (key[0], self.topic[slot], True)
        self.blocks.remove(slot)
        self.blocks.add(slot, key, code)

    # -- expiry ----------------------------------------------------------------------------

    def set_expiry(self, slot: int, expires: float) -> None:
        """Change a live slot's expiry (math.inf: never)."""
        if self.expires[slot] != math.inf:
            self._expiry_removed(self.ns[slot], slot)
        self.expires[slot] = expires
        if expires != math.inf:
            self._expiry_added(self.ns[slot], slot, expires)

    def expired(self, ns: int, clock: Callable[[], float]) -> set[int] | None:
        """Slots of a namespace whose expiry has passed (None: none has). A namespace without
        expiring memories costs one dict lookup, and the clock is not even read."""
        members = self.expiring.get(ns)
        if not members:
            return None
        now = clock()
        window = self._expired.get(ns)
        if window is None or not window[0] <= now < window[1]:
            expires = self.expires
            gone = {slot for slot in members if expires[slot] <= now}
            until = min((expires[slot] for slot in members if expires[slot] > now), default=math.inf)
            window = self._expired[ns] = [now, until, gone]
        return window[2] or None

    def earliest_expiry(self, ns: int, excluding: set[int] | None = None) -> float:
        """The earliest expiry among a namespace's slots (math.inf: none expires)."""
        expires = self.expires
        return min((expires[slot] for slot in self.expiring.get(ns, ()) if not excluding or slot not in excluding),
                   default=math.inf)

    def _expiry_added(self, ns: int, slot: int, expires: float) -> None:
        self.expiring.setdefault(ns, set()).add(slot)
        window = self._expired.get(ns)
        if window is not None:  # the cached window stays exact: shrink it, or add the slot
            if expires <= window[0]:
                window[2].add(slot)
            elif expires < window[1]:
                window[1] = expires

    def _expiry_removed(self, ns: int, slot: int) -> None:
        members = self.expiring.get(ns)
        if members is not None:
            members.discard(slot)
            if not members:
                del self.expiring[ns]
                self._expired.pop(ns, None)
                return
        window = self._expired.get(ns)
        if window is not None:
            window[2].discard(slot)

    @property
    def warm_count(self) -> int:
        """Memories in the warm tier, hot ones included (hot is a subset of warm)."""
        return self.tier_counts[WARM] + self.tier_counts[HOT]

    def touch(self, slot: int, now: float) -> None:
        """Record one use; runs on every get and every search hit."""
        self.uses[slot] += 1
        self.accessed[slot] = now
        self.dirty.add(slot)

    def read_hot(self, slot: int, content: Memory, now: float) -> Memory:
        """touch() and memory() in one call, for a hot read at `now` (the hot get's whole catalog
        part: two calls and the tier lookup cost 0.25 us of a 1.2 us get)."""
        uses = self.uses[slot] + 1
        self.uses[slot] = uses
        self.accessed[slot] = now
        self.dirty.add(slot)
        expires = self.expires[slot]
        return _new_record(Memory, (
            content.id, content.namespace, content.text, content.kind, content.metadata,
            self.created[slot], self.updated[slot], now, uses, self.importance[slot], self.topic[slot], _HOT,
            self.version[slot], content.sensitive, None if expires == _NEVER else expires,
        ))

    def slots(self, namespace: int | None = None, tiers: tuple[int, ...] | None = None) -> np.ndarray:
        """Live slots, optionally of one namespace and some tiers (int64 array)."""
        if namespace is not None:
            members = self.slots_by_ns.get(namespace, ())
            slots = np.fromiter(members, dtype=np.int64, count=len(members))
        else:
            slots = np.fromiter(self.slot_of.values(), dtype=np.int64, count=len(self.slot_of))
        if tiers is not None and len(slots):
            slots = slots[np.isin(np.asarray(self.tier)[slots], tiers)]
        return slots

    def tier_of(self, slot: int) -> Tier:
        return TIERS_BY_CODE[self.tier[slot]]

    def memory(self, slot: int, content: Memory) -> Memory:
        """The Memory a caller gets: content from a cached or cold record (shared: records are
        read-only), statistics from here. Built as a tuple directly: Memory(...) with keywords
        cost 0.7 us of a 2.3 us hot get."""
        expires = self.expires[slot]
        return _new_record(Memory, (
            content.id, content.namespace, content.text, content.kind, content.metadata,
            self.created[slot], self.updated[slot], self.accessed[slot], self.uses[slot],
            self.importance[slot], self.topic[slot], TIERS_BY_CODE[self.tier[slot]], self.version[slot],
            content.sensitive, None if expires == _NEVER else expires,
        ))


_new_record = tuple.__new__
_HOT = Tier.HOT  # an enum member's lookup on its class costs 60 ns
_NEVER = math.inf
