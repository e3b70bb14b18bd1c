"""Behaviour that depends on the real all-MiniLM-L6-v2 model (bundled, loaded offline)."""

from __future__ import annotations

import numpy as np
import pytest

from tiered_memory import ConfigError, MiniLMEncoder, TieredMemory

pytestmark = pytest.mark.model

FACTS = [
    ("User prefers technical explanations with code examples", "preference", {"confidence": 0.9}),
    ("User dislikes long meetings in the afternoon", "preference", {"confidence": 0.6}),
    ("User's favourite programming language is Rust", "preference", {"confidence": 0.3}),
    ("Discussed RAG for document analysis on March 15th", "conversation", {"project": "rag"}),
    ("Deployed the billing service to production on Friday", "conversation", {"project": "billing"}),
    ("The user lives in Lisbon and works remotely", "fact", {}),
]


@pytest.fixture
def mem(tmp_path, minilm, clock):
    with TieredMemory(tmp_path / "agent_memory", encoder=minilm, clock=clock) as store:
        for text, kind, metadata in FACTS:
            store.add(text, namespace="user_123", kind=kind, metadata=metadata)
        yield store


def test_encoder_is_offline_unit_length_and_384_d(minilm) -> None:
    vectors = minilm.encode(["hello world", "a second sentence"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert MiniLMEncoder().dimension == 384  # read from the model's config without loading it


def test_semantic_search_finds_the_preference(mem) -> None:
    hits = mem.search("How should I explain technical concepts?", namespace="user_123", k=3)
    assert hits[0].memory.text.startswith("User prefers technical explanations")
    filtered = mem.search("How should I explain technical concepts?", namespace="user_123", k=5,
                          kinds=["preference"], where={"confidence": {"$gte": 0.5}})
    assert [h.memory.metadata["confidence"] >= 0.5 for h in filtered] == [True, True]
    rag = mem.search("when did we talk about analysing documents?", namespace="user_123", k=1)[0]
    assert rag.memory.metadata == {"project": "rag"}


def test_query_embeddings_are_cached(mem) -> None:
    mem.search("where does the user live?", namespace="user_123")
    assert len(mem._searcher.query_cache) == 1
    assert "where does the user live?" not in mem._searcher.query_cache  # keyed by a digest, not by the text
    (cached,) = mem._searcher.query_cache.values()
    assert mem._searcher.query_vector("where does the user live?", None) is cached


def test_updating_text_re_encodes(mem) -> None:
    mid = mem.search("Lisbon", namespace="user_123", k=1)[0].memory.id
    mem.update(mid, text="The user moved to Tokyo last spring")
    assert mem.search("Which city in Japan?", namespace="user_123", k=1)[0].memory.id == mid


def test_add_many_batch_encodes(tmp_path, minilm) -> None:
    with TieredMemory(tmp_path / "m", encoder=minilm) as store:
        ids = store.add_many([t for t, _, _ in FACTS], namespace="n", kind=[k for _, k, _ in FACTS])
        assert len(ids) == len(FACTS)
        direct = minilm.encode([FACTS[4][0]])[0]
        hit = store.search(vector=direct, namespace="n", k=1)[0]
        assert hit.memory.id == ids[4] and hit.score > 0.99


def test_reopening_with_another_encoder_is_refused(tmp_path, minilm) -> None:
    TieredMemory(tmp_path / "m", encoder=minilm).close()

    class Other:
        name = "other-model"
        dimension = 384

        def encode(self, texts):
            return np.ones((len(texts), 384), dtype=np.float32)

    with pytest.raises(ConfigError, match="built with encoder 'all-MiniLM-L6-v2'"):
        TieredMemory(tmp_path / "m", encoder=Other())
