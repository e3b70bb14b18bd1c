"""A process of its own on a shared PostgreSQL cold store, for tests/test_pg_many_writers.py.

Run as ``python -m tests.pg_writer_child CONFIG_JSON``. Two modes:

- ``"writer"``: random adds, batch adds, updates and deletes over the configured namespaces
  (which other writers share; half the updates go to a few ``contended`` memories of each, so
  that writers update one memory at once) until ``seconds`` have passed or the process is killed. Each write
  is logged before the call (``{"begin": seq, ...}``) and after it returns (``{"ack": seq, ...}``
  with the version the engine gave back), one JSON line per ``os.write`` to the process's own log
  file. A write that has returned is in the kernel's page cache before the next operation starts,
  which SIGKILL does not undo (only a machine crash would need an fsync, which these tests do not
  simulate). A call that finds its memory gone (another writer deleted it) logs ``{"miss": seq}``.
  When the time is up it logs ``{"done": ...}``, waits for the file ``dump_when`` and logs what it
  sees of every namespace (``{"view": ...}``).
- ``"serve"``: one JSON command per stdin line (add, update, get, search, list, ...), one JSON
  answer per stdout line; the parent drives several of these to line up races and reads.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory import MemoryNotFoundError, StorageError, TieredMemory
from tiered_memory.tiers.pg_cold import postgres_cold

from .crash_child import DIM, vector_for

POLL_S = 0.005
SEARCHED_PER_NAMESPACE = 40  # searches per namespace in a view: enough to catch a stale index, quick


def open_engine(config: dict[str, Any]) -> TieredMemory:
    return TieredMemory(config["cache"], cold=postgres_cold(config["dsn"], schema=config["schema"]), encoder=None,
                        dimension=DIM, **config.get("settings", {}))


def retried(call: Any) -> Any:
    """The call, again while another process's re-calibration of the int8 ranges refuses it: the
    error says nothing was stored and the new ranges are loaded, so calling again is the advice."""
    for _ in range(5):
        try:
            return call()
        except StorageError as err:
            if "re-calibrated" not in str(err):
                raise
    return call()


def view(mem: TieredMemory, namespaces: list[str]) -> dict[str, Any]:
    """What this process sees of each namespace: id -> [text, version, metadata], and for a
    sample of its memories (the same sample in every process that sees the same ids) the top
    ids of a search by the memory's own vector."""
    out: dict[str, Any] = {}
    for namespace in namespaces:
        listed = mem.list_memories(namespace, limit=100_000)
        memories = {m.id: [m.text, m.version, dict(m.metadata)] for m in listed}
        sample = random.Random(0).sample(sorted(memories), min(SEARCHED_PER_NAMESPACE, len(memories)))
        found = {memory_id: [hit.memory.id for hit in mem.search(vector=vector_for(memories[memory_id][0]),
                                                                 namespace=namespace, k=3)]
                 for memory_id in sample}
        out[namespace] = {"memories": memories, "found": found, "count": mem.count(namespace)}
    return out


