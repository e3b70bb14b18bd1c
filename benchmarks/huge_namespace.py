"""One huge namespace: a million memories in "default", default budgets, vectors given.

The scenario of the tiers issue where one namespace outgrows the warm budget, so most of it is
cold, and the cold part is found through its on-disk index (tiered_memory/tiers/cold_parts.py). Each
figure comes from a fresh process:

1. build: add the scale set's first `--rows` vectors with add_many, 1,000 per call, durability
   "async" (to save time; the durable rate is measured next); then add `--durable-rows` more with
   the default durability ("sync") and report memories/s at that size.
2. scan peer (before any index exists, cold_index_min_rows=0 so that no build starts): reopen,
   first search, steady search, recall, RSS: what the store did before the index.
3. index_cold("default") with cold_index_build_threads=2: build seconds and file bytes.
4. the engine with the index (default config): reopen + first search, steady search p50/p99,
   tie-aware recall@10 against exact float32, RSS (VmRSS and RssAnon).
5. raw usearch over the index file alone (ColdIndex.open + search_keys, k * cold_index_oversample
   candidates at cold_index_expansion, the engine's defaults): what the engine adds on top.
6. recall and latency over cold_index_oversample x cold_index_expansion, one process per setting
   (promotions move what a search returns into the warm graph, so settings sharing a process
   would help each other).

    python datasets/make_scale_set.py --size 1030000 --out /tmp/scale-1030k
    python benchmarks/huge_namespace.py --set /tmp/scale-1030k --rows 1000000 --durable-rows 30000 \
        --out benchmarks/results/huge-namespace

The set must hold at least rows + durable-rows vectors; its ground truth is over all of them, so
it is exact for the final store only when rows + durable-rows equals the set's size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

PER_CALL = 1_000
NAMESPACE = "default"
DIMENSION = 384
# MemoryConfig overrides for every process of a run (--settings); empty = the defaults, as measured.
SETTINGS_ENV = "HUGE_NAMESPACE_SETTINGS"


def base_settings() -> dict:
    return json.loads(os.environ.get(SETTINGS_ENV) or "{}")


# -- inside the probe processes ------------------------------------------------------------------

def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_now() -> dict[str, float]:
    return {"vm_rss_mib": rss_mib("VmRSS"), "rss_anon_mib": rss_mib("RssAnon"), "rss_file_mib": rss_mib("RssFile")}


def phase_build(store: Path, data: Path, start: int, stop: int, durability: str) -> dict:
    """Add rows [start, stop) of the set, PER_CALL per add_many; cold_index_min_rows=0 so that the
    background thread builds no index meanwhile (index_cold is measured on its own)."""
    from tiered_memory import TieredMemory
    from tiered_memory.corpora import load_dailydialog

    # Row i carries the text of its base utterance (datasets/README.md).
    utterances = load_dailydialog().utterances
    base_rows = np.load(data / "base_rows.npy")
    vectors = np.load(data / "vectors.npy", mmap_mode="r")
    t0 = time.perf_counter()
    mem = TieredMemory(store, encoder=None, dimension=DIMENSION, durability=durability,
                      **{**base_settings(), "cold_index_min_rows": 0})
    open_s = time.perf_counter() - t0
    load_s = 0.0
    if start:
        t0 = time.perf_counter()
        mem.preload(NAMESPACE)  # the namespace's range read, kept out of the add rate
        load_s = time.perf_counter() - t0
    calls = []
    t_all = time.perf_counter()
    for lo in range(start, stop, PER_CALL):
        hi = min(lo + PER_CALL, stop)
        chunk = np.ascontiguousarray(vectors[lo:hi])
        texts = [utterances[int(base_rows[i % len(base_rows)])] for i in range(lo, hi)]
        t = time.perf_counter()
        mem.add_many(texts, namespace=NAMESPACE, vectors=chunk, ids=[f"r{i}" for i in range(lo, hi)])
        calls.append(time.perf_counter() - t)
        if (hi - start) % 100_000 == 0:
            print(f"{hi - start:,} rows in {time.perf_counter() - t_all:.0f} s", file=sys.stderr, flush=True)
    adds_s = time.perf_counter() - t_all
    t0 = time.perf_counter()
    mem.wait_idle()
    idle_s = time.perf_counter() - t0
    stats = mem.stats().as_dict()
    t0 = time.perf_counter()
    mem.close()
    close_s = time.perf_counter() - t0
    rows = stop - start
    ms = np.array(calls) * 1e3
    return {"rows": rows, "durability": durability, "open_s": open_s, "preload_s": load_s,
            "add_calls_s": float(sum(calls)), "adds_wall_s": adds_s, "wait_idle_s": idle_s, "close_s": close_s,
            "memories_per_s": rows / adds_s, "memories_per_s_incl_idle_close": rows / (adds_s + idle_s + close_s),
            "call_p50_ms": float(np.percentile(ms, 50)), "call_p99_ms": float(np.percentile(ms, 99)),
            "call_max_ms": float(ms.max()), "stats": stats}


def _searches(mem, queries: np.ndarray) -> tuple[list[float], list[list[str]], list[str]]:
    times, found, tiers = [], [], []
    for q in queries:
        t = time.perf_counter()
        hits = mem.search(vector=q, namespace=NAMESPACE, k=10)
        times.append(time.perf_counter() - t)
        found.append([hit.memory.id for hit in hits])
        tiers.extend(hit.tier for hit in hits)
    return times, found, tiers


def phase_probe(store: Path, data: Path, queries: int, settings: dict, quiet: bool = False) -> dict:
    """Reopen + first search, then steady search over held-out queries, RSS at each step.

    quiet: then also the next `queries` queries, each after mem.wait_idle(), so that no search
    runs beside the promotions the previous one asked for (what a search costs by itself)."""
    t0 = time.perf_counter()
    from tiered_memory import TieredMemory
    import_s = time.perf_counter() - t0
    all_queries = np.load(data / "queries.npy")
    measured, warmup = all_queries[:queries], all_queries[-50:]  # disjoint when the set has >= queries + 50
    memory = {"before_open": memory_now()}
    t0 = time.perf_counter()
    mem = TieredMemory(store, encoder=None, dimension=DIMENSION, **{**base_settings(), **settings})
    open_s = time.perf_counter() - t0
    memory["after_open"] = memory_now()
    t = time.perf_counter()
    mem.search(vector=warmup[0], namespace=NAMESPACE, k=10)
    first_s = time.perf_counter() - t
    memory["after_first_search"] = memory_now()
    _searches(mem, warmup[1:])  # warm-up: interpreter paths, the index's upper levels in the page cache
    times, found, tiers = _searches(mem, measured)
    memory["after_queries"] = memory_now()
    quiet_result = {}
    if quiet:
        quiet_times, quiet_found, idle = [], [], []
        for q in all_queries[queries:2 * queries]:
            t = time.perf_counter()
            mem.wait_idle()
            idle.append(time.perf_counter() - t)
            t = time.perf_counter()
            hits = mem.search(vector=q, namespace=NAMESPACE, k=10)
            quiet_times.append(time.perf_counter() - t)
            quiet_found.append([hit.memory.id for hit in hits])
        quiet_ms = np.array(quiet_times) * 1e3
        quiet_result = {"quiet_p50_ms": float(np.percentile(quiet_ms, 50)),
                        "quiet_p99_ms": float(np.percentile(quiet_ms, 99)), "quiet_found": quiet_found,
                        "background_after_each_search_ms_mean": float(np.mean(idle[1:]) * 1e3)}
    stats = mem.stats().as_dict()
    mem.close()
    ms = np.array(times) * 1e3
    return {**quiet_result, "settings": settings, "import_s": import_s, "open_s": open_s, "first_search_s": first_s,
            "open_plus_first_search_s": open_s + first_s, "memory": memory,
            "search_p50_ms": float(np.percentile(ms, 50)), "search_p90_ms": float(np.percentile(ms, 90)),
            "search_p99_ms": float(np.percentile(ms, 99)), "search_max_ms": float(ms.max()),
            "tiers_served": {tier: tiers.count(tier) / len(tiers) for tier in sorted(set(tiers))},
            "found": found, "stats": stats}


def phase_index(store: Path, threads: int) -> dict:
    from tiered_memory import TieredMemory

    mem = TieredMemory(store, encoder=None, dimension=DIMENSION,
                       **{**base_settings(), "cold_index_min_rows": 0, "cold_index_build_threads": threads})
    t0 = time.perf_counter()
    mem.preload(NAMESPACE)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = mem.index_cold(NAMESPACE)
    build_s = time.perf_counter() - t0
    stats = mem.stats().as_dict()
    peak_mib = rss_mib("VmHWM")
    mem.close()
    return {"threads": threads, "preload_s": load_s, "index_cold_s": build_s, "rows": rows,
            "cold_index": stats["cold_index"], "peak_rss_mib": peak_mib, "stats": stats}


def phase_raw(store: Path, data: Path, queries: int, oversample: int, expansion: int) -> dict:
    """The index file alone, as the engine opens it (checksums verified) and asks it (k * oversample
    candidates at this expansion); the top 10 by the index's own int8 cosine."""
    t0 = time.perf_counter()
    from tiered_memory.tiers.cold_index import ColdIndex
    import_s = time.perf_counter() - t0
    all_queries = np.load(data / "queries.npy")
    measured, warmup = all_queries[:queries], all_queries[-50:]
    sidecars = sorted((store / "coldindex").glob("*.json"))
    if len(sidecars) != 1:
        raise RuntimeError(f"expected one cold index sidecar under {store / 'coldindex'}, found {sidecars}")
    memory = {"before_open": memory_now()}
    t0 = time.perf_counter()
    index = ColdIndex.open(sidecars[0], dimension=DIMENSION)
    open_s = time.perf_counter() - t0
    if index is None:
        raise RuntimeError(f"{sidecars[0]} did not open")
    memory["after_open"] = memory_now()
    t = time.perf_counter()
    index.search_keys(warmup[0], 10, oversample=oversample, expansion=expansion)
    first_s = time.perf_counter() - t
    for q in warmup[1:]:
        index.search_keys(q, 10, oversample=oversample, expansion=expansion)
    times, found = [], []
    for q in measured:
        t = time.perf_counter()
        keys, _ = index.search_keys(q, 10, oversample=oversample, expansion=expansion)
        times.append(time.perf_counter() - t)
        found.append([index.id_of(int(key)) for key in keys[:10]])
    memory["after_queries"] = memory_now()
    heap = index.nbytes()
    index.close()
    ms = np.array(times) * 1e3
    return {"oversample": oversample, "expansion": expansion, "import_s": import_s, "open_s": open_s,
            "first_search_s": first_s, "open_plus_first_search_s": open_s + first_s, "memory": memory,
            "heap_bytes": heap, "search_p50_ms": float(np.percentile(ms, 50)),
            "search_p90_ms": float(np.percentile(ms, 90)), "search_p99_ms": float(np.percentile(ms, 99)),
            "search_max_ms": float(ms.max()), "found": found}


