"""Replayable conversation traces built from real corpora (DailyDialog, LoCoMo).

A trace is what an agent's memory sees over time: the memories it starts with, then the
messages of live conversations in order (with timestamps, roles and the points where the agent
recalls), and for LoCoMo the questions asked later with the turns that answer them. Traces are
deterministic functions of the corpus and a seed; :meth:`Trace.digest` fingerprints one so a
report can say exactly which trace it replayed. How they are built: ``datasets/README.md``,
section "Conversation traces".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tiered_memory.corpora import Conversation as LocomoConversation
from tiered_memory.corpora import DailyDialog
from tiered_memory.errors import InvalidInputError

DAY_S = 86_400.0
TRACE_START = 1_700_000_000.0  # 2023-11-14 22:13 UTC: any fixed instant will do
_DIA_ID = re.compile(r"D:?(\d+):(\d+)")


@dataclass(frozen=True)
class TraceTurn:
    namespace: str
    session: int  # live conversations are numbered from 0; one session = one Conversation
    role: str  # "user" (the other party) or "assistant" (the agent)
    text: str
    row: int  # row of Trace.vectors
    timestamp: float
    label: int  # ground-truth topic (DailyDialog's 1..10), 0 when the corpus has none
    recall: bool  # the agent searches its memory right after this message
    source: str  # where it comes from: "dd:<dialogue>:<utterance>" or "<conversation>:<dia_id>"


@dataclass(frozen=True)
class TraceQuestion:
    namespace: str
    text: str
    row: int
    after_turn: int  # asked right after this turn (index into Trace.turns)
    evidence: tuple[str, ...]  # sources of the turns that hold the answer
    category: int


@dataclass
class Trace:
    """Initial memories, live turns and questions, with every text's vector in one matrix."""

    name: str
    vectors: np.ndarray  # (rows, dim) float32 unit rows
    memory_namespaces: list[str]
    memory_texts: list[str]
    memory_rows: np.ndarray  # row of each initial memory's vector
    memory_created: np.ndarray  # seconds since the epoch
    memory_sources: list[str]
    memory_labels: np.ndarray
    turns: list[TraceTurn]
    questions: list[TraceQuestion] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)  # what the builder left out, and why

    def embedder(self) -> Callable[[str], np.ndarray]:
        """text -> its vector in this trace (identical texts have identical vectors)."""
        row_of: dict[str, int] = {}
        for text, row in zip(self.memory_texts, self.memory_rows.tolist()):
            row_of.setdefault(text, row)
        for turn in self.turns:
            row_of.setdefault(turn.text, turn.row)
        for question in self.questions:
            row_of.setdefault(question.text, question.row)
        vectors = self.vectors

        def embed(text: str) -> np.ndarray:
            row = row_of.get(text)
            if row is None:
                raise InvalidInputError(f"text not in trace {self.name!r}: {text[:60]!r}")
            return np.asarray(vectors[row], dtype=np.float32)

        return embed

    def sessions(self) -> list[list[int]]:
        """Turn indices of each session, in order."""
        grouped: dict[tuple[str, int], list[int]] = {}
        for i, turn in enumerate(self.turns):
            grouped.setdefault((turn.namespace, turn.session), []).append(i)
        return list(grouped.values())

    def digest(self) -> str:
        """SHA-256 (first 16 hex) over the memories, turns and questions: which trace this is."""
        h = hashlib.sha256(self.name.encode())
        for ns, text, created in zip(self.memory_namespaces, self.memory_texts, self.memory_created.tolist()):
            h.update(f"m|{ns}|{created:.0f}|{text}\n".encode())
        for turn in self.turns:
            h.update(f"t|{turn.namespace}|{turn.session}|{turn.role}|{turn.timestamp:.0f}|{turn.recall}|"
                     f"{turn.text}\n".encode())
        for q in self.questions:
            h.update(f"q|{q.namespace}|{q.after_turn}|{','.join(q.evidence)}|{q.text}\n".encode())
        return h.hexdigest()[:16]


