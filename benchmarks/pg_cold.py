"""The PostgreSQL cold store against the LMDB store and raw psycopg, in one run.

Each figure is measured for the engine on PostgreSQL (``TieredMemory(cache, cold=postgres_cold(dsn))``,
default configuration: background promotion on, so the store listens for change notices), for
the same engine API on the default LMDB store, and, where the operation has a database
equivalent, for raw psycopg on the same server and table layout:

- **namespace load** (100 and 10,000 memories), a fresh process per sample: open, then the first
  search (which loads the namespace), then a second search. PostgreSQL twice: with the cache
  directory an earlier process left (saved warm graph) and with an empty one (graph rebuilt).
  Raw: connect, one SELECT of the namespace's catalog rows and codes, the codes as an int8 matrix,
  one exact search over them.
- **point read**: ``get(id)`` of memories of a loaded namespace on first touch (the record comes
  from the cold store), then the same ids again. Raw: ``SELECT value FROM tm_records WHERE
  memory_id = %s`` and ``msgpack.unpackb`` of the bytes.
- **search after load**: ``search(vector=q, k=10)`` in a loaded namespace, steady state (after a
  warm-up pass), held-out DailyDialog queries; systems interleaved in blocks.
- **add / add_many** with 1 and 4 writer processes, each add committed before the call returns;
  throughput = acknowledged memories / wall time from a common start to the last writer's end.
  Each writer adds to a namespace of its own; a variant has the four share one. LMDB locks its
  directory to one process, so its 4-writer row is four stores. Raw: the bytes the engine stored
  for one memory (record, catalog row, code, original) INSERTed under new ids into copies of the
  engine's tables, one transaction per add; ``executemany`` per table, one transaction per batch,
  for add_many.
- **staleness**: ``pg_staleness.run_mode`` in its ``notify`` mode (a reader process polls get and
  search while another process changes a memory) at two namespace sizes; raw: a reader polling
  ``SELECT`` by key while another process UPDATEs the row.

Vectors: DailyDialog all-MiniLM-L6-v2 embeddings (real; held-out rows as queries), DailyDialog
utterances as texts (numbered: the engine deduplicates equal texts); writers' vectors are real rows
plus noise (``corpora.scaled_vectors``). Every run uses a fresh schema and drops it.

    python benchmarks/pg_cold.py --out benchmarks/results/postgres
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import secrets
import shutil
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

DIMENSION = 384
DSN_DEFAULT = os.environ.get("TIERED_MEMORY_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SYSTEMS = ("pg", "lmdb", "raw")
NAMES = {"pg": "ours on PostgreSQL", "pg-empty-cache": "ours on PostgreSQL, empty cache directory",
         "lmdb": "ours on LMDB", "raw": "raw psycopg"}
RAW_TABLES = ("records", "rows", "codes", "originals")
_CTX = multiprocessing.get_context("spawn")


# -- shared pieces ---------------------------------------------------------------------------

def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs so far, from /proc/stat (0, 0 where there is none)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def server_ticks() -> dict[int, int]:
    """pid -> CPU clock ticks (user + system) used so far, of each of the machine's PostgreSQL
    processes (the server runs on this machine)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if name.startswith("postgres"):
            found[int(stat.parent.name)] = int(fields[11]) + int(fields[12])
    return found


def ticks_between(start: dict[int, int], end: dict[int, int]) -> int:
    """Server ticks used between two samples: by the processes alive at the end (a backend that
    exited meanwhile, such as an earlier run's, takes its ticks along and is not counted)."""
    return sum(ticks - start.get(pid, 0) for pid, ticks in end.items())


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summary_us(samples_ns: list[int]) -> dict[str, float | int]:
    data = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {"n": len(data), "p50_us": round(float(np.percentile(data, 50, method="lower")), 1),
            "p99_us": round(float(np.percentile(data, 99, method="lower")), 1),
            "max_us": round(float(data.max()), 1)}


def open_pg(dsn: str, schema: str, cache: Path, **settings: Any):
    from tiered_memory import TieredMemory
    from tiered_memory.tiers.pg_cold import postgres_cold

    return TieredMemory(cache, cold=postgres_cold(dsn, schema=schema), encoder=None, dimension=DIMENSION, **settings)


def open_lmdb(path: Path, **settings: Any):
    from tiered_memory import TieredMemory

    return TieredMemory(path, encoder=None, dimension=DIMENSION, **settings)


def raw_connection(dsn: str, schema: str):
    import psycopg

    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f'SET search_path TO "{schema}"')
    return conn


def spawn(target: Any, *args: Any) -> Any:
    """Run target(*args, queue) in a fresh process and return what it puts on the queue."""
    answers = _CTX.Queue()
    process = _CTX.Process(target=target, args=(*args, answers))
    process.start()
    try:
        result = answers.get(timeout=600)
    finally:
        process.join(timeout=60)
    if isinstance(result, dict) and "error" in result:
        raise RuntimeError(f"{target.__name__} failed in its process:\n{result['error']}")
    return result


def _answer(function: Any, args: tuple[Any, ...]) -> None:
    """A child's body: the result, or any exception as text, goes back to the parent (never a hang)."""
    answers = args[-1]
    try:
        answers.put(function(*args[:-1]))
    except BaseException:  # the parent re-raises it
        import traceback

        answers.put({"error": traceback.format_exc()})


