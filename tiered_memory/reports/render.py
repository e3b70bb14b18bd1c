"""Writing the quantization report: Markdown tables, a JSON file with every number, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory.reports.machine import machine_markdown
from tiered_memory.reports.plots import plot_recall_vs_bytes, plot_recall_vs_latency

STEM = "quantization"
ENGINE_EF = 64  # MemoryConfig.hnsw_ef_search: the ef the summary quotes
TARGET_RELATIVE = 0.99


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _num(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _int(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def summary_lines(data: dict[str, Any]) -> list[str]:
    """Sentences quoting this run's own numbers for the decisions people make from it."""
    lines = []
    flat, hnsw = data["flat"], data["hnsw"]
    for scheme in ("int8", "int4", "binary"):
        plain = _find(flat, scheme=scheme, rescore="off")
        if plain is None or plain["relative_recall@10"] is None:
            continue
        rescored = [r for r in flat if r["scheme"] == scheme and r["rescore"] != "off"]
        text = (f"- **{scheme}**, exact scan of its codes: recall@10 {plain['recall@10']:.4f} "
                f"({plain['relative_recall@10']:.4f} of float32's)")
        if rescored:
            text += "; rescored: " + ", ".join(f"{r['rescore']} → {r['recall@10']:.4f}" for r in rescored)
        lines.append(text + ".")
    int8_graph = _find(hnsw, scheme="int8", ef=ENGINE_EF, rescore="off")
    if int8_graph is not None and int8_graph["relative_recall@10"] is not None:
        rescored = [r for r in hnsw if r["scheme"] == "int8" and r["ef"] == ENGINE_EF and r["rescore"] != "off"]
        lines.append(f"- **int8 in hnswlib** at ef={ENGINE_EF} (the engine's default): recall@10 "
                     f"{int8_graph['recall@10']:.4f}, {int8_graph['relative_recall@10']:.4f} of float32's at the "
                     "same ef" + "".join(f"; rescored {r['rescore']}: {r['recall@10']:.4f} "
                                        f"({r['relative_recall@10']:.4f})" for r in rescored) + ".")
    int8_plain = _find(flat, scheme="int8", rescore="off")
    if int8_plain is not None and int8_plain["relative_recall@10"] is not None:
        verdict = "meets" if int8_plain["relative_recall@10"] >= TARGET_RELATIVE else "misses"
        lines.append(f"- Target ≥ {TARGET_RELATIVE} recall@10 relative to float32 for int8 without rescoring: "
                     f"this run **{verdict}** it ({int8_plain['relative_recall@10']:.4f}).")
    schemes = data["schemes"]
    if "int8" in schemes and "graph_bytes" in schemes["int8"]:
        per_vector = schemes["int8"]["graph_bytes"] / data["input"]["indexed"]
        lines.append(f"- hnswlib keeps float32 vectors whatever the codes: the int8 graph takes "
                     f"{per_vector:,.0f} B per vector of RAM, against an int8 code of "
                     f"{schemes['int8']['code_bytes']} B.")
    return lines


