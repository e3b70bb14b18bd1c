"""`tiered-memory bench`: the quick run writes every field; the pieces it is built from."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from tiered_memory.bench import peers
from tiered_memory.bench.report import END_MARKER, START_MARKER, readme_section, replace_section
from tiered_memory.bench.runner import SCENARIOS, Bench, Options
from tiered_memory.bench.scenarios import interleave
from tiered_memory.bench.stats import summarize
from tiered_memory.bench.workload import scale_set_workload, split_workload, write_scale_set
from tiered_memory.corpora import exact_neighbors

from .conftest import SHARED, unit_rows

LATENCY_FIELDS = ("n", "p50_us", "p90_us", "p99_us", "max_us", "ops_per_s")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tiered_memory.cli", "bench", "--no-progress", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    if not (SHARED / "dailydialog").is_dir():
        pytest.skip(f"{SHARED / 'dailydialog'} is absent (the shared datasets live beside the project)")
    out = tmp_path_factory.mktemp("bench")
    done = run_cli("--quick", "--data", str(SHARED), "--out", str(out / "results"), "--workdir", str(out / "work"),
                   cwd=out)
    json_path = out / "results" / "quick-dailydialog-3k.json"
    assert str(json_path) in done.stdout and "| system |" in done.stdout  # the printed table
    return json.loads(json_path.read_text()), json_path


def _latency_ok(latency: dict) -> None:
    assert set(LATENCY_FIELDS) <= set(latency)
    assert latency["n"] > 0
    assert 0 < latency["p50_us"] <= latency["p90_us"] <= latency["p99_us"] <= latency["max_us"]


@pytest.mark.shared
@pytest.mark.model
def test_quick_run_json_has_every_field(quick_report: tuple[dict, Path]) -> None:
    report, json_path = quick_report
    assert report["command"].startswith("tiered-memory bench --no-progress --quick")
    datetime.fromisoformat(report["date"])
    machine = report["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["python"].count(".") == 2
    for library in ("tiered-memory", "numpy", "hnswlib", "lmdb", "msgpack", "cachetools"):
        assert machine["libraries"][library]
    assert report["workload"]["stored"] == 3_000 and report["workload"]["queries"] == 60
    assert [t["name"] for t in report["scenarios"]] == list(SCENARIOS)
    tables = {t["name"]: {r["key"]: r for r in t["rows"]} for t in report["scenarios"]}

    search = tables["search"]
    for key in ("ours.search.steady", "ours.search.first", "floor.hnswlib", "floor.numpy"):
        _latency_ok(search[key]["latency_us"])
        assert 0 <= search[key]["recall_at_10"] <= 1
    assert search["floor.numpy"]["recall_at_10"] == pytest.approx(1.0)  # exact search is the ground truth
    assert search["ours.search.steady"]["recall_at_10"] >= 0.9
    ratios = search["ours.search.steady"]["ratios"]
    assert {"floor.hnswlib", "floor.numpy"} <= set(ratios)
    assert math.isclose(ratios["floor.hnswlib"]["p50"], search["ours.search.steady"]["latency_us"]["p50_us"]
                        / search["floor.hnswlib"]["latency_us"]["p50_us"])

    get = tables["get"]
    for key in ("ours.get.hot", "floor.cachetools", "ours.get.warm", "floor.lmdb"):
        _latency_ok(get[key]["latency_us"])
    assert "floor.cachetools" in get["ours.get.hot"]["ratios"] and "floor.lmdb" in get["ours.get.warm"]["ratios"]

    add = tables["add"]
    assert add["ours.add.vectors"]["throughput_per_s"] > 0 and add["ours.add.encode"]["throughput_per_s"] > 0
    assert {"ours.text.uncached", "ours.text.cached", "part.encoder.single"} <= set(tables["text"])
    assert tables["mixed"]["ours.mixed.all"]["throughput_per_s"] > 0
    _latency_ok(tables["reopen"]["ours.reopen"]["latency_us"])

    memory = tables["memory"]["ours.memory"]
    assert memory["process_rss_bytes"] > 0 and memory["anon_bytes_per_memory"] > 0
    assert memory["disk_bytes_per_memory"] > 0
    explanation = next(t for t in report["scenarios"] if t["name"] == "memory")["explanation"]
    assert explanation["memories"] >= 3_000 and sum(explanation["parts_bytes"].values()) == explanation["heap_bytes"]

    optional = {"usearch": "peer.usearch", "chromadb": "peer.chromadb"}
    skipped = {s["system"]: s["reason"] for s in report["skipped"]}
    for name, key in optional.items():
        if name in skipped:  # absent: skipped, and the message names the extra
            assert "tiered-memory[peers]" in skipped[name] and key not in search
        else:
            _latency_ok(search[key]["latency_us"])
            assert key in ratios
    statuses = {g["goal"]: g["status"] for g in report["goals"]}
    assert len(statuses) >= 8 and set(statuses.values()) <= {"met", "missed", "not measured", "not applicable"}
    markdown = json_path.with_suffix(".md").read_text()
    assert report["command"] in markdown and "p99" in markdown and machine["cpu"] in markdown


@pytest.mark.shared
@pytest.mark.model
def test_readme_section_is_rendered_from_the_report(quick_report: tuple[dict, Path]) -> None:
    report, json_path = quick_report
    readme = f"# x\n\n## Performance\n{START_MARKER}\nold text\n{END_MARKER}\n\n## Files\n"
    rendered = replace_section(readme, readme_section([(report, str(json_path))]))
    assert "old text" not in rendered and rendered.endswith(f"{END_MARKER}\n\n## Files\n")
    steady = next(r for t in report["scenarios"] for r in t["rows"] if r["key"] == "ours.search.steady")
    assert report["command"] in rendered and f"{steady['recall_at_10']:.3f}" in rendered
    with pytest.raises(ValueError, match="markers"):
        replace_section("# no markers\n", "x")


def test_vectors_only_run_skips_text_scenarios(tmp_path: Path) -> None:
    np.save(tmp_path / "mine.npy", unit_rows(1_200, dim=16, seed=3))
    run_cli("--vectors", str(tmp_path / "mine.npy"), "--queries", "30", "--no-peers", "--rounds", "1",
            "--scenario", "search", "--scenario", "text", "--out", str(tmp_path / "out"), cwd=tmp_path)
    report = json.loads((tmp_path / "out" / "mine-1200.json").read_text())
    tables = {t["name"]: t for t in report["scenarios"]}
    assert tables["text"]["rows"] == [] and any("no texts" in note for note in report["notes"])
    steady = tables["search"]["rows"][0]
    assert steady["key"] == "ours.search.steady" and steady["ratios"] == {}
    assert steady["recall_at_10"] >= 0.9  # 1,170 memories: below exact_search_max, so exact search


def test_missing_peer_is_skipped_with_the_extra_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(peers.PeerUnavailable, match=r"tiered-memory\[peers\]"):
        peers.require("tiered_memory_no_such_peer_module")

    def missing(module: str) -> None:
        raise peers.PeerUnavailable(f"{module} is not installed ({peers.EXTRA_HINT}); skipping it")

    monkeypatch.setattr(peers, "require", missing)
    vectors = unit_rows(400, dim=16, seed=4)
    workload = split_workload("tiny", vectors, None, queries=20, size=None, seed=0, source={})
    bench = Bench(workload, Options.quick(peers=("usearch", "hnswlib"), workdir=tmp_path, progress=False))
    try:
        assert bench.peer("usearch") is None
        assert "tiered-memory[peers]" in bench.skipped["usearch"]
        assert bench.peer("hnswlib") is not None and "hnswlib" in bench.builds
    finally:
        bench.close()


def test_interleave_times_every_call_after_the_warm_up(tmp_path: Path) -> None:
    workload = split_workload("tiny", unit_rows(200, dim=8), None, queries=10, size=None, seed=0, source={})
    bench = Bench(workload, Options.quick(block=3, workdir=tmp_path, progress=False))
    order: list[str] = []
    calls = {name: (lambda item, name=name: order.append(name) or item * 2) for name in ("a", "b", "c")}
    samples, outputs = interleave(bench, calls, list(range(7)), rounds=2, warmup=1, desc="test")
    assert {name: len(times) for name, times in samples.items()} == {"a": 14, "b": 14, "c": 14}
    assert outputs["b"] == [i * 2 for i in range(7)]
    firsts = [order[i] for i in range(0, 9, 3)]  # the first three blocks each start with another system
    assert firsts == ["a", "b", "c"]


def test_summary_percentiles_are_observed_values() -> None:
    summary = summarize(np.arange(1, 101) * 1_000)  # 1..100 us
    assert (summary["n"], summary["p50_us"], summary["p90_us"], summary["p99_us"], summary["max_us"]) == \
        (100, 50.0, 90.0, 99.0, 100.0)
    assert summary["ops_per_s"] == pytest.approx(20_000)


def test_split_workload_holds_out_queries_with_exact_truth() -> None:
    vectors = unit_rows(500, dim=16, seed=5)
    texts = [f"text {i % 250}" for i in range(500)]  # every text twice
    workload = split_workload("tiny", vectors, texts, queries=40, size=None, seed=1, source={})
    assert workload.size == 460 and len(set(workload.query_texts)) == 40
    stored = {row.tobytes() for row in workload.stored}
    assert not any(q.tobytes() in stored for q in workload.queries)
    ids, scores = exact_neighbors(workload.queries, workload.stored, 10)
    assert (workload.truth_ids == ids).all() and np.allclose(workload.truth_scores, scores)


@pytest.mark.shared
def test_scale_set_is_written_and_read_back(tmp_path: Path) -> None:
    if not (SHARED / "dailydialog").is_dir():
        pytest.skip(f"{SHARED / 'dailydialog'} is absent")
    meta = write_scale_set(tmp_path / "set", 5_000, queries=20, root=SHARED, log=lambda message: None)
    assert meta["size"] == 5_000 and 0.8 < meta["median_copy_to_base_similarity"] < 0.95
    workload = scale_set_workload(tmp_path / "set", root=SHARED)
    assert workload.stored.shape == (5_000, 384) and len(workload.queries) == 20
    assert np.allclose(np.linalg.norm(workload.stored[:50], axis=1), 1.0, atol=1e-5)
    ids, _ = exact_neighbors(workload.queries, workload.stored, 10)
    assert (ids == workload.truth_ids).all()
    base = np.load(tmp_path / "set" / "base_rows.npy")
    assert workload.text(7) == workload.texts[7] and len(workload.texts) == 5_000
    from tiered_memory.corpora import load_dailydialog

    utterances = load_dailydialog(SHARED).utterances
    assert workload.text(4_999) == utterances[int(base[4_999 % len(base)])]
