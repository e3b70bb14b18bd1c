"""Replay real conversations with topic prefetch off (plain LRU) and on, in one run, on copies of one store.

What it measures, per trace and mode: the share of search results served from the hot tier,
search latency (p50/p90/p99/max of ``Conversation.recall``, warm-up discarded), prefetch
precision (prefetched memories that a later search returned) and the work prefetch cost
(worker jobs, memories moved, worker wall and CPU seconds); plus the agreement of the store's
learned topics with DailyDialog's labels (NMI) and whether prefetch changed what searches find.

Traces (see datasets/README.md, "Conversation traces"): DailyDialog (live sessions of same-label
dialogues over a memory of ~60k other utterances, precomputed MiniLM vectors) and LoCoMo
(5 conversations replayed from an empty memory, session by session; needs the bundled model to
embed 3.5k texts once).

    .venv/bin/python benchmarks/prefetch_replay.py            # full run, writes benchmarks/results/prefetch/
    .venv/bin/python benchmarks/prefetch_replay.py --quick    # small DailyDialog subset, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory import Conversation, Hit, MemoryConfig, PrefetchConfig, TieredMemory, __version__
from tiered_memory.conversation.prefetch import PrefetchWorker
from tiered_memory.corpora import DatasetNotFoundError, load_dailydialog, load_locomo
from tiered_memory.tiering.topics import TopicModel, topics_for
from tiered_memory.traces import Trace, dailydialog_trace, locomo_trace

K = 10  # results per search


class ReplayClock:
    """The store's clock during a replay: the timestamp of the turn being replayed."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Search:
    kind: str  # "turn" (recall after a user message) or "question"
    seconds: float
    tiers: list[str]
    keys: list[str]  # text + creation time of each result: comparable across store copies
    ids: list[str]


@dataclass
class RunResult:
    trace: str
    mode: str
    searches: list[Search] = field(default_factory=list)
    prefetched: dict[str, int] = field(default_factory=dict)  # id -> search count when last moved up
    prefetched_to: dict[str, str] = field(default_factory=dict)  # id -> "hot" | "warm"
    worker: dict[str, Any] = field(default_factory=dict)
    store: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    evidence: list[tuple[int, int]] = field(default_factory=list)  # (evidence found, evidence turns) per question
    think_time_exceeded: int = 0


# -- building -----------------------------------------------------------------------------------


def build_store(trace: Trace, path: Path, config: MemoryConfig) -> dict[str, Any]:
    """The store every mode starts from: the trace's initial memories, then one maintain()."""
    started = time.perf_counter()
    clock = ReplayClock(trace.turns[0].timestamp)
    mem = TieredMemory(path, config=config, encoder=None, dimension=int(trace.vectors.shape[1]), clock=clock)
    try:
        by_namespace: dict[str, list[int]] = {}
        for i, namespace in enumerate(trace.memory_namespaces):
            by_namespace.setdefault(namespace, []).append(i)
        for namespace, rows in by_namespace.items():
            for start in range(0, len(rows), 5_000):
                chunk = rows[start:start + 5_000]
                mem.add_many([trace.memory_texts[i] for i in chunk], namespace=namespace, kind="conversation",
                             dedup=False,
                             created_at=[float(trace.memory_created[i]) for i in chunk],
                             metadata=[{"source": trace.memory_sources[i]} for i in chunk],
                             vectors=np.asarray(trace.vectors[trace.memory_rows[chunk]]))
        report = mem.maintain()
        stats = mem.stats()
        return {"memories": len(mem), "seconds": round(time.perf_counter() - started, 1),
                "topics_fitted": report.topics_fitted,
                "topics": {ns: len(model) for ns, model in mem.topics.items()},
                "tiers_after_maintain": {"hot": stats.hot.count, "warm": stats.warm.count, "cold": stats.cold.count}}
    finally:
        mem.close()


# -- replaying ----------------------------------------------------------------------------------


MODES = {
    "lru": "prefetch off: the hot tier is a plain LRU of what searches returned",
    "prefetch": "topic prefetch on (PrefetchConfig as given)",
    "prefetch-decay": "ablation: prefetch ranking the nearest topics' memories by decayed importance alone",
}


