"""The lexical index against a plain-Python BM25, its changes, filters, persisted state and bad input."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from tiered_memory.errors import ConfigError, EmptyTextError, InvalidInputError, InvalidTextError, TieredMemoryError
from tiered_memory.search.lexical import LexicalIndex
from tiered_memory.search.lexical_tokens import Tokenizer

from .conftest import SHARED

CORPUS = {
    "m1": "Caroline went to the LGBTQ support group yesterday and it was powerful",
    "m2": "Melanie painted a sunrise over the lake last summer",
    "m3": "I adopted a rescue dog named Biscuit from the Portland shelter",
    "m4": "Caroline is researching adoption agencies because she wants to adopt kids",
    "m5": "We went camping by the lake with the kids and roasted marshmallows",
    "m6": "My grandmother gave me a necklace from Sweden for my birthday",
    "m7": "Melanie signed up for a pottery class and made a bowl",
    "m8": "The support group helped me a lot when I came out to my family",
    "m9": "Biscuit loves running on the beach and chasing seagulls",
    "m10": "I'm reading a book about painting landscapes and sunsets",
    "m11": "Caroline Caroline adoption adoption adoption",
    "m12": "Running every morning before work keeps me calm",
}
QUERIES = ["Caroline adoption", "dog named Biscuit", "lake", "support group family", "painting sunrise",
           "pottery bowl class", "kids camping lake marshmallows", "running beach"]
K1, B = 1.2, 0.75  # tantivy's BM25 constants, which LexicalIndex uses


def reference_bm25(docs: dict[str, str], query: str, k: int) -> list[tuple[str, float]]:
    """Okapi BM25 as tantivy scores it (idf = ln(1 + (N - n + 0.5) / (n + 0.5)), each query term once),
    over the same tokenizer's terms."""
    tokenizer = Tokenizer()
    terms = {doc_id: tokenizer.tokenize(text) for doc_id, text in docs.items()}
    n_docs = len(terms)
    average = sum(len(t) for t in terms.values()) / n_docs
    scores: dict[str, float] = {}
    for term in dict.fromkeys(tokenizer.tokenize(query)):
        having = [d for d, t in terms.items() if term in t]
        idf = math.log(1 + (n_docs - len(having) + 0.5) / (len(having) + 0.5))
        for doc_id in having:
            tf = Counter(terms[doc_id])[term]
            length = len(terms[doc_id])
            scores[doc_id] = scores.get(doc_id, 0.0) + idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / average))
    return sorted(scores.items(), key=lambda item: -item[1])[:k]


def built(docs: dict[str, str] = CORPUS, buffer_docs: int = 256) -> LexicalIndex:
    index = LexicalIndex(context_weights=(), buffer_docs=buffer_docs)
    index.add(list(docs), list(docs.values()))
    return index


@pytest.mark.parametrize("buffer_docs", [0, 256], ids=["in-tantivy", "buffered"])
@pytest.mark.parametrize("query", QUERIES)
def test_congruent_with_reference_bm25(query: str, buffer_docs: int) -> None:
    ids, scores = built(buffer_docs=buffer_docs).search(query, 5)
    expected = reference_bm25(CORPUS, query, 5)
    assert ids and len(ids) == len(expected)
    # Same scores within float32 rounding; ids equal except where two documents tie.
    for (ref_id, ref_score), got_id, got_score in zip(expected, ids, scores):
        assert got_score == pytest.approx(ref_score, rel=1e-4)
        assert got_id == ref_id or got_score == pytest.approx(dict(expected).get(got_id, -1.0), rel=1e-4)
    assert set(ids) == {i for i, _ in expected}


def test_buffered_documents_are_scored_with_the_committed_statistics() -> None:
    index = built(buffer_docs=4)  # 12 documents: straight into tantivy
    extra = "Seagulls stole our sandwiches at the pier"
    index.add(["m13"], [extra])  # buffered
    ids, scores = index.search("seagulls sandwiches", 5)
    tokenizer = Tokenizer()
    terms = {i: tokenizer.tokenize(t) for i, t in CORPUS.items()}
    average = sum(len(t) for t in terms.values()) / len(terms)
    mine = tokenizer.tokenize(extra)
    expected = 0.0
    for term in ("seagul", "sandwich"):
        having = sum(term in t for t in terms.values())
        idf = math.log(1 + (len(terms) - having + 0.5) / (having + 0.5))
        tf = mine.count(term)
        expected += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * len(mine) / average))
    assert ids[0] == "m13" and scores[0] == pytest.approx(expected, rel=1e-4)
    assert ids[1:] == ["m9"]
    index.flush()
    assert index.search("seagulls sandwiches", 5)[0] == ["m13", "m9"]


