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
may carry a second text, its *context* (e.g. the neighbouring turns of a conversation), searched
as a field of its own whose BM25 is added with weight ``context_weight``. Deleted documents leave
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
from .lexical_tokens import Tokenizer

STATE_VERSION = 1
BM25_K1, BM25_B = 1.2, 0.75  # tantivy's constants, mirrored where buffered documents are scored in Python
# Documents added one at a time wait in a buffer scored in Python, because a tantivy commit costs
# 10-30 ms here (benchmarks/results/lexical/libraries.md, tantivy-ram "add one") and a buffered
# document costs a few microseconds per query; the buffer is committed when it reaches this size.
BUFFER_DOCS = 256
WRITER_HEAP_BYTES = 15_000_000  # tantivy's minimum per writer thread; the writer is dropped after each commit
# Below this share of the index, an allowed= set is applied inside tantivy (a term-set filter);
# above it, the top hits are fetched and filtered, doubling the depth until k allowed ones are in.
FILTER_IN_INDEX_BELOW = 0.25


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("slot", stored=True, indexed=True, fast=True)
    # Terms come tokenized (lexical_tokens.Tokenizer), joined by spaces: tantivy only splits them.
    builder.add_text_field("body", tokenizer_name="whitespace", index_option="freq")
    builder.add_text_field("context", tokenizer_name="whitespace", index_option="freq")
    return builder.build()


