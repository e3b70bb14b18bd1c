"""Expiry (TTL) of memories: argument checks, extending, the maintenance sweep, live counts.

A memory added with ``ttl_s=`` or ``expires_at=`` (or under ``MemoryConfig.default_ttl_s``) is
gone for every read once the store's clock passes its ``expires_at``: ``get`` raises
:class:`~tiered_memory.errors.MemoryExpiredError`, searches, listings and counts leave it out.
``maintain()`` deletes expired memories durably, as ``delete`` would.

Where it is kept. The expiry is a field of the memory's catalog row (``rows``, in clear, also for
sealed memories: it is not content), so loading a namespace brings it into the catalog's
``expires`` column, and the sweep finds expired memories without reading a record or needing the
key. Rows of memories that never expire have no such field: they are what they were before.

What it costs where nothing expires. Searches ask the catalog for a namespace's expired slots:
one dict lookup for a namespace without expiring memories (the clock is not read). Between two
expiries one answer per namespace is reused. For namespaces that are not loaded, ``meta`` holds
``expiry/<ns id>``: a lower bound on the expiries of the namespace's memories (lowered in the
transaction that writes an earlier one, raised by the sweep), so counts read the rows of a
namespace only when something in it may have expired.

Held by :class:`~tiered_memory.engine.TieredMemory` as its ``Expiry``; extending memories is the
store's (it needs the tier manager to find them), the bookkeeping is here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tiered_memory.errors import InvalidExpiryError, InvalidInputError, MemoryExpiredError, short_repr
from tiered_memory.namespaces.catalog import WARM
from tiered_memory.records import Memory, check_timestamp, is_real_number
from tiered_memory.tiers.cold import Op, pack_row, row_key, text_key

if TYPE_CHECKING:
    from tiered_memory.namespaces.catalog import Catalog
    from tiered_memory.parts import StoreParts

NEVER = math.inf  # the catalog's expiry of a memory that never expires


class _Unchanged:
    """The default of ``update(expires_at=)``: leave the expiry as it is (None clears it)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


