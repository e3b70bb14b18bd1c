"""`tiered-memory demo`: the main job on the embedded defaults, end to end.

A local store directory, the bundled all-MiniLM-L6-v2, no server and no network: remember a
user's preferences and past conversations, search them, use the tiers, close, reopen.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from tiered_memory import TieredMemory
from tiered_memory.encoders import MiniLMEncoder

PREFERENCES = [
    ("User prefers technical explanations with code examples", {"confidence": 0.9}, 0.8),
    ("User likes short answers first, details after", {"confidence": 0.7}, 0.6),
    ("User dislikes meetings before 10am", {"confidence": 0.4}, 0.3),
]
CONVERSATIONS = [
    ("Discussed RAG for document analysis on March 15th", {"project": "rag"}),
    ("Compared chunk sizes for embedding long PDFs", {"project": "rag"}),
    ("Debugged a memory leak in the ingestion worker", {"project": "ingest"}),
    ("Planned the quarterly roadmap with the product team", {"project": "planning"}),
    ("Reviewed the pull request that adds hybrid search", {"project": "rag"}),
    ("Talked about hiking in the Alps next summer", {"project": "personal"}),
]


def _micros(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1e6:.1f} us"


def run_demo(path: Path, fresh: bool = True) -> dict[str, object]:
    """Run the demo in `path`; prints what happens and returns the figures it printed."""
    if fresh and path.exists():
        shutil.rmtree(path)
    out: dict[str, object] = {}
    print(f"tiered_memory demo: store in {path}/ (LMDB + hnswlib files), model all-MiniLM-L6-v2, offline")
    started = time.perf_counter()
    encoder = MiniLMEncoder()
    encoder.encode(["load the model"])
    print(f"  model loaded in {time.perf_counter() - started:.1f} s")

    with TieredMemory(path, encoder=encoder) as mem:
        started = time.perf_counter()
        mid = mem.add(PREFERENCES[0][0], namespace="user_123", kind="preference",
                      metadata=PREFERENCES[0][1], importance=PREFERENCES[0][2])
        mem.add_many([t for t, _, _ in PREFERENCES[1:]], namespace="user_123", kind="preference",
                     metadata=[m for _, m, _ in PREFERENCES[1:]], importance=[i for _, _, i in PREFERENCES[1:]])
        mem.add_many([t for t, _ in CONVERSATIONS], namespace="user_123", kind="conversation",
                     metadata=[m for _, m in CONVERSATIONS])
        mem.add("User prefers Portuguese food", namespace="user_456", kind="preference")
        print(f"  added {len(mem)} memories in {time.perf_counter() - started:.2f} s "
              "(durable: committed to LMDB before each call returned)")

        query = "How should I explain technical concepts?"
        print(f'\n  search "{query}" in user_123, preferences with confidence >= 0.5:')
        for hit in mem.search(query, namespace="user_123", k=5, kinds=["preference"],
                              where={"confidence": {"$gte": 0.5}}):
            print(f"    {hit.score:.3f}  [{hit.tier.value:4}]  {hit.memory.text}")
        query = "what did we say about retrieval over documents?"
        print(f'\n  search "{query}" (all kinds):')
        for hit in mem.search(query, namespace="user_123", k=3):
            print(f"    {hit.score:.3f}  [{hit.tier.value:4}]  {hit.memory.text}  {hit.memory.metadata}")
        isolated = mem.search(query, namespace="user_456", k=3)
        print(f"  the same query in user_456 sees only its own memory: {[h.memory.text for h in isolated]}")

        mem.get(mid)
        samples = []
        for _ in range(2_000):
            t0 = time.perf_counter()
            mem.get(mid)
            samples.append(time.perf_counter() - t0)
        out["hot_get_p50_us"] = statistics.median(samples) * 1e6
        print(f"\n  hot get of a memory: {_micros(samples)} over 2,000 calls (no disk)")
        samples = []
        for _ in range(200):
            t0 = time.perf_counter()
            mem.search(query, namespace="user_123", k=3)
            samples.append(time.perf_counter() - t0)
        out["cached_query_search_p50_us"] = statistics.median(samples) * 1e6
        print(f"  repeated text search (query embedding cached): {_micros(samples)}")

        updated = mem.update(mid, importance=0.9, metadata={"confidence": 0.95, "source": "explicit"})
        print(f"\n  update -> version {updated.version}, metadata {updated.metadata}")
        mem.delete(mem.search("hiking", namespace="user_123", k=1)[0].memory.id)
        report = mem.maintain()
        print(f"  maintain(): flushed {report.flushed} records, demoted {report.demoted_to_warm} to warm and "
              f"{report.demoted_to_cold} to cold, in {report.seconds * 1e3:.0f} ms")
        stats = mem.stats()
        for tier in ("hot", "warm", "cold"):
            s = getattr(stats, tier)
            print(f"  {tier:4}: {s.count:3} memories, {s.bytes:>9,} B in RAM, {s.disk_bytes:>9,} B on disk, "
                  f"{s.hits} hits, {s.misses} misses")
        print(f"  promotions {stats.promotions}, demotions {stats.demotions}")
        out["memories"] = stats.memories

    started = time.perf_counter()
    with TieredMemory(path, encoder=encoder) as mem:
        reopened = time.perf_counter() - started
        again = mem.get(mid)
        hit = mem.search("explain with code", namespace="user_123", k=1)[0]
        out["reopen_s"] = reopened
        print(f"\n  reopened in {reopened * 1e3:.0f} ms: {len(mem)} memories; '{again.text[:40]}...' "
              f"was used {again.access_count} times, sits in {mem.tier_of(mid).value}; top hit: {hit.memory.text!r}")
    return out
