"""A process that changes one user's agent hub on a PostgreSQL store while others do too.

Run as ``python -m tests.pg_hub_child DSN SCHEMA CACHE WHO ROUNDS``: registers its agent, then
shares memories with every other agent and updates the shared memories it can write, ROUNDS
times; prints one JSON line per acknowledged change."""

from __future__ import annotations

import json
import sys

from tiered_memory import TieredMemory
from tiered_memory.tiers.pg_cold import postgres_cold

from .crash_child import DIM, vector_for


def main(dsn: str, schema: str, cache: str, who: str, rounds: int) -> None:
    mem = TieredMemory(cache, cold=postgres_cold(dsn, schema=schema), encoder=None, dimension=DIM)
    hub = mem.agents("team")
    hub.register(who)
    print(json.dumps({"ready": who}), flush=True)
    sys.stdin.readline()  # every child registered: go
    others = [name for name in hub.agent_names() if name != who]
    for i in range(rounds):
        text = f"{who} shares {i}"
        memory_id = hub.share(who, others, text, vector=vector_for(text), access="read-write")
        print(json.dumps({"shared": memory_id, "by": who}), flush=True)
        for shared_id in sorted(hub.visible(who))[:3]:
            changed = f"{who} changed {shared_id} at {i}"
            version = hub.update(shared_id, {"text": changed, "vector": vector_for(changed)}, by=who).version
            print(json.dumps({"updated": shared_id, "version": version, "by": who}), flush=True)
    mem.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
