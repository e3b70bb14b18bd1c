"""The quantization report: it runs on small inputs, its files exist and parse, its numbers hold
together; and the measuring helpers it is built on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tiered_memory import ConfigError, InvalidInputError
from tiered_memory.cli import main
from tiered_memory.reports import ReportSettings, run_quantization_report
from tiered_memory.reports.measure import Latency, Rescore, recall_at, rescored, time_queries, top_sorted

from .conftest import SHARED, unit_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = {"query_count": 40, "ef_values": (16,), "oversample": (4,), "latency_queries": 10,
        "sweep_quantiles": (0.999,), "locomo": None, "rss_sample": 0}


def read_outputs(out: Path) -> dict:
    for name in ("quantization.md", "quantization.json", "quantization_recall_vs_bytes.png",
                 "quantization_recall_vs_latency.png"):
        assert (out / name).is_file(), f"{name} was not written"
    for plot in out.glob("*.png"):
        assert plot.read_bytes()[:8] == PNG_MAGIC
        import matplotlib.image

        assert matplotlib.image.imread(plot).shape[0] > 200  # a real picture, not an empty file
    return json.loads((out / "quantization.json").read_text())


def test_command_runs_on_a_small_npy_and_its_numbers_hold_together(tmp_path: Path) -> None:
    vectors = tmp_path / "vectors.npy"
    np.save(vectors, unit_rows(1_240, 64, seed=1, clusters=30) * 3.0)  # not unit length: rescaled
    out = tmp_path / "reports"
    code = main(["report", "quantization", "--vectors", str(vectors), "--query-count", "40", "--ef", "16,64",
                 "--oversample", "4", "--latency-queries", "10", "--sweep", "0.999,1.0", "--no-locomo",
                 "--rss-sample", "256", "--no-progress", "--out", str(out)])
    assert code == 0
    data = read_outputs(out)

    assert data["input"]["indexed"] == 1_200 and data["input"]["queries"] == 40
    assert data["input"]["rows_rescaled_to_unit_length"] == 1_240
    assert data["machine"]["cores"] >= 1 and "report quantization" in data["machine"]["command"]
    assert [s["code_bytes"] for s in data["schemes"].values()] == [256, 128, 64, 32, 8]
    flat = {(r["scheme"], r["rescore"]): r for r in data["flat"]}
    exact = flat[("float32", "off")]
    assert exact["recall@1"] == exact["recall@10"] == exact["recall@100"] == 1.0  # it *is* the ground truth
    assert flat[("int8", "off")]["recall@10"] >= 0.95
    assert flat[("int8", "float16 x4")]["recall@10"] >= flat[("int8", "off")]["recall@10"]
    assert flat[("binary", "float16 x4")]["recall@10"] > flat[("binary", "off")]["recall@10"]
    for row in data["flat"] + data["hnsw"]:
        assert all(0.0 <= row[f"recall@{k}"] <= 1.0 for k in (1, 10, 100))
        assert 0 < row["p50_us"] <= row["p99_us"] and row["qps"] > 0
    assert len(data["hnsw"]) == 2 * (1 + 1 + 2 + 2 + 2)  # ef x (float32, float16, int8/int4/binary +-rescore)
    # hnswlib stores float32 whatever the codes: every scheme's graph takes the same RAM
    assert len({info["graph_bytes"] for info in data["schemes"].values()}) == 1
    cold = data["footprint"]["cold_entry_bytes"]
    assert cold["code"]["binary"] < cold["code"]["int4"] < cold["code"]["int8"] < cold["code"]["float32"]
    assert cold["record"] is None  # an .npy has no texts
    probe = data["footprint"]["rss_probe"]
    assert probe["vectors"] == 256 and probe["rss_growth_bytes"] > 0
    assert [c["clip_quantile"] for c in data["calibration"]] == [0.999, 1.0, 0.999, 1.0]
    assert data["locomo"] == {"skipped": "skipped (--no-locomo)"}

    markdown = (out / "quantization.md").read_text()
    for heading in ("## Summary", "## Machine", "## Bytes per memory, by tier", "## Exact scans over codes",
                    "## hnswlib (warm tier)", "## Calibration", "## LoCoMo"):
        assert heading in markdown
    assert data["machine"]["command"] in markdown and "(quantization_recall_vs_bytes.png)" in markdown


def test_command_reports_bad_input_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "quantization", "--vectors", str(tmp_path / "nope.npy"), "--no-progress",
                 "--out", str(tmp_path / "out")]) == 2
    assert "nope.npy does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out" / "quantization.md").exists()


def test_bad_settings_and_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schemes"):
        ReportSettings(schemes=("int3",))
    with pytest.raises(ConfigError, match="ef_values"):
        ReportSettings(ef_values=(0,))
    with pytest.raises(ConfigError, match="rescore_originals"):
        ReportSettings(rescore_originals=("int8",))
    flat = tmp_path / "flat.npy"
    np.save(flat, np.ones(10, dtype=np.float32))
    with pytest.raises(InvalidInputError, match="shape"):
        run_quantization_report(ReportSettings(vectors=flat, **TINY), tmp_path / "out", progress=False)
    small = tmp_path / "small.npy"
    np.save(small, unit_rows(230, 16))
    with pytest.raises(ConfigError, match="too few"):
        run_quantization_report(ReportSettings(vectors=small, **TINY), tmp_path / "out", progress=False)
    with pytest.raises(InvalidInputError, match="does not exist"):
        run_quantization_report(ReportSettings(vectors=tmp_path / "missing.npy", **TINY), tmp_path / "out",
                                progress=False)
    zeros = tmp_path / "zeros.npy"
    np.save(zeros, np.zeros((300, 16), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="zeros.npy"):
        run_quantization_report(ReportSettings(vectors=zeros, **TINY), tmp_path / "out", progress=False)


@pytest.mark.shared
def test_default_input_is_dailydialog_with_its_texts(tmp_path: Path, dailydialog_vectors: np.ndarray) -> None:
    settings = ReportSettings(limit=800, schemes=("float32", "int8"), **TINY)
    result = run_quantization_report(settings, tmp_path, progress=False)
    data = read_outputs(tmp_path)
    assert result.data["input"] == data["input"] and "DailyDialog" in data["input"]["source"]
    assert data["footprint"]["cold_entry_bytes"]["record"] > 0  # utterances give real records
    int8 = next(r for r in data["hnsw"] if r["scheme"] == "int8" and r["rescore"] == "off")
    assert int8["relative_recall@10"] >= 0.95


def trimmed_locomo(path: Path, sessions: int = 2) -> Path:
    """conv-26's first sessions and the questions whose evidence lies in them, as a LoCoMo file."""
    raw = json.loads((SHARED / "locomo" / "locomo_dev.json").read_text())[0]
    body = {k: v for k, v in raw["conversation"].items()
            if not k.startswith("session_") or int(k.split("_")[1]) <= sessions}
    turn_ids = {turn["dia_id"] for key, value in body.items() if isinstance(value, list) for turn in value}
    qa = [q for q in raw["qa"] if q.get("evidence") and set(q["evidence"]) <= turn_ids]
    file = path / "locomo_small.json"
    file.write_text(json.dumps([{**raw, "conversation": body, "qa": qa}]))
    return file