def check_ttl(value: object, what: str = "ttl_s") -> float:
    """A time to live in seconds: a number > 0; math.inf means never expire."""
    if not is_real_number(value) or math.isnan(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
        raise InvalidExpiryError(f"{what} must be a number of seconds > 0 (math.inf: never expire), got "
                                 f"{short_repr(value)}")
    return float(value)  # type: ignore[arg-type]


def check_expires_at(value: object, now: float) -> float:
    """An expiry time: seconds since the epoch or a datetime (naive: UTC), after `now`."""
    try:
        stamp = check_timestamp(value, "expires_at")
    except InvalidInputError as err:
        raise InvalidExpiryError(str(err)) from err
    if stamp <= now:
        raise InvalidExpiryError(f"expires_at {short_repr(value)} is not after the store's clock ({_iso(now)}); "
                                 "give a later time, or delete() the memory")
    return stamp


def new_expiries(ttl_s: Any, expires_at: Any, n: int, now: float, default_ttl_s: float | None) -> list[float | None]:
    """The expires_at of each of n new memories (None: never): from ``ttl_s`` (seconds from now),
    ``expires_at``, else ``default_ttl_s``; each argument one value or one per memory."""
    if ttl_s is not None and expires_at is not None:
        raise InvalidExpiryError("give ttl_s= or expires_at=, not both")
    default = None if default_ttl_s is None else now + default_ttl_s
    if ttl_s is None and expires_at is None:
        return [default] * n
    values = per_memory(ttl_s if expires_at is None else expires_at, n,
                         "ttl_s" if expires_at is None else "expires_at")
    out: list[float | None] = []
    for value in values:
        if value is None:
            out.append(default)
        elif expires_at is None:
            ttl = check_ttl(value)
            out.append(None if ttl == NEVER else now + ttl)
        else:
            out.append(check_expires_at(value, now))
    return out


def changed_expiry(ttl_s: Any, expires_at: Any, now: float) -> Any:
    """The expiry an ``update`` sets: UNCHANGED, None (never expire) or a time."""
    if ttl_s is not None and expires_at is not UNCHANGED:
        raise InvalidExpiryError("give ttl_s= or expires_at=, not both")
    if ttl_s is not None:
        ttl = check_ttl(ttl_s)
        return None if ttl == NEVER else now + ttl
    if expires_at is UNCHANGED or expires_at is None:
        return expires_at
    return check_expires_at(expires_at, now)


def per_memory(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise InvalidExpiryError(f"{name} has {len(value)} values for {n} memories; give one value or one per "
                                     "memory")
        return list(value)
    return [value] * n


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def expired_error(memory_id: str, expires: float) -> MemoryExpiredError:
    return MemoryExpiredError(f"memory {memory_id!r} expired at {_iso(expires)}: no read returns it and the next "
                              "maintain() deletes it (extend() memories to keep before they expire)")


def row_bytes(catalog: Catalog, slot: int, memory: Memory | None = None, expires: float | None = None) -> bytes:
    """A slot's catalog row as stored in cold. Sealed rows keep no topic: it is derived from
    the (sealed) vector and recomputed at load (issue 11.1). The expiry is `memory`'s, else
    `expires` (math.inf: never), else the catalog's. A memory waiting for its graph is stored
    as warm, the tier it is headed for (Catalog.admitting)."""
    sensitive = bool(catalog.sensitive[slot])
    kind = memory.kind if memory is not None else catalog.kinds.names[catalog.kind[slot]]
    importance = memory.importance if memory is not None else catalog.importance[slot]
    updated = memory.updated_at if memory is not None else catalog.updated[slot]
    version = memory.version if memory is not None else catalog.version[slot]
    if memory is not None:
        expires = memory.expires_at
    elif expires is None:
        expires = catalog.expires[slot]
    return pack_row(kind, importance, catalog.created[slot], updated, catalog.accessed[slot],
                    catalog.uses[slot], -1 if sensitive else catalog.topic[slot],
                    WARM if slot in catalog.admitting else catalog.tier[slot], version, sensitive, expires)


class Expiry:
    """The namespaces' expiry bounds, the sweep, and the expired memories that counts and
    listings leave out."""

    def __init__(self, parts: StoreParts) -> None:
        self.cold = parts.cold
        self.catalog = parts.catalog
        self.registry = parts.registry
        self.clock = parts.clock
        self.read_only = parts.read_only
        self._shared_cold = parts.shared_cold
        self._mutex = parts.mutex
        self._bounds_in_ram: dict[int, float] = self.cold.expiry_bounds()

    def expiry_ops(self, expiries: dict[int, float]) -> list[Op]:
        """Puts of these slots' rows with new, later expiries (the bound stays a lower bound)."""
        catalog = self.catalog
        return [("rows", row_key(catalog.ns[slot], catalog.ids[slot]), row_bytes(catalog, slot, expires=expires))
                for slot, expires in expiries.items()]

    def set_expiries(self, expiries: dict[int, float]) -> None:
        """After their rows are written: the catalog's expiries of these slots."""
        if expiries:
            with self._mutex:
                for slot, expires in expiries.items():
                    self.catalog.set_expiry(slot, expires)

    # -- bounds: which namespaces may hold expired memories -------------------------------------

    def bounds(self) -> dict[int, float]:
        """Namespace id -> a lower bound on its memories' expiries (namespaces without one never expire)."""
        # A read-only process reads them each time: the writer lowers them as it adds.
        return self.cold.expiry_bounds() if self.read_only else self._bounds_in_ram

    def due_namespaces(self, now: float) -> list[int]:
        """Ids of namespaces that may hold a memory expired at `now` (most stores: none)."""
        bounds = self.bounds()
        return [ns for ns, bound in bounds.items() if bound <= now] if bounds else []

    def lowered_bound_ops(self, ns: int, expiries: list[float | None]) -> tuple[list[Op], float]:
        """The op that lowers a namespace's bound to the earliest of these expiries, if it is
        earlier; once it is written, :meth:`set_bound` the bound returned."""
        finite = [value for value in expiries if value is not None]
        bound = self._bounds_in_ram.get(ns, NEVER)
        if not finite or min(finite) >= bound:
            return [], bound
        bound = min(finite)
        return [self.cold.expiry_bound_op(ns, bound)], bound

    def set_bound(self, ns: int, bound: float) -> None:
        self._bounds_in_ram[ns] = bound

    def saw_expiries(self, ns: int, expiries: Iterable[float]) -> None:
        """Expiries of memories loaded from a shared store, which other processes write: the bound
        this process keeps in RAM (read at open) is lowered to the earliest, so that they expire
        here too (the writer lowered the stored one with its write)."""
        earliest = min(expiries, default=NEVER)
        if earliest < self._bounds_in_ram.get(ns, NEVER):
            self._bounds_in_ram[ns] = earliest

    # -- expired memories as reads see them -----------------------------------------------------

    def expired_ids(self, ns: int, now: float) -> set[str]:
        """Ids of a namespace's memories expired at `now`: from the catalog when this process wrote
        it all (a writer's loaded namespace), else one range read of the namespace's rows."""
        if self.bounds().get(ns, NEVER) > now:
            return set()
        catalog = self.catalog
        if not self.read_only and ns in catalog.namespaces.names and catalog.namespaces.names[ns] in self.registry:
            expired = catalog.expired(ns, lambda: now)
            return set() if expired is None else {catalog.ids[slot] for slot in expired}  # type: ignore[misc]
        return set(self.cold.expired_rows(ns, now)[0])

    def expired_count(self, ns: int | None = None) -> int:
        """Memories expired now, of one namespace or of all, still stored until the sweep."""
        now = self.clock()
        due = self.due_namespaces(now) if ns is None else [ns]
        return sum(len(self.expired_ids(ns_id, now)) for ns_id in due)

    def _stored_expiry(self, record: Memory) -> float:
        """The expiry of a memory read from cold (NEVER if none): the catalog's when it is
        loaded, else its row's, read only in a namespace that has held a memory that expires."""
        catalog = self.catalog
        slot = catalog.slot_of.get(record.id)
        if slot is not None and catalog.namespaces.codes.get(record.namespace) == catalog.ns[slot]:
            return catalog.expires[slot]
        if not self.bounds() and not self._shared_cold:  # no memory of the store expires
            return NEVER
        ns = self.cold.namespace_id(record.namespace)
        # (A shared store: another process may have added it with an expiry this one has not seen.)
        if ns is None or (ns not in self.bounds() and not self._shared_cold):
            return NEVER
        return self.cold.row_expires_at(ns, record.id)

    def live(self, record: Memory | None) -> Memory | None:
        """The record, or None if it has expired; with its expires_at filled in."""
        if record is None:
            return None
        expires = self._stored_expiry(record)
        if expires <= self.clock():
            return None
        return record._replace(expires_at=None if expires == NEVER else expires)

    def check_unexpired(self, slot: int) -> None:
        """Raise MemoryExpiredError if a loaded slot's expiry has passed (before a change)."""
        expires = self.catalog.expires[slot]
        if expires <= self.clock():
            raise expired_error(self.catalog.ids[slot], expires)  # type: ignore[arg-type]

    # -- the sweep ------------------------------------------------------------------------------

    def sweep(self) -> tuple[int, list[tuple[str, list[str]]]]:
        """Delete every expired memory durably, in one transaction, and raise the namespaces'
        bounds to their next expiry. Rows tell what expired (no record is decrypted); records of
        unsealed ones are read for their dedup keys. Returns how many were deleted, and the ids of
        those in loaded namespaces, by namespace, for the tier manager to drop from RAM as delete()
        does. Caller holds the write lock."""
        if self.read_only:
            return 0, []
        now = self.clock()
        due = self.due_namespaces(now)
        if not due:
            return 0, []
        catalog = self.catalog
        ops: list[Op] = []
        loaded: list[tuple[str, list[str]]] = []
        bounds: dict[int, float] = {}
        removed = 0
        for ns in due:
            name = self.cold.namespace_info(ns)[0]
            if name in self.registry:
                expired = catalog.expired(ns, lambda: now) or set()
                ids = [catalog.ids[slot] for slot in expired]
                sealed = [bool(catalog.sensitive[slot]) for slot in expired]
                bounds[ns] = catalog.earliest_expiry(ns, excluding=expired)
                if ids:
                    loaded.append((name, ids))  # type: ignore[arg-type]
            else:
                ids, sealed, bounds[ns] = self.cold.expired_rows(ns, now)
            if ids:
                ops += self.cold.delete_ops(ns, ids)  # type: ignore[arg-type]
                ops += self._dedup_key_deletions(ns, [i for i, flag in zip(ids, sealed) if not flag])
                removed += len(ids)
            ops.append(self.cold.expiry_bound_op(ns, bounds[ns]))
        self.cold.write(ops)
        # Durable from here on.
        for ns, bound in bounds.items():
            if bound == NEVER:
                self._bounds_in_ram.pop(ns, None)
            else:
                self._bounds_in_ram[ns] = bound
        return removed, loaded

    def _dedup_key_deletions(self, ns: int, memory_ids: list[str]) -> list[Op]:
        """Deletes of the dedup index entries that name these (unsealed) memories."""
        if not memory_ids:
            return []
        records = self.cold.get_many(memory_ids)
        keys = [None if record is None else text_key(ns, record.text) for record in records]
        ops: list[Op] = []
        seen: set[bytes] = set()
        for memory_id, key, holder in zip(memory_ids, keys, self.cold.find_texts(keys)):
            if key is not None and holder == memory_id and key not in seen:
                seen.add(key)
                ops.append(("texts", key, None))
        return ops