class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def __call__(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode("utf-8")
        os.write(self.fd, data)  # one write per line: a kill leaves whole lines or a cut last one


def write_randomly(config: dict[str, Any]) -> None:
    rng = random.Random(config["seed"])
    namespaces: list[str] = config["namespaces"]
    prefix = config["prefix"]  # unique per process: client-made ids never collide
    log = Log(config["log"])
    mem = open_engine(config)
    log({"ready": time.time()})
    stop_at = time.monotonic() + config["seconds"]
    seq = 0
    while time.monotonic() < stop_at:
        seq += 1
        namespace = rng.choice(namespaces)
        roll = rng.random()
        if roll < 0.2:  # a read: moves memories between tiers, reloads namespaces others changed
            mem.search(vector=vector_for(f"probe {seq}"), namespace=namespace, k=5)
            continue
        ids = mem.ids(namespace) if roll >= 0.5 else []
        if roll < 0.5 or not ids:
            count = 1 if rng.random() < 0.6 else rng.randint(2, 6)
            new_ids = [f"{prefix}-{seq}-{j}" for j in range(count)]
            texts = [f"{memory_id} added {rng.random():.6f}" for memory_id in new_ids]
            log({"begin": seq, "op": "add", "namespace": namespace, "ids": new_ids, "texts": texts})
            vectors = np.stack([vector_for(text) for text in texts])
            retried(lambda: mem.add_many(texts, namespace=namespace, vectors=vectors,  # noqa: B023 (runs here)
                                         ids=new_ids, metadata={"by": prefix}))  # noqa: B023
            log({"ack": seq})
            continue
        contended = config["contended"][namespace]  # updated by every writer, never deleted
        try:
            if roll < 0.85:
                memory_id = rng.choice(contended if rng.random() < 0.5 else ids)
                change: dict[str, Any] = {"metadata": {"by": prefix, "at": seq}}
                if rng.random() < 0.6:
                    change["text"] = f"{memory_id} updated by {prefix} at {seq} {rng.random():.6f}"
                log({"begin": seq, "op": "update", "id": memory_id, **change})
                vector = vector_for(change["text"]) if "text" in change else None
                updated = retried(lambda: mem.update(memory_id, vector=vector,  # noqa: B023 (runs here)
                                                     namespace=namespace, **change))  # noqa: B023
                log({"ack": seq, "version": updated.version})
            else:
                memory_id = rng.choice([memory_id for memory_id in ids if memory_id not in contended] or ids)
                log({"begin": seq, "op": "delete", "id": memory_id})
                mem.delete(memory_id, namespace=namespace)
                log({"ack": seq})
        except MemoryNotFoundError:
            log({"miss": seq})
    log({"done": seq})
    dump_when = Path(config["dump_when"])
    while not dump_when.exists():  # every writer has stopped: the views must agree now
        time.sleep(POLL_S)
    log({"view": view(mem, namespaces)})
    mem.close()


class Overtaken(logging.Handler):
    """Counts the engine's retries of updates and adds another process's write overtook."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "overtaken" in record.getMessage()


def serve(config: dict[str, Any]) -> None:
    """Answer commands from stdin until it closes."""
    mem = open_engine(config)
    overtaken = Overtaken()
    engine_log = logging.getLogger("tiered_memory.engine")
    engine_log.setLevel(logging.DEBUG)
    engine_log.addHandler(overtaken)

    def answer(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    answer({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer(run(mem, command, overtaken))
        except MemoryNotFoundError as err:
            answer({"missing": str(err)})
    mem.close()


def run(mem: TieredMemory, command: dict[str, Any], overtaken: Overtaken) -> dict[str, Any]:
    op = command.pop("op")
    namespace = command.get("namespace")
    if op == "add":
        before = overtaken.count
        memory_id = mem.add(command["text"], namespace=namespace, vector=vector_for(command["text"]))
        return {"id": memory_id, "at": time.monotonic(), "retries": overtaken.count - before}
    if op == "update":
        text = command.get("text")
        before = overtaken.count
        updated = mem.update(command["id"], text=text, metadata=command.get("metadata"),
                             vector=None if text is None else vector_for(text))
        return {"version": updated.version, "at": time.monotonic(), "retries": overtaken.count - before}
    if op == "delete":
        mem.delete(command["id"])
        return {"at": time.monotonic()}
    if op == "get":
        memory = mem.get(command["id"], namespace=namespace)
        return {"text": memory.text, "version": memory.version, "namespace": memory.namespace}
    if op == "search":
        hits = mem.search(vector=vector_for(command["text"]), namespace=namespace, k=command.get("k", 5))
        return {"ids": [hit.memory.id for hit in hits], "namespaces": [hit.memory.namespace for hit in hits]}
    if op == "list":
        return {"ids": [m.id for m in mem.list_memories(namespace, limit=100_000)], "count": mem.count(namespace)}
    if op == "until":
        return until(mem, command)
    if op == "view":
        return view(mem, command["namespaces"])
    raise ValueError(f"unknown command {op!r}")


def until(mem: TieredMemory, command: dict[str, Any]) -> dict[str, Any]:
    """Poll get, search and list until all three show the expected state of one memory (text and
    version; None: gone), or `within_s` passes; returns when they first all did (monotonic time,
    one clock for every process of the machine). `probe`: the text whose vector the search uses
    (the memory's latest text)."""
    memory_id, namespace, expected = command["id"], command["namespace"], command["expected"]
    deadline = time.monotonic() + command["within_s"]
    while True:
        seen = looks(mem, memory_id, namespace, expected, command["probe"])
        now = time.monotonic()
        if seen["agrees"] or now > deadline:
            return {**seen, "at": now}
        time.sleep(POLL_S)


def looks(mem: TieredMemory, memory_id: str, namespace: str, expected: list[Any] | None,
          probe: str) -> dict[str, Any]:
    """What get, a search by the probe text's vector and list_memories show of one memory."""
    try:
        memory = mem.get(memory_id, namespace=namespace)
        got = [memory.text, memory.version]
    except MemoryNotFoundError:
        got = None
    found = memory_id in [hit.memory.id for hit in mem.search(vector=vector_for(probe), namespace=namespace, k=3)]
    listed = memory_id in {m.id for m in mem.list_memories(namespace, limit=100_000)}
    agrees = got == expected and found == (expected is not None) and listed == (expected is not None)
    return {"got": got, "found": found, "listed": listed, "agrees": agrees}


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    {"writer": write_randomly, "serve": serve}[settings["mode"]](settings)
