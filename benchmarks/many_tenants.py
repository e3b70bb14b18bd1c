"""Many tenants: N memories over N/100 namespaces, with the default budgets.

Measures what lazy namespaces promise, each figure in a fresh process: open time, RSS after open,
first search in a namespace not loaded yet (p50/p99), steady search in a loaded one (p50), RSS
after touching 100 namespaces and after touching every namespace. Run at two sizes in one
invocation, so the ratio (open at the large size / open at the small size) is measured on the
same machine state. Vectors: DailyDialog's MiniLM embeddings plus noise (`corpora.scaled_vectors`).

    python benchmarks/many_tenants.py --sizes 10000 1000000 --out benchmarks/results/many-tenants
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

PER_NAMESPACE = 100


def build(path: Path, size: int) -> float:
    from tiered_memory import TieredMemory
    from tiered_memory.corpora import load_dailydialog, scaled_vectors

    base = load_dailydialog().embeddings()
    started = time.perf_counter()
    with TieredMemory(path, encoder=None, dimension=base.shape[1], durability="async") as mem:
        for start in range(0, size, 100_000):
            vectors = scaled_vectors(base, min(100_000, size - start), seed=start)
            for offset in range(0, len(vectors), PER_NAMESPACE):
                ns = (start + offset) // PER_NAMESPACE
                chunk = vectors[offset:offset + PER_NAMESPACE]
                mem.add_many([f"tenant {ns} memory {i}" for i in range(len(chunk))], namespace=f"tenant{ns}",
                             vectors=chunk)
            mem.wait_idle()
    return time.perf_counter() - started


PROBE = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    t0 = time.perf_counter()
    from tiered_memory import TieredMemory
    import_s = time.perf_counter() - t0
    def rss_mib(field="VmRSS"):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    path, namespaces = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    rss_before = rss_mib()
    t0 = time.perf_counter()
    mem = TieredMemory(path, encoder=None, dimension=384)
    open_s = time.perf_counter() - t0
    rss_open = rss_mib()
    q = rng.normal(size=(400, 384)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    order = rng.permutation(namespaces)
    first = []
    for i, ns in enumerate(order[:100]):
        t = time.perf_counter()
        mem.search(vector=q[i], namespace=f"tenant{ns}", k=10)
        first.append(time.perf_counter() - t)
    rss_100 = rss_mib()
    anon_100 = rss_mib("RssAnon")
    steady = []
    for i in range(300):
        ns = order[i % 100]
        t = time.perf_counter()
        mem.search(vector=q[i % 400], namespace=f"tenant{ns}", k=10)
        steady.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    for i, ns in enumerate(order):
        mem.search(vector=q[i % 400], namespace=f"tenant{ns}", k=10)
    touch_all_s = time.perf_counter() - t0
    mem.wait_idle()
    rss_all = rss_mib()
    anon_all, file_all = rss_mib("RssAnon"), rss_mib("RssFile")
    stats = mem.stats().loaded
    mem.close()
    p = lambda xs, f: float(np.percentile(np.array(xs) * 1e3, f))
    print(json.dumps({"import_s": import_s, "open_s": open_s, "rss_before_open_mib": rss_before,
                      "rss_after_open_mib": rss_open, "first_search_p50_ms": p(first, 50),
                      "first_search_p99_ms": p(first, 99),
                      "steady_search_p50_ms": p(steady, 50), "rss_after_100_mib": rss_100,
                      "touch_all_s": touch_all_s, "rss_after_all_mib": rss_all,
                      "anon_after_100_mib": anon_100, "anon_after_all_mib": anon_all,
                      "file_after_all_mib": file_all, "loaded": stats}))
""")


def probe(path: Path, namespaces: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), str(namespaces)], capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"the probe failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3, help="probes per size (fresh process each); medians")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/many-tenants"))
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    from tiered_memory import MemoryConfig

    work = args.workdir or Path(tempfile.mkdtemp(prefix="many-tenants-"))
    config = MemoryConfig()
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform(), "load_avg": os.getloadavg()},
               "budgets": {"warm_budget_bytes": config.warm_budget_bytes,
                           "hot_budget_bytes": config.hot_budget_bytes},
               "per_namespace": PER_NAMESPACE, "sizes": {}}
    try:
        for size in args.sizes:
            path = work / f"store-{size}"
            build_s = build(path, size)
            runs = [probe(path, size // PER_NAMESPACE) for _ in range(args.repeats)]
            keys = [k for k in runs[0] if k != "loaded"]
            median = {k: float(np.median([r[k] for r in runs])) for k in keys}
            disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            results["sizes"][str(size)] = {"build_s": build_s, "disk_bytes": disk, "median": median, "runs": runs}
            print(size, json.dumps(median), flush=True)
            shutil.rmtree(path)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    sizes = [str(s) for s in args.sizes]
    if len(sizes) >= 2:
        small, large = results["sizes"][sizes[0]]["median"], results["sizes"][sizes[-1]]["median"]
        results["open_ratio_large_vs_small"] = large["open_s"] / small["open_s"]
    results["peak_rss_of_builder_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "many-tenants.json").write_text(json.dumps(results, indent=2))
    lines = ["# Many tenants: lazy namespaces", "",
             f"Memories in namespaces of {PER_NAMESPACE}; default budgets (warm {config.warm_budget_bytes >> 20} MiB, "
             f"hot {config.hot_budget_bytes >> 20} MiB); medians of {args.repeats} fresh processes per size. "
             f"Machine: {os.cpu_count()} CPUs, load average at start {results['machine']['load_avg'][0]:.2f}.",
             "",
             "| memories | namespaces | open | RSS after open | first search (unloaded ns) p50 / p99 "
             "| steady search p50 | RSS after 100 ns | RSS after all ns (anonymous + LMDB file pages) | build |",
             "|---|---|---|---|---|---|---|---|---|"]
    for size in sizes:
        m = results["sizes"][size]["median"]
        lines.append(f"| {int(size):,} | {int(size) // PER_NAMESPACE:,} | {m['open_s'] * 1e3:.1f} ms | "
                     f"{m['rss_after_open_mib']:.0f} MiB | "
                     f"{m['first_search_p50_ms']:.2f} / {m['first_search_p99_ms']:.2f} ms | "
                     f"{m['steady_search_p50_ms']:.3f} ms | {m['rss_after_100_mib']:.0f} MiB | "
                     f"{m['rss_after_all_mib']:.0f} MiB ({m['anon_after_all_mib']:.0f} + "
                     f"{m['file_after_all_mib']:.0f}) | {results['sizes'][size]['build_s']:.0f} s |")
    lines += ["", "Anonymous memory is what the budgets bound (catalog rows, codes, graphs, hot records, the "
                  "interpreter); LMDB file pages are the kernel's page cache mapped into the process, shared and "
                  "reclaimable, and grow with what was read."]
    if "open_ratio_large_vs_small" in results:
        lines += ["", f"Open at {int(sizes[-1]):,} / open at {int(sizes[0]):,}: "
                      f"{results['open_ratio_large_vs_small']:.2f}x (goal: within 2x)."]
    (args.out / "many-tenants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
