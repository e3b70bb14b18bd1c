"""The ``tiered-memory`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from tiered_memory.demo import run_demo

    run_demo(Path(args.path), fresh=not args.keep)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiered-memory", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="remember, search, tier, close and reopen on the bundled model")
    demo.add_argument("--path", default="demo_memory", help="store directory (default: ./demo_memory)")
    demo.add_argument("--keep", action="store_true", help="reuse the directory instead of starting fresh")
    demo.set_defaults(run=_demo)

    from tiered_memory.bench.cli import add_bench_parser

    add_bench_parser(commands)

    from tiered_memory.reports.cli import add_report_parser

    add_report_parser(commands)

    from tiered_memory.integrations.mcp_server import add_mcp_parser

    add_mcp_parser(commands)

    from tiered_memory.inspection.cli import add_inspect_parsers

    add_inspect_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `bench` records the exact command
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