def replay(trace: Trace, base: Path, work: Path, mode: str, config: MemoryConfig, prefetch: PrefetchConfig,
           max_tokens: int, think_time_s: float) -> RunResult:
    """Replay every session of the trace on a fresh copy of the base store, in one of MODES."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(base, work)
    result = RunResult(trace.name, mode)
    clock = ReplayClock(trace.turns[0].timestamp)
    embed = trace.embedder()
    questions_after: dict[int, list[int]] = {}
    for q, question in enumerate(trace.questions):
        questions_after.setdefault(question.after_turn, []).append(q)
    on = mode != "lru"
    if mode == "prefetch-decay":
        prefetch = replace(prefetch, relevance_weight=0.0)

    def promoted(namespace: str, hot: list[str], warm: list[str]) -> None:
        for ids, tier in ((hot, "hot"), (warm, "warm")):
            for memory_id in ids:
                result.prefetched[memory_id] = len(result.searches)
                result.prefetched_to[memory_id] = tier

    started = time.perf_counter()
    mem = TieredMemory(work, config=config, encoder=None, dimension=int(trace.vectors.shape[1]), clock=clock)
    worker = None
    try:
        for session in trace.sessions():
            first = trace.turns[session[0]]
            conv = mem.conversation(first.namespace, max_tokens=max_tokens, embed=embed,
                                    prefetch=prefetch if on else False, embed_ahead=on)
            worker = conv.worker
            if worker is not None:
                worker.on_promoted = promoted
            for i in session:
                turn = trace.turns[i]
                clock.now = turn.timestamp
                if turn.role == "user" and not _settle(mem, worker, think_time_s):
                    result.think_time_exceeded += 1  # the other party spoke before background work was done
                conv.add_message(turn.role, turn.text, timestamp=turn.timestamp, metadata={"source": turn.source})
                if turn.recall:
                    result.searches.append(_timed(conv, None, "turn")[0])
                for q in questions_after.get(i, []):
                    question = trace.questions[q]
                    search, hits = _timed(conv, question.text, "question")
                    result.searches.append(search)
                    sources = {hit.memory.metadata.get("source") for hit in hits}
                    result.evidence.append((sum(1 for e in question.evidence if e in sources), len(question.evidence)))
            _settle(mem, worker, think_time_s)
            conv.close()
        if worker is not None:
            result.worker = asdict(worker.stats)
        stats = mem.stats()
        result.store = {"hits": {t: getattr(stats, t).hits for t in ("hot", "warm", "cold")},
                        "promotions": stats.promotions, "demotions": stats.demotions,
                        "tiers_at_end": {t: getattr(stats, t).count for t in ("hot", "warm", "cold")},
                        "memories_at_end": stats.memories}
    finally:
        mem.close()
        result.wall_s = time.perf_counter() - started
        shutil.rmtree(work, ignore_errors=True)
    return result


def _settle(mem: TieredMemory, worker: PrefetchWorker | None, timeout: float) -> bool:
    """The pause before the other party speaks: background work (the prefetch worker, and the
    store's own promotion thread where it has one) may finish in it, in every mode alike."""
    deadline = time.perf_counter() + timeout
    done = worker.wait_idle(timeout) if worker is not None else True
    return mem.wait_idle(max(deadline - time.perf_counter(), 0.0)) and done


def _timed(conv: Conversation, query: str | None, kind: str) -> tuple[Search, list[Hit]]:
    started = time.perf_counter()
    hits = conv.recall(query, k=K)
    seconds = time.perf_counter() - started
    return Search(kind, seconds, [hit.tier.value for hit in hits],
                  [f"{hit.memory.created_at:.0f}|{hit.memory.text}" for hit in hits],
                  [hit.memory.id for hit in hits]), hits


# -- measuring ----------------------------------------------------------------------------------


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    values = np.asarray(seconds) * 1e3
    return {"p50": round(float(np.percentile(values, 50)), 3), "p90": round(float(np.percentile(values, 90)), 3),
            "p99": round(float(np.percentile(values, 99)), 3), "max": round(float(values.max()), 3),
            "n": int(len(values))}


def summarize(run: RunResult, warmup: int) -> dict[str, Any]:
    """Hot share, latency, prefetch precision and cost of one run (the first `warmup` searches left out)."""
    kept = run.searches[warmup:]
    tiers = [tier for search in kept for tier in search.tiers]
    share = {t: round(tiers.count(t) / max(len(tiers), 1), 4) for t in ("hot", "warm", "cold")}
    latency = {"all": percentiles_ms([s.seconds for s in kept])}
    for kind in sorted({s.kind for s in kept}):
        latency[kind] = percentiles_ms([s.seconds for s in kept if s.kind == kind])
    summary: dict[str, Any] = {"mode": run.mode, "searches": len(run.searches), "warmup_discarded": warmup,
                               "results": len(tiers), "tier_share": share, "hot_share": share["hot"],
                               "latency_ms": latency, "wall_s": round(run.wall_s, 1), "store": run.store}
    if run.evidence:
        found = sum(f for f, _ in run.evidence)
        total = sum(t for _, t in run.evidence)
        summary["questions"] = {"n": len(run.evidence), f"evidence_recall@{K}": round(found / total, 4),
                                f"hit@{K}": round(sum(1 for f, _ in run.evidence if f) / len(run.evidence), 4)}
    if run.mode != "lru":
        summary["prefetch"] = _precision(run)
        worker = run.worker
        messages = max(worker.get("submitted", 0), 1)
        summary["work"] = {**{key: worker[key] for key in ("submitted", "messages", "prefetches", "promoted_hot",
                                                            "promoted_warm", "skipped_stale", "dropped_full",
                                                            "errors")},
                           "worker_busy_s": round(worker["busy_s"], 3), "worker_cpu_s": round(worker["cpu_s"], 3),
                           "busy_ms_per_message": round(1e3 * worker["busy_s"] / messages, 3),
                           "think_time_exceeded": run.think_time_exceeded}
    return summary


def _precision(run: RunResult) -> dict[str, Any]:
    """Prefetched memories that a search returned after they were moved up (any tier serving it)."""
    first_use: dict[str, int] = {}
    hot_hits_on_prefetched = 0
    for j, search in enumerate(run.searches):
        for memory_id, tier in zip(search.ids, search.tiers):
            moved = run.prefetched.get(memory_id)
            if moved is not None and moved <= j:
                first_use.setdefault(memory_id, j)
                hot_hits_on_prefetched += tier == "hot"
    out: dict[str, Any] = {"prefetched": len(run.prefetched)}
    for tier in ("hot", "warm"):
        ids = [i for i, t in run.prefetched_to.items() if t == tier]
        used = sum(1 for i in ids if i in first_use)
        out[f"prefetched_to_{tier}"] = len(ids)
        out[f"precision_{tier}"] = round(used / len(ids), 4) if ids else None
    out["precision"] = round(len(first_use) / len(run.prefetched), 4) if run.prefetched else None
    total_hot = sum(search.tiers.count("hot") for search in run.searches)
    out["hot_hits_on_prefetched"] = hot_hits_on_prefetched
    out["share_of_hot_hits_on_prefetched"] = round(hot_hits_on_prefetched / total_hot, 4) if total_hot else None
    return out


def agreement(a: RunResult, b: RunResult) -> float:
    """Mean share of one run's results that the other run returned for the same search."""
    shares = [len(set(x.keys) & set(y.keys)) / max(len(x.keys), 1) for x, y in zip(a.searches, b.searches)]
    return round(float(np.mean(shares)), 4) if shares else 1.0


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized mutual information (arithmetic mean of the entropies, as scikit-learn's default)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
    entropy = (-(pa[pa > 0] * np.log(pa[pa > 0])).sum() - (pb[pb > 0] * np.log(pb[pb > 0])).sum()) / 2
    return mutual / entropy if entropy > 0 else 1.0


def topic_quality(trace: Trace, base: Path, ks: list[int]) -> dict[str, Any]:
    """NMI of topics with DailyDialog's labels: the store's own model, and fresh fits for other k."""
    vectors = np.asarray(trace.vectors[trace.memory_rows], dtype=np.float32)
    labels = trace.memory_labels
    dialogues = np.asarray([int(source.split(":")[1]) for source in trace.memory_sources])
    _, dialogue_index = np.unique(dialogues, return_inverse=True)
    means = np.zeros((dialogue_index.max() + 1, vectors.shape[1]), dtype=np.float64)
    np.add.at(means, dialogue_index, vectors)
    means = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)
    dialogue_labels = np.zeros(len(means), dtype=np.int64)
    dialogue_labels[dialogue_index] = labels
    mem = TieredMemory(base, encoder=None, dimension=vectors.shape[1], read_only=True)
    try:
        mem.preload(trace.memory_namespaces[0])  # namespaces (and their topic models) load on use
        models = {"engine": mem.topics[trace.memory_namespaces[0]]}
    finally:
        mem.close()
    for k in ks:
        models[f"k={k}"] = TopicModel.fit(vectors, k)
    out = {}
    for name, model in models.items():
        per_memory, _ = model.assign(vectors)
        per_dialogue, _ = model.assign(means)
        out[name] = {"topics": len(model), "nmi_utterances": round(nmi(labels, per_memory), 4),
                     "nmi_dialogues": round(nmi(dialogue_labels, per_dialogue), 4)}
    return out


# -- reporting ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "hnswlib": version("hnswlib"), "tiered_memory": __version__,
            "platform": platform.platform()}


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Topic prefetch: replayed conversations, prefetch off (plain LRU) vs on", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']['cpu']}, "
             f"{report['machine']['cores']} cores, Python {report['machine']['python']}  ",
             f"Date: {report['date']}", "",
             "Method: each trace is replayed on fresh copies of one store, once per mode, in the order "
             f"{report['order']} (so drift on the machine hits both modes). Per message: the other party's "
             "message is added to the conversation (what leaves its window is archived as memories), the agent "
             f"recalls k={report['k']} memories for it (timed: `Conversation.recall`), then the agent's reply is "
             "added. Before each user message, background work (prefetch worker, engine promotions) gets up to "
             f"{report['think_time_s']} s, standing in for the time a person takes to answer. Hot share = search "
             "results served from the hot tier / all results. Prefetch precision = prefetched memories that a "
             f"later search returned / memories prefetched. The first {report['warmup']} searches of each run are "
             "left out. Modes: " + "; ".join(f"`{m}`: {what}" for m, what in MODES.items()) + ".", ""]
    for trace in report["traces"]:
        lines += [f"## {trace['name']}", "", f"Trace `{trace['trace']}` (digest `{trace['digest']}`): "
                  f"{trace['memories']} initial memories, {trace['turns']} messages in {trace['sessions']} sessions, "
                  f"{trace['questions']} questions. Store: {trace['config']}. Prefetch: {trace['prefetch']}. "
                  f"Build: {trace['build']}.", ""]
        lines += ["| mode | searches | hot share | warm | cold | p50 ms | p90 ms | p99 ms | max ms |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for run in trace["runs"]:
            share, lat = run["tier_share"], run["latency_ms"]["all"]
            lines.append(f"| {run['mode']} | {run['searches']} | {share['hot']:.3f} | {share['warm']:.3f} | "
                         f"{share['cold']:.3f} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['max']} |")
        comparison = trace["comparison"]
        lines += ["", f"Hot share with prefetch / plain LRU: **{comparison['hot_share_ratio']}x** "
                  f"(target >= 2x: {'met' if comparison['hot_share_target_met'] else 'NOT met'}). "
                  f"p50 search latency with prefetch / plain LRU: **{comparison['p50_ratio']}** "
                  f"(target < 1: {'met' if comparison['p50_target_met'] else 'NOT met'}). "
                  f"Results agreement between the modes: {comparison['agreement']}."
                  + (f" Ablation, prefetch by decayed importance alone: {comparison['hot_share_ratio_decay_only']}x "
                     "the hot share of plain LRU." if "hot_share_ratio_decay_only" in comparison else ""), ""]
        for run in trace["runs"]:
            if "prefetch" in run:
                p, w = run["prefetch"], run["work"]
                lines += [f"Prefetch ({run['mode']}): precision {p['precision']} overall "
                          f"(hot {p['precision_hot']}, warm {p['precision_warm']}) over {p['prefetched']} memories "
                          f"moved up; {p['share_of_hot_hits_on_prefetched']} of hot hits were prefetched memories. "
                          f"Work: {w['prefetches']} prefetches, {w['promoted_hot']} memories to hot, "
                          f"{w['promoted_warm']} to warm, worker busy {w['worker_busy_s']} s "
                          f"({w['busy_ms_per_message']} ms per message, CPU {w['worker_cpu_s']} s), "
                          f"{w['skipped_stale']} stale skipped, {w['dropped_full']} dropped, "
                          f"{w['think_time_exceeded']} waits over the think time.", ""]
            if "questions" in run:
                lines += [f"Questions ({run['mode']}): {run['questions']}", ""]
        if trace.get("topic_quality"):
            lines += ["Topic agreement with DailyDialog's 10 labels (NMI; utterances, and dialogues by their mean "
                      "vector):", "", "| model | topics | NMI utterances | NMI dialogues |", "|---|---|---|---|"]
            for name, quality in trace["topic_quality"].items():
                lines.append(f"| {name} | {quality['topics']} | {quality['nmi_utterances']} | "
                             f"{quality['nmi_dialogues']} |")
            lines.append("")
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------


def run_trace(name: str, trace: Trace, config: MemoryConfig, prefetch: PrefetchConfig, args: argparse.Namespace,
              scratch: Path, topic_ks: list[int]) -> dict[str, Any]:
    base = scratch / f"{name}-base"
    build = build_store(trace, base, config) if trace.memory_texts else _empty_store(base, trace, config)
    print(f"[{name}] trace {trace.digest()}: {len(trace.memory_texts)} memories, {len(trace.turns)} messages; "
          f"store built in {build['seconds']} s", flush=True)
    order = ["lru", "prefetch"] if args.repeats == 1 else ["lru", "prefetch", "prefetch", "lru"]
    if args.ablation:
        order.append("prefetch-decay")
    runs: dict[str, list[RunResult]] = {mode: [] for mode in MODES}
    for mode in order:
        run = replay(trace, base, scratch / f"{name}-{mode}", mode, config, prefetch, args.max_tokens,
                     args.think_time)
        runs[mode].append(run)
        print(f"[{name}] {mode}: {len(run.searches)} searches in {run.wall_s:.1f} s", flush=True)
    summaries = [summarize(run, args.warmup) for mode in MODES for run in runs[mode]]

    def mean(mode: str, key: str) -> float:
        values = [s["hot_share"] if key == "hot_share" else s["latency_ms"]["all"]["p50"]
                  for s in summaries if s["mode"] == mode]
        return float(np.mean(values)) if values else float("nan")

    lru_share, pre_share = mean("lru", "hot_share"), mean("prefetch", "hot_share")
    lru_p50, pre_p50 = mean("lru", "p50"), mean("prefetch", "p50")
    ratio = pre_share / lru_share if lru_share > 0 else float("inf")
    comparison = {"hot_share_lru": round(lru_share, 4), "hot_share_prefetch": round(pre_share, 4),
                  "hot_share_ratio": round(ratio, 2), "hot_share_target_met": bool(ratio >= 2.0),
                  "p50_ms_lru": round(lru_p50, 3), "p50_ms_prefetch": round(pre_p50, 3),
                  "p50_ratio": round(pre_p50 / lru_p50, 3), "p50_target_met": bool(pre_p50 < lru_p50),
                  "agreement": agreement(runs["lru"][0], runs["prefetch"][0])}
    if runs["prefetch-decay"]:
        decay_share = mean("prefetch-decay", "hot_share")
        comparison["hot_share_ratio_decay_only"] = round(decay_share / lru_share, 2) if lru_share > 0 else None
    quality = topic_quality(trace, base, topic_ks) if topic_ks else {}
    shutil.rmtree(base, ignore_errors=True)
    return {"name": name, "trace": trace.name, "digest": trace.digest(), "memories": len(trace.memory_texts),
            "turns": len(trace.turns), "sessions": len(trace.sessions()), "questions": len(trace.questions),
            "trace_notes": trace.notes, "config": _config_text(config), "prefetch": asdict(prefetch),
            "build": build, "runs": summaries, "comparison": comparison, "topic_quality": quality}


def _empty_store(base: Path, trace: Trace, config: MemoryConfig) -> dict[str, Any]:
    TieredMemory(base, config=config, encoder=None, dimension=int(trace.vectors.shape[1])).close()
    return {"memories": 0, "seconds": 0.0}


def _config_text(config: MemoryConfig) -> str:
    default = MemoryConfig()
    changed = {f: getattr(config, f) for f in ("hot_capacity", "warm_capacity", "durability", "half_life_s",
                                                "topic_min_memories", "topics_per_namespace")
               if getattr(config, f) != getattr(default, f) or f in ("hot_capacity", "warm_capacity")}
    return ", ".join(f"{k}={v}" for k, v in changed.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small DailyDialog subset only (seconds)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prefetch"))
    parser.add_argument("--sessions", type=int, default=80, help="DailyDialog live sessions")
    parser.add_argument("--per-session", type=int, default=4, help="DailyDialog dialogues per session")
    parser.add_argument("--memories", type=int, default=None, help="cap on DailyDialog initial memories")
    parser.add_argument("--history-days", type=float, default=365.0,
                        help="the initial memories are dated over this many days before the first session")
    parser.add_argument("--hot-capacity", type=int, default=2_000)
    parser.add_argument("--warm-capacity", type=int, default=MemoryConfig().warm_capacity)
    parser.add_argument("--locomo", action=argparse.BooleanOptionalAction, default=True,
                        help="also replay LoCoMo (embeds 3.5k texts with the bundled model)")
    parser.add_argument("--locomo-hot-capacity", type=int, default=256)
    parser.add_argument("--locomo-warm-capacity", type=int, default=MemoryConfig().warm_capacity)
    parser.add_argument("--max-tokens", type=int, default=512, help="conversation window")
    parser.add_argument("--think-time", type=float, default=2.0,
                        help="longest wait for the worker before the next user message (s)")
    parser.add_argument("--repeats", type=int, default=2, choices=(1, 2),
                        help="2 (default): run lru, prefetch, prefetch, lru, so drift hits both modes alike")
    parser.add_argument("--ablation", action="store_true",
                        help="also run prefetch ranked by decayed importance alone (relevance_weight=0)")
    parser.add_argument("--warmup", type=int, default=50, help="searches left out of the statistics")
    parser.add_argument("--topics", type=int, default=PrefetchConfig.topics)
    parser.add_argument("--prefetch-hot", type=int, default=PrefetchConfig.hot)
    parser.add_argument("--prefetch-warm", type=int, default=PrefetchConfig.warm)
    parser.add_argument("--decay", type=float, default=PrefetchConfig.decay)
    parser.add_argument("--seed", type=int, default=0)
    if parser.parse_known_args(argv)[0].quick:  # quick mode changes defaults; explicit options still win
        parser.set_defaults(sessions=6, memories=3_000, locomo=False, warmup=10, repeats=1, hot_capacity=300)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefetch = PrefetchConfig(topics=args.topics, hot=args.prefetch_hot, warm=args.prefetch_warm, decay=args.decay)
    command = "benchmarks/prefetch_replay.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "machine": machine(), "k": K, "think_time_s": args.think_time, "warmup": args.warmup,
                              "order": "lru, prefetch" if args.repeats == 1 else "lru, prefetch, prefetch, lru",
                              "traces": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prefetch-replay-") as scratch_dir:
        scratch = Path(scratch_dir)
        try:
            dailydialog = load_dailydialog()
        except DatasetNotFoundError as err:
            print(f"DailyDialog missing: {err}", file=sys.stderr)
            return 2
        trace = dailydialog_trace(dailydialog, sessions=args.sessions, dialogues_per_session=args.per_session,
                                  memories=args.memories, history_days=args.history_days, seed=args.seed)
        config = MemoryConfig(hot_capacity=args.hot_capacity, warm_capacity=args.warm_capacity, durability="async")
        n = len(trace.memory_texts)
        ks = [k for k in (10, 25, 50, 100) if k < topics_for(n, 0)]
        report["traces"].append(run_trace("dailydialog", trace, config, prefetch, args, scratch, ks))
        if args.locomo:
            from tiered_memory import MiniLMEncoder

            encoder = MiniLMEncoder()
            trace = locomo_trace(load_locomo(), encoder.encode)
            config = MemoryConfig(hot_capacity=args.locomo_hot_capacity, warm_capacity=args.locomo_warm_capacity,
                                  durability="async")
            report["traces"].append(run_trace("locomo", trace, config, prefetch, args, scratch, []))
    report["wall_s"] = round(time.perf_counter() - started, 1)
    stem = "quick" if args.quick else "prefetch_replay"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    for trace in report["traces"]:
        print(f"{trace['name']}: {json.dumps(trace['comparison'])}")
    print(f"wrote {out / stem}.json and .md in {report['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
