"""Topics: spherical k-means centroids per namespace, fitted in batch and updated online.

A memory's topic is its nearest centroid (by cosine). Topics partition the cold tier, so a
cold search scans only the partitions nearest the query, and they are what conversation
tracking and prefetch reason about.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_FIT_SAMPLE = 20_000  # vectors a batch fit looks at; assignment then covers every memory
_ITERATIONS = 15


def topics_for(count: int, configured: int) -> int:
    """How many topics a namespace of `count` memories gets: the configured number, or ~sqrt(n)."""
    k = configured if configured > 0 else int(round(np.sqrt(count)))
    return int(max(2, min(k, 1_024, count)))


class TopicModel:
    """Unit-length centroids and the number of memories each has absorbed."""

    def __init__(self, centroids: np.ndarray, counts: np.ndarray, fitted_on: int) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.fitted_on = fitted_on  # namespace size at the last batch fit

    def __len__(self) -> int:
        return len(self.centroids)

    @classmethod
    def fit(cls, vectors: np.ndarray, k: int, seed: int = 0) -> TopicModel:
        """Batch spherical k-means (k-means++ seeding) on a sample of at most 20k vectors."""
        rng = np.random.default_rng(seed)
        sample = vectors
        if len(vectors) > _FIT_SAMPLE:
            sample = vectors[rng.choice(len(vectors), _FIT_SAMPLE, replace=False)]
        centroids = _seed(sample, k, rng)
        for _ in range(_ITERATIONS):
            assignment = np.argmax(sample @ centroids.T, axis=1)
            moved = _means(sample, assignment, len(centroids))
            empty = ~np.isfinite(moved).all(axis=1)
            if empty.any():  # re-seed an empty topic with the worst-served vector
                worst = np.argsort((sample * centroids[assignment]).sum(axis=1))[: int(empty.sum())]
                moved[empty] = sample[worst]
            if np.allclose(moved, centroids, atol=1e-5):
                centroids = moved
                break
            centroids = moved
        model = cls(centroids, np.zeros(len(centroids), dtype=np.int64), len(vectors))
        topics, _ = model.assign(vectors)
        model.counts = np.bincount(topics, minlength=len(centroids)).astype(np.int64)
        return model

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest topic of each vector, and its cosine to that topic's centroid."""
        sims = np.atleast_2d(vectors) @ self.centroids.T
        topics = np.argmax(sims, axis=1)
        return topics.astype(np.int32), sims[np.arange(len(topics)), topics]

    def absorb(self, vectors: np.ndarray, topics: np.ndarray) -> None:
        """Online (mini-batch k-means) update: move each centroid toward its new members by 1/count."""
        for topic in np.unique(topics):
            members = vectors[topics == topic]
            self.counts[topic] += len(members)
            rate = len(members) / self.counts[topic]
            moved = (1 - rate) * self.centroids[topic] + rate * members.mean(axis=0)
            self.centroids[topic] = moved / max(float(np.linalg.norm(moved)), 1e-12)

    def nearest(self, query: np.ndarray, n: int) -> np.ndarray:
        """The n topics whose centroids are most similar to the query, best first."""
        sims = self.centroids @ query
        n = min(n, len(sims))
        top = np.argpartition(-sims, n - 1)[:n]
        return top[np.argsort(-sims[top])]

    def state(self) -> dict[str, Any]:
        return {
            "centroids": self.centroids.tobytes(),
            "shape": list(self.centroids.shape),
            "counts": self.counts.tobytes(),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TopicModel:
        centroids = np.frombuffer(state["centroids"], dtype=np.float32).reshape(state["shape"]).copy()
        counts = np.frombuffer(state["counts"], dtype=np.int64).copy()
        return cls(centroids, counts, state["fitted_on"])


def _seed(sample: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ on cosine distance."""
    k = min(k, len(sample))
    chosen = [int(rng.integers(len(sample)))]
    distance = np.maximum(1.0 - sample @ sample[chosen[0]], 0.0)
    for _ in range(1, k):
        total = float(distance.sum())
        pick = int(rng.choice(len(sample), p=distance / total)) if total > 0 else int(rng.integers(len(sample)))
        chosen.append(pick)
        distance = np.minimum(distance, np.maximum(1.0 - sample @ sample[pick], 0.0))
    return sample[chosen].copy()


def _means(sample: np.ndarray, assignment: np.ndarray, k: int) -> np.ndarray:
    """Unit-length mean of each cluster (NaN rows for empty clusters)."""
    # Sorting rows by cluster and summing runs with reduceat is ~100x faster than np.add.at here.
    order = np.argsort(assignment, kind="stable")
    counts = np.bincount(assignment, minlength=k)
    means = np.full((k, sample.shape[1]), np.nan, dtype=np.float32)
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[present]
    sums = np.add.reduceat(sample[order].astype(np.float64), starts, axis=0)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    ok = norms[:, 0] > 0
    means[present[ok]] = (sums[ok] / norms[ok]).astype(np.float32)
    return means
