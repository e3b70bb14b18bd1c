"""Latency summaries (p50/p90/p99/max, never the mean alone), throughput and recall@k."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tiered_memory.corpora import tie_aware_recall

PERCENTILES = (50, 90, 99)


def summarize(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float | int]:
    """n, p50/p90/p99/max in microseconds, and operations per second at the median."""
    samples = np.asarray(samples_ns, dtype=np.float64) / 1e3
    if not len(samples):
        return {"n": 0, "p50_us": float("nan"), "p90_us": float("nan"), "p99_us": float("nan"),
                "max_us": float("nan"), "ops_per_s": float("nan")}
    # "lower" keeps each percentile a latency that was actually observed, not an interpolation.
    p50, p90, p99 = (float(np.percentile(samples, q, method="lower")) for q in PERCENTILES)
    return {"n": int(len(samples)), "p50_us": p50, "p90_us": p90, "p99_us": p99, "max_us": float(samples.max()),
            "ops_per_s": 1e6 / p50 if p50 > 0 else float("inf")}


def time_calls(call: Callable[[Any], object], arguments: Sequence[Any]) -> list[int]:
    """Nanoseconds of call(argument), one sample per argument, timed one by one."""
    clock = time.perf_counter_ns
    samples = []
    for argument in arguments:
        started = clock()
        call(argument)
        samples.append(clock() - started)
    return samples


def recall_at_k(found: np.ndarray, queries: np.ndarray, stored: np.ndarray, kth_best: np.ndarray) -> float:
    """Tie-aware recall@k of `found` (query x k row numbers into `stored`, -1 = missing)."""
    found = np.asarray(found, dtype=np.int64)
    safe = np.where(found >= 0, found, 0)
    exact = np.einsum("qd,qkd->qk", np.asarray(queries, dtype=np.float32),
                      np.asarray(stored[safe.ravel()], dtype=np.float32).reshape(*safe.shape, -1))
    return tie_aware_recall(found, exact, kth_best)


def ratio(ours: float, other: float) -> float | None:
    """ours / other (above 1: we are slower), or None when either is missing."""
    if not (np.isfinite(ours) and np.isfinite(other)) or other <= 0:
        return None
    return ours / other
