"""Loaders for the benchmark corpora (DailyDialog, LoCoMo) and a generator that scales real embeddings.

The data are not shipped (research-only licences): they are read from ``../shared/datasets/``
beside the project, from ``$TIERED_MEMORY_DATASETS``, or from a path the caller gives.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tiered_memory.errors import TieredMemoryError

DAILYDIALOG_TOPICS = {
    1: "Ordinary Life", 2: "School Life", 3: "Culture & Education", 4: "Attitude & Emotion", 5: "Relationship",
    6: "Tourism", 7: "Health", 8: "Work", 9: "Politics", 10: "Finance",
}


class DatasetNotFoundError(TieredMemoryError, FileNotFoundError):
    """A corpus is not where it was looked for."""


def datasets_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where the corpora are: `root`, else $TIERED_MEMORY_DATASETS, else ../shared/datasets."""
    if root is not None:
        return Path(root)
    if "TIERED_MEMORY_DATASETS" in os.environ:
        return Path(os.environ["TIERED_MEMORY_DATASETS"])
    beside_checkout = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
    if beside_checkout.is_dir():
        return beside_checkout
    return Path.cwd().parent / "shared" / "datasets"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetNotFoundError(
            f"{what} not found at {path}; put the shared datasets beside the project (../shared/datasets), "
            "set TIERED_MEMORY_DATASETS, or pass the path"
        )
    return path


@dataclass
class DailyDialog:
    """62k utterances in 8k dialogues, one topic label per dialogue, MiniLM embeddings per utterance."""

    dialogues: list[list[str]]
    topics: list[int]  # per dialogue, 1..10 (see DAILYDIALOG_TOPICS)
    embeddings_path: Path
    utterances: list[str] = field(init=False)
    dialogue_of: np.ndarray = field(init=False)  # per utterance: its dialogue's index

    def __post_init__(self) -> None:
        self.utterances = [u for dialogue in self.dialogues for u in dialogue]
        self.dialogue_of = np.repeat(np.arange(len(self.dialogues)), [len(d) for d in self.dialogues])

    def embeddings(self) -> np.ndarray:
        """(utterances, 384) float32 unit rows, memory-mapped."""
        vectors = np.load(self.embeddings_path, mmap_mode="r")
        if len(vectors) != len(self.utterances):
            raise TieredMemoryError(
                f"{self.embeddings_path} has {len(vectors)} rows for {len(self.utterances)} utterances"
            )
        return vectors

    def utterance_topics(self) -> np.ndarray:
        return np.asarray(self.topics)[self.dialogue_of]


def load_dailydialog(root: str | os.PathLike[str] | None = None) -> DailyDialog:
    """Read ``dailydialog/`` under the datasets root (or `root` itself if it holds the files)."""
    base = datasets_root(root)
    folder = base if (base / "dialogues_text.txt").is_file() else base / "dailydialog"
    text = _require(folder / "dialogues_text.txt", "DailyDialog text").read_text(encoding="utf-8")
    topics = _require(folder / "dialogues_topic.txt", "DailyDialog topics").read_text().split()
    dialogues = []
    for line in text.splitlines():
        if not line.strip():
            continue
        dialogues.append([piece.strip() for piece in line.split("__eou__") if piece.strip()])
    if len(dialogues) != len(topics):
        raise TieredMemoryError(f"{len(dialogues)} dialogues but {len(topics)} topic labels in {folder}")
    embeddings = _require(folder / "embeddings_all-MiniLM-L6-v2_f32.npy", "DailyDialog embeddings")
    return DailyDialog(dialogues, [int(t) for t in topics], embeddings)


@dataclass
class Turn:
    dia_id: str  # e.g. "D3:1" = session 3, turn 1
    speaker: str
    text: str
    session: int
    timestamp: float  # the session's date and time, seconds since the epoch (UTC)


@dataclass
class Question:
    question: str
    answer: str
    evidence: list[str]  # dia_ids of the turns that hold the answer
    category: int  # 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial


