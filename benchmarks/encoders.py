"""The text path per encoder backend: PyTorch (the peer) and ONNX Runtime float32 / int8, in one run.

Speed: export time (fresh cache), load time (cached), single-sentence encode p50/p99 (intra-op
threads 1 and 2 for ONNX; torch with its default of one thread per core), batch throughput
(``encode`` of 500 utterances, and ``add_many`` with texts into a fresh store), ``search(text)``
p50 end to end (uncached queries over a 5k-utterance store), RSS of the loaded model (a fresh
process per backend). Single-query timings are interleaved: blocks of 20 queries, every backend
in turn, the order rotating, after one untimed warm-up block.

Quality, against float32 PyTorch vectors computed in this run: cosine between backends (min and
mean) over a 5,000-utterance DailyDialog subsample (seed 0) plus 500 held-out query utterances;
DailyDialog recall@10 of each backend's vectors (exact search, tie-aware: a result counts when its
PyTorch similarity reaches the 10th best minus 1e-5); LoCoMo dev evidence recall@10 and hit@10 per
backend (exact search per conversation, as reports/locomo_eval.py does).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encoders.py      # 13 minutes on 2 cores at load average 4
    .venv/bin/python benchmarks/encoders.py --quick                # smaller samples, about 5 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory import MiniLMEncoder, OnnxMiniLMEncoder, TieredMemory
from tiered_memory.bench.machine import describe_machine
from tiered_memory.bench.stats import summarize
from tiered_memory.corpora import load_dailydialog, load_locomo
from tiered_memory.onnx_encoder import ensure_exported
from tiered_memory.reports.locomo_eval import encode_conversations, evidence_quality

K = 10
OUT = Path(__file__).resolve().parent / "results"
RSS_PROBE = """
import json, sys, time
from tiered_memory.bench.machine import rss_parts
import tiered_memory
before = rss_parts()
backend, threads = sys.argv[1], int(sys.argv[2])
encoder = (tiered_memory.MiniLMEncoder() if backend == "torch"
           else tiered_memory.OnnxMiniLMEncoder("float" if backend == "onnx" else "int8", threads=threads))
started = time.perf_counter()
encoder.encode(["warm up"])
loaded_s = time.perf_counter() - started
after = rss_parts()
print(json.dumps({"rss_before": before["rss"], "rss_after": after["rss"], "anon_added": after["anon"] - before["anon"],
                  "load_and_first_encode_s": loaded_s, "torch_imported": "torch" in sys.modules}))
