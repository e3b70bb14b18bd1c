"""Offline sync: changes each way, conflicts, and a sync with nothing to do.

- **Each way**: a device store and a server store (LMDB, and PostgreSQL when a server answers)
  each add N memories (N/1,000 namespaces), then one sync moves N each way: seconds, bytes per
  change. Peer in the same run: writing the same N memories with ``add_many`` (vectors given).
- **Conflicts**: both sides then change the same C memories (text and vector), the server later;
  one sync resolves them: conflicts per second of that sync. Peer: the same sync when only one
  side changed those memories (no conflict).
- **Nothing to do**: a device of S memories (S/100 namespaces) synced once, then syncs with no
  change on either side: p50/p90 over repeats (goal: p50 <= 50 ms at 100k memories). Peer: the
  same at S/10, for how it grows.

Vectors: DailyDialog's MiniLM embeddings plus noise (``corpora.scaled_vectors``); no model runs.

    python benchmarks/sync.py --changes 10000 --conflicts 2000 --store 100000 --out benchmarks/results/sync
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def vectors_for(n: int, seed: int) -> np.ndarray:
    from tiered_memory.corpora import load_dailydialog, scaled_vectors

    return scaled_vectors(load_dailydialog().embeddings(), n, seed=seed)


def fill(mem: Any, n: int, per_namespace: int, tag: str, seed: int) -> tuple[float, list[str]]:
    vectors = vectors_for(n, seed)
    ids: list[str] = []
    started = time.perf_counter()
    for start in range(0, n, per_namespace):
        chunk = vectors[start:start + per_namespace]
        ids += mem.add_many([f"{tag} memory {start + i}: something the user said" for i in range(len(chunk))],
                            namespace=f"ns{start // per_namespace}", vectors=chunk, dedup=False)
    return time.perf_counter() - started, ids


def open_server(kind: str, root: Path, dsn: str | None, schema: str | None) -> Any:
    from tiered_memory import TieredMemory

    if kind == "lmdb":
        return TieredMemory(root / "server", encoder=None, dimension=384)
    from tiered_memory.tiers.pg_cold import postgres_cold

    return TieredMemory(root / "server-cache", encoder=None, dimension=384, cold=postgres_cold(dsn, schema=schema))


def each_way(kind: str, n: int, conflicts: int, dsn: str | None) -> dict[str, Any]:
    from tiered_memory import TieredMemory

    root = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    schema = f"sync_bench_{os.getpid()}" if kind == "postgres" else None
    if schema:
        _schema(dsn, schema, create=True)
    try:
        device = TieredMemory(root / "device", encoder=None, dimension=384)
        server = open_server(kind, root, dsn, schema)
        add_device_s, device_ids = fill(device, n, 1_000, "device", seed=1)
        add_server_s, server_ids = fill(server, n, 1_000, "server", seed=2)
        report = device.sync(server)
        settle = device.sync(server)
        moved = report.pushed + report.pulled
        # Conflicts: both change the same memories, the server later (it wins).
        chosen = device_ids[:conflicts]
        new = vectors_for(conflicts, seed=3)
        for i, memory_id in enumerate(chosen):
            device.update(memory_id, text=f"device changed {i}", vector=new[i])
        for i, memory_id in enumerate(chosen):
            server.update(memory_id, text=f"server changed {i}", vector=new[i])
        merge = device.sync(server)
        device.sync(server)
        # Peer: the same number of changes on one side only.
        for i, memory_id in enumerate(server_ids[:conflicts]):
            server.update(memory_id, text=f"server alone {i}", vector=new[i])
        plain = device.sync(server)
        assert device.get(chosen[0]).text == server.get(chosen[0]).text == "server changed 0"
        device.close()
        server.close()
        return {
            "store": kind, "changes_each_way": n,
            "add_many_device_s": add_device_s, "add_many_server_s": add_server_s,
            "sync_s": report.seconds, "pushed": report.pushed, "pulled": report.pulled,
            "bytes": report.bytes_sent + report.bytes_received, "bytes_per_change": (report.bytes_sent +
                                                                                    report.bytes_received) / moved,
            "changes_per_s": moved / report.seconds, "settle_sync_s": settle.seconds,
            "sync_vs_add_many": report.seconds / (add_device_s + add_server_s),
            "conflicts": len(merge.conflicts), "conflict_sync_s": merge.seconds,
            "conflicts_per_s": len(merge.conflicts) / merge.seconds,
            "one_sided_sync_s": plain.seconds, "conflict_vs_one_sided": merge.seconds / plain.seconds,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if schema:
            _schema(dsn, schema, create=False)


def nothing_to_do(size: int, repeats: int, kind: str, dsn: str | None) -> dict[str, Any]:
    from tiered_memory import TieredMemory

    root = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    schema = f"sync_bench_noop_{os.getpid()}" if kind == "postgres" else None
    if schema:
        _schema(dsn, schema, create=True)
    try:
        device = TieredMemory(root / "device", encoder=None, dimension=384, durability="async")
        fill(device, size, 100, "device", seed=4)
        device.close()
        device = TieredMemory(root / "device", encoder=None, dimension=384)
        other = open_server(kind, root, dsn, schema)
        first = device.sync(other)
        device.sync(other)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            idle = device.sync(other)
            times.append(time.perf_counter() - started)
            assert idle.pushed == idle.pulled == idle.batches == 0
        device.close()
        other.close()
        return {"remote": kind, "store_size": size, "namespaces": size // 100, "first_sync_s": first.seconds,
                "noop_p50_ms": 1000 * statistics.median(times),
                "noop_p90_ms": 1000 * float(np.percentile(times, 90)), "repeats": repeats}
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if schema:
            _schema(dsn, schema, create=False)


def _schema(dsn: str | None, schema: str, create: bool) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if create:
            conn.execute(f'CREATE SCHEMA "{schema}"')


def render(result: dict[str, Any]) -> str:
    lines = ["# Offline sync", "", f"Run {result['started']} on {result['machine']}; load average "
             f"{result['load_start']} at the start, {result['load_end']} at the end (a shared 2-core machine). "
             "Command: `python benchmarks/sync.py " + " ".join(result["argv"]) + "`.", "",
             "## Changes each way", "",
             "| store | changes each way | sync s | changes/s | bytes/change | add_many both sides s (peer) | "
             "sync / add_many | settle sync s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["each_way"]:
        lines.append(f"| {row['store']} | {row['changes_each_way']:,} | {row['sync_s']:.2f} | "
                     f"{row['changes_per_s']:,.0f} | {row['bytes_per_change']:,.0f} | "
                     f"{row['add_many_device_s'] + row['add_many_server_s']:.2f} | {row['sync_vs_add_many']:.2f}x | "
                     f"{row['settle_sync_s']:.2f} |")
    lines += ["", "## Conflicts", "", "| store | conflicts | sync s | conflicts/s | one-sided sync s (peer) | ratio |",
              "|---|---:|---:|---:|---:|---:|"]
    for row in result["each_way"]:
        lines.append(f"| {row['store']} | {row['conflicts']:,} | {row['conflict_sync_s']:.2f} | "
                     f"{row['conflicts_per_s']:,.0f} | {row['one_sided_sync_s']:.2f} | "
                     f"{row['conflict_vs_one_sided']:.2f}x |")
    lines += ["", "## A sync with nothing to do (an LMDB device and its remote)", "",
              "| remote | store size | namespaces | first sync s | no-op p50 ms | no-op p90 ms |",
              "|---|---:|---:|---:|---:|---:|"]
    for row in result["nothing_to_do"]:
        lines.append(f"| {row['remote']} | {row['store_size']:,} | {row['namespaces']:,} | {row['first_sync_s']:.1f} | "
                     f"{row['noop_p50_ms']:.1f} | {row['noop_p90_ms']:.1f} |")
    size = max(row["store_size"] for row in result["nothing_to_do"])
    for row in result["nothing_to_do"]:
        if row["store_size"] == size:
            lines += ["", f"Goal: no-op p50 <= 50 ms at {size:,} memories ({row['remote']} remote): "
                      f"**{'met' if row['noop_p50_ms'] <= 50 else 'missed'}** ({row['noop_p50_ms']:.1f} ms)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--conflicts", type=int, default=2_000)
    parser.add_argument("--store", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--dsn", default=os.environ.get("TIERED_MEMORY_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sync"))
    args = parser.parse_args()
    import sys

    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                              "load_start": round(os.getloadavg()[0], 2), "argv": sys.argv[1:]}
    kinds = ["lmdb"] + ([] if args.no_postgres else ["postgres"])
    result["each_way"] = [each_way(kind, args.changes, args.conflicts, args.dsn) for kind in kinds]
    result["nothing_to_do"] = [nothing_to_do(size, args.repeats, kind, args.dsn) for kind in kinds
                               for size in (args.store // 10, args.store)]
    result["load_end"] = round(os.getloadavg()[0], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sync.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "sync.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
