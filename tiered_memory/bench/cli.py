"""``tiered-memory bench``: arguments, choosing the workload, printing and writing the report."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tiered_memory.bench.runner import PEERS, SCENARIOS, Options

QUICK_SIZE = 3_000
QUICK_QUERIES = 60


def add_bench_parser(commands: Any) -> None:
    """Register the ``bench`` subcommand on the main parser's subparsers."""
    bench = commands.add_parser(
        "bench", help="measure ours and the peers on the same data; print a table, write JSON + Markdown",
        description="Measure tiered_memory and its peers (hnswlib, numpy, usearch, ChromaDB, lmdb, cachetools) "
                    "on the same vectors and queries, interleaved, in one run.")
    bench.add_argument("--data", help="datasets root holding dailydialog/ (default: ../shared/datasets or "
                                      "$TIERED_MEMORY_DATASETS); with --scale-set, where its texts come from")
    source = bench.add_mutually_exclusive_group()
    source.add_argument("--vectors", help="your own (n, d) embeddings as .npy; text scenarios are skipped")
    source.add_argument("--scale-set", help="a folder written by datasets/make_scale_set.py (e.g. 1M vectors)")
    bench.add_argument("--quick", action="store_true",
                       help=f"small run: {QUICK_SIZE:,} memories, {QUICK_QUERIES} queries, fewer rounds (< 1 min)")
    bench.add_argument("--scenario", action="append", choices=SCENARIOS,
                       help="run only these (repeat the flag); default: all")
    bench.add_argument("--out", default="benchmarks/results", help="where to write <name>.json and <name>.md")
    bench.add_argument("--name", help="result file name (default: from the data, e.g. dailydialog-62k)")
    bench.add_argument("--size", type=int, help="store only the first N rows")
    bench.add_argument("--queries", type=int, help=f"held-out queries (default 500; --quick {QUICK_QUERIES})")
    bench.add_argument("--rounds", type=int, help="timed rounds over the queries and ids")
    bench.add_argument("--threads", type=int, help="threads in the mixed workload")
    bench.add_argument("--mixed-ops", type=int, help="operations in the mixed workload")
    bench.add_argument("--gets", type=int, help="distinct ids for the get scenario")
    bench.add_argument("--texts", type=int, help="query texts for text search")
    bench.add_argument("--peers", help=f"comma-separated subset of {','.join(PEERS)} (default: all installed)")
    bench.add_argument("--no-peers", action="store_true", help="measure ours alone")
    bench.add_argument("--warm-capacity", type=int, help="engine warm_capacity (default 100,000)")
    bench.add_argument("--hot-capacity", type=int, help="engine hot_capacity (default 10,000)")
    bench.add_argument("--durability", choices=("sync", "async"), help="engine durability (default sync)")
    bench.add_argument("--workdir", help="where stores are built (default: a temporary folder, removed after)")
    bench.add_argument("--keep", action="store_true", help="keep the built stores in --workdir")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.set_defaults(run=run_bench_command)


def options_from(args: argparse.Namespace) -> Options:
    base = Options.quick() if args.quick else Options()
    changes: dict[str, Any] = {}
    for name in ("rounds", "threads", "mixed_ops", "gets", "texts"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.scenario:
        changes["scenarios"] = tuple(args.scenario)
    if args.no_peers:
        changes["peers"] = ()
    elif args.peers:
        chosen = tuple(p.strip() for p in args.peers.split(",") if p.strip())
        unknown = sorted(set(chosen) - set(PEERS))
        if unknown:
            raise SystemExit(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
        changes["peers"] = chosen
    settings = {"warm_capacity": args.warm_capacity, "hot_capacity": args.hot_capacity,
                "durability": args.durability}
    changes["engine_settings"] = {k: v for k, v in settings.items() if v is not None}
    if args.workdir:
        changes["workdir"] = Path(args.workdir)
    changes["keep"] = args.keep
    changes["progress"] = not args.no_progress
    return replace(base, **changes)


def workload_from(args: argparse.Namespace) -> Any:
    from tiered_memory.bench.workload import dailydialog_workload, scale_set_workload, vectors_workload

    size = args.size if args.size is not None else (QUICK_SIZE if args.quick else None)
    queries = args.queries if args.queries is not None else (QUICK_QUERIES if args.quick else 500)
    if args.scale_set:
        if args.size is not None:
            raise SystemExit("--size does not apply to --scale-set (its ground truth covers every row); "
                             "write a smaller set with datasets/make_scale_set.py --size N")
        return scale_set_workload(args.scale_set, queries=queries, root=args.data)
    if args.vectors:
        return vectors_workload(args.vectors, queries=queries, size=size)
    return dailydialog_workload(args.data, queries=queries, size=size)


def run_bench_command(args: argparse.Namespace) -> int:
    from tiered_memory.bench.report import goals_markdown, scenario_markdown, write_outputs
    from tiered_memory.bench.runner import run_bench

    command = "tiered-memory " + shlex.join(getattr(args, "argv", sys.argv[1:]))
    workload = workload_from(args)
    if args.name:
        workload.name = args.name
    elif args.quick:
        workload.name = f"quick-{workload.name}"
    report = run_bench(workload, options_from(args), command)
    for table in report["scenarios"]:
        print("\n".join(scenario_markdown(table)))
    print("\n".join(goals_markdown(report["goals"])))
    json_path, md_path = write_outputs(report, Path(args.out))
    print(f"\nwrote {json_path} and {md_path} in {report['duration_s']:.0f} s")
    return 0
