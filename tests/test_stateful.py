"""Model-based fuzzing: hypothesis drives the public API with random sequences of operations and
compares every answer with a plain in-memory model that searches exactly (numpy brute force).

Scores from the store come from int8 codes, so they may differ from the model's float scores by
the quantization error; a search is correct when it returns as many memories as the model says
are eligible, each one eligible, each score within SCORE_TOLERANCE of its exact score, and none
worse than the model's k-th best by more than twice that (ties count). With exact scans (small
namespaces, the default) every search must be correct; through the warm hnswlib graph
(exact_search_max=0), at least MIN_APPROXIMATE_RECALL of the expected results must come back.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tiered_memory import MemoryNotFoundError, Tier, TieredMemory

from .conftest import DIM, FakeClock
from .invariants import check_invariants

SCORE_TOLERANCE = 0.03  # int8 codes: at most half a step (0.0035) per coordinate, summed over |q|
MIN_APPROXIMATE_RECALL = 0.95
NAMESPACES = ("ns/a", "ns/b")
KINDS = ("fact", "preference")
STORE_SETTINGS: dict[str, Any] = dict(hot_capacity=3, warm_capacity=6, durability="async",
                                      promote_in_background=False, half_life_s=3_600.0)
FUZZ_SETTINGS = settings(max_examples=25, stateful_step_count=30, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow])


def seeded_vector(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


@dataclass
class Modelled:
    namespace: str
    text: str
    kind: str
    metadata: dict[str, Any]
    importance: float
    vector: np.ndarray
    version: int = 1


@dataclass
class FuzzFigures:
    """Counts over every machine run in this process (read by benchmarks/reliability.py)."""

    runs: int = 0
    steps: int = 0
    searches: int = 0
    expected_results: int = 0
    returned_expected: int = 0
    rules: dict[str, int] = field(default_factory=dict)


FIGURES = FuzzFigures()

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda text: text.strip() != "")
seeds = st.integers(0, 2**32 - 1)
metadata = st.fixed_dictionaries({"n": st.integers(-5, 5)}, optional={"tag": st.sampled_from(["x", "y", "é"])})


class StoreMachine(RuleBasedStateMachine):
    """The store against the model; subclasses change the search path."""

    extra_settings: dict[str, Any] = {}
    exact = True

    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="tm-fuzz-"))
        self.clock = FakeClock()
        self.mem = self._open()
        self.model: dict[str, Modelled] = {}
        self.counter = 0
        FIGURES.runs += 1

    def _open(self) -> TieredMemory:
        return TieredMemory(self.directory / "store", encoder=None, dimension=DIM, clock=self.clock, dedup=False,
                            **STORE_SETTINGS, **self.extra_settings)

    def _count(self, rule_name: str) -> None:
        FIGURES.steps += 1
        FIGURES.rules[rule_name] = FIGURES.rules.get(rule_name, 0) + 1

    def teardown(self) -> None:
        self.mem.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- writes ----------------------------------------------------------------------------

    @rule(target=ids, text=texts, namespace=st.sampled_from(NAMESPACES), kind=st.sampled_from(KINDS),
          meta=metadata, importance=st.floats(0, 1), seed=seeds)
    def add(self, text: str, namespace: str, kind: str, meta: dict[str, Any], importance: float, seed: int) -> str:
        self._count("add")
        vector = seeded_vector(seed)
        memory_id = self.mem.add(text, namespace=namespace, kind=kind, metadata=meta, importance=importance,
                                 vector=vector)
        self.model[memory_id] = Modelled(namespace, text, kind, meta, importance, vector)
        return memory_id

    @rule(target=ids, items=st.lists(st.tuples(texts, seeds), min_size=2, max_size=5),
          namespace=st.sampled_from(NAMESPACES))
    def add_many(self, items: list[tuple[str, int]], namespace: str) -> Any:
        self._count("add_many")
        self.counter += 1
        ids = [f"batch{self.counter}-{i}" for i in range(len(items))]
        vectors = np.stack([seeded_vector(seed) for _, seed in items])
        self.mem.add_many([text for text, _ in items], namespace=namespace, vectors=vectors, ids=ids,
                          metadata={"n": 0})
        for memory_id, (text, _), vector in zip(ids, items, vectors):
            self.model[memory_id] = Modelled(namespace, text, "fact", {"n": 0}, 0.5, vector)
        return multiple(*ids)

    @rule(memory_id=ids, text=st.none() | texts, seed=seeds, meta=st.none() | metadata,
          importance=st.none() | st.floats(0, 1), kind=st.none() | st.sampled_from(KINDS))
    def update(self, memory_id: str, text: str | None, seed: int, meta: dict[str, Any] | None,
               importance: float | None, kind: str | None) -> None:
        self._count("update")
        vector = seeded_vector(seed) if text is not None else None
        memory = self.mem.update(memory_id, text=text, vector=vector, metadata=meta, importance=importance, kind=kind)
        modelled = self.model[memory_id]
        modelled.text = text if text is not None else modelled.text
        modelled.vector = vector if vector is not None else modelled.vector
        modelled.metadata = meta if meta is not None else modelled.metadata
        modelled.importance = importance if importance is not None else modelled.importance
        modelled.kind = kind if kind is not None else modelled.kind
        modelled.version += 1
        assert memory.version == modelled.version

    @rule(memory_id=consumes(ids))
    def delete(self, memory_id: str) -> None:
        self._count("delete")
        self.mem.delete(memory_id)
        del self.model[memory_id]
        with pytest.raises(MemoryNotFoundError):
            self.mem.get(memory_id)

    # -- reads -----------------------------------------------------------------------------

    @rule(memory_id=ids)
    def get(self, memory_id: str) -> None:
        self._count("get")
        memory = self.mem.get(memory_id)
        modelled = self.model[memory_id]
        assert (memory.namespace, memory.text, memory.kind, memory.metadata, memory.importance, memory.version) == \
            (modelled.namespace, modelled.text, modelled.kind, modelled.metadata, modelled.importance,
             modelled.version)

    @rule(memory_id=st.text(min_size=1, max_size=20).filter(lambda text: not text.startswith("batch")))
    def get_unknown(self, memory_id: str) -> None:
        self._count("get_unknown")
        if memory_id not in self.model:
            with pytest.raises(MemoryNotFoundError):
                self.mem.get(memory_id)

    @rule(seed=seeds, namespaces=st.lists(st.sampled_from(NAMESPACES), min_size=1, max_size=2, unique=True),
          k=st.integers(1, 8), kinds=st.none() | st.lists(st.sampled_from(KINDS), min_size=1, unique=True),
          at_least=st.none() | st.integers(-5, 5))
    def search(self, seed: int, namespaces: list[str], k: int, kinds: list[str] | None, at_least: int | None) -> None:
        self._count("search")
        query = seeded_vector(seed)
        where = None if at_least is None else {"n": {"$gte": at_least}}
        hits = self.mem.search(vector=query, namespace=namespaces, k=k, kinds=kinds, where=where)
        eligible = {memory_id: float(modelled.vector @ query) for memory_id, modelled in self.model.items()
                    if modelled.namespace in namespaces and (kinds is None or modelled.kind in kinds)
                    and (at_least is None or modelled.metadata.get("n", -99) >= at_least)}
        returned = [hit.memory.id for hit in hits]
        assert len(set(returned)) == len(returned), f"duplicate hits {returned}"
        for hit in hits:
            assert hit.memory.id in eligible, f"{hit.memory.id} is deleted, filtered out or in another namespace"
            assert abs(hit.score - eligible[hit.memory.id]) <= SCORE_TOLERANCE, (hit.score, eligible[hit.memory.id])
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
        expected = min(k, len(eligible))
        kth = sorted(eligible.values(), reverse=True)[expected - 1] if expected else 0.0
        good = [i for i in returned if eligible[i] >= kth - 2 * SCORE_TOLERANCE]
        FIGURES.searches += 1
        FIGURES.expected_results += expected
        FIGURES.returned_expected += min(len(good), expected)
        if self.exact:
            assert len(returned) == expected and len(good) == expected, (returned, eligible)

    # -- tiers and lifecycle -----------------------------------------------------------------

    @rule(memory_ids=st.lists(ids, max_size=4), hot=st.booleans())
    def promote(self, memory_ids: list[str], hot: bool) -> None:
        self._count("promote")
        self.mem.promote(memory_ids, tier=Tier.HOT if hot else Tier.WARM)

    @rule(seconds=st.sampled_from([0.0, 600.0, 36_000.0, 3_600_000.0]))
    def maintain(self, seconds: float) -> None:
        self._count("maintain")
        self.clock.tick(seconds)
        self.mem.maintain()

    @rule(draw=st.integers(0, 4))
    def reopen(self, draw: int) -> None:
        # Drawn as often as any other rule, but reopens one time in five: every reopen re-reads
        # the store, and the other rules need the steps more.
        if draw == 0:
            self._count("reopen")
            self.mem.close()
            self.mem = self._open()

    @precondition(lambda self: len(self.model) > 0)
    @invariant()
    def agrees_with_the_model(self) -> None:
        assert len(self.mem) == len(self.model)
        assert set(self.mem.ids()) == set(self.model)
        check_invariants(self.mem)


class ApproximateStoreMachine(StoreMachine):
    """Every namespace searched through its warm graph plus a scan of its cold codes."""

    extra_settings = {"exact_search_max": 0}
    exact = False


class TinyBudgetStoreMachine(StoreMachine):
    """A warm budget of a few memories' rows: namespaces load and unload all the time, and every
    answer must still be the exact model's."""

    extra_settings = {"warm_budget_bytes": 4_000}


