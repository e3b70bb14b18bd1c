"""The lexical side of loaded namespaces: one BM25 index each, built on first text search.

A namespace's :class:`~tiered_memory.search.lexical.LexicalIndex` is built from its records the first
time a hybrid or lexical search needs it (37 us per memory here, benchmarks/results/lexical/
rebuild.md: 4 ms for a 100-memory tenant), kept in step with every add, update and delete while
the namespace is loaded, and dropped when it unloads, so it tiers with the namespace and a store
searched only by vector never pays for it. It lives in RAM only: no term of any memory, sealed
or not, reaches the disk through it.

Conversation turns (``kind="conversation"``, as working memory archives them) carry their
neighbours' words as context: the turns one and two places before and after in
(created_at, id) order count at 0.5 and 0.25 (``fusion.NEIGHBOUR_WEIGHTS``, a halving, not fitted;
LoCoMo dev: BM25 hit@10 0.678 -> 0.789, benchmarks/reports/retrieval.md). Other memories (facts,
preferences) have no order that relates them, so they carry none.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tiered_memory.search.lexical import LexicalIndex

CONVERSATION_KIND = "conversation"
_LEVELS = 2
# Turns further apart than this belong to different sessions and are not each other's context
# (a conversation's messages are seconds apart; its sessions hours or days).
SESSION_GAP_S = 3_600.0


@dataclass(frozen=True, slots=True)
class Doc:
    id: str
    text: str
    kind: str
    created_at: float
    sealed: bool


class _Turns:
    """A namespace's conversation turns in (created_at, id) order, for neighbour contexts."""

    def __init__(self) -> None:
        self.keys: list[tuple[float, str]] = []
        self.texts: dict[str, str] = {}
        self.created: dict[str, float] = {}

    def insert(self, doc: Doc) -> None:
        if doc.id in self.texts:
            self.remove(doc.id)
        bisect.insort(self.keys, (doc.created_at, doc.id))
        self.texts[doc.id] = doc.text
        self.created[doc.id] = doc.created_at

    def remove(self, memory_id: str) -> list[str]:
        """Forget a turn; returns the ids whose contexts held it."""
        if memory_id not in self.texts:
            return []
        affected = self.around(memory_id)
        del self.keys[self._position(memory_id)]
        del self.texts[memory_id], self.created[memory_id]
        return affected

    def _position(self, memory_id: str) -> int:
        return bisect.bisect_left(self.keys, (self.created[memory_id], memory_id))

    def around(self, memory_id: str) -> list[str]:
        i = self._position(memory_id)
        return [self.keys[j][1] for j in range(max(0, i - _LEVELS), min(len(self.keys), i + _LEVELS + 1)) if j != i]

    def levels(self, memory_id: str) -> list[list[str]]:
        """The turns one and two places away in the same session, nearest level first."""
        i = self._position(memory_id)
        created = self.keys[i][0]
        out = []
        for step in range(1, _LEVELS + 1):
            out.append([self.keys[j][1] for j in (i - step, i + step)
                        if 0 <= j < len(self.keys) and abs(self.keys[j][0] - created) <= SESSION_GAP_S])
        return out

    def contexts(self, memory_id: str) -> tuple[str, str]:
        first, second = (" ".join(self.texts[n] for n in level) for level in self.levels(memory_id))
        return first, second


class _Namespace:
    def __init__(self) -> None:
        self.index = LexicalIndex(None)
        self.turns = _Turns()
        self.sealed: dict[str, bool] = {}
        self.kinds: dict[str, str] = {}
        self.neighbours: tuple[dict[str, int], np.ndarray] | None = None  # built on demand, reset by changes


class LexicalTier:
    """BM25 indexes of the loaded namespaces that were searched by text."""

    def __init__(self, read_namespace: Callable[[str], list[Doc]]) -> None:
        self._read_namespace = read_namespace
        self._indexes: dict[str, _Namespace] = {}
        self._lock = threading.Lock()

    def __contains__(self, namespace: object) -> bool:
        return namespace in self._indexes

    def search(self, namespace: str, query: str, k: int,
               allowed: Collection[str] | None = None) -> tuple[list[str], list[float]]:
        return self._get(namespace).index.search(query, k, allowed)

    def _get(self, namespace: str) -> _Namespace:
        entry = self._indexes.get(namespace)
        if entry is None:
            with self._lock:
                entry = self._indexes.get(namespace)
                if entry is None:
                    entry = _Namespace()
                    self._add_docs(entry, self._read_namespace(namespace))
                    self._indexes[namespace] = entry
        return entry

    def added(self, namespace: str, docs: Sequence[Doc]) -> None:
        """New or changed memories (after their cold write); a no-op for namespaces not built."""
        entry = self._indexes.get(namespace)
        if entry is not None and docs:
            with self._lock:
                self._add_docs(entry, docs)

    def removed(self, namespace: str, memory_ids: Iterable[str]) -> None:
        entry = self._indexes.get(namespace)
        if entry is None:
            return
        with self._lock:
            ids = list(memory_ids)
            affected: list[str] = []
            for memory_id in ids:
                affected += entry.turns.remove(memory_id)
                entry.sealed.pop(memory_id, None)
                entry.kinds.pop(memory_id, None)
            entry.index.remove(ids)
            entry.neighbours = None
            self._reindex(entry, [i for i in dict.fromkeys(affected) if i in entry.turns.texts])

    def neighbours(self, namespace: str) -> tuple[dict[str, int], np.ndarray] | None:
        """The namespace's conversation turns as (position of each id, neighbour positions): an
        (n, 2 levels, 2) int array, -1 where a turn has no neighbour there; None without turns."""
        entry = self._get(namespace)
        with self._lock:
            if entry.neighbours is None and entry.turns.texts:
                ids = [key[1] for key in entry.turns.keys]
                position = {memory_id: i for i, memory_id in enumerate(ids)}
                table = np.full((len(ids), _LEVELS, 2), -1, dtype=np.int64)
                for i, memory_id in enumerate(ids):
                    for level, near in enumerate(entry.turns.levels(memory_id)):
                        table[i, level, :len(near)] = [position[n] for n in near]
                entry.neighbours = (position, table)
            return entry.neighbours

    def drop(self, namespace: str) -> None:
        """The namespace unloads: its index goes with it."""
        with self._lock:
            self._indexes.pop(namespace, None)

    def _add_docs(self, entry: _Namespace, docs: Sequence[Doc]) -> None:
        entry.neighbours = None
        plain = [doc for doc in docs if doc.kind != CONVERSATION_KIND]
        for doc in docs:
            entry.sealed[doc.id] = doc.sealed
            entry.kinds[doc.id] = doc.kind
            if doc.id in entry.turns.texts and doc.kind != CONVERSATION_KIND:
                entry.turns.remove(doc.id)
        if plain:
            entry.index.add([d.id for d in plain], [d.text for d in plain], sealed=[d.sealed for d in plain])
        turns = [doc for doc in docs if doc.kind == CONVERSATION_KIND]
        if not turns:
            return
        for doc in turns:
            entry.turns.insert(doc)
        # A new turn changes the contexts of the turns around it: re-index those too.
        touched: dict[str, None] = {}
        for doc in turns:
            touched[doc.id] = None
            for near in entry.turns.around(doc.id):
                touched[near] = None
        self._reindex(entry, list(touched))

    @staticmethod
    def _reindex(entry: _Namespace, ids: list[str]) -> None:
        if not ids:
            return
        entry.index.add(ids, [entry.turns.texts[i] for i in ids], contexts=[entry.turns.contexts(i) for i in ids],
                        sealed=[entry.sealed.get(i, False) for i in ids])
