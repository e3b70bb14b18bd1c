"""Rows, ratios, goals, and the three outputs of a run: JSON, a Markdown summary, a console table."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiered_memory.bench.stats import ratio, summarize

if TYPE_CHECKING:
    from tiered_memory.bench.runner import Bench

COMPARED_ROLES = ("floor", "peer")


def row(key: str, system: str, role: str, *, samples: Any = None, throughput: float | None = None,
        recall: float | None = None, note: str = "", compare_with: list[str] | None = None,
        **extra: Any) -> dict[str, Any]:
    """One system's figures in one scenario. role: ours, floor, peer, or part (a piece of ours)."""
    return {"key": key, "system": system, "role": role, "note": note,
            "latency_us": None if samples is None or not len(samples) else summarize(samples),
            "throughput_per_s": throughput, "recall_at_10": recall, "compare_with": compare_with, **extra}


def scenario(name: str, title: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A scenario's table, with each of our rows set against the floors and peers it names
    (default: all of them). Ratios are ours / theirs in time: below 1, ours is faster."""
    by_key = {r["key"]: r for r in rows}
    for ours in rows:
        if ours["role"] != "ours":
            continue
        targets = ours["compare_with"]
        if targets is None:
            targets = [r["key"] for r in rows if r["role"] in COMPARED_ROLES]
        ours["ratios"] = {}
        for key in targets:
            other = by_key.get(key)
            if other is None:
                continue
            if ours["latency_us"] and other["latency_us"] and ours["throughput_per_s"] is None:
                ours["ratios"][key] = {"p50": ratio(ours["latency_us"]["p50_us"], other["latency_us"]["p50_us"]),
                                       "p99": ratio(ours["latency_us"]["p99_us"], other["latency_us"]["p99_us"])}
            elif ours["throughput_per_s"] and other["throughput_per_s"]:
                ours["ratios"][key] = {"per_item": ratio(other["throughput_per_s"], ours["throughput_per_s"])}
    return {"name": name, "title": title, "rows": rows}


def timer_overhead_ns() -> int:
    """Median cost of the timing itself (two perf_counter_ns calls around nothing)."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(10_000):
        started = clock()
        samples.append(clock() - started)
    samples.sort()
    return samples[len(samples) // 2]


# -- memory ------------------------------------------------------------------------------------

MEMORY_SYSTEMS = ("ours", "hnswlib", "usearch", "numpy", "chromadb", "lmdb")


def memory_rows(bench: Bench) -> dict[str, Any]:
    """Per system holding the data: RSS of a new process that opened it (over the bare
    interpreter with the libraries imported), disk, and build time; RSS growth while building
    only for ours, which is built first (later builds reuse memory freed before them)."""
    rows = []
    for key in MEMORY_SYSTEMS:
        build = bench.builds.get(key)
        if build is None:
            continue
        if key == "ours":
            system, role, row_key = "tiered_memory", "ours", "ours.memory"
        else:
            peer = bench.peer(key)
            system, role, row_key = peer.name, peer.role, f"{peer.role}.{key}"
        fresh = bench.fresh_rss.get(key, {})
        anon = fresh.get("store_anon_bytes")
        if key == "numpy":
            anon = bench.peer("numpy").matrix.nbytes  # the matrix is all it holds
        rows.append(row(row_key, system, role, compare_with=[], items=build.items, build_seconds=build.seconds,
                        process_rss_bytes=fresh.get("rss_bytes"), store_rss_bytes=fresh.get("store_rss_bytes"),
                        store_anon_bytes=anon, store_file_bytes=fresh.get("store_file_bytes"),
                        anon_bytes_per_memory=None if anon is None else anon / build.items,
                        disk_bytes=build.disk_bytes,
                        disk_bytes_per_memory=None if build.disk_bytes is None else build.disk_bytes / build.items))
    table = scenario("memory", f"Memory: resident and on disk, {bench.workload.size:,} memories", rows)
    table["explanation"] = explain_memory(bench)
    return table


def explain_memory(bench: Bench) -> dict[str, Any]:
    """Where our resident memory goes. Preferably in a new process that opened the store (as an
    agent restarting would), else in this process right after building: the parts the engine
    can count (warm graphs, int8 codes, hot records); the rest of the heap is the catalog (ids,
    their dict, columns) and Python objects; file-backed pages are LMDB's, mapped while reading."""
    fresh = bench.fresh_ours
    if fresh is not None:
        where = "a new process after open + first search"
        n, tiers = fresh["memories"], fresh["tiers"]
        hot, warm, (used, slots) = fresh["hot_bytes"], fresh["warm_bytes"], fresh["warm_occupancy"]
        heap, mapped, process = fresh["store_anon_bytes"], fresh["store_file_bytes"], fresh["rss_bytes"]
    else:
        where = "the benchmark process right after building (includes allocator slack from the build)"
        stats = bench.stats_after_build
        n = stats["memories"]
        tiers = {tier: stats[tier]["count"] for tier in ("hot", "warm", "cold")}
        hot, warm, (used, slots) = stats["hot"]["bytes"], stats["warm"]["bytes"], stats["warm_occupancy"]
        heap, mapped, process = bench.builds["ours"].rss_delta_bytes, None, bench.rss_after_build
    # The engine counts the graphs' whole allocation; unwritten slots are not resident, so the
    # resident share is the slots in use (tombstones included) over the slots allocated.
    parts = {
        "warm hnswlib graphs (float32 vectors + links; slots in use)": int(warm * used / max(slots, 1)),
        "int8 codes in RAM (for the cold scan)": n * bench.workload.dimension,
        "hot tier (decoded records + float vectors)": hot,
    }
    parts["catalog (ids, id -> slot dict, columns), Python objects, allocator slack"] = heap - sum(parts.values())
    return {
        "measured_in": where,
        "memories": n,
        "tiers": tiers,
        "process_rss_bytes": process,
        "heap_bytes": heap,
        "warm_allocated_bytes": warm,
        "warm_slots": {"in_use": used, "allocated": slots},
        "mapped_file_bytes": mapped,
        "parts_bytes": parts,
        "parts_bytes_per_memory": {name: value / n for name, value in parts.items()},
        "lmdb_disk_bytes": bench.lmdb_disk_bytes,
    }


# -- goals -------------------------------------------------------------------------------------

def _find(report: dict[str, Any], scenario_name: str, key: str) -> dict[str, Any] | None:
    for table in report["scenarios"]:
        if table["name"] == scenario_name:
            for r in table["rows"]:
                if r["key"] == key:
                    return r
    return None


def _p50(r: dict[str, Any] | None) -> float | None:
    return None if r is None or not r["latency_us"] else r["latency_us"]["p50_us"]


def evaluate_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' targets, each with the measured value and met / missed / not measured."""
    workload = report["workload"]
    full_dailydialog = workload.get("dataset") == "DailyDialog" and workload["stored"] >= 60_000
    scope_62k = "DailyDialog 62k, vectors given"
    goals = []

    def add(goal: str, scope: str, value: float | None, unit: str, met: bool | None, evidence: str) -> None:
        applies = scope != scope_62k or full_dailydialog
        status = "not measured" if value is None or met is None else ("met" if met else "missed")
        if not applies:
            status = "not applicable"
        goals.append({"goal": goal, "scope": scope, "value": value, "unit": unit, "status": status,
                      "evidence": evidence})

    hot = _p50(_find(report, "get", "ours.get.hot"))
    add("hot get p50 <= 2 us", scope_62k, hot, "us", None if hot is None else hot <= 2.0, "get/ours.get.hot")
    steady = _find(report, "search", "ours.search.steady")
    p50 = _p50(steady)
    recall = None if steady is None else steady["recall_at_10"]
    add("search(vector) k=10 p50 <= 0.5 ms", scope_62k, p50, "us", None if p50 is None else p50 <= 500,
        "search/ours.search.steady")
    add("search recall@10 >= 0.95 (tie-aware)", scope_62k, recall, "", None if recall is None else recall >= 0.95,
        "search/ours.search.steady")
    floor = _p50(_find(report, "search", "floor.hnswlib"))
    within = None if p50 is None or floor is None else p50 / floor
    add("search within 1.5x of raw hnswlib knn_query (p50)", scope_62k, within, "x",
        None if within is None else within <= 1.5, "search/ours.search.steady vs floor.hnswlib")
    chroma = _find(report, "search", "peer.chromadb")
    speedup = None if p50 is None or _p50(chroma) is None else _p50(chroma) / p50
    add(">= 10x faster than ChromaDB at equal or better recall@10", scope_62k, speedup, "x",
        None if speedup is None else speedup >= 10 and recall >= chroma["recall_at_10"] - 1e-9,
        "search/ours.search.steady vs peer.chromadb")
    adds = _find(report, "add", "ours.add.vectors")
    rate = None if adds is None else adds["throughput_per_s"]
    add("add_many >= 2,000 memories/s, durable", scope_62k, rate, "/s", None if rate is None else rate >= 2_000,
        "add/ours.add.vectors")
    reopen = _find(report, "reopen", "ours.reopen")
    seconds = None if reopen is None else reopen["latency_us"]["max_us"] / 1e6
    add("reopen + first search <= 2 s (slowest of the probes)", scope_62k, seconds, "s",
        None if seconds is None else seconds <= 2.0, "reopen/ours.reopen")
    lmdb = _p50(_find(report, "get", "floor.lmdb"))
    for tier in ("warm", "cold"):
        read = _p50(_find(report, "get", f"ours.get.{tier}"))
        times = None if read is None or lmdb is None else read / lmdb
        add(f"point read from disk ({tier}, first touch) within 2x of raw lmdb + msgpack (p50)", "every run",
            times, "x", None if times is None else times <= 2.0, f"get/ours.get.{tier} vs floor.lmdb")
    memory = next((t for t in report["scenarios"] if t["name"] == "memory"), None)
    if workload["stored"] >= 1_000_000:
        rss = None if memory is None else memory["explanation"]["process_rss_bytes"]
        goals.append({"goal": "at 1M memories: process RSS and bytes/memory reported and explained",
                      "scope": "1M", "value": rss, "unit": "bytes", "status": "reported" if rss else "not measured",
                      "evidence": "memory/explanation"})
    return goals


# -- output ------------------------------------------------------------------------------------

def fmt_us(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value < 10:
        return f"{value:.2f} µs"
    if value < 1_000:
        return f"{value:.0f} µs"
    if value < 1_000_000:
        return f"{value / 1e3:.2f} ms"
    return f"{value / 1e6:.2f} s"


def fmt_count(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _ratios(r: dict[str, Any]) -> str:
    parts = []
    for key, values in (r.get("ratios") or {}).items():
        value = values.get("p50", values.get("per_item"))
        if value is not None:
            parts.append(f"{value:.2f}× {key.split('.', 1)[1]}")
    return ", ".join(parts)


def scenario_markdown(table: dict[str, Any]) -> list[str]:
    took = f" ({table['seconds']:.0f} s)" if "seconds" in table else ""
    lines = [f"### {table['title']}{took}", ""]
    if not table["rows"]:
        return lines + ["(skipped)", ""]
    if table["name"] == "memory":
        return lines + memory_markdown(table)
    lines += ["| system | p50 | p90 | p99 | max | per s | recall@10 | ours ÷ theirs (p50) | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        latency = r["latency_us"] or {}
        name = f"**{r['system']}**" if r["role"] == "ours" else r["system"]
        recall = "–" if r["recall_at_10"] is None else f"{r['recall_at_10']:.3f}"
        rate = r["throughput_per_s"] if r["throughput_per_s"] is not None else latency.get("ops_per_s")
        lines.append(f"| {name} | {fmt_us(latency.get('p50_us'))} | {fmt_us(latency.get('p90_us'))} | "
                     f"{fmt_us(latency.get('p99_us'))} | {fmt_us(latency.get('max_us'))} | {fmt_count(rate)} | "
                     f"{recall} | {_ratios(r)} | {r['note']} |")
    return lines + [""]


def memory_markdown(table: dict[str, Any]) -> list[str]:
    lines = ["| system | RSS of a new process holding it | added by the store: heap | mapped files | "
             "heap per memory | disk | disk per memory | build |", "|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        name = f"**{r['system']}**" if r["role"] == "ours" else r["system"]
        lines.append(f"| {name} | {fmt_bytes(r['process_rss_bytes'])} | {fmt_bytes(r['store_anon_bytes'])} | "
                     f"{fmt_bytes(r['store_file_bytes'])} | {fmt_bytes(r['anon_bytes_per_memory'])} | "
                     f"{fmt_bytes(r['disk_bytes'])} | {fmt_bytes(r['disk_bytes_per_memory'])} | "
                     f"{r['build_seconds']:.1f} s |")
    explanation = table["explanation"]
    tiers = ", ".join(f"{tier} {count:,}" for tier, count in explanation["tiers"].items())
    mapped = explanation["mapped_file_bytes"]
    lines += ["", f"Ours, measured in {explanation['measured_in']} ({tiers}; cold holds every memory): process RSS "
                  f"{fmt_bytes(explanation['process_rss_bytes'])}. The store added "
                  f"{fmt_bytes(explanation['heap_bytes'])} of heap"
                  + ("" if mapped is None else f" and {fmt_bytes(mapped)} of mapped LMDB pages (page cache: the OS "
                                               "reclaims them under pressure)") + "; the heap holds:", ""]
    for name, value in explanation["parts_bytes"].items():
        lines.append(f"- {name}: {fmt_bytes(value)} ({explanation['parts_bytes_per_memory'][name]:,.0f} B per memory)")
    warm_slots = explanation["warm_slots"]
    lines.append(f"- (the warm graphs have {warm_slots['allocated']:,} slots allocated, "
                 f"{fmt_bytes(explanation['warm_allocated_bytes'])} of address space, {warm_slots['in_use']:,} in use)")
    lines.append(f"- on disk, the LMDB archive: {fmt_bytes(explanation['lmdb_disk_bytes'])}")
    return lines + [""]


def goals_markdown(goals: list[dict[str, Any]]) -> list[str]:
    lines = ["| goal | scope | measured | status |", "|---|---|---|---|"]
    for goal in goals:
        value = goal["value"]
        if value is None:
            shown = "–"
        elif goal["unit"] == "us":
            shown = fmt_us(value)
        elif goal["unit"] == "bytes":
            shown = fmt_bytes(value)
        elif goal["unit"] == "/s":
            shown = f"{value:,.0f}/s"
        else:
            shown = f"{value:.3f}{goal['unit']}"
        lines.append(f"| {goal['goal']} | {goal['scope']} | {shown} | {goal['status']} |")
    return lines


def machine_line(report: dict[str, Any]) -> str:
    machine = report["machine"]
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items() if v)
    return (f"{machine['cpu']}, {machine['cores']} cores, {fmt_bytes(machine['memory_bytes'])} RAM, {machine['os']}, "
            f"Python {machine['python']}; load average at start {machine['load_average_1m']:.2f}; {libraries}")


def to_markdown(report: dict[str, Any]) -> str:
    workload = report["workload"]
    lines = [
        f"# Benchmark: {report['name']}",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']} (took {report['duration_s']:.0f} s); revision {report['machine']['git_revision']}",
        f"- machine: {machine_line(report)}",
        f"- data: {workload['dataset']}: {workload['stored']:,} stored, {workload['queries']:,} held-out queries, "
        f"{workload['dimension']}-d; recall@10 is tie-aware against exact float32 search",
        f"- method: see benchmarks/METHODOLOGY.md; latencies are per call, warm-up discarded, systems interleaved; "
        f"timer overhead {report['timer_overhead_ns']} ns per sample; peak RSS {fmt_bytes(report['peak_rss_bytes'])}",
        "",
        "## Goals",
        "",
        *goals_markdown(report["goals"]),
        "",
        "## Results",
        "",
    ]
    for table in report["scenarios"]:
        lines += scenario_markdown(table)
    if report["skipped"] or report["notes"]:
        lines += ["## Notes", ""]
        lines += [f"- skipped {s['system']}: {s['reason']}" for s in report["skipped"]]
        lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """`<out>/<name>.json` and `<out>/<name>.md`; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{report['name']}.json", out / f"{report['name']}.md"
    json_path.write_text(json.dumps(_finite(report), indent=1, default=_jsonable, allow_nan=False) + "\n")
    md_path.write_text(to_markdown(report))
    return json_path, md_path


def _finite(value: Any) -> Any:
    """The report with NaN and infinities as null: strict JSON readers reject them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# -- README ------------------------------------------------------------------------------------

START_MARKER = "<!-- performance:start -->"
END_MARKER = "<!-- performance:end -->"
README_SCENARIOS = ("search", "get", "add", "text", "reopen", "memory")


def readme_section(runs: list[tuple[dict[str, Any], str]]) -> str:
    """The README's Performance section from committed runs ((report, path to its JSON) each)."""
    lines = [START_MARKER,
             "<!-- generated by `python benchmarks/render_performance.py` from the result files named below; "
             "do not edit by hand -->", ""]
    for report, path in runs:
        workload = report["workload"]
        markdown_path = str(Path(path).with_suffix(".md"))
        lines += [f"### {workload['dataset']}: {workload['stored']:,} memories", "",
                  f"`{report['command']}`, {report['date']}, {machine_line(report)}. "
                  f"Every figure below is from [{markdown_path}]({markdown_path}) ([JSON]({path})); ratios are "
                  "ours ÷ theirs in time (below 1: ours is faster); recall@10 is tie-aware against exact search.",
                  "", *goals_markdown([g for g in report["goals"] if g["status"] != "not applicable"]), ""]
        for table in report["scenarios"]:
            if table["name"] in README_SCENARIOS:
                lines += ["#" + line if line.startswith("### ") else line for line in scenario_markdown(table)]
    lines.append(END_MARKER)
    return "\n".join(lines)


def replace_section(readme: str, section: str) -> str:
    """`readme` with the text between the performance markers replaced by `section`."""
    start, end = readme.find(START_MARKER), readme.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"the README lacks the markers {START_MARKER} ... {END_MARKER}")
    return readme[:start] + section + readme[end + len(END_MARKER):]
