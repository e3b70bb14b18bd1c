"""The scenarios: each measures ours and the peers on the same inputs, interleaved, and returns
one table (rows of p50/p90/p99/max, throughput, recall@10 where it applies).

Interleaving: the inputs are cut into blocks; every system runs one block in turn, the order
rotating from block to block, for `rounds` rounds after one untimed warm-up round. Noise from
other processes then lands on every system alike instead of on whichever ran during it.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from tiered_memory.bench.peers import EXTRA_HINT
from tiered_memory.bench.report import row, scenario
from tiered_memory.bench.runner import NAMESPACE, Bench
from tiered_memory.bench.stats import recall_at_k
from tiered_memory.bench.workload import K
from tiered_memory.engine import TieredMemory
from tiered_memory.records import Tier

Call = Callable[[Any], Any]


def interleave(bench: Bench, calls: dict[str, Call], inputs: Sequence[Any], rounds: int, warmup: int,
               desc: str) -> tuple[dict[str, list[int]], dict[str, list[Any]]]:
    """Nanoseconds per call for each system (warm-up rounds dropped), and each call's last output."""
    clock = time.perf_counter_ns
    block = bench.options.block
    keys = list(calls)
    samples: dict[str, list[int]] = {key: [] for key in keys}
    outputs: dict[str, list[Any]] = {key: [None] * len(inputs) for key in keys}
    blocks = [range(start, min(start + block, len(inputs))) for start in range(0, len(inputs), block)]
    with bench.progress((warmup + rounds) * len(inputs) * len(keys), desc) as bar:
        for round_number in range(warmup + rounds):
            for number, indices in enumerate(blocks):
                shift = (round_number * len(blocks) + number) % len(keys)
                for key in keys[shift:] + keys[:shift]:
                    call, times, kept = calls[key], samples[key], outputs[key]
                    for i in indices:
                        started = clock()
                        result = call(inputs[i])
                        elapsed = clock() - started
                        kept[i] = result
                        if round_number >= warmup:
                            times.append(elapsed)
                    bar.update(len(indices))
    return samples, outputs


def _hit_rows(bench: Bench, hits: list[Any]) -> list[int]:
    return [bench.row_of.get(hit.memory.id, -1) for hit in hits]


def _recall(bench: Bench, found: list[list[int]], queries: np.ndarray) -> float:
    padded = np.full((len(found), K), -1, dtype=np.int64)
    for i, rows in enumerate(found):
        padded[i, :len(rows[:K])] = rows[:K]
    return recall_at_k(padded, queries, bench.workload.stored, bench.workload.truth_scores[:len(found), -1])


def _served_from(outputs: list[list[Any]]) -> str:
    tiers = [hit.tier for hits in outputs for hit in hits]
    if not tiers:
        return "no hits"
    return ", ".join(f"{tier.value} {sum(t == tier for t in tiers) / len(tiers):.0%}" for tier in Tier)


def _search_peers(bench: Bench) -> dict[str, Any]:
    return {key: peer for key in ("hnswlib", "usearch", "numpy", "chromadb") if (peer := bench.peer(key))}


# -- add ---------------------------------------------------------------------------------------

def run_add(bench: Bench) -> dict[str, Any]:
    """add_many throughput with vectors given (the build of every system), and with encoding."""
    mem, workload, options = bench.engine(), bench.workload, bench.options
    builds = bench.builds
    rows = [row("ours.add.vectors", "tiered_memory add_many, vectors given", "ours",
                samples=bench.batch_samples, throughput=workload.size / builds["ours"].seconds,
                note=f"durable ({mem.config.durability}), {options.batch:,} per call, automatic maintenance "
                     "included; latency is per call", seconds=builds["ours"].seconds,
                compare_with=["floor.hnswlib", "peer.usearch", "peer.chromadb", "floor.lmdb"])]
    peers = {"hnswlib": "add_items, all cores", "usearch": "add, all cores", "chromadb": "collection.add, "
             "max batch", "lmdb": "put, 10k per transaction (records only)"}
    for key, how in peers.items():
        peer = bench.peer(key)
        if peer is not None and key in builds:
            build = builds[key]
            rows.append(row(f"{peer.role}.{key}", peer.name, peer.role, throughput=build.items / build.seconds,
                            note=how, seconds=build.seconds))
    if workload.texts is not None:
        rows += _add_with_encoding(bench)
    return scenario("add", "Adding memories: throughput (memories/s) on the same rows", rows)


