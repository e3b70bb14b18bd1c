"""What the MCP server adds to a call: a tool call's round trip over stdio vs the engine call it wraps.

A store of 2,000 DailyDialog utterances (distinct texts, their MiniLM vectors given; the default
ONNX encoder embeds the queries) in one namespace. Two loops, each timing two arms alternately
first on the same input, so both arms see the same machine:

1. Server side alone, before any server runs: ``MemoryTools.call`` (argument check, engine call,
   token budget) in this process beside the engine call on the same store.
2. Round trips: `tiered-memory mcp --path STORE --namespace bench` spawned by the SDK's own stdio
   client, timed in the client from the request to the parsed result (JSON-RPC over two pipes, the
   server's side, a worker-thread hop), beside the engine call in this process on the store opened
   read-only (what a second process may do beside the server's writer).

Calls: `search_memories {"query": q, "k": 5}` vs `search(q, namespace="bench", k=5)` on held-out
utterances, each new to the process that encodes it (no query-cache hit: the encoding is in every
arm); `get_memory {"id": i}` vs `get(i)` on stored ids in a shuffled order; and an MCP `ping`, the
protocol's round trip with no tool behind it. The first `warmup` iterations of each loop are not
kept. Reported: p50, p90, p99, max, and the ratio and difference of the medians.

    python benchmarks/mcp_roundtrip.py --out benchmarks/results/frontends
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"


def corpus(n: int, queries: int) -> tuple[list[str], np.ndarray | None, list[str], str]:
    """Distinct DailyDialog utterances: n to store (with their vectors) and `queries` held out;
    without the data set, made-up sentences that the model embeds."""
    from tiered_memory.corpora import DatasetNotFoundError, load_dailydialog

    try:
        dialog = load_dailydialog()
        vectors = dialog.embeddings()
    except DatasetNotFoundError as err:
        print(f"DailyDialog not found ({err}); using made-up sentences embedded by the model", file=sys.stderr)
        rng = np.random.default_rng(0)
        words = "user prefers tea coffee project launch meeting report flight hotel budget deadline".split()
        texts = [" ".join(rng.choice(words, 8)) + f" #{i}" for i in range(n + queries)]
        return texts[:n], None, texts[n:], "made-up sentences (DailyDialog absent), embedded by the default encoder"
    seen: set[str] = set()
    rows: list[int] = []
    for row, text in enumerate(dialog.utterances):
        key = text.casefold()
        if key not in seen and len(text) > 20:
            seen.add(key)
            rows.append(row)
        if len(rows) == n + queries:
            break
    stored = rows[:n]
    return ([dialog.utterances[r] for r in stored], np.asarray(vectors[stored], dtype=np.float32),
            [dialog.utterances[r] for r in rows[n:]], "DailyDialog: distinct utterances, their MiniLM vectors given")


def build(path: Path, texts: list[str], vectors: np.ndarray | None) -> list[str]:
    from tiered_memory import TieredMemory

    with TieredMemory(path) as mem:
        ids = []
        for start in range(0, len(texts), 500):
            ids += mem.add_many(texts[start:start + 500], namespace=NAMESPACE,
                                vectors=None if vectors is None else vectors[start:start + 500])
        mem.wait_idle()
    return ids


def summary(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def timed(call: Any, *args: Any) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


async def timed_tool(session: Any, name: str, arguments: dict[str, Any]) -> float:
    started = time.perf_counter()
    result = await session.call_tool(name, arguments)
    elapsed = time.perf_counter() - started
    if result.is_error:
        raise RuntimeError(result.content[0].text)
    return elapsed


def server_side(path: Path, get_ids: list[str], queries: list[str], args: argparse.Namespace
                ) -> dict[str, list[float]]:
    """The server's own work without the protocol: MemoryTools.call in this process beside the
    engine call, alternately first. The tool's query gets a trailing space, which the tokenizer
    drops: the same encoding work without a hit in the query cache the engine call just filled."""
    from tiered_memory import TieredMemory
    from tiered_memory.integrations.mcp_server import MemoryTools

    samples: dict[str, list[float]] = {"engine.search.writer": [], "tools.search": [],
                                       "engine.get.writer": [], "tools.get": []}
    with TieredMemory(path) as mem:
        tools = MemoryTools(mem, [NAMESPACE])
        for i, query in enumerate(queries):
            pair = [("engine.search.writer", lambda q=query: mem.search(q, namespace=NAMESPACE, k=5)),
                    ("tools.search", lambda q=query: tools.call("search_memories", {"query": q + " ", "k": 5}))]
            for key, call in pair[::1 if i % 2 else -1]:
                elapsed = timed(call)
                if i >= args.warmup:
                    samples[key].append(elapsed)
        for i, memory_id in enumerate(get_ids):
            pair = [("engine.get.writer", lambda m=memory_id: mem.get(m)),
                    ("tools.get", lambda m=memory_id: tools.call("get_memory", {"id": m}))]
            for key, call in pair[::1 if i % 2 else -1]:
                elapsed = timed(call)
                if i >= args.warmup:
                    samples[key].append(elapsed)
    return samples


async def round_trips(path: Path, get_ids: list[str], queries: list[str], args: argparse.Namespace
                      ) -> dict[str, list[float]]:
    """The tool call over stdio (the server spawned by the SDK's client) beside the engine call in
    this process (the store opened read-only), alternately first; then a ping."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    from tiered_memory import TieredMemory

    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env |= {k: v for k, v in os.environ.items() if k.startswith("TIERED_MEMORY_") or k == "XDG_CACHE_HOME"}
    command = ["-m", "tiered_memory.cli", "mcp", "--path", str(path), "--namespace", NAMESPACE]
    params = StdioServerParameters(command=sys.executable, args=command, env=env)
    samples: dict[str, list[float]] = {"engine.search": [], "mcp.search": [], "engine.get": [], "mcp.get": [],
                                       "mcp.ping": []}
    with TieredMemory(path, read_only=True) as engine:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await session.list_tools()
            for i, query in enumerate(queries):
                engine_first = i % 2 == 0
                if engine_first:
                    direct = timed(lambda q=query: engine.search(q, namespace=NAMESPACE, k=5))
                over_mcp = await timed_tool(session, "search_memories", {"query": query, "k": 5})
                if not engine_first:
                    direct = timed(lambda q=query: engine.search(q, namespace=NAMESPACE, k=5))
                if i >= args.warmup:
                    samples["engine.search"].append(direct)
                    samples["mcp.search"].append(over_mcp)
            for i, memory_id in enumerate(get_ids):
                engine_first = i % 2 == 0
                if engine_first:
                    direct = timed(engine.get, memory_id)
                over_mcp = await timed_tool(session, "get_memory", {"id": memory_id})
                if not engine_first:
                    direct = timed(engine.get, memory_id)
                started = time.perf_counter()
                await session.send_ping()
                ping = time.perf_counter() - started
                if i >= args.warmup:
                    samples["engine.get"].append(direct)
                    samples["mcp.get"].append(over_mcp)
                    samples["mcp.ping"].append(ping)
    return samples


ROWS = (
    ("engine.search", "engine `search(text, k=5)` (read-only, this process)"),
    ("mcp.search", "MCP `search_memories` round trip"),
    ("engine.get", "engine `get(id)` (read-only, this process)"),
    ("mcp.get", "MCP `get_memory` round trip"),
    ("mcp.ping", "MCP `ping` round trip (no tool)"),
    ("engine.search.writer", "engine `search` (writer, in process)"),
    ("tools.search", "server side alone: `MemoryTools.call(\"search_memories\")`"),
    ("engine.get.writer", "engine `get` (writer, in process)"),
    ("tools.get", "server side alone: `MemoryTools.call(\"get_memory\")`"),
)


def render(report: dict[str, Any]) -> str:
    machine, rows, overhead = report["machine"], report["results"], report["overhead"]
    lines = [
        "# MCP server: a tool call's round trip over stdio vs the engine call it wraps", "",
        f"`{report['command']}`, {report['date']}; {machine['cpus']} CPUs, load average "
        f"{machine['load_avg_start'][0]:.2f} at start, {machine['load_avg_end'][0]:.2f} at end (a shared machine: "
        "read the ratios, measured alternately in one run, not the absolute figures); Python "
        f"{machine['python']}, mcp {machine['mcp']}, commit {report['commit']}.", "",
        f"{report['memories']:,} memories in one namespace ({report['data']}). Round trips: the server spawned by the "
        "SDK's stdio client, timed in the client from request to parsed result, beside the engine opened read-only "
        "in the benchmark's process, on the same input, the two alternately first. Server side alone: before the "
        "server starts, the tools layer called in process beside the engine (writer), alternately first. "
        f"{report['warmup']} warm-up iterations not kept in each loop. Search: k=5, hybrid, each query new (its "
        "encoding included everywhere). Get: stored ids in random order, each a few times.", "",
        "| call | n | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|",
    ]
    for key, label in ROWS:
        row = rows[key]
        lines.append(f"| {label} | {row['n']:,} | {row['p50_ms']:.3f} ms | {row['p90_ms']:.3f} ms | "
                     f"{row['p99_ms']:.3f} ms | {row['max_ms']:.2f} ms |")
    lines += ["", "MCP round trip ÷ engine call, medians: " + "; ".join(
        f"{op} {overhead[op]['ratio_p50']:.2f}x" for op in ("search", "get"))
        + ". Time added, median of the per-iteration differences (the two arms ran back to back): " + "; ".join(
        f"{op} +{overhead[op]['added_paired_median_ms']:.3f} ms, of which the server's tools layer "
        f"+{overhead[op]['tools_added_paired_median_ms']:.3f} ms" for op in ("search", "get"))
        + f". The protocol's own round trip, a ping with no tool behind it: {rows['mcp.ping']['p50_ms']:.3f} ms."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=2_000)
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--gets", type=int, default=1_000)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "frontends")
    args = parser.parse_args(argv)

    import anyio

    load_avg_start = os.getloadavg()
    started = time.perf_counter()
    texts, vectors, queries, data = corpus(args.memories, args.warmup + args.searches)
    with tempfile.TemporaryDirectory(prefix="mcp-roundtrip-") as workdir:
        path = Path(workdir) / "store"
        ids = build(path, texts, vectors)
        rng = np.random.default_rng(1)
        get_ids = [ids[i] for i in rng.integers(len(ids), size=args.warmup + args.gets)]
        samples = server_side(path, get_ids, queries, args)
        samples |= anyio.run(round_trips, path, get_ids, queries, args)
    results = {key: summary(values) for key, values in samples.items()}
    p50 = {key: row["p50_ms"] for key, row in results.items()}

    def paired(a: str, b: str) -> float:
        """Median of the per-iteration differences: the two arms of an iteration ran back to back,
        so this cancels most of what a busy machine adds to both (more robust than p50 - p50)."""
        return float(np.median(np.asarray(samples[a]) - np.asarray(samples[b])) * 1e3)

    overhead = {op: {"ratio_p50": p50[f"mcp.{op}"] / p50[f"engine.{op}"],
                     "added_p50_ms": p50[f"mcp.{op}"] - p50[f"engine.{op}"],
                     "added_paired_median_ms": paired(f"mcp.{op}", f"engine.{op}"),
                     "tools_added_paired_median_ms": paired(f"tools.{op}", f"engine.{op}.writer")}
                for op in ("search", "get")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    report = {
        "command": "python benchmarks/mcp_roundtrip.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit.strip(), "data": data,
        "memories": len(ids), "warmup": args.warmup, "searches": args.searches, "gets": args.gets,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "mcp": version("mcp"),
                    "load_avg_start": load_avg_start, "load_avg_end": os.getloadavg()},
        "results": results, "overhead": overhead, "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mcp.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render(report)
    (args.out / "mcp.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
