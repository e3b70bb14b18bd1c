"""Returning users: does loading a user's namespace when their conversation starts pay?

A store of N users (namespaces of 100-300 memories each, DailyDialog MiniLM vectors plus noise,
vectors given, no encoder) with a warm budget small enough that idle users are unloaded. A replay
of sessions: users come back with Zipf-distributed activity (the k-th most active user's share
is proportional to k^-s); each session starts a conversation (`mem.conversation(user)`), adds the
user's first message, then the agent embeds it (a sleep of 10-20 ms standing in for MiniLM, which
takes 8-20 ms here and, like a sleep, releases the GIL) and recalls; then a few more turns of
message, embedding, recall. Sessions alternate between prefetch on (the conversation's start has
the prefetch worker load the namespace) and prefetch off (the first search loads it), one after
the other in the same run, so both arms see the same store, the same budget and the same machine.
With ``--embed minilm`` the embedding is the real all-MiniLM-L6-v2 encoding a DailyDialog utterance
(its duration and its CPU, on the caller's thread, competing with the worker's load); the vector
searched is still a user's memory plus noise, so that the recall finds that user's memories.

Per recall we time the search only: from the end of the query's embedding to the recall's return
(what the user waits for beyond the embedding either way), and note whether the namespace was
loaded when the search started (served without a disk read for the namespace's rows). Reported
per arm, for first recalls and for all recalls: p50, p90, p99, max and that share; plus the
store's load latency and unloads.

    python benchmarks/returning_users.py --out benchmarks/results/returning-users
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
from pathlib import Path
from typing import Any

import numpy as np

ARMS = ("prefetch on", "prefetch off")


def build(path: Path, sizes: np.ndarray, vectors: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """Store user u's sizes[u] memories (rows spans[u] of `vectors`); returns (seconds, spans)."""
    from tiered_memory import TieredMemory

    spans = []
    started = time.perf_counter()
    with TieredMemory(path, encoder=None, dimension=vectors.shape[1], durability="async") as mem:
        start = 0
        for user, size in enumerate(sizes.tolist()):
            mem.add_many([f"user {user} memory {i}" for i in range(size)], namespace=f"user{user}",
                         vectors=vectors[start:start + size])
            spans.append((start, start + size))
            start += size
        mem.wait_idle()
    return time.perf_counter() - started, spans


def summary(samples: list[float], served: list[bool]) -> dict[str, float]:
    ms = np.asarray(samples) * 1e3
    if not len(ms):
        return {"n": 0}
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "mean_ms": float(ms.mean()),
            "served_loaded": float(np.mean(served))}