def dailydialog_trace(
    data: DailyDialog,
    *,
    sessions: int = 80,
    dialogues_per_session: int = 4,
    memories: int | None = None,
    namespace: str = "agent",
    history_days: float = 365.0,
    turn_gap_s: float = 20.0,
    session_gap_s: float = 3_600.0,
    seed: int = 0,
) -> Trace:
    """Live sessions of same-label dialogues over a memory of the other dialogues.

    Each session joins `dialogues_per_session` dialogues that share one topic label (a new
    label each session, drawn by frequency), utterances alternating user/assistant; the agent
    recalls after each user message. The initial memories are the utterances of the dialogues
    not used live (all of them, or whole dialogues up to `memories` utterances), each dialogue
    dated at a random moment of the `history_days` before the first session.
    """
    if sessions < 1 or dialogues_per_session < 1:
        raise InvalidInputError("sessions and dialogues_per_session must be at least 1")
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.topics)
    pools = {int(label): list(rng.permutation(np.flatnonzero(labels == label))) for label in np.unique(labels)}
    live: list[tuple[int, list[int]]] = []
    previous = -1
    for _ in range(sessions):
        usable = [label for label, pool in pools.items() if len(pool) >= dialogues_per_session and label != previous]
        if not usable:
            raise InvalidInputError(f"DailyDialog has too few dialogues for {sessions} sessions of "
                                    f"{dialogues_per_session}")
        weights = np.array([len(pools[label]) for label in usable], dtype=np.float64)
        label = int(rng.choice(usable, p=weights / weights.sum()))
        live.append((label, [int(pools[label].pop()) for _ in range(dialogues_per_session)]))
        previous = label
    used = {dialogue for _, chosen in live for dialogue in chosen}
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in data.dialogues])])

    rest = [int(i) for i in rng.permutation(len(data.dialogues)) if int(i) not in used]
    mem_texts, mem_rows, mem_created, mem_sources, mem_labels = [], [], [], [], []
    for dialogue in rest:
        utterances = data.dialogues[dialogue]
        if memories is not None and len(mem_texts) + len(utterances) > memories:
            break
        day = TRACE_START - float(rng.uniform(0.0, history_days)) * DAY_S
        for u, text in enumerate(utterances):
            mem_texts.append(text)
            mem_rows.append(int(offsets[dialogue]) + u)
            mem_created.append(day + u * turn_gap_s)
            mem_sources.append(f"dd:{dialogue}:{u}")
            mem_labels.append(int(labels[dialogue]))

    turns: list[TraceTurn] = []
    clock = TRACE_START
    for session, (label, chosen) in enumerate(live):
        for dialogue in chosen:
            for u, text in enumerate(data.dialogues[dialogue]):
                role = "user" if u % 2 == 0 else "assistant"
                turns.append(TraceTurn(namespace, session, role, text, int(offsets[dialogue]) + u, clock, label,
                                       role == "user", f"dd:{dialogue}:{u}"))
                clock += turn_gap_s
            clock += 3 * turn_gap_s  # a short pause between dialogues of one session
        clock += session_gap_s
    return Trace(
        name=f"dailydialog(sessions={sessions},per_session={dialogues_per_session},memories={memories},seed={seed})",
        vectors=data.embeddings(),
        memory_namespaces=[namespace] * len(mem_texts),
        memory_texts=mem_texts,
        memory_rows=np.asarray(mem_rows, dtype=np.int64),
        memory_created=np.asarray(mem_created, dtype=np.float64),
        memory_sources=mem_sources,
        memory_labels=np.asarray(mem_labels, dtype=np.int64),
        turns=turns,
    )


def locomo_trace(
    conversations: Sequence[LocomoConversation],
    encode: Callable[[list[str]], np.ndarray],
    *,
    turn_gap_s: float = 30.0,
    categories: Sequence[int] = (1, 2, 3, 4),
) -> Trace:
    """LoCoMo conversations replayed session by session in date order, starting from no memory.

    Namespace = conversation; one session = one live conversation; speaker A is the "user"
    (the agent recalls after each of their turns), speaker B the "assistant". Turns of a
    session are `turn_gap_s` apart from the session's date. Each question (of `categories`,
    with evidence) is asked at the end of the session after the one holding its latest
    evidence turn; questions whose evidence reaches the last session are left out.
    `encode` embeds a batch of texts (e.g. ``MiniLMEncoder().encode``).
    """
    texts: list[str] = []
    turns: list[TraceTurn] = []
    pending: list[tuple[str, str, tuple[str, ...], int, int]] = []  # ns, text, evidence, category, ask at session
    session_end: dict[tuple[str, int], int] = {}
    session_counter = 0
    left_out = {"no usable evidence": 0, "evidence in the last session": 0}
    for conversation in conversations:
        namespace = conversation.sample_id
        numbers = sorted({turn.session for turn in conversation.turns})
        position = {number: i for i, number in enumerate(numbers)}
        speaker_a = conversation.speakers[0]
        last_offset: dict[int, int] = {}
        for turn in conversation.turns:
            offset = last_offset.get(turn.session, -1) + 1
            last_offset[turn.session] = offset
            role = "user" if turn.speaker == speaker_a else "assistant"
            session = session_counter + position[turn.session]
            turns.append(TraceTurn(namespace, session, role, turn.text, len(texts),
                                   turn.timestamp + offset * turn_gap_s, 0, role == "user",
                                   f"{namespace}:{turn.dia_id}"))
            texts.append(turn.text)
            session_end[(namespace, session)] = len(turns) - 1
        present = {turn.dia_id for turn in conversation.turns}
        for question in conversation.questions:
            evidence = [dia_id for dia_id in _dia_ids(question.evidence) if dia_id in present]
            if question.category not in categories or not evidence:
                left_out["no usable evidence"] += question.category in categories
                continue
            ask = max(position[_dia_session(dia_id)] for dia_id in evidence) + 1
            if ask >= len(numbers):
                left_out["evidence in the last session"] += 1
                continue
            pending.append((namespace, question.question, tuple(f"{namespace}:{dia_id}" for dia_id in evidence),
                            question.category, session_counter + ask))
        session_counter += len(numbers)
    questions = []
    for namespace, text, evidence, category, session in pending:
        questions.append(TraceQuestion(namespace, text, len(texts), session_end[(namespace, session)], evidence,
                                       category))
        texts.append(text)
    questions.sort(key=lambda q: q.after_turn)
    vectors = np.asarray(encode(texts), dtype=np.float32)
    return Trace(
        name=f"locomo(conversations={[c.sample_id for c in conversations]},categories={list(categories)})",
        vectors=vectors,
        memory_namespaces=[],
        memory_texts=[],
        memory_rows=np.zeros(0, dtype=np.int64),
        memory_created=np.zeros(0, dtype=np.float64),
        memory_sources=[],
        memory_labels=np.zeros(0, dtype=np.int64),
        turns=turns,
        questions=questions,
        notes={f"questions left out ({why})": count for why, count in left_out.items()},
    )


def _dia_ids(raw: Sequence[str]) -> list[str]:
    """Evidence ids as written in LoCoMo, cleaned: 'D8:6; D9:17' -> two ids, 'D:11:26' -> 'D11:26', 'D' -> none."""
    return [f"D{session}:{turn}" for item in raw for session, turn in _DIA_ID.findall(item)]


def _dia_session(dia_id: str) -> int:
    """'D3:12' -> 3."""
    return int(dia_id[1:].split(":", 1)[0])