def run_fuzz(machine: type[StoreMachine], examples: int, steps: int, derandomize: bool = False) -> None:
    """Run one machine (used by the tests below and by benchmarks/reliability.py)."""
    run_state_machine_as_test(machine, settings=settings(FUZZ_SETTINGS, max_examples=examples,
                                                         stateful_step_count=steps, derandomize=derandomize))


def test_public_api_agrees_with_an_exact_model() -> None:
    run_fuzz(StoreMachine, examples=25, steps=30)


def test_approximate_search_agrees_with_an_exact_model_within_recall() -> None:
    before = (FIGURES.expected_results, FIGURES.returned_expected)
    # A fixed series of examples: a random one could (rarely: once in ~25 runs) make no search
    # with an expected result, and then measure nothing. Every other check still runs on it.
    run_fuzz(ApproximateStoreMachine, examples=15, steps=30, derandomize=True)
    expected = FIGURES.expected_results - before[0]
    returned = FIGURES.returned_expected - before[1]
    assert expected > 0 and returned / expected >= MIN_APPROXIMATE_RECALL, (returned, expected)


def test_namespaces_loading_and_unloading_under_a_tiny_budget_agree_with_the_model() -> None:
    run_fuzz(TinyBudgetStoreMachine, examples=15, steps=30)


@pytest.mark.slow
def test_public_api_agrees_with_an_exact_model_at_length() -> None:
    run_fuzz(StoreMachine, examples=300, steps=60)
    run_fuzz(ApproximateStoreMachine, examples=150, steps=60)
