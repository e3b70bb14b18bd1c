"""Which library should hold a namespace's lexical index: bm25s, tantivy or SQLite FTS5, measured.

    python benchmarks/lexical_libraries.py [--out benchmarks/results/lexical] [--queries 300]

Every library gets the same terms (``tiered_memory.search.lexical_tokens.Tokenizer``: stop words removed,
Snowball English stems), BM25 with k1=1.2, b=0.75, k=10, each on disk as the engine would keep it.
Corpora: LoCoMo (5 conversations, each its own index of 369-689 turns, queried with its 1-4
category questions), the first 10k DailyDialog utterances, and 100k documents made of all 62,142
DailyDialog utterances then the first 37,858 again (DailyDialog has no 100k distinct ones;
queries: 300 utterances drawn at random, seed 0). Each (library, corpus) runs in a fresh process so
its RSS growth is its own; all in one run, one after the other, on an otherwise idle machine.

Measured: build (insert every document and make it searchable), persist and reopen, add one
document and make it visible to the next search, delete one, query latency (p50/p90 of single
queries, k=10), RSS growth over the process with the terms already in RAM, bytes on disk.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LIBRARIES = ("bm25s", "tantivy", "tantivy-ram", "sqlite-fts5", "sqlite-fts5-ram")
CORPORA = ("locomo", "dailydialog-10k", "dailydialog-100k")
K = 10
UPDATES = 15  # single-document adds and deletes timed per index


def _rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def _disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_corpus(name: str, queries: int) -> list[tuple[list[str], list[str]]]:
    """[(documents, queries)] per namespace, as raw texts."""
    from tiered_memory.corpora import load_dailydialog, load_locomo
    from tiered_memory.reports.locomo_eval import ANSWERABLE_CATEGORIES, memory_text

    if name == "locomo":
        out = []
        for conv in load_locomo():
            qs = [q.question for q in conv.questions if q.category in ANSWERABLE_CATEGORIES and q.evidence]
            out.append(([memory_text(t) for t in conv.turns], qs))
        return out
    utterances = load_dailydialog().utterances
    size = 10_000 if name == "dailydialog-10k" else 100_000
    docs = [utterances[i % len(utterances)] for i in range(size)]
    rng = np.random.default_rng(0)
    picked = rng.choice(len(docs), size=queries, replace=False)
    return [(docs, [docs[i] for i in picked.tolist()])]


class Bm25sIndex:
    """bm25s keeps one static sparse matrix of precomputed scores: any change is a rebuild."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: list[int] = []
        self.docs: list[list[str]] = []

    def build(self, ids: list[int], docs: list[list[str]]) -> None:
        import bm25s

        self.ids, self.docs = list(ids), list(docs)
        self.retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
        self.retriever.index(self.docs, show_progress=False)

    def add(self, doc_id: int, doc: list[str]) -> None:
        self.build([*self.ids, doc_id], [*self.docs, doc])

    def delete(self, doc_id: int) -> None:
        where = self.ids.index(doc_id)
        self.build(self.ids[:where] + self.ids[where + 1:], self.docs[:where] + self.docs[where + 1:])

    def search(self, query: list[str], k: int) -> list[int]:
        if not query:
            return []
        docs, scores = self.retriever.retrieve([query], k=min(k, len(self.ids)), show_progress=False, n_threads=1)
        return [self.ids[d] for d, s in zip(docs[0].tolist(), scores[0].tolist()) if s > 0]

    def persist(self) -> None:
        self.retriever.save(str(self.path))
        (self.path / "ids.json").write_text(json.dumps(self.ids))

    def reopen(self) -> None:
        import bm25s

        self.retriever = bm25s.BM25.load(str(self.path))
        self.ids = json.loads((self.path / "ids.json").read_text())


class TantivyIndex:
    """tantivy: segments on disk, deletes as tombstones, a commit and a reader reload per change."""

    in_ram = False

    def __init__(self, path: Path) -> None:
        import tantivy

        path.mkdir(parents=True, exist_ok=True)
        builder = tantivy.SchemaBuilder()
        builder.add_integer_field("id", stored=True, indexed=True, fast=True)
        builder.add_text_field("body", tokenizer_name="whitespace", index_option="freq")
        self.schema = builder.build()
        self.path = path
        self.index = tantivy.Index(self.schema) if self.in_ram else tantivy.Index(self.schema, path=str(path))
        self.writer = self.index.writer(heap_size=15_000_000, num_threads=1)

    def _commit(self) -> None:
        self.writer.commit()
        self.index.reload()
        self.searcher = self.index.searcher()

    def build(self, ids: list[int], docs: list[list[str]]) -> None:
        import tantivy

        for doc_id, doc in zip(ids, docs):
            self.writer.add_document(tantivy.Document(id=doc_id, body=" ".join(doc)))
        self._commit()

    def add(self, doc_id: int, doc: list[str]) -> None:
        import tantivy

        self.writer.add_document(tantivy.Document(id=doc_id, body=" ".join(doc)))
        self._commit()

    def delete(self, doc_id: int) -> None:
        self.writer.delete_documents_by_term("id", doc_id)
        self._commit()

    def search(self, query: list[str], k: int) -> list[int]:
        import tantivy

        if not query:
            return []
        terms = [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, "body", t)) for t in query]
        hits = self.searcher.search(tantivy.Query.boolean_query(terms), k).hits
        return [self.searcher.doc(address)["id"][0] for _, address in hits]

    def persist(self) -> None:
        self.writer.wait_merging_threads()

    def reopen(self) -> None:
        import tantivy

        self.index = tantivy.Index.open(str(self.path))
        self.writer = self.index.writer(heap_size=15_000_000, num_threads=1)
        self.searcher = self.index.searcher()