def footprint_section(data: dict[str, Any]) -> str:
    fp = data["footprint"]
    cold = fp["cold_entry_bytes"]
    n = data["input"]["indexed"]
    record = cold["record"] or 0.0
    rows = []
    for scheme, info in data["schemes"].items():
        code = info["code_bytes"]
        warm = code + info["graph_bytes"] / n
        disk = cold["code"][scheme] + record
        rows.append([scheme, str(code), _int(code), _int(warm), _int(warm + fp["hot_entry_bytes"]), _int(disk),
                     _int(disk + cold["original"]["float16"]), _int(disk + cold["original"]["float32"]),
                     _int(info["graph_file_bytes"] / n)])
    header = ["scheme", "code B", "RAM: cold memory", "RAM: warm memory", "RAM: hot memory",
              "disk: no originals", "disk: + float16 original", "disk: + float32 original", "disk: warm graph file"]
    capacity = next(iter(data["schemes"].values()))["graph_capacity"]
    codes = ", ".join(f"{scheme} {size:,.0f}" for scheme, size in cold["code"].items())
    records = (f"; record (text and fields, msgpack) {record:,.0f} B." if cold["record"] is not None
               else "; no texts were given, so records are not counted.")
    notes = [
        "- RAM, cold memory: the code, which the engine keeps in RAM to scan (scan blocks grow by doubling, so "
        "a filling block holds up to 2× this).",
        "- RAM, warm memory: the code plus its share of the hnswlib graph as the warm tier's `Graph.nbytes()` "
        f"counts it (float32 vector, links, labels, id maps, {capacity:,} preallocated slots).",
        f"- RAM, hot memory: warm plus the LRU entry, {fp['hot_entry_bytes']:,.0f} B on average here: hot entries "
        "always carry a float32 vector, whatever the codes.",
        f"- Disk: LMDB pages per entry (B-tree overhead and page fill included), measured by writing "
        f"{fp['sample']:,} entries keyed by fresh memory ids (time-ordered): code {codes}; float16 original "
        f"{cold['original']['float16']:,.0f}; float32 original {cold['original']['float32']:,.0f}{records}",
    ]
    probe = fp.get("rss_probe")
    if probe:
        notes.append(f"- Check of the graph model: in a fresh process, building a {probe['vectors']:,}-vector "
                     f"float32 graph grew the resident set by {probe['rss_growth_bytes'] / probe['vectors']:,.0f} "
                     f"B per vector; `Graph.nbytes()` counts {probe['graph_nbytes'] / probe['vectors']:,.0f}.")
    return _table(header, rows) + "\n\n" + "\n".join(notes)


def _result_rows(rows: list[dict[str, Any]], graph: bool) -> str:
    header = ["scheme", *(["ef"] if graph else []), "rescore", "recall@1", "recall@10", "recall@100",
              "relative @10", "p50 µs", "p99 µs", "queries/s", "RAM B/vector", "index RAM MiB"]
    if graph:
        header.append("build s")
    body = []
    for r in rows:
        line = [r["scheme"], *([str(r["ef"])] if graph else []), r["rescore"], _num(r["recall@1"]),
                _num(r["recall@10"]), _num(r["recall@100"]), _num(r["relative_recall@10"]), _int(r["p50_us"]),
                _int(r["p99_us"]), _int(r["qps"]), _int(r["ram_bytes_per_vector"]), _num(r["index_bytes"] / 2**20, 1)]
        if graph:
            line.append(_num(r["build_s"], 1))
        body.append(line)
    return _table(header, body)


def _unanswered(rows: list[dict[str, Any]]) -> str:
    short = [r for r in rows if r.get("unanswered@10")]
    if not short:
        return ""
    listed = "; ".join(f"{r['scheme']} ef={r['ef']} rescore {r['rescore']}: {r['unanswered@10']}" for r in short)
    return ("\n\nQueries hnswlib could not give every result they asked for (it raises; the engine then scans "
            f"the codes exactly), counted here as misses: {listed}.")


def locomo_section(locomo: dict[str, Any]) -> str:
    if "skipped" in locomo:
        return f"Not measured: {locomo['skipped']}."
    rows = [[r["search"], r["scheme"], r["rescore"], _num(r["evidence_recall@10"]), _num(r["hit@10"]),
             _num(r["relative_recall@10"])] for r in locomo["rows"]]
    count = len(locomo["conversations"])
    intro = (f"{count} conversation{'s' if count > 1 else ''} ({', '.join(locomo['conversations'])}), "
             f"{locomo['turns']:,} turns stored one memory each as \"Speaker: text\" (photo captions appended), "
             "a namespace per conversation; "
             f"{locomo['questions']:,} questions of categories 1-4 with evidence, encoded with the bundled "
             f"all-MiniLM-L6-v2 in {locomo['encode_s']:.1f} s (after {locomo['model_load_s']:.1f} s loading it). "
             "Evidence recall@10: share of a question's evidence turns in its top 10, averaged; hit@10: share of "
             "questions with at least one. Exact scans calibrate on every turn; the `TieredMemory` rows run the "
             "engine itself, which calibrates as memories arrive.")
    return intro + "\n\n" + _table(["search", "scheme", "rescore", "evidence recall@10", "hit@10",
                                    "relative to float32"], rows)