class LexicalIndex:
    """BM25 over one namespace's memories: ``add``, ``remove``, ``search``; ``state()`` to persist."""

    def __init__(self, tokenizer: Tokenizer | None = None, context_weight: float = 0.5,
                 buffer_docs: int = BUFFER_DOCS) -> None:
        if not 0.0 <= context_weight <= 1.0:
            raise InvalidInputError(f"context_weight={context_weight!r}: give a number from 0 to 1 "
                                    "(0 ignores contexts)")
        if isinstance(buffer_docs, bool) or not isinstance(buffer_docs, int) or buffer_docs < 0:
            raise InvalidInputError(f"buffer_docs={buffer_docs!r}: give an int >= 0 (0 commits every change)")
        self.tokenizer = tokenizer or Tokenizer()
        self.context_weight = float(context_weight)
        self.buffer_docs = buffer_docs
        self._schema = _schema()
        self._index = tantivy.Index(self._schema)  # RAM directory: nothing of it is written to disk
        self._writer: Any = None
        self._dirty = False  # the writer holds changes tantivy's searcher does not see yet
        self._searcher = self._index.searcher()
        self._lock = threading.RLock()
        self._next_slot = 0
        self._slot_of: dict[str, int] = {}  # every live document, committed or buffered
        self._id_of: dict[int, str] = {}
        self._terms: dict[str, tuple[str, str]] = {}  # id -> (body terms, context terms), space-joined
        self._sealed: set[str] = set()
        self._buffered: dict[str, tuple[Counter[str], int, Counter[str], int]] = {}  # id -> tf and length per field
        self._gone: set[int] = set()  # slots deleted in the writer, still in tantivy's searcher
        self._committed_length = [0, 0]  # total terms of the committed live documents, per field

    # -- changes -------------------------------------------------------------------------------------

    def add(self, ids: Sequence[str], texts: Sequence[str], *, contexts: Sequence[str] | None = None,
            sealed: bool | Sequence[bool] = False) -> None:
        """Index `texts` under `ids` (an id already present is replaced). `contexts`: one extra text
        per document, weighted by ``context_weight``. `sealed`: documents kept out of ``state()``."""
        ids, texts = list(ids), list(texts)
        if len(ids) != len(texts):
            raise InvalidInputError(f"{len(ids)} ids for {len(texts)} texts; pass one id per text")
        contexts = [""] * len(ids) if contexts is None else list(contexts)
        if len(contexts) != len(ids):
            raise InvalidInputError(f"{len(contexts)} contexts for {len(ids)} texts; pass one per text or none")
        flags = [sealed] * len(ids) if isinstance(sealed, bool) else list(sealed)
        if len(flags) != len(ids) or not all(isinstance(f, bool) for f in flags):
            raise InvalidInputError("sealed must be True, False, or one bool per text")
        for value in (*ids, *texts, *contexts):
            if not isinstance(value, str):
                raise InvalidTextError(f"ids, texts and contexts must be str, got {type(value).__name__}")
        if len(set(ids)) != len(ids):
            raise InvalidInputError("the same id appears twice in one add; pass each id once")
        terms = [(" ".join(self.tokenizer.tokenize(t)), " ".join(self.tokenizer.tokenize(c)))
                 for t, c in zip(texts, contexts)]
        self._add_terms(ids, terms, flags)

    def _add_terms(self, ids: Sequence[str], terms: Sequence[tuple[str, str]], flags: Sequence[bool]) -> None:
        with self._lock:
            self.remove([i for i in ids if i in self._slot_of])
            if len(self._buffered) + len(ids) > self.buffer_docs:
                self._commit()  # flush what is buffered; this batch goes straight to tantivy
                writer = self._open_writer()
                for doc_id, (body, context) in zip(ids, terms):
                    slot = self._new_slot(doc_id)
                    writer.add_document(tantivy.Document(slot=slot, body=body, context=context))
                    self._committed_length[0] += body.count(" ") + 1 if body else 0
                    self._committed_length[1] += context.count(" ") + 1 if context else 0
                self._dirty = True
                self._commit()
            else:
                for doc_id, (body, context) in zip(ids, terms):
                    self._new_slot(doc_id)
                    body_terms, context_terms = body.split(), context.split()
                    self._buffered[doc_id] = (Counter(body_terms), len(body_terms),
                                              Counter(context_terms), len(context_terms))
            for doc_id, pair, flag in zip(ids, terms, flags):
                self._terms[doc_id] = pair
                if flag:
                    self._sealed.add(doc_id)

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
                body, context = self._terms.pop(doc_id)
                self._sealed.discard(doc_id)
                if self._buffered.pop(doc_id, None) is None:  # committed (or in the writer): delete there
                    self._open_writer().delete_documents_by_term("slot", slot)
                    self._gone.add(slot)
                    self._dirty = True
                    self._committed_length[0] -= len(body.split())
                    self._committed_length[1] -= len(context.split())
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
            for doc_id in self._buffered:
                body, context = self._terms[doc_id]
                writer.add_document(tantivy.Document(slot=self._slot_of[doc_id], body=body, context=context))
                self._committed_length[0] += self._buffered[doc_id][1]
                self._committed_length[1] += self._buffered[doc_id][3]
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
        clauses = [(tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "body", t)) for t in terms]
        if self.context_weight > 0:
            clauses += [(tantivy.Occur.Should, tantivy.Query.boost_query(
                tantivy.Query.term_query(self._schema, "context", t), self.context_weight)) for t in terms]
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
        fields = [("body", 0, 1.0)] + ([("context", 2, self.context_weight)] if self.context_weight > 0 else [])
        scores: dict[str, float] = {}
        for field, at, weight in fields:
            if committed > 0:
                docs, average = committed, self._committed_length[at // 2] / committed
                frequency = {t: self._searcher.doc_freq(field, t) for t in terms}
            else:
                docs = len(self._buffered)
                average = sum(b[at + 1] for b in self._buffered.values()) / docs
                frequency = {t: sum(1 for b in self._buffered.values() if t in b[at]) for t in terms}
            if average <= 0:
                continue
            for doc_id, entry in self._buffered.items():
                if keep is not None and doc_id not in keep:
                    continue
                counts, length = entry[at], entry[at + 1]
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
            docs = [[doc_id, body, context] for doc_id, (body, context) in self._terms.items()
                    if doc_id not in self._sealed]
        return msgpack.packb({"version": STATE_VERSION, "tokenizer": self.tokenizer.name,
                              "context_weight": self.context_weight, "docs": docs})

    @classmethod
    def from_state(cls, state: bytes, tokenizer: Tokenizer | None = None,
                   buffer_docs: int = BUFFER_DOCS) -> LexicalIndex:
        """An index rebuilt from ``state()`` (no tokenising). Add the sealed documents back with
        ``add(..., sealed=True)``. A state made by another tokenizer raises: rebuild from the texts."""
        try:
            data = msgpack.unpackb(state)
            version, name, weight, docs = data["version"], data["tokenizer"], data["context_weight"], data["docs"]
        except (ValueError, TypeError, KeyError, msgpack.ExtraData) as err:
            raise InvalidInputError(f"not a lexical index state ({err}); rebuild the index from the texts") from err
        index = cls(tokenizer, context_weight=weight, buffer_docs=buffer_docs)
        if version != STATE_VERSION or name != index.tokenizer.name:
            raise InvalidInputError(f"lexical state version {version} with tokenizer {name!r}; this one reads "
                                    f"{STATE_VERSION} with {index.tokenizer.name!r}: rebuild the index from the texts")
        if docs:
            index._add_terms([d[0] for d in docs], [(d[1], d[2]) for d in docs], [False] * len(docs))
        return index
