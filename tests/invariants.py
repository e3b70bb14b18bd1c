"""Invariants of a quiescent store, checked from the outside in (cold, catalog, warm, hot, stats).

Call :func:`check_invariants` when no operation is in flight. It reads every record and code from
LMDB and every live label from hnswlib, so keep the stores it checks small (thousands of rows).
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np

from tiered_memory import TieredMemory
from tiered_memory.namespaces.catalog import COLD, HOT, WARM
from tiered_memory.tiers.blocks import INDEXED


def invariant_violations(mem: TieredMemory) -> list[str]:
    """Every broken invariant, one line each (an empty list means the store is consistent)."""
    problems: list[str] = []
    if not mem.wait_idle(timeout=60):  # background promotions must land before we look
        problems.append("background promotions did not finish within 60 s")
    _catalog_against_cold(mem, problems)
    _code_blocks(mem, problems)
    _warm_graphs(mem, problems)
    _hot_tier(mem, problems)
    _stats(mem, problems)
    _expiry(mem, problems)
    return problems


def check_invariants(mem: TieredMemory) -> None:
    problems = invariant_violations(mem)
    assert not problems, "store invariants broken:\n  " + "\n  ".join(problems[:20])


def tier_sets(mem: TieredMemory) -> dict[int, set[str]]:
    """Ids per tier code, from the catalog's tier column."""
    catalog = mem.catalog
    out: dict[int, set[str]] = {COLD: set(), WARM: set(), HOT: set()}
    for memory_id, slot in catalog.slot_of.items():
        out[catalog.tier[slot]].add(memory_id)
    return out


def _catalog_against_cold(mem: TieredMemory, problems: list[str]) -> None:
    catalog = mem.catalog
    for memory_id, slot in catalog.slot_of.items():
        if catalog.ids[slot] != memory_id:
            problems.append(f"slot_of[{memory_id!r}] = {slot} but ids[{slot}] = {catalog.ids[slot]!r}")
    live = [i for i in catalog.ids if i is not None]
    if len(live) != len(catalog.slot_of):
        problems.append(f"{len(live)} live slots but {len(catalog.slot_of)} ids in slot_of")
    # Only loaded namespaces are in the catalog; the rest of the archive is cold and costs no RAM.
    records, codes = mem.cold.load_all()
    stored = {memory.id: (memory, code) for memory, code in zip(records, codes) if memory.namespace in mem.registry}
    loaded_ns = {catalog.namespaces.codes[name] for name in mem.registry.loaded}
    outside = sorted(i for i, slot in catalog.slot_of.items() if catalog.ns[slot] not in loaded_ns)[:5]
    if outside:
        problems.append(f"the catalog holds memories of namespaces that are not loaded: {outside}")
    if set(stored) != set(catalog.slot_of):
        only_cold = sorted(set(stored) - set(catalog.slot_of))[:5]
        only_catalog = sorted(set(catalog.slot_of) - set(stored))[:5]
        problems.append(f"cold and catalog disagree: only in cold {only_cold}, only in catalog {only_catalog}")
    names, kinds = catalog.namespaces.names, catalog.kinds.names
    for memory_id, (record, code) in stored.items():
        slot = catalog.slot_of.get(memory_id)
        if slot is None:
            continue
        seen = (names[catalog.ns[slot]], kinds[catalog.kind[slot]], catalog.version[slot], catalog.importance[slot])
        if seen != (record.namespace, record.kind, record.version, record.importance):
            problems.append(f"{memory_id}: catalog has (namespace, kind, version, importance) {seen}, "
                            f"cold has {(record.namespace, record.kind, record.version, record.importance)}")
        if slot in catalog.blocks.place and not np.array_equal(catalog.blocks.code(slot), code):
            problems.append(f"{memory_id}: the int8 code in RAM differs from the one in cold")
    by_ns = Counter(catalog.ns[slot] for slot in catalog.slot_of.values())
    for ns in set(by_ns) | {ns for ns, count in catalog.count_by_ns.items() if count}:
        if catalog.count_by_ns.get(ns, 0) != by_ns.get(ns, 0):
            problems.append(f"count_by_ns[{names[ns]!r}] = {catalog.count_by_ns.get(ns, 0)}, "
                            f"rows say {by_ns.get(ns, 0)}")
    by_kind = Counter((catalog.ns[slot], catalog.kind[slot]) for slot in catalog.slot_of.values())
    for key in set(by_kind) | {key for key, count in catalog.count_by_kind.items() if count}:
        if catalog.count_by_kind.get(key, 0) != by_kind.get(key, 0):
            problems.append(f"count_by_kind[{key}] = {catalog.count_by_kind.get(key, 0)}, "
                            f"rows say {by_kind.get(key, 0)}")


