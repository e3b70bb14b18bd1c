"""The retrieval report runs on LoCoMo, writes its files, and its numbers hold together."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tiered_memory.cli import main

from .conftest import SHARED

LOCOMO = SHARED / "locomo" / "locomo_dev.json"


class HashEncoder:
    """Deterministic unit vectors from the text's hash: dense retrieval by chance, in milliseconds."""

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = [np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)).standard_normal(16)
                for t in texts]
        out = np.asarray(rows, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.shared
def test_report_on_one_conversation_holds_together(tmp_path: Path) -> None:
    if not LOCOMO.is_file():
        pytest.skip(f"LoCoMo not found at {LOCOMO} (../shared/datasets is absent)")
    from tiered_memory.corpora import load_locomo
    from tiered_memory.reports.retrieval import prepare, render, run_methods, summarise
    from tiered_memory.search.lexical import LexicalIndex

    conversation = load_locomo(LOCOMO)[:1]
    namespaces = prepare(conversation, HashEncoder, cache=tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["conv-26_q.npy", "conv-26_turns.npy"]
    summary = {s["method"]: s for s in summarise(run_methods(namespaces))}
    assert len(summary) == 10 and all(s["questions"] == len(namespaces[0].questions) for s in summary.values())
    for s in summary.values():
        assert 0 <= s["hit@1"] <= s["hit@5"] <= s["hit@10"] <= 1 and s["evidence_recall@10"] <= s["hit@10"]
        assert sum(c["questions"] for c in s["by_category"].values()) == s["questions"]
    # BM25's row is the LexicalIndex itself, question by question.
    ns = namespaces[0]
    index = LexicalIndex(context_weights=())
    index.add(ns.turn_ids, ns.texts)
    hits = [bool(set(q.evidence) & set(index.search(q.question, 10)[0])) for q in ns.questions]
    assert summary["BM25"]["hit@10"] == pytest.approx(sum(hits) / len(hits))
    text = render(list(summary.values()), {"cpu": "x", "cores": 2, "os": "y", "python": "3", "date_utc": "now",
                                           "command": "c"})
    assert all(f"| {name} |" in text for name in summary) and "## Choice" in text


@pytest.mark.shared
def test_command_writes_markdown_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not LOCOMO.is_file():
        pytest.skip(f"LoCoMo not found at {LOCOMO} (../shared/datasets is absent)")
    import tiered_memory.reports.retrieval as retrieval

    monkeypatch.setattr(retrieval, "MiniLMEncoder", HashEncoder)
    out = tmp_path / "reports"
    assert main(["report", "retrieval", "--locomo", str(LOCOMO), "--out", str(out)]) == 0
    data = json.loads((out / "retrieval.json").read_text())
    assert {m["method"] for m in data["methods"]} >= {"BM25", "dense (exact cosine)", "z-score sum (both + neighbours)"}
    assert (out / "retrieval.md").read_text().startswith("# Retrieval on LoCoMo")


def test_command_reports_missing_data_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "retrieval", "--locomo", str(tmp_path / "nothing.json"), "--out", str(tmp_path)]) == 2
    assert "LoCoMo not found" in capsys.readouterr().err
