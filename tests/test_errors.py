"""Bad input gets a specific exception that says what to do, and the store is left unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tiered_memory import (
    ConfigError,
    DimensionMismatchError,
    EmptyTextError,
    EncoderError,
    InvalidFilterError,
    InvalidInputError,
    InvalidTextError,
    InvalidVectorError,
    MemoryConfig,
    MemoryNotFoundError,
    MetadataError,
    TextTooLargeError,
    TieredMemoryError,
)

from .conftest import DIM, unit_rows


@pytest.fixture
def store(open_store):
    mem = open_store(max_text_chars=1_000, max_metadata_bytes=1_024, max_metadata_depth=4)
    vectors = unit_rows(10)
    ids = mem.add_many([f"m{i}" for i in range(10)], vectors=vectors, metadata={"k": 1})
    return mem, ids, vectors


def snapshot(mem) -> tuple:
    return (len(mem), sorted(mem.ids()), mem.cold.meta_get("generation"),
            sorted((m.id, m.text, str(m.metadata), m.importance, m.version)
                   for m in mem.cold.get_many(mem.ids())))


GOOD = unit_rows(1, seed=99)[0]
NAN = GOOD.copy()
NAN[3] = math.nan
INF = GOOD.copy()
INF[0] = math.inf


class Cyclic(dict):
    pass


BAD_ADDS = [
    (dict(text=""), EmptyTextError, "empty"),
    (dict(text="   \n"), EmptyTextError, "empty"),
    (dict(text=None), InvalidTextError, "str"),
    (dict(text=b"bytes"), InvalidTextError, "str"),
    (dict(text="x" * 1_001), TextTooLargeError, "max_text_chars"),
    (dict(text="lone \ud800 surrogate"), InvalidTextError, "UTF-8"),
    (dict(vector=np.ones(DIM + 1, dtype=np.float32)), DimensionMismatchError, "dimension"),
    (dict(vector=NAN), InvalidVectorError, "NaN"),
    (dict(vector=INF), InvalidVectorError, "NaN or infinity"),
    (dict(vector=np.zeros(DIM, dtype=np.float32)), InvalidVectorError, "zeros"),
    (dict(vector=np.ones((2, 2, DIM))), InvalidVectorError, "1-D or 2-D"),
    (dict(vector="not a vector"), InvalidVectorError, "arrays of numbers"),
    (dict(metadata={"when": object()}), MetadataError, "not serializable"),
    (dict(metadata={1: "int key"}), MetadataError, "str"),
    (dict(metadata=["not", "a", "mapping"]), MetadataError, "mapping"),
    (dict(metadata={"big": "x" * 2_000}), MetadataError, "max_metadata_bytes"),
    (dict(metadata={"a": {"b": {"c": {"d": {"e": 1}}}}}), MetadataError, "deeper"),
    (dict(metadata={"n": 2**70}), MetadataError, "not serializable"),
    (dict(importance=1.5), InvalidInputError, "between 0 and 1"),
    (dict(importance=math.nan), InvalidInputError, "between 0 and 1"),
    (dict(importance="high"), InvalidInputError, "between 0 and 1"),
    (dict(namespace=""), InvalidInputError, "namespace"),
    (dict(namespace=7), InvalidInputError, "namespace"),
    (dict(kind=""), InvalidInputError, "kind"),
    (dict(created_at="yesterday"), InvalidInputError, "created_at"),
    (dict(created_at=math.inf), InvalidInputError, "created_at"),
    (dict(id=""), InvalidInputError, "id"),
    (dict(id="x" * 200), InvalidInputError, "id"),
]


@pytest.mark.parametrize("change, error, message", BAD_ADDS, ids=[f"{e.__name__}-{i}" for i, (_, e, _) in
                                                                    enumerate(BAD_ADDS)])
def test_bad_add_is_refused_and_changes_nothing(store, change, error, message) -> None:
    mem, _, _ = store
    before = snapshot(mem)
    arguments = dict(text="a valid text", vector=GOOD)
    arguments.update(change)
    with pytest.raises(error, match=message):
        mem.add(arguments.pop("text"), **arguments)
    assert snapshot(mem) == before


def test_every_error_is_a_tiered_memory_error_and_a_builtin_kind() -> None:
    assert issubclass(EmptyTextError, TieredMemoryError) and issubclass(EmptyTextError, ValueError)
    assert issubclass(MemoryNotFoundError, KeyError)


def test_add_many_is_all_or_nothing(store) -> None:
    mem, _, _ = store
    before = snapshot(mem)
    vectors = unit_rows(3, seed=5)
    with pytest.raises(EmptyTextError):
        mem.add_many(["fine", "", "fine too"], vectors=vectors)
    bad = vectors.copy()
    bad[2, 0] = math.nan
    with pytest.raises(InvalidVectorError, match="vector 2"):
        mem.add_many(["a", "b", "c"], vectors=bad)
    with pytest.raises(InvalidInputError, match="3 texts but 2 vectors"):
        mem.add_many(["a", "b", "c"], vectors=vectors[:2])
    with pytest.raises(InvalidInputError, match="one value or one per text"):
        mem.add_many(["a", "b", "c"], vectors=vectors, importance=[0.1, 0.2])
    with pytest.raises(InvalidInputError, match="twice"):
        mem.add_many(["a", "b"], vectors=vectors[:2], ids=["same", "same"])
    with pytest.raises(InvalidInputError, match="use add"):
        mem.add_many("a single string", vectors=vectors[:1])
    assert snapshot(mem) == before


def test_unknown_ids_are_reported(store) -> None:
    mem, ids, _ = store
    before = snapshot(mem)
    for call in (mem.get, mem.delete, lambda i: mem.update(i, importance=0.3)):
        with pytest.raises(MemoryNotFoundError, match="no memory with id 'missing'"):
            call("missing")
    with pytest.raises(MemoryNotFoundError, match="in namespace 'other'"):
        mem.get(ids[0], namespace="other")
    assert snapshot(mem) == before


def test_bad_updates_change_nothing(store) -> None:
    mem, ids, _ = store
    mem.get(ids[0])  # hot, too: the hot copy must not change either
    before = snapshot(mem)
    for change, error in ((dict(text=""), EmptyTextError), (dict(importance=-1), InvalidInputError),
                          (dict(metadata={"x": object()}), MetadataError), (dict(vector=NAN), InvalidVectorError),
                          (dict(vector=np.ones(3)), DimensionMismatchError), (dict(kind=""), InvalidInputError)):
        with pytest.raises(error):
            mem.update(ids[0], **change)
    assert snapshot(mem) == before
    assert mem.get(ids[0]).metadata == {"k": 1}


def test_bad_searches(store) -> None:
    mem, _, vectors = store
    for arguments, error, message in (
        (dict(), InvalidInputError, "either a query text or vector="),
        (dict(query="x", vector=vectors[0]), InvalidInputError, "not both"),
        (dict(vector=vectors[0], k=0), InvalidInputError, "k must be"),
        (dict(vector=vectors[0], k=True), InvalidInputError, "k must be"),
        (dict(vector=vectors[:2]), InvalidInputError, "one query vector"),
        (dict(vector=NAN), InvalidVectorError, "NaN"),
        (dict(vector=np.ones(5, dtype=np.float32)), DimensionMismatchError, "dimension"),
        (dict(vector=vectors[0], kinds="fact"), InvalidFilterError, "not a bare str"),
        (dict(vector=vectors[0], kinds=[]), InvalidFilterError, "empty"),
        (dict(vector=vectors[0], where={"x": {"$regex": "a"}}), InvalidFilterError, "unknown operator"),
        (dict(vector=vectors[0], where={"x": {"$in": 3}}), InvalidFilterError, "takes a list"),
        (dict(vector=vectors[0], where={"$or": {}}), InvalidFilterError, "non-empty list"),
        (dict(vector=vectors[0], where={}), InvalidFilterError, "non-empty mapping"),
        (dict(vector=vectors[0], namespace=[]), InvalidInputError, "at least one"),
        (dict(vector=vectors[0], min_score=math.nan), InvalidInputError, "min_score"),
    ):
        with pytest.raises(error, match=message):
            mem.search(**arguments)


def test_text_needs_an_encoder(store) -> None:
    mem, _, _ = store
    with pytest.raises(EncoderError, match="pass vector="):
        mem.add("no vector and no encoder")
    with pytest.raises(EncoderError):
        mem.search("no encoder")


@pytest.mark.parametrize("setting, value", [("hot_capacity", 0), ("warm_capacity", -1), ("durability", "never"),
                                            ("half_life_s", 0), ("clip_quantile", 0.2), ("keep_originals", "int4"),
                                            ("hnsw_m", 1.5), ("cold_probe_fraction", 0)])
def test_bad_settings_are_refused(setting: str, value: object) -> None:
    with pytest.raises(ConfigError, match=setting):
        MemoryConfig(**{setting: value})


def test_rescore_without_originals_is_refused() -> None:
    with pytest.raises(ConfigError, match="rescore=True needs originals"):
        MemoryConfig(rescore=True, keep_originals="none")


def test_unknown_setting_is_refused(open_store) -> None:
    with pytest.raises(ConfigError, match="unknown MemoryConfig settings"):
        open_store(hot_capacty=5)