# -- namespace load: fresh processes -----------------------------------------------------------

def _load_probe(system: str, dsn: str, schema: str, path: str, namespace: str, queries: np.ndarray) -> dict:
    import msgpack  # noqa: F401  (imported before the clock, as the engine's own imports are)
    import psycopg  # noqa: F401

    import tiered_memory.tiers.pg_cold  # noqa: F401

    clock = time.perf_counter
    if system == "raw":
        t0 = clock()
        conn = raw_connection(dsn, schema)
        t1 = clock()
        ns_id = conn.execute("SELECT ns_id FROM tm_namespaces WHERE name = %s", (namespace,)).fetchone()[0]
        found = conn.execute("SELECT r.memory_id, r.value, c.value FROM tm_rows r JOIN tm_codes c "
                             "ON c.ns_id = r.ns_id AND c.memory_id = r.memory_id WHERE r.ns_id = %s "
                             "ORDER BY r.memory_id", (ns_id,)).fetchall()
        codes = np.frombuffer(b"".join(code for _, _, code in found), dtype=np.int8).reshape(len(found), -1)
        ids = [memory_id for memory_id, _, _ in found]
        top = np.argsort(-(codes.astype(np.float32) @ queries[0]))[:10]
        t2 = clock()
        second = [ids[i] for i in np.argsort(-(codes.astype(np.float32) @ queries[1]))[:10]]
        t3 = clock()
        conn.close()
        assert len(top) == len(second) == min(10, len(found))
        return {"open_s": t1 - t0, "first_search_s": t2 - t1, "second_search_s": t3 - t2, "rows": len(found)}
    t0 = clock()
    mem = open_pg(dsn, schema, Path(path)) if system.startswith("pg") else open_lmdb(Path(path))
    t1 = clock()
    hits = mem.search(vector=queries[0], namespace=namespace, k=10)
    t2 = clock()
    mem.search(vector=queries[1], namespace=namespace, k=10)
    t3 = clock()
    mem.close()
    assert hits, f"no hits in {namespace!r}"
    return {"open_s": t1 - t0, "first_search_s": t2 - t1, "second_search_s": t3 - t2}


def load_probe(*args: Any) -> None:
    _answer(_load_probe, args)


def measure_load(args: argparse.Namespace, schema: str, work: Path, stores: dict[str, Path],
                 queries: np.ndarray) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for namespace, size in (("small", args.small), ("large", args.large)):
        samples: dict[str, list[dict]] = {system: [] for system in ("pg", "pg-empty-cache", "lmdb", "raw")}
        order = list(samples)
        for repeat in range(args.repeats):
            for system in order[repeat % len(order):] + order[:repeat % len(order)]:  # rotated per repeat
                if system == "pg-empty-cache":
                    path = work / f"empty-cache-{namespace}-{repeat}"
                elif system == "raw":
                    path = work / "unused"
                else:
                    path = stores[system]
                samples[system].append(spawn(load_probe, system, args.dsn, schema, str(path), namespace,
                                             queries[repeat * 2:repeat * 2 + 2]))
                if system == "pg-empty-cache":
                    shutil.rmtree(path, ignore_errors=True)
        results[namespace] = {"memories": size, "systems": {
            system: {"median": {key: float(np.median([s[key] for s in runs])) for key in runs[0]}, "runs": runs}
            for system, runs in samples.items()}}
        print(f"load {namespace}:", {s: round(v["median"]["first_search_s"] * 1e3, 2)
                                     for s, v in results[namespace]["systems"].items()}, file=sys.stderr)
    return results


# -- point reads and search after load: one process, systems interleaved ------------------------

def interleaved(systems: dict[str, Any], inputs: list[Any] | dict[str, list[Any]], block: int
                ) -> dict[str, list[int]]:
    """Each system runs each block of inputs in turn, the order rotating from block to block;
    inputs: one list for all, or a list per system (the same items under each system's ids)."""
    samples: dict[str, list[int]] = {name: [] for name in systems}
    names = list(systems)
    each = inputs if isinstance(inputs, dict) else {name: inputs for name in names}
    for b, start in enumerate(range(0, len(each[names[0]]), block)):
        for name in names[b % len(names):] + names[:b % len(names)]:
            call = systems[name]
            out = samples[name]
            for item in each[name][start:start + block]:
                t = time.perf_counter_ns()
                call(item)
                out.append(time.perf_counter_ns() - t)
    return samples