# -- the driver ------------------------------------------------------------------------------------

def run_phase(*args: str) -> dict:
    command = [sys.executable, __file__, "--phase", *args]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def recall(found: list[list[str]], data: Path, queries: int, kth: np.ndarray | None = None, first: int = 0) -> float:
    """Tie-aware recall@10 against the set's exact ground truth (tiered_memory.corpora)."""
    from tiered_memory.corpora import tie_aware_recall

    vectors = np.load(data / "vectors.npy", mmap_mode="r")
    q = np.load(data / "queries.npy")[first:first + queries]
    if kth is None:
        kth = np.load(data / "truth_scores.npy")[first:first + queries, -1]
    rows = np.full((queries, 10), -1, dtype=np.int64)
    for i, ids in enumerate(found):
        for j, memory_id in enumerate(ids[:10]):
            rows[i, j] = int(memory_id[1:])
    exact = np.full(rows.shape, -np.inf, dtype=np.float32)
    valid = rows >= 0
    for i in range(queries):
        exact[i, valid[i]] = vectors[rows[i, valid[i]]] @ q[i]
    return tie_aware_recall(rows, exact, kth)


def indexed_rows(store: Path) -> np.ndarray:
    """The set rows the store's cold index holds (from its sorted_ids array; ids are "r<row>")."""
    sidecar = next((store / "coldindex").glob("*.json"))
    name = json.loads(sidecar.read_text())["files"]["sorted_ids"]["name"]
    ids = np.load(sidecar.parent / name)
    return np.sort(np.array([int(raw[1:]) for raw in ids.tolist()], dtype=np.int64))