@dataclass
class Conversation:
    sample_id: str
    speakers: tuple[str, str]
    turns: list[Turn]  # in session order, then turn order
    questions: list[Question]


_LOCOMO_DATE = re.compile(r"(\d{1,2}):(\d{2}) (am|pm) on (\d{1,2}) (\w+), (\d{4})")


def parse_locomo_date(text: str) -> float:
    """'1:56 pm on 8 May, 2023' -> seconds since the epoch (UTC)."""
    match = _LOCOMO_DATE.search(text)
    if match is None:
        raise TieredMemoryError(f"unrecognised LoCoMo session date {text!r}")
    hour, minute, half, day, month, year = match.groups()
    hour24 = int(hour) % 12 + (12 if half == "pm" else 0)
    moment = datetime.strptime(f"{year} {month} {day} {hour24} {minute}", "%Y %B %d %H %M")
    return moment.replace(tzinfo=UTC).timestamp()


def load_locomo(path: str | os.PathLike[str] | None = None) -> list[Conversation]:
    """Read the LoCoMo development split (a JSON list of conversations)."""
    base = Path(path) if path is not None else datasets_root()
    file = base if base.is_file() else base / "locomo" / "locomo_dev.json"
    raw = json.loads(_require(file, "LoCoMo").read_text(encoding="utf-8"))
    conversations = []
    for item in raw:
        body = item["conversation"]
        sessions = sorted(int(key.split("_")[1]) for key in body if re.fullmatch(r"session_\d+", key))
        turns = []
        for number in sessions:
            stamp = parse_locomo_date(body[f"session_{number}_date_time"])
            for turn in body[f"session_{number}"]:
                text = turn["text"]
                if turn.get("blip_caption"):
                    text = f"{text} [shares a photo: {turn['blip_caption']}]"
                turns.append(Turn(turn["dia_id"], turn["speaker"], text, number, stamp))
        questions = [
            Question(str(q["question"]), str(q.get("answer", "")), list(q.get("evidence", [])), int(q["category"]))
            for q in item["qa"]
        ]
        conversations.append(Conversation(item["sample_id"], (body["speaker_a"], body["speaker_b"]), turns,
                                          questions))
    return conversations


def scaled_vectors(base: np.ndarray, n: int, noise: float = 0.05, seed: int = 0,
                   chunk: int = 65_536) -> np.ndarray:
    """n unit vectors made from real ones: row i is base[i % len(base)] plus Gaussian noise of
    `noise` per unit length, renormalised. Keeps the real data's shape (clusters, anisotropy)
    at sizes the real set does not reach; the first len(base) rows get noise too, so no two
    rows coincide."""
    base = np.asarray(base, dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    scale = noise / np.sqrt(base.shape[1])
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rows = base[np.arange(start, stop) % len(base)] + scale * rng.standard_normal((stop - start, base.shape[1]),
                                                                                        dtype=np.float32)
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def exact_neighbors(queries: np.ndarray, vectors: np.ndarray, k: int, chunk: int = 100_000
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by brute force: (ids, scores) of each query's k best inner products."""
    queries = np.asarray(queries, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start:start + chunk], dtype=np.float32)
        scores = queries @ block.T
        take = min(k, scores.shape[1])
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        ids = np.concatenate([best_ids, top + start], axis=1)
        values = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        keep = np.argsort(-values, axis=1, kind="stable")[:, :k]
        best_ids = np.take_along_axis(ids, keep, axis=1)
        best_scores = np.take_along_axis(values, keep, axis=1)
    return best_ids, best_scores


def tie_aware_recall(found: np.ndarray, found_scores_exact: np.ndarray, kth_best: np.ndarray) -> float:
    """Mean share of returned items whose exact score reaches the k-th best exact score (minus
    1e-5), as ann-benchmarks counts: duplicate texts have identical vectors, and returning an
    equal-scoring twin is not a miss. `found` is only used for its shape (missing = -1)."""
    valid = found >= 0
    hits = (found_scores_exact >= kth_best[:, None] - 1e-5) & valid
    return float(hits.sum() / (found.shape[0] * found.shape[1]))