def _add_with_encoding(bench: Bench) -> list[dict[str, Any]]:
    from tiered_memory.encoders import MiniLMEncoder

    workload, count = bench.workload, min(bench.options.encode_adds, bench.workload.size)
    texts = [workload.text(i) for i in range(count)]
    encoder = bench.encoder or MiniLMEncoder()
    encoder.encode(["warm up the model"])
    path = bench.workdir / "add_with_encoding"
    shutil.rmtree(path, ignore_errors=True)
    rows = []
    started = time.perf_counter()
    encoder.encode(texts)
    seconds = time.perf_counter() - started
    rows.append(row("part.encoder.batch", "MiniLM encoder alone, batch", "part", throughput=count / seconds,
                    note=f"{count:,} texts, batch {encoder.batch_size}", seconds=seconds))
    with TieredMemory(path, encoder=encoder, **bench.options.engine_settings) as fresh:
        started = time.perf_counter()
        fresh.add_many(texts, namespace=NAMESPACE, dedup=False)
        seconds = time.perf_counter() - started
    shutil.rmtree(path, ignore_errors=True)
    rows.append(row("ours.add.encode", "tiered_memory add_many, encoding the texts", "ours",
                    throughput=count / seconds, note=f"{count:,} texts in one call, durable", seconds=seconds,
                    compare_with=["peer.chromadb.encode"]))
    chroma = bench.peer("chromadb")
    if chroma is not None and chroma.model_path is not None:
        seconds = chroma.add_texts(texts, name="bench-encode")
        rows.append(row("peer.chromadb.encode", "ChromaDB + SentenceTransformer add", "peer",
                        throughput=count / seconds, note="the article's design: documents only, Chroma encodes",
                        seconds=seconds))
    return rows


# -- search ------------------------------------------------------------------------------------

def run_search(bench: Bench) -> dict[str, Any]:
    """search(vector=..., k=10): first touch, then steady state interleaved with every peer."""
    mem, workload, options = bench.engine(), bench.workload, bench.options
    queries = [np.ascontiguousarray(q) for q in workload.queries]

    def ours(query: np.ndarray) -> list[Any]:
        return mem.search(vector=query, k=K, namespace=NAMESPACE)

    # First touch: the results come from warm (and cold) and are promoted to hot as they are served.
    first, first_out = interleave(bench, {"ours": ours}, queries, rounds=1, warmup=0, desc="search, first touch")
    rows = [row("ours.search.first", "tiered_memory search, first touch", "ours", samples=first["ours"],
                recall=_recall(bench, [_hit_rows(bench, hits) for hits in first_out["ours"]], workload.queries),
                note=f"one pass, results read from disk and promoted; served from {_served_from(first_out['ours'])}")]
    peers = _search_peers(bench)
    calls: dict[str, Call] = {"ours": ours}
    calls.update({key: partial(peer.search, k=K) for key, peer in peers.items()})
    samples, outputs = interleave(bench, calls, queries, rounds=options.rounds, warmup=1, desc="search, interleaved")
    rows.insert(0, row("ours.search.steady", "tiered_memory search, steady state", "ours", samples=samples["ours"],
                       recall=_recall(bench, [_hit_rows(bench, hits) for hits in outputs["ours"]], workload.queries),
                       note=f"after a warm-up pass; served from {_served_from(outputs['ours'])}"))
    for key, peer in peers.items():
        rows.append(row(f"{peer.role}.{key}", peer.name, peer.role, samples=samples[key],
                        recall=_recall(bench, [peer.rows(out) for out in outputs[key]], workload.queries),
                        note=_settings_note(peer.settings)))
    return scenario("search", f"search(vector=...), k={K}, {workload.size:,} memories, {len(queries):,} queries",
                    rows)


