"""The recall-vs-quantization report: every scheme, scanned exactly and through hnswlib, against
exact float32 search on the same queries, with bytes per memory per tier and LoCoMo quality.

``run_quantization_report(ReportSettings(), "reports/")`` from Python, or
``tiered-memory report quantization --out reports/`` from the shell.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tiered_memory.config import MemoryConfig
from tiered_memory.corpora import DatasetNotFoundError, exact_neighbors, load_locomo
from tiered_memory.encoders import Encoder, MiniLMEncoder
from tiered_memory.errors import ConfigError
from tiered_memory.quantization import SCHEMES, Quantizer, make_quantizer
from tiered_memory.reports import footprint, locomo_eval
from tiered_memory.reports.inputs import Inputs, load_inputs
from tiered_memory.reports.machine import describe_machine
from tiered_memory.reports.measure import (
    KS,
    MISSING,
    Rescore,
    flat_candidates,
    graph_candidates,
    one_blas_thread,
    recall_at,
    recalls,
    single_flat_search,
    single_graph_search,
    time_queries,
)
from tiered_memory.tiers.warm import Graph

# Least to most precise: rescoring only helps with originals more precise than the codes.
PRECISION = {"binary": 0, "int4": 1, "int8": 2, "float16": 3, "float32": 4}
_CALIBRATION_SAMPLE_MAX = 50_000  # as the engine (tiering/manager.py) samples before fitting int8 ranges
_FOOTPRINT_SAMPLE = 20_000
_DEFAULTS = MemoryConfig()


@dataclass(frozen=True)
class ReportSettings:
    """What to measure. Defaults: the full DailyDialog run (about 10 minutes on 2 cores)."""

    vectors: Path | None = None  # .npy of embeddings or .txt of texts; None: DailyDialog
    queries: Path | None = None  # .npy or .txt; None: hold out `query_count` rows of the input
    query_count: int = 1_000
    limit: int | None = None  # index at most this many rows (a seeded random subset)
    schemes: tuple[str, ...] = tuple(SCHEMES)
    ef_values: tuple[int, ...] = (16, 32, 64, 128, 256)
    rescore_originals: tuple[str, ...] = ("float16",)  # what the cold tier keeps (engine default: float16)
    oversample: tuple[int, ...] = (4, 10)  # candidates per result when rescoring (engine default: 4)
    latency_queries: int = 300  # timed one at a time; recall uses every query
    clip_quantiles: tuple[tuple[str, float], ...] = (("int8", _DEFAULTS.clip_quantile),)  # others: scheme default
    sweep_quantiles: tuple[float, ...] = (0.99, 0.995, 0.999, 0.9999, 1.0)
    hnsw_m: int = _DEFAULTS.hnsw_m
    ef_construction: int = _DEFAULTS.hnsw_ef_construction
    locomo: Path | str | None = "auto"  # "auto": when ../shared/datasets/locomo is found; None: skip
    locomo_conversations: int | None = None
    rss_sample: int = 16_384  # rows of the fresh-process RAM check of the warm graph; 0: skip
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [s for s in self.schemes if s not in SCHEMES]
        if unknown or not self.schemes:
            raise ConfigError(f"schemes must be some of {sorted(SCHEMES)}, got {list(self.schemes)}")
        for name in ("query_count", "latency_queries", "hnsw_m", "ef_construction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        for name in ("ef_values", "oversample"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ConfigError(f"{name} must be positive ints, got {values!r}")
        if any(o not in footprint.ORIGINAL_DTYPES for o in self.rescore_originals):
            raise ConfigError(f"rescore_originals must be float16 and/or float32, got {self.rescore_originals!r}")
        if any(not 0.5 < q <= 1.0 for q in self.sweep_quantiles) or \
                any(not 0.5 < q <= 1.0 for _, q in self.clip_quantiles):
            raise ConfigError("clip quantiles must be in (0.5, 1]")
        for name in ("limit", "locomo_conversations"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.rss_sample, bool) or not isinstance(self.rss_sample, int) or self.rss_sample < 0:
            raise ConfigError(f"rss_sample must be an int >= 0, got {self.rss_sample!r}")

    @classmethod
    def quick(cls, **changes: Any) -> ReportSettings:
        """A small run (seconds): 3,000 indexed rows, 100 queries, two ef values, one conversation."""
        small = {"limit": 3_000, "query_count": 100, "ef_values": (16, 64), "latency_queries": 30,
                 "sweep_quantiles": (0.999, 1.0), "locomo_conversations": 1, "rss_sample": 2_048}
        return cls(**{**small, **changes})

    def clip_for(self, scheme: str) -> float | None:
        return dict(self.clip_quantiles).get(scheme)

    def rescores_for(self, scheme: str) -> list[tuple[str, int]]:
        """(originals, oversample) pairs that can improve this scheme."""
        return [(originals, o) for originals in self.rescore_originals for o in self.oversample
                if PRECISION[originals] > PRECISION[scheme]]


@dataclass
class ReportResult:
    data: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Coded:
    quantizer: Quantizer
    codes: np.ndarray


class _Run:
    """One report run: state shared by its steps, and the numbers they produce."""

    def __init__(self, settings: ReportSettings, inputs: Inputs, bar: tqdm,
                 encoder: Callable[[], Encoder]) -> None:
        self.settings = settings
        self.inputs = inputs
        self.bar = bar
        self.encoder = encoder
        self.truth_scores = np.zeros((0, 0), dtype=np.float32)
        self.coded: dict[str, _Coded] = {}
        self.originals = {name: inputs.base.astype(dtype) for name, dtype in footprint.ORIGINAL_DTYPES.items()
                          if name in settings.rescore_originals}
        self.latency_sample = inputs.queries[: settings.latency_queries]
        base = inputs.base
        rng = np.random.default_rng(settings.seed)
        self.calibration_sample = base if len(base) <= _CALIBRATION_SAMPLE_MAX else \
            base[np.sort(rng.choice(len(base), _CALIBRATION_SAMPLE_MAX, replace=False))]
        self.data: dict[str, Any] = {"schemes": {}, "flat": [], "hnsw": [], "calibration": [], "footprint": {}}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent inside to this phase's total (data["phase_seconds"])."""
        started = time.perf_counter()
        try:
            yield
        finally:
            totals = self.data.setdefault("phase_seconds", {})
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started

    def step(self, label: str) -> None:
        self.bar.set_postfix_str(label, refresh=True)

    def done(self) -> None:
        self.bar.update(1)

    def rescore_variants(self, scheme: str) -> list[Rescore | None]:
        return [None, *(Rescore(o, n, self.originals[o]) for o, n in self.settings.rescores_for(scheme))]

    # -- steps ------------------------------------------------------------------------------

    def ground_truth(self) -> None:
        self.step("exact float32 ground truth")
        started = time.perf_counter()
        _, self.truth_scores = exact_neighbors(self.inputs.queries, self.inputs.base, max(KS))
        self.data["ground_truth_s"] = time.perf_counter() - started
        self.done()

    def encode(self, scheme: str) -> None:
        self.step(f"{scheme}: calibrate and encode")
        base = self.inputs.base
        quantizer = make_quantizer(scheme, base.shape[1], self.settings.clip_for(scheme))
        started = time.perf_counter()
        quantizer.fit(self.calibration_sample)
        fitted = time.perf_counter()
        codes = quantizer.encode(base)
        self.data["schemes"][scheme] = {
            "code_bytes": quantizer.code_bytes,
            "clip_quantile": getattr(quantizer, "clip_quantile", None),
            "clip_rate": quantizer.clip_rate(base),
            "fit_s": fitted - started,
            "encode_s": time.perf_counter() - fitted,
        }
        self.coded[scheme] = _Coded(quantizer, codes)
        self.done()

    def flat(self, scheme: str) -> None:
        coded = self.coded[scheme]
        queries, base = self.inputs.queries, self.inputs.base
        widest = max(KS) * max(self.settings.oversample)
        self.step(f"{scheme}: exact scan of codes")
        candidates = flat_candidates(coded.quantizer, queries, coded.codes, widest)
        for rescore in self.rescore_variants(scheme):
            self.step(f"{scheme}: exact scan, rescore {rescore.label if rescore else 'off'}")
            found = recalls(lambda fetch: candidates[:, :fetch], queries, base, self.truth_scores, rescore)
            latency = time_queries(single_flat_search(coded.quantizer, coded.codes, 10, rescore),
                                   self.latency_sample)
            self.data["flat"].append(_row(scheme, "exact scan", None, rescore, found, latency,
                                          coded.quantizer.code_bytes, coded.codes.nbytes, None))
            self.done()

    def hnsw(self, scheme: str) -> None:
        coded = self.coded[scheme]
        settings, base, queries = self.settings, self.inputs.base, self.inputs.queries
        self.step(f"{scheme}: build hnswlib graph")
        vectors = base if scheme == "float32" else np.ascontiguousarray(coded.quantizer.decode(coded.codes))
        graph = Graph("report", base.shape[1], settings.hnsw_m, settings.ef_construction, max(settings.ef_values))
        started = time.perf_counter()
        graph.put_many([str(i) for i in range(len(base))], vectors)  # labels 0..n-1 = row numbers
        build_s = time.perf_counter() - started
        nbytes = graph.nbytes()
        self.data["schemes"][scheme].update(graph_bytes=nbytes, graph_file_bytes=footprint.graph_file_bytes(graph),
                                            build_s=build_s, graph_capacity=graph.index.get_max_elements())
        self.done()
        index = graph.index
        cache: dict[int, np.ndarray] = {}

        def candidates_for(ef: int) -> Callable[[int], np.ndarray]:
            def fetch_top(fetch: int) -> np.ndarray:
                # hnswlib searches with max(ef, k) candidates and returns the best k of them, so the
                # best `fetch` at this ef are the first `fetch` of a k = max(ef, fetch) search.
                width = max(ef, fetch)
                if width not in cache:
                    index.set_ef(width)
                    cache[width] = graph_candidates(index, queries, width, os.cpu_count() or 1)
                return cache[width][:, :fetch]
            return fetch_top

        for ef in settings.ef_values:
            for rescore in self.rescore_variants(scheme):
                self.step(f"{scheme}: hnswlib ef={ef}, rescore {rescore.label if rescore else 'off'}")
                found = recalls(candidates_for(ef), queries, base, self.truth_scores, rescore)
                index.set_ef(ef)
                latency = time_queries(single_graph_search(index, 10, rescore), self.latency_sample)
                row = _row(scheme, "hnswlib", ef, rescore, found, latency, nbytes / len(base), nbytes, build_s)
                # queries hnswlib could not give 10 results (the engine scans codes exactly instead)
                row["unanswered@10"] = int((candidates_for(ef)(10 if rescore is None else 10 * rescore.oversample)
                                            == MISSING).any(axis=1).sum())
                self.data["hnsw"].append(row)
                self.done()

    def calibration(self, scheme: str) -> None:
        """Recall@10 of an exact scan (no rescoring) against the clip quantile of the ranges."""
        base, queries = self.inputs.base, self.inputs.queries
        for quantile in self.settings.sweep_quantiles:
            self.step(f"{scheme}: calibration sweep, quantile {quantile}")
            quantizer = make_quantizer(scheme, base.shape[1], quantile)
            quantizer.fit(self.calibration_sample)
            codes = quantizer.encode(base)
            found = flat_candidates(quantizer, queries, codes, 10)
            self.data["calibration"].append({
                "scheme": scheme, "clip_quantile": quantile, "clip_rate": quantizer.clip_rate(base),
                "recall@10": recall_at(found, queries, base, self.truth_scores, 10),
            })
            self.done()

    def footprint(self) -> None:
        self.step("bytes per memory (LMDB, hnswlib, RAM)")
        base, texts = self.inputs.base, self.inputs.texts
        count = min(len(base), _FOOTPRINT_SAMPLE)
        memories = footprint.sample_memories(texts, count)
        cold = footprint.cold_bytes({s: c.codes[:count] for s, c in self.coded.items()}, base[:count], memories,
                                    has_texts=texts is not None)
        probe_rows = 2 ** int(np.log2(min(len(base), self.settings.rss_sample))) if self.settings.rss_sample else 0
        self.step(f"RAM of a {probe_rows}-vector graph in a fresh process")
        self.data["footprint"] = {
            "sample": count,
            "cold_entry_bytes": cold,
            "hot_entry_bytes": footprint.hot_entry_bytes(memories, base.shape[1]),
            "rss_probe": footprint.probe_rss(base[:probe_rows], self.settings.hnsw_m) if probe_rows >= 64 else None,
        }
        self.done()

    def locomo(self, conversations: list[Any]) -> None:
        self.step("LoCoMo: load the bundled model")
        started = time.perf_counter()
        encoder = self.encoder()
        encoder.encode(["warm up"])  # loads the model, so that encode_s below is encoding alone
        load_s = time.perf_counter() - started
        self.step("LoCoMo: encode turns and questions")
        data, seconds = locomo_eval.encode_conversations(conversations, encoder, self.done)
        self.step("LoCoMo: exact scans per scheme")
        clip = {scheme: self.settings.clip_for(scheme) for scheme in self.settings.schemes}
        rows = locomo_eval.scheme_rows(data, self.settings.schemes, clip, self.settings.rescores_for)
        self.done()
        self.step("LoCoMo: TieredMemory end to end")
        rows += locomo_eval.engine_rows(data)
        self.done()
        reference = next((r["evidence_recall@10"] for r in rows if r["scheme"] == "float32"), None)
        for row in rows:
            row["relative_recall@10"] = row["evidence_recall@10"] / reference if reference else None
        self.data["locomo"] = {
            "conversations": [c.sample_id for c in data],
            "turns": sum(len(c.turn_ids) for c in data),
            "questions": sum(len(c.questions) for c in data),
            "model_load_s": load_s,
            "encode_s": seconds,
            "rows": rows,
        }