class Fts5Index:
    """SQLite FTS5 (stdlib): b-tree segments in one file, deletes in place, a transaction per change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS t USING fts5(body, "
                        "tokenize='unicode61 remove_diacritics 0')")

    def build(self, ids: list[int], docs: list[list[str]]) -> None:
        with self.db:
            self.db.executemany("INSERT INTO t(rowid, body) VALUES (?, ?)",
                                [(i, " ".join(d)) for i, d in zip(ids, docs)])

    def add(self, doc_id: int, doc: list[str]) -> None:
        with self.db:
            self.db.execute("INSERT INTO t(rowid, body) VALUES (?, ?)", (doc_id, " ".join(doc)))

    def delete(self, doc_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM t WHERE rowid = ?", (doc_id,))

    def search(self, query: list[str], k: int) -> list[int]:
        if not query:
            return []
        match = " OR ".join(f'"{t}"' for t in query)
        rows = self.db.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT ?", (match, k))
        return [r[0] for r in rows]

    def persist(self) -> None:
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def reopen(self) -> None:
        self.db.close()
        self.db = sqlite3.connect(self.path)


class TantivyRamIndex(TantivyIndex):
    """tantivy's RAM directory: nothing on disk, so reopening is a rebuild from the terms."""

    in_ram = True

    def build(self, ids: list[int], docs: list[list[str]]) -> None:
        self.kept = (list(ids), list(docs))
        super().build(ids, docs)

    def persist(self) -> None:
        pass

    def reopen(self) -> None:
        self.__init__(self.path)  # type: ignore[misc]
        super().build(*self.kept)


