"""The tier manager: loading and unloading namespaces, serving lookups, promotion on access,
demotion on decay and capacity, maintenance (and its background thread), int8 calibration, and
keeping the warm index and statistics in step with the cold tier.

Held by :class:`~tiered_memory.engine.TieredMemory` as its ``TierManager``. Methods that change an
index, a code block or the LMDB map run with the store's write lock held (their callers take it,
as their docstrings say).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lmdb
import msgpack
import numpy as np

from tiered_memory.errors import EncryptionRequiredError, InvalidInputError, MemoryNotFoundError, StorageError
from tiered_memory.namespaces.catalog import COLD, HOT, WARM
from tiered_memory.quantization import quantizer_from_state
from tiered_memory.records import TIER_CODES, TIERS_BY_CODE, Hit, Tier, check_label, unpack_record
from tiered_memory.search.lexical_tier import Doc
from tiered_memory.tiering.decay import decay_scores
from tiered_memory.tiering.expiry import row_bytes
from tiered_memory.tiering.promoter import Promoter
from tiered_memory.tiering.topics import TopicModel, topics_for
from tiered_memory.tiers.blocks import INDEXED
from tiered_memory.tiers.cold import Op, ns_prefix, row_key
from tiered_memory.tiers.cold_ops import memory_of, unpack_row
from tiered_memory.tiers.cold_parts import match as match_index
from tiered_memory.tiers.hot import HotEntry
from tiered_memory.tiers.warm import Graph

if TYPE_CHECKING:
    from tiered_memory.namespaces.catalog import Catalog
    from tiered_memory.parts import StoreParts, Traffic
    from tiered_memory.search.searcher import Lookup
    from tiered_memory.tiering.expiry import Expiry

log = logging.getLogger(__name__)

_CALIBRATION_SAMPLE_MAX = 50_000
_RECALIBRATE_GROWTH = 8  # re-learn int8 ranges when the store is 8x the size they were learned on
# RAM of one loaded memory's catalog row besides its code: 11 column entries, its id string,
# slot_of, slots_by_ns and block-place entries. 260 B counted from the parts fell short: with every
# namespace of the 1M many-tenants set touched, anonymous RSS was 765 MiB for 512 + 64 MiB of
# budgets and ~35 MiB of interpreter (benchmarks/results/many-tenants/), ~190 B more per row.
_ROW_BYTES = 450
_REBUILD_AT_LOAD_MAX = 2_000  # live nodes of a graph rebuilt inside a load (20k took 4.7 s here, 2k ~0.4 s)
_ADMIT_LATER_MIN = 256  # memories of one add: smaller adds insert at once (one hnswlib call, a few ms)
_ADMIT_CHUNK = 256  # memories per background admission round
# Memories a load puts back in the hot tier (the most recently accessed of those hot at the unload;
# the others stay warm until a search or get promotes them again). Each costs a record read, ~24 us,
# under the write lock that a search arriving during the load waits for: in the returning-users
# replay a busy user had ~100 hot memories, and the refill was 55% of the load (4.4 of 7.9 ms).
_REFILL_HOT_AT_LOAD = 32
# Uses (this one included) a cold search hit needs before it is promoted while the warm tier is
# full. At 1M memories in one namespace, warm at capacity, promoting every hit was 9.2 ms of
# background work per search (a graph insertion and a demotion each, under the write lock), and
# steady search p50 was 12.1 ms against 5.3 ms for the same searches alone
# (benchmarks/results/huge-namespace/README.md). A second use is the evidence of reuse that a
# full tier asks for before it evicts (2Q, TinyLFU); a get promotes at once.
_COLD_HIT_ADMISSION_USES = 2


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (as it was before, after it). A load
    allocates a few objects per row, all kept: at 220k rows they set off 1,450 collections, 0.35-0.39
    s of a 1.9-2.3 s reopen + first search (1.6-2.1 s without). Process-wide, so only around work
    bounded in time (one namespace's load, under the write lock: one at a time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class MaintenanceReport:
    demoted_to_warm: int = 0
    demoted_to_cold: int = 0
    flushed: int = 0
    topics_fitted: list[str] = field(default_factory=list)
    recalibrated: bool = False
    graphs_compacted: int = 0
    unloaded: int = 0  # namespaces unloaded to keep within warm_budget_bytes
    expired: int = 0  # memories past their expires_at, deleted
    seconds: float = 0.0




class LoadedRead:
    """The shared lock, taken once every namespace of a call is loaded: an unload (which needs
    the exclusive lock) cannot come between the check and the read. Retries a few times when the
    background thread unloaded one in between (a budget smaller than the call's namespaces).
    Made by the tier manager (``_loaded_read``), which hands it the lock and the two checks."""

    __slots__ = ("read_lock", "all_loaded", "ensure_loaded", "names")

    def __init__(self, read_lock: Any, all_loaded: Callable[[Sequence[str]], bool],
                 ensure_loaded: Callable[[Sequence[str]], None], names: Sequence[str]) -> None:
        self.read_lock = read_lock
        self.all_loaded = all_loaded
        self.ensure_loaded = ensure_loaded
        self.names = names

    def __enter__(self) -> None:
        for _ in range(16):
            self.read_lock.__enter__()
            if self.all_loaded(self.names):
                return
            self.read_lock.__exit__(None, None, None)
            self.ensure_loaded(self.names)
        raise StorageError(f"the namespaces {list(self.names)[:5]!r} were unloaded 16 times before they could be "
                           "read: raise MemoryConfig.warm_budget_bytes above what one call needs")

    def __exit__(self, *exc: object) -> None:
        self.read_lock.__exit__(*exc)


_new_hit = tuple.__new__


def hot_eviction(catalog: Catalog, traffic: Traffic) -> Callable[[str, HotEntry], None]:
    """The hot LRU's eviction hook: a hot memory it pushes out is warm again (and counted)."""

    def evicted(memory_id: str, entry: HotEntry) -> None:
        # Called by the LRU, inside the store's mutex, when a put pushes the least recent entry out.
        slot = catalog.slot_of.get(memory_id)
        if slot is not None and catalog.tier[slot] == HOT:
            catalog.set_tier(slot, WARM)
            traffic.demotions["hot->warm"] += 1

    return evicted


class TierManager:
    """Moves memories between tiers and keeps RAM state consistent with the cold tier."""

    def __init__(self, parts: StoreParts, expiry: Expiry) -> None:
        self._parts = parts  # ops, closed and closing change: read through it
        self._expiry = expiry  # the maintenance sweep deletes expired memories
        self.path = parts.path
        self.config = parts.config
        self.clock = parts.clock
        self.read_only = parts.read_only
        self.dimension = parts.dimension
        self.cold = parts.cold
        self._shared_cold = parts.shared_cold
        self._sealer = parts.sealer
        self._sealed_namespaces = parts.sealed_namespaces
        self.catalog = parts.catalog
        self.registry = parts.registry
        self.hot = parts.hot
        self._hot_entries = parts.hot.entries
        self.warm = parts.warm
        self.lexical = parts.lexical
        self.cold_parts = parts.cold_parts
        self.topics = parts.topics
        self._topics_dirty = parts.topics_dirty
        self._rw = parts.rw
        self._mutex = parts.mutex
        self._hits, self._misses = parts.traffic.hits, parts.traffic.misses
        self._promotions, self._demotions = parts.traffic.promotions, parts.traffic.demotions
        self._decoded = parts.decoded
        self._pending: dict[int, str] = {}  # slot -> id of memories served from warm/cold, to promote
        self._admitting = parts.catalog.admitting  # slot -> id of new memories to enter the warm graph
        self._notified: set[int] = set()  # ns ids other processes changed (a shared cold store), to unload
        self._promoter = Promoter(self._background_work, self._has_background_work)
        self._cold_build_lock = threading.Lock()  # one on-disk index build at a time
        self._last_maintain = self.clock()
        self._clipped = 0.0  # clipped values among codes written since the last calibration
        self._coded = 0
        self.calibrated_on = self.cold.meta_get("calibrated_on", 0)  # memories the int8 ranges were fitted on

    def stop(self) -> None:
        """Stop the background thread (promotions, maintenance, compactions, index builds)."""
        self._promoter.stop()

    def _quantizer_stamp(self) -> str:
        state = msgpack.packb(self.cold.quantizer.state(), use_bin_type=True)
        return f"{zlib.crc32(state):08x}"

    # -- loading and unloading namespaces -------------------------------------------------

    def ensure_loaded(self, names: Sequence[str]) -> None:
        """Load the namespaces of a call that are not loaded yet (the call's own need: it takes
        the write lock for the range read), and count a use of each. Unloading for the budget
        happens after the call (or on the background thread), never between this and its use:
        readers use :class:`LoadedRead`, which checks under the shared lock."""
        registry = self.registry
        missing = [name for name in names if name not in registry]
        # -- several writers (a shared cold store): reload a loaded namespace another process changed
        if self._shared_cold and len(missing) < len(names) and self._changed_elsewhere(names):
            with self._rw.write:
                self._parts.check_open()
                self.reload_changed(names)
        # -- end of several writers
        if missing:
            with self._rw.write:
                self._parts.check_open()
                for name in missing:
                    self.load(name)
        with self._mutex:
            for name in names:
                registry.touch(name)

    # -- several writers (a shared cold store, cold_store.SharedColdStore) ---------------------

    def _changed_elsewhere(self, names: Sequence[str]) -> list[str]:
        """The loaded namespaces among these that another process changed since they were loaded."""
        loaded = self.registry.loaded
        by_id = {loaded[name].ns_id: name for name in names if name in loaded}
        return [by_id[ns] for ns in self.cold.changed_elsewhere(list(by_id))] if by_id else []

    def reload_changed(self, names: Sequence[str]) -> None:
        """Bring up to date those of these namespaces another process changed: in place when the
        store can say what changed (a few memories), else by reloading. Caller holds the write lock."""
        for name in self._changed_elsewhere(names):  # asked again: another thread may have reloaded it
            if self._refresh_in_place(name):
                continue
            # Its graph misses the other writer's changes: dropped first, so that unloading does
            # not save it stamped as up to date (the next load repairs the older file, or rebuilds).
            self.warm.forget(name)
            self.unload(name)
            self.load(name)

    def _reload_for(self, memory_id: str) -> None:
        """Before changing a memory: bring its namespace up to date. Caller holds the write lock."""
        slot = self.catalog.slot_of.get(memory_id)
        if slot is not None:
            self.reload_changed([self.catalog.namespaces.names[self.catalog.ns[slot]]])
            return
        record = self.cold.get(memory_id)
        if record is not None:
            self.reload_changed([record.namespace])

    def changed_by_notice(self, ns_ids: list[int] | None) -> None:
        """Called by the cold store's listener thread: other processes changed these namespaces
        (None: maybe any); the background thread unloads the stale copies."""
        with self._mutex:
            self._notified.update([-1] if ns_ids is None else ns_ids)
        self._promoter.wake()

    def _drop_notified(self) -> bool:
        """Background: unload the loaded namespaces other processes changed; their next use loads
        them fresh. Notices only point: changed_elsewhere decides."""
        with self._mutex:
            notified, self._notified = self._notified, set()
        if not notified:
            return False
        with self._rw.write:
            if self._parts.closed or self._parts.closing:
                return False
            names = [name for name, entry in self.registry.loaded.items() if -1 in notified or entry.ns_id in notified]
            stale = self._changed_elsewhere(names) if names else []
            for name in stale:
                if self._refresh_in_place(name):
                    continue
                self.warm.forget(name)  # (as in reload_changed: not saved as up to date)
                self.unload(name)
        return bool(stale)

    def _refresh_in_place(self, namespace: str) -> bool:
        """Apply another process's changes to a loaded namespace, memory by memory (the store's
        change stamps say which): the reload this replaces re-reads every row and repairs the
        graph, 150 ms at 2,000 memories (benchmarks/results/postgres/staleness.md). False when
        the store cannot tell (too many changes, re-calibrated codes) or the namespace has an
        on-disk index of its cold part (whose rows the reload re-matches)."""
        entry = self.registry.loaded.get(namespace)
        if entry is None or namespace in self.cold_parts.parts:
            return False
        ns = entry.ns_id
        found = self.cold.changes_since_loaded(ns, limit=max(64, self.catalog.count_by_ns.get(ns, 0) // 8))
        if found is None:
            return False
        versions, state = found
        held = [v.memory_id for v in versions if v.memory_id in self.catalog.slot_of]
        if held:
            self.drop_deleted(namespace, held)
        memories, codes = [], []
        for version in versions:
            if not version.live:
                continue  # deleted (or expired and swept) by the other writer
            key = row_key(ns, version.memory_id)
            memory = memory_of(unpack_record(version.record, self.cold.sealer), unpack_row(key, version.row))
            memories.append(memory._replace(tier=Tier.WARM) if memory.tier is Tier.HOT else memory)
            codes.append(np.frombuffer(self.cold.opened_vector(version.memory_id, "code", version.code,
                                                               self.dimension, key), dtype=np.int8))
        if memories:
            with self._mutex:
                slots = [self.catalog.insert(memory, code) for memory, code in zip(memories, codes)]
            self.lexical.added(namespace, [Doc(m.id, m.text, m.kind, m.created_at, m.sensitive) for m in memories])
            self.warm_put_or_cold(namespace, [slot for slot, m in zip(slots, memories) if m.tier is not Tier.COLD])
            self.namespace_grew(namespace)
            self._expiry.saw_expiries(ns, [m.expires_at for m in memories if m.expires_at is not None])
        self.cold.refreshed(ns, state)
        return True

    # -- end of several writers

    def loaded_read(self, names: Sequence[str]) -> LoadedRead:
        """``with self.loaded_read(names):`` the shared lock, with every namespace of `names` loaded."""
        return LoadedRead(self._rw.read, self._all_loaded, self.ensure_loaded, names)

    def _all_loaded(self, names: Sequence[str]) -> bool:
        registry = self.registry
        return all(name in registry or self.cold.namespace_id(name) is None for name in names)

    def load(self, namespace: str, create: bool = False) -> int | None:
        """Make a namespace's rows, codes, graph and topic model resident; returns its ns id (None:
        the store has no such namespace and create is False). Caller holds the write lock."""
        entry = self.registry.loaded.get(namespace)
        if entry is not None:
            return entry.ns_id
        ns = self.cold.namespace_id(namespace, create=create and not self.read_only)
        if ns is None:
            return None
        started = time.perf_counter()
        with collector_paused():  # the rows: a few objects each, all kept (a graph rebuild below is not)
            slots, rows = self._load_rows(namespace, ns)
        return self._load_rest(namespace, ns, slots, rows, started)

    def _load_rows(self, namespace: str, ns: int) -> tuple[list[int], Any]:
        """Read a namespace's rows and codes into the catalog and attach its on-disk index."""
        count = self.cold.namespace_info(ns)[1]
        rows = self.cold.load_namespace(ns, count)
        catalog = self.catalog
        catalog.namespaces.assign(namespace, ns)
        index, indexed, keys = self._attachable_index(namespace, ns, rows)
        with self._mutex:
            slots = catalog.load_namespace(ns, rows, indexed)
        if self._shared_cold:
            self._expiry.saw_expiries(ns, rows.expires)
        if index is not None:
            self.cold_parts.attach(namespace, index, keys, np.asarray(slots, dtype=np.int64)[indexed])
        return slots, rows

    def _load_rest(self, namespace: str, ns: int, slots: list[int], rows: Any, started: float) -> int:
        """Topic model, graph, admissions and hot refill of a namespace whose rows are in."""
        catalog = self.catalog
        model = self._load_topics(namespace, ns)
        if model is not None:
            sealed = [slot for slot, flag in zip(slots, rows.sensitive) if flag]
            if sealed:  # sealed rows keep no topic on disk (it is derived from the vector)
                topics, _ = model.assign(self._decoded(sealed))
                with self._mutex:
                    for slot, topic in zip(sealed, topics.tolist()):
                        catalog.set_topic(slot, topic)
                    catalog.dirty.difference_update(sealed)
        self._restore_graph(namespace, ns)
        # (a hot row the graph repair left waiting for admission is cold until then)
        hot = [slot for slot, tier in zip(slots, rows.tier) if tier == HOT and catalog.tier[slot] != COLD]
        if hot:
            hot.sort(key=lambda slot: catalog.accessed[slot])
            with self._mutex:  # back to warm until the records are read: _fill_hot makes them hot
                for slot in hot:
                    catalog.set_tier(slot, WARM)
                catalog.dirty.difference_update(hot)
            self._fill_hot(hot[-_REFILL_HOT_AT_LOAD:])  # the most recently accessed, last: most recent in the LRU
        self.registry.add(namespace, ns, self._namespace_bytes(namespace, ns), time.perf_counter() - started)
        self.wake_for_cold_index([ns])
        return ns

    def _attachable_index(self, namespace: str, ns: int, rows: Any) -> tuple[Any, np.ndarray | None, np.ndarray]:
        """The namespace's on-disk index of its cold part, if it has a sound one, with which of the
        rows read it holds as they are (mask) and their positions in it (keys)."""
        none = (None, None, np.zeros(0, dtype=np.int64))
        if not len(rows) or any(rows.sensitive) or namespace in self._sealed_namespaces:
            return none
        index = self.cold_parts.open_file(ns, self.dimension)
        if index is None:
            return none
        cold_rows = np.flatnonzero(np.asarray(rows.tier, dtype=np.int8) == COLD)
        mask, keys = match_index(index, [rows.ids[i] for i in cold_rows.tolist()], rows.codes[cold_rows])
        if not mask.any():
            index.close()
            return none
        indexed = np.zeros(len(rows), dtype=bool)
        indexed[cold_rows[mask]] = True
        return index, indexed, keys

    def _namespace_bytes(self, namespace: str, ns: int) -> int:
        """RAM a loaded namespace holds: its catalog rows and codes, and its graph."""
        graph = self.warm.graphs.get(namespace)
        return self.catalog.count_by_ns.get(ns, 0) * (self.dimension + _ROW_BYTES) + \
            (graph.nbytes() if graph is not None else 0)

    def namespace_grew(self, namespace: str) -> None:
        entry = self.registry.loaded.get(namespace)
        if entry is not None:
            self.registry.resize(namespace, self._namespace_bytes(namespace, entry.ns_id))

    def drop_deleted(self, namespace: str, memory_ids: list[str]) -> None:
        """Drop memories whose deletion is durable from the RAM tiers and indexes."""
        with self._mutex:
            for memory_id in memory_ids:
                self.hot.discard(memory_id)
                self.catalog.remove(memory_id)
        for memory_id in memory_ids:
            self.warm.discard(memory_id, namespace)
        self.lexical.removed(namespace, memory_ids)
        self.namespace_grew(namespace)

    def _unload_over_budget(self) -> int:
        """Unload namespaces, least recently and least used first, until the rest fit in
        warm_budget_bytes. Caller holds the write lock."""
        victims = self.registry.victims()
        for namespace in victims:
            self.unload(namespace)
        return len(victims)

    def unload(self, namespace: str) -> None:
        """Persist a namespace's statistics, topic model and graph, then drop it from RAM."""
        entry = self.registry.loaded.get(namespace)
        if entry is None:
            return
        ns = entry.ns_id
        catalog = self.catalog
        if not self.read_only:
            self._persist_namespaces({namespace})
        with self._mutex:
            slots = list(catalog.slots_by_ns.get(ns, ()))
            for slot in slots:
                memory_id = catalog.ids[slot]
                self.hot.discard(memory_id)
                self._pending.pop(slot, None)
            catalog.unload_namespace(ns)
        self.warm.forget(namespace)
        self.cold_parts.detach(namespace)
        self.lexical.drop(namespace)
        self.topics.pop(namespace, None)
        self.registry.remove(namespace)

    def _topics_key(self, ns: int) -> str:
        return f"topics/{ns_prefix(ns).hex()}"

    def assign_topics(self, namespace: str, ns: int, vectors: np.ndarray) -> list[int] | None:
        """Topics of new vectors by the namespace's topic model (loaded or stored; None: it has
        none): for memories written to a namespace that may not be loaded (a sync)."""
        model = self.topics.get(namespace) or self._read_topics(namespace, ns)
        return None if model is None else model.assign(vectors)[0].tolist()

    def _load_topics(self, namespace: str, ns: int) -> TopicModel | None:
        model = self._read_topics(namespace, ns)
        if model is not None:
            self.topics[namespace] = model
        return model

    def _read_topics(self, namespace: str, ns: int) -> TopicModel | None:
        state = self.cold.meta_get(self._topics_key(ns))
        if state is None:
            return None
        if isinstance(state, dict) and "sealed" in state:
            if self._sealer is None:
                raise EncryptionRequiredError(f"namespace {namespace!r} is sealed: open the store with its "
                                              "encryption_key")
            state = msgpack.unpackb(self._sealer.open(state["sealed"], self._topics_key(ns).encode()),
                                    raw=False, strict_map_key=False)
        try:
            model = TopicModel.from_state(state)
        except (KeyError, TypeError, ValueError) as err:
            log.warning("topic model of %r is unreadable (%s); it will be refitted", namespace, err)
            return None
        return model

    def _topics_op(self, namespace: str, ns: int, model: TopicModel) -> Op:
        # Centroids are means of the namespace's vectors (sometimes copies of one): a sealed
        # namespace's model is sealed too (issue 11.1).
        state: Any = model.state()
        if namespace in self._sealed_namespaces:
            if self._sealer is None:
                raise EncryptionRequiredError(f"namespace {namespace!r} is sealed: open the store with its key")
            state = {"sealed": self._sealer.seal(msgpack.packb(state, use_bin_type=True),
                                                 self._topics_key(ns).encode())}
        return self.cold.meta_op(self._topics_key(ns), state)

    def _restore_graph(self, namespace: str, ns: int) -> None:
        """Load a namespace's saved graph (if it is big enough to have one) and make it agree
        with the catalog: the archive decides which memories are warm; a graph saved before the
        namespace's last write is checked vector by vector."""
        catalog = self.catalog
        slots = catalog.slots(namespace=ns, tiers=(WARM, HOT)).tolist()
        if catalog.count_by_ns.get(ns, 0) <= self.config.exact_search_max:
            return  # small: exact scans serve it (a graph file left from when it was larger stays unused)
        meta = self.warm.load_one(self.path / "warm", namespace)
        graph = self.warm.graphs.get(namespace)
        generation = self.cold.namespace_info(ns)[2]
        if graph is None or meta is None or meta.get("stamp") != self._quantizer_stamp():
            self._rebuild_graph(namespace, slots)
            log.warning("warm index of %r rebuilt from the cold tier (%d memories)", namespace, len(slots))
            return
        try:
            repaired = self._repair_graph(namespace, graph, slots, stale=meta.get("generation") != generation)
        except RuntimeError as err:  # hnswlib disagrees with the sidecar: trust neither
            log.warning("warm index of %r could not be repaired (%s); rebuilding it", namespace, err)
            self._rebuild_graph(namespace, slots)
            return
        if repaired:
            log.warning("warm index of %r repaired from the cold tier: %d memories re-indexed or removed",
                        namespace, repaired)
        if graph.needs_compaction and len(graph) <= _REBUILD_AT_LOAD_MAX:
            # A graph saved with (or repaired into) more tombstones than live nodes may not reach
            # them all (warm.Graph.needs_compaction): a small one is rebuilt now, before any search
            # uses it; a large one is compacted by the background thread.
            self._rebuild_graph(namespace, slots)
            return
        # A well-formed sidecar can still pair labels with the wrong ids (two swapped: issue 11.7):
        # check the graph's vectors against the codes, all of them up to 4,096, else a sample.
        present = [slot for slot in slots if catalog.ids[slot] in graph.label_of]
        if len(present) > 4_096:
            present = np.random.default_rng(len(present)).choice(present, 1_024, replace=False).tolist()
        if present and graph.verify([catalog.ids[slot] for slot in present], self._decoded(present)):
            log.warning("warm index of %r pairs vectors with the wrong memories; rebuilt from the cold tier",
                        namespace)
            self._rebuild_graph(namespace, slots)

    def _repair_graph(self, namespace: str, graph: Graph, slots: list[int], stale: bool) -> int:
        """Make a loaded graph hold exactly these slots' vectors; returns how many entries changed."""
        ids = [self.catalog.ids[slot] for slot in slots]
        wanted = set(ids)
        extra = [i for i in graph.label_of if i not in wanted]
        for memory_id in extra:
            self.warm.discard(memory_id, namespace)
        missing = [slot for slot, memory_id in zip(slots, ids) if memory_id not in graph.label_of]
        absent = len(missing)  # the ones after these were in the graph with another vector
        if stale:  # saved before the last write: a vector may have changed since
            present = [slot for slot, memory_id in zip(slots, ids) if memory_id in graph.label_of]
            if present:
                stored = graph.vectors([memory_id for memory_id in ids if memory_id in graph.label_of])
                differs = ~np.isclose(stored, self._decoded(present), atol=1e-5).all(axis=1)
                missing.extend(np.asarray(present)[differs].tolist())
        if absent >= _ADMIT_LATER_MIN and self.config.promote_in_background and not self.read_only:
            # Many warm memories the graph lacks (a large add's, still waiting at a close, an
            # unload or a crash): cold blocks (found by scan) until the background thread admits
            # them, not one hnswlib insertion each (about a millisecond) inside this load.
            later, missing = missing[:absent], missing[absent:]
            with self._mutex:
                for slot in later:
                    self.catalog.set_tier(slot, COLD)
                self.catalog.dirty.difference_update(later)  # stored as warm, where they are headed
            self.admit_later(later)
        if missing:
            self.warm.put_many(namespace, [self.catalog.ids[s] for s in missing], self._decoded(missing))
        return len(extra) + len(missing)

    def _graph_wanted(self, namespace: str) -> bool:
        """Small namespaces get no hnswlib graph: an exact scan of their codes is as fast, and
        each graph costs 2.6 MB before its first vector (hnswlib's per-index lock table)."""
        if namespace in self.warm.graphs:
            return True
        ns = self.catalog.namespaces.codes.get(namespace)
        return ns is not None and self.catalog.count_by_ns.get(ns, 0) > self.config.exact_search_max

    def _warm_put(self, namespace: str, slots: list[int]) -> None:
        """Index these (already warm-tier) slots in the namespace's graph, building the graph from
        every warm memory of the namespace the first time it is wanted."""
        if not slots or not self._graph_wanted(namespace):
            return
        if namespace not in self.warm.graphs:
            ns = self.catalog.namespaces.codes[namespace]
            slots = self.catalog.slots(namespace=ns, tiers=(WARM, HOT)).tolist()
        self.warm.put_many(namespace, [self.catalog.ids[slot] for slot in slots], self._decoded(slots))

    def warm_put_or_cold(self, namespace: str, slots: list[int]) -> None:
        """Index these warm slots; if hnswlib fails (e.g. out of memory), they go back to cold
        blocks, where search still finds them, instead of being left unfindable."""
        try:
            self._warm_put(namespace, slots)
        except (RuntimeError, MemoryError, ValueError) as err:
            log.error("warm insertion into %r failed (%s): %d memories stay cold", namespace, err, len(slots))
            with self._mutex:
                for slot in slots:
                    self.warm.discard(self.catalog.ids[slot], namespace)
                    self.catalog.set_tier(slot, COLD)

    def _rebuild_graph(self, namespace: str, slots: list[int]) -> None:
        ids = [self.catalog.ids[slot] for slot in slots]
        self.warm.rebuild(namespace, ids, self._decoded(slots) if slots else np.zeros((0, self.dimension)))

    def as_stored(self, slot: int, vector: np.ndarray) -> np.ndarray:
        """The float vector a memory has after a round trip through cold: its original in the
        kept precision, or its decoded code. Hot copies hold exactly this, so a hot entry and a
        reopened store agree."""
        dtype = self.cold.originals_dtype
        if dtype is None:
            return self._decoded([slot])[0]
        return vector.astype(dtype).astype(np.float32)

    def _fill_hot(self, slots: list[int], count: bool = False) -> None:
        """Read records (and originals) of these slots from cold and put them in the hot LRU."""
        if not slots:
            return
        fetched = self.cold.fetch([self.catalog.ids[slot] for slot in slots], originals=True)
        decoded = self._decoded(slots)
        with self._mutex:
            for slot, (memory, original), fallback in zip(slots, fetched, decoded):
                if memory is None:
                    continue
                if count and self.catalog.tier[slot] != HOT:
                    self._promotions["warm->hot"] += 1
                self.catalog.set_tier(slot, HOT)  # before put: the put may evict (and demote) another
                if not self.hot.put(memory, original if original is not None else fallback):
                    self.catalog.set_tier(slot, WARM)

    def serve(self, slot: int, search_hit: bool = False) -> int:
        """Account one lookup of a slot and ask for its promotion to hot. Caller holds _mutex.

        A cold search hit while the warm tier is full is promoted only once it has been used
        before (_COLD_HIT_ADMISSION_USES): its promotion is a graph insertion plus the demotion of
        another warm memory, and one-off hits made that churn the steady state of a huge
        namespace. A get, an explicit use, always promotes."""
        catalog = self.catalog
        tier = catalog.tier[slot]
        catalog.touch(slot, self.clock())
        if tier == HOT:
            self._hits["hot"] += 1
            self.hot.get(catalog.ids[slot])  # refresh recency
            return tier
        self._misses["hot"] += 1
        if tier == WARM:
            self._hits["warm"] += 1
        else:
            self._misses["warm"] += 1
            self._hits["cold"] += 1
            # Full: at or above the 99% that enforce_warm_capacity demotes down to.
            capacity = self.config.warm_capacity
            if search_hit and catalog.uses[slot] < _COLD_HIT_ADMISSION_USES and \
                    catalog.warm_count >= capacity - capacity // 100:
                return tier
        self._pending[slot] = catalog.ids[slot]
        return tier

    def serve_hits(self, ranked: list[tuple[int, float]], lookup: Lookup) -> list[Hit]:
        """Build the hits and count the accesses, and the search as one operation (under the
        same mutex: the caller then only calls maintain_if_due()); warm and cold hits are queued
        for promotion."""
        catalog = self.catalog
        ids, tiers = catalog.ids, catalog.tier
        # Records of warm and cold hits come from cold: read them in one transaction.
        needing = [slot for slot, _ in ranked if tiers[slot] != HOT and slot not in lookup.contents]
        if needing:
            for slot, content in zip(needing, self.cold.get_many([ids[slot] for slot in needing])):
                content = lookup.checked(slot, content)
                if content is not None or self.read_only:
                    lookup.contents[slot] = content
        hits = []
        now = self.clock()
        entries = self._hot_entries
        hot_get, hot_touch = entries.__getitem__, entries.move_to_end
        memory_of, read_hot, hot_served, hot_tier = catalog.memory, catalog.read_hot, 0, Tier.HOT
        with self._mutex:
            for slot, score in ranked:
                if tiers[slot] == HOT:  # the common case, kept lean: one LRU lookup, no disk
                    memory_id = ids[slot]
                    content = hot_get(memory_id).memory
                    hot_touch(memory_id)
                    hot_served += 1
                    # tuple.__new__: Hit(...) runs its Python __new__ (~0.3 us a hit).
                    hits.append(_new_hit(Hit, (read_hot(slot, content, now), float(score), hot_tier, None, None)))
                else:
                    content = lookup.content(slot)
                    if content is None:
                        continue
                    tier = self.serve(slot, search_hit=True)
                    hits.append(Hit(memory_of(slot, content), float(score), TIERS_BY_CODE[tier]))
            self._hits["hot"] += hot_served
            self._parts.ops += 1
        return hits

    def after_promotion_requests(self) -> None:
        """Run what _serve() asked for: in the background thread, or now (promote_in_background=False)."""
        if not self._pending:
            return
        if self.config.promote_in_background:
            self._promoter.wake()
        else:
            self._drain_promotions()

    # -- new memories entering the warm graph in the background -----------------------------

    def admits_later(self, namespace: str, count: int) -> bool:
        """Whether an add's `count` new warm memories should enter the namespace's graph in the
        background (MemoryConfig.admission_backlog_max): a large batch, a namespace that has a
        graph already, a background thread to do it, and room in the backlog."""
        return (count >= _ADMIT_LATER_MIN and self.config.promote_in_background and namespace in self.warm.graphs
                and len(self._admitting) + count <= self.config.admission_backlog_max)

    def admit_later(self, slots: list[int]) -> None:
        """Queue new memories, stored durably (as warm) and in cold blocks, for the warm graph."""
        with self._mutex:
            for slot in slots:
                self._admitting[slot] = self.catalog.ids[slot]
        self._promoter.wake()

    def admission_backlog(self) -> int:
        return len(self._admitting)

    def _admit_waiting(self) -> bool:
        """Background: put up to _ADMIT_CHUNK queued memories into their graphs (the write lock is
        held for one chunk at a time, ~0.3 s, so searches interleave); returns whether any waited.
        The chunk leaves the queue only under the write lock: a persist or unload in between
        still sees it waiting (and stores it as warm)."""
        with self._mutex:
            if not self._admitting:
                return False
        with self._rw.write:
            if self._parts.closed:
                return False
            with self._mutex:
                chunk = list(itertools.islice(self._admitting.items(), _ADMIT_CHUNK))
                for slot, _ in chunk:
                    del self._admitting[slot]
            catalog = self.catalog
            # Deleted, reused, unloaded or moved since: left as they are.
            live = [slot for slot, memory_id in chunk if catalog.ids[slot] == memory_id and catalog.tier[slot] == COLD]
            self._cold_to_warm(live)
            self.enforce_warm_capacity(protect=set(live))
        return bool(chunk)

    def _cold_to_warm(self, slots: list[int], promotions: bool = False) -> None:
        """Move these slots, those of them still cold, into their namespaces' graphs (a failed
        insertion leaves them cold, see warm_put_or_cold). Caller holds the write lock."""
        catalog = self.catalog
        by_namespace: dict[str, list[int]] = {}
        for slot in slots:
            if catalog.tier[slot] == COLD:
                by_namespace.setdefault(catalog.namespaces.names[catalog.ns[slot]], []).append(slot)
        for namespace, moved in by_namespace.items():
            with self._mutex:
                for slot in moved:
                    catalog.set_tier(slot, WARM)
                if promotions:
                    self._promotions["cold->warm"] += len(moved)
            self.warm_put_or_cold(namespace, moved)

    def _drain_promotions(self) -> bool:
        """Move requested memories up to hot (cold -> warm -> hot); returns whether there were any."""
        with self._mutex:
            if not self._pending:
                return False
            batch, self._pending = self._pending, {}
        with self._rw.write:
            if self._parts.closed:
                return False
            catalog = self.catalog
            # A slot may have been deleted, reused or promoted since it was asked for.
            live = [slot for slot, memory_id in batch.items()
                    if catalog.ids[slot] == memory_id and catalog.tier[slot] != HOT]
            self._cold_to_warm(live, promotions=True)
            # (a slot whose graph insertion failed stayed cold: hot memories are warm ones)
            self._fill_hot([slot for slot in live if catalog.tier[slot] != COLD], count=True)
            self.enforce_warm_capacity(protect=set(live))
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """See :meth:`TieredMemory.wait_idle`."""
        return self._promoter.wait_idle(timeout) if self.config.promote_in_background else True

    def decay_scores(self, slots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`TieredMemory.decay_scores`."""
        catalog = self.catalog
        if slots is None:
            slots = catalog.slots()
        config = self.config
        scores = decay_scores(np.asarray(catalog.importance)[slots], np.asarray(catalog.accessed)[slots],
                              np.asarray(catalog.uses)[slots], self.clock(), config.half_life_s, config.use_weight)
        return slots, scores

    def enforce_warm_capacity(self, protect: set[int] | None = None) -> int:
        """Demote the lowest-scoring warm memories to cold until warm is within capacity.

        Goes 1% below capacity so that a stream of promotions does not pay this every time.
        Caller holds the write lock.
        """
        excess = self.catalog.warm_count - self.config.warm_capacity
        if excess <= 0:
            return 0
        target = excess + self.config.warm_capacity // 100
        slots, scores = self.decay_scores(self.catalog.slots(tiers=(WARM, HOT)))
        if protect:
            scores = np.where(np.isin(slots, list(protect)), np.inf, scores)
        # Warm-only memories leave before hot ones at equal score.
        hot_bias = (np.asarray(self.catalog.tier)[slots] == HOT).astype(np.float64)
        order = np.lexsort((hot_bias, scores))[:target]
        self._demote_to_cold(slots[order].tolist())
        return len(order)

    def _demote_to_cold(self, slots: list[int]) -> None:
        catalog = self.catalog
        for slot in slots:
            memory_id = catalog.ids[slot]
            with self._mutex:
                if catalog.tier[slot] == HOT:
                    self.hot.discard(memory_id)
                    catalog.set_tier(slot, WARM)
                    self._demotions["hot->warm"] += 1
                catalog.set_tier(slot, COLD)
                self._demotions["warm->cold"] += 1
            self.warm.discard(memory_id, catalog.namespaces.names[catalog.ns[slot]])
        self.wake_for_cold_index({catalog.ns[slot] for slot in slots})

    def wake_for_cold_index(self, namespaces: Iterable[int]) -> None:
        """Start the background thread if one of these namespaces now has enough cold rows for an
        on-disk index (whether a build is really due is decided there)."""
        minimum = self.config.cold_index_min_rows
        if minimum and self.config.promote_in_background and \
                any(self.catalog.blocks.cold_count.get(ns, 0) >= minimum for ns in namespaces):
            self._promoter.wake()

    def _maintenance_is_due(self) -> bool:
        return (self._parts.ops >= self.config.maintain_every_ops
                or self.clock() - self._last_maintain >= self.config.maintain_every_s
                or self.registry.over_budget())

    def maintain_if_due(self) -> None:
        """Housekeeping runs on the background thread, never inside the caller's operation
        (without one, promote_in_background=False, it runs here, after the caller's work)."""
        if self._parts.closed:
            return
        if self.read_only and not self.registry.over_budget():
            if self._parts.ops >= self.config.maintain_every_ops:
                # Nothing is maintained read-only, so the count would only bring every hot get
                # past the bound back here: start it over.
                with self._mutex:
                    self._parts.ops = 0
            return
        if not self._maintenance_is_due():
            return
        if self.config.promote_in_background:
            self._parts.maintenance_due = True
            self._promoter.wake()
            return
        with self._rw.write:
            if not self._parts.closed:
                self._run_due_maintenance()

    def _run_due_maintenance(self) -> bool:
        """Unload namespaces over the budget; maintain when the op or time bound is crossed.
        Caller holds the write lock; returns whether anything was done."""
        self._parts.maintenance_due = False
        did = bool(self._unload_over_budget())
        if not self.read_only and (self._parts.ops >= self.config.maintain_every_ops or
                                   self.clock() - self._last_maintain >= self.config.maintain_every_s):
            self.maintain()
            did = True
        return did

    def after_ops(self, n: int) -> None:
        """Count n operations of the caller's; maintain if that crosses a bound."""
        with self._mutex:
            self._parts.ops += n
        self.maintain_if_due()

    def slot_for_change(self, memory_id: str, namespace: str | None) -> int:
        """The slot of a memory to change, loading its namespace. Caller holds the write lock."""
        if namespace is not None:
            check_label(namespace, "namespace")
        if self._shared_cold:  # several writers: the memory's namespace as the store has it now
            self._reload_for(memory_id)
        if memory_id not in self.catalog.slot_of:
            record = self.cold.get(memory_id)
            if record is not None and (namespace is None or record.namespace == namespace):
                self.load(record.namespace)
        slot = self.catalog.slot_of.get(memory_id)
        if slot is None or (namespace is not None and
                            self.catalog.namespaces.names[self.catalog.ns[slot]] != namespace):
            where = "" if namespace is None else f" in namespace {namespace!r}"
            raise MemoryNotFoundError(f"no memory with id {memory_id!r}{where}")
        return slot

    def maintain(self) -> MaintenanceReport:
        """See TieredMemory.maintain(). Caller holds the write lock."""
        started = time.perf_counter()
        report = MaintenanceReport()
        report.unloaded = self._unload_over_budget()
        report.expired, deleted = self._expiry.sweep()
        for namespace, ids in deleted:
            self.drop_deleted(namespace, ids)
        config = self.config
        catalog = self.catalog
        slots, scores = self.decay_scores(catalog.slots(tiers=(WARM, HOT)))
        tiers = np.asarray(catalog.tier)[slots]
        with self._mutex:
            for slot in slots[(tiers == HOT) & (scores < config.hot_min_score)].tolist():
                self.hot.discard(catalog.ids[slot])
                catalog.set_tier(slot, WARM)
                self._demotions["hot->warm"] += 1
                report.demoted_to_warm += 1
        to_cold = slots[scores < config.warm_min_score].tolist()
        self._demote_to_cold(to_cold)
        report.demoted_to_cold = len(to_cold) + self.enforce_warm_capacity()
        report.topics_fitted = self._fit_topics()
        report.recalibrated = self._recalibrate_if_drifted()
        if not self.config.promote_in_background:
            report.graphs_compacted = self._compact_graphs()
        elif self._graph_to_compact() is not None:
            self._promoter.wake()
        self.persist(report)
        self._parts.ops = 0
        self._last_maintain = self.clock()
        report.seconds = time.perf_counter() - started
        return report

    def _fit_topics(self) -> list[str]:
        fitted = []
        catalog = self.catalog
        for namespace, ns in list(catalog.namespaces.codes.items()):
            count = catalog.count_by_ns.get(ns, 0)
            model = self.topics.get(namespace)
            if count < self.config.topic_min_memories or (model is not None and count < 2 * model.fitted_on):
                continue
            slots = catalog.slots(namespace=ns)
            vectors = self._decoded(slots.tolist())
            model = TopicModel.fit(vectors, topics_for(count, self.config.topics_per_namespace))
            topics, _ = model.assign(vectors)
            with self._mutex:
                for slot, topic in zip(slots.tolist(), topics.tolist()):
                    catalog.set_topic(slot, topic)
            self.topics[namespace] = model
            self._topics_dirty.add(namespace)
            fitted.append(namespace)
        return fitted

    def _compact_graphs(self) -> int:
        """Rebuild, under the write lock, every graph whose tombstones outnumber its live nodes
        (without a background promoter; with one, it compacts in the background instead)."""
        compacted = 0
        for namespace, graph in list(self.warm.graphs.items()):
            if graph.needs_compaction:
                self._rebuild_graph(namespace, [self.catalog.slot_of[i] for i in graph.label_of])
                compacted += 1
        return compacted

    def _compact_one_in_background(self) -> bool:
        """Build a compacted copy of one graph without blocking searches, then swap it in.

        The copy is built from a snapshot taken under the shared lock; changes to the graph while
        it builds are logged (Graph.touched) and replayed on the copy under the write lock."""
        with self._rw.read:
            if self._parts.closed:
                return False
            graph = self._graph_to_compact()
            if graph is None:
                return False
            ids = list(graph.label_of)
            vectors = self._decoded([self.catalog.slot_of[i] for i in ids])
            graph.touched = set()
        fresh = self.warm.new_graph(graph.namespace)
        fresh.put_many(ids, vectors)  # hnswlib builds outside any lock: searches go on meanwhile
        with self._rw.write:
            touched, graph.touched = graph.touched or set(), None
            if self._parts.closed or self.warm.graphs.get(graph.namespace) is not graph:
                return True  # dropped or rebuilt meanwhile: this copy is stale
            catalog = self.catalog
            changed = [i for i in touched if i in graph.label_of]
            for memory_id in touched:
                if memory_id not in graph.label_of:
                    fresh.discard(memory_id)
            if changed:
                fresh.put_many(changed, self._decoded([catalog.slot_of[i] for i in changed]))
            self.warm.swap(fresh)
        log.info("compacted the warm graph of %r: %d live nodes", graph.namespace, len(fresh))
        return True

    def _graph_to_compact(self) -> Graph | None:
        """A graph that needs compaction and is not being compacted already."""
        return next((g for g in self.warm.graphs.values() if g.needs_compaction and g.touched is None), None)

    def _has_background_work(self) -> bool:
        return bool(self._pending) or bool(self._admitting) or self._parts.maintenance_due or \
            self._graph_to_compact() is not None or \
            self._cold_index_due() is not None or (self._shared_cold and bool(self._notified))

    def _background_work(self) -> bool:
        """One round of the background thread: pending promotions first, then due maintenance
        (unloads over the budget, decay, saves), then a compaction, then an on-disk index build
        (then, on a shared cold store, unloading what other processes changed)."""
        return self._drain_promotions() or self._admit_waiting() or self._background_maintenance() or \
            self._compact_one_in_background() or self._build_cold_index() is not None or \
            (self._shared_cold and self._drop_notified())

    # -- on-disk indexes of huge namespaces' cold parts -------------------------------------

    def _cold_index_due(self, only: str | None = None) -> str | None:
        """A loaded namespace whose unindexed cold rows call for a (re)build, if any."""
        minimum = self.config.cold_index_min_rows
        if self.read_only or not minimum or self._parts.closed or not self.cold_parts.available():
            return None
        blocks = self.catalog.blocks
        names = self.catalog.namespaces.names
        for ns, cold in list(blocks.cold_count.items()):
            if cold < minimum:
                continue
            namespace = names[ns]
            if (only is not None and namespace != only) or namespace not in self.registry.loaded:
                continue
            indexed = blocks.size_of((ns, INDEXED, True))
            if cold - indexed >= max(minimum, indexed // 8) and namespace not in self._sealed_namespaces and \
                    self.cold_parts.skipped.get(namespace) != cold:
                return namespace
        return None

    def index_cold(self, namespace: str) -> int:
        """See :meth:`TieredMemory.index_cold`."""
        self._parts.check_writable()
        check_label(namespace, "namespace")
        self.ensure_loaded([namespace])
        return self._build_cold_index(namespace, forced=True) or 0

    def _build_cold_index(self, namespace: str | None = None, forced: bool = False) -> int | None:
        """Snapshot a namespace's cold rows under the shared lock, build their index with no lock
        held (searches and writes go on), then install it under the exclusive lock, keeping only
        rows whose code is still the one indexed. Returns the rows installed, None if none was due."""
        if not self._cold_build_lock.acquire(blocking=forced):
            return None
        try:
            with self._rw.read:
                if self._parts.closed:
                    return None
                target = namespace if forced else self._cold_index_due()
                entry = self.registry.loaded.get(target) if target is not None else None
                if entry is None or not self.cold_parts.available() or self.read_only:
                    return None
                ns = entry.ns_id
                catalog = self.catalog
                blocks = [block for key, block in catalog.blocks.iter_namespace(ns) if key[2]]
                cold_count = sum(block.size for block in blocks)
                slots = np.concatenate([block.slots[: block.size] for block in blocks]) if blocks else \
                    np.zeros(0, dtype=np.int64)
                if not len(slots) or target in self._sealed_namespaces or \
                        np.asarray(catalog.sensitive)[slots].any():
                    self.cold_parts.skipped[target] = cold_count  # sealed rows never go to a file in clear
                    return 0 if forced else None
                codes = np.concatenate([block.codes[: block.size] for block in blocks])
                ids = [catalog.ids[slot] for slot in slots.tolist()]
                generation = self.cold.namespace_info(ns)[2]
                decode = quantizer_from_state(self.cold.quantizer.state()).decode
            started = time.perf_counter()
            config = self.config
            try:
                index = self.cold_parts.build(ns, ids, codes, decode, generation,
                                              threads=config.cold_index_build_threads,
                                              expansion_add=config.cold_index_expansion_add,
                                              expansion_search=config.cold_index_expansion)
            except (StorageError, OSError, RuntimeError, MemoryError) as err:
                log.error("building the cold index of %r failed (%s); its cold part stays scanned", target, err)
                self.cold_parts.skipped[target] = cold_count
                return 0 if forced else None
            del codes, ids
            with self._rw.write:
                if self._parts.closed or self.registry.loaded.get(target) is not entry:
                    index.close()  # unloaded meanwhile: the file is checked row by row at the next load
                    return 0
                installed = self._install_cold_index(target, ns, index)
            self.cold_parts.builds += 1
            self.cold_parts.build_seconds.append(time.perf_counter() - started)
            log.info("indexed %d cold memories of %r on disk in %.1f s", installed, target,
                     self.cold_parts.build_seconds[-1])
            return installed
        finally:
            self._cold_build_lock.release()

    def _install_cold_index(self, namespace: str, ns: int, index: Any) -> int:
        """Make the namespace's cold rows that the new index holds (same code) its indexed block,
        and every other cold row scanned. Caller holds the write lock."""
        catalog = self.catalog
        blocks = [block for key, block in catalog.blocks.iter_namespace(ns) if key[2]]
        if not blocks:
            index.close()
            return 0
        slots = np.concatenate([block.slots[: block.size] for block in blocks])
        codes = np.concatenate([block.codes[: block.size] for block in blocks])
        mask, keys = match_index(index, [catalog.ids[slot] for slot in slots.tolist()], codes)
        del codes
        chosen = set(slots[mask].tolist())
        topic = catalog.topic
        with self._mutex:
            catalog.blocks.regroup_cold(ns, lambda rows: [(ns, INDEXED, True) if slot in chosen else
                                                          (ns, topic[slot], True) for slot in rows.tolist()])
        self.cold_parts.attach(namespace, index, keys, slots[mask])
        return len(chosen)

    def _background_maintenance(self) -> bool:
        if not self._parts.maintenance_due:
            return False
        # The namespaces about to be unloaded are persisted first under the shared lock (their rows'
        # fsync, their graph files), so the exclusive part only drops them from RAM: with the whole
        # unload under the write lock, 17% of first recalls in the returning-users replay waited for
        # one (p50 16 ms; benchmarks/results/returning-users/).
        if not self.read_only:
            with self._rw.read:
                if self._parts.closed:
                    return False
                victims = set(self.registry.victims())
                if victims:
                    try:
                        self._persist_namespaces(victims, grow=False)
                    except lmdb.MapFullError:
                        pass  # the map must grow, which needs the exclusive lock: the unload below writes
        with self._rw.write:
            if self._parts.closed:
                return False
            return self._run_due_maintenance()

    def calibrate_if_due(self, incoming: np.ndarray) -> None:
        """Learn int8 ranges once the store (with this batch) reaches calibration_size memories,
        and again each time it has grown 8x since, up to a 50k sample."""
        quantizer = self.cold.quantizer
        total = len(self.cold) + len(incoming)
        if quantizer.calibrated:
            grown = 0 < self.calibrated_on < _CALIBRATION_SAMPLE_MAX and \
                total >= _RECALIBRATE_GROWTH * self.calibrated_on
            if not grown:
                return
        elif total < self.config.calibration_size:
            return
        # The sample is what is loaded plus the batch (namespaces load lazily): too few to fit on
        # (a batch synced into an unloaded namespace) waits for a later write.
        if len(self.catalog.slots()) + len(incoming) < max(2, self.config.calibration_size // 2):
            return
        self._recalibrate(incoming)

    def count_coded(self, vectors: np.ndarray) -> None:
        """Count the values of newly written codes, and those int8 clipped (drift triggers a refit)."""
        self._clipped += self.cold.quantizer.clip_rate(vectors) * vectors.size
        self._coded += vectors.size

    def _recalibrate_if_drifted(self) -> bool:
        if self._coded < 100 * self.dimension or self._clipped / self._coded <= self.config.drift_clip_rate:
            return False
        log.info("int8 clip rate %.4f over %.4f: re-calibrating", self._clipped / self._coded,
                 self.config.drift_clip_rate)
        self._recalibrate(np.zeros((0, self.dimension), dtype=np.float32))
        return True

    def _recalibrate(self, incoming: np.ndarray) -> None:
        """Fit int8 ranges on a sample of the loaded memories (originals when kept) plus `incoming`,
        re-encode every stored code in one transaction (streaming through the archive, loaded or
        not), and rebuild the loaded graphs. A crash leaves either the old codes and ranges or the
        new ones."""
        catalog = self.catalog
        slots = catalog.slots()
        ids = [catalog.ids[slot] for slot in slots.tolist()]
        originals = self.cold.originals(ids) if ids else None
        existing = originals if originals is not None else self._decoded(slots.tolist())
        everything = np.concatenate([existing, incoming]) if len(existing) else incoming
        rng = np.random.default_rng(len(everything))
        sample = everything
        if len(sample) > _CALIBRATION_SAMPLE_MAX:
            sample = sample[rng.choice(len(sample), _CALIBRATION_SAMPLE_MAX, replace=False)]
        quantizer = self.cold.quantizer
        old = quantizer_from_state(quantizer.state())
        fitted = quantizer_from_state(quantizer.state())
        fitted.fit(sample)
        # The new ranges commit with the codes they made, in one transaction: neither a crash nor
        # another writer sees codes of one quantizer beside the ranges of the other.
        previous, self.cold.quantizer = self.cold.quantizer, fitted
        try:
            self.cold.recode_all(fitted.encode, old.decode,
                                 then=[self.cold.quantizer_op(), self.cold.meta_op("calibrated_on", len(sample))])
        except BaseException:
            if self.cold.quantizer is fitted:  # (a shared store may have loaded another writer's instead)
                self.cold.quantizer = previous
            raise
        self.calibrated_on = len(sample)
        self._clipped = 0.0
        self._coded = 0
        codes = fitted.encode(existing) if len(existing) else np.zeros((0, self.dimension), dtype=np.int8)
        with self._mutex:
            for slot, code in zip(slots.tolist(), codes):
                catalog.set_code(slot, code)
        for namespace in list(self.warm.graphs):
            ns = catalog.namespaces.codes[namespace]
            self._rebuild_graph(namespace, catalog.slots(namespace=ns, tiers=(WARM, HOT)).tolist())

    def persist(self, report: MaintenanceReport) -> None:
        """Write changed statistics and topic models of every loaded namespace, then save graphs."""
        report.flushed = self._persist_namespaces(set(self.registry.loaded))

    def _persist_namespaces(self, namespaces: set[str], grow: bool = True) -> int:
        """Flush these namespaces' changed rows and topic models in one transaction, then save
        their graphs; returns how many rows were flushed. Records are not rewritten (statistics
        live in rows), so sealed blobs are sealed once per change, not once per flush (issue 11.12)."""
        catalog = self.catalog
        wanted = {catalog.namespaces.codes[name] for name in namespaces if name in catalog.namespaces.codes}
        with self._mutex:
            dirty = [slot for slot in catalog.dirty if catalog.ids[slot] is not None and catalog.ns[slot] in wanted]
            catalog.dirty.difference_update(dirty)
            rows = [(catalog.ns[slot], catalog.ids[slot], row_bytes(catalog, slot)) for slot in dirty]
        ops: list[Op] = [("rows", row_key(ns, memory_id), row) for ns, memory_id, row in rows]
        changed_models = [name for name in namespaces if name in self._topics_dirty]
        for namespace in changed_models:
            model = self.topics.get(namespace)
            if model is not None and namespace in catalog.namespaces.codes:
                ops.append(self._topics_op(namespace, catalog.namespaces.codes[namespace], model))
        if ops:
            try:
                self.cold.write(ops, grow=grow)
            except BaseException:
                with self._mutex:  # not written: still to flush
                    catalog.dirty.update(slot for slot in dirty if catalog.ids[slot] is not None)
                raise
            self._topics_dirty.difference_update(changed_models)
        generations = {name: self.cold.namespace_info(catalog.namespaces.codes[name])[2]
                       for name in namespaces if name in self.warm.graphs}
        try:
            self.warm.save_some(self.path / "warm", generations, self._quantizer_stamp(), namespaces)
        except OSError as err:  # disk full, a file where the warm/ folder should be, permissions
            raise StorageError(
                f"saving the warm index to {self.path / 'warm'} failed ({err}); every memory is safe in the "
                "cold tier and the index will be rebuilt from it at the next open. Free disk space and retry"
            ) from err
        return len(dirty)

    # -- hooks for prefetching -------------------------------------------------------------

    def promote(self, memory_ids: Iterable[str], tier: Tier = Tier.HOT) -> int:
        """See :meth:`TieredMemory.promote`."""
        self._parts.check_writable()
        if tier not in (Tier.WARM, Tier.HOT):
            raise InvalidInputError(f"promote() moves memories to 'warm' or 'hot', not {tier!r}")
        memory_ids = [i for i in dict.fromkeys(memory_ids) if isinstance(i, str)]
        with self._rw.write:
            self._parts.check_writable()
            catalog = self.catalog
            unloaded = [i for i in memory_ids if i not in catalog.slot_of]
            for record in self.cold.get_many(unloaded) if unloaded else []:
                if record is not None:
                    self.load(record.namespace)
            slots = [catalog.slot_of[i] for i in memory_ids if i in catalog.slot_of]
            cold = [slot for slot in slots if catalog.tier[slot] == COLD]
            by_namespace: dict[str, list[int]] = {}
            for slot in cold:
                by_namespace.setdefault(catalog.namespaces.names[catalog.ns[slot]], []).append(slot)
            for namespace, group in by_namespace.items():
                with self._mutex:
                    for slot in group:
                        catalog.set_tier(slot, WARM)
                        self._promotions["cold->warm"] += 1
                self._warm_put(namespace, group)
            moved = len(cold)
            touched = set(cold)
            if tier is Tier.HOT:
                warm = [slot for slot in slots if catalog.tier[slot] == WARM]
                moved += len(warm)
                touched.update(warm)
                self._fill_hot(warm, count=True)
            # Decay would still count a moved memory idle since its last real use, and the next
            # maintain() would send it straight back to cold, leaving an hnswlib tombstone: 3,007 of
            # 3,487 memories prefetched in `benchmarks/prefetch_replay.py --sessions 8 --memories
            # 20000 --hot-capacity 700 --warm-capacity 7000 --prefetch-hot 48 --no-locomo`. So the
            # idle clock restarts; the use count does not grow.
            now = self.clock()
            with self._mutex:
                for slot in touched:
                    if catalog.accessed[slot] < now:
                        catalog.accessed[slot] = now
                        catalog.dirty.add(slot)
            self.enforce_warm_capacity(protect=set(slots))
            return moved

    def nearest_topics(self, namespace: str, vector: np.ndarray, n: int = 1) -> list[int]:
        """See :meth:`TieredMemory.nearest_topics`."""
        self.ensure_loaded([namespace])
        model = self.topics.get(namespace)
        return [] if model is None else model.nearest(vector, n).tolist()

    def top_by_decay(self, namespace: str, topics: Iterable[int] | None = None, limit: int = 100,
                     exclude_tiers: tuple[Tier, ...] = (), near: np.ndarray | None = None,
                     near_weight: float = 1.0) -> list[str]:
        """See :meth:`TieredMemory.top_by_decay`."""
        self.ensure_loaded([namespace])
        with self._rw.read:
            catalog = self.catalog
            ns = catalog.namespaces.codes.get(namespace)
            if ns is None or namespace not in self.registry:
                return []
            slots = catalog.slots(namespace=ns)
            if topics is not None and len(slots):
                slots = slots[np.isin(np.asarray(catalog.topic)[slots], list(topics))]
            if exclude_tiers and len(slots):
                excluded = [TIER_CODES[tier] for tier in exclude_tiers]
                slots = slots[~np.isin(np.asarray(catalog.tier)[slots], excluded)]
            expired = catalog.expired(ns, self.clock)
            if expired and len(slots):
                slots = slots[~np.isin(slots, list(expired))]
            if not len(slots):
                return []
            slots, scores = self.decay_scores(slots)
            if near is not None:
                scores = scores + near_weight * (self._decoded(slots.tolist()) @ np.asarray(near, dtype=np.float32))
            order = np.argsort(-scores, kind="stable")[:limit]
            return [catalog.ids[slot] for slot in slots[order].tolist()]
