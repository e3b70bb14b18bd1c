"""Hybrid, lexical and dense search through TieredMemory, periods, time-ordered lists, dedup."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tiered_memory import InvalidFilterError, InvalidInputError, TieredMemory

from .conftest import DIM
from .invariants import check_invariants

DAY = 86_400.0
T0 = 1_700_000_000.0


class WordHashEncoder:
    """A deterministic bag-of-hashed-words encoder: enough for tests where words decide."""

    name = "word-hash-test"
    dimension = DIM

    def encode(self, texts):
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, hash(word.strip("?.,!")) % DIM] += 1.0
            out[row] += 0.01
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path: Path, clock):
    with TieredMemory(tmp_path / "s", encoder=WordHashEncoder(), clock=clock, promote_in_background=False) as mem:
        yield mem


def test_modes_and_explained_scores(store) -> None:
    store.add_many(["Pixel is the name of my cat", "we talked about the weather", "my sister lives in Lisbon"],
                   namespace="u", created_at=[T0, T0 + DAY, T0 + 2 * DAY])
    lexical = store.search("Lisbon", namespace="u", k=3, mode="lexical")
    assert [h.memory.text for h in lexical] == ["my sister lives in Lisbon"]  # only documents with the word
    assert lexical[0].score == lexical[0].lexical_score > 0 and lexical[0].dense_score is not None
    hybrid = store.search("where does my sister live, Lisbon?", namespace="u", k=3)  # hybrid by default
    assert hybrid[0].memory.text == "my sister lives in Lisbon"
    assert all(h.dense_score is not None and h.lexical_score is not None for h in hybrid)
    dense = store.search("Lisbon", namespace="u", k=3, mode="dense")
    assert dense[0].dense_score is None and len(dense) == 3
    assert store.search(vector=store.encode(["cat"])[0], namespace="u", k=1)[0].lexical_score is None


def test_filters_apply_in_every_mode(store) -> None:
    ids = store.add_many(["apple pie recipe", "apple stock price", "apple orchard visit"], namespace="u",
                         kind=["recipe", "finance", "travel"], metadata=[{"n": 1}, {"n": 2}, {"n": 3}])
    for mode in ("hybrid", "lexical", "dense"):
        assert {h.memory.id for h in store.search("apple", namespace="u", k=5, mode=mode, kinds=["finance"])} \
            == {ids[1]}
        assert {h.memory.id for h in store.search("apple", namespace="u", k=5, mode=mode,
                                                  where={"n": {"$gte": 2}})} == {ids[1], ids[2]}
        assert {h.memory.id for h in store.search("apple", namespace="u", k=5, mode=mode, only_ids={ids[2]})} \
            == {ids[2]}
        assert all(h.memory.namespace == "u" for h in store.search("apple", namespace=["u", "v"], k=5, mode=mode))


def test_lexical_index_follows_adds_updates_and_deletes(store) -> None:
    first = store.add("the launch code is zebra", namespace="u")
    assert [h.memory.id for h in store.search("zebra", namespace="u", mode="lexical")] == [first]
    store.update(first, text="the launch code is giraffe")
    assert store.search("zebra", namespace="u", mode="lexical") == []
    assert [h.memory.id for h in store.search("giraffe", namespace="u", mode="lexical")] == [first]
    second = store.add("a zebra at the zoo", namespace="u")
    assert [h.memory.id for h in store.search("zebra", namespace="u", mode="lexical")] == [second]
    store.delete(second)
    assert store.search("zebra", namespace="u", mode="lexical") == []


def test_conversation_turns_carry_their_neighbours_words(store) -> None:
    turns = ["I went hiking yesterday", "where did you go?", "up Mount Tamalpais", "nice, how long?", "six hours"]
    ids = store.add_many(turns, namespace="c", kind="conversation", created_at=T0)
    facts = store.add_many(["hiking boots are on sale", "where to buy boots"], namespace="c", kind="fact")
    found = [h.memory.id for h in store.search("Tamalpais", namespace="c", k=5, mode="lexical")]
    assert found[0] == ids[2] and set(found) <= set(ids) and ids[1] in found  # the turn, then its neighbours
    assert not set(found) & set(facts)  # facts carry no neighbours


def test_since_until_on_created_at(store, clock) -> None:
    ids = store.add_many([f"note {i} about tea" for i in range(5)], namespace="u",
                         created_at=[T0 + i * DAY for i in range(5)])
    for mode in ("hybrid", "lexical", "dense"):
        hits = store.search("tea", namespace="u", k=5, mode=mode, since=T0 + DAY, until=T0 + 3 * DAY)
        assert {h.memory.id for h in hits} == set(ids[1:4])
    tuesday = datetime.fromtimestamp(T0 + 2 * DAY, tz=UTC)
    hits = store.search("tea", namespace="u", k=5, since=tuesday, until=tuesday + timedelta(hours=1))
    assert [h.memory.id for h in hits] == [ids[2]]
    with pytest.raises(InvalidFilterError, match="after until"):
        store.search("tea", namespace="u", since=T0 + 3 * DAY, until=T0)
    with pytest.raises(InvalidFilterError, match="naive and an aware"):
        store.search("tea", namespace="u", since=datetime(2024, 1, 1), until=datetime(2024, 1, 2, tzinfo=UTC))
    with pytest.raises(InvalidFilterError):
        store.search("tea", namespace="u", since="yesterday")
    with pytest.raises(InvalidInputError, match="mode"):
        store.search("tea", namespace="u", mode="fuzzy")
    with pytest.raises(InvalidInputError, match="needs a query text"):
        store.search(vector=store.encode(["tea"])[0], namespace="u", mode="lexical")


def test_since_until_across_tiers(tmp_path: Path, clock) -> None:
    with TieredMemory(tmp_path / "t", encoder=WordHashEncoder(), clock=clock, promote_in_background=False,
                      hot_capacity=2, warm_capacity=3, exact_search_max=0) as mem:
        ids = mem.add_many([f"entry {i} on rust" for i in range(8)], namespace="u",
                           created_at=[T0 + i * DAY for i in range(8)])
        mem.get(ids[6])
        tiers = {mem.tier_of(i).value for i in ids}
        assert len(tiers) == 3
        hits = mem.search("rust", namespace="u", k=8, mode="dense", since=T0 + 2 * DAY, until=T0 + 6 * DAY)
        assert {h.memory.id for h in hits} == set(ids[2:7])
        check_invariants(mem)


def test_list_memories_pages_in_time_order(store) -> None:
    ids = store.add_many([f"event {i}" for i in range(7)], namespace="u",
                         created_at=[T0 + (6 - i) * DAY for i in range(7)])  # added newest first
    oldest_first = [m.id for m in store.list_memories("u", limit=3)] + \
        [m.id for m in store.list_memories("u", limit=3, offset=3)] + [m.id for m in store.list_memories("u", offset=6)]
    assert oldest_first == ids[::-1]
    assert [m.id for m in store.list_memories("u", newest_first=True, limit=2)] == ids[:2]
    assert [m.id for m in store.list_memories("u", since=T0 + DAY, until=T0 + 2 * DAY)] == [ids[5], ids[4]]
    assert store.list_memories("nobody") == []
    assert all(m.access_count == 0 for m in store.list_memories("u"))  # listing is not an access
    with pytest.raises(InvalidInputError):
        store.list_memories("u", limit=0)


def test_dedup_returns_the_existing_memory_and_counts_an_access(store) -> None:
    first = store.add("User prefers dark mode", namespace="u")
    again = store.add_many(["user  PREFERS dark mode", "something new", "Something new"], namespace="u")
    assert again[0] == first and again[2] == again[1] and again.duplicates == [0, 2]
    assert store.count("u") == 2
    assert store.get(first).access_count == 2  # the repeat counted, then this get
    assert store.add("User prefers dark mode", namespace="other") != first  # per namespace
    assert store.add("User prefers dark mode", namespace="u", dedup=False) != first
    store.delete(first)
    assert store.add("User prefers dark mode", namespace="u") != first
    check_invariants(store)


def test_dedup_under_concurrent_adds_keeps_one_memory(store) -> None:
    results: list[str] = []
    barrier = threading.Barrier(6)

    def add() -> None:
        barrier.wait()
        results.append(store.add("the same fact from six threads", namespace="u"))

    threads = [threading.Thread(target=add) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and store.count("u") == 1


def test_dedup_survives_reopen_and_ignores_sealed_memories(tmp_path: Path) -> None:
    key = b"k" * 32
    with TieredMemory(tmp_path / "d", encoder=WordHashEncoder(), encryption_key=key) as mem:
        first = mem.add("remember the milk", namespace="u")
        secret = mem.add("the vault code", namespace="u", sensitive=True)
    with TieredMemory(tmp_path / "d", encoder=WordHashEncoder(), encryption_key=key) as mem:
        assert mem.add("Remember the milk", namespace="u") == first
        assert mem.add("the vault code", namespace="u", sensitive=True) != secret  # no digest of a secret on disk


@pytest.mark.model
def test_hybrid_finds_a_name_the_sentence_encoder_blurs(tmp_path: Path, minilm) -> None:
    with TieredMemory(tmp_path / "m", encoder=minilm) as mem:
        notes = ["Caroline went to the LGBTQ support group on Tuesday", "Melanie painted a sunrise last year",
                 "We discussed the support group meeting schedule", "The group meets every week downtown",
                 "Caroline is researching adoption agencies", "Melanie's kids love the beach"]
        ids = mem.add_many(notes, namespace="locomo")
        query = "What is Caroline researching?"
        hybrid = [h.memory.id for h in mem.search(query, namespace="locomo", k=2)]
        assert ids[4] in hybrid
        assert mem.search(query, namespace="locomo", k=1, mode="lexical")[0].memory.id in (ids[0], ids[4])
