"""A namespace's lexical index: BM25 over stemmed words, on tantivy, held in RAM.

Why tantivy (benchmarks/results/lexical/libraries.md, one run, same terms for every library):
its top-k query (block-max WAND) is 10-20x faster than SQLite FTS5 and bm25s at LoCoMo size and at
100k documents; bm25s cannot add or delete a document without rebuilding its whole matrix; FTS5
updates in place cheaply but ranks by scoring every matching row. Tantivy's cost is the commit
that makes a change searchable, so changes are buffered and committed once, by the next search.

Persistence: the index itself stays in RAM (tantivy's RAM directory). What is persisted is
``state()``: the terms of every document that is not sealed, so reopening skips tokenising, and a
rebuild from those terms costs what the build column of the measurement shows. Sealed documents
(``add(..., sealed=True)``) are never part of ``state()``: the engine re-adds them from their
decrypted texts when it loads the namespace, so their terms never reach the disk in clear.

Scores are tantivy's BM25 (k1=1.2, b=0.75, idf = ln(1 + (N - n + 0.5) / (n + 0.5))). A document
may carry *context* texts (e.g. the neighbouring turns of a conversation), each level searched as
a field of its own whose BM25 is added with that level's weight (``context_weights``). Deleted documents leave
their counts in N and n until tantivy merges the segments that held them (in the background), so
scores after many deletes differ slightly from a fresh build; rankings by them are still BM25's.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import msgpack
import tantivy

from .errors import EmptyTextError, InvalidInputError, InvalidTextError, StorageError
from .fusion import NEIGHBOUR_WEIGHTS
from .lexical_tokens import Tokenizer

STATE_VERSION = 1
CONTEXT_WEIGHTS = NEIGHBOUR_WEIGHTS  # (0.5, 0.25): half the weight per step away, as the dense side
BM25_K1, BM25_B = 1.2, 0.75  # tantivy's constants, mirrored where buffered documents are scored in Python
# Documents added one at a time wait in a buffer scored in Python, because a tantivy commit costs
# 10-30 ms here (benchmarks/results/lexical/libraries.md, tantivy-ram "add one") and a buffered
# document costs a few microseconds per query; the buffer is committed when it reaches this size.
BUFFER_DOCS = 256
WRITER_HEAP_BYTES = 15_000_000  # tantivy's minimum per writer thread; the writer is dropped after each commit
# Below this share of the index, an allowed= set is applied inside tantivy (a term-set filter);
# above it, the top hits are fetched and filtered, doubling the depth until k allowed ones are in.
FILTER_IN_INDEX_BELOW = 0.25


def _schema(levels: int) -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("slot", stored=True, indexed=True, fast=True)
    # Terms come tokenized (lexical_tokens.Tokenizer), joined by spaces: tantivy only splits them.
    for name in _field_names(levels):
        builder.add_text_field(name, tokenizer_name="whitespace", index_option="freq")
    return builder.build()


def _field_names(levels: int) -> list[str]:
    return ["body", *(f"context{level}" for level in range(levels))]


class LexicalIndex:
    """BM25 over one namespace's memories: ``add``, ``remove``, ``search``; ``state()`` to persist.

    ``context_weights``: one weight per level of context a document may carry (level 0 the nearest);
    each level is a field of its own, its BM25 added with its weight. The default halves the weight
    per step, (0.5, 0.25): a conversation turn's neighbours, then the turns next to those.
    """

    def __init__(self, tokenizer: Tokenizer | None = None, context_weights: Sequence[float] = CONTEXT_WEIGHTS,
                 buffer_docs: int = BUFFER_DOCS) -> None:
        weights = list(context_weights)
        if not all(isinstance(w, int | float) and 0.0 < w <= 1.0 for w in weights):
            raise InvalidInputError(f"context_weights={context_weights!r}: give numbers in (0, 1], one per level "
                                    "of context (an empty tuple ignores contexts)")
        if isinstance(buffer_docs, bool) or not isinstance(buffer_docs, int) or buffer_docs < 0:
            raise InvalidInputError(f"buffer_docs={buffer_docs!r}: give an int >= 0 (0 commits every change)")
        self.tokenizer = tokenizer or Tokenizer()
        self.context_weights = tuple(float(w) for w in weights)
        self.buffer_docs = buffer_docs
        self._fields = list(zip(_field_names(len(weights)), (1.0, *self.context_weights)))
        self._schema = _schema(len(weights))
        self._index = tantivy.Index(self._schema)  # RAM directory: nothing of it is written to disk
        self._writer: Any = None
        self._dirty = False  # the writer holds changes tantivy's searcher does not see yet
        self._searcher = self._index.searcher()
        self._lock = threading.RLock()
        self._next_slot = 0
        self._slot_of: dict[str, int] = {}  # every live document, committed or buffered
        self._id_of: dict[int, str] = {}
        self._terms: dict[str, tuple[str, ...]] = {}  # id -> space-joined terms per field
        self._sealed: set[str] = set()
        self._buffered: dict[str, list[tuple[Counter[str], int]]] = {}  # id -> (term counts, length) per field
        self._gone: set[int] = set()  # slots deleted in the writer, still in tantivy's searcher
        self._committed_length = [0] * len(self._fields)  # total terms of committed live documents, per field

    # -- changes -------------------------------------------------------------------------------------

    def add(self, ids: Sequence[str], texts: Sequence[str], *,
            contexts: Sequence[str | Sequence[str]] | None = None, sealed: bool | Sequence[bool] = False) -> None:
        """Index `texts` under `ids` (an id already present is replaced). `contexts`: per document, a
        text or a tuple of texts, one per level of ``context_weights``. `sealed`: documents kept out
        of ``state()`` (RAM only)."""
        ids, texts = list(ids), list(texts)
        if len(ids) != len(texts):
            raise InvalidInputError(f"{len(ids)} ids for {len(texts)} texts; pass one id per text")
        levels = len(self.context_weights)
        given = [()] * len(ids) if contexts is None else [(c,) if isinstance(c, str) else tuple(c) for c in contexts]
        if len(given) != len(ids):
            raise InvalidInputError(f"{len(given)} contexts for {len(ids)} texts; pass one per text or none")
        if any(len(c) > levels for c in given):
            raise InvalidInputError(f"a context has more levels than the {levels} of context_weights; "
                                    "pass at most one text per level")
        flags = [sealed] * len(ids) if isinstance(sealed, bool) else list(sealed)
        if len(flags) != len(ids) or not all(isinstance(f, bool) for f in flags):
            raise InvalidInputError("sealed must be True, False, or one bool per text")
        for value in (*ids, *texts, *(c for level in given for c in level)):
            if not isinstance(value, str):
                raise InvalidTextError(f"ids, texts and contexts must be str, got {type(value).__name__}")
        if len(set(ids)) != len(ids):
            raise InvalidInputError("the same id appears twice in one add; pass each id once")
        terms = [tuple(" ".join(self.tokenizer.tokenize(t)) for t in (text, *level, *[""] * (levels - len(level))))
                 for text, level in zip(texts, given)]
        self._add_terms(ids, terms, flags)

    def _document(self, slot: int, fields: tuple[str, ...]) -> tantivy.Document:
        return tantivy.Document(slot=slot, **{name: value for (name, _), value in zip(self._fields, fields)})

    def _add_terms(self, ids: Sequence[str], terms: Sequence[tuple[str, ...]], flags: Sequence[bool]) -> None:
        with self._lock:
            self.remove([i for i in ids if i in self._slot_of])
            if len(self._buffered) + len(ids) > self.buffer_docs:
                self._commit()  # flush what is buffered; this batch goes straight to tantivy, one commit
                writer = self._open_writer()
                for doc_id, fields in zip(ids, terms):
                    writer.add_document(self._document(self._new_slot(doc_id), fields))
                    for at, value in enumerate(fields):
                        self._committed_length[at] += len(value.split())
                    self._terms[doc_id] = fields
                self._dirty = True
                self._commit()
            else:
                for doc_id, fields in zip(ids, terms):
                    self._new_slot(doc_id)
                    self._buffered[doc_id] = [(Counter(words), len(words)) for words in map(str.split, fields)]
                    self._terms[doc_id] = fields
            self._sealed.update(doc_id for doc_id, flag in zip(ids, flags) if flag)

    def _new_slot(self, doc_id: str) -> int:
        slot = self._next_slot
        self._next_slot += 1
        self._slot_of[doc_id], self._id_of[slot] = slot, doc_id
        return slot

    def remove(self, ids: Iterable[str]) -> int:
        """Drop these documents (unknown ids are skipped); returns how many were present."""
        with self._lock:
            present = [i for i in dict.fromkeys(ids) if i in self._slot_of]
            for doc_id in present:
                slot = self._slot_of.pop(doc_id)
                del self._id_of[slot]
                fields = self._terms.pop(doc_id)
                self._sealed.discard(doc_id)
                if self._buffered.pop(doc_id, None) is None:  # committed: delete it in tantivy
                    self._open_writer().delete_documents_by_term("slot", slot)
                    self._gone.add(slot)
                    self._dirty = True
                    for at, value in enumerate(fields):
                        self._committed_length[at] -= len(value.split())
            if len(self._gone) > self.buffer_docs:
                self._commit()  # every search fetches this many extra hits to skip them
            return len(present)

    def flush(self) -> None:
        """Commit buffered changes to tantivy (searches see them either way; this makes searches
        cheaper again and releases the writer). The engine may call it when idle."""
        with self._lock:
            self._commit()

    def _open_writer(self) -> Any:
        if self._writer is None:
            self._writer = self._index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
        return self._writer

    def _commit(self) -> None:
        """Move buffered documents into tantivy and commit; the writer (and its 15 MB arena) is released."""
        if self._buffered:
            writer = self._open_writer()
            for doc_id, entry in self._buffered.items():
                writer.add_document(self._document(self._slot_of[doc_id], self._terms[doc_id]))
                for at, (_, length) in enumerate(entry):
                    self._committed_length[at] += length
            self._buffered.clear()
            self._dirty = True
        if not self._dirty:
            return
        try:  # deletes and adds in the writer become visible together
            self._writer.commit()
            self._writer.wait_merging_threads()  # consumes the writer; merges finish before we go on
        except (OSError, ValueError, RuntimeError) as err:
            raise StorageError(f"the lexical index could not commit its changes: {err}") from err
        self._writer = None
        self._index.reload()
        self._searcher = self._index.searcher()
        self._dirty = False
        self._gone.clear()

    # -- queries -------------------------------------------------------------------------------------

    def search(self, query: str, k: int, allowed: Collection[str] | None = None) -> tuple[list[str], list[float]]:
        """The `k` best documents for `query` by BM25, best first, as (ids, scores); only ids in
        `allowed` when given. A query with no indexed terms (only stop words) finds nothing.
        Buffered documents are scored in Python with the committed documents' statistics."""
        if not isinstance(query, str):
            raise InvalidTextError(f"query must be a str, got {type(query).__name__}")
        if not query.strip():
            raise EmptyTextError("query is empty; pass the words to search for")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k={k!r}: ask for at least one result (an int >= 1)")
        terms = list(dict.fromkeys(self.tokenizer.tokenize(query)))  # a repeated word counts once
        with self._lock:
            if not terms or not self._slot_of:
                return [], []
            keep = None if allowed is None else {i for i in allowed if i in self._slot_of}
            if keep is not None and not keep:
                return [], []
            hits = self._committed_hits(terms, k + len(self._gone), keep)
            if self._gone:
                hits = [(i, s) for i, s in hits if i in self._slot_of][:k]
            if self._buffered:
                hits = sorted([*hits, *self._buffered_hits(terms, keep)], key=lambda h: -h[1])[:k]
            return [i for i, _ in hits], [s for _, s in hits]

    def _committed_hits(self, terms: list[str], k: int, keep: set[str] | None) -> list[tuple[str, float]]:
        searcher = self._searcher
        if searcher.num_docs == 0:
            return []
        clauses = []
        for name, weight in self._fields:
            for term in terms:
                query = tantivy.Query.term_query(self._schema, name, term)
                clauses.append((tantivy.Occur.Should, query if weight == 1.0 else
                                tantivy.Query.boost_query(query, weight)))
        scored = tantivy.Query.boolean_query(clauses)
        if keep is None:
            return self._hits(searcher, scored, k)
        if len(keep) < FILTER_IN_INDEX_BELOW * searcher.num_docs:
            slots = [self._slot_of[i] for i in keep]
            only = tantivy.Query.const_score_query(tantivy.Query.term_set_query(self._schema, "slot", slots), 0.0)
            return self._hits(searcher, tantivy.Query.boolean_query(
                [(tantivy.Occur.Must, only), (tantivy.Occur.Must, scored)]), k)
        depth = 2 * k
        while True:  # exact: once k allowed ids are among the top `depth`, they are the top k allowed
            hits = self._hits(searcher, scored, depth)
            chosen = [h for h in hits if h[0] in keep][:k]
            if len(chosen) == k or len(hits) < depth:
                return chosen
            depth *= 4

    def _hits(self, searcher: Any, query: Any, k: int) -> list[tuple[str, float]]:
        out = []
        for score, address in searcher.search(query, k).hits:
            slot = searcher.doc(address)["slot"][0]
            if score > 0.0 and slot in self._id_of:
                out.append((self._id_of[slot], float(score)))
        return out

    def _buffered_hits(self, terms: list[str], keep: set[str] | None) -> list[tuple[str, float]]:
        """BM25 of buffered documents as if they were committed without moving the statistics
        (the committed documents' N, n and average length; the buffer's own while nothing is committed)."""
        committed = self._searcher.num_docs - len(self._gone)
        scores: dict[str, float] = {}
        for at, (field, weight) in enumerate(self._fields):
            if committed > 0:
                docs, average = committed, self._committed_length[at] / committed
                frequency = {t: self._searcher.doc_freq(field, t) for t in terms}
            else:
                docs = len(self._buffered)
                average = sum(entry[at][1] for entry in self._buffered.values()) / docs
                frequency = {t: sum(1 for entry in self._buffered.values() if t in entry[at][0]) for t in terms}
            if average <= 0:
                continue
            for doc_id, entry in self._buffered.items():
                if keep is not None and doc_id not in keep:
                    continue
                counts, length = entry[at]
                for term in terms:
                    tf = counts.get(term, 0)
                    if tf:
                        idf = math.log(1 + (docs - frequency[term] + 0.5) / (frequency[term] + 0.5))
                        norm = tf + BM25_K1 * (1 - BM25_B + BM25_B * length / average)
                        scores[doc_id] = scores.get(doc_id, 0.0) + weight * idf * tf * (BM25_K1 + 1) / norm
        return [(i, s) for i, s in scores.items() if s > 0]

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._slot_of

    def is_sealed(self, doc_id: str) -> bool:
        return doc_id in self._sealed

    # -- persistence ---------------------------------------------------------------------------------

    def state(self) -> bytes:
        """The terms of every unsealed document, for ``from_state``; sealed ones are left out."""
        with self._lock:
            docs = [[doc_id, *fields] for doc_id, fields in self._terms.items() if doc_id not in self._sealed]
        return msgpack.packb({"version": STATE_VERSION, "tokenizer": self.tokenizer.name,
                              "context_weights": list(self.context_weights), "docs": docs})

    @classmethod
    def from_state(cls, state: bytes, tokenizer: Tokenizer | None = None,
                   buffer_docs: int = BUFFER_DOCS) -> LexicalIndex:
        """An index rebuilt from ``state()`` (no tokenising). Add the sealed documents back with
        ``add(..., sealed=True)``. A state made by another tokenizer raises: rebuild from the texts."""
        try:
            data = msgpack.unpackb(state)
            version, name, weights, docs = data["version"], data["tokenizer"], data["context_weights"], data["docs"]
        except (ValueError, TypeError, KeyError, msgpack.ExtraData) as err:
            raise InvalidInputError(f"not a lexical index state ({err}); rebuild the index from the texts") from err
        index = cls(tokenizer, context_weights=weights, buffer_docs=buffer_docs)
        if version != STATE_VERSION or name != index.tokenizer.name:
            raise InvalidInputError(f"lexical state version {version} with tokenizer {name!r}; this one reads "
                                    f"{STATE_VERSION} with {index.tokenizer.name!r}: rebuild the index from the texts")
        if docs:
            index._add_terms([d[0] for d in docs], [tuple(d[1:]) for d in docs], [False] * len(docs))
        return index