def _settings_note(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("configuration", "include"))


# -- get -----------------------------------------------------------------------------------------

def run_get(bench: Bench) -> dict[str, Any]:
    """get(id): first touch from disk (warm, and cold if any) against raw lmdb + msgpack; then
    hot against a raw cachetools get, on the same ids."""
    mem, options = bench.engine(), bench.options
    sample = bench.get_sample()
    lmdb_peer, cache_peer = bench.peer("lmdb"), bench.peer("cachetools")
    rows = []
    for tier in (Tier.WARM, Tier.COLD):
        ids = [memory_id for memory_id in sample if mem.tier_of(memory_id) == tier]
        if not ids:
            continue
        calls: dict[str, Call] = {"ours": mem.get}
        if lmdb_peer is not None:
            calls["lmdb"] = lmdb_peer.get
        samples, _ = interleave(bench, calls, ids, rounds=1, warmup=0, desc=f"get from {tier.value}")
        what = "LMDB read of record + float16 vector, promotion to hot"
        if tier == Tier.COLD:
            what += " via warm (one hnswlib insertion)"
        rows.append(row(f"ours.get.{tier.value}", f"tiered_memory get, {tier.value} (first touch)", "ours",
                        samples=samples["ours"], note=what, compare_with=["floor.lmdb"]))
        if lmdb_peer is not None and not any(r["key"] == "floor.lmdb" for r in rows):
            rows.append(row("floor.lmdb", lmdb_peer.name, "floor", samples=samples["lmdb"],
                            note="same ids, same record bytes, one read per call"))
    # The cold tier's own read (no locks, no promotion), so readers see where a get's time goes.
    cold_read, _ = interleave(bench, {"cold": mem.cold.get}, sample, rounds=options.rounds, warmup=1,
                              desc="cold tier read")
    rows.append(row("part.cold.get", "cold tier read alone (internal)", "part", samples=cold_read["cold"],
                    note="LMDB read + msgpack + Memory; the public get adds locks, statistics, promotion"))
    not_hot = sum(mem.tier_of(memory_id) != Tier.HOT for memory_id in sample)
    if not_hot:
        bench.notes.append(f"get: {not_hot} of {len(sample)} sampled ids were not hot before the hot rounds")
    calls = {"ours": mem.get}
    if cache_peer is not None:
        calls["cachetools"] = cache_peer.get
    samples, _ = interleave(bench, calls, sample, rounds=options.rounds, warmup=1, desc="get, hot")
    rows.insert(0, row("ours.get.hot", "tiered_memory get, hot", "ours", samples=samples["ours"],
                       note="returns a fresh Memory copy; counts the access", compare_with=["floor.cachetools"]))
    if cache_peer is not None:
        rows.insert(1, row("floor.cachetools", cache_peer.name, "floor", samples=samples["cachetools"],
                           note="the same decoded records, no copy"))
    return scenario("get", f"get(id), {len(sample):,} distinct ids", rows)


# -- text --------------------------------------------------------------------------------------