def _row(scheme: str, method: str, ef: int | None, rescore: Rescore | None, found: dict[int, float],
         latency: Any, ram_per_vector: float, index_bytes: int, build_s: float | None) -> dict[str, Any]:
    return {
        "scheme": scheme, "method": method, "ef": ef, "rescore": rescore.label if rescore else "off",
        **{f"recall@{k}": value for k, value in found.items()},
        "p50_us": latency.p50_us, "p99_us": latency.p99_us, "qps": latency.qps, "latency_queries": latency.queries,
        "ram_bytes_per_vector": ram_per_vector, "index_bytes": index_bytes, "build_s": build_s,
    }


def _relative(rows: list[dict[str, Any]]) -> None:
    """recall@10 of each row over float32's under the same search (method, ef), without rescoring."""
    reference = {(r["method"], r["ef"]): r["recall@10"] for r in rows if r["scheme"] == "float32"
                 and r["rescore"] == "off"}
    for row in rows:
        ref = reference.get((row["method"], row["ef"]))
        row["relative_recall@10"] = row["recall@10"] / ref if ref else None


def _find_locomo(settings: ReportSettings) -> tuple[list[Any] | None, str | None]:
    """The conversations to evaluate, or None and why not."""
    if settings.locomo is None:
        return None, "skipped (--no-locomo)"
    try:
        conversations = load_locomo(None if settings.locomo == "auto" else settings.locomo)
    except DatasetNotFoundError as err:
        if settings.locomo != "auto":
            raise
        return None, f"skipped: {err}"
    return conversations[: settings.locomo_conversations], None


