"""Run in a fresh process: build a warm graph and print its RAM as measured and as modelled.

``python -m tiered_memory.reports.rss_probe VECTORS.npy M`` prints JSON. A fresh process, because
in a long-lived one the allocator reuses memory freed by earlier graphs and the growth of the
resident set would understate the cost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from tiered_memory.tiers.warm import Graph

# Graph memory does not depend on ef_construction (only on M, dimension and the seeded levels),
# so a cheap build measures the same allocation as the engine's.
_PROBE_EF_CONSTRUCTION = 32


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def main(argv: list[str]) -> int:
    vectors = np.load(argv[0])
    m = int(argv[1])
    ids = [f"{i:032x}" for i in range(len(vectors))]  # memory ids are 32 hex characters
    before = resident_bytes()
    graph = Graph("probe", vectors.shape[1], m, _PROBE_EF_CONSTRUCTION, 64)
    graph.put_many(ids, vectors)
    grown = resident_bytes() - before
    print(json.dumps({"vectors": len(vectors), "rss_growth_bytes": grown, "graph_nbytes": graph.nbytes(),
                      "capacity": graph.index.get_max_elements()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
