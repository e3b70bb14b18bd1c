"""Render the README's "Performance" section from committed benchmark results.

    python benchmarks/render_performance.py                      # the default result files below
    python benchmarks/render_performance.py benchmarks/results/dailydialog-62k.json --readme README.md

Replaces the text between <!-- performance:start --> and <!-- performance:end --> in the
README; every number comes from the JSON files given (written by `tiered-memory bench`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tiered_memory.bench.report import readme_section, replace_section

DEFAULT_RESULTS = ("benchmarks/results/dailydialog-62k.json", "benchmarks/results/scale-1000k.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", help=f"result JSON files (default: those of {DEFAULT_RESULTS} "
                                                   "that exist)")
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args(argv)
    paths = args.results or [p for p in DEFAULT_RESULTS if Path(p).is_file()]
    if not paths:
        parser.error(f"no result files: run `tiered-memory bench` first (looked for {', '.join(DEFAULT_RESULTS)})")
    runs = [(json.loads(Path(p).read_text()), p) for p in paths]
    readme = Path(args.readme)
    readme.write_text(replace_section(readme.read_text(), readme_section(runs)))
    print(f"rendered {len(runs)} run(s) into {readme}: {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