def measure_reads(args: argparse.Namespace, schema: str, stores: dict[str, Path], queries: np.ndarray,
                  ids: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    import msgpack

    pg = open_pg(args.dsn, schema, stores["pg"])
    lmdb = open_lmdb(stores["lmdb"])
    conn = raw_connection(args.dsn, schema)
    out: dict[str, Any] = {}
    try:
        pg.preload(["small", "large"])
        lmdb.preload(["small", "large"])
        rng = np.random.default_rng(3)
        chosen = rng.choice(len(ids["pg"]["large"]), size=args.gets, replace=False)
        wanted = {system: [ids[system]["large"][i] for i in chosen] for system in ("pg", "lmdb")}
        wanted["raw"] = wanted["pg"]

        def raw_get(memory_id: str) -> Any:
            return msgpack.unpackb(conn.execute("SELECT value FROM tm_records WHERE memory_id = %s",
                                                (memory_id,)).fetchone()[0], raw=False, strict_map_key=False)

        readers = {"pg": pg.get, "lmdb": lmdb.get, "raw": raw_get}
        first = interleaved(readers, wanted, args.block)
        again = interleaved(readers, wanted, args.block)
        out["get_first_touch"] = {name: summary_us(s) for name, s in first.items()}
        out["get_again"] = {name: summary_us(s) for name, s in again.items()}
        for namespace in ("small", "large"):
            searchers = {"pg": lambda q, ns=namespace: pg.search(vector=q, namespace=ns, k=10),
                         "lmdb": lambda q, ns=namespace: lmdb.search(vector=q, namespace=ns, k=10)}
            inputs = list(queries[:args.queries])
            interleaved(searchers, inputs, args.block)  # warm-up: results hot, as in steady use
            samples: dict[str, list[int]] = {name: [] for name in searchers}
            for _ in range(args.rounds):
                for name, values in interleaved(searchers, inputs, args.block).items():
                    samples[name] += values
            out[f"search_{namespace}"] = {name: summary_us(s) for name, s in samples.items()}
            print(f"search {namespace}:", out[f"search_{namespace}"], file=sys.stderr)
        # The piece a PostgreSQL search adds: the store's per-use check that no other process has
        # changed the loaded namespace (one SELECT through the pool), timed alone.
        ns_id = pg.cold.namespace_id("large")
        checks = interleaved({"check": lambda _: pg.cold.changed_elsewhere([ns_id])}, list(range(args.queries)),
                             args.block)
        out["part_version_check"] = summary_us(checks["check"])
        out["search_profile_pg"], out["search_profile_pg_check"] = profile_search(pg, queries[:args.queries])
    finally:
        conn.close()
        pg.close()
        lmdb.close()
    return out


def profile_search(mem: Any, queries: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Where a loaded namespace's search on PostgreSQL spends its time: cProfile's top functions by
    own time over the queries (the profiler's overhead inflates all of them alike), and the row of
    the store's per-use version check (changed_elsewhere)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for q in queries:
        mem.search(vector=q, namespace="large", k=10)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(filename).name}:{line}({function})", "calls": calls,
                     "own_share": round(own / total, 3), "cumulative_share": round(cumulative / total, 3)})
    check = next((row for row in rows if row["function"].startswith("pg_cold.py") and
                  row["function"].endswith("(changed_elsewhere)")), {})
    return sorted(rows, key=lambda row: -row["own_share"])[:12], check


# -- writers: 1 and 4 processes ----------------------------------------------------------------

def _writer(system: str, dsn: str, schema: str, path: str, namespace: str, mode: str, texts: list[str],
            vectors: np.ndarray, batch: int, template: dict[str, bytes], ns_id: int, barrier: Any) -> dict:
    latencies: list[int] = []
    if system == "raw":
        conn = raw_connection(dsn, schema)
        tag = secrets.token_hex(4)
        rows = [[(ns_id, f"{tag}-{i}", template[table]) for i in range(len(texts))] for table in RAW_TABLES]
        barrier.wait()
        ticks_start, server_start, cpu_start = cpu_ticks(), server_ticks(), own_cpu_s()
        started = time.monotonic()
        with conn.cursor() as cursor:
            step = 1 if mode == "add" else batch
            for start in range(0, len(texts), step):
                t = time.perf_counter_ns()
                with conn.transaction():
                    for table, table_rows in zip(RAW_TABLES, rows):
                        statement = f"INSERT INTO raw_{table} (ns_id, memory_id, value) VALUES (%s, %s, %s)"
                        if step == 1:
                            cursor.execute(statement, table_rows[start])
                        else:
                            cursor.executemany(statement, table_rows[start:start + step])
                latencies.append(time.perf_counter_ns() - t)
        ended = time.monotonic()
        ticks_end, server_end, cpu_end = cpu_ticks(), server_ticks(), own_cpu_s()
        conn.close()
    else:
        mem = open_pg(dsn, schema, Path(path)) if system == "pg" else open_lmdb(Path(path))
        barrier.wait()
        ticks_start, server_start, cpu_start = cpu_ticks(), server_ticks(), own_cpu_s()
        started = time.monotonic()
        if mode == "add":
            for text, vector in zip(texts, vectors):
                t = time.perf_counter_ns()
                mem.add(text, vector=vector, namespace=namespace)
                latencies.append(time.perf_counter_ns() - t)
        else:
            for start in range(0, len(texts), batch):
                t = time.perf_counter_ns()
                mem.add_many(texts[start:start + batch], vectors=vectors[start:start + batch], namespace=namespace)
                latencies.append(time.perf_counter_ns() - t)
        ended = time.monotonic()
        ticks_end, server_end, cpu_end = cpu_ticks(), server_ticks(), own_cpu_s()
        mem.close()
    return {"started": started, "ended": ended, "ticks_start": ticks_start, "ticks_end": ticks_end,
            "server_start": server_start, "server_end": server_end, "cpu_s": cpu_end - cpu_start,
            "latencies_ns": latencies, "added": len(texts)}


