"""What quantization costs where a user feels it: evidence recall@10 on LoCoMo conversations.

Each conversation is one namespace of a few hundred turns; the engine searches namespaces that
small exactly, over their codes (``exact_search_max``), so each scheme is measured by an exact
scan of its codes, with and without rescoring, and the shipped engine (int8) is run end to end.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory.corpora import Conversation, Question, Turn
from tiered_memory.encoders import Encoder
from tiered_memory.quantization import make_quantizer
from tiered_memory.reports.footprint import ORIGINAL_DTYPES
from tiered_memory.reports.measure import Rescore, top_sorted

K = 10
ANSWERABLE_CATEGORIES = (1, 2, 3, 4)  # 5 (adversarial) has no answer in the conversation


@dataclass
class EncodedConversation:
    sample_id: str
    turn_ids: list[str]
    texts: list[str]
    turns: np.ndarray  # (turns, d) unit rows
    questions: list[Question]
    queries: np.ndarray  # (questions, d)


def memory_text(turn: Turn) -> str:
    """A turn as an agent would remember it: who said it, then what (questions name the speakers;
    without the name, evidence recall@10 on conv-26 fell from 0.47 to 0.25 in our measurement)."""
    return f"{turn.speaker}: {turn.text}"


def encode_conversations(conversations: Sequence[Conversation], encoder: Encoder,
                         tick: Callable[[], None] = lambda: None) -> tuple[list[EncodedConversation], float]:
    """Turns and answerable questions (with evidence) of each conversation, encoded; and the seconds it took."""
    started = time.perf_counter()
    out = []
    for conversation in conversations:
        questions = [q for q in conversation.questions if q.category in ANSWERABLE_CATEGORIES and q.evidence]
        texts = [memory_text(turn) for turn in conversation.turns]
        turns = encoder.encode(texts)
        queries = encoder.encode([q.question for q in questions])
        out.append(EncodedConversation(conversation.sample_id, [t.dia_id for t in conversation.turns],
                                       texts,
                                       np.asarray(turns, dtype=np.float32), questions,
                                       np.asarray(queries, dtype=np.float32)))
        tick()
    return out, time.perf_counter() - started


def evidence_quality(found: Sequence[Sequence[str]], questions: Sequence[Question]) -> tuple[float, float]:
    """(evidence recall@k, hit@k): share of evidence turns retrieved, share of questions with any."""
    recall, hit = [], []
    for turn_ids, question in zip(found, questions):
        evidence = set(question.evidence)
        got = len(evidence & set(turn_ids))
        recall.append(got / len(evidence))
        hit.append(got > 0)
    return float(np.mean(recall)), float(np.mean(hit))


def _row(label: str, scheme: str, rescore: str, found: list[list[str]], questions: list[Question]) -> dict[str, Any]:
    recall, hit = evidence_quality(found, questions)
    return {"search": label, "scheme": scheme, "rescore": rescore, "evidence_recall@10": recall, "hit@10": hit}


def scheme_rows(data: Sequence[EncodedConversation], schemes: Sequence[str], clip: dict[str, float | None],
                rescores: Callable[[str], list[tuple[str, int]]]) -> list[dict[str, Any]]:
    """Exact scans of each scheme's codes, calibrated on every turn (one store, one calibration)."""
    everything = np.concatenate([c.turns for c in data])
    questions = [q for c in data for q in c.questions]
    rows = []
    for scheme in schemes:
        quantizer = make_quantizer(scheme, everything.shape[1], clip.get(scheme))
        quantizer.fit(everything)
        variants: list[tuple[str, int] | None] = [None, *rescores(scheme)]
        for variant in variants:
            found: list[list[str]] = []
            for conv in data:
                codes = quantizer.encode(conv.turns)
                fetch = K if variant is None else K * variant[1]
                top = top_sorted(quantizer.score_matrix(conv.queries, codes), fetch)
                if variant is not None:
                    rescore = Rescore(variant[0], variant[1], conv.turns.astype(ORIGINAL_DTYPES[variant[0]]))
                    top = np.stack([rescore.rerank(q, cand, K) for q, cand in zip(conv.queries, top)])
                found.extend([[conv.turn_ids[i] for i in row] for row in top.tolist()])
            rows.append(_row("exact scan of codes", scheme, "off" if variant is None else f"{variant[0]} x{variant[1]}",
                             found, questions))
    return rows


def engine_rows(data: Sequence[EncodedConversation]) -> list[dict[str, Any]]:
    """The shipped engine end to end: one TieredMemory, a namespace per conversation, searched by
    vector, first as configured by default, then reopened with ``rescore=True``."""
    from tiered_memory.engine import TieredMemory

    questions = [q for c in data for q in c.questions]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tm-locomo-") as scratch:
        path = Path(scratch) / "store"
        dimension = data[0].turns.shape[1]
        for rescore in (False, True):
            with TieredMemory(path, encoder=None, dimension=dimension, durability="async", rescore=rescore) as mem:
                if not rescore:
                    for conv in data:
                        mem.add_many(conv.texts, namespace=conv.sample_id, vectors=conv.turns, dedup=False,
                                     ids=[f"{conv.sample_id}/{turn_id}" for turn_id in conv.turn_ids])
                found = []
                for conv in data:
                    for query in conv.queries:
                        hits = mem.search(vector=query, namespace=conv.sample_id, k=K)
                        found.append([hit.memory.id.split("/", 1)[1] for hit in hits])
                scheme = mem.cold.quantizer.name
            rows.append(_row("TieredMemory.search", scheme, f"float16 x{mem.config.rescore_oversample}"
                             if rescore else "off", found, questions))
    return rows
