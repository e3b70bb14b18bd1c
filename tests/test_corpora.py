"""Loaders of the shared corpora (skipped, with the reason, when ../shared is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from tiered_memory.corpora import (
    DatasetNotFoundError,
    exact_neighbors,
    load_dailydialog,
    load_locomo,
    parse_locomo_date,
    scaled_vectors,
    tie_aware_recall,
)

from .conftest import SHARED


def needs_shared(folder: str) -> None:
    if not (SHARED / folder).is_dir():
        pytest.skip(f"{SHARED / folder} is absent (the shared datasets live beside the project)")


@pytest.mark.shared
def test_dailydialog_parses() -> None:
    needs_shared("dailydialog")
    data = load_dailydialog(SHARED)
    assert len(data.dialogues) == 8_096 and len(data.utterances) == 62_142
    assert set(data.topics) <= set(range(1, 11))
    vectors = data.embeddings()
    assert vectors.shape == (62_142, 384)
    assert np.allclose(np.linalg.norm(vectors[:100], axis=1), 1.0, atol=1e-4)
    assert data.utterance_topics().shape == (62_142,)


@pytest.mark.shared
def test_locomo_parses() -> None:
    needs_shared("locomo")
    conversations = load_locomo(SHARED)
    assert [c.sample_id for c in conversations] == ["conv-26", "conv-30", "conv-41", "conv-42", "conv-43"]
    assert sum(len(c.turns) for c in conversations) == 2_760
    assert sum(len(c.questions) for c in conversations) == 999
    first = conversations[0]
    assert first.turns[0].dia_id == "D1:1" and first.turns[0].session == 1
    stamps = [t.timestamp for t in first.turns]
    assert stamps == sorted(stamps)
    evidence = [(e, {t.dia_id for t in c.turns}) for c in conversations for q in c.questions
                if q.category != 5 for e in q.evidence]
    found = sum(e in ids for e, ids in evidence)
    assert found >= 0.99 * len(evidence)  # 1,103 of 1,107 evidence ids name a real turn


def test_missing_corpus_says_where_it_looked(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="TIERED_MEMORY_DATASETS"):
        load_dailydialog(tmp_path)
    with pytest.raises(DatasetNotFoundError):
        load_locomo(tmp_path)


def test_locomo_dates() -> None:
    assert parse_locomo_date("1:56 pm on 8 May, 2023") == 1683554160.0
    assert parse_locomo_date("12:05 am on 1 January, 2024") == 1704067500.0


def test_scaled_vectors_keep_unit_length_and_neighbourhoods() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((100, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    scaled = scaled_vectors(base, 1_000, noise=0.05)
    assert scaled.shape == (1_000, 16)
    assert np.allclose(np.linalg.norm(scaled, axis=1), 1.0, atol=1e-5)
    assert (np.sum(scaled[:100] * base, axis=1) > 0.99).all()
    assert len(np.unique(scaled.round(6), axis=0)) == 1_000


def test_exact_neighbors_in_chunks_equals_full_sort() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((1_000, 8)).astype(np.float32)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    ids, scores = exact_neighbors(queries, vectors, k=10, chunk=128)
    full = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert (ids == full).all()
    kth = scores[:, -1]
    assert tie_aware_recall(ids, scores, kth) == 1.0