def replay(mem: Any, spans: list[tuple[int, int]], vectors: np.ndarray, args: argparse.Namespace,
           rng: np.random.Generator, model: Any = None, texts: list[str] | None = None) -> dict[str, Any]:
    """Run the sessions; returns per-arm samples (the first args.warmup sessions are not kept)."""
    users = len(spans)
    weights = 1.0 / np.arange(1, users + 1) ** args.zipf_s
    ranked = rng.permutation(users)  # activity rank -> user, so the busiest users are spread over the store
    session_users = ranked[rng.choice(users, size=args.warmup + args.sessions, p=weights / weights.sum())]
    out: dict[str, Any] = {arm: {"first": [], "first_loaded": [], "first_unload": [], "all": [], "all_loaded": []}
                           for arm in ARMS}
    worker = None
    embedded: list[float] = []  # every query embedding's duration
    for i, user in enumerate(session_users.tolist()):
        arm = ARMS[i % 2]
        namespace = f"user{user}"
        lo, hi = spans[user]
        turn: dict[str, Any] = {}

        def embed(text: str, lo: int = lo, hi: int = hi, namespace: str = namespace, turn: dict = turn) -> np.ndarray:
            began = time.perf_counter()
            if model is None:
                time.sleep(rng.uniform(args.gap_ms[0], args.gap_ms[1]) / 1e3)  # the query embedding
            else:
                model.encode([texts[rng.integers(len(texts))]])
            turn["loaded"] = namespace in mem.registry
            turn["unloads"] = mem.registry.unloads
            turn["ready"] = time.perf_counter()
            embedded.append(turn["ready"] - began)
            row = vectors[rng.integers(lo, hi)]
            query = row + 0.05 / np.sqrt(len(row)) * rng.standard_normal(len(row), dtype=np.float32)
            return query / np.linalg.norm(query)

        conv = mem.conversation(namespace, embed=embed, prefetch=arm == "prefetch on", archive_on_close=False)
        worker = conv.worker
        for t in range(1 + args.more_recalls):
            conv.add_message("user", f"session {i} turn {t}")
            conv.recall(k=10)
            took = time.perf_counter() - turn["ready"]
            unloaded = mem.registry.unloads != turn["unloads"]  # the maintenance thread unloaded meanwhile
            if i >= args.warmup:
                record = out[arm]
                if t == 0:
                    record["first"].append(took)
                    record["first_loaded"].append(turn["loaded"])
                    record["first_unload"].append(unloaded)
                record["all"].append(took)
                record["all_loaded"].append(turn["loaded"])
        conv.close()
        if i == args.warmup - 1:
            out["stats_after_warmup"] = mem.stats().loaded
    out["worker"] = None if worker is None else vars(worker.stats).copy()
    out["embedding_ms"] = {f"p{q}": float(np.percentile(embedded, q) * 1e3) for q in (1, 50, 99)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--min-memories", type=int, default=100)
    parser.add_argument("--max-memories", type=int, default=300)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--warm-budget-mib", type=float, default=8.0,
                        help="warm_budget_bytes in MiB (default 8: about 40 of the 2,000 users loaded)")
    parser.add_argument("--sessions", type=int, default=3_000, help="measured sessions (both arms together)")
    parser.add_argument("--warmup", type=int, default=300, help="sessions run first and not measured")
    parser.add_argument("--more-recalls", type=int, default=3, help="recalls after the first in a session")
    parser.add_argument("--gap-ms", type=float, nargs=2, default=(10.0, 20.0),
                        help="the query embedding's duration, uniform in this range (ms)")
    parser.add_argument("--embed", choices=("sleep", "minilm"), default="sleep",
                        help="the query embedding: a sleep of --gap-ms, or the real all-MiniLM-L6-v2 (offline)")
    parser.add_argument("--durability", choices=("sync", "async"), default="sync",
                        help="durability of the replayed store (default sync, the engine's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/returning-users"))
    parser.add_argument("--name", default=None, help="result file name (default returning-users)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the store is built; kept, and reused by a later run with the same users and seed")
    args = parser.parse_args(argv)
    from tiered_memory import TieredMemory
    from tiered_memory.corpora import load_dailydialog, scaled_vectors

    rng = np.random.default_rng(args.seed)
    sizes = rng.integers(args.min_memories, args.max_memories + 1, size=args.users)
    dailydialog = load_dailydialog()
    base = dailydialog.embeddings()
    # Real DailyDialog vectors plus a little noise; a user's memories are consecutive utterances.
    vectors = scaled_vectors(base, int(sizes.sum()), seed=args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="returning-users-"))
    started = time.perf_counter()
    load_avg_start = os.getloadavg()
    try:
        work.mkdir(parents=True, exist_ok=True)
        path = work / f"store-{args.users}-{args.seed}"
        marker = work / f"store-{args.users}-{args.seed}.built"
        if args.workdir is not None and marker.is_file():  # a store this script built: reuse it
            build_s = float(marker.read_text())
            edges = np.concatenate([[0], np.cumsum(sizes)]).tolist()
            spans = list(zip(edges[:-1], edges[1:]))
        else:
            build_s, spans = build(path, sizes, vectors)
            marker.write_text(f"{build_s}")
        print(f"built {int(sizes.sum()):,} memories over {args.users:,} users in {build_s:.0f} s", flush=True)
        budget = int(args.warm_budget_mib * 2**20)
        mem = TieredMemory(path, encoder=None, dimension=vectors.shape[1], warm_budget_bytes=budget,
                           durability=args.durability)
        try:
            assert len(mem.registry) == 0  # reopened: nothing loaded
            model = None
            if args.embed == "minilm":
                from tiered_memory.encoders import MiniLMEncoder

                model = MiniLMEncoder()
                model.encode(["warm-up"])  # the model's load is not a query's embedding
            raw = replay(mem, spans, vectors, args, rng, model, dailydialog.utterances)
            mem.wait_idle()
            final = mem.stats().loaded
        finally:
            mem.close()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    results: dict[str, Any] = {
        "command": "python benchmarks/returning_users.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_start": load_avg_start, "load_avg_end": os.getloadavg()},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                     if k not in ("out", "workdir")},
        "memories": int(sizes.sum()), "warm_budget_bytes": budget, "build_s": build_s,
        "loaded_after_warmup": raw["stats_after_warmup"], "loaded_at_end": final, "worker": raw["worker"],
        "embedding_ms": raw["embedding_ms"],
        "arms": {}, "duration_s": time.perf_counter() - started,
    }
    for arm in ARMS:
        first, loaded, unload = (np.asarray(raw[arm][key]) for key in ("first", "first_loaded", "first_unload"))
        results["arms"][arm] = {"first_recall": summary(raw[arm]["first"], raw[arm]["first_loaded"]),
                                "every_recall": summary(raw[arm]["all"], raw[arm]["all_loaded"]),
                                "first_recall_by_case": {
                                    name: summary(first[mask].tolist(), loaded[mask].tolist())
                                    for name, mask in (("loaded, no unload during it", loaded & ~unload),
                                                       ("loaded, an unload during it", loaded & unload),
                                                       ("not loaded, no unload during it", ~loaded & ~unload),
                                                       ("not loaded, an unload during it", ~loaded & unload))}}
    on, off = results["arms"]["prefetch on"], results["arms"]["prefetch off"]
    results["ratios_off_over_on"] = {
        f"{part}_{q}": off[part][f"{q}_ms"] / on[part][f"{q}_ms"]
        for part in ("first_recall", "every_recall") for q in ("p50", "p90", "p99")}
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or "returning-users"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = render(results)
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def render(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    end = results["loaded_at_end"]
    embedding = ("all-MiniLM-L6-v2 encoding a DailyDialog utterance" if s.get("embed") == "minilm"
                 else f"sleep {s['gap_ms'][0]:.0f}-{s['gap_ms'][1]:.0f} ms")
    lines = [
        "# Returning users: prefetch loads the namespace when the conversation starts", "",
        f"`{results['command']}`, {results['date']}; {results['machine']['cpus']} CPUs, load average "
        f"{results['machine']['load_avg_start'][0]:.2f} at start, {results['machine']['load_avg_end'][0]:.2f} at end "
        "(another job shared the machine: compare the arms, measured alternately in one run, not absolute figures).",
        "",
        f"{s['users']:,} users, {s['min_memories']}-{s['max_memories']} memories each ({results['memories']:,} in all; "
        f"DailyDialog MiniLM vectors + noise, vectors given), Zipf activity s = {s['zipf_s']}, "
        f"warm_budget_bytes = {results['warm_budget_bytes'] / 2**20:.1f} MiB, durability {s['durability']}; "
        "store reopened (nothing loaded), "
        f"{s['warmup']} unmeasured sessions, then {s['sessions']:,} sessions alternating prefetch on / off, each: "
        f"conversation start, message, query embedding ({embedding}), "
        f"recall k=10, then {s['more_recalls']} more turns. Latency: the search part of the recall (from the "
        "end of the embedding to the recall's return). Served loaded: the namespace was loaded when the search "
        "started (no range read of its rows on the search's path).", "",
        "| arm | recalls | n | p50 | p90 | p99 | max | mean | served loaded |", "|---|---|---|---|---|---|---|---|---|"]
    for part, label in (("first_recall", "first of a session"), ("every_recall", "every recall")):
        for arm in ARMS:
            r = results["arms"][arm][part]
            lines.append(f"| {arm} | {label} | {r['n']:,} | {r['p50_ms']:.3f} ms | {r['p90_ms']:.3f} ms | "
                         f"{r['p99_ms']:.3f} ms | {r['max_ms']:.2f} ms | {r['mean_ms']:.3f} ms | "
                         f"{r['served_loaded']:.1%} |")
    lines += ["", "First recalls by what the search met (an unload during it: the maintenance thread unloaded "
              "a namespace, under the write lock, between the end of the embedding and the recall's return):", "",
              "| arm | case | n | p50 | p99 | max |", "|---|---|---|---|---|---|"]
    for arm in ARMS:
        for case, r in results["arms"][arm]["first_recall_by_case"].items():
            if r["n"]:
                lines.append(f"| {arm} | {case} | {r['n']:,} | {r['p50_ms']:.3f} ms | {r['p99_ms']:.3f} ms | "
                             f"{r['max_ms']:.2f} ms |")
    ratios = results["ratios_off_over_on"]
    emb = results["embedding_ms"]
    lines += ["", "Off ÷ on (above 1: prefetch is faster): first recall p50 "
              f"{ratios['first_recall_p50']:.2f}x, p90 {ratios['first_recall_p90']:.2f}x, "
              f"p99 {ratios['first_recall_p99']:.2f}x; every recall p50 {ratios['every_recall_p50']:.2f}x, "
              f"p99 {ratios['every_recall_p99']:.2f}x. Goal: first-recall p99 cut >= 3x, p50 never raised.", "",
              f"Store over the whole replay: {end['loads']:,} namespace loads (p50 {end['load_p50_ms']:.2f} ms, "
              f"p99 {end['load_p99_ms']:.2f} ms over the last 1,024), {end['unloads']:,} unloads, {end['loaded']} "
              f"namespaces loaded at the end ({end['bytes'] / 2**20:.1f} MiB of "
              f"{end['budget_bytes'] / 2**20:.1f} MiB). Prefetch worker: {results['worker']['preloads']:,} "
              f"namespaces loaded ahead. Query embedding p1 / p50 / p99: {emb['p1']:.1f} / {emb['p50']:.1f} / "
              f"{emb['p99']:.1f} ms. "
              f"Build {results['build_s']:.0f} s; whole run {results['duration_s']:.0f} s."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
