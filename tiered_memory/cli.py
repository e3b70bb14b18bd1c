"""The ``tiered-memory`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
