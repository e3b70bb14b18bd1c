"""What loading a namespace's lexical index costs: rebuild from the texts, or reopen its directory.

    python benchmarks/lexical_rebuild.py [--out benchmarks/results/lexical]

``LexicalIndex`` on the first 10k DailyDialog utterances, and on 100k (all 62,142, then the first
37,858 again), each size in a fresh process: build from texts in RAM (tokenising included, as a
load without a persisted index would), build into a directory and flush, reopen that directory
and run one query, RSS growth of the built index, bytes on disk. Medians of 3.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = (10_000, 100_000)
REPEATS = 3


def _rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def run_one(size: int) -> dict[str, Any]:
    from tiered_memory.corpora import load_dailydialog
    from tiered_memory.search.lexical import LexicalIndex

    utterances = load_dailydialog().utterances
    texts = [utterances[i % len(utterances)] for i in range(size)]
    ids = [f"m{i:07d}" for i in range(size)]
    before = _rss()
    kept = LexicalIndex()
    kept.add(ids, texts)
    kept.search("warm up the searcher", 10)
    rss = _rss() - before
    builds, persisted, reopens = [], [], []
    with tempfile.TemporaryDirectory(prefix="tm-lexrebuild-") as scratch:
        for run in range(REPEATS):
            started = time.perf_counter()
            LexicalIndex().add(ids, texts)
            builds.append(time.perf_counter() - started)
            where = Path(scratch) / f"run{run}"
            started = time.perf_counter()
            index = LexicalIndex(where)
            index.add(ids, texts)
            index.flush()
            persisted.append(time.perf_counter() - started)
            del index
            started = time.perf_counter()
            LexicalIndex(where).search("how much is it", 10)
            reopens.append(time.perf_counter() - started)
        bytes_on_disk = sum(p.stat().st_size for p in (Path(scratch) / "run0").rglob("*") if p.is_file())
    return {"documents": size, "build_from_texts_s": statistics.median(builds),
            "build_into_directory_s": statistics.median(persisted), "reopen_and_query_s": statistics.median(reopens),
            "rss_mib": rss / 2**20, "directory_mib": bytes_on_disk / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lexical"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return 0
    rows = []
    for size in SIZES:
        done = subprocess.run([sys.executable, __file__, "--one", str(size)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            raise SystemExit(f"{size} documents failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    lines = ["# Loading a namespace's lexical index", "",
             "Run by `python benchmarks/lexical_rebuild.py` (2 cores, shared machine). DailyDialog utterances; "
             f"medians of {REPEATS}. Default `LexicalIndex` settings (two context levels, none given).", "",
             "| documents | build from texts in RAM s | build into a directory + flush s | reopen + 1 query s | "
             "RSS MiB | directory MiB |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['documents']:,} | {r['build_from_texts_s']:.3f} | {r['build_into_directory_s']:.3f} | "
                     f"{r['reopen_and_query_s']:.4f} | {r['rss_mib']:.1f} | {r['directory_mib']:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rebuild.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "rebuild.md").write_text("\n".join(lines) + "\n")
    print(args.out / "rebuild.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