@pytest.mark.model
@pytest.mark.shared
def test_texts_are_encoded_and_locomo_is_checked_end_to_end(tmp_path: Path, minilm) -> None:
    if not (SHARED / "locomo" / "locomo_dev.json").is_file():
        pytest.skip(f"LoCoMo not found under {SHARED} (../shared/datasets is absent)")
    texts = tmp_path / "texts.txt"
    lines = [f"Note {i}: the {('red', 'blue', 'green')[i % 3]} box holds {i} items from shelf {i % 17}."
             for i in range(260)]
    texts.write_text("\n".join(lines))
    settings = ReportSettings(vectors=texts, schemes=("float32", "int8", "binary"),
                              **{**TINY, "locomo": trimmed_locomo(tmp_path)})
    result = run_quantization_report(settings, tmp_path / "out", encoder=lambda: minilm, progress=False)
    data = read_outputs(tmp_path / "out")
    assert data["input"]["indexed"] == 220 and data["footprint"]["cold_entry_bytes"]["record"] > 0
    locomo = result.data["locomo"]
    assert locomo["conversations"] == ["conv-26"] and locomo["questions"] > 5
    rows = {(r["search"], r["scheme"], r["rescore"]): r for r in locomo["rows"]}
    assert rows[("exact scan of codes", "float32", "off")]["relative_recall@10"] == 1.0
    engine = rows[("TieredMemory.search", "int8", "off")]
    assert ("TieredMemory.search", "int8", "float16 x4") in rows
    for row in locomo["rows"]:
        assert 0.0 <= row["evidence_recall@10"] <= row["hit@10"] <= 1.0
    assert engine["evidence_recall@10"] > 0  # the store finds evidence turns, through the real engine


# -- the measuring helpers -------------------------------------------------------------------------


def test_recall_is_tie_aware() -> None:
    base = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # rows 0 and 1 are twins
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    truth = np.array([[1.0, 1.0, 0.0]], dtype=np.float32)
    assert recall_at(np.array([[1]]), queries, base, truth, 1) == 1.0  # the twin is not a miss
    assert recall_at(np.array([[2]]), queries, base, truth, 1) == 0.0


def test_rescoring_reorders_candidates_by_their_originals() -> None:
    originals = np.array([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    rescore = Rescore("float32", 3, originals)
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    assert rescored(query, np.array([[0, 1, 2]]), rescore, 2).tolist() == [[2, 1]]
    assert rescore.rerank(query[0], np.array([0, 1, 2]), 1).tolist() == [2]
    assert top_sorted(np.array([[0.1, 0.9, 0.5]]), 2).tolist() == [[1, 2]]


def test_latency_percentiles_come_from_the_timed_queries() -> None:
    ticks = iter(range(0, 10_000_000, 1_000))  # each call of the clock advances it by 1 us
    latency = time_queries(lambda query: None, np.zeros((20, 2)), clock=lambda: next(ticks))
    assert latency == Latency(p50_us=1.0, p99_us=1.0, mean_us=1.0, queries=20) and latency.qps == 1e6


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident set size is read from /proc (Linux)")
def test_warm_graph_bytes_match_what_a_fresh_process_allocates() -> None:
    from tiered_memory.reports.footprint import probe_rss

    # A small graph is dominated by hnswlib's fixed 2.6 MB of label locks, which Graph.nbytes()
    # once left out (it counted 0.12 MB for a 64-vector graph whose process grew by 2.8 MB).
    for rows in (64, 2_048):
        probe = probe_rss(unit_rows(rows, 64, seed=rows), m=16)
        assert probe["vectors"] == rows
        assert 0.75 <= probe["graph_nbytes"] / probe["rss_growth_bytes"] <= 1.25