@pytest.mark.parametrize("buffer_docs", [0, 2, 256], ids=["in-tantivy", "overflowing", "buffered"])
def test_add_and_remove_are_visible_to_the_next_search(buffer_docs: int) -> None:
    index = built(buffer_docs=buffer_docs)
    assert "m13" not in index.search("seagulls", 10)[0]
    index.add(["m13"], ["Seagulls stole our sandwiches at the pier"])
    assert index.search("seagulls", 10)[0][0] in {"m9", "m13"} and "m13" in index.search("seagulls", 10)[0]
    assert len(index) == 13 and "m13" in index
    assert index.remove(["m9", "nope"]) == 1
    assert index.search("seagulls", 10)[0] == ["m13"]
    index.add(["m13"], ["A quiet day at home"])  # re-adding an id replaces its text
    assert index.search("seagulls", 10) == ([], [])
    assert index.search("quiet home", 1)[0] == ["m13"] and len(index) == 12


@pytest.mark.parametrize("buffer_docs", [0, 256], ids=["in-tantivy", "buffered"])
def test_allowed_restricts_results_in_both_filter_paths(buffer_docs: int) -> None:
    index = built(buffer_docs=buffer_docs)
    everything = index.search("Caroline adoption kids lake", 12)[0]
    for allowed in ({"m5", "m2"}, set(list(CORPUS)[:10])):  # a small set (filtered in the index), a large one
        ids, _ = index.search("Caroline adoption kids lake", 3, allowed=allowed)
        assert ids == [i for i in everything if i in allowed][:3]
    assert index.search("Caroline", 3, allowed={"unknown"}) == ([], [])


def test_neighbour_context_is_weighted_below_the_text() -> None:
    index = LexicalIndex(context_weights=(0.5, 0.25))
    index.add(["a", "b", "c", "d"], ["biscuit the dog", "a walk in the park", "lunch at noon", "rain"],
              contexts=["", "biscuit the dog", ("", "biscuit the dog"), ("rain again", "more rain")])
    ids, scores = index.search("biscuit", 4)
    assert ids == ["a", "b", "c"] and scores[0] > scores[1] > scores[2] > 0
    assert index.search("rain", 4)[0] == ["d"]


def test_stop_words_only_query_finds_nothing_and_other_languages_are_indexed() -> None:
    index = built({"fr": "Le café est fermé le dimanche à Paris", "de": "Wir fahren nach München",
                   "ja": "東京で寿司を食べました", "en": "A café in Paris"})
    assert index.search("what is it", 5) == ([], [])
    assert index.search("fermé", 5)[0] == ["fr"]
    assert index.search("München", 5)[0] == ["de"]
    assert index.search("寿司", 5)[0] == ["ja"]  # CJK: character pairs
    assert set(index.search("café Paris", 5)[0]) == {"fr", "en"}


SECRET = "Zanzibarquux penicillin allergy diagnosed by Dr Okonkwo"


def sealed_words() -> set[str]:
    return {w for w in {*SECRET.lower().split(), *Tokenizer().tokenize(SECRET)} if len(w) > 2}


@pytest.mark.parametrize("buffer_docs", [0, 256], ids=["in-tantivy", "buffered"])
def test_directory_reopens_and_never_holds_sealed_terms(tmp_path: Path, buffer_docs: int) -> None:
    where = tmp_path / "lexical"
    index = LexicalIndex(where, context_weights=(), buffer_docs=buffer_docs)
    index.add(list(CORPUS), list(CORPUS.values()))
    index.add(["s1"], [SECRET], sealed=True)
    index.add(["m2"], [SECRET + " " + CORPUS["m2"]], sealed=True)  # a plain memory re-added sealed
    assert index.search("zanzibarquux", 5)[0] == ["s1", "m2"] or index.search("zanzibarquux", 5)[0] == ["m2", "s1"]
    assert index.is_sealed("s1") and not index.is_sealed("m1") and len(index) == 13
    index.flush()
    files = [p for p in where.rglob("*") if p.is_file()]
    assert files, "nothing was persisted"
    for file in files:
        data = file.read_bytes()
        for word in sealed_words():
            assert word.encode() not in data, f"sealed term {word!r} found in {file.name}"
    reopened = LexicalIndex(where, context_weights=(), buffer_docs=buffer_docs)
    assert len(reopened) == 11 and "s1" not in reopened and "m2" not in reopened and "m1" in reopened
    assert reopened.search("zanzibarquux", 5) == ([], [])
    reopened.add(["s1", "m2"], [SECRET, SECRET + " " + CORPUS["m2"]], sealed=True)  # the engine re-adds them
    for query in [*QUERIES, "zanzibarquux allergy"]:  # the same parts, so the same ranking and scores
        got, expected = reopened.search(query, 5), index.search(query, 5)
        assert got[0] == expected[0] and got[1] == pytest.approx(expected[1], rel=1e-5)