def kth_within(data: Path, rows: np.ndarray, queries: int) -> np.ndarray:
    """Exact 10th-best score of each query over these rows only (brute force, in chunks): the
    ground truth for the index file alone, which holds the cold part and not the warm rows."""
    vectors = np.load(data / "vectors.npy", mmap_mode="r")
    q = np.load(data / "queries.npy")[:queries]
    best = np.full((queries, 10), -np.inf, dtype=np.float32)
    for start in range(0, len(rows), 65_536):
        scores = q @ np.asarray(vectors[rows[start:start + 65_536]]).T
        merged = np.concatenate([best, scores], axis=1)
        best = -np.sort(-merged, axis=1)[:, :10]
    return best[:, -1]


def median_of(runs: list[dict], key: str) -> float:
    return float(np.median([run[key] for run in runs]))


def median_memory(runs: list[dict], step: str, field: str) -> float:
    return float(np.median([run["memory"][step][field] for run in runs]))


def summarise_probes(runs: list[dict], data: Path, queries: int, kth_index: np.ndarray | None = None) -> dict:
    for run in runs:
        run["recall_at_10"] = recall(run["found"], data, queries)
        if kth_index is not None:
            run["recall_at_10_within_index"] = recall(run["found"], data, queries, kth_index)
        del run["found"]
    summary = {key: median_of(runs, key) for key in
               ("open_s", "first_search_s", "open_plus_first_search_s", "search_p50_ms", "search_p90_ms",
                "search_p99_ms", "search_max_ms", "recall_at_10")}
    if kth_index is not None:
        summary["recall_at_10_within_index"] = median_of(runs, "recall_at_10_within_index")
    summary["open_plus_first_search_s_max"] = max(run["open_plus_first_search_s"] for run in runs)
    for step in runs[0]["memory"]:
        for field in ("vm_rss_mib", "rss_anon_mib", "rss_file_mib"):
            summary[f"{step}_{field}"] = median_memory(runs, step, field)
    return summary


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        with open("/proc/meminfo") as meminfo:
            info["ram_gib"] = round(int(meminfo.readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    import numpy
    import usearch

    info["numpy"], info["usearch"] = numpy.__version__, usearch.__version__
    return info


def revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "tiered_memory"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, help="folder written by datasets/make_scale_set.py")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows added with durability async")
    parser.add_argument("--durable-rows", type=int, default=30_000, help="rows then added durably (sync)")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries measured per probe")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per probe; medians")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--sweep", nargs="*", metavar="OVERSAMPLExEXPANSION",
                        help="also the engine at these settings, e.g. 2x128 8x128 (none given: oversample 2/4/8 x "
                             "expansion 64/128/256; 'raw': none); raw usearch always runs the full grid (no load "
                             "cost)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the store goes (default: a temp dir)")
    parser.add_argument("--keep-store", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the store and the stages saved in --workdir by an earlier run")
    parser.add_argument("--quiet", action="store_true",
                        help="also the engine and the scan peer with each search after wait_idle() (no promotion "
                             "work beside it), one probe each, on the next --queries queries")
    parser.add_argument("--one-thread-build", action="store_true",
                        help="at the end, rebuild the index with the default cold_index_build_threads=1")
    parser.add_argument("--settings", default="", help="MemoryConfig overrides (JSON) for every process, "
                        "e.g. a small warm_capacity to try the script on a small set; default: none")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/huge-namespace"))
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(run_in_process(args.phase)))
        return 0
    if args.set is None:
        parser.error("--set is required (a folder written by datasets/make_scale_set.py)")
    data = args.set
    meta = json.loads((data / "meta.json").read_text())
    if "source" in meta:  # where the datasets root is on this machine is nobody else's business
        meta["source"] = "/".join(Path(meta["source"]).parts[-2:])
    total = args.rows + args.durable_rows
    if meta["size"] < total:
        parser.error(f"{data} holds {meta['size']:,} rows, fewer than --rows + --durable-rows = {total:,}")
    if meta["queries"] < (2 if args.quiet else 1) * args.queries + 50:
        parser.error(f"{data} holds {meta['queries']} queries; --queries + 50 warm-up must fit")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="huge-namespace-"))
    store = work / "store"
    if args.resume and args.workdir is None:
        parser.error("--resume needs --workdir")
    if store.exists() and not args.resume:
        shutil.rmtree(store)
    if args.settings:
        os.environ[SETTINGS_ENV] = json.dumps(json.loads(args.settings))
    started = time.perf_counter()
    from tiered_memory import MemoryConfig

    config = MemoryConfig()
    command = "python benchmarks/huge_namespace.py " + " ".join(argv if argv is not None else sys.argv[1:])
    # The run's start (date, load average, command) is kept in the workdir, so that a resumed run
    # reports when and on what machine state the first stage began; the resuming commands are listed.
    header_path = work / "run-header.json"
    header = json.loads(header_path.read_text()) if args.resume and header_path.is_file() else \
        {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
         "load_avg_at_start": os.getloadavg(), "resumed_with": []}
    if args.resume and header.get("command") != command:
        header["resumed_with"] = [*header.get("resumed_with", []), command]
    work.mkdir(parents=True, exist_ok=True)
    header_path.write_text(json.dumps(header, indent=2))
    results: dict = {
        **header, "revision": revision(), "machine": machine(), "data": meta,
        "truth_exact_for_final_store": meta["size"] == total,
        "budgets": {"warm_budget_bytes": config.warm_budget_bytes, "hot_budget_bytes": config.hot_budget_bytes,
                    "warm_capacity": config.warm_capacity},
        "defaults": {name: getattr(config, name) for name in
                     ("cold_index_min_rows", "cold_index_oversample", "cold_index_expansion",
                      "cold_index_expansion_add", "cold_index_build_threads", "cold_exact_max",
                      "cold_probe_fraction")},
        "settings_overrides": json.loads(args.settings or "{}"),
        "rows": args.rows, "durable_rows": args.durable_rows, "queries": args.queries, "repeats": args.repeats,
    }

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f} s, load {os.getloadavg()[0]:.2f}] {message}", flush=True)

    def save() -> None:
        results["invocation_seconds"] = round(time.perf_counter() - started, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        (args.out / "README.md").write_text(render(results))

    def stage(name: str, run) -> dict:
        """Run a stage, or with --resume take its saved result (a stage's JSON is written when it
        ends, so an interrupted run resumes at the stage it was in)."""
        saved = work / f"stage-{name}.json"
        if args.resume and saved.is_file():
            log(f"{name}: taken from {saved.name} (--resume)")
            value = json.loads(saved.read_text())
        else:
            log(f"{name} ...")
            t0 = time.perf_counter()
            value = run()
            value["stage_seconds"] = time.perf_counter() - t0
            value["load_avg_at_end"] = os.getloadavg()
            saved.write_text(json.dumps(value))
        results[name] = value
        save()
        return value

    probe_store = work / "probe-store"

    def fresh_copy(without_index: bool = False) -> str:
        """A copy of the store for one probe: a probe's searches promote what they find and save
        those tiers at close, so probing the store itself would hand every later probe (and the
        index build, which takes only cold rows) the answers of these queries already hot."""
        shutil.rmtree(probe_store, ignore_errors=True)
        shutil.copytree(store, probe_store,
                        ignore=shutil.ignore_patterns("coldindex") if without_index else None)
        return str(probe_store)

    def probe(settings: dict) -> dict:
        return run_phase("probe", fresh_copy(), str(data), str(args.queries), json.dumps(settings))

    def probes(settings: dict) -> list[dict]:
        return [probe(settings) for _ in range(args.repeats)]

    try:
        build = stage("build_async", lambda: run_phase("build", str(store), str(data), "0", str(args.rows), "async"))
        log(f"  {build['memories_per_s']:.0f}/s")
        build = stage("build_durable",
                      lambda: run_phase("build", str(store), str(data), str(args.rows), str(total), "sync"))
        log(f"  {build['memories_per_s']:.0f}/s")
        results["disk_bytes_before_index"] = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()
                                                 and p.parent.name != "coldindex")

        # Before the index exists; cold_index_min_rows=0 so that no build starts in the background.
        scan = stage("scan_peer", lambda: {"runs": probes({"cold_index_min_rows": 0})})
        scan.setdefault("summary", summarise_probes(scan["runs"], data, args.queries))
        log(f"  scan peer: {json.dumps(scan['summary'])}")

        built = stage("index_build", lambda: run_phase("index", str(store), str(args.build_threads)))
        log(f"  {built['index_cold_s']:.0f} s, {built['cold_index']}")

        def engine_and_raw() -> dict:
            runs, raws = [], []
            for _ in range(args.repeats):  # engine and raw alternate, so both see the same machine
                runs.append(probe({}))
                raws.append(run_phase("raw", str(store), str(data), str(args.queries),
                                      str(config.cold_index_oversample), str(config.cold_index_expansion)))
            return {"engine": runs, "raw": raws}

        both = stage("engine_and_raw", engine_and_raw)
        kth_index = kth_within(data, indexed_rows(store), args.queries)
        for key, runs in (("engine", both["engine"]), ("raw_usearch", both["raw"])):
            runs = [dict(run) for run in runs]
            results[key] = {"summary": summarise_probes(runs, data, args.queries,
                                                        kth_index if key == "raw_usearch" else None), "runs": runs}
            log(f"  {key}: {json.dumps(results[key]['summary'])}")
        save()

        if args.sweep is not None:
            grid = [(o, e) for o in (2, 4, 8) for e in (64, 128, 256)]
            chosen = [] if args.sweep == ["raw"] else \
                [tuple(int(x) for x in item.split("x")) for item in args.sweep] or grid

            def sweep() -> dict:
                rows = []
                for oversample, expansion in sorted(chosen):
                    run = probe({"cold_index_oversample": oversample, "cold_index_expansion": expansion})
                    rows.append({"oversample": oversample, "expansion": expansion, "found": run["found"],
                                 "engine_p50_ms": run["search_p50_ms"], "engine_p99_ms": run["search_p99_ms"]})
                    log(f"  engine at oversample {oversample}, expansion {expansion}: {run['search_p50_ms']:.2f} ms")
                return {"rows": rows}

            def raw_sweep() -> dict:  # one process per setting too; no namespace load, so seconds each
                rows = []
                for oversample, expansion in grid:
                    raw = run_phase("raw", str(store), str(data), str(args.queries), str(oversample), str(expansion))
                    rows.append({"oversample": oversample, "expansion": expansion, "found": raw["found"],
                                 "raw_p50_ms": raw["search_p50_ms"], "raw_p99_ms": raw["search_p99_ms"]})
                return {"rows": rows}

            for name, run in (("sweep", sweep), ("raw_sweep", raw_sweep)):
                for row in stage(name, run)["rows"]:
                    found = row.pop("found", None)
                    if found is None:  # a stage saved by an earlier version of this script
                        continue
                    prefix = "engine" if name == "sweep" else "raw"
                    row[f"{prefix}_recall_at_10"] = recall(found, data, args.queries)
                    if prefix == "raw":
                        row["raw_recall_at_10_within_index"] = recall(found, data, args.queries, kth_index)
                log(f"  {name}: {json.dumps(results[name]['rows'])}")
            save()
        if args.quiet:
            def quiet() -> dict:
                # The scan peer here is a copy without the index files (the engine then finds no
                # index and scans), since the store itself has one by now.
                return {key: run_phase("probe", fresh_copy(without_index=key == "scan_peer"), str(data),
                                       str(args.queries), json.dumps({"cold_index_min_rows": 0} if key == "scan_peer"
                                                                     else {}), "quiet")
                        for key in ("engine", "scan_peer")}

            for key, run in stage("quiet", quiet).items():
                if not isinstance(run, dict):  # stage_seconds, load_avg_at_end
                    continue
                found = run.pop("quiet_found", None)
                if found is not None:
                    run["quiet_recall_at_10"] = recall(found, data, args.queries, first=args.queries)
                    run.pop("found", None)
                log(f"  quiet {key}: p50 {run['quiet_p50_ms']:.2f} ms, recall {run.get('quiet_recall_at_10')}")
            save()
        results["disk_bytes_after_index"] = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        if args.one_thread_build:  # last: it replaces the index the probes above used
            one = stage("index_build_one_thread", lambda: run_phase("index", str(store), "1"))
            log(f"  one thread: {one['index_cold_s']:.0f} s")
        save()
        log("done")
    finally:
        shutil.rmtree(probe_store, ignore_errors=True)
        if not args.keep_store:
            shutil.rmtree(store, ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
    print(render(results))
    return 0


def run_in_process(phase: list[str]) -> dict:
    name, rest = phase[0], phase[1:]
    if name == "build":
        return phase_build(Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]), rest[4])
    if name == "probe":
        return phase_probe(Path(rest[0]), Path(rest[1]), int(rest[2]), json.loads(rest[3]), rest[4:] == ["quiet"])
    if name == "index":
        return phase_index(Path(rest[0]), int(rest[1]))
    if name == "raw":
        return phase_raw(Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]))
    raise SystemExit(f"unknown phase {name!r}")


