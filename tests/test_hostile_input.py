"""Strange but valid input is stored exactly and found; hostile input gets a specific error and
changes nothing. Complements tests/test_errors.py (basic bad values) with extremes: texts at the
size limit, odd Unicode everywhere a string goes, metadata at its limits or built to hurt
(deep, cyclic, wide), vectors of extreme magnitude or the wrong type, filters nested to blow
the stack.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from tiered_memory import (
    DimensionMismatchError,
    InvalidFilterError,
    InvalidInputError,
    InvalidVectorError,
    MetadataError,
    TextTooLargeError,
    TieredMemory,
    TieredMemoryError,
)

from .conftest import DIM, unit_rows
from .invariants import check_invariants

GOOD = unit_rows(1, seed=7)[0]

ODD_TEXTS = [
    "nul \x00 inside",
    "\x00",
    "\u200b\u200b",  # zero-width spaces only: not white space to str.strip()
    "right-to-left \u202e override \u202c and \u05e9\u05dc\u05d5\u05dd",
    "combining e\u0301 vs \u00e9",  # not normalized: stored as given
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467 flag \U0001f1eb\U0001f1f7",
    "\ufeffbyte order mark",
    "astral \U00010348 \U0001d11e",
    "tabs\tand\r\nnewlines\u2028\u2029",
    "\U0010ffff max code point",
]
ODD_LABELS = ["../../etc/passwd", "名前空間/🙂", "a\x00b", "C:\\windows", " ", "\u202e", "x" * 256]
ODD_IDS = ["../../x", "id with spaces", "\x00", "é" * 128, "🙂" * 120]


def snapshot(mem: TieredMemory) -> tuple:
    """Everything a refused call must leave as it was: records, codes, generation, tiers."""
    records, codes = mem.cold.load_all()
    return (mem.cold.meta_get("generation"), len(mem),
            sorted((m.id, m.text, repr(m.metadata), m.version) for m in records), codes.tobytes(),
            sorted(mem.hot.ids()), sorted(mem.warm.ids()))


@pytest.fixture
def store(open_store):
    mem = open_store(hot_capacity=4, warm_capacity=8)
    mem.add_many([f"m{i}" for i in range(12)], vectors=unit_rows(12), metadata={"k": 1})
    return mem


def _reopened(mem: TieredMemory, open_store) -> TieredMemory:
    mem.close()
    return open_store(mem.path, hot_capacity=4, warm_capacity=8)


# -- valid extremes: stored exactly, found, survive a reopen -----------------------------------


@pytest.mark.parametrize("text", ODD_TEXTS, ids=range(len(ODD_TEXTS)))
def test_odd_unicode_text_is_stored_byte_exact(store, open_store, text: str) -> None:
    vector = unit_rows(1, seed=len(text))[0]
    memory_id = store.add(text, vector=vector, metadata={text: text})
    again = _reopened(store, open_store)
    memory = again.get(memory_id)
    assert memory.text == text and memory.metadata == {text: text}
    assert again.search(vector=vector, k=1)[0].memory.id == memory_id


@pytest.mark.parametrize("label", ODD_LABELS, ids=range(len(ODD_LABELS)))
def test_odd_namespaces_and_kinds_stay_inside_the_store(open_store, tmp_path: Path, label: str) -> None:
    mem = open_store(exact_search_max=0)  # every namespace gets a graph file
    vectors = unit_rows(20, seed=3)
    ids = mem.add_many([f"t{i}" for i in range(20)], namespace=label, kind=label, vectors=vectors)
    mem.maintain()  # saves the warm graph: its file name must not come from the label
    assert {p.parent for p in (tmp_path / "store").rglob("*") if p.is_file()} <= \
        {tmp_path / "store", tmp_path / "store" / "cold", tmp_path / "store" / "warm"}
    again = _reopened(mem, open_store)
    assert again.namespaces() == [label]
    hit = again.search(vector=vectors[5], namespace=label, kinds=[label], k=1)[0]
    assert hit.memory.id == ids[5] and hit.memory.kind == label


@pytest.mark.parametrize("memory_id", ODD_IDS, ids=range(len(ODD_IDS)))
def test_odd_ids_work_as_keys(store, open_store, memory_id: str) -> None:
    store.add("odd id", vector=GOOD, id=memory_id)
    store.update(memory_id, metadata={"u": 1})
    again = _reopened(store, open_store)
    assert again.get(memory_id).metadata == {"u": 1}
    again.delete(memory_id)
    assert memory_id not in again


def test_a_text_at_the_default_limit_round_trips(open_store) -> None:
    mem = open_store()
    text = "\U0001f600" * mem.config.max_text_chars  # 4 MB of UTF-8 in one record
    memory_id = mem.add(text, vector=GOOD)
    before = snapshot(mem)
    with pytest.raises(TextTooLargeError, match="max_text_chars=1,000,000"):
        mem.add(text + "!", vector=GOOD)
    assert snapshot(mem) == before
    again = _reopened(mem, open_store)
    assert again.get(memory_id).text == text


def test_metadata_at_its_limits(store) -> None:
    limit = store.config.max_metadata_bytes
    wide = {f"k{i}": i for i in range(1000)}
    while len(msgpack.packb(wide)) < limit - 40:
        wide[f"k{len(wide)}"] = "v" * 30
    memory_id = store.add("wide", vector=GOOD, metadata=wide)
    assert store.get(memory_id).metadata == wide
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(store.config.max_metadata_depth - 1):
        inner["d"] = {}
        inner = inner["d"]
    assert store.get(store.add("deep", vector=GOOD, metadata=deep)).metadata == deep
    odd = {"": None, "nan": math.nan, "inf": -math.inf, "bytes": b"\x00\xff", "u64": 2**64 - 1, "i64": -2**63,
           "tuple": (1, (2, 3))}
    stored = dict(store.get(store.add("odd values", vector=GOOD, metadata=odd)).metadata)
    assert math.isnan(stored.pop("nan")) and stored["tuple"] == [1, [2, 3]]
    # NaN never matches an order comparison, and is not an error.
    assert all(hit.memory.text != "odd values" for hit in store.search(vector=GOOD, where={"nan": {"$gte": 0}}))


def _nested(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    inner = root
    for _ in range(depth):
        inner["d"] = {}
        inner = inner["d"]
    return root


def _cyclic() -> dict[str, Any]:
    loop: dict[str, Any] = {"a": []}
    loop["a"].append(loop)
    return loop


def _too_wide() -> dict[str, Any]:
    return {f"key{i}": i for i in range(20_000)}


HOSTILE_METADATA = [
    (_nested(100_000), "deeper"),
    (_cyclic(), "deeper"),
    (_too_wide(), "max_metadata_bytes"),
    ({"x": np.float32(1.0)}, "not serializable"),
    ({"x": 2**64}, "not serializable"),
    ({"x": {1, 2}}, "not serializable"),
    ({("tuple",): 1}, "str"),
]


@pytest.mark.parametrize("metadata, message", HOSTILE_METADATA, ids=range(len(HOSTILE_METADATA)))
def test_hostile_metadata_is_refused_and_changes_nothing(store, metadata, message: str) -> None:
    target = store.ids()[0]
    before = snapshot(store)
    with pytest.raises(MetadataError, match=message):
        store.add("x", vector=GOOD, metadata=metadata)
    with pytest.raises(MetadataError, match=message):
        store.update(target, metadata=metadata)
    assert snapshot(store) == before


# -- vectors -------------------------------------------------------------------------------------

DIRECTION = np.random.default_rng(11).standard_normal(DIM)
FINITE_EXTREMES = [
    DIRECTION.astype(np.float32) * np.float32(1e30),  # squares overflow float32
    DIRECTION.astype(np.float32) * np.float32(1e-30),  # squares vanish in float32
    (DIRECTION * 1e-42).astype(np.float32),  # subnormal float32
    DIRECTION * 1e300,  # float64, beyond float32's range
    DIRECTION.astype(np.float16),
    [int(v * 1000) for v in DIRECTION],  # Python ints
]


@pytest.mark.parametrize("vector", FINITE_EXTREMES, ids=range(len(FINITE_EXTREMES)))
def test_any_finite_nonzero_vector_keeps_its_direction(store, vector) -> None:
    """Cosine similarity ignores length: a finite, nonzero vector of any magnitude has a direction."""
    memory_id = store.add("extreme", vector=vector)
    expected = np.asarray(vector, dtype=np.float64)
    expected /= np.abs(expected).max()  # first to a safe range, then to unit length
    expected /= np.linalg.norm(expected)
    assert float(store.cold.vector(memory_id) @ expected) > 0.999
    assert store.search(vector=vector, k=1)[0].memory.id == memory_id


HOSTILE_VECTORS = [
    (np.zeros(DIM, dtype=np.float32), InvalidVectorError, "zeros"),
    (DIRECTION.astype(np.complex128) + 1j, InvalidVectorError, "complex"),
    ([None] * DIM, InvalidVectorError, "arrays of numbers"),
    (DIRECTION > 0, InvalidVectorError, "arrays of numbers"),  # bool is not a coordinate (issue 11.13)
    (np.array(["1.0"] * DIM), InvalidVectorError, "arrays of numbers"),
    ([[1.0] * DIM, [1.0] * (DIM - 1)], InvalidVectorError, "numeric"),
    (np.float32(1.0), InvalidVectorError, "single number"),
    (np.zeros(0), DimensionMismatchError, "dimension"),
    (np.ones((1, 1, DIM)), InvalidVectorError, "1-D or 2-D"),
    (np.full(DIM, np.nan), InvalidVectorError, "NaN"),
    (np.array([np.inf] + [0.0] * (DIM - 1)), InvalidVectorError, "infinity"),
    (np.ones(DIM * 2), DimensionMismatchError, "dimension"),
    ({"not": "a vector"}, InvalidVectorError, "numbers"),
]


@pytest.mark.parametrize("vector, error, message", HOSTILE_VECTORS, ids=range(len(HOSTILE_VECTORS)))
def test_hostile_vectors_are_refused_everywhere_and_change_nothing(store, vector, error, message: str) -> None:
    target = store.ids()[0]
    before = snapshot(store)
    calls = (lambda: store.add("x", vector=vector), lambda: store.update(target, vector=vector),
             lambda: store.search(vector=vector), lambda: store.add_many(["x"], vectors=vector))
    for call in calls:
        with pytest.raises(error, match=message):
            call()
    assert snapshot(store) == before


# -- filters and search arguments ------------------------------------------------------------------

def _deep_where(depth: int) -> dict[str, Any]:
    where: dict[str, Any] = {"k": 1}
    for _ in range(depth):
        where = {"$and": [where]}
    return where


HOSTILE_SEARCHES = [
    (dict(where=_deep_where(10_000)), InvalidFilterError, "nested"),
    (dict(k=10**9), InvalidInputError, "k must be"),
    (dict(k=2.5), InvalidInputError, "k must be"),
    (dict(namespace=["default", ""]), InvalidInputError, "namespace"),
    (dict(namespace="x" * 257), InvalidInputError, "namespace"),
    (dict(kinds=[None]), InvalidFilterError, "kinds"),
    (dict(where={"k": {"$gt": [1]}}), InvalidFilterError, "number or a str"),
    (dict(where={"k": {"$exists": "yes"}}), InvalidFilterError, "True or False"),
    (dict(min_score=math.inf), InvalidInputError, "min_score"),
    (dict(only_ids="one-id"), InvalidFilterError, "collection"),
]


@pytest.mark.parametrize("arguments, error, message", HOSTILE_SEARCHES, ids=range(len(HOSTILE_SEARCHES)))
def test_hostile_searches_get_specific_errors(store, arguments, error, message: str) -> None:
    before = snapshot(store)
    with pytest.raises(error, match=message):
        store.search(vector=GOOD, **arguments)
    assert snapshot(store) == before


def test_a_filter_nested_within_reason_works(store) -> None:
    assert len(store.search(vector=GOOD, where=_deep_where(20), k=50)) == 12


def test_every_refusal_above_is_a_tiered_memory_error() -> None:
    for _, error, _ in HOSTILE_VECTORS + HOSTILE_SEARCHES:
        assert issubclass(error, TieredMemoryError)


def test_store_is_consistent_after_a_barrage_of_bad_calls(store) -> None:
    target = store.ids()[0]
    for vector, _, _ in HOSTILE_VECTORS:
        with pytest.raises(TieredMemoryError):
            store.add("x", vector=vector)
        with pytest.raises(TieredMemoryError):
            store.update(target, vector=vector)
    check_invariants(store)
    assert len(store) == 12
