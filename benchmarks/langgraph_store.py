"""TieredStore against LangGraph's own stores, on the same DailyDialog utterances and the same vectors.

Stores: TieredStore (durability "sync", the default, and "async"), LangGraph's InMemoryStore with
an index, and LangGraph's SqliteStore with sqlite-vec vector search (a file in the same temporary
directory). All get ``index={"dims": 384, "embed": f, "fields": ["text"]}`` with one function ``f``:
the engine's own encoder (ONNX all-MiniLM-L6-v2), run once per text before timing and served from
a dict, so that every timing is the store's work and never the model's (one sentence costs 9-10 ms
to encode here: benchmarks/results/encoders.md).

Measured per store: put throughput (one ``put`` per item, as a graph node writes), search p50/p99
(``search(ns, query=q, limit=10)``), recall@10 against exact float32 cosine over the stored vectors
(tie-aware: a result counts when its exact similarity reaches the 10th best minus 1e-5; DailyDialog
repeats utterances), get p50/p99. Overhead: TieredStore's p50 over the engine call it wraps, on the
same store and keys (``get`` -> ``TieredMemory.get``, ``search`` -> ``TieredMemory.search(vector=...,
mode="dense")``, a fresh ``put`` -> ``TieredMemory.add(..., vector=, id=)``). Single calls are
interleaved in blocks of 20, every store in turn, after one untimed warm-up block.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/langgraph_store.py           # 3,000 items, 300 queries
    .venv/bin/python benchmarks/langgraph_store.py --items 500 --queries 50   # a quick look
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory import TieredMemory, make_encoder
from tiered_memory.bench.machine import describe_machine
from tiered_memory.bench.stats import summarize
from tiered_memory.corpora import load_dailydialog
from tiered_memory.integrations.langgraph import SEARCHED_KINDS, TieredStore, item_id

K = 10
BLOCK = 20
NAMESPACE = ("dailydialog", "user_1")
OUT = Path(__file__).resolve().parent / "results" / "frontends"


def sample(items: int, queries: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Distinct utterances (a repeated one would be one item under one key anyway), and held-out queries."""
    corpus = load_dailydialog()
    distinct = list(dict.fromkeys(u for dialogue in corpus.dialogues for u in dialogue))
    rng = random.Random(seed)
    chosen = rng.sample(distinct, items + queries)
    return chosen[:items], chosen[items:]


class CachedEmbedding:
    """The engine's encoder, run once per text ahead of time; the stores' calls read the table."""

    def __init__(self, texts: list[str]) -> None:
        encoder = make_encoder("default")
        vectors = encoder.encode(texts)
        self.table = {text: vectors[i] for i, text in enumerate(texts)}

    def __call__(self, texts: list[str]) -> list[list[float]]:
        return [self.table[text] for text in texts]


def interleaved(calls: dict[str, Callable[[Any], object]], arguments: list[Any]) -> dict[str, list[int]]:
    """Nanoseconds per call, blocks of BLOCK arguments per store in rotating order; block 0 untimed."""
    samples: dict[str, list[int]] = {name: [] for name in calls}
    names = list(calls)
    clock = time.perf_counter_ns
    blocks = [arguments[i:i + BLOCK] for i in range(0, len(arguments), BLOCK)]
    for number, block in enumerate([blocks[0], *blocks]):
        order = names[number % len(names):] + names[:number % len(names)]
        for name in order:
            call = calls[name]
            for argument in block:
                started = clock()
                call(argument)
                elapsed = clock() - started
                if number:
                    samples[name].append(elapsed)
    return samples


def tie_aware_recall(exact: np.ndarray, returned: list[int]) -> float:
    kth = np.sort(exact)[-K]
    return float(np.mean(exact[returned] >= kth - 1e-5)) if returned else 0.0


def sqlite_connection(path: Path) -> tuple[Any, str]:
    """A connection that can load sqlite-vec: the standard library's when this Python allows
    extensions, else pysqlite3's (pyenv's default build has no enable_load_extension)."""
    import sqlite3

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3.connect(str(path), check_same_thread=False, isolation_level=None), "sqlite3"
    import pysqlite3.dbapi2 as pysqlite3  # pip install pysqlite3-binary (in the dev extra)

    return pysqlite3.connect(str(path), check_same_thread=False, isolation_level=None), "pysqlite3"


