"""What the MCP server adds to a call: a tool call's round trip over stdio vs the engine call it wraps.

A store of 2,000 DailyDialog utterances (distinct texts, their MiniLM vectors given; the default
ONNX encoder embeds the queries) in one namespace. `tiered-memory mcp --path STORE --namespace
bench` is spawned by the SDK's own stdio client; this process also opens the store read-only
(what a second process may do beside the server's writer) and calls the engine directly. Each
iteration times the two in alternation on the same input, so both arms see the same machine:

- `search_memories {"query": q, "k": 5}` vs `search(q, namespace="bench", k=5)`: held-out
  utterances, each query new to both processes (no query-cache hit: the encoding is in both);
- `get_memory {"id": i}` vs `get(i)`: stored ids in a shuffled order, each a few times over;
- an MCP `ping`: the protocol's round trip with no tool behind it.

The round trip is measured in the client from the request to the parsed result: JSON-RPC over two
pipes, the server's argument check, the engine call in a worker thread, the token budget on the
returned text, and the result's serialization and parsing. The first `warmup` iterations are not
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


async def measure(path: Path, ids: list[str], queries: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    from tiered_memory import TieredMemory

    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env |= {k: v for k, v in os.environ.items() if k.startswith("TIERED_MEMORY_") or k == "XDG_CACHE_HOME"}
    command = ["-m", "tiered_memory.cli", "mcp", "--path", str(path), "--namespace", NAMESPACE]
    params = StdioServerParameters(command=sys.executable, args=command, env=env)
    samples: dict[str, list[float]] = {key: [] for key in
                                       ("mcp.search", "engine.search", "mcp.get", "engine.get", "mcp.ping")}
    rng = np.random.default_rng(1)
    get_ids = [ids[i] for i in rng.integers(len(ids), size=args.warmup + args.gets)]
    clock = time.perf_counter
    with TieredMemory(path, read_only=True) as engine:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await session.list_tools()
            for i, query in enumerate(queries[:args.warmup + args.searches]):
                keep = i >= args.warmup
                started = clock()
                engine.search(query, namespace=NAMESPACE, k=5)
                middle = clock()
                result = await session.call_tool("search_memories", {"query": query, "k": 5})
                ended = clock()
                if result.is_error:
                    raise RuntimeError(result.content[0].text)
                if keep:
                    samples["engine.search"].append(middle - started)
                    samples["mcp.search"].append(ended - middle)
            for i, memory_id in enumerate(get_ids):
                keep = i >= args.warmup
                started = clock()
                engine.get(memory_id)
                middle = clock()
                result = await session.call_tool("get_memory", {"id": memory_id})
                ended = clock()
                await session.send_ping()
                pinged = clock()
                if result.is_error:
                    raise RuntimeError(result.content[0].text)
                if keep:
                    samples["engine.get"].append(middle - started)
                    samples["mcp.get"].append(ended - middle)
                    samples["mcp.ping"].append(pinged - ended)
    return samples


def render(report: dict[str, Any]) -> str:
    machine, rows = report["machine"], report["results"]
    lines = [
        "# MCP server: a tool call's round trip over stdio vs the engine call it wraps", "",
        f"`{report['command']}`, {report['date']}; {machine['cpus']} CPUs, load average "
        f"{machine['load_avg_start'][0]:.2f} at start, {machine['load_avg_end'][0]:.2f} at end (a shared machine: "
        "read the ratios, measured alternately in one run, not the absolute figures); Python "
        f"{machine['python']}, mcp {machine['mcp']}, commit {report['commit']}.", "",
        f"{report['memories']:,} memories in one namespace ({report['data']}); the server spawned by the SDK's stdio "
        "client, the engine opened read-only in the benchmark's process; each iteration times the engine call, then "
        f"the tool call, on the same input; {report['warmup']} warm-up iterations not kept. Search: k=5, hybrid, each "
        "query new to both processes (its encoding included in both). Get: stored ids in random order.", "",
        "| call | n | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|",
    ]
    for key, label in (("engine.search", "engine `search(text, k=5)`"), ("mcp.search", "MCP `search_memories`"),
                       ("engine.get", "engine `get(id)`"), ("mcp.get", "MCP `get_memory`"),
                       ("mcp.ping", "MCP `ping` (no tool)")):
        row = rows[key]
        lines.append(f"| {label} | {row['n']:,} | {row['p50_ms']:.3f} ms | {row['p90_ms']:.3f} ms | "
                     f"{row['p99_ms']:.3f} ms | {row['max_ms']:.2f} ms |")
    overhead = report["overhead"]
    lines += ["", f"MCP ÷ engine, medians: search {overhead['search']['ratio_p50']:.2f}x "
                  f"(+{overhead['search']['added_p50_ms']:.3f} ms), get {overhead['get']['ratio_p50']:.1f}x "
                  f"(+{overhead['get']['added_p50_ms']:.3f} ms). Of the time added, the protocol's own round trip "
                  f"(a ping, no tool behind it) takes {rows['mcp.ping']['p50_ms']:.3f} ms at the median; the rest is "
                  "the server's side of a tool call: the argument check, the worker-thread hop, the token budget and "
                  "the result's serialization."]
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
        samples = anyio.run(measure, path, ids, queries, args)
    results = {key: summary(values) for key, values in samples.items()}
    overhead = {op: {"ratio_p50": results[f"mcp.{op}"]["p50_ms"] / results[f"engine.{op}"]["p50_ms"],
                     "added_p50_ms": results[f"mcp.{op}"]["p50_ms"] - results[f"engine.{op}"]["p50_ms"]}
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
