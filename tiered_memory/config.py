"""One configuration object, units in the names, validated once."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from tiered_memory.errors import ConfigError

Durability = Literal["sync", "async"]
Originals = Literal["none", "float16", "float32"]

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """Settings of a ``TieredMemory`` store. Defaults suit one agent process on a laptop."""

    # RAM budgets. Namespaces are loaded on first use and unloaded (least recently and least
    # used first) once the loaded namespaces' catalog rows, codes and graphs pass
    # warm_budget_bytes; the hot tier's records and vectors are bounded by hot_budget_bytes.
    # Nothing else grows with the archive: opening a store reads a few store-level keys.
    warm_budget_bytes: int = 512 * 2**20  # 512 MiB
    hot_budget_bytes: int = 64 * 2**20  # 64 MiB
    # Tier capacities, in memories, within what is loaded. The hot tier is a subset of the warm
    # tier, so hot_capacity defaults to min(10_000, warm_capacity).
    hot_capacity: int | None = None
    warm_capacity: int = 100_000

    # "sync": every add/update/delete is fsync'ed before it returns (survives power loss).
    # "async": committed to the OS before returning (survives a killed process, not a power cut).
    durability: Durability = "sync"

    # Promotion on access runs in a background thread (a cold -> warm move is an hnswlib insertion,
    # ~1 ms): the read returns at once and the memory is hot a moment later. False: inside the call.
    promote_in_background: bool = True
    # New memories of a large add (>= 256) into a namespace that has a graph enter it in the
    # background too, while at most admission_backlog_max wait: the add returns once they are
    # durable and in cold blocks, where search already finds them (exact scan). hnswlib insertion
    # was 81% of a durable add_many at 150k memories (1.25 ms per memory, 2 threads): 650/s.
    # A backlog past the bound makes adds insert themselves (the graph keeps up with the writers).
    admission_backlog_max: int = 50_000

    # Offline sync (tiered_memory.sync): a delete's tombstone is kept until every store that has
    # synced with this one has applied it and it is this old. The age bounds what a store that
    # syncs only through others (so is not known here), away for longer, can bring back.
    sync_tombstone_retention_s: float = 30 * DAY_S

    # Decay: score = importance * 0.5 ** (idle_s / half_life_s) * (1 + use_weight * ln(1 + uses)).
    half_life_s: float = 7 * DAY_S
    use_weight: float = 0.5
    hot_min_score: float = 0.05  # below this a hot memory is demoted to warm by maintain()
    warm_min_score: float = 0.01  # below this a warm memory is demoted to cold by maintain()
    # Automatic maintenance runs inside the operation that crosses either bound.
    maintain_every_ops: int = 20_000
    maintain_every_s: float = 600.0

    # Warm tier (hnswlib). ef_search trades latency for recall; see benchmarks/reports.
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 64

    # Namespaces (or kind-filtered subsets) of at most this many memories are searched exactly,
    # by one scan of their int8 codes (about 0.1 ms per 1,000 rows here): no ANN error at all.
    exact_search_max: int = 1_024

    # Cold search: up to cold_exact_max cold memories per namespace are scanned exactly (about
    # 9 ms per 100k); beyond, by topic partition (IVF): nearest topics first, until
    # cold_probe_fraction of the cold rows are scanned. Sentence embeddings cluster weakly:
    # on DailyDialog, 0.3 of the rows gave recall@10 0.95 and 0.4 gave 0.97.
    cold_exact_max: int = 100_000
    cold_probe_fraction: float = 0.4

    # Huge namespaces: once a loaded namespace holds cold_index_min_rows cold memories that no index
    # covers (and at least 1/8 of what its index holds), the background thread builds an on-disk
    # index of its cold part (usearch int8 graph, memory-mapped: tiered_memory/tiers/cold_parts.py). A
    # search asks it for k * cold_index_oversample candidates (breadth cold_index_expansion) and
    # scores them by their int8 codes, as a scan would. At 1M rows the graph answered in 1.0 ms
    # where a 40% partition scan took 109 ms (benchmarks/results/cold-index/); breadth 512, not 128:
    # recall@10 of the whole search at 1M was 0.908 at 128 and 0.967 at 512, p50 12.1 vs 11.7 ms
    # (the rest of the search dominates; benchmarks/results/huge-namespace/). The rows it does not
    # cover (at most about cold_index_min_rows) are scanned at ~0.09 ms per 1,000. 0 turns it off.
    # A build takes minutes at 1M rows on cold_index_build_threads threads (1: the other core
    # keeps serving); sealed namespaces are never indexed (the file would hold vectors in clear).
    cold_index_min_rows: int = 20_000
    cold_index_oversample: int = 4
    cold_index_expansion: int = 512
    cold_index_expansion_add: int = 64
    cold_index_build_threads: int = 1

    # Quantization of stored embeddings (int8 codes are always kept).
    keep_originals: Originals = "float16"  # float copies in cold, for rescoring and re-calibration
    rescore: bool = False  # re-rank candidates with the originals
    rescore_oversample: int = 4  # candidates fetched per requested result when rescoring
    calibration_size: int = 256  # memories before the int8 ranges are learned from data
    # Per-dimension range = [q(1 - p), q(p)] of the sample. 0.9999 beat 0.999 on every DailyDialog
    # sample tried (exact int8 recall@10 0.994-0.998 vs 0.988-0.993; benchmarks/reports/).
    clip_quantile: float = 0.9999
    drift_clip_rate: float = 0.01  # share of clipped values in new codes that triggers re-calibration

    # Topics (per namespace): partitions for cold search and prefetch. 0 = about sqrt(n).
    topics_per_namespace: int = 0
    topic_min_memories: int = 256  # no topic model below this many memories in a namespace

    # LMDB map: starts at map_size_bytes and doubles whenever it fills.
    map_size_bytes: int = 256 * 2**20  # 256 MiB of address space, not of disk
    max_map_size_bytes: int = 2**40  # 1 TiB: past this the store reports itself full
    max_readers: int = 256

    # Input limits.
    max_text_chars: int = 1_000_000
    max_metadata_bytes: int = 64 * 2**10  # 64 KiB, serialized
    max_metadata_depth: int = 16

    # Adding a text already in the namespace (case-folded, white space collapsed) returns the
    # existing memory's id and counts an access instead of storing a copy. Sealed memories are
    # not deduplicated: their digest on disk would tell which secrets are equal.
    dedup: bool = True

    query_cache_size: int = 1_024  # encoded query vectors kept (LRU), keyed by a digest of the text

    # Seconds a memory lives when add() is given neither ttl_s= nor expires_at= (None: forever).
    # Expired memories are left out of every read at once and deleted by the next maintain().
    default_ttl_s: float | None = None

    def __post_init__(self) -> None:
        if self.hot_capacity is None and isinstance(self.warm_capacity, int):
            object.__setattr__(self, "hot_capacity", min(10_000, self.warm_capacity))
        positive_ints = (
            "warm_budget_bytes", "hot_budget_bytes", "warm_capacity", "hot_capacity", "maintain_every_ops",
            "hnsw_m", "hnsw_ef_construction",
            "hnsw_ef_search", "rescore_oversample", "calibration_size",
            "topic_min_memories", "map_size_bytes", "max_map_size_bytes", "max_readers", "max_text_chars",
            "max_metadata_bytes", "max_metadata_depth", "cold_index_oversample", "cold_index_build_threads",
            "admission_backlog_max",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"MemoryConfig.{name} must be a positive int, got {value!r}")
        for name in ("exact_search_max", "cold_exact_max", "topics_per_namespace", "query_cache_size",
                     "cold_index_min_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"MemoryConfig.{name} must be an int >= 0, got {value!r}")
        for name in ("cold_index_expansion", "cold_index_expansion_add"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise ConfigError(f"MemoryConfig.{name} must be an int >= 2, got {value!r}")
        for name in ("half_life_s", "maintain_every_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"MemoryConfig.{name} must be a positive number of seconds, got {value!r}")
        ttl = self.default_ttl_s
        if ttl is not None and (not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not math.isfinite(ttl)
                                or ttl <= 0):
            raise ConfigError(f"MemoryConfig.default_ttl_s must be a positive, finite number of seconds or None "
                              f"(never expire), got {ttl!r}")
        for name in ("use_weight", "hot_min_score", "warm_min_score", "sync_tombstone_retention_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"MemoryConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.hot_capacity > self.warm_capacity:
            raise ConfigError(
                f"hot_capacity ({self.hot_capacity}) must not exceed warm_capacity ({self.warm_capacity}): "
                "every hot memory is also in the warm index"
            )
        if self.max_map_size_bytes < self.map_size_bytes:
            raise ConfigError("max_map_size_bytes must be at least map_size_bytes")
        if not isinstance(self.dedup, bool):
            raise ConfigError(f"MemoryConfig.dedup must be True or False, got {self.dedup!r}")
        if self.durability not in ("sync", "async"):
            raise ConfigError(f"durability must be 'sync' or 'async', got {self.durability!r}")
        if self.keep_originals not in ("none", "float16", "float32"):
            raise ConfigError(f"keep_originals must be 'none', 'float16' or 'float32', got {self.keep_originals!r}")
        if self.rescore and self.keep_originals == "none":
            raise ConfigError("rescore=True needs originals: set keep_originals='float16' or 'float32'")
        if not 0.5 < self.clip_quantile <= 1.0:
            raise ConfigError(f"clip_quantile must be in (0.5, 1], got {self.clip_quantile!r}")
        if not 0.0 < self.cold_probe_fraction <= 1.0:
            raise ConfigError(f"cold_probe_fraction must be in (0, 1], got {self.cold_probe_fraction!r}")
        if not 0.0 < self.drift_clip_rate <= 1.0:
            raise ConfigError(f"drift_clip_rate must be in (0, 1], got {self.drift_clip_rate!r}")

    def replace(self, **changes: object) -> MemoryConfig:
        """A copy with some settings changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown MemoryConfig settings: {sorted(unknown)}")
        if "hot_capacity" not in changes and self.hot_capacity == min(10_000, self.warm_capacity):
            changes["hot_capacity"] = None  # it was derived from warm_capacity: derive it again
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