def peer_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite", "sqlite-vec", "pysqlite3-binary"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def run(items: int, queries: int, workdir: Path) -> dict[str, Any]:
    from langgraph.store.memory import InMemoryStore
    from langgraph.store.sqlite import SqliteStore

    texts, query_texts = sample(items, queries)
    embed = CachedEmbedding(texts + query_texts)
    def index() -> dict[str, Any]:  # a fresh dict per store: a store may keep or change the one it is given
        return {"dims": 384, "embed": embed, "fields": ["text"]}

    keys = [f"utt-{i:05d}" for i in range(items)]
    stored = np.stack([embed.table[text] for text in texts])
    machine = describe_machine()

    engines = {name: TieredMemory(workdir / name, encoder=None, dimension=384, durability=durability)
               for name, durability in (("tiered-sync", "sync"), ("tiered-async", "async"))}
    connection, driver = sqlite_connection(workdir / "sqlite.db")
    stores: dict[str, Any] = {name: TieredStore(memory, index=index()) for name, memory in engines.items()}
    stores["inmemory"] = InMemoryStore(index=index())
    # SqliteIndexConfig names the paths "text_fields" (it ignores "fields")
    stores["sqlite"] = SqliteStore(connection, index={**index(), "text_fields": ["text"]})
    stores["sqlite"].setup()

    result: dict[str, Any] = {"machine": machine, "items": items, "queries": queries, "k": K, "sqlite_driver": driver,
                              "peers": peer_versions(), "stores": {}}
    try:
        for name, store in stores.items():  # put throughput: one put per item, the whole corpus
            started = time.perf_counter()
            put_ns = []
            for key, text in zip(keys, texts):
                t0 = time.perf_counter_ns()
                store.put(NAMESPACE, key, {"text": text, "dialogue_turn": int(key[4:])})
                put_ns.append(time.perf_counter_ns() - t0)
            elapsed = time.perf_counter() - started
            result["stores"][name] = {"put_items_per_s": items / elapsed, "put": summarize(put_ns)}
            print(name, "put", f"{items / elapsed:,.0f}/s", flush=True)

        search_samples = interleaved(
            {name: (lambda q, s=store: s.search(NAMESPACE, query=q, limit=K)) for name, store in stores.items()},
            query_texts)
        get_keys = random.Random(1).choices(keys, k=max(1000, queries))
        get_samples = interleaved({name: (lambda k, s=store: s.get(NAMESPACE, k)) for name, store in stores.items()},
                                  get_keys)
        by_key = {key: i for i, key in enumerate(keys)}
        for name, store in stores.items():
            recalls = []
            for text in query_texts:
                exact = stored @ embed.table[text]
                found = [by_key[item.key] for item in store.search(NAMESPACE, query=text, limit=K)]
                recalls.append(tie_aware_recall(exact, found))
            result["stores"][name].update(search=summarize(search_samples[name]), get=summarize(get_samples[name]),
                                          recall_at_10=float(np.mean(recalls)))
            print(name, "search p50", f"{result['stores'][name]['search']['p50_us']:.0f} us",
                  "recall", f"{np.mean(recalls):.4f}", "get p50", f"{result['stores'][name]['get']['p50_us']:.1f} us",
                  flush=True)

        result["overhead"] = overhead(stores["tiered-sync"], engines["tiered-sync"], keys, query_texts, embed)
        print("overhead", json.dumps(result["overhead"]), flush=True)
    finally:
        connection.close()
        for store in stores.values():
            if isinstance(store, TieredStore):
                store.close()
        for memory in engines.values():
            memory.close()
    return result


