"""Eight threads add, search, get, update, delete, promote and maintain one store at once.

Each thread owns the memories it adds (only it updates or deletes them) and reads everyone's.
During the run: no unexpected exception, a search never returns a memory whose delete had
returned before the search began, a base memory (never changed) is always found by its own
vector. After it: every thread's memories hold what it last wrote, and the store's invariants
hold, before and after a reopen.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiered_memory import MemoryNotFoundError, Tier, TieredMemory

from .conftest import DIM, unit_rows
from .invariants import LoggedErrors, check_invariants, invariant_violations

NAMESPACES = ("team/a", "team/b")
BASE_PER_NAMESPACE = 120
# Small tiers so that promotions and capacity demotions happen all the time; automatic
# maintenance every 150 operations, inside whichever thread crosses the bound.
SETTINGS: dict[str, Any] = dict(
    hot_capacity=16, warm_capacity=64, exact_search_max=16, maintain_every_ops=150, calibration_size=64,
    topic_min_memories=128, half_life_s=86_400.0, durability="async",
)
SECONDS_PER_READING = 10.0  # the store's clock moves 10 s each time it is read: memories decay in the run


@dataclass
class ConcurrencyReport:
    threads: int = 0
    seconds: float = 0.0
    operations: dict[str, int] = field(default_factory=dict)
    unexpected_errors: list[str] = field(default_factory=list)
    deleted_returned: int = 0  # searches that returned a memory deleted before they began
    base_missed: int = 0  # searches for a base memory's own vector that did not return it
    content_mismatches: int = 0
    invariant_violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Shared:
    """What the threads know about each other: logical time and deletions."""

    def __init__(self) -> None:
        self.ticks = itertools.count()  # next() is atomic under the GIL
        self.lock = threading.Lock()
        self.delete_begun: set[str] = set()
        self.delete_done: dict[str, int] = {}  # id -> tick after delete() returned
        self.readable: list[str] = []  # ids any thread may read (some get deleted later)
        self.errors: list[str] = []


def _vector(rng: random.Random) -> np.ndarray:
    vector = np.array([rng.gauss(0, 1) for _ in range(DIM)], dtype=np.float32)
    return vector / np.linalg.norm(vector)


def _worker(mem: TieredMemory, number: int, deadline: float, shared: _Shared, base: dict[str, tuple[str, np.ndarray]],
            owned: dict[str, tuple[str, dict[str, Any], int]], counts: Counter, report: ConcurrencyReport) -> None:
    rng = random.Random(number)
    base_ids = sorted(base)
    sequence = 0
    while time.monotonic() < deadline:
        sequence += 1
        roll = rng.random()
        try:
            if roll < 0.25 or len(owned) < 3:
                namespace = rng.choice(NAMESPACES)
                count = 1 if rng.random() < 0.8 else rng.randint(2, 8)
                ids = [f"t{number}-{sequence}-{j}" for j in range(count)]
                texts = [f"thread {number} memory {memory_id}" for memory_id in ids]
                metadata = [{"thread": number, "seq": sequence} for _ in ids]
                mem.add_many(texts, namespace=namespace, metadata=metadata, ids=ids,
                             vectors=np.stack([_vector(rng) for _ in ids]))
                for memory_id, text, meta in zip(ids, texts, metadata):
                    owned[memory_id] = (text, meta, 1)
                with shared.lock:
                    shared.readable.extend(ids)
                counts["add"] += 1
            elif roll < 0.37:
                memory_id = rng.choice(sorted(owned))
                text, meta, version = owned[memory_id]
                if rng.random() < 0.5:
                    text = f"thread {number} memory {memory_id} v{version + 1}"
                    mem.update(memory_id, text=text, vector=_vector(rng))
                else:
                    meta = {"thread": number, "seq": sequence, "updated": True}
                    mem.update(memory_id, metadata=meta)
                owned[memory_id] = (text, meta, version + 1)
                counts["update"] += 1
            elif roll < 0.47:
                memory_id = rng.choice(sorted(owned))
                with shared.lock:
                    shared.delete_begun.add(memory_id)
                mem.delete(memory_id)
                del owned[memory_id]
                with shared.lock:
                    shared.delete_done[memory_id] = next(shared.ticks)
                counts["delete"] += 1
            elif roll < 0.67:
                with shared.lock:
                    memory_id = rng.choice(shared.readable)
                try:
                    memory = mem.get(memory_id)
                    if memory.id != memory_id:
                        shared.errors.append(f"get({memory_id!r}) returned {memory.id!r}")
                except MemoryNotFoundError:
                    with shared.lock:
                        if memory_id not in shared.delete_begun:
                            shared.errors.append(f"get({memory_id!r}) raised MemoryNotFoundError; never deleted")
                counts["get"] += 1
            elif roll < 0.94:
                target = rng.choice(base_ids)
                namespace, vector = base[target]
                began = next(shared.ticks)
                hits = mem.search(vector=vector, namespace=namespace, k=5)
                ids = [hit.memory.id for hit in hits]
                with shared.lock:
                    gone = [i for i in ids if shared.delete_done.get(i, began) < began]
                    if gone:
                        report.deleted_returned += 1
                        shared.errors.append(f"search returned {gone}, deleted before it began")
                    report.base_missed += target not in ids
                counts["search"] += 1
            elif roll < 0.985:
                mem.promote(rng.sample(base_ids, 5), tier=rng.choice([Tier.WARM, Tier.HOT]))
                counts["promote"] += 1
            else:
                mem.maintain()
                counts["maintain"] += 1
        except Exception as err:  # any exception is a finding: keep it and go on
            shared.errors.append(f"thread {number}: {type(err).__name__}: {err}")


def run_concurrency(path: Path, threads: int = 8, seconds: float = 4.0, seed: int = 0) -> ConcurrencyReport:
    """Run the mixed workload; returns the figures (the caller asserts on them)."""
    started = time.monotonic()
    readings = itertools.count()

    def ticking_clock() -> float:
        return 1_700_000_000.0 + next(readings) * SECONDS_PER_READING

    mem = TieredMemory(path, encoder=None, dimension=DIM, clock=ticking_clock, **SETTINGS)
    base: dict[str, tuple[str, np.ndarray]] = {}
    for i, namespace in enumerate(NAMESPACES):
        # Unclustered: a memory's own vector then beats every other by a margin far above the
        # int8 error, so "search finds it" tests the tiers, not quantization recall.
        vectors = np.random.default_rng(seed + i).standard_normal((BASE_PER_NAMESPACE, DIM)).astype(np.float32)
        ids = mem.add_many([f"base {namespace} {j}" for j in range(BASE_PER_NAMESPACE)], namespace=namespace,
                           vectors=vectors, ids=[f"base-{i}-{j}" for j in range(BASE_PER_NAMESPACE)],
                           importance=1.0)
        base.update({memory_id: (namespace, vector) for memory_id, vector in zip(ids, vectors)})
    shared = _Shared()
    shared.readable.extend(base)
    report = ConcurrencyReport(threads=threads)
    owned: list[dict[str, tuple[str, dict[str, Any], int]]] = [{} for _ in range(threads)]
    counts: list[Counter] = [Counter() for _ in range(threads)]
    deadline = time.monotonic() + seconds
    workers = [threading.Thread(target=_worker, args=(mem, n, deadline, shared, base, owned[n], counts[n], report))
               for n in range(threads)]
    with LoggedErrors() as logged:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=seconds + 120)
        mem.wait_idle(timeout=60)
    shared.errors.extend(logged.messages)  # from the store's background thread
    if any(worker.is_alive() for worker in workers):
        shared.errors.append("a worker did not finish: deadlock?")
    report.seconds = round(time.monotonic() - started, 1)
    report.operations = dict(sum(counts, Counter()))
    report.unexpected_errors = shared.errors
    for _ in range(2):  # as left by the threads, then after a clean close and reopen
        for memory_id, (text, meta, version) in [item for table in owned for item in table.items()]:
            memory = mem.get(memory_id)
            if (memory.text, memory.metadata, memory.version) != (text, meta, version):
                report.content_mismatches += 1
        for memory_id in shared.delete_done:
            report.content_mismatches += memory_id in mem
        expected = len(base) + sum(len(table) for table in owned)
        if len(mem) != expected:
            report.invariant_violations.append(f"{len(mem)} memories, expected {expected}")
        report.invariant_violations.extend(invariant_violations(mem))
        mem.close()
        mem = TieredMemory(path, encoder=None, dimension=DIM, clock=ticking_clock, **SETTINGS)
    mem.close()
    return report


def _check(report: ConcurrencyReport) -> None:
    assert report.unexpected_errors == [], "\n".join(report.unexpected_errors[:20])
    assert report.invariant_violations == [], "\n".join(report.invariant_violations[:20])
    assert report.deleted_returned == 0 and report.content_mismatches == 0
    # Base memories never change, so searching one's own vector must return one (unclustered
    # vectors: it beats every other by far more than the int8 error).
    assert report.base_missed == 0, report


def test_eight_threads_mixing_every_operation(tmp_path: Path) -> None:
    report = run_concurrency(tmp_path / "store", threads=8, seconds=4.0)
    _check(report)
    operations = report.operations
    assert all(operations.get(name, 0) > 0 for name in ("add", "update", "delete", "get", "search", "maintain")), \
        operations


@pytest.mark.slow
def test_eight_threads_for_a_minute(tmp_path: Path) -> None:
    _check(run_concurrency(tmp_path / "store", threads=8, seconds=60.0, seed=1))


def test_the_invariant_checker_sees_planted_faults(open_store) -> None:
    """The checks above can fail: each planted inconsistency is reported."""
    mem = open_store(hot_capacity=4, warm_capacity=8, exact_search_max=4)
    ids = mem.add_many([f"m{i}" for i in range(20)], vectors=unit_rows(20))
    mem.get(ids[-1])
    check_invariants(mem)
    graph = mem.warm.graphs["default"]
    victim = next(iter(graph.label_of))
    graph.discard(victim)  # an index entry lost: warm and catalog disagree, hnswlib label orphaned
    assert any("lacks" in problem for problem in invariant_violations(mem))
    graph.put_many([victim], mem.cold.quantizer.decode(mem.catalog.blocks.codes([mem.catalog.slot_of[victim]])))
    assert invariant_violations(mem) == []
    mem.hot.discard(ids[-1])  # hot accounting broken
    assert any("marked hot" in problem for problem in invariant_violations(mem))


def test_warm_memory_stays_reachable_through_demote_promote_cycles(open_store, clock, monkeypatch) -> None:
    """Found by the concurrency run (base memories missing from their own searches); reproduced
    here in one thread. Every promote() pushes the lowest-scoring warm memories to cold (a
    tombstone each) and re-inserts the promoted ones (into tombstone slots)."""
    monkeypatch.setattr("os.cpu_count", lambda: 1)  # hnswlib inserts in one thread: the same graph every run
    mem = open_store(exact_search_max=0, warm_capacity=64, hot_capacity=1, durability="async",
                     promote_in_background=False)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((96, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = mem.add_many([f"m{i}" for i in range(96)], vectors=vectors, ids=[f"m{i}" for i in range(96)])
    choose = random.Random(0)
    for _ in range(1272):
        clock.tick(60)
        mem.promote(choose.sample(ids, choose.randint(1, 3)), tier=Tier.WARM)
    graph = mem.warm.graphs["default"]
    graph.index.set_ef(graph.index.element_count)  # an exhaustive beam: only unreachable nodes are missed
    unreachable = [memory_id for memory_id, vector in zip(ids, vectors) if memory_id in graph.label_of
                   and graph.id_of.get(int(graph.index.knn_query(vector, k=1)[0][0][0])) != memory_id]
    graph.index.set_ef(mem.config.hnsw_ef_search)
    not_found = [memory_id for memory_id in unreachable
                 if memory_id not in [hit.memory.id for hit in mem.search(vector=vectors[ids.index(memory_id)], k=5)]]
    assert unreachable == [] and not_found == []


def test_background_compaction_of_a_graph_with_no_live_node(open_store, caplog) -> None:
    """Found by the long crash run: a namespace whose memories were all deleted leaves a graph of
    tombstones only; compacting it in the background must not fail (it used to raise IndexError
    inside the promoter thread, logged and swallowed, leaving the graph marked as being rebuilt)."""
    mem = open_store(exact_search_max=0, warm_capacity=4_096, hot_capacity=8, durability="async",
                     promote_in_background=True)
    ids = mem.add_many([f"g{i}" for i in range(1_100)], vectors=unit_rows(1_100, seed=3), namespace="gone")
    mem.add_many([f"k{i}" for i in range(10)], vectors=unit_rows(10, seed=4), namespace="kept")
    for memory_id in ids:
        mem.delete(memory_id)
    with caplog.at_level(logging.ERROR, logger="tiered_memory"):
        mem.maintain()  # wakes the background compaction
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not caplog.records:
            graph = mem.warm.graphs.get("gone")
            if graph is None or graph.tombstones == 0:
                break
            time.sleep(0.02)  # the compaction runs in the promoter thread; wait_idle() covers promotions only
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    graph = mem.warm.graphs.get("gone")
    assert graph is None or (graph.tombstones == 0 and graph.touched is None)
    check_invariants(mem)