def _total_steps(settings: ReportSettings, conversations: list[Any] | None) -> int:
    total = 2  # ground truth, footprint
    for scheme in settings.schemes:
        variants = 1 + len(settings.rescores_for(scheme))
        total += 1 + variants + 1 + len(settings.ef_values) * variants
        if scheme in ("int8", "int4"):
            total += len(settings.sweep_quantiles)
    if conversations:
        total += len(conversations) + 2
    return total


def run_quantization_report(settings: ReportSettings, out_dir: str | os.PathLike[str], *, command: str | None = None,
                            progress: bool = True, encoder: Callable[[], Encoder] = MiniLMEncoder) -> ReportResult:
    """Measure everything `settings` asks for, write the Markdown, JSON and PNG files into
    `out_dir`, and return the numbers with the paths written."""
    from tiered_memory.reports.plots import pyplot
    from tiered_memory.reports.render import write_report

    pyplot()  # matplotlib is an optional extra: fail before minutes of measuring, not after
    started = time.perf_counter()
    load_started = time.perf_counter()
    machine = describe_machine(command or "tiered_memory.reports.run_quantization_report(...)")
    inputs = load_inputs(settings.vectors, settings.queries, settings.query_count, settings.limit, settings.seed,
                         encoder)
    conversations, locomo_skipped = _find_locomo(settings)
    load_s = time.perf_counter() - load_started
    with tqdm(total=_total_steps(settings, conversations), desc="quantization report", unit="step",
              disable=not progress, dynamic_ncols=True) as bar:
        run = _Run(settings, inputs, bar, encoder)
        run.data["phase_seconds"] = {"read inputs": load_s}
        with run.phase("ground truth"):
            run.ground_truth()
        for scheme in settings.schemes:
            with run.phase("calibrate and encode"):
                run.encode(scheme)
            with run.phase("exact scans"):
                run.flat(scheme)
            with run.phase("hnswlib builds and searches"):
                run.hnsw(scheme)
        for scheme in settings.schemes:
            if scheme in ("int8", "int4"):
                with run.phase("calibration sweep"):
                    run.calibration(scheme)
        with run.phase("bytes per memory"):
            run.footprint()
        if conversations:
            with run.phase("LoCoMo"):
                run.locomo(conversations)
    with one_blas_thread() as blas_pinned:
        pass
    _relative(run.data["flat"])
    _relative(run.data["hnsw"])
    data = {
        "title": "Recall vs quantization",
        "machine": machine,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "input": inputs.description,
        "blas_one_thread_for_latency": blas_pinned,
        "hnsw_settings": {"m": settings.hnsw_m, "ef_construction": settings.ef_construction,
                          "build_threads": os.cpu_count()},
        **run.data,
        "duration_s": time.perf_counter() - started,
    }
    if conversations is None:
        data["locomo"] = {"skipped": locomo_skipped}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return ReportResult(data, write_report(data, out))

