"""``tiered-memory report quantization``: the command-line face of the quantization report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tiered_memory.errors import TieredMemoryError
from tiered_memory.quantization import SCHEMES


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_report_parser(commands: Any) -> None:
    """Add ``report quantization`` and ``report retrieval`` to the top-level subcommands."""
    report = commands.add_parser("report", help="measure and write reports that help choose settings")
    kinds = report.add_subparsers(dest="report", required=True)
    quant = kinds.add_parser(
        "quantization", help="recall, latency and bytes of every quantization scheme against exact float32",
        description="Measure float32, float16, int8, int4 and binary codes (exact scans and hnswlib, with and "
                    "without rescoring) against exact float32 search; write Markdown, JSON and PNG plots.")
    quant.add_argument("--vectors", type=Path, help=".npy of (n, d) embeddings, or .txt of texts (one a line) to "
                       "encode with the bundled model; default: DailyDialog's embeddings in ../shared/datasets")
    quant.add_argument("--queries", type=Path, help=".npy or .txt of queries; default: hold out --query-count rows")
    quant.add_argument("--query-count", type=int, default=None, help="rows held out as queries (default 1000)")
    quant.add_argument("--limit", type=int, default=None, help="index at most this many rows (random subset)")
    quant.add_argument("--schemes", type=_names, default=None, help=f"comma-separated, of {','.join(SCHEMES)}")
    quant.add_argument("--ef", type=_ints, default=None, help="hnswlib ef values (default 16,32,64,128,256)")
    quant.add_argument("--oversample", type=_ints, default=None, help="rescoring candidates per result (default 4,10)")
    quant.add_argument("--rescore-originals", type=_names, default=None,
                       help="originals kept for rescoring: float16 and/or float32 (default float16)")
    quant.add_argument("--latency-queries", type=int, default=None, help="queries timed one by one (default 300)")
    quant.add_argument("--int8-clip", type=float, default=None, help="int8 clip quantile (default: MemoryConfig's)")
    quant.add_argument("--sweep", type=_floats, default=None, help="clip quantiles compared for int8 and int4")
    quant.add_argument("--locomo", type=Path, default=None, help="LoCoMo JSON or datasets folder (default: found "
                       "in ../shared/datasets, skipped when absent)")
    quant.add_argument("--no-locomo", action="store_true", help="skip the LoCoMo end-to-end check")
    quant.add_argument("--locomo-conversations", type=int, default=None, help="use only the first N conversations")
    quant.add_argument("--rss-sample", type=int, default=None,
                       help="rows of the fresh-process RAM check of the hnswlib graph (default 16384; 0 skips it)")
    quant.add_argument("--seed", type=int, default=0)
    quant.add_argument("--quick", action="store_true", help="a small run in seconds (3,000 rows, 100 queries)")
    quant.add_argument("--no-progress", action="store_true", help="no progress bar")
    quant.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default ./reports)")
    quant.set_defaults(run=run_quantization_command)
    retrieval = kinds.add_parser(
        "retrieval", help="dense, BM25 and fused retrieval on LoCoMo: hit@k and evidence recall per method",
        description="Every LoCoMo turn one memory, a namespace per conversation: hit@1/5/10, evidence recall@10 "
                    "and search time of dense, BM25 and their fusions, per question category and conversation.")
    retrieval.add_argument("--locomo", type=Path, default=None,
                           help="LoCoMo JSON or datasets folder (default: found in ../shared/datasets)")
    retrieval.add_argument("--cache", type=Path, default=None,
                           help="folder to keep the encoded turns and questions in between runs (default: none)")
    retrieval.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default ./reports)")
    retrieval.set_defaults(run=run_retrieval_command)


def settings_from_args(args: argparse.Namespace) -> Any:
    from tiered_memory.reports.quantization import ReportSettings

    given = {
        "vectors": args.vectors, "queries": args.queries, "query_count": args.query_count, "limit": args.limit,
        "schemes": args.schemes, "ef_values": args.ef, "oversample": args.oversample,
        "rescore_originals": args.rescore_originals, "latency_queries": args.latency_queries,
        "sweep_quantiles": args.sweep, "locomo_conversations": args.locomo_conversations, "rss_sample": args.rss_sample,
        "seed": args.seed,
    }
    changes = {name: value for name, value in given.items() if value is not None}
    if args.int8_clip is not None:
        changes["clip_quantiles"] = (("int8", args.int8_clip),)
    if args.no_locomo:
        changes["locomo"] = None
    elif args.locomo is not None:
        changes["locomo"] = args.locomo
    return ReportSettings.quick(**changes) if args.quick else ReportSettings(**changes)


def run_quantization_command(args: argparse.Namespace) -> int:
    from tiered_memory.reports.quantization import run_quantization_report

    command = "tiered-memory " + " ".join(getattr(args, "argv", []) or ["report", "quantization"])
    try:
        result = run_quantization_report(settings_from_args(args), args.out, command=command,
                                         progress=not args.no_progress)
    except TieredMemoryError as err:  # bad input or missing data: the message says what to do
        print(f"tiered-memory report quantization: {err}", file=sys.stderr)
        return 2
    for path in result.files.values():
        print(path)
    return 0


def run_retrieval_command(args: argparse.Namespace) -> int:
    from tiered_memory.reports.retrieval import run_retrieval_report

    command = "tiered-memory " + " ".join(getattr(args, "argv", []) or ["report", "retrieval"])
    try:
        files = run_retrieval_report(args.out, locomo=args.locomo, cache=args.cache, command=command)
    except TieredMemoryError as err:
        print(f"tiered-memory report retrieval: {err}", file=sys.stderr)
        return 2
    for path in files.values():
        print(path)
    return 0
