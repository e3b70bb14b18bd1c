"""Write a large benchmark set made from real DailyDialog embeddings (default: 1,000,000 rows).

    python datasets/make_scale_set.py                       # 1M rows -> benchmarks/results/tmp/scale-1000k
    python datasets/make_scale_set.py --size 200000 --out /data/scale-200k
    tiered-memory bench --scale-set benchmarks/results/tmp/scale-1000k

Writes vectors.npy (size x 384 float32), queries.npy (real held-out utterances), truth_ids.npy
and truth_scores.npy (exact top-10 by brute force), base_rows.npy, query_rows.npy and meta.json.
How the rows are made, and why that noise level, is in datasets/README.md. The output is
generated data: keep it out of git (the default folder is ignored).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tiered_memory.bench.workload import write_scale_set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="rows to write (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=1_000, help="held-out real queries (default 1,000)")
    parser.add_argument("--noise", type=float, default=0.5,
                        help="norm of the Gaussian noise added to each real vector (default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="datasets root holding dailydialog/ (default ../shared/datasets)")
    parser.add_argument("--out", help="output folder (default benchmarks/results/tmp/scale-<size/1000>k)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path("benchmarks/results/tmp") / f"scale-{args.size // 1000}k"
    write_scale_set(out, args.size, queries=args.queries, noise=args.noise, seed=args.seed, root=args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