def writer(*args: Any) -> None:
    _answer(_writer, args)


def write_run(args: argparse.Namespace, schema: str, work: Path, system: str, mode: str, writers: int,
              shared: bool, run: int, base: np.ndarray, template: dict[str, bytes]) -> dict[str, Any]:
    from tiered_memory.corpora import scaled_vectors

    count = args.adds if mode == "add" else args.add_many_batches * args.batch
    barrier = _CTX.Barrier(writers)
    answers = _CTX.Queue()
    processes = []
    for w in range(writers):
        label = f"{system}-{mode}-{writers}-{'shared' if shared else 'own'}-{run}"
        namespace = f"{label}" if shared else f"{label}-w{w}"
        seed = 1_000 + run * 10 + w
        vectors = scaled_vectors(base, count, seed=seed)
        texts = [f"writer {w} of {label} memory {i}" for i in range(count)]
        if system == "lmdb":
            path = work / f"{label}-w{w}"  # LMDB: one process per store, so each writer has its own
        else:
            path = work / f"cache-{label}-w{w}"
        ns_id = 10_000 + run * 100 + (0 if shared else w)
        processes.append(_CTX.Process(target=writer, args=(system, args.dsn, schema, str(path), namespace, mode, texts,
                                                           vectors, args.batch, template, ns_id, barrier, answers)))
    for process in processes:
        process.start()
    results = [answers.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    for result in results:
        if "error" in result:
            raise RuntimeError(f"a writer failed:\n{result['error']}")
    first, last = min(results, key=lambda r: r["started"]), max(results, key=lambda r: r["ended"])
    wall = last["ended"] - first["started"]
    busy, total = (end - start for end, start in zip(last["ticks_end"], first["ticks_start"]))
    added = sum(r["added"] for r in results)
    hertz = os.sysconf("SC_CLK_TCK")
    return {"throughput_per_s": added / wall, "wall_s": wall, "added": added,
            # CPU-seconds per wall second over the timed span: the writer processes', the server's
            "clients_cpu": sum(r["cpu_s"] for r in results) / wall,
            "server_cpu": ticks_between(first["server_start"], last["server_end"]) / hertz / wall,
            "cpu_busy": busy / total if total else None,  # the whole machine's, over the timed span
            "latencies_ns": [x for r in results for x in r["latencies_ns"]]}


def measure_writes(args: argparse.Namespace, schema: str, work: Path, base: np.ndarray,
                   template: dict[str, bytes]) -> dict[str, Any]:
    configs = [(mode, writers, False) for mode in ("add", "add_many") for writers in (1, args.writers)]
    configs += [("add", args.writers, True), ("add_many", args.writers, True)]
    out: dict[str, Any] = {}
    run = 0
    for mode, writers, shared in configs:
        key = f"{mode}.{writers}{'.shared' if shared else ''}"
        systems = [s for s in SYSTEMS if not (shared and s == "lmdb")]  # LMDB: no store shared by processes
        runs: dict[str, list[dict]] = {s: [] for s in systems}
        for repeat in range(args.repeats):
            for system in systems[repeat % len(systems):] + systems[:repeat % len(systems)]:
                run += 1
                runs[system].append(write_run(args, schema, work, system, mode, writers, shared, run, base, template))
        out[key] = {"mode": mode, "writers": writers, "shared_namespace": shared, "systems": {
            system: {"throughput_per_s": float(np.median([r["throughput_per_s"] for r in rs])),
                     "throughputs": [round(r["throughput_per_s"], 1) for r in rs],
                     "latency": summary_us([x for r in rs for x in r["latencies_ns"]]),
                     "added_per_run": rs[0]["added"],
                     "cpu_busy": float(np.median([r["cpu_busy"] or 0.0 for r in rs])),
                     "clients_cpu": float(np.median([r["clients_cpu"] for r in rs])),
                     "server_cpu": float(np.median([r["server_cpu"] for r in rs]))}
            for system, rs in runs.items()}}
        print(f"write {key}:", {s: round(v["throughput_per_s"]) for s, v in out[key]["systems"].items()},
              file=sys.stderr)
    return out


# -- staleness ---------------------------------------------------------------------------------

def _raw_stale_reader(dsn: str, schema: str, plans: Any, answers: Any, timeout_s: float) -> None:
    conn = raw_connection(dsn, schema)
    answers.put("ready")
    while (change := plans.get()) is not None:
        answers.put("polling")
        seen = None
        polls = 0
        deadline = time.monotonic() + timeout_s
        while seen is None and time.monotonic() < deadline:
            found = conn.execute("SELECT value FROM raw_stale WHERE key = %s", (change["key"],)).fetchone()
            polls += 1
            if found is not None and bytes(found[0]) == change["value"]:
                seen = time.monotonic()
        answers.put({"seen": seen, "polls": polls})
    conn.close()


def raw_staleness(args: argparse.Namespace, schema: str) -> dict[str, Any]:
    """The floor: a reader process polling a row by key while this one UPDATEs it (autocommit)."""
    from benchmarks.pg_staleness import summary

    conn = raw_connection(args.dsn, schema)
    conn.execute("CREATE TABLE raw_stale (key text PRIMARY KEY, value bytea NOT NULL)")
    keys = [f"k{i}" for i in range(args.staleness_memories[0])]
    with conn.cursor() as cursor:
        cursor.executemany("INSERT INTO raw_stale VALUES (%s, %s)", [(key, b"v0") for key in keys])
    plans, answers = _CTX.Queue(), _CTX.Queue()
    process = _CTX.Process(target=_raw_stale_reader, args=(args.dsn, schema, plans, answers, 10.0))
    process.start()
    assert answers.get(timeout=120) == "ready"
    rng = np.random.default_rng(9)
    windows: list[float] = []
    for i in range(args.changes):
        change = {"key": keys[i % len(keys)], "value": f"v{i + 1}".encode()}
        plans.put(change)
        assert answers.get(timeout=60) == "polling"
        time.sleep(float(rng.uniform(0.0, 0.005)))
        conn.execute("UPDATE raw_stale SET value = %s WHERE key = %s", (change["value"], change["key"]))
        returned = time.monotonic()
        seen = answers.get(timeout=70)
        if seen["seen"] is not None:
            windows.append((seen["seen"] - returned) * 1000)
    plans.put(None)
    process.join(timeout=60)
    conn.close()
    return {"changes": args.changes, "all": {"get": summary(windows)}}


def measure_staleness(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import psycopg

    from benchmarks import pg_staleness

    out: dict[str, Any] = {"ours": {}}
    for memories in args.staleness_memories:
        schema = f"tm_pgcold_stale_{secrets.token_hex(4)}"
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            with open_pg(args.dsn, schema, work / f"stale-seed-{memories}", promote_in_background=False) as mem:
                vectors = np.random.default_rng(1).standard_normal((memories, DIMENSION)).astype(np.float32)
                mem.add_many([f"memory {i}" for i in range(memories)], vectors=vectors,
                             namespace=pg_staleness.NAMESPACE)
            result = pg_staleness.run_mode(args.dsn, schema, work / f"stale-{memories}", "notify", args.changes,
                                           memories, 10.0)
            out["ours"][str(memories)] = result
            if memories == args.staleness_memories[0]:
                out["raw"] = raw_staleness(args, schema)
        finally:
            with psycopg.connect(args.dsn, autocommit=True) as admin:
                admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        print(f"staleness {memories}:", result["all"], file=sys.stderr)
    print("staleness raw:", out["raw"]["all"], file=sys.stderr)
    return out


# -- building ----------------------------------------------------------------------------------

def build(args: argparse.Namespace, schema: str, work: Path, vectors: np.ndarray, texts: list[str]
          ) -> tuple[dict[str, Path], dict[str, dict[str, list[str]]], dict[str, float]]:
    """Both stores with the same memories; ids[system][namespace] in the same order for both."""
    stores = {"pg": work / "pg-cache", "lmdb": work / "lmdb"}
    spans = {"small": (0, args.small), "large": (args.small, args.small + args.large)}
    ids: dict[str, dict[str, list[str]]] = {"pg": {}, "lmdb": {}}
    seconds: dict[str, float] = {}
    for system in ("pg", "lmdb"):
        started = time.perf_counter()
        with (open_pg(args.dsn, schema, stores["pg"]) if system == "pg" else open_lmdb(stores["lmdb"])) as mem:
            for namespace, (lo, hi) in spans.items():
                made = []
                for start in range(lo, hi, 1_000):
                    stop = min(start + 1_000, hi)
                    made += mem.add_many(texts[start:stop], vectors=vectors[start:stop], namespace=namespace)
                ids[system][namespace] = [str(x) for x in made]
            mem.wait_idle()
        seconds[system] = time.perf_counter() - started
    return stores, ids, seconds


def raw_tables(dsn: str, schema: str, memory_id: str) -> dict[str, bytes]:
    """Copies of the engine's tables for the raw writers, and the bytes the engine stored for one memory."""
    conn = raw_connection(dsn, schema)
    template = {}
    for table in RAW_TABLES:
        conn.execute(f"CREATE TABLE raw_{table} (LIKE tm_{table} INCLUDING ALL)")
        template[table] = bytes(conn.execute(f"SELECT value FROM tm_{table} WHERE memory_id = %s",
                                             (memory_id,)).fetchone()[0])
    conn.close()
    return template


# -- report ------------------------------------------------------------------------------------

def ratio(ours: float, theirs: float) -> float:
    return round(ours / theirs, 2) if theirs else float("nan")


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    reads, writes, stale = report["reads"], report["writes"], report["staleness"]
    found = []
    for namespace in ("small", "large"):
        pg, lmdb = reads[f"search_{namespace}"]["pg"], reads[f"search_{namespace}"]["lmdb"]
        value = ratio(pg["p50_us"], lmdb["p50_us"])
        found.append({"goal": f"search in a loaded namespace ({report['workload'][namespace]:,} memories) within "
                              "1.1x of the LMDB store (p50)", "measured": f"{value}x (p99 "
                      f"{ratio(pg['p99_us'], lmdb['p99_us'])}x)", "met": bool(value <= 1.1)})
    for mode in ("add", "add_many"):
        one = writes[f"{mode}.1"]["systems"]["pg"]["throughput_per_s"]
        four = writes[f"{mode}.{report['options']['writers']}"]["systems"]["pg"]["throughput_per_s"]
        found.append({"goal": f"{report['options']['writers']} writer processes >= 3x one writer's {mode} "
                              "throughput (own namespaces)",
                      "measured": f"{ratio(four, one)}x ({four:,.0f}/s vs {one:,.0f}/s)", "met": bool(four >= 3 * one)})
    for memories, result in stale["ours"].items():
        p99 = max(result["all"]["get"]["p99_ms"], result["all"]["search"]["p99_ms"])
        found.append({"goal": f"staleness p99 <= 50 ms with notifications on ({int(memories):,} memories)",
                      "measured": f"{p99:.1f} ms (worse of get and search)", "met": bool(p99 <= 50)})
    return found


def findings(report: dict[str, Any]) -> list[str]:
    """The measured cause of each missed goal, from this run's numbers and profile."""
    met = {goal["goal"]: goal["met"] for goal in report["goals"]}
    reads, writes, stale, o = report["reads"], report["writes"], report["staleness"], report["options"]
    lines = ["## Why the missed goals are missed (measured in this run)", ""]
    if not all(met[g] for g in met if g.startswith("search")):
        check = reads.get("search_profile_pg_check", {})
        extra = reads["search_large"]["pg"]["p50_us"] - reads["search_large"]["lmdb"]["p50_us"]
        part = reads["part_version_check"]
        lines.append(
            f"- **search**: at p50 a PostgreSQL search costs {extra:,.0f} µs more than LMDB's in the large namespace. "
            "The caches do serve it (hot records, the warm graph in RAM: no record is read from the server), but "
            "every use of a loaded namespace on a shared store first asks the server whether another process "
            "changed it (`changed_elsewhere`: a pool checkout and one SELECT of the namespace's version), which "
            f"alone takes p50 {part['p50_us']:,} µs / p99 {part['p99_us']:,} µs here (a raw SELECT by key on a "
            f"connection of its own: p50 {reads['get_first_touch']['raw']['p50_us']:,} µs) and "
            f"{check.get('cumulative_share', 0):.0%} of the search's time under cProfile (the pool checkout, "
            "parameter conversion and driver's wait loop around the round trip included). Within 1.1x needs the "
            "search to skip the server round trip while change notices are live (the check as designed is what "
            "makes a use never serve a change's old state once committed): a change to the library's "
            "consistency design, not to this benchmark.")
    multi = [g for g in met if g.startswith(f"{o['writers']} writer")]
    if not all(met[g] for g in multi):
        parts = []
        for mode in ("add", "add_many"):
            many, one = writes[f"{mode}.{o['writers']}"]["systems"], writes[f"{mode}.1"]["systems"]
            parts.append(
                f"{mode}: one writer and its server backends used {one['pg']['clients_cpu']:.2f} + "
                f"{one['pg']['server_cpu']:.2f} CPU-seconds per second, {o['writers']} writers "
                f"{many['pg']['clients_cpu']:.2f} + {many['pg']['server_cpu']:.2f} (the machine's CPUs "
                f"{many['pg']['cpu_busy']:.0%} busy, other jobs included); raw psycopg scales "
                f"{ratio(many['raw']['throughput_per_s'], one['raw']['throughput_per_s'])}x from 1 to "
                f"{o['writers']} writers on the same machine")
        one = writes["add.1"]["systems"]["pg"]
        ceiling = report["machine"]["cpus"] / (one["clients_cpu"] + one["server_cpu"])
        lines.append(
            f"- **{o['writers']} writers**: {report['machine']['cpus']} CPUs run the writer processes, the "
            "PostgreSQL server's backends and other jobs. " + "; ".join(parts) + ". Writers of different "
            "namespaces lock different namespace rows, so they do not queue on each other. "
            f"With one add writer using {one['clients_cpu'] + one['server_cpu']:.2f} CPU-seconds per second "
            f"(its process and its backend), {report['machine']['cpus']} CPUs allow at most about {ceiling:.1f}x"
            + (f": the CPUs are the limit, so the 3x goal cannot be met, nor tested, on this machine: it needs "
               f"at least {o['writers']} cores for the writers and more for the server." if ceiling < 3 else
               ": the CPUs would allow 3x, so the shortfall lies elsewhere (this run does not find where)."))
    if not all(met[g] for g in met if g.startswith("staleness")):
        sizes = sorted(stale["ours"], key=int)
        cells = ", ".join(f"p50 {stale['ours'][n]['all']['get']['p50_ms']} ms at {int(n):,} memories"
                          for n in sizes)
        lines.append(
            f"- **staleness**: the window grows with the namespace ({cells}) while the raw floor is "
            f"p99 {stale['raw']['all']['get']['p99_ms']} ms. A notice (or the per-use version check) makes the "
            "reader unload the namespace; its next use reloads it from the server and rebuilds its warm graph "
            "from the cold rows, logged as `warm index of 'bench' rebuilt from the cold tier` (namespace load "
            "above: "
            f"{report['load']['large']['systems']['pg-empty-cache']['median']['first_search_s'] * 1e3:,.0f} ms at "
            f"{report['workload']['large']:,} memories without a saved graph). Meeting 50 ms needs the notice "
            "to carry (or point to) the changed memories so the copy is patched rather than reloaded: a library "
            "change.")
    return lines if len(lines) > 2 else []


def render(report: dict[str, Any]) -> str:
    m, w, o = report["machine"], report["workload"], report["options"]
    lines = [
        "# PostgreSQL cold store against the LMDB store and raw psycopg", "",
        f"`{report['command']}`, {report['date']}, {report['seconds']:.0f} s; commit {report['commit']}; "
        f"{m['cpus']} CPUs, load average {m['load_avg_start'][0]:.2f} at start and {m['load_avg_end'][0]:.2f} at "
        f"end (a shared machine, one run: other jobs ran beside it); PostgreSQL {report['server']} on the same "
        f"machine and disk as the LMDB store (ext4, fsync on); Python {m['python']}.", "",
        f"Data: {w['vectors']}. Namespaces `small` ({w['small']:,}) and `large` ({w['large']:,}), built with "
        "`add_many` in batches of 1,000 into each store. Default engine configuration on both stores (durability "
        "`sync`, background promotion on: the PostgreSQL store listens for change notices). Ratios are ours on "
        "PostgreSQL / the peer in time (below 1: faster) or in throughput for write rows (above 1: faster).", "",
        "## Namespace load: a fresh process per sample",
        "",
        f"Medians of {o['repeats']} processes per system and size, the order rotated per repeat. open: the engine's "
        "constructor (raw: `psycopg.connect`); first search: the search that loads the namespace (raw: one SELECT "
        "of rows and codes, an int8 matrix, an exact search); second: the next search.", "",
        "| namespace | system | open ms | first search ms | second search ms | PostgreSQL / this, first search |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for namespace in ("small", "large"):
        systems = report["load"][namespace]["systems"]
        ours = systems["pg"]["median"]["first_search_s"]
        for system, result in systems.items():
            med = result["median"]
            lines.append(f"| {namespace} ({w[namespace]:,}) | {NAMES[system]} | {med['open_s'] * 1e3:.1f} | "
                         f"{med['first_search_s'] * 1e3:.1f} | {med['second_search_s'] * 1e3:.2f} | "
                         f"{'-' if system == 'pg' else ratio(ours, med['first_search_s'])} |")
    reads = report["reads"]
    lines += ["", "## Point reads and search after load (one process, systems interleaved in blocks of "
              f"{o['block']})", "",
              f"get: {o['gets']} distinct ids of `large`, namespace loaded, each id's first read (record from the "
              "cold store), then the same ids again. search: `search(vector=q, k=10)`, "
              f"{o['queries']} held-out queries, after an untimed warm-up pass, {o['rounds']} rounds.", "",
              "| operation | system | n | p50 µs | p99 µs | max µs | PostgreSQL / this, p50 | p99 |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in (("get_first_touch", "get, first touch"), ("get_again", "get, again"),
                       ("search_small", f"search, small ({w['small']:,})"),
                       ("search_large", f"search, large ({w['large']:,})")):
        ours = reads[key]["pg"]
        for system, row in reads[key].items():
            cells = ("-", "-") if system == "pg" else (ratio(ours["p50_us"], row["p50_us"]),
                                                        ratio(ours["p99_us"], row["p99_us"]))
            lines.append(f"| {label} | {NAMES[system]} | {row['n']} | {row['p50_us']:,} | {row['p99_us']:,} | "
                         f"{row['max_us']:,} | {cells[0]} | {cells[1]} |")
    part = reads["part_version_check"]
    lines += ["", "Part of a PostgreSQL search: the version check alone (`changed_elsewhere` of `large`), "
              f"n {part['n']}, p50 {part['p50_us']:,} µs, p99 {part['p99_us']:,} µs."]
    lines += ["", "Where a PostgreSQL search's time goes (cProfile over the `large` queries, top by own time):", "",
              "| function | calls | own share | cumulative share |", "|---|---:|---:|---:|"]
    for row in reads["search_profile_pg"][:8]:
        lines.append(f"| `{row['function']}` | {row['calls']} | {row['own_share']:.1%} | "
                     f"{row['cumulative_share']:.1%} |")
    lines += ["", "## Writes: 1 and 4 writer processes, every add committed before the call returns", "",
              f"add: {o['adds']} `add` calls per writer; add_many: {o['add_many_batches']} batches of {o['batch']} per "
              "writer. Throughput: memories acknowledged by all writers / wall time from the common start to the "
              f"last writer's end; median of {o['repeats']} runs (each run's throughput listed). Latency: per call, "
              "all runs pooled. LMDB's 4-writer rows are four stores (one process per LMDB directory); the "
              "shared-namespace variant has no LMDB row. Raw: the engine's bytes for one memory (record, catalog "
              "row, code, original) inserted into copies of its four tables; the engine also writes the dedup "
              "digest, the namespace's count and version, and a change notice.", "",
              "| scenario | system | memories/s | runs | p50 µs per call | p99 µs per call | CPU-s/s writers + "
              "server | ours on PostgreSQL / this, throughput |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for key, result in report["writes"].items():
        systems = result["systems"]
        ours = systems["pg"]["throughput_per_s"]
        label = f"{result['mode']}, {result['writers']} writer{'s' if result['writers'] > 1 else ''}" + \
            (", one shared namespace" if result["shared_namespace"] else "")
        for system, row in systems.items():
            lines.append(f"| {label} | {NAMES[system]} | {row['throughput_per_s']:,.0f} | "
                         f"{', '.join(f'{x:,.0f}' for x in row['throughputs'])} | {row['latency']['p50_us']:,} | "
                         f"{row['latency']['p99_us']:,} | {row['clients_cpu']:.2f} + {row['server_cpu']:.2f} | "
                         f"{'-' if system == 'pg' else ratio(ours, row['throughput_per_s'])} |")
    stale = report["staleness"]
    lines += ["", "## Staleness: a write in one process, its visibility in another", "",
              f"`benchmarks/pg_staleness.py`'s method, `notify` mode (default engine: change notices on), "
              f"{o['changes']} changes per size cycling update / add / delete. Window: first reader call showing the "
              "change returned minus the writer's call returned. Raw: a reader process polls `SELECT value ... WHERE "
              "key = %s` while this one UPDATEs the row (autocommit). LMDB: no peer (one process per store).", "",
              "| system | memories | read | n | p50 ms | p90 ms | p99 ms | max ms |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for memories, result in stale["ours"].items():
        for by in ("get", "search"):
            row = result["all"][by]
            lines.append(f"| {NAMES['pg']} | {int(memories):,} | {by} | {row['n']} | {row['p50_ms']} | "
                         f"{row['p90_ms']} | {row['p99_ms']} | {row['max_ms']} |")
    row = stale["raw"]["all"]["get"]
    lines.append(f"| {NAMES['raw']} | {o['staleness_memories'][0]:,} rows | SELECT by key | {row['n']} | "
                 f"{row['p50_ms']} | {row['p90_ms']} | {row['p99_ms']} | {row['max_ms']} |")
    lines += ["", "## Goals", "", "| goal | measured | status |", "|---|---|---|"]
    for goal in report["goals"]:
        lines.append(f"| {goal['goal']} | {goal['measured']} | {'met' if goal['met'] else '**missed**'} |")
    lines += ["", *report.get("findings", []), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DSN_DEFAULT)
    parser.add_argument("--small", type=int, default=100, help="memories in the small namespace")
    parser.add_argument("--large", type=int, default=10_000, help="memories in the large namespace")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per load figure, runs per write figure")
    parser.add_argument("--gets", type=int, default=400, help="distinct ids read")
    parser.add_argument("--queries", type=int, default=500, help="held-out queries per search round")
    parser.add_argument("--rounds", type=int, default=3, help="timed search rounds")
    parser.add_argument("--block", type=int, default=50, help="inputs per interleaved block")
    parser.add_argument("--writers", type=int, default=4, help="writer processes of the multi-writer rows")
    parser.add_argument("--adds", type=int, default=200, help="add calls per writer")
    parser.add_argument("--batch", type=int, default=100, help="memories per add_many call")
    parser.add_argument("--add-many-batches", type=int, default=8, help="add_many calls per writer")
    parser.add_argument("--changes", type=int, default=90, help="staleness changes per size")
    parser.add_argument("--staleness-memories", type=int, nargs="+", default=[100, 2_000],
                        help="namespace sizes of the staleness measure")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "postgres")
    args = parser.parse_args(argv)
    import psycopg

    from tiered_memory.corpora import load_dailydialog

    started = time.perf_counter()
    load_start = os.getloadavg()
    dd = load_dailydialog()
    base = np.asarray(dd.embeddings(), dtype=np.float32)
    stored = args.small + args.large
    if stored + 500 > len(base):
        raise SystemExit(f"--small + --large must leave 500 of DailyDialog's {len(base):,} vectors as queries")
    queries = base[-500:]
    texts = [f"{text} (#{i})" for i, text in enumerate(dd.utterances[:stored])]
    schema = f"tm_pgcold_{secrets.token_hex(4)}"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        server = admin.execute("SHOW server_version").fetchone()[0]
        admin.execute(f'CREATE SCHEMA "{schema}"')
    work = Path(tempfile.mkdtemp(prefix="pg-cold-bench-"))
    try:
        stores, ids, build_s = build(args, schema, work, base[:stored], texts)
        print("built", build_s, file=sys.stderr)
        template = raw_tables(args.dsn, schema, ids["pg"]["large"][0])
        load = measure_load(args, schema, work, stores, queries)
        reads = measure_reads(args, schema, stores, queries, ids)
        writes = measure_writes(args, schema, work, base, template)
        staleness = measure_staleness(args, work)
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    report: dict[str, Any] = {
        "command": "python benchmarks/pg_cold.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "server": server,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_start": load_start, "load_avg_end": os.getloadavg()},
        "workload": {"vectors": f"DailyDialog all-MiniLM-L6-v2 embeddings ({DIMENSION} dimensions): the first "
                                f"{stored:,} rows stored, the last 500 held out as queries; writers' rows are real "
                                "rows plus noise", "small": args.small, "large": args.large},
        "options": {key: value for key, value in vars(args).items() if key not in ("dsn", "out")},
        "build_seconds": build_s, "load": load, "reads": reads, "writes": writes, "staleness": staleness,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report["options"]["staleness_memories"] = args.staleness_memories
    report["goals"] = goals(report)
    report["findings"] = findings(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pg-cold.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "pg-cold.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