def overhead(store: TieredStore, memory: TieredMemory, keys: list[str], query_texts: list[str],
             embed: CachedEmbedding) -> dict[str, Any]:
    """TieredStore's p50 over the engine call it makes, interleaved on the same store."""
    engine_namespace = store.namespace_prefix + ".".join(NAMESPACE)
    ids = {key: item_id(engine_namespace, key) for key in keys}
    get_keys = random.Random(2).choices(keys, k=1000)
    gets = interleaved({"store": lambda k: store.get(NAMESPACE, k),
                        "engine": lambda k: memory.get(ids[k], namespace=engine_namespace)}, get_keys)
    searches = interleaved({
        "store": lambda q: store.search(NAMESPACE, query=q, limit=K),
        "engine": lambda q: memory.search(vector=np.asarray(embed.table[q]), namespace=engine_namespace, k=2 * K + 10,
                                          kinds=SEARCHED_KINDS, mode="dense"),
    }, query_texts)
    # Fresh writes: TieredStore.put of a new key against TieredMemory.add of a new memory of the same size.
    texts = query_texts  # vectors are in the table; each text is put once per side, in its own namespace
    new_keys = iter(range(10**6))
    puts = interleaved({
        "store": lambda q: store.put(("fresh", "store"), f"n{next(new_keys)}", {"text": q}),
        "engine": lambda q: memory.add(q, namespace="raw/fresh", vector=np.asarray(embed.table[q]),
                                       id=f"raw{next(new_keys)}",
                                       metadata={"key": q, "value": json.dumps({"text": q})}),
    }, texts)
    out: dict[str, Any] = {}
    for name, samples in (("get", gets), ("search", searches), ("put", puts)):
        store_p50, engine_p50 = summarize(samples["store"])["p50_us"], summarize(samples["engine"])["p50_us"]
        out[name] = {"store_p50_us": store_p50, "engine_p50_us": engine_p50, "ratio": store_p50 / engine_p50}
    return out


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    libs = m["libraries"]
    lines = [
        "# LangGraph stores: TieredStore vs InMemoryStore and SqliteStore",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load {m['load_average_1m']:.2f} at start, Python {m['python']}, "
        f"revision {m['git_revision']}. Libraries: {', '.join(f'{k} {v}' for k, v in libs.items() if v)}. "
        f"Peers: {', '.join(f'{k} {v}' for k, v in r['peers'].items() if v)} (SqliteStore through "
        f"{r['sqlite_driver']}).",
        "",
        f"Data: {r['items']:,} distinct DailyDialog utterances as items "
        f"`{{\"text\": ..., \"dialogue_turn\": n}}` in one namespace, {r['queries']} held-out utterances as "
        "queries (seed 0). Every store indexes `text` with the same "
        "function: the engine's ONNX all-MiniLM-L6-v2, run once per text before timing (timings exclude the model). "
        "Single calls interleaved in blocks of 20, warm-up block discarded. "
        "Command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/langgraph_store.py`.",
        "",
        "| store | put items/s | put p50 µs | search p50 µs | search p99 µs | recall@10 (tie-aware) "
        "| get p50 µs | get p99 µs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {"tiered-sync": "TieredStore (durability sync, default)", "tiered-async": "TieredStore (durability async)",
              "inmemory": "InMemoryStore (index)", "sqlite": "SqliteStore (sqlite-vec)"}
    for name, s in r["stores"].items():
        lines.append(f"| {labels.get(name, name)} | {s['put_items_per_s']:,.0f} | {s['put']['p50_us']:,.0f} | "
                     f"{s['search']['p50_us']:,.0f} | {s['search']['p99_us']:,.0f} | {s['recall_at_10']:.4f} | "
                     f"{s['get']['p50_us']:,.1f} | {s['get']['p99_us']:,.1f} |")
    lines += ["", "TieredStore's overhead over the engine call it wraps (durability sync, same store, interleaved):",
              "",
              "| operation | TieredStore p50 µs | TieredMemory p50 µs | ratio |", "|---|---|---|---|"]
    calls = {"get": "get → `get(id, namespace=)`", "search": "search → `search(vector=, mode=\"dense\", kinds=)`",
             "put": "put (new key) → `add(text, vector=, id=, metadata=)`"}
    for name, o in r["overhead"].items():
        lines.append(f"| {calls[name]} | {o['store_p50_us']:,.1f} | {o['engine_p50_us']:,.1f} | {o['ratio']:.2f}x |")
    lines += [
        "",
        "Reading the numbers: InMemoryStore keeps everything in Python dicts and scans every vector per query "
        "(exact, no durability); SqliteStore writes each put in a transaction and scans sqlite-vec rows; TieredStore "
        "writes each put durably to LMDB (fsync with durability sync) and searches the engine's tiers (an hnswlib "
        "graph over int8 codes beyond 1,024 items, so its recall is approximate). A TieredStore put also reads the "
        "key's record first (an update keeps created_at and skips re-embedding unchanged texts).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="langgraph-bench-") as workdir:
        result = run(args.items, args.queries, Path(workdir))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "langgraph.json").write_text(json.dumps(result, indent=1))
    (args.out / "langgraph.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