def run_text(bench: Bench) -> dict[str, Any]:
    """search(text): encoding included. The encoder alone, ours uncached and cached, and the
    article's design (SentenceTransformer + ChromaDB), on the same distinct query texts."""
    workload = bench.workload
    if workload.query_texts is None:
        bench.notes.append("text: skipped, the workload has no texts (vectors only)")
        return scenario("text", "search(text), encoding included: skipped (no texts)", [])
    mem, options = bench.engine(), bench.options
    encoder = bench.encoder
    started = time.perf_counter()
    encoder.encode(["load the model"])
    load_s = time.perf_counter() - started
    texts = workload.query_texts[:options.texts]
    warmups = [workload.text(i) for i in range(3)]
    calls: dict[str, Call] = {
        "encoder": lambda text: encoder.encode([text]),
        # Dense mode: recall here is against the exact dense neighbours of the stored query
        # embeddings, and the peer is dense too. The default for text (hybrid: dense + BM25) ranks
        # by another measure; its quality is the retrieval report's (benchmarks/reports/retrieval.md).
        "ours": lambda text: mem.search(text, k=K, namespace=NAMESPACE, mode="dense"),
    }
    chroma = bench.peer("chromadb")
    if chroma is not None and chroma.model_path is not None:
        calls["chromadb"] = partial(chroma.search_text, k=K)
    for call in calls.values():
        for text in warmups:  # loads each model; these texts are not measured
            call(text)
    # One pass: every text is new to ours, so each search encodes (the query cache cannot help).
    samples, outputs = interleave(bench, calls, texts, rounds=1, warmup=0, desc="text search, uncached")
    cached, cached_out = interleave(bench, {"ours": calls["ours"]}, texts, rounds=options.rounds, warmup=0,
                                    desc="text search, cached")
    queries = workload.queries[:len(texts)]
    rows = [
        row("ours.text.uncached", "tiered_memory search(text, mode=dense), new query", "ours", samples=samples["ours"],
            recall=_recall(bench, [_hit_rows(bench, h) for h in outputs["ours"]], queries),
            note="encoding + search; recall against the stored query embeddings"),
        row("ours.text.cached", "tiered_memory search(text, mode=dense), repeated query", "ours",
            samples=cached["ours"],
            recall=_recall(bench, [_hit_rows(bench, h) for h in cached_out["ours"]], queries),
            note="the query cache holds the embedding", compare_with=[]),
        row("part.encoder.single", "MiniLM encoder alone, one sentence", "part", samples=samples["encoder"],
            note=f"model load {load_s:.2f} s (not included)"),
    ]
    if "chromadb" in samples:
        rows.append(row("peer.chromadb.text", "ChromaDB + SentenceTransformer query", "peer",
                        samples=samples["chromadb"], note="the article's design: query_texts, Chroma encodes",
                        recall=_recall(bench, [chroma.rows(out) for out in outputs["chromadb"]], queries)))
    elif "chromadb" in bench.options.peers:
        bench.notes.append(f"text: ChromaDB design skipped ({EXTRA_HINT})")
    return scenario("text", f"search(text), k={K}, encoding included, {len(texts):,} distinct texts", rows)


# -- mixed -------------------------------------------------------------------------------------