def test_unflushed_changes_are_searchable_and_flush_makes_them_durable(tmp_path: Path) -> None:
    where = tmp_path / "lexical"
    index = LexicalIndex(where, context_weights=())
    index.add(list(CORPUS), list(CORPUS.values()))  # 12 documents: buffered
    index.remove(["m3"])
    assert "m3" not in index.search("Biscuit", 5)[0] and len(index) == 11
    unflushed = LexicalIndex(where, context_weights=())
    assert len(unflushed) == 0 and unflushed.stamp is None  # nothing committed yet: the engine replays
    index.flush(stamp=41)
    again = LexicalIndex(where, context_weights=())
    assert len(again) == 11 and again.search("Biscuit", 5)[0] == ["m9"] and again.stamp == 41
    with pytest.raises(InvalidInputError, match="stamp"):
        again.flush(stamp="41")  # type: ignore[arg-type]
    again.remove(["m9"])
    again.flush()
    assert LexicalIndex(where, context_weights=()).search("Biscuit", 5) == ([], [])


def test_directory_refuses_other_settings_and_foreign_files(tmp_path: Path) -> None:
    where = tmp_path / "lexical"
    LexicalIndex(where, context_weights=()).flush()
    with pytest.raises(ConfigError, match="rebuild"):
        LexicalIndex(where, context_weights=(0.5,))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="not a lexical index"):
        LexicalIndex(foreign)


def test_bad_input_raises_specific_errors() -> None:
    index = built()
    with pytest.raises(EmptyTextError):
        index.search("   ", 5)
    for k in (0, -1, 1.5, True):
        with pytest.raises(InvalidInputError, match="at least one"):
            index.search("lake", k)  # type: ignore[arg-type]
    with pytest.raises(InvalidTextError):
        index.search(b"lake", 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="one id per text"):
        index.add(["x"], ["a", "b"])
    with pytest.raises(InvalidInputError, match="distinct"):
        index.add(["x", "x"], ["a", "b"])
    with pytest.raises(InvalidTextError):
        index.add(["x"], [None])  # type: ignore[list-item]
    for weights in ((2.0,), (0.0,), ("a",)):
        with pytest.raises(InvalidInputError, match="context_weights"):
            LexicalIndex(context_weights=weights)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="levels"):
        LexicalIndex(context_weights=(0.5,)).add(["x"], ["a"], contexts=[("b", "c")])
    assert len(index) == len(CORPUS)  # nothing changed
    assert issubclass(EmptyTextError, TieredMemoryError)


@pytest.mark.shared
def test_locomo_bm25_finds_evidence_for_most_questions() -> None:
    locomo = SHARED / "locomo" / "locomo_dev.json"
    if not locomo.is_file():
        pytest.skip(f"LoCoMo not found at {locomo} (../shared/datasets is absent)")
    from tiered_memory.corpora import load_locomo
    from tiered_memory.reports.locomo_eval import memory_text

    conv = load_locomo(locomo)[0]
    index = LexicalIndex(context_weights=())
    index.add([t.dia_id for t in conv.turns], [memory_text(t) for t in conv.turns])
    questions = [q for q in conv.questions if q.category in (1, 2, 3, 4) and q.evidence]
    hits = [bool(set(q.evidence) & set(index.search(q.question, 10)[0])) for q in questions]
    # The dev split's conv-26 measured 0.66 hit@10 with plain BM25; dense alone 0.52.
    assert sum(hits) / len(hits) > 0.6