def markdown(data: dict[str, Any], plots: dict[str, Path]) -> str:
    inp, settings, hnsw = data["input"], data["settings"], data["hnsw_settings"]
    calibration = _table(["scheme", "clip quantile", "share of values clipped", "recall@10 (exact scan)"],
                         [[c["scheme"], str(c["clip_quantile"]), f"{c['clip_rate']:.5f}", _num(c["recall@10"])]
                          for c in data["calibration"]])
    clips = ", ".join(f"{s} {i['clip_quantile']}" for s, i in data["schemes"].items() if i["clip_quantile"])
    parts = [
        f"# {data['title']}",
        "Generated by `tiered-memory report quantization`; every number here comes from this one run "
        f"({data['duration_s']:.0f} s), with every scheme measured on the same machine, data and queries.",
        "## Summary", "\n".join(summary_lines(data)),
        "## Machine", machine_markdown(data["machine"]),
        "## Input and method",
        "\n".join([
            f"- Indexed: {inp['indexed']:,} vectors of {inp['dimension']} dimensions from {inp['source']}.",
            f"- Queries: {inp['queries']:,}, {inp['query_source']}.",
            "- Ground truth: exact float32 inner products (numpy brute force), top 100 per query.",
            "- Recall is tie-aware: a returned row counts when its exact score reaches the k-th best exact score "
            "minus 1e-5 (duplicate texts have identical vectors). *Relative @10* = recall@10 over float32's "
            "under the same search (exact scan, or hnswlib at the same ef), without rescoring.",
            f"- Calibration: per-dimension ranges from quantiles of up to 50,000 indexed rows ({clips}); values are "
            "clipped, then rounded. Binary keeps the sign and ranks by Hamming distance.",
            f"- Latency: one query at a time on one thread, k=10, {settings['latency_queries']} queries after 10 "
            "discarded warm-up queries; queries/s = 1 / mean latency. Exact scans run in numpy"
            + (" with BLAS pinned to one thread." if data["blas_one_thread_for_latency"] else
               "; BLAS threads were not limited (threadpoolctl missing)."),
            f"- hnswlib {data['machine']['libraries']['hnswlib']}: the warm tier's `Graph` (M={hnsw['m']}, "
            f"ef_construction={hnsw['ef_construction']}, built on {hnsw['build_threads']} threads) over the "
            "dequantized codes. hnswlib searches with max(ef, k), so recall@100 at ef < 100 is searched at ef=100.",
            f"- Rescoring: oversample × k candidates re-ranked by inner product with the float originals the cold "
            f"tier keeps ({', '.join(settings['rescore_originals'])}).",
        ]),
        "## Bytes per memory, by tier", footprint_section(data),
        "## Exact scans over codes", _result_rows(data["flat"], graph=False),
        "## hnswlib (warm tier)", _result_rows(data["hnsw"], graph=True) + _unanswered(data["hnsw"]),
        "## Calibration: how much of the tails to clip", calibration,
        "## LoCoMo: evidence recall on conversations", locomo_section(data["locomo"]),
        "## Plots",
        "\n\n".join(f"![{name}]({path.name})" for name, path in plots.items()),
    ]
    return "\n\n".join(parts) + "\n"


def write_report(data: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write quantization.md, quantization.json and two PNG plots into `out`; return their paths."""
    plots = {
        "recall@10 vs bytes per vector": plot_recall_vs_bytes(data, out / f"{STEM}_recall_vs_bytes.png"),
        "recall@10 vs latency": plot_recall_vs_latency(data, out / f"{STEM}_recall_vs_latency.png"),
    }
    json_path = out / f"{STEM}.json"
    json_path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    md_path = out / f"{STEM}.md"
    md_path.write_text(markdown(data, plots), encoding="utf-8")
    return {"markdown": md_path, "json": json_path, **{f"plot:{name}": path for name, path in plots.items()}}
