"""How long another process serves a stale copy: one writer, one reader, one PostgreSQL store.

Two processes on one PostgreSQL cold store, each with its own engine and cache directory: this one
writes, a spawned one reads. The reader first loads the namespace (a search, then gets that make
the targets hot: the copies that are to go stale). Then, one change at a time, cycling update
(new text and vector), add, delete:

1. the writer tells the reader what is about to change (the id, and the state to expect) and waits
   until the reader polls;
2. the reader polls, back to back, ``get(id)`` and ``search(vector=..., k=5)`` until each shows the
   change; the writer makes the change (the call returns after its commit) and notes the time;
3. the reader sends the times its first get and its first search showing the change returned.

The staleness window of a change is (first reader call showing it returned) - (writer's call
returned), on the machine's monotonic clock, which both processes share; a window below zero is a
commit the reader saw before the writer's call had returned. It includes the reader's poll in
flight when the commit landed (a reload of the namespace, if the call reloads it).

Two modes, each with a reader of its own: ``notify`` (the default engine: with background
promotion on, the store LISTENs and a notice unloads a changed namespace early) and
``version-check`` (``promote_in_background=False``, which opens no listener: every use compares the
loaded copy's version with the server's alone; the engine has no switch for the listener by itself,
so this mode also runs without background promotion).

    python benchmarks/pg_staleness.py --out benchmarks/results/postgres
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

NAMESPACE = "bench"
DIMENSION = 384
KINDS = ("update", "add", "delete")
DSN_DEFAULT = os.environ.get("TIERED_MEMORY_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
    return vector / np.linalg.norm(vector)


def open_engine(dsn: str, schema: str, cache: Path, background: bool):
    from tiered_memory import TieredMemory
    from tiered_memory.tiers.pg_cold import postgres_cold

    return TieredMemory(cache, cold=postgres_cold(dsn, schema=schema), encoder=None, dimension=DIMENSION,
                        promote_in_background=background)


def shows(mem: Any, change: dict[str, Any]) -> tuple[bool, bool]:
    """Whether a get and a search of the reader show this change."""
    from tiered_memory import MemoryNotFoundError

    memory_id, kind = change["id"], change["kind"]
    try:
        got = mem.get(memory_id)
        by_get = kind != "delete" and got.text == change["text"]
    except MemoryNotFoundError:
        by_get = kind == "delete"
    top = [hit.memory for hit in mem.search(vector=np.asarray(change["vector"], dtype=np.float32),
                                            namespace=NAMESPACE, k=5)]
    if kind == "delete":
        by_search = memory_id not in {memory.id for memory in top}
    else:
        by_search = bool(top) and top[0].id == memory_id and top[0].text == change["text"]
    return by_get, by_search


def reader(dsn: str, schema: str, cache: str, background: bool, ids: list[str], plans, answers,
           timeout_s: float) -> None:
    mem = open_engine(dsn, schema, Path(cache), background)
    try:
        mem.search(vector=unit(0), namespace=NAMESPACE, k=5)  # loaded
        for memory_id in ids:
            for _ in range(2):
                mem.get(memory_id)  # hot: the copies in RAM that are to go stale
        answers.put("ready")
        while (change := plans.get()) is not None:
            seen: dict[str, float | None] = {"get": None, "search": None}
            polls = 0
            answers.put("polling")
            deadline = time.monotonic() + timeout_s
            while (seen["get"] is None or seen["search"] is None) and time.monotonic() < deadline:
                by_get, by_search = shows(mem, change)
                now = time.monotonic()
                polls += 1
                if by_get and seen["get"] is None:
                    seen["get"] = now
                if by_search and seen["search"] is None:
                    seen["search"] = now
            answers.put({**seen, "polls": polls})
    finally:
        mem.close()


def run_mode(dsn: str, schema: str, work: Path, mode: str, changes: int, seed_count: int,
             timeout_s: float) -> dict[str, Any]:
    writer = open_engine(dsn, schema, work / f"writer-{mode}", background=False)
    rng = np.random.default_rng(7)
    try:
        live = sorted(writer.ids(NAMESPACE))
        targets = [str(live[i]) for i in rng.choice(len(live), size=changes, replace=False)]
        context = multiprocessing.get_context("spawn")
        plans, answers = context.Queue(), context.Queue()
        process = context.Process(target=reader, args=(dsn, schema, str(work / f"reader-{mode}"), mode == "notify",
                                                       targets, plans, answers, timeout_s))
        process.start()
        assert answers.get(timeout=300) == "ready"
        windows: dict[str, dict[str, list[float]]] = {kind: {"get": [], "search": []} for kind in KINDS}
        unseen: dict[str, int] = {kind: 0 for kind in KINDS}
        polls: list[int] = []
        for i in range(changes):
            kind = KINDS[i % len(KINDS)]
            vector = unit((2 if mode == "notify" else 3) * 100_000 + i)  # new to the store: no tie at the top
            if kind == "update":
                change = {"kind": kind, "id": targets[i], "text": f"updated {i}", "vector": vector.tolist()}
            elif kind == "add":
                change = {"kind": kind, "id": f"added-{mode}-{i}", "text": f"added {i}", "vector": vector.tolist()}
            else:
                change = {"kind": kind, "id": targets[i], "text": "", "vector": writer.vector(targets[i]).tolist()}
            plans.put(change)
            assert answers.get(timeout=60) == "polling"
            time.sleep(float(rng.uniform(0.0, 0.005)))  # lands anywhere in a reader's poll
            if kind == "update":
                writer.update(change["id"], text=change["text"], vector=vector)
            elif kind == "add":
                writer.add(change["text"], vector=vector, id=change["id"], namespace=NAMESPACE)
            else:
                writer.delete(change["id"])
            returned = time.monotonic()
            seen = answers.get(timeout=timeout_s + 60)
            polls.append(seen["polls"])
            for by in ("get", "search"):
                if seen[by] is None:
                    unseen[kind] += 1
                else:
                    windows[kind][by].append((seen[by] - returned) * 1000)
        plans.put(None)
        process.join(timeout=60)
    finally:
        writer.close()
    every = {by: [w for kind in KINDS for w in windows[kind][by]] for by in ("get", "search")}
    return {"mode": mode, "changes": changes, "not_seen_within_timeout": unseen, "polls_per_change_p50":
            float(np.median(polls)), "all": {by: summary(values) for by, values in every.items()},
            "by_kind": {kind: {by: summary(values) for by, values in windows[kind].items()} for kind in KINDS}}


def summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    data = np.asarray(values)
    return {"n": len(values), "p50_ms": round(float(np.percentile(data, 50)), 3),
            "p90_ms": round(float(np.percentile(data, 90)), 3), "p99_ms": round(float(np.percentile(data, 99)), 3),
            "max_ms": round(float(data.max()), 3), "min_ms": round(float(data.min()), 3)}


def render(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# PostgreSQL store: how long a reader in another process serves a stale copy", "",
        f"`{report['command']}`, {report['date']}; {machine['cpus']} CPUs, load average "
        f"{machine['load_avg_start'][0]:.2f} at start, {machine['load_avg_end'][0]:.2f} at end (a shared machine: "
        "other jobs ran beside this one, one run), PostgreSQL " + report["server"] + " on the same machine, "
        f"Python {machine['python']}, commit {report['commit']}.", "",
        f"{report['seed_memories']} memories ({DIMENSION} dimensions, random unit vectors) in one namespace; per mode "
        f"{report['changes']} changes cycling update / add / delete, each made while the reader polls get and "
        "search back to back. Window: first reader call showing the change returned, minus the writer's call "
        "returned (below zero: seen before the writer's acknowledgement arrived).", "",
        "| mode | read | n | p50 ms | p90 ms | p99 ms | max ms | not seen |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in report["results"]:
        for by in ("get", "search"):
            row = result["all"][by]
            lines.append(f"| {result['mode']} | {by} | {row.get('n', 0)} | {row.get('p50_ms', '-')} | "
                         f"{row.get('p90_ms', '-')} | {row.get('p99_ms', '-')} | {row.get('max_ms', '-')} | "
                         f"{sum(result['not_seen_within_timeout'].values())} |")
    lines += ["", "By kind of change (p50 / p99 ms):", "", "| mode | change | get | search |", "|---|---|---|---|"]
    for result in report["results"]:
        for kind in KINDS:
            cells = [f"{row.get('p50_ms', '-')} / {row.get('p99_ms', '-')}"
                     for row in (result["by_kind"][kind][by] for by in ("get", "search"))]
            lines.append(f"| {result['mode']} | {kind} | {cells[0]} | {cells[1]} |")
    lines += ["", "Modes: `notify` is the default engine (background promotion on, so the store LISTENs; a "
              "notice unloads a changed namespace in the background); `version-check` is "
              "`promote_in_background=False`, which opens no listener, so each use's comparison of the loaded "
              "copy's version with the server's is all there is (it also runs without background promotion: the "
              "engine has no switch for the listener alone). Both check the version on every use, so a reader "
              "never serves a change's old state once the commit is visible; the window is the reader's poll in "
              "flight plus the reload of the namespace the check orders. That reload rebuilds the namespace's warm "
              "index from the cold tier (logged as `warm index of 'bench' rebuilt from the cold tier`): with "
              "thousands of memories it is most of the window, whichever mode; notices only move the unload to "
              "the background thread, the next use still reloads.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DSN_DEFAULT)
    parser.add_argument("--memories", type=int, default=2_000, help="memories in the namespace before the changes")
    parser.add_argument("--changes", type=int, default=150, help="changes per mode (update, add, delete in turn)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a reader polls one change at most")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "postgres")
    args = parser.parse_args(argv)
    import psycopg

    schema = f"tm_staleness_{secrets.token_hex(4)}"
    started = time.perf_counter()
    load_start = os.getloadavg()
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        server = admin.execute("SHOW server_version").fetchone()[0]
        admin.execute(f'CREATE SCHEMA "{schema}"')
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="pg-staleness-") as tmp:
            work = Path(tmp)
            with open_engine(args.dsn, schema, work / "seed", background=False) as mem:
                rng = np.random.default_rng(1)
                vectors = rng.standard_normal((args.memories, DIMENSION)).astype(np.float32)
                mem.add_many([f"memory {i}" for i in range(args.memories)], vectors=vectors, namespace=NAMESPACE)
            for mode in ("notify", "version-check"):
                results.append(run_mode(args.dsn, schema, work, mode, args.changes, args.memories, args.timeout))
                print(json.dumps(results[-1]["all"]), file=sys.stderr)
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    report = {
        "command": "python benchmarks/pg_staleness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "server": server,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_start": load_start, "load_avg_end": os.getloadavg()},
        "seed_memories": args.memories, "changes": args.changes, "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "staleness.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "staleness.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