class Fts5RamIndex(Fts5Index):
    """FTS5 in a ``:memory:`` database: nothing on disk, reopening is a rebuild from the terms."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE VIRTUAL TABLE t USING fts5(body, tokenize='unicode61 remove_diacritics 0')")

    def build(self, ids: list[int], docs: list[list[str]]) -> None:
        self.kept = (list(ids), list(docs))
        super().build(ids, docs)

    def persist(self) -> None:
        pass

    def reopen(self) -> None:
        self.db.close()
        self.__init__(self.path)  # type: ignore[misc]
        super().build(*self.kept)


INDEXES = {"bm25s": Bm25sIndex, "tantivy": TantivyIndex, "tantivy-ram": TantivyRamIndex,
           "sqlite-fts5": Fts5Index, "sqlite-fts5-ram": Fts5RamIndex}


def run_one(library: str, corpus: str, queries: int) -> dict[str, Any]:
    """One library on one corpus, in this (fresh) process."""
    from tiered_memory.search.lexical_tokens import Tokenizer

    tokenizer = Tokenizer()
    namespaces = load_corpus(corpus, queries)
    started = time.perf_counter()
    tokenized = [(tokenizer.tokenize_many(docs), tokenizer.tokenize_many(qs)) for docs, qs in namespaces]
    tokenize_s = time.perf_counter() - started
    extra_doc = tokenizer.tokenize("Caroline adopted a rescue dog named Biscuit from the Portland shelter in May")
    rss_before = _rss()
    builds, persists, reopens, adds, deletes, latencies, disks = [], [], [], [], [], [], []
    scratch = Path(tempfile.mkdtemp(prefix="tm-lexbench-"))
    try:
        indexes = []
        for n, (docs, _) in enumerate(tokenized):
            index = INDEXES[library](scratch / f"ns{n}")
            ids = list(range(len(docs)))
            t0 = time.perf_counter()
            index.build(ids, docs)
            builds.append(time.perf_counter() - t0)
            indexes.append(index)
        rss_after = _rss()
        for index, (_, qs) in zip(indexes, tokenized):
            for q in qs[:20]:  # warm-up, discarded
                index.search(q, K)
            for q in qs:
                t0 = time.perf_counter()
                index.search(q, K)
                latencies.append(time.perf_counter() - t0)
            # Single-document changes, each made visible to the next search (and checked).
            for j in range(UPDATES):
                new_id = 10_000_000 + j
                t0 = time.perf_counter()
                index.add(new_id, extra_doc)
                adds.append(time.perf_counter() - t0)
                if new_id not in index.search(extra_doc, 2 + j):
                    raise RuntimeError(f"{library}: an added document was not found by the next search")
            for j in range(UPDATES):
                t0 = time.perf_counter()
                index.delete(10_000_000 + j)
                deletes.append(time.perf_counter() - t0)
            if any(i >= 10_000_000 for i in index.search(extra_doc, K)):
                raise RuntimeError(f"{library}: a deleted document was still found")
            t0 = time.perf_counter()
            index.persist()
            persists.append(time.perf_counter() - t0)
            disks.append(_disk(index.path))
            t0 = time.perf_counter()
            index.reopen()
            index.search(qs[0], K)
            reopens.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    docs_total = sum(len(d) for d, _ in tokenized)
    return {
        "library": library, "corpus": corpus, "namespaces": len(tokenized),
        "documents_per_namespace": [len(d) for d, _ in tokenized], "queries": len(latencies),
        "tokenize_s_per_1k_docs": tokenize_s / docs_total * 1000,
        "build_s_median": statistics.median(builds), "persist_s_median": statistics.median(persists),
        "reopen_and_first_query_s_median": statistics.median(reopens),
        "add_one_ms_median": statistics.median(adds) * 1e3, "delete_one_ms_median": statistics.median(deletes) * 1e3,
        "query_ms_p50": float(np.percentile(latencies, 50) * 1e3),
        "query_ms_p90": float(np.percentile(latencies, 90) * 1e3),
        "query_ms_p99": float(np.percentile(latencies, 99) * 1e3),
        "rss_growth_mib_per_namespace": (rss_after - rss_before) / 2**20 / len(tokenized),
        "disk_mib_per_namespace": statistics.mean(disks) / 2**20,
    }


def version(library: str) -> str:
    if library == "sqlite-fts5":
        return f"SQLite {sqlite3.sqlite_version}"
    from importlib.metadata import version as dist_version

    return f"{library} {dist_version(library)}"


def render(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = ["# Lexical index libraries, measured", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}. "
             f"Versions: {', '.join(machine['versions'])}. Run by `python benchmarks/lexical_libraries.py`.", "",
             "Same terms for all (stop words removed, Snowball English stems), BM25 k1=1.2 b=0.75, top 10, "
             "single queries, one thread. Add/delete: one document, visible to the next search (medians of "
             f"{UPDATES} per index). RSS: growth after building, per namespace.", ""]
    for corpus in CORPORA:
        chosen = [r for r in rows if r["corpus"] == corpus]
        if not chosen:
            continue
        sizes = chosen[0]["documents_per_namespace"]
        lines += [f"## {corpus} ({len(sizes)} namespace(s) of {min(sizes)}-{max(sizes)} documents, "
                  f"{chosen[0]['queries']} queries)", "",
                  "| library | build s | add one ms | delete one ms | query p50 ms | p90 ms | p99 ms | "
                  "reopen + 1st query s | RSS MiB | disk MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in chosen:
            lines.append(f"| {r['library']} | {r['build_s_median']:.3f} | {r['add_one_ms_median']:.2f} | "
                         f"{r['delete_one_ms_median']:.2f} | {r['query_ms_p50']:.3f} | {r['query_ms_p90']:.3f} | "
                         f"{r['query_ms_p99']:.3f} | {r['reopen_and_first_query_s_median']:.3f} | "
                         f"{r['rss_growth_mib_per_namespace']:.1f} | {r['disk_mib_per_namespace']:.2f} |")
        lines.append("")
    lines += ["## Reading", ""]
    for corpus in CORPORA:
        chosen = {r["library"]: r for r in rows if r["corpus"] == corpus}
        if "tantivy" in chosen:
            others = ", ".join(f"{lib} {chosen[lib]['query_ms_p50'] / chosen['tantivy']['query_ms_p50']:.0f}x"
                               for lib in ("bm25s", "sqlite-fts5") if lib in chosen)
            lines.append(f"- {corpus}: query p50 relative to tantivy: {others}.")
    lines += ["- bm25s has no add or delete: every change is a rebuild of its score matrix (the add/delete columns "
              "grow with the namespace). tantivy and FTS5 change one document in place; tantivy's cost is the "
              "commit that makes it searchable, FTS5's is scoring every matching row at query time.", ""]
    tok = [r["tokenize_s_per_1k_docs"] for r in rows]
    lines.append(f"Tokenising (the same for every library, not in the build times): "
                 f"{statistics.median(tok) * 1000:.1f} ms per 1,000 documents (median over runs).")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lexical"))
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--one", nargs=2, metavar=("LIBRARY", "CORPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.queries)))
        return 0
    rows = []
    for corpus in args.corpora.split(","):
        for library in args.libraries.split(","):
            done = subprocess.run([sys.executable, __file__, "--one", library, corpus, "--queries", str(args.queries)],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode != 0:
                raise SystemExit(f"{library} on {corpus} failed:\n{done.stderr}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(),
               "versions": [version(lib) for lib in ("bm25s", "tantivy", "sqlite-fts5")]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "libraries.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    (args.out / "libraries.md").write_text(render(rows, machine))
    print(args.out / "libraries.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
