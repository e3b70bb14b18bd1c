"""The cold part of one huge namespace: which on-disk index to search it through.

    python benchmarks/cold_index.py --sizes 200000 1000000 --out benchmarks/results/cold-index

At each size, n unit vectors from DailyDialog's MiniLM embeddings plus noise
(`corpora.scaled_vectors`, seed 1), 1,000 queries made the same way from other noise (seed 99),
exact float32 ground truth (`corpora.exact_neighbors`), tie-aware recall@10. Methods, in one run:

* ``usearch-i8-view``: `tiered_memory.tiers.cold_index.ColdIndex`, a usearch int8 HNSW graph saved to a
  file and memory-mapped read-only (`view=True`).
* ``ivf-memmap``: IVF lists in one file read through numpy.memmap: sqrt(n) spherical k-means
  centroids in RAM (`topics.TopicModel`), the int8 codes (`Int8Quantizer`) sorted by list, the
  nprobe nearest lists scanned per query (`blocks.scan`).
* ``scan-0.4`` (today's path): the same partitions as blocks of int8 codes in RAM, nearest
  topics first until 40% of the rows are scanned, as `searching._probe_topics` does.
* ``hnswlib-f32``: raw hnswlib float32 in RAM, loaded from its saved file.

Builds run in this process with 2 threads and are timed; every search figure comes from a fresh
process (open, first search, 50 warm-up queries discarded, then each query timed alone with one
thread: p50/p90/p99/max), with its RSS after open and after the queries. Recall is computed
here from the ids the child returns.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

K = 10
WARMUP = 50
THREADS = 2
# Search-time settings swept per method (each child runs all of its settings on the same queries).
USEARCH_EXPANSIONS = (16, 32, 64, 128)
IVF_NPROBES = (8, 16, 32, 64)
HNSW_EFS = (32, 64, 128)
# Build settings. expansion_add / ef_construction 64 (not 128-200) keeps the 1M builds within
# the run's time budget on 2 shared cores; at 200k, 128 gave the same recall plateau (0.984).
CONNECTIVITY = 16
EXPANSION_ADD = 64


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1e3 * s for s in seconds)
    return {"p50_ms": round(statistics.median(ms), 4), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 4),
            "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 4), "max_ms": round(ms[-1], 4)}


# -- children: one fresh process per method --------------------------------------------------------


def _child(method: str, scratch: Path, queries_n: int) -> None:
    baseline = _rss()
    queries = np.load(scratch / "queries.npy")[:queries_n]
    started = time.perf_counter()
    if method == "usearch-i8-view":
        from tiered_memory.tiers.cold_index import ColdIndex

        index = ColdIndex.open(scratch / "usearch" / "cold.json")
        if index is None:
            raise SystemExit("the cold index did not open")
        index.search(queries[0], K)
        settings = USEARCH_EXPANSIONS

        def search(q: np.ndarray, setting: int) -> np.ndarray:
            ids, _ = index.search(q, K, expansion=setting)
            return np.asarray([int(i[1:]) for i in ids], dtype=np.int64)
    elif method == "hnswlib-f32":
        import hnswlib

        dimension = queries.shape[1]
        graph = hnswlib.Index(space="ip", dim=dimension)
        graph.load_index(str(scratch / "hnswlib.bin"))
        graph.set_num_threads(1)
        graph.set_ef(64)
        graph.knn_query(queries[0], K)
        settings = HNSW_EFS

        def search(q: np.ndarray, setting: int) -> np.ndarray:
            graph.set_ef(setting)
            labels, _ = graph.knn_query(q, K, num_threads=1)
            return labels[0].astype(np.int64)
    else:
        from tiered_memory.quantization import Int8Quantizer
        from tiered_memory.tiers.blocks import Block, scan

        meta = json.loads((scratch / "ivf.json").read_text())
        quantizer = Int8Quantizer(meta["dimension"])
        quantizer.lo = np.asarray(meta["lo"], dtype=np.float32)
        quantizer.step = np.asarray(meta["step"], dtype=np.float32)
        centroids = np.load(scratch / "centroids.npy")
        bounds = np.load(scratch / "bounds.npy")
        # IVF reads its lists through the page cache; today's scan holds every code on the heap.
        mapped = "r" if method == "ivf-memmap" else None
        codes = np.load(scratch / "codes.npy", mmap_mode=mapped)
        slots = np.load(scratch / "slots.npy", mmap_mode=mapped)
        blocks = []
        for topic in range(len(centroids)):
            block = Block.__new__(Block)
            block.codes = codes[bounds[topic]:bounds[topic + 1]]
            block.slots = slots[bounds[topic]:bounds[topic + 1]]
            block.size = int(bounds[topic + 1] - bounds[topic])
            blocks.append(block)
        sizes = np.diff(bounds)
        total = int(bounds[-1])

        def probe(q: np.ndarray, setting: float) -> list[Block]:
            order = np.argsort(-(centroids @ q))
            if method == "ivf-memmap":
                return [blocks[t] for t in order[: int(setting)].tolist()]
            budget, rows, chosen = setting * total, 0, []
            for topic in order.tolist():  # as searching._probe_topics
                chosen.append(blocks[topic])
                rows += sizes[topic]
                if rows >= budget:
                    break
            return chosen

        def search(q: np.ndarray, setting: float) -> np.ndarray:
            weights, offset = quantizer.scan_weights(q)
            found_slots, scores = scan(probe(q, setting), weights, offset)
            top = np.argpartition(-scores, K - 1)[:K] if len(scores) > K else np.arange(len(scores))
            return found_slots[top[np.argsort(-scores[top])]]

        settings = IVF_NPROBES if method == "ivf-memmap" else (0.4,)
        search(queries[0], settings[0])
    open_first_s = time.perf_counter() - started
    rss_open = _rss()
    runs = []
    for setting in settings:
        for q in queries[:WARMUP]:
            search(q, setting)
        found = np.full((len(queries), K), -1, dtype=np.int64)
        seconds = []
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            got = search(q, setting)
            seconds.append(time.perf_counter() - t0)
            found[i, : len(got)] = got
        np.save(scratch / f"found-{method}-{setting}.npy", found)
        runs.append({"setting": setting, **_stats(seconds)})
    print(json.dumps({"open_first_search_s": round(open_first_s, 4), "rss_baseline_mib": round(baseline / 2**20, 1),
                      "rss_open_mib": round(rss_open / 2**20, 1), "rss_after_mib": round(_rss() / 2**20, 1),
                      "runs": runs}))


def _run_child(method: str, scratch: Path, queries_n: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", method, "--scratch", str(scratch),
                          "--queries", str(queries_n)], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- builds ---------------------------------------------------------------------------------------


def _build_usearch(scratch: Path, vectors: np.ndarray) -> dict[str, dict[str, Any]]:
    from tiered_memory.tiers.cold_index import ColdIndex

    started = time.perf_counter()
    index = ColdIndex.build(scratch / "usearch" / "cold.json", [f"m{i}" for i in range(len(vectors))], vectors,
                            generation=1, connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD, threads=THREADS)
    built = {"build_s": round(time.perf_counter() - started, 2), "file_bytes": index.file_bytes()}
    index.close()
    return {"usearch-i8-view": built}


def _build_ivf(scratch: Path, vectors: np.ndarray) -> dict[str, dict[str, Any]]:
    from tiered_memory.quantization import Int8Quantizer
    from tiered_memory.tiering.topics import TopicModel

    n, dimension = vectors.shape
    started = time.perf_counter()
    quantizer = Int8Quantizer(dimension)
    quantizer.fit(vectors[:: max(1, n // 20_000)])
    model = TopicModel.fit(vectors, int(math.sqrt(n)), seed=0)  # the engine's default: about sqrt(n) topics
    topics, _ = model.assign(vectors)
    order = np.argsort(topics, kind="stable")
    bounds = np.zeros(len(model) + 1, dtype=np.int64)
    np.cumsum(np.bincount(topics, minlength=len(model)), out=bounds[1:])
    codes = np.lib.format.open_memmap(scratch / "codes.npy", mode="w+", dtype=np.int8, shape=(n, dimension))
    for start in range(0, n, 65_536):
        codes[start:start + 65_536] = quantizer.encode(vectors[order[start:start + 65_536]])
    codes.flush()
    del codes
    np.save(scratch / "slots.npy", order.astype(np.int64))
    np.save(scratch / "bounds.npy", bounds)
    np.save(scratch / "centroids.npy", model.centroids)
    (scratch / "ivf.json").write_text(json.dumps({"dimension": dimension, "lo": quantizer.lo.tolist(),
                                                  "step": quantizer.step.tolist()}))
    ivf_s = round(time.perf_counter() - started, 2)
    ivf_bytes = sum((scratch / name).stat().st_size for name in ("codes.npy", "slots.npy", "bounds.npy",
                                                                   "centroids.npy"))
    return {"ivf-memmap": {"build_s": ivf_s, "file_bytes": ivf_bytes, "lists": len(model)},
            "scan-0.4": {"build_s": ivf_s, "file_bytes": 0, "ram_code_bytes": n * dimension, "topics": len(model)}}


def _build_hnswlib(scratch: Path, vectors: np.ndarray) -> dict[str, dict[str, Any]]:
    import hnswlib

    n, dimension = vectors.shape
    started = time.perf_counter()
    graph = hnswlib.Index(space="ip", dim=dimension)
    graph.init_index(max_elements=n, M=CONNECTIVITY, ef_construction=EXPANSION_ADD)
    graph.add_items(vectors, np.arange(n), num_threads=THREADS)
    graph.save_index(str(scratch / "hnswlib.bin"))
    return {"hnswlib-f32": {"build_s": round(time.perf_counter() - started, 2),
                            "file_bytes": (scratch / "hnswlib.bin").stat().st_size}}


# Each build is followed at once by its fresh-process searches, so a run cut short keeps what it measured.
STAGES = ((_build_usearch, ("usearch-i8-view",)), (_build_ivf, ("ivf-memmap", "scan-0.4")),
          (_build_hnswlib, ("hnswlib-f32",)))


def run_size(n: int, queries_n: int, scratch_root: Path, save: Any) -> dict[str, Any]:
    from tiered_memory.corpora import exact_neighbors, load_dailydialog, scaled_vectors, tie_aware_recall

    base = load_dailydialog().embeddings()
    vectors = scaled_vectors(base, n, seed=1)
    rng = np.random.default_rng(7)
    queries = scaled_vectors(base[np.sort(rng.choice(len(base), queries_n, replace=False))], queries_n, seed=99)
    scratch = Path(tempfile.mkdtemp(prefix=f"cold-index-{n}-", dir=scratch_root))
    np.save(scratch / "queries.npy", queries)
    _, truth = exact_neighbors(queries, vectors, K)
    kth = truth[:, -1]
    print(f"{n}: data ready", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"n": n, "queries": queries_n, "methods": {}}
    try:
        for build, methods in STAGES:
            built = build(scratch, vectors)
            for method in methods:
                child = _run_child(method, scratch, queries_n)
                for run in child["runs"]:
                    found = np.load(scratch / f"found-{method}-{run['setting']}.npy")
                    exact = np.einsum("qd,qkd->qk", queries, vectors[np.maximum(found, 0)])
                    run["recall@10"] = round(tie_aware_recall(found, exact, kth), 4)
                result["methods"][method] = {**built[method], **child}
                print(f"  {method}: build {built[method]['build_s']} s, {json.dumps(child)}", file=sys.stderr,
                      flush=True)
                save(result)
    finally:
        for path in sorted(scratch.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        scratch.rmdir()
    return result


def render(results: dict[str, Any]) -> str:
    names = {"usearch-i8-view": "usearch int8 HNSW, file mmap (view)", "ivf-memmap": "IVF lists, numpy.memmap",
             "scan-0.4": "today: int8 partition scan to 40% (RAM)", "hnswlib-f32": "raw hnswlib float32 (RAM)"}
    knob = {"usearch-i8-view": "expansion", "ivf-memmap": "nprobe", "scan-0.4": "fraction", "hnswlib-f32": "ef"}
    lines = ["# Cold index for one huge namespace: which on-disk index", "",
             f"Generated by `benchmarks/cold_index.py`. Machine: {results['machine']['cpus']} CPUs (shared), "
             f"Python {results['machine']['python']}, load average at the start of the last size's run "
             f"{results['machine']['load_avg'][0]:.2f} (other jobs shared the cores). Builds with {THREADS} threads "
             f"(graphs: connectivity/M {CONNECTIVITY}, expansion_add/ef_construction {EXPANSION_ADD}). "
             f"Search: one query at a time, one thread, k={K}, {WARMUP} warm-up queries discarded; "
             "RSS of a fresh process (baseline = after imports). Recall@10 tie-aware against exact float32.", ""]
    for size in results["sizes"]:
        lines += [f"## {size['n']:,} vectors, {size['queries']} queries", "",
                  "| method | setting | recall@10 | p50 ms | p90 ms | p99 ms | max ms | open + 1st search s "
                  "| RSS base / open / after MiB | build s | file MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for method, row in size["methods"].items():
            for run in row["runs"]:
                lines.append(
                    f"| {names[method]} | {knob[method]} {run['setting']} | {run['recall@10']:.3f} "
                    f"| {run['p50_ms']:.3f} | {run['p90_ms']:.3f} | {run['p99_ms']:.3f} | {run['max_ms']:.3f} "
                    f"| {row['open_first_search_s']:.3f} "
                    f"| {row['rss_baseline_mib']:.0f} / {row['rss_open_mib']:.0f} / {row['rss_after_mib']:.0f} "
                    f"| {row['build_s']:.1f} | {row['file_bytes'] / 2**20:.0f} |")
        lines.append("")
    lines += ["Notes: the IVF build time (k-means on a 20k sample + assignment + int8 encode) is shared by "
              "`ivf-memmap` and `scan-0.4`, which scan the same partitions; `scan-0.4` holds its codes on the heap "
              "(n x 384 bytes), the others map or load files. usearch's file is its graph + int8 vectors + "
              "the ids file. RSS counts the file pages a process has touched through its mapping (page cache the "
              "kernel can reclaim); the usearch view's heap is about 8 bytes per row.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cold-index"))
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--child", default=None)
    parser.add_argument("--append", action="store_true", help="keep the sizes already in --out's results")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.scratch, args.queries)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scratch_root = Path(tempfile.gettempdir()) if args.scratch is None else args.scratch
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform(), "load_avg": os.getloadavg()},
                               "sizes": []}
    if args.append and (args.out / "cold-index.json").is_file():  # add sizes to an earlier run's results
        results["sizes"] = json.loads((args.out / "cold-index.json").read_text())["sizes"]
    done = len(results["sizes"])

    def save(size: dict[str, Any]) -> None:
        results["sizes"][done + args.sizes.index(size["n"]):] = [size]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cold-index.json").write_text(json.dumps(results, indent=1))
        (args.out / "cold-index.md").write_text(render(results))

    for n in args.sizes:
        save(run_size(n, args.queries, scratch_root, save))
    print(render(results))


if __name__ == "__main__":
    main()