def run_mixed(bench: Bench) -> dict[str, Any]:
    """Threads sharing one store: 80% search, 15% add, 5% update or delete (vectors given)."""
    mem, workload, options = bench.engine(), bench.workload, bench.options
    threads = options.threads
    per_thread = max(options.mixed_ops // threads, 1)
    samples: dict[str, list[int]] = {"search": [], "add": [], "update": [], "delete": []}
    lock = threading.Lock()
    start_line = threading.Barrier(threads + 1)
    noise = 0.05 / np.sqrt(workload.dimension)
    bar = bench.progress(per_thread * threads, f"mixed, {threads} threads")

    def worker(number: int) -> None:
        rng = np.random.default_rng(1_000 + number)
        mine: list[str] = []
        local: dict[str, list[int]] = {key: [] for key in samples}
        clock = time.perf_counter_ns
        start_line.wait()
        for _ in range(per_thread):
            draw = rng.random()
            kind = "search" if draw < 0.80 else "add" if draw < 0.95 or not mine else \
                "update" if draw < 0.975 else "delete"
            started = clock()
            if kind == "search":
                mem.search(vector=workload.queries[rng.integers(len(workload.queries))], k=K, namespace=NAMESPACE)
            elif kind == "add":
                source = int(rng.integers(workload.size))
                vector = workload.stored[source] + noise * rng.standard_normal(workload.dimension, dtype=np.float32)
                mine.append(mem.add(workload.text(source), vector=vector, namespace=NAMESPACE, dedup=False))
            elif kind == "update":
                mem.update(mine[int(rng.integers(len(mine)))], importance=float(rng.random()),
                           metadata={"edited": True})
            else:
                mem.delete(mine.pop(int(rng.integers(len(mine)))))
            local[kind].append(clock() - started)
        with lock:
            for key, values in local.items():
                samples[key].extend(values)
            bar.update(per_thread)

    workers = [threading.Thread(target=worker, args=(n,), name=f"bench-mixed-{n}") for n in range(threads)]
    for thread in workers:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in workers:
        thread.join()
    wall = time.perf_counter() - started
    bar.close()
    total = sum(len(v) for v in samples.values())
    rows = [row("ours.mixed.all", f"tiered_memory, {threads} threads, all operations", "ours",
                samples=[t for v in samples.values() for t in v], throughput=total / wall,
                note=f"{total:,} operations in {wall:.1f} s; durability {mem.config.durability}")]
    rows += [row(f"ours.mixed.{kind}", f"tiered_memory {kind} under the mix", "ours", samples=values,
                 note=f"{len(values) / total:.0%} of operations") for kind, values in samples.items() if values]
    bench.notes.append("mixed: no peer runs this workload (none offers the same API); ours alone")
    return scenario("mixed", f"Mixed workload: {threads} threads, 80% search / 15% add / 5% update+delete", rows)


# -- reopen ------------------------------------------------------------------------------------

def run_reopen(bench: Bench) -> dict[str, Any]:
    """A new process opens each store and answers one search; import time excluded."""
    from tiered_memory.bench.probes import probe_in_subprocess

    mem, workload = bench.engine(), bench.workload
    query_file = bench.workdir / "reopen_query.npy"
    np.save(query_file, workload.queries[:1])
    targets: dict[str, tuple[str, str]] = {"ours": ("ours", str(mem.path))}
    settings = {**bench.options.engine_settings, "hnsw_ef_search": mem.config.hnsw_ef_search}
    peers = {key: peer for key in ("hnswlib", "usearch", "chromadb") if (peer := bench.peer(key))}
    mem.close()  # the new process needs the writer lock
    bench.mem = None
    for key, peer in peers.items():
        if key == "chromadb":
            peer.close()
            targets[key] = (key, str(peer.path))
        else:
            path = bench.workdir / f"{key}.index"
            peer.save(path)
            targets[key] = (key, str(path))
    results: dict[str, list[dict[str, Any]]] = {key: [] for key in targets}
    with bench.progress(bench.options.reopens * len(targets), "reopen in a new process") as bar:
        for _ in range(bench.options.reopens):
            for key, (kind, path) in targets.items():
                results[key].append(probe_in_subprocess(kind, path, query_file, workload.dimension, NAMESPACE,
                                                        settings))
                bar.update(1)
    rows = []
    names = {"ours": ("ours.reopen", "tiered_memory open + first search", "ours")}
    for key, probes in results.items():
        bench.fresh_rss[key] = {name: int(np.median([p[name] for p in probes]))
                                for name in ("rss_bytes", "store_rss_bytes", "store_anon_bytes", "store_file_bytes")}
        if key == "ours":
            bench.fresh_ours = probes[-1]
        label = names.get(key)
        if label is None:
            peer = bench.peer(key)
            label = (f"{peer.role}.{key}", f"{peer.name} load + first search", peer.role)
        rows.append(row(*label, samples=[int(p["total_s"] * 1e9) for p in probes],
                        note=f"open {np.median([p['open_s'] for p in probes]):.3f} s + first search "
                             f"{np.median([p['first_search_s'] for p in probes]) * 1e3:.1f} ms (medians); "
                             f"RSS after {np.median([p['rss_bytes'] for p in probes]) / 2**20:.0f} MiB"))
    bench.reopen_engine()
    return scenario("reopen", f"Reopen in a new process and answer the first search, {workload.size:,} memories",
                    rows)