def _code_blocks(mem: TieredMemory, problems: list[str]) -> None:
    catalog, blocks = mem.catalog, mem.catalog.blocks
    live = set(catalog.slot_of.values())
    if set(blocks.place) != live:
        problems.append(f"code blocks place {len(blocks.place)} slots, the catalog has {len(live)} live ones")
    seen: set[int] = set()
    indexed_slots = {name: set(part.slot_by_key.tolist()) for name, part in mem.cold_parts.parts.items()}
    for key, block in blocks.blocks.items():
        for row, slot in enumerate(block.slots[: block.size].tolist()):
            if slot in seen:
                problems.append(f"slot {slot} has a code in two block rows")
            seen.add(slot)
            if blocks.place.get(slot) != (key, row):
                problems.append(f"block {key} row {row} holds slot {slot}, but place says {blocks.place.get(slot)}")
            if slot in live:
                expected = (catalog.ns[slot], catalog.topic[slot], catalog.tier[slot] == COLD)
                indexed = (catalog.ns[slot], INDEXED, True)
                if key == indexed and catalog.tier[slot] == COLD:
                    if slot not in indexed_slots.get(catalog.namespaces.names[catalog.ns[slot]], ()):
                        problems.append(f"slot {slot} ({catalog.ids[slot]}) sits in the indexed block, but no "
                                        "on-disk index of its namespace holds it")
                elif key != expected:
                    problems.append(f"slot {slot} ({catalog.ids[slot]}) sits in block {key}, expected {expected}")
    cold_rows = Counter(catalog.ns[slot] for slot in live if catalog.tier[slot] == COLD)
    for ns in set(cold_rows) | {ns for ns, count in blocks.cold_count.items() if count}:
        if blocks.cold_count.get(ns, 0) != cold_rows.get(ns, 0):
            problems.append(f"cold_count[{ns}] = {blocks.cold_count.get(ns, 0)}, cold rows {cold_rows.get(ns, 0)}")


def live_labels(graph) -> set[int]:
    """Labels hnswlib still serves (marked-deleted ones raise on get_items)."""
    live = set()
    for label in graph.index.get_ids_list():
        try:
            graph.index.get_items([label])
        except RuntimeError:
            continue
        live.add(int(label))
    return live


def _warm_graphs(mem: TieredMemory, problems: list[str]) -> None:
    # A namespace may have no graph (small ones are scanned exactly); one that has a graph must
    # hold in it exactly its warm and hot memories, as vectors equal to their decoded codes.
    catalog = mem.catalog
    names = catalog.namespaces.names
    expected: dict[str, set[str]] = {}
    for memory_id, slot in catalog.slot_of.items():
        if catalog.tier[slot] in (WARM, HOT):
            expected.setdefault(names[catalog.ns[slot]], set()).add(memory_id)
    total = 0
    for namespace, graph in mem.warm.graphs.items():
        total += len(graph)
        ids = set(graph.label_of)
        if {label: memory_id for memory_id, label in graph.label_of.items()} != graph.id_of:
            problems.append(f"warm graph {namespace!r}: label_of and id_of are not inverse maps")
        if ids != expected.get(namespace, set()):
            extra = sorted(ids - expected.get(namespace, set()))[:5]
            missing = sorted(expected.get(namespace, set()) - ids)[:5]
            problems.append(f"warm graph {namespace!r}: holds {extra} that are not warm/hot, lacks {missing}")
        orphans = live_labels(graph) ^ set(graph.id_of)
        if orphans:
            problems.append(f"warm graph {namespace!r}: hnswlib labels without a memory (or the reverse): "
                            f"{sorted(orphans)[:5]}")
        present = sorted(ids & set(catalog.slot_of))
        if present:
            stored = graph.vectors(present)
            decoded = mem.cold.quantizer.decode(catalog.blocks.codes([catalog.slot_of[i] for i in present]))
            differs = ~np.isclose(stored, decoded, atol=1e-5).all(axis=1)
            if differs.any():
                problems.append(f"warm graph {namespace!r}: {int(differs.sum())} vectors differ from the cold codes, "
                                f"e.g. {np.asarray(present)[differs][:3].tolist()}")
    if len(mem.warm) != total:
        problems.append(f"len(warm) = {len(mem.warm)} but the graphs hold {total}")


