"""Which namespaces are loaded, what each costs in RAM, and which to unload when over budget.

A namespace is the unit of warmth: agent memory is many small namespaces (one per user or
user/agent), most of them idle. A namespace is loaded on first use (one range read of its rows and
codes, its warm graph file, its topic model) and unloaded when the loaded namespaces' bytes pass
``warm_budget_bytes``: least recently used first, and among those used about as recently, the
least used (decayed use count, the same half-life as memories' decay).

This module only keeps the books; the tier manager does the loading and unloading.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class LoadedNamespace:
    name: str
    ns_id: int
    nbytes: int  # RAM of its catalog rows, codes and graph, as last measured
    loaded_at: float
    last_used: float
    uses: float = 0.0  # decayed use count


class NamespaceRegistry:
    """The loaded namespaces, their RAM, and load/unload statistics."""

    def __init__(self, budget_bytes: int, half_life_s: float, clock: Callable[[], float] = time.time) -> None:
        self.budget_bytes = budget_bytes
        self.half_life_s = half_life_s
        self.clock = clock
        self.loaded: dict[str, LoadedNamespace] = {}
        self._bytes = 0  # the sum of loaded[*].nbytes, kept as they change: read on every operation
        self.loads = 0
        self.unloads = 0
        self.load_seconds: list[float] = []  # the last 1,024 loads' latencies

    def __contains__(self, name: object) -> bool:
        return name in self.loaded

    def __len__(self) -> int:
        return len(self.loaded)

    def add(self, name: str, ns_id: int, nbytes: int, seconds: float) -> None:
        now = self.clock()
        previous = self.loaded.pop(name, None)  # not an unload: the same namespace, measured again
        if previous is not None:
            self._bytes -= previous.nbytes
        self.loaded[name] = LoadedNamespace(name, ns_id, nbytes, now, now)
        self._bytes += nbytes
        self.loads += 1
        self.load_seconds.append(seconds)
        del self.load_seconds[:-1024]

    def remove(self, name: str) -> None:
        entry = self.loaded.pop(name, None)
        if entry is not None:
            self._bytes -= entry.nbytes
            self.unloads += 1

    def touch(self, name: str) -> None:
        entry = self.loaded.get(name)
        if entry is None:
            return
        now = self.clock()
        entry.uses = entry.uses * 0.5 ** (max(now - entry.last_used, 0.0) / self.half_life_s) + 1.0
        entry.last_used = now

    def resize(self, name: str, nbytes: int) -> None:
        entry = self.loaded.get(name)
        if entry is not None:
            self._bytes += nbytes - entry.nbytes
            entry.nbytes = nbytes

    @property
    def nbytes(self) -> int:
        return self._bytes

    def over_budget(self) -> bool:
        return self.nbytes > self.budget_bytes

    def victims(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Namespaces to unload, first to last, until the rest fit in the budget (never `keep`).

        Ranked by idle time shortened by use: a namespace used often stays longer than one used
        once at the same moment (idle / (1 + ln(1 + uses)))."""
        excess = self.nbytes - self.budget_bytes
        if excess <= 0:
            return []
        now = self.clock()

        def staleness(entry: LoadedNamespace) -> float:
            return (now - entry.last_used) / (1.0 + math.log1p(entry.uses))

        chosen = []
        ranked = sorted(list(self.loaded.values()), key=staleness, reverse=True)
        for entry in ranked[:-1]:  # never the most recently used one: it may be in use right now
            if excess <= 0:
                break
            if entry.name in keep:
                continue
            chosen.append(entry.name)
            excess -= entry.nbytes
        return chosen

    def stats(self) -> dict[str, float | int]:
        latencies = sorted(self.load_seconds)
        p50 = latencies[len(latencies) // 2] if latencies else 0.0
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
        return {"loaded": len(self.loaded), "bytes": self.nbytes, "budget_bytes": self.budget_bytes,
                "loads": self.loads, "unloads": self.unloads, "load_p50_ms": p50 * 1e3, "load_p99_ms": p99 * 1e3}