"""


def backends(cache: Path) -> dict[str, Any]:
    return {
        "torch": MiniLMEncoder(),
        "onnx-t1": OnnxMiniLMEncoder("float", threads=1, cache_dir=cache),
        "onnx-t2": OnnxMiniLMEncoder("float", threads=2, cache_dir=cache),
        "onnx-int8-t1": OnnxMiniLMEncoder("int8", threads=1, cache_dir=cache),
        "onnx-int8-t2": OnnxMiniLMEncoder("int8", threads=2, cache_dir=cache),
    }


def interleaved_single(encoders: dict[str, Any], texts: list[str], block: int = 20) -> dict[str, list[int]]:
    samples: dict[str, list[int]] = {name: [] for name in encoders}
    names = list(encoders)
    blocks = [texts[i:i + block] for i in range(0, len(texts), block)]
    for b, chunk in enumerate([blocks[0], *blocks]):
        order = names[b % len(names):] + names[:b % len(names)]
        for name in order:
            for text in chunk:
                started = time.perf_counter_ns()
                encoders[name].encode([text])
                if b:  # block 0 is the warm-up
                    samples[name].append(time.perf_counter_ns() - started)
    return samples


def rss_of(backend: str, threads: int, cache: Path) -> dict[str, Any]:
    env = {**os.environ, "TIERED_MEMORY_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, backend, str(threads)], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return json.loads(out)


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    c = (a * b).sum(axis=1)
    return {"min": float(c.min()), "mean": float(c.mean()), "p01": float(np.percentile(c, 1))}


def tie_aware_recall(corpus: np.ndarray, queries: np.ndarray, truth_corpus: np.ndarray,
                     truth_queries: np.ndarray) -> float:
    exact = truth_queries @ truth_corpus.T
    kth = np.sort(exact, axis=1)[:, -K]
    found = np.argsort(-(queries @ corpus.T), axis=1)[:, :K]
    return float(np.mean(np.take_along_axis(exact, found, axis=1) >= kth[:, None] - 1e-5))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    corpus_n, query_n, single_n = (1000, 100, 60) if args.quick else (5000, 500, 200)
    machine = describe_machine()
    result: dict[str, Any] = {"machine": machine, "settings": {"corpus": corpus_n, "queries": query_n,
                                                               "single_queries": single_n, "k": K}}
    dd = load_dailydialog()
    utterances = dd.utterances
    rng = np.random.default_rng(0)
    # Distinct texts only, so no query has its own twin in the corpus.
    distinct = list(dict.fromkeys(utterances))
    pick = rng.permutation(len(distinct))
    corpus = [distinct[i] for i in pick[:corpus_n]]
    queries = [distinct[i] for i in pick[corpus_n:corpus_n + query_n]]
    singles = [distinct[i] for i in pick[corpus_n + query_n:corpus_n + query_n + single_n]]

    with tempfile.TemporaryDirectory(prefix="tm-encoders-") as scratch:
        cache = Path(scratch) / "cache"
        export_s = {}
        for variant in ("float", "int8"):
            started = time.perf_counter()
            ensure_exported(MiniLMEncoder().model_path, variant, cache)
            export_s[variant] = time.perf_counter() - started
        result["export_s"] = export_s
        print("export", export_s, flush=True)
        encoders = backends(cache)
        load_s = {}
        for name, encoder in encoders.items():
            started = time.perf_counter()
            encoder.encode(["warm up"])
            load_s[name] = time.perf_counter() - started
        result["load_and_first_encode_s"] = load_s

        samples = interleaved_single(encoders, singles)
        result["single"] = {name: summarize(s) for name, s in samples.items()}
        print("single p50 ms", {n: round(r["p50_us"] / 1e3, 2) for n, r in result["single"].items()}, flush=True)

        batch_texts = corpus[:500]
        vectors: dict[str, np.ndarray] = {}
        result["batch"] = {}
        for name, encoder in encoders.items():
            started = time.perf_counter()
            encoder.encode(batch_texts)
            encode_s = time.perf_counter() - started
            with TieredMemory(Path(scratch) / f"add-{name}", encoder=encoder) as mem:
                started = time.perf_counter()
                mem.add_many(batch_texts, namespace="bench")
                add_s = time.perf_counter() - started
            result["batch"][name] = {"encode_per_s": len(batch_texts) / encode_s,
                                     "add_many_per_s": len(batch_texts) / add_s}
        print("batch", result["batch"], flush=True)

        quality_backends = {"torch": "torch", "onnx": "onnx-t2", "onnx-int8": "onnx-int8-t2"}
        for label, name in quality_backends.items():
            vectors[label] = encoders[name].encode(corpus + queries)
        truth = vectors["torch"]
        result["dailydialog"] = {}
        for label, v in vectors.items():
            result["dailydialog"][label] = {
                "cosine_vs_torch": cosines(v, truth),
                "recall@10": tie_aware_recall(v[:corpus_n], v[corpus_n:], truth[:corpus_n], truth[corpus_n:]),
            }
        shared = dd.embeddings()
        index = {text: i for i, text in enumerate(utterances)}
        result["dailydialog"]["torch"]["cosine_vs_shared_embeddings"] = cosines(
            truth, np.asarray(shared[[index[t] for t in corpus + queries]]))
        print("dailydialog", json.dumps(result["dailydialog"]), flush=True)

        # search(text) end to end on a store of the corpus, vectors from the same backend.
        result["search_text"] = {}
        search_samples: dict[str, list[int]] = {}
        stores = {}
        for label, name in (("torch", "torch"), ("onnx-t1", "onnx-t1"), ("onnx-t2", "onnx-t2"),
                            ("onnx-int8-t1", "onnx-int8-t1")):
            key = "onnx-int8" if "int8" in label else "onnx" if "onnx" in label else "torch"
            mem = TieredMemory(Path(scratch) / f"search-{label}", encoder=encoders[name], durability="async")
            mem.add_many(corpus, namespace="bench", vectors=vectors[key][:corpus_n])
            stores[label] = mem
            search_samples[label] = []
        texts = singles  # not in the store's query cache: each search encodes
        for b in range(0, len(texts), 20):
            order = list(stores)[(b // 20) % len(stores):] + list(stores)[:(b // 20) % len(stores)]
            for label in order:
                for text in texts[b:b + 20]:
                    started = time.perf_counter_ns()
                    stores[label].search(text, namespace="bench", k=K)
                    search_samples[label].append(time.perf_counter_ns() - started)
        for label, mem in stores.items():
            result["search_text"][label] = summarize(search_samples[label])
            mem.close()
        print("search", {n: round(r["p50_us"] / 1e3, 2) for n, r in result["search_text"].items()}, flush=True)

        conversations = load_locomo()
        result["locomo"] = {}
        for label, name in quality_backends.items():
            data, seconds = encode_conversations(conversations, encoders[name])
            found, questions = [], []
            for conv in data:
                top = np.argsort(-(conv.queries @ conv.turns.T), axis=1)[:, :K]
                found.extend([[conv.turn_ids[i] for i in row] for row in top.tolist()])
                questions.extend(conv.questions)
            recall, hit = evidence_quality(found, questions)
            result["locomo"][label] = {"evidence_recall@10": recall, "hit@10": hit, "questions": len(questions),
                                       "encode_s": seconds}
        print("locomo", result["locomo"], flush=True)
        del encoders
        result["rss"] = {name: rss_of(backend, threads, cache) for name, backend, threads in
                         (("torch", "torch", 0), ("onnx-t1", "onnx", 1), ("onnx-int8-t1", "onnx-int8", 1))}
        print("rss", result["rss"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "encoders-quick" if args.quick else "encoders"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{name}.md").write_text(render(result))
    print(render(result))
    return 0


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    s = r["settings"]
    torch_single = r["single"]["torch"]["p50_us"]
    lines = [
        "# Encoder backends: PyTorch vs ONNX Runtime (float32, int8)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load {m['load_average_1m']:.2f} at start, Python {m['python']}, "
        f"torch {m['libraries'].get('torch')}, onnxruntime {m['libraries'].get('onnxruntime')}, "
        f"revision {m['git_revision']}. DailyDialog: {s['corpus']} distinct utterances + {s['queries']} "
        f"held-out queries (seed 0); {s['single_queries']} single-sentence queries, interleaved.", "",
        f"Export (fresh cache): float {r['export_s']['float']:.1f} s, int8 {r['export_s']['int8']:.1f} s.", "",
        "| backend | load (cached) s | single p50 ms | single p99 ms | p50 vs torch | encode /s (500 texts) "
        "| add_many texts /s | search(text) p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, single in r["single"].items():
        search = r["search_text"].get(name)
        lines.append(
            f"| {name} | {r['load_and_first_encode_s'][name]:.2f} | {single['p50_us'] / 1e3:.2f} | "
            f"{single['p99_us'] / 1e3:.2f} | {single['p50_us'] / torch_single:.2f}x | "
            f"{r['batch'][name]['encode_per_s']:.0f} | {r['batch'][name]['add_many_per_s']:.0f} | "
            f"{search['p50_us'] / 1e3:.2f} |" if search else
            f"| {name} | {r['load_and_first_encode_s'][name]:.2f} | {single['p50_us'] / 1e3:.2f} | "
            f"{single['p99_us'] / 1e3:.2f} | {single['p50_us'] / torch_single:.2f}x | "
            f"{r['batch'][name]['encode_per_s']:.0f} | {r['batch'][name]['add_many_per_s']:.0f} | — |")
    lines += ["", "| backend | cosine vs torch min | mean | DailyDialog recall@10 | LoCoMo evidence recall@10 "
              "| LoCoMo hit@10 |", "|---|---|---|---|---|---|"]
    for label, q in r["dailydialog"].items():
        loc = r["locomo"][label]
        lines.append(f"| {label} | {q['cosine_vs_torch']['min']:.6f} | {q['cosine_vs_torch']['mean']:.6f} | "
                     f"{q['recall@10']:.4f} | {loc['evidence_recall@10']:.4f} | {loc['hit@10']:.4f} |")
    lines += ["", "| backend (fresh process) | RSS after import MiB | RSS with model MiB | heap added MiB "
              "| load + first encode s | torch imported |", "|---|---|---|---|---|---|"]
    for name, x in r["rss"].items():
        lines.append(f"| {name} | {x['rss_before'] / 2**20:.0f} | {x['rss_after'] / 2**20:.0f} | "
                     f"{x['anon_added'] / 2**20:.0f} | {x['load_and_first_encode_s']:.2f} | {x['torch_imported']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