def _hot_tier(mem: TieredMemory, problems: list[str]) -> None:
    hot_ids = set(mem.hot.ids())
    expected = tier_sets(mem)[HOT]
    if hot_ids != expected:
        problems.append(f"hot LRU holds {sorted(hot_ids - expected)[:5]} not marked hot; "
                        f"lacks {sorted(expected - hot_ids)[:5]} marked hot")
    if len(mem.hot) > mem.config.hot_capacity:
        problems.append(f"hot tier holds {len(mem.hot)} > hot_capacity {mem.config.hot_capacity}")
    for memory_id in sorted(hot_ids & expected):
        entry = mem.hot.peek(memory_id)
        record = mem.cold.get(memory_id)
        if entry is None or record is None:
            continue
        cached = entry.memory
        if (cached.text, cached.kind, cached.namespace, cached.metadata) != \
                (record.text, record.kind, record.namespace, record.metadata):
            problems.append(f"{memory_id}: the hot copy differs from the cold record")
        # The hot vector is the float original or the decoded int8 code (which may be clipped, or
        # decoded under ranges since re-calibrated): the same direction, not the same numbers.
        stored = mem.cold.vector(memory_id)
        if stored is not None and _cosine(entry.vector, stored) < 0.9:
            problems.append(f"{memory_id}: the hot vector points elsewhere than the cold one")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)


def _stats(mem: TieredMemory, problems: list[str]) -> None:
    stats = mem.stats()
    tiers = tier_sets(mem)
    counts = (stats.memories, stats.cold.count, stats.warm.count, stats.hot.count)
    total = len(mem.cold)
    expected = (total, total, len(tiers[WARM]) + len(tiers[HOT]), len(tiers[HOT]))
    if counts != expected:
        problems.append(f"stats (memories, cold, warm, hot) = {counts}, tiers say {expected}")
    if sum(len(ids) for ids in tiers.values()) != len(mem.catalog):
        problems.append("tier accounting does not add up to the number of loaded memories")
    if stats.loaded["loaded"] != len(mem.registry) or stats.loaded["bytes"] > 0 and not len(mem.registry):
        problems.append(f"stats report {stats.loaded} loaded namespaces, the registry has {len(mem.registry)}")


def _expiry(mem: TieredMemory, problems: list[str]) -> None:
    # The catalog's expiry column agrees with the rows in cold, its per-namespace sets hold exactly
    # the slots that expire, and each namespace's stored bound is at most any of its expiries
    # (so that counts and the sweep, which trust the bound, never miss an expired memory).
    catalog = mem.catalog
    records, _ = mem.cold.load_all()
    bounds = mem.cold.expiry_bounds()
    for record in records:
        slot = catalog.slot_of.get(record.id)
        if slot is not None and record.namespace in mem.registry:
            in_catalog = None if catalog.expires[slot] == math.inf else catalog.expires[slot]
            if in_catalog != record.expires_at:
                problems.append(f"{record.id}: catalog expires_at {in_catalog}, cold row {record.expires_at}")
            if (in_catalog is not None) != (slot in catalog.expiring.get(catalog.ns[slot], set())):
                problems.append(f"{record.id}: expiring sets disagree with its expiry {in_catalog}")
        if record.expires_at is not None:
            ns = mem.cold.namespace_id(record.namespace)
            if bounds.get(ns, math.inf) > record.expires_at:
                problems.append(f"{record.id} expires at {record.expires_at}, before its namespace's bound "
                                f"{bounds.get(ns, math.inf)}")
    if not mem.read_only and mem._expiry.bounds() != bounds:
        problems.append(f"expiry bounds in RAM {mem._expiry.bounds()} differ from those in cold {bounds}")
    for ns, slots in catalog.expiring.items():
        stale = [slot for slot in slots if catalog.ids[slot] is None or catalog.ns[slot] != ns
                 or catalog.expires[slot] == math.inf]
        if stale:
            problems.append(f"expiring[{ns}] holds slots that are free, elsewhere or never expire: {stale[:5]}")
    stats = mem.stats()
    if len(mem) != stats.memories - stats.expired or stats.expired < 0:
        problems.append(f"len() = {len(mem)} but stats say {stats.memories} stored, {stats.expired} expired")


class LoggedErrors(logging.Handler):
    """Collects ERROR records of tiered_memory (background threads log what they cannot raise)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        detail = f": {record.exc_info[1]!r}" if record.exc_info else ""
        self.messages.append(f"{record.name}: {record.getMessage()}{detail}")

    def __enter__(self) -> LoggedErrors:
        logging.getLogger("tiered_memory").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("tiered_memory").removeHandler(self)