# -- the report ----------------------------------------------------------------------------------

def _status(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "missed")


def render(results: dict) -> str:
    m = results["machine"]
    meta = results["data"]
    lines = ["# One huge namespace", "",
             f"- command: `{results['command']}`"
             + "".join(f"; resumed with `{c}`" for c in dict.fromkeys(results.get("resumed_with", []))),
             f"- date: {results['date']} (the first stage's start); revision {results['revision']}",
             f"- machine: {m.get('cpu', '?')}, {m['cpus']} CPUs, {m.get('ram_gib', '?')} GiB RAM, {m['platform']}, "
             f"Python {m['python']}, numpy {m['numpy']}, usearch {m['usearch']}; shared with other jobs, "
             f"load average at start {results['load_avg_at_start'][0]:.2f} / {results['load_avg_at_start'][1]:.2f} / "
             f"{results['load_avg_at_start'][2]:.2f} (1 / 5 / 15 min)",
             f"- data: {meta['dataset']}, {meta['size']:,} rows x {meta['dimension']}; "
             f"{results['rows']:,} added with durability \"async\" then {results['durable_rows']:,} with the default "
             f"(\"sync\"), all in namespace \"{NAMESPACE}\"; {results['queries']} held-out real queries per probe "
             f"(50 more as warm-up); recall@10 tie-aware against exact float32 over all "
             f"{meta['size']:,} rows" + ("" if results["truth_exact_for_final_store"] else
                                          " (NOT exactly the final store: see the command)"),
             f"- config: MemoryConfig defaults (warm budget {results['budgets']['warm_budget_bytes'] >> 20} MiB, "
             f"hot {results['budgets']['hot_budget_bytes'] >> 20} MiB, warm capacity "
             f"{results['budgets']['warm_capacity']:,}; "
             f"{', '.join(f'{k} {v}' for k, v in results['defaults'].items())})"
             f"; every probe a fresh process, medians of {results['repeats']}"
             + (f"; OVERRIDES for every process: {results['settings_overrides']}" if results["settings_overrides"]
                else ""), ""]
    durable = results.get("build_durable")
    engine = results.get("engine", {}).get("summary")
    index = results.get("index_build")
    size = f"{results['rows'] + results['durable_rows']:,} memories"
    goals = [(f"durable add_many >= 2,000 memories/s (into {results['rows']:,})",
              f"{durable['memories_per_s']:,.0f}/s" if durable else "-",
              None if not durable else durable["memories_per_s"] >= 2000)]
    if engine:
        anon = engine["after_queries_rss_anon_mib"]
        vm = engine["after_queries_vm_rss_mib"]
        goals += [
            ("reopen + first search <= 2 s", f"{engine['open_plus_first_search_s']:.2f} s "
             f"(slowest {engine['open_plus_first_search_s_max']:.2f} s)", engine["open_plus_first_search_s_max"] <= 2),
            ("search(vector) k=10 p50 <= 3 ms", f"{engine['search_p50_ms']:.2f} ms (p99 "
             f"{engine['search_p99_ms']:.2f} ms)", engine["search_p50_ms"] <= 3),
            ("recall@10 >= 0.95 (tie-aware)", f"{engine['recall_at_10']:.3f}", engine["recall_at_10"] >= 0.95),
            ("RSS after the queries <= 1.5 GiB", f"VmRSS {vm:.0f} MiB, RssAnon {anon:.0f} MiB", vm <= 1536),
        ]
    lines += [f"## Goals (one namespace of {size})", "", "| goal | measured | status |", "|---|---|---|"]
    lines += [f"| {goal} | {measured} | {_status(met)} |" for goal, measured, met in goals]
    lines += ["", "## Build", ""]
    for key, label in (("build_async", "async"), ("build_durable", "durable (sync, default)")):
        b = results.get(key)
        if b:
            lines.append(f"- add_many {label}: {b['rows']:,} rows in {b['adds_wall_s']:.0f} s = "
                         f"**{b['memories_per_s']:,.0f} memories/s** (per call of {PER_CALL:,}: p50 "
                         f"{b['call_p50_ms']:.0f} ms, p99 {b['call_p99_ms']:.0f} ms, max {b['call_max_ms']:.0f} ms; "
                         f"{b['memories_per_s_incl_idle_close']:,.0f}/s counting wait_idle + close"
                         + (f"; the namespace's load before the first add: {b['preload_s']:.1f} s" if b['preload_s']
                            else "") + ")")
    if index:
        ci = index["cold_index"]
        lines.append(f"- index_cold(\"{NAMESPACE}\") with cold_index_build_threads={index['threads']}: "
                     f"**{index['index_cold_s']:.0f} s** for {index['rows']:,} cold rows, files "
                     f"{ci['file_bytes'] / 2**20:.0f} MiB ({ci['file_bytes'] / max(index['rows'], 1):.0f} B/row); "
                     f"peak RSS of that process {index['peak_rss_mib']:.0f} MiB; the namespace's load before it "
                     f"{index['preload_s']:.1f} s")
        one = results.get("index_build_one_thread")
        if one:
            lines.append(f"- with the default cold_index_build_threads=1 (measured last, same rows): "
                         f"**{one['index_cold_s']:.0f} s** = {one['index_cold_s'] / index['index_cold_s']:.2f}x "
                         f"the {index['threads']}-thread build")
        elif index["threads"] > 1:
            lines.append(f"- with the default cold_index_build_threads=1 the build was not measured in this run: "
                         f"between the {index['index_cold_s']:.0f} s above and {index['threads']}x that "
                         f"({index['index_cold_s'] * index['threads']:.0f} s), as far as usearch's insertion "
                         "scales with threads (--one-thread-build measures it)")
    if "disk_bytes_after_index" in results:
        lines.append(f"- store on disk: {results['disk_bytes_before_index'] / 2**30:.2f} GiB before the index, "
                     f"{results['disk_bytes_after_index'] / 2**30:.2f} GiB after")
    defaults = results["defaults"]  # what the raw probe asks with: the run's engine defaults
    table = [("engine, on-disk index (defaults)", "engine"), ("engine, scan peer (before the index; "
             "cold_index_min_rows=0)", "scan_peer"), ("raw usearch over the index file alone (ColdIndex.open + "
             f"search_keys, {10 * defaults['cold_index_oversample']} candidates, expansion "
             f"{defaults['cold_index_expansion']})",
             "raw_usearch")]
    lines += ["", "## Search, k=10, vectors given", "",
              "| system | open | first search | open + first | p50 | p90 | p99 | recall@10 | VmRSS open / first / "
              "after | RssAnon open / first / after |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, key in table:
        s = results.get(key, {}).get("summary")
        if not s:
            continue
        first = "after_first_search_vm_rss_mib" in s
        lines.append(
            f"| {label} | {s['open_s'] * 1e3:.0f} ms | {s['first_search_s'] * 1e3:.0f} ms | "
            f"{s['open_plus_first_search_s']:.2f} s | {s['search_p50_ms']:.2f} ms | {s['search_p90_ms']:.2f} ms | "
            f"{s['search_p99_ms']:.2f} ms | {s['recall_at_10']:.3f}"
            + (f" ({s['recall_at_10_within_index']:.3f} within the index)" if "recall_at_10_within_index" in s else "")
            + f" | {s['after_open_vm_rss_mib']:.0f} / "
            + (f"{s['after_first_search_vm_rss_mib']:.0f}" if first else "-")
            + f" / {s['after_queries_vm_rss_mib']:.0f} MiB | {s['after_open_rss_anon_mib']:.0f} / "
            + (f"{s['after_first_search_rss_anon_mib']:.0f}" if first else "-")
            + f" / {s['after_queries_rss_anon_mib']:.0f} MiB |")
    if engine and results.get("raw_usearch") and results.get("scan_peer"):
        raw, scan = results["raw_usearch"]["summary"], results["scan_peer"]["summary"]
        lines += ["", f"Engine / raw usearch (p50): {engine['search_p50_ms'] / raw['search_p50_ms']:.2f}x; "
                      f"scan peer / engine (p50): {scan['search_p50_ms'] / engine['search_p50_ms']:.1f}x; "
                      f"recall engine {engine['recall_at_10']:.3f}, raw {raw['recall_at_10']:.3f}, scan "
                      f"{scan['recall_at_10']:.3f}."]
        served = results["engine"]["runs"][0]["tiers_served"]
        lines += ["", "Where the engine's hits came from (first probe): "
                  + ", ".join(f"{tier} {share:.0%}" for tier, share in served.items()) + "."]
    quiet = {key: run for key, run in results.get("quiet", {}).items() if isinstance(run, dict)
             and "quiet_recall_at_10" in run}
    if quiet:
        lines += ["", "## Each search by itself: the next queries, each after wait_idle() (one probe each)", "",
                  "The steady figures above include the promotions of the previous searches, which the background "
                  "thread runs meanwhile (a cold or warm hit is moved to hot, a warm row demoted to cold to make "
                  "room, under the store's lock). Here the probe waits for them before each search.", "",
                  "| system | p50 | p99 | recall@10 | background work after each search (mean) |",
                  "|---|---|---|---|---|"]
        for key, label in (("engine", "engine, on-disk index (defaults)"), ("scan_peer", "engine, scan (no index)")):
            run = quiet.get(key)
            if run:
                lines.append(f"| {label} | {run['quiet_p50_ms']:.2f} ms | {run['quiet_p99_ms']:.2f} ms | "
                             f"{run['quiet_recall_at_10']:.3f} | "
                             f"{run['background_after_each_search_ms_mean']:.1f} ms |")
    if results.get("sweep", {}).get("rows") or results.get("raw_sweep", {}).get("rows"):
        engine_rows = {(r["oversample"], r["expansion"]): r for r in results.get("sweep", {}).get("rows", [])
                       if "engine_recall_at_10" in r}
        raw_rows = {(r["oversample"], r["expansion"]): r for r in results.get("raw_sweep", {}).get("rows", [])
                    if "raw_recall_at_10" in r}
        lines += ["", "## cold_index_oversample x cold_index_expansion (one fresh process per setting and system, "
                      "one probe each)", "",
                  "| oversample | expansion | engine recall@10 | engine p50 | engine p99 | raw recall@10 (all rows / "
                  "within the index) | raw p50 | raw p99 |", "|---|---|---|---|---|---|---|---|"]
        for key in sorted(set(engine_rows) | set(raw_rows)):
            e, r = engine_rows.get(key), raw_rows.get(key)
            engine = (f"{e['engine_recall_at_10']:.3f} | {e['engine_p50_ms']:.2f} ms | {e['engine_p99_ms']:.2f} ms"
                      if e else "- | - | -")
            raw = (f"{r['raw_recall_at_10']:.3f} / {r['raw_recall_at_10_within_index']:.3f} | "
                   f"{r['raw_p50_ms']:.2f} ms | {r['raw_p99_ms']:.2f} ms" if r else "- | - | -")
            lines.append(f"| {key[0]} | {key[1]} | {engine} | {raw} |")
    ends = [f"{name} {value['load_avg_at_end'][0]:.1f}" for name, value in results.items()
            if isinstance(value, dict) and "load_avg_at_end" in value]
    if ends:
        lines += ["", "Load average (1 min) at the end of each stage: " + ", ".join(ends) + "."]
    lines += ["", "Notes: RSS in MiB from /proc/self/status of the probe process; VmRSS includes the LMDB and "
                  "index file pages mapped and touched (page cache, reclaimable), RssAnon is the heap the budgets "
                  "bound. A search serves its hits through the engine's usual path (records read, hits promoted "
                  "in the background), so the queries move what they find into the warm graph as they go."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
