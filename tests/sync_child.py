"""The process killed during syncs: it edits two stores and syncs them, in a loop, reporting each
acknowledged write (one JSON object a line on stdout, flushed at once).

Run as ``python -m tests.sync_child LOCAL REMOTE SEED`` (REMOTE a directory, or ``pg:SCHEMA`` for
the PostgreSQL server ``TIERED_MEMORY_PG_DSN`` names). The parent SIGKILLs it at random moments,
mostly inside a sync (each sync moves many small batches), then checks both stores.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile

from tiered_memory import TieredMemory

from .crash_child import DIM, vector_for


def open_side(where: str) -> TieredMemory:
    if where.startswith("pg:"):
        from tiered_memory.tiers.pg_cold import postgres_cold

        cache = tempfile.mkdtemp(prefix="sync-child-")
        return TieredMemory(cache, encoder=None, dimension=DIM,
                            cold=postgres_cold(os.environ["TIERED_MEMORY_PG_DSN"], schema=where[3:]))
    return TieredMemory(where, encoder=None, dimension=DIM)


def _emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(local_path: str, remote_path: str, seed: int) -> None:
    rng = random.Random(seed)
    local, remote = open_side(local_path), open_side(remote_path)
    _emit({"ready": True})
    seq = 0
    while True:
        for side_name, side in (("local", local), ("remote", remote)):
            seq += 1
            namespace = rng.choice(["n0", "n1"])
            ids = [f"{seed}-{seq}-{j}" for j in range(rng.randint(1, 6))]
            texts = [f"memory {memory_id} from {side_name}" for memory_id in ids]
            side.add_many(texts, namespace=namespace, ids=ids, vectors=[vector_for(t) for t in texts])
            _emit({"added": ids, "side": side_name})
            held = side.ids(namespace)
            if held and rng.random() < 0.6:
                memory_id = rng.choice(held)
                text = f"memory {memory_id} changed at {seed}-{seq} on {side_name}"
                side.update(memory_id, text=text, vector=vector_for(text))
            if held and rng.random() < 0.3:
                memory_id = rng.choice(held)
                side.delete(memory_id)
                _emit({"deleted": memory_id})
        _emit({"syncing": seq})
        local.sync(remote, batch_size=2)
        _emit({"synced": seq})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
