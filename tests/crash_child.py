"""The process that gets killed: it changes a store in a loop and reports every operation.

Run as ``python -m tests.crash_child STORE SEED DURABILITY``. Each write is announced on stdout
before the call (``{"begin": ...}``) and acknowledged after it returns (``{"ack": seq}``), one
JSON object per line, flushed at once. The parent SIGKILLs this process at a random moment and
then checks that everything acknowledged is in the store: at most the one operation that was
begun and not acknowledged may or may not have happened (all of it, or none of it).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from typing import Any

import numpy as np

from tiered_memory import TieredMemory

DIM = 32
NAMESPACES = ("agent/a", "agent/b")
TARGET_SIZE = 150  # keep the store near this size, so the parent's checks stay quick
# Small tiers and frequent automatic maintenance, so kills land in promotions, demotions,
# index saves, topic fits and int8 re-calibrations as well as in plain writes.
# exact_search_max is low so that namespaces get hnswlib graphs (and searches use them).
SETTINGS: dict[str, Any] = dict(
    hot_capacity=8, warm_capacity=40, maintain_every_ops=60, calibration_size=48, topic_min_memories=64,
    exact_search_max=16,
)
# Profile "unloading": six namespaces under a warm budget of a few rows, so the background thread
# unloads (persisting rows, topic models and graphs) all the time, and an on-disk cold index is
# built (and rebuilt) in the background past 24 cold rows: kills land inside unloads, index builds
# and their installs as well.
PROFILES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "default": (NAMESPACES, SETTINGS),
    "unloading": (tuple(f"agent/{c}" for c in "abcdef"),
                  {**SETTINGS, "warm_budget_bytes": 3_000, "cold_index_min_rows": 24}),
}
PROFILE_VARIABLE = "TIERED_MEMORY_CRASH_PROFILE"


def vector_for(text: str) -> np.ndarray:
    """The embedding of a text in these tests: a unit vector seeded by the text's hash."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(store: str, seed: int, durability: str) -> None:
    rng = random.Random(seed)
    namespaces, settings = PROFILES[os.environ.get(PROFILE_VARIABLE, "default")]
    mem = TieredMemory(store, encoder=None, dimension=DIM, durability=durability, **settings)
    live = {namespace: mem.ids(namespace) for namespace in namespaces}
    _emit({"ready": len(mem)})
    seq = 0
    while True:
        seq += 1
        size = sum(len(ids) for ids in live.values())
        namespace = rng.choice(namespaces)
        ids = live[namespace]
        roll = rng.random()
        add_share = 0.55 if size < TARGET_SIZE else 0.25
        if roll < add_share or not ids:
            count = 1 if rng.random() < 0.7 else rng.randint(2, 12)
            new_ids = [f"{seed}-{seq}-{j}" for j in range(count)]
            texts = [f"memory {memory_id} \u00e9t\u00e9 rev {rng.random():.6f}" for memory_id in new_ids]
            metadata = [{"rev": seq, "seed": seed, "tags": ["crash", namespace]} for _ in new_ids]
            _emit({"begin": seq, "op": "add", "namespace": namespace, "ids": new_ids, "texts": texts,
                   "metadata": metadata})
            vectors = np.stack([vector_for(text) for text in texts])
            if count == 1:
                mem.add(texts[0], namespace=namespace, metadata=metadata[0], vector=vectors[0], id=new_ids[0])
            else:
                mem.add_many(texts, namespace=namespace, metadata=metadata, vectors=vectors, ids=new_ids)
            ids.extend(new_ids)
        elif roll < add_share + 0.2:
            memory_id = rng.choice(ids)
            change: dict[str, Any] = {}
            what = rng.random()
            if what < 0.5:
                change["text"] = f"memory {memory_id} updated at {seq} rev {rng.random():.6f}"
            if what > 0.3:
                change["metadata"] = {"rev": seq, "updated": True}
            if rng.random() < 0.3:
                change["importance"] = round(rng.random(), 3)
            _emit({"begin": seq, "op": "update", "id": memory_id, **change})
            vector = vector_for(change["text"]) if "text" in change else None
            mem.update(memory_id, vector=vector, **change)
        elif roll < add_share + 0.2 + (0.25 if size >= TARGET_SIZE else 0.1):
            memory_id = ids.pop(rng.randrange(len(ids)))
            _emit({"begin": seq, "op": "delete", "id": memory_id})
            mem.delete(memory_id)
        elif roll < 0.97:
            # Reads change no memory but move them between tiers (and mark statistics dirty).
            _emit({"begin": seq, "op": "read"})
            memory_id = rng.choice(ids)
            mem.get(memory_id)
            mem.search(vector=vector_for(memory_id), namespace=namespace, k=5)
        else:
            _emit({"begin": seq, "op": "maintain"})
            mem.maintain()
        _emit({"ack": seq})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
