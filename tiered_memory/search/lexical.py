"""A namespace's lexical index: BM25 over stemmed words, on tantivy; unsealed part on disk, sealed part in RAM.

Why tantivy (benchmarks/results/lexical/libraries.md, one run, same terms for every library):
its top-k query (block-max WAND) is 7-60x faster than SQLite FTS5 and bm25s at LoCoMo size and at
100k documents; bm25s cannot add or delete a document without rebuilding its whole matrix; FTS5
updates in place cheaply but ranks by scoring every matching row. Tantivy's cost is the commit
that makes a change searchable (10-30 ms here), so single changes wait in a small buffer that
searches score in Python, and are committed together.

Persistence (benchmarks/results/lexical/rebuild.md): reopening a tantivy directory and running
one query takes 1.4 ms at 10k documents and 3.0 ms at 100k, where rebuilding from the texts takes
0.37 s and 4.0 s; so the unsealed documents live in a tantivy directory (``path=``), and a
namespace loads by opening it. Sealed documents (``add(..., sealed=True)``) go to a second tantivy
index in RAM that is never written anywhere. With ``path=None`` everything is in RAM.

Scores are tantivy's BM25 (k1=1.2, b=0.75, idf = ln(1 + (N - n + 0.5) / (n + 0.5))). A document
may carry *context* texts (e.g. the neighbouring turns of a conversation), each level searched as
a field of its own whose BM25 is added with that level's weight (``context_weights``). Where a
namespace holds both sealed and unsealed documents, each part has its own N, n and average length
and their hits are merged by score (BM25 within each part, close to it across them). Deleted
documents leave their counts in N and n until tantivy merges the segments that held them.

How the engine should call it (a design note for the integration; nothing here calls the engine)
- One ``LexicalIndex`` per namespace, owned by whatever holds a loaded namespace, created when the
  namespace loads and dropped (after ``flush()``) when it unloads, so an idle namespace costs no
  RAM (measured RSS of a built index: 16.5 MiB at 10k documents, 47 MiB at 100k). Directory:
  ``<store>/lexical/<hash of the namespace name>/`` (names may hold "/"), made on first add.
- Hooks, each after the cold store's transaction has committed (LMDB stays the truth):
  add / add_many -> ``add(ids, texts, contexts=..., sealed=[m.sensitive ...])``;
  update of a memory's text -> ``add([id], [new_text], ...)`` (replaces; a metadata-only update
  needs nothing); delete / forget / expiry -> ``remove(ids)``; a namespace sealed with
  ``seal_namespace`` -> every later add with ``sealed=True``.
- Neighbour context (benchmarks/reports/retrieval.md: 0.738 -> 0.805 hit@10 fused): a memory's
  contexts are the memories one and two places before and after it in ``created_at`` order in
  its namespace (measured within a LoCoMo session; across session boundaries it is untested).
  A new memory changes its predecessors' contexts, so the engine re-adds the previous two as
  well (buffered, microseconds). Memories without a conversation order (facts, notes) get no
  contexts. The dense side uses ``fusion.with_neighbours`` over the scores of an exact scan.
- Durability: ``flush(stamp=generation)`` when idle, on unload and on close; a change before the
  flush lives only in RAM. On load, open the directory; if ``stamp`` differs from the namespace's
  generation (a crash since the last flush), rebuild: remove the directory and ``add`` the
  namespace's texts read from cold (0.37 s at 10k). Then decrypt the namespace's sealed memories
  and ``add(..., sealed=True)`` them: sealed terms reach no file, at the price of re-tokenising
  the sealed memories at every load.
- Search, mode "hybrid": the dense top 100 (with neighbours) and ``search(text, 100, allowed=)``
  where ``allowed`` is the ids that pass ``kinds`` / ``where`` / ``only_ids`` (the namespace is the
  index itself), fused by ``fusion.weighted_sum`` (z-score, equal weights); a ``Hit`` can carry
  the cosine, the BM25 score and the fused score. Mode "lexical": this index alone.
- Locking: the class has its own lock and may be searched from several threads; tantivy allows
  one writer per directory, so only the process holding the store's write lock opens ``path``.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import tantivy

from tiered_memory.errors import ConfigError, EmptyTextError, InvalidInputError, InvalidTextError, StorageError
from tiered_memory.search.fusion import NEIGHBOUR_WEIGHTS
from tiered_memory.search.lexical_tokens import Tokenizer

FORMAT_VERSION = 1
SIDECAR = "lexical.json"  # tokenizer, weights and term totals of the directory's committed documents
CONTEXT_WEIGHTS = NEIGHBOUR_WEIGHTS  # (0.5, 0.25): half the weight per step away, as the dense side
BM25_K1, BM25_B = 1.2, 0.75  # tantivy's constants, mirrored where buffered documents are scored in Python
# Documents added one at a time wait in a buffer scored in Python, because a tantivy commit costs
# 10-30 ms here (benchmarks/results/lexical/libraries.md, tantivy-ram "add one") and a buffered
# document costs a few microseconds per query; the buffer is committed when it reaches this size.
BUFFER_DOCS = 256
WRITER_HEAP_BYTES = 15_000_000  # tantivy's minimum per writer thread; the writer is dropped after each commit
# Below this share of a part, an allowed= set is applied inside tantivy (a term-set filter);
# above it, the top hits are fetched and filtered, widening the depth until k allowed ones are in.
FILTER_IN_INDEX_BELOW = 0.25


def _field_names(levels: int) -> list[str]:
    return ["body", *(f"context{level}" for level in range(levels))]


def _schema(levels: int) -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    # Terms come tokenized (lexical_tokens.Tokenizer), joined by spaces: tantivy only splits them.
    for name in _field_names(levels):
        builder.add_text_field(name, tokenizer_name="whitespace", index_option="freq")
        # Its length, so a delete can take it off the totals that buffered documents are scored with.
        builder.add_integer_field(f"{name}_terms", fast=True)
    return builder.build()


class _Part:
    """One tantivy index (a directory, or RAM) with its writer and the deletes not yet committed."""

    def __init__(self, schema: tantivy.Schema, fields: int, path: Path | None) -> None:
        self.schema, self.path = schema, path
        try:
            self.index = tantivy.Index(schema) if path is None else tantivy.Index(schema, path=str(path))
        except (OSError, ValueError) as err:
            raise StorageError(f"cannot open the lexical index at {path}: {err}") from err
        self.writer: Any = None
        self.dirty = False  # the writer holds deletes the searcher still sees
        self.gone: set[str] = set()  # ids deleted in the writer, still in the searcher
        self.lengths = [0] * fields  # total terms of the committed live documents, per field
        self.searcher = self.index.searcher()

    def open_writer(self) -> Any:
        if self.writer is None:
            try:
                self.writer = self.index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
            except ValueError as err:  # tantivy's directory lock: another writer holds it
                raise StorageError(f"the lexical index at {self.path} is open for writing elsewhere: {err}") from err
        return self.writer

    def has(self, doc_id: str) -> bool:
        if doc_id in self.gone or self.searcher.num_docs == 0:
            return False
        return self.searcher.search(tantivy.Query.term_query(self.schema, "id", doc_id), 1).count > 0

    def delete(self, doc_id: str, fields: Sequence[str]) -> None:
        """Delete a committed document (``has`` was true), taking its lengths off the totals."""
        hits = self.searcher.search(tantivy.Query.term_query(self.schema, "id", doc_id), 1).hits
        for at, name in enumerate(fields):
            self.lengths[at] -= self.searcher.fast_field_values(f"{name}_terms", [hits[0][1]])[0] or 0
        self.open_writer().delete_documents_by_term("id", doc_id)
        self.gone.add(doc_id)
        self.dirty = True

    def live(self) -> int:
        return self.searcher.num_docs - len(self.gone)

    def commit(self) -> None:
        if not self.dirty:
            return
        try:  # deletes and adds in the writer become visible together
            self.writer.commit()
            self.writer.wait_merging_threads()  # consumes the writer; merges finish before we go on
        except (OSError, ValueError, RuntimeError) as err:
            raise StorageError(f"the lexical index could not commit its changes: {err}") from err
        self.writer = None
        self.index.reload()
        self.searcher = self.index.searcher()
        self.dirty = False
        self.gone.clear()


class LexicalIndex:
    """BM25 over one namespace's memories: ``add``, ``remove``, ``search``, ``flush``.

    ``path``: the directory of the unsealed part (created if missing, reopened if present); None
    keeps everything in RAM. ``context_weights``: one weight per level of context a document may
    carry (level 0 the nearest), each level a field of its own; the default halves per step.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, tokenizer: Tokenizer | None = None,
                 context_weights: Sequence[float] = CONTEXT_WEIGHTS, buffer_docs: int = BUFFER_DOCS) -> None:
        weights = list(context_weights)
        if not all(isinstance(w, int | float) and not isinstance(w, bool) and 0.0 < w <= 1.0 for w in weights):
            raise InvalidInputError(f"context_weights={context_weights!r}: give numbers in (0, 1], one per level "
                                    "of context (an empty tuple ignores contexts)")
        if isinstance(buffer_docs, bool) or not isinstance(buffer_docs, int) or buffer_docs < 0:
            raise InvalidInputError(f"buffer_docs={buffer_docs!r}: give an int >= 0 (0 commits every change)")
        self.tokenizer = tokenizer or Tokenizer()
        self.context_weights = tuple(float(w) for w in weights)
        self.buffer_docs = buffer_docs
        self.path = None if path is None else Path(path)
        self._fields = list(zip(_field_names(len(weights)), (1.0, *self.context_weights)))
        self._schema = _schema(len(weights))
        self._lock = threading.RLock()
        self._settings = {"version": FORMAT_VERSION, "tokenizer": self.tokenizer.name,
                          "context_weights": list(self.context_weights)}
        lengths = None
        self.stamp: int | None = None  # what the last flush() was told; None before any
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            lengths = self._check_sidecar()
        self._plain = _Part(self._schema, len(self._fields), self.path)
        if lengths is not None:
            self._plain.lengths = lengths
        else:
            self._write_sidecar()  # before tantivy writes a file, so a directory with files always has one
        self._sealed_part = _Part(self._schema, len(self._fields), None)  # RAM only, whatever `path` is
        # id -> (terms per field, (term counts, length) per field, sealed): added, not yet in tantivy
        self._buffered: dict[str, tuple[tuple[str, ...], list[tuple[Counter[str], int]], bool]] = {}
        self._sealed_ids: set[str] = set()  # every sealed document, committed or buffered

    def _check_sidecar(self) -> list[int] | None:
        """The committed term totals of an existing index (None for an empty directory)."""
        sidecar = self.path / SIDECAR  # type: ignore[operator]
        if not sidecar.is_file():
            if any(self.path.iterdir()):  # type: ignore[union-attr]
                raise ConfigError(f"{self.path} holds files but no {SIDECAR}: not a lexical index; "
                                  "give an empty or missing directory")
            return None
        try:
            stored = json.loads(sidecar.read_text())
            found = {name: stored[name] for name in self._settings}
            lengths = [int(n) for n in stored["lengths"]]
            self.stamp = None if stored.get("stamp") is None else int(stored["stamp"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StorageError(f"{sidecar} is unreadable ({err}); delete the directory and rebuild the index "
                               "from the texts") from err
        if found != self._settings:
            raise ConfigError(f"the lexical index at {self.path} was built with {found}, this one uses "
                              f"{self._settings}; delete the directory and rebuild the index from the texts")
        return lengths

    def _write_sidecar(self) -> None:
        if self.path is None:
            return
        # The totals only weigh buffered documents; one a crash leaves stale after a commit shifts
        # their scores a little until the next commit rewrites it.
        temporary = self.path / (SIDECAR + ".tmp")
        temporary.write_text(json.dumps({**self._settings, "lengths": self._plain.lengths, "stamp": self.stamp}))
        os.replace(temporary, self.path / SIDECAR)

    # -- changes -------------------------------------------------------------------------------------

    def add(self, ids: Sequence[str], texts: Sequence[str], *,
            contexts: Sequence[str | Sequence[str]] | None = None, sealed: bool | Sequence[bool] = False) -> None:
        """Index `texts` under `ids` (an id already present is replaced). `contexts`: per document, a
        text or a tuple of texts, one per level of ``context_weights``. `sealed`: documents kept in
        RAM only, never written to `path`."""
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
        if len(set(ids)) != len(ids) or any(not i for i in ids):
            raise InvalidInputError("ids must be non-empty and distinct within one add; pass each id once")
        terms = [tuple(" ".join(self.tokenizer.tokenize(t)) for t in (text, *level, *[""] * (levels - len(level))))
                 for text, level in zip(texts, given)]
        with self._lock:
            if len(self._buffered) + len(ids) > self.buffer_docs:
                self._commit()  # what is buffered first; then this batch straight into tantivy, one commit
                names = [name for name, _ in self._fields]
                for doc_id, fields, flag in zip(ids, terms, flags):
                    for part in (self._plain, self._sealed_part):  # an empty part cannot hold it: no lookup
                        if part.searcher.num_docs and part.has(doc_id):
                            part.delete(doc_id, names)
                    self._put(self._part(flag), doc_id, fields)
                    (self._sealed_ids.add if flag else self._sealed_ids.discard)(doc_id)
                self._commit()
            else:
                self.remove(ids)
                for doc_id, fields, flag in zip(ids, terms, flags):
                    self._buffered[doc_id] = (fields, [(Counter(w), len(w)) for w in map(str.split, fields)], flag)
                    if flag:
                        self._sealed_ids.add(doc_id)

    def _part(self, sealed: bool) -> _Part:
        return self._sealed_part if sealed else self._plain

    def _put(self, part: _Part, doc_id: str, fields: tuple[str, ...]) -> None:
        lengths = [len(value.split()) for value in fields]
        values: dict[str, Any] = {name: value for (name, _), value in zip(self._fields, fields)}
        values.update({f"{name}_terms": n for (name, _), n in zip(self._fields, lengths)})
        part.open_writer().add_document(tantivy.Document(id=doc_id, **values))
        part.dirty = True
        for at, length in enumerate(lengths):
            part.lengths[at] += length

    def remove(self, ids: Iterable[str]) -> int:
        """Drop these documents (unknown ids are skipped); returns how many were present."""
        with self._lock:
            present = 0
            for doc_id in dict.fromkeys(ids):
                if self._buffered.pop(doc_id, None) is not None:
                    present += 1
                    self._sealed_ids.discard(doc_id)
                    continue
                part = self._part(doc_id in self._sealed_ids)
                if part.has(doc_id):
                    part.delete(doc_id, [name for name, _ in self._fields])
                    self._sealed_ids.discard(doc_id)
                    present += 1
            if len(self._plain.gone) + len(self._sealed_part.gone) > self.buffer_docs:
                self._commit()  # every search fetches this many extra hits to skip them
            return present

    def flush(self, stamp: int | None = None) -> None:
        """Commit buffered changes (searches see them either way; this makes them durable in `path`,
        searches cheaper again, and releases the writers). `stamp`: a number the caller reads back
        as ``stamp`` after reopening (e.g. the store generation the index is in step with)."""
        if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, int)):
            raise InvalidInputError(f"stamp={stamp!r}: give an int (e.g. the store's generation) or None")
        with self._lock:
            self._commit()
            if stamp is not None and stamp != self.stamp:
                self.stamp = stamp
                self._write_sidecar()

    def _commit(self) -> None:
        for doc_id, (fields, _, flag) in self._buffered.items():
            self._put(self._part(flag), doc_id, fields)
        self._buffered.clear()
        plain_changed = self._plain.dirty
        self._plain.commit()
        self._sealed_part.commit()
        if plain_changed:
            self._write_sidecar()

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
        if not terms:
            return [], []
        keep = None if allowed is None else set(allowed)
        with self._lock:
            clauses = []
            for name, weight in self._fields:
                for term in terms:
                    one = tantivy.Query.term_query(self._schema, name, term)
                    clauses.append((tantivy.Occur.Should, one if weight == 1.0 else
                                    tantivy.Query.boost_query(one, weight)))
            scored = tantivy.Query.boolean_query(clauses)
            hits: list[tuple[str, float]] = []
            for part in (self._plain, self._sealed_part):
                if part.searcher.num_docs:
                    hits += [h for h in self._part_hits(part, scored, k + len(part.gone), keep)
                             if h[0] not in part.gone and h[0] not in self._buffered][:k]
            if self._buffered:
                hits += self._buffered_hits(terms, keep)
            hits.sort(key=lambda h: -h[1])
            return [i for i, _ in hits[:k]], [s for _, s in hits[:k]]

    def _part_hits(self, part: _Part, scored: Any, k: int, keep: set[str] | None) -> list[tuple[str, float]]:
        if keep is None:
            return self._hits(part.searcher, scored, k)
        if not keep:
            return []
        if len(keep) < FILTER_IN_INDEX_BELOW * part.searcher.num_docs:
            only = tantivy.Query.const_score_query(tantivy.Query.term_set_query(self._schema, "id", list(keep)), 0.0)
            return self._hits(part.searcher, tantivy.Query.boolean_query(
                [(tantivy.Occur.Must, only), (tantivy.Occur.Must, scored)]), k)
        depth = 2 * k
        while True:  # exact: once k allowed ids are among the top `depth`, they are the top k allowed
            hits = self._hits(part.searcher, scored, depth)
            chosen = [h for h in hits if h[0] in keep][:k]
            if len(chosen) == k or len(hits) < depth:
                return chosen
            depth *= 4

    @staticmethod
    def _hits(searcher: Any, query: Any, k: int) -> list[tuple[str, float]]:
        return [(searcher.doc(address)["id"][0], float(score))
                for score, address in searcher.search(query, k).hits if score > 0.0]

    def _buffered_hits(self, terms: list[str], keep: set[str] | None) -> list[tuple[str, float]]:
        """BM25 of buffered documents as if they were committed without moving the statistics (the
        statistics of the part each will join; the buffer's own while that part is empty)."""
        scores: dict[str, float] = {}
        for part, flag in ((self._plain, False), (self._sealed_part, True)):
            group = {i: b for i, b in self._buffered.items() if b[2] == flag and (keep is None or i in keep)}
            if not group:
                continue
            committed = part.live()
            for at, (field, weight) in enumerate(self._fields):
                if committed > 0:
                    docs, average = committed, part.lengths[at] / committed
                    frequency = {t: part.searcher.doc_freq(field, t) for t in terms}
                else:
                    mine = [b for b in self._buffered.values() if b[2] == flag]
                    docs, average = len(mine), sum(b[1][at][1] for b in mine) / len(mine)
                    frequency = {t: sum(1 for b in mine if t in b[1][at][0]) for t in terms}
                if average <= 0:
                    continue
                for doc_id, (_, counts, _) in group.items():
                    tally, length = counts[at]
                    for term in terms:
                        tf = tally.get(term, 0)
                        if tf:
                            idf = math.log(1 + (docs - frequency[term] + 0.5) / (frequency[term] + 0.5))
                            norm = tf + BM25_K1 * (1 - BM25_B + BM25_B * length / average)
                            scores[doc_id] = scores.get(doc_id, 0.0) + weight * idf * tf * (BM25_K1 + 1) / norm
        return [(i, s) for i, s in scores.items() if s > 0]

    def __len__(self) -> int:
        with self._lock:  # a buffered id's older version was deleted when it was buffered
            return self._plain.live() + self._sealed_part.live() + len(self._buffered)

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        with self._lock:
            return doc_id in self._buffered or self._part(doc_id in self._sealed_ids).has(doc_id)

    def is_sealed(self, doc_id: str) -> bool:
        return doc_id in self._sealed_ids and doc_id in self
