"""Many writer processes on one PostgreSQL cold store, checked against what each acknowledged.

Writers are real processes (tests/pg_writer_child.py) with an engine and a cache directory each.
They add, update and delete in namespaces they share, log every acknowledged write with the
version the engine gave back, and are SIGKILLed at random moments (seeded, as in test_crash.py).
Afterwards the server's contents must follow from the logs alone: nothing acknowledged lost,
nothing doubled or half applied, one version per acknowledged update, and every process's view
equal to the server's.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiered_memory import TieredMemory

from .crash_child import DIM, vector_for

pytestmark = pytest.mark.postgres

pg_cold = pytest.importorskip("tiered_memory.tiers.pg_cold",
                              reason="psycopg 3 is not installed (pip install '.[postgres]')")
psycopg = pytest.importorskip("psycopg")

ROOT = Path(__file__).resolve().parent.parent
NAMESPACES = ["team/a", "team/b", "team/c"]
PREFILLED = 300  # memories stored before the writers start: past the int8 calibration (256)
# Generous on purpose: a use checks the namespace's version on the server, so a change shows on
# the next read; this bound only keeps a slow, shared CI machine from failing a correct store.
# The real window is measured by the staleness benchmark, not here.
# A few prefilled memories of each namespace that every writer updates (and none deletes).
CONTENDED = {namespace: [f"seed-{n}-{i}" for i in range(3)] for n, namespace in enumerate(NAMESPACES)}
STALENESS_BOUND_S = 2.0
ANSWER_TIMEOUT_S = 60.0


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def child_command(config: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tests.pg_writer_child", json.dumps(config)]


def engine(dsn: str, schema: str, cache: Path) -> TieredMemory:
    return TieredMemory(cache, cold=pg_cold.postgres_cold(dsn, schema=schema), encoder=None, dimension=DIM,
                        promote_in_background=False)


def prefill(dsn: str, schema: str, cache: Path) -> dict[str, dict[str, Any]]:
    """PREFILLED memories spread over NAMESPACES, as a writer's acknowledged adds."""
    added: dict[str, dict[str, Any]] = {}
    with engine(dsn, schema, cache) as mem:
        for n, namespace in enumerate(NAMESPACES):
            ids = [f"seed-{n}-{i}" for i in range(PREFILLED // len(NAMESPACES))]
            texts = [f"{memory_id} prefilled" for memory_id in ids]
            mem.add_many(texts, namespace=namespace, ids=ids, vectors=np.stack([vector_for(t) for t in texts]),
                         metadata={"by": "seed"})
            added.update({memory_id: {"namespace": namespace, "text": text, "metadata": {"by": "seed"}}
                          for memory_id, text in zip(ids, texts)})
    return added


# -- the writers' logs ---------------------------------------------------------------------------


@dataclass
class Logs:
    """Every writer incarnation's log, parsed: acknowledged writes, the write each killed one had
    begun and not acknowledged, the views of those that ran to the end."""

    acked: list[dict[str, Any]] = field(default_factory=list)
    in_flight: list[dict[str, Any]] = field(default_factory=list)
    misses: int = 0
    views: list[dict[str, Any]] = field(default_factory=list)

    def read(self, path: Path, killed: bool) -> None:
        if killed and not path.exists():
            return  # killed before it opened its log
        begun: dict[int, dict[str, Any]] = {}
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n"):
                assert killed, f"{path}: a cut line in the log of a process that was not killed"
                break
            message = json.loads(line)
            if "begin" in message:
                begun[message["begin"]] = message
            elif "ack" in message:
                self.acked.append({**begun.pop(message["ack"]), **message})
            elif "miss" in message:
                begun.pop(message["miss"])
                self.misses += 1
            elif "view" in message:
                self.views.append(message["view"])
        assert len(begun) <= 1, f"{path}: {len(begun)} writes in flight at once in a single-threaded writer"
        assert killed or not begun, f"{path}: a write begun and never acknowledged by a process that ran to the end"
        self.in_flight += begun.values()


def ops(found: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [op for op in found if op["op"] == kind]


def server_state(dsn: str, schema: str, cache: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(each namespace as a fresh engine sees it, in the form of a writer's view; every stored
    memory by id), after checking that the tables hold each memory whole and once."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        counts = {table: dict(conn.execute(f"SELECT ns_id, count(*) FROM {table} GROUP BY ns_id").fetchall())
                  for table in ("tm_records", "tm_rows", "tm_codes", "tm_originals")}
        kept = dict(conn.execute("SELECT ns_id, count FROM tm_namespaces").fetchall())
        row_versions = dict(conn.execute("SELECT memory_id, version FROM tm_rows").fetchall())
    # Every memory whole (record, catalog row, code, original), and each namespace's count the rows'.
    assert len({json.dumps(sorted(by_ns.items())) for by_ns in counts.values()}) == 1, counts
    assert {ns: n for ns, n in kept.items() if n} == counts["tm_rows"]
    from .pg_writer_child import view

    with engine(dsn, schema, cache) as mem:
        seen = view(mem, NAMESPACES)
    stored = {memory_id: {"namespace": namespace, "text": text, "version": version, "metadata": metadata}
              for namespace, part in seen.items() for memory_id, (text, version, metadata) in part["memories"].items()}
    assert len(stored) == sum(counts["tm_rows"].values())  # no memory in two namespaces, none unlisted
    assert {memory_id: memory["version"] for memory_id, memory in stored.items()} == row_versions
    return seen, stored


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    in_flight_applied: int = 0

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


def verify(logs: Logs, added: dict[str, dict[str, Any]], stored: dict[str, dict[str, Any]]) -> Verdict:
    """The stored memories follow from the acknowledged writes; each in-flight write (begun by a
    killed writer) is there whole or not at all."""
    verdict = Verdict()
    check = verdict.check
    added = dict(added)
    for op in ops(logs.acked, "add"):
        for memory_id, text in zip(op["ids"], op["texts"]):
            added[memory_id] = {"namespace": op["namespace"], "text": text, "metadata": {"by": memory_id.split("-")[0]}}
    deleted = {op["id"] for op in ops(logs.acked, "delete")}
    maybe_deleted = {op["id"] for op in ops(logs.in_flight, "delete")}
    updates: dict[str, list[dict[str, Any]]] = {}
    for op in ops(logs.acked, "update"):
        updates.setdefault(op["id"], []).append(op)
    maybe_updated: dict[str, list[dict[str, Any]]] = {}
    for op in ops(logs.in_flight, "update"):
        maybe_updated.setdefault(op["id"], []).append(op)
    # A batch add in flight at a kill: all of it stored, or none.
    for op in ops(logs.in_flight, "add"):
        present = [memory_id in stored for memory_id in op["ids"]]
        seen_by_others = any(memory_id in deleted or memory_id in updates for memory_id in op["ids"])
        committed = any(present) or seen_by_others
        for memory_id, text, there in zip(op["ids"], op["texts"], present):
            if committed and memory_id not in deleted and memory_id not in maybe_deleted:
                check(there, f"batch add {op['ids']} half applied: {memory_id} missing")
            check(committed or not there, f"batch add {op['ids']} half applied: {memory_id} present alone")
            if committed:
                added[memory_id] = {"namespace": op["namespace"], "text": text,
                                    "metadata": {"by": memory_id.split("-")[0]}}
        verdict.in_flight_applied += committed
    for memory_id in deleted:
        check(memory_id not in stored, f"{memory_id}: acknowledged delete undone")
    for memory_id in added.keys() - deleted - maybe_deleted:
        check(memory_id in stored, f"{memory_id}: acknowledged add lost")
    verdict.in_flight_applied += len(maybe_deleted - stored.keys() - deleted)
    for memory_id, memory in stored.items():
        if memory_id not in added:
            check(False, f"{memory_id}: stored, but nobody acknowledged adding it")
            continue
        origin = added[memory_id]
        check(memory["namespace"] == origin["namespace"], f"{memory_id}: in {memory['namespace']}, added to "
                                                          f"{origin['namespace']}")
        mine = updates.get(memory_id, [])
        versions = Counter(op["version"] for op in mine)
        twice = sorted(version for version, n in versions.items() if n > 1)
        check(not twice, f"{memory_id}: versions {twice} acknowledged to two updates")
        final = memory["version"]
        missing = [v for v in range(2, final + 1) if v not in versions]
        check(max(versions, default=1) <= final, f"{memory_id}: stored at version {final}, an update acknowledged "
                                                 f"{max(versions, default=1)}")
        candidates = maybe_updated.get(memory_id, [])
        check(len(missing) <= len(candidates), f"{memory_id}: versions {missing} of {final} come from no "
                                               "acknowledged update (an update lost, or a version skipped)")
        verdict.in_flight_applied += len(missing) if len(missing) <= len(candidates) else 0
        by_version = {op["version"]: op for op in mine}
        # The content the store must hold: the changes in version order, the in-flight updates (if
        # any) filling the versions no acknowledgement names, in whichever order they landed.
        possible = []
        for order in itertools.permutations(candidates, len(missing)):
            history = dict(by_version)
            history.update(zip(missing, order))
            text, metadata = origin["text"], origin["metadata"]
            for version in range(2, final + 1):
                text = history[version].get("text", text)
                metadata = history[version]["metadata"]
            possible.append([text, metadata])
        check([memory["text"], memory["metadata"]] in possible or not possible,
              f"{memory_id}: holds {[memory['text'], memory['metadata']]} at version {final}, the writes say "
              f"{possible[:2]}")
    return verdict


def check_views(logs: Logs, seen: dict[str, Any], processes: int) -> None:
    """Every writer's last view is the server's, and a search by a memory's own vector finds it."""
    assert len(logs.views) == processes
    for part in [seen, *logs.views]:
        for namespace in NAMESPACES:
            missed = [memory_id for memory_id, top in part[namespace]["found"].items() if memory_id not in top]
            assert not missed, f"{namespace}: not found by their own vectors: {missed[:5]}"
            assert part[namespace]["count"] == len(part[namespace]["memories"])
    for n, part in enumerate(logs.views):
        for namespace in NAMESPACES:
            theirs, ours = part[namespace]["memories"], seen[namespace]["memories"]
            differ = sorted(memory_id for memory_id in theirs.keys() | ours.keys()
                            if theirs.get(memory_id) != ours.get(memory_id))
            assert not differ, (f"writer {n} sees {namespace} unlike the server: "
                                f"{[(i, theirs.get(i), ours.get(i)) for i in differ[:3]]}")


# -- running writers -----------------------------------------------------------------------------


class Writer:
    """One writer incarnation (a process) logging to its own file."""

    def __init__(self, dsn: str, schema: str, root: Path, slot: int, incarnation: int, seed: int,
                 seconds: float) -> None:
        self.log = root / f"w{slot}i{incarnation}.log"
        self.stderr_path = root / f"w{slot}i{incarnation}.stderr"
        config = {"mode": "writer", "dsn": dsn, "schema": schema, "cache": str(root / f"cache{slot}"),
                  "seed": seed, "prefix": f"w{slot}i{incarnation}", "namespaces": NAMESPACES, "log": str(self.log),
                  "seconds": seconds, "contended": CONTENDED, "dump_when": str(root / "dump"),
                  "settings": {"hot_capacity": 16}}
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(child_command(config), stdout=subprocess.DEVNULL, stderr=stderr,
                                            cwd=ROOT, env=child_env())
        self.killed = False

    def lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").splitlines() if self.log.exists() else []

    def wait_for(self, start: str, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(line.startswith(start) for line in self.lines()):
            if self.process.poll() is not None:
                raise AssertionError(f"writer {self.log.name} exited ({self.process.returncode}):\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"writer {self.log.name} logged no {start} within {timeout_s:g} s")
            time.sleep(0.02)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL, self.stderr()
        self.killed = True

    def finish(self) -> None:
        returncode = self.process.wait(timeout=ANSWER_TIMEOUT_S)
        assert returncode == 0, f"writer {self.log.name} exited {returncode}:\n{self.stderr()}"

    def stderr(self) -> str:
        return self.stderr_path.read_text()[-3000:]


def finish_writers(writers: list[Writer], root: Path) -> None:
    """Let the running writers reach their end, then have each log its view of every namespace."""
    for writer in writers:
        writer.wait_for('{"done"', timeout_s=ANSWER_TIMEOUT_S)
    (root / "dump").touch()
    for writer in writers:
        writer.finish()


def end_leftovers(writers: list[Writer | None]) -> None:
    """After a failure: no writer outlives its test."""
    for writer in writers:
        if writer is not None and writer.process.poll() is None:
            writer.process.kill()


def check_the_store(logs: Logs, finals: list[Writer], added: dict[str, dict[str, Any]], dsn: str, schema: str,
                    cache: Path) -> dict[str, dict[str, Any]]:
    """With the last writers' logs read: the server against every log, and each view against the
    server; returns the stored memories."""
    for writer in finals:
        logs.read(writer.log, killed=False)
    seen, stored = server_state(dsn, schema, cache)
    verdict = verify(logs, added, stored)
    assert verdict.problems == [], "\n".join(verdict.problems[:20])
    check_views(logs, seen, processes=len(finals))
    return stored


def test_four_writers_in_shared_namespaces_lose_double_and_skip_nothing(pg_dsn: str, pg_schema: str,
                                                                        tmp_path: Path) -> None:
    added = prefill(pg_dsn, pg_schema, tmp_path / "prefill")
    writers = [Writer(pg_dsn, pg_schema, tmp_path, slot, 0, seed=slot, seconds=8.0) for slot in range(4)]
    try:
        finish_writers(writers, tmp_path)
    finally:
        end_leftovers(writers)
    logs = Logs()
    stored = check_the_store(logs, writers, added, pg_dsn, pg_schema, tmp_path / "check")
    # The writers must have met (updates of memories others added, the contended ones updated by
    # every writer), with enough of each kind of write to prove something.
    updates = ops(logs.acked, "update")
    assert len(ops(logs.acked, "add")) >= 40 and len(updates) >= 40 and len(ops(logs.acked, "delete")) >= 10, \
        Counter(op["op"] for op in logs.acked)
    assert sum(op["metadata"]["by"] != op["id"].split("-")[0] for op in updates) >= 20
    assert max(memory["version"] for memory in stored.values()) >= 3  # memories updated more than once


def test_writers_killed_at_random_moments_lose_and_half_apply_nothing(pg_dsn: str, pg_schema: str,
                                                                      tmp_path: Path) -> None:
    """Four writer slots for ~10 s; each writer is SIGKILLed at a random moment after it starts
    writing, and its slot starts a new one at once or after a pause (seeded). Then one last writer
    per slot runs to the end, and everything is checked as above, the killed writers' in-flight
    writes resolved all or nothing."""
    rng = random.Random(15)
    added = prefill(pg_dsn, pg_schema, tmp_path / "prefill")
    logs = Logs()
    kills = 0
    incarnation = dict.fromkeys(range(4), 0)
    running: dict[int, Writer | None] = {slot: Writer(pg_dsn, pg_schema, tmp_path, slot, 0, seed=slot, seconds=600)
                                         for slot in range(4)}
    due: dict[int, float | None] = dict.fromkeys(range(4))  # when the slot's writer dies (None: not writing yet)
    restart_at: dict[int, float] = {}
    finals: list[Writer] = []
    try:
        stop = time.monotonic() + 10.0
        while time.monotonic() < stop:
            now = time.monotonic()
            for slot, writer in running.items():
                if writer is None:
                    if now >= restart_at[slot]:
                        incarnation[slot] += 1
                        running[slot] = Writer(pg_dsn, pg_schema, tmp_path, slot, incarnation[slot],
                                               seed=100 * slot + incarnation[slot], seconds=600)
                elif due[slot] is None:
                    if writer.lines()[:1]:  # "ready": from now on it writes
                        due[slot] = now + rng.uniform(0.2, 1.5)
                    elif writer.process.poll() is not None:
                        raise AssertionError(f"writer {writer.log.name} exited:\n{writer.stderr()}")
                elif now >= due[slot]:
                    writer.kill()
                    kills += 1
                    logs.read(writer.log, killed=True)
                    running[slot], due[slot] = None, None
                    restart_at[slot] = now + (0.0 if rng.random() < 0.6 else rng.uniform(0.3, 1.5))
            time.sleep(0.01)
        for writer in running.values():
            if writer is not None:
                writer.kill()
                logs.read(writer.log, killed=True)
        finals = [Writer(pg_dsn, pg_schema, tmp_path, slot, incarnation[slot] + 1, seed=1000 + slot, seconds=2.0)
                  for slot in range(4)]
        finish_writers(finals, tmp_path)
    finally:
        end_leftovers([*running.values(), *finals])
    check_the_store(logs, finals, added, pg_dsn, pg_schema, tmp_path / "check")
    # The kills must have landed inside writes, or the test proves nothing.
    assert kills >= 8 and len(logs.in_flight) >= kills // 2, (kills, Counter(op["op"] for op in logs.in_flight))
    assert len(ops(logs.acked, "add")) >= 40 and len(ops(logs.acked, "update")) >= 40, \
        Counter(op["op"] for op in logs.acked)


def test_the_checker_sees_lost_doubled_and_half_applied_writes() -> None:
    """verify() itself can fail: each kind of damage it looks for, made by hand, is reported."""
    added = {"a": {"namespace": "team/a", "text": "a", "metadata": {"by": "seed"}}}
    logs = Logs(acked=[{"op": "update", "id": "a", "text": "a2", "metadata": {"at": 1}, "version": 2},
                       {"op": "update", "id": "a", "metadata": {"at": 2}, "version": 3}])

    def problems(stored: dict[str, Any], in_flight: list[dict[str, Any]] = ()) -> list[str]:
        return verify(Logs(acked=logs.acked, in_flight=list(in_flight)), added, stored).problems

    def at(version: int, text: str = "a2", metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"a": {"namespace": "team/a", "text": text, "version": version, "metadata": metadata or {"at": 2}}}

    assert problems(at(3)) == []
    assert "lost" in problems({})[0]
    assert "come from no acknowledged update" in problems(at(4))[0]
    assert "holds" in problems(at(3, text="a"))[0]  # the text of version 2 lost
    assert "holds" in problems(at(3, metadata={"at": 1}))[0]
    doubled = Logs(acked=[*logs.acked, {"op": "update", "id": "a", "metadata": {"at": 3}, "version": 3}])
    assert any("acknowledged to two updates" in p for p in verify(doubled, added, at(3)).problems)
    late = {"op": "update", "id": "a", "text": "a4", "metadata": {"at": 4}}
    assert problems(at(4, text="a4", metadata={"at": 4}), [late]) == []  # an in-flight update that landed
    batch = {"op": "add", "namespace": "team/a", "ids": ["w0i0-1-0", "w0i0-1-1"], "texts": ["x", "y"]}
    half = {**at(3), "w0i0-1-0": {"namespace": "team/a", "text": "x", "version": 1, "metadata": {"by": "w0i0"}}}
    assert "half applied" in problems(half, [batch])[0]
    assert "nobody acknowledged" in problems(half)[0]


# -- one process reads what another writes ------------------------------------------------------------


class Served:
    """A serve-mode child (tests/pg_writer_child.py): one JSON command a line in, one answer out."""

    def __init__(self, dsn: str, schema: str, cache: Path, **settings: Any) -> None:
        config = {"mode": "serve", "dsn": dsn, "schema": schema, "cache": str(cache), "settings": settings}
        self.stderr_path = cache.with_suffix(".stderr")
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(child_command(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=stderr, text=True, cwd=ROOT, env=child_env())
        self.answers: queue.Queue[str] = queue.Queue()
        self.reading = threading.Thread(target=self._read, daemon=True)
        self.reading.start()
        assert self.receive() == {"ready": True}

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.answers.put(line)
        self.answers.put("")

    def send(self, **command: Any) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]

    def receive(self) -> dict[str, Any]:
        try:
            line = self.answers.get(timeout=ANSWER_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"no answer within {ANSWER_TIMEOUT_S:g} s:\n{self.stderr()}") from None
        if not line:
            raise AssertionError(f"the child exited ({self.process.wait(timeout=30)}):\n{self.stderr()}")
        return json.loads(line)

    def ask(self, **command: Any) -> dict[str, Any]:
        self.send(**command)
        return self.receive()

    def stderr(self) -> str:
        return self.stderr_path.read_text()[-3000:]

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]  # the child ends when its stdin does
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            self.reading.join(timeout=30)
            self.process.stdout.close()  # type: ignore[union-attr]


@pytest.fixture
def serve(pg_dsn: str, pg_schema: str, tmp_path: Path):
    """Start serve-mode children on the test's store (each with its own cache directory)."""
    started: list[Served] = []

    def start(name: str, **settings: Any) -> Served:
        started.append(Served(pg_dsn, pg_schema, tmp_path / name, **settings))
        return started[-1]

    yield start
    for child in started:
        child.close()


def test_a_reader_process_sees_each_acknowledged_change_within_the_bound(pg_dsn: str, pg_schema: str,
                                                                         tmp_path: Path, serve) -> None:
    """A reader process holds the namespace loaded (warm index, hot copies) while this process
    adds, updates and deletes; after each acknowledgement the reader's get, search and
    list_memories all show the change within STALENESS_BOUND_S. Its background thread is on, as
    in an application: change notices unload its stale copies too."""
    reader = serve("reader")
    namespace = "team/a"
    waited: list[float] = []
    with engine(pg_dsn, pg_schema, tmp_path / "writer") as writer:
        ids = writer.add_many([f"note {i}" for i in range(40)], namespace=namespace,
                              vectors=np.stack([vector_for(f"note {i}") for i in range(40)]))

        def changed(memory_id: str, expected: list[Any] | None, probe: str, done_at: float) -> None:
            seen = reader.ask(op="until", id=memory_id, namespace=namespace, expected=expected, probe=probe,
                              within_s=STALENESS_BOUND_S + 1)
            assert seen["agrees"], f"{memory_id}: expected {expected}, the reader saw {seen}"
            waited.append(seen["at"] - done_at)

        for i in range(8):
            memory_id = ids[i]
            for _ in range(2):  # hot in the reader: its copy in RAM is what would go stale
                assert reader.ask(op="get", id=memory_id, namespace=namespace)["version"] == 1
            text = f"note {i} changed"
            writer.update(memory_id, text=text, vector=vector_for(text))
            changed(memory_id, [text, 2], text, time.monotonic())
            added = writer.add(f"new note {i}", namespace=namespace, vector=vector_for(f"new note {i}"))
            changed(added, [f"new note {i}", 1], f"new note {i}", time.monotonic())
            writer.delete(ids[20 + i])
            changed(ids[20 + i], None, f"note {20 + i}", time.monotonic())
        listed = reader.ask(op="list", namespace=namespace)
    assert listed["count"] == 40 and sorted(listed["ids"]) == sorted(set(listed["ids"]))
    assert len(waited) == 24 and max(waited) <= STALENESS_BOUND_S, sorted(waited)[-3:]


# -- races ------------------------------------------------------------------------------------------


def race(children: list[Served], commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send each child its command at once, then collect the answers."""
    for child, command in zip(children, commands):
        child.send(**command)
    return [child.receive() for child in children]


def test_two_processes_updating_one_memory_at_once_both_land_in_sequence(pg_dsn: str, pg_schema: str,
                                                                          tmp_path: Path, serve) -> None:
    """Each round both processes update the same memory at once, from the same version. Neither
    update is lost and no version is given twice: the store refuses the write made from a version
    the other had already moved on (ConcurrentUpdateError), and the engine makes it again on top."""
    with engine(pg_dsn, pg_schema, tmp_path / "setup") as mem:
        memory_id = mem.add("contended", vector=vector_for("contended"), namespace="race")
    children = [serve(f"updater{n}") for n in range(2)]
    rounds = 25
    texts: dict[int, str] = {}
    retries = 0
    for r in range(rounds):
        commands = [{"op": "update", "id": memory_id, "text": f"round {r} by {n}", "metadata": {"round": r, "by": n}}
                    for n in range(2)]
        answers = race(children, commands)
        assert sorted(a["version"] for a in answers) == [2 * r + 2, 2 * r + 3], answers  # both, in turn
        texts.update({a["version"]: c["text"] for a, c in zip(answers, commands)})
        retries += sum(a["retries"] for a in answers)
    assert retries >= 1  # the updates did meet: some were made again on top of the other's
    last = 2 * rounds + 1
    for child in children:  # both processes see the last update, as the server holds it
        assert child.ask(op="get", id=memory_id, namespace="race") == \
            {"text": texts[last], "version": last, "namespace": "race"}
    with engine(pg_dsn, pg_schema, tmp_path / "check") as mem:
        stored = mem.get(memory_id)
        assert (stored.text, stored.version) == (texts[last], last) and mem.count("race") == 1
        assert mem.search(vector=vector_for(texts[last]), namespace="race", k=1)[0].memory.id == memory_id


def test_two_processes_adding_one_text_at_once_store_it_once(pg_dsn: str, pg_schema: str, tmp_path: Path,
                                                             serve) -> None:
    """Each round both processes add the same text at the same moment, dedup on: one stores it,
    the other gets its id (its write, which claimed the text another process had claimed since
    its lookup, is refused, and the engine adds again: the text is then a duplicate)."""
    children = [serve(f"adder{n}") for n in range(2)]
    rounds = 12
    retries = 0
    for r in range(rounds):
        first = race(children, [{"op": "add", "text": f"the same text {r}", "namespace": "race"}] * 2)
        again = [child.ask(op="add", text=f"the same text {r}", namespace="race") for child in children]
        assert len({answer["id"] for answer in [*first, *again]}) == 1, (first, again)
        retries += sum(answer["retries"] for answer in first)
    assert retries >= 1  # the adds did meet (before the claim, every round stored the text twice)
    with engine(pg_dsn, pg_schema, tmp_path / "check") as mem:
        texts = Counter(m.text for m in mem.list_memories("race", limit=1000))
        assert texts == Counter({f"the same text {r}": 1 for r in range(rounds)}) and mem.count("race") == rounds
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{pg_schema}"')
        assert conn.execute("SELECT count(*) FROM tm_texts").fetchone()[0] == rounds  # one entry per text


# -- tenants ----------------------------------------------------------------------------------------


def test_tenants_written_by_different_processes_never_see_each_other(pg_dsn: str, pg_schema: str,
                                                                     tmp_path: Path, serve) -> None:
    """Two tenants (namespaces) written by two processes with the same texts and vectors: each
    process finds, gets and lists its own tenant's memories only, and the dedup of one tenant never
    answers with the other's memory."""
    tenants = {"tenant-a": serve("process-a"), "tenant-b": serve("process-b")}
    texts = [f"shared fact {i}" for i in range(12)]
    ids = {tenant: [child.ask(op="add", text=text, namespace=tenant)["id"] for text in texts]
           for tenant, child in tenants.items()}
    assert not set(ids["tenant-a"]) & set(ids["tenant-b"])  # the same texts, stored once per tenant
    for tenant, child in tenants.items():
        other = next(name for name in tenants if name != tenant)
        listed = child.ask(op="list", namespace=tenant)
        assert sorted(listed["ids"]) == sorted(ids[tenant]) and listed["count"] == len(texts)
        for i, text in enumerate(texts):
            hits = child.ask(op="search", text=text, namespace=tenant, k=20)
            assert set(hits["namespaces"]) == {tenant} and hits["ids"][0] == ids[tenant][i]
            assert "missing" in child.ask(op="get", id=ids[other][i], namespace=tenant)
            assert child.ask(op="add", text=text, namespace=tenant)["id"] == ids[tenant][i]  # dedup: its own copy
        # and it still reads the other tenant when it asks for it by name
        assert child.ask(op="get", id=ids[other][0], namespace=other)["namespace"] == other
    with engine(pg_dsn, pg_schema, tmp_path / "check") as mem:
        assert {tenant: sorted(mem.ids(tenant)) for tenant in tenants} == \
            {tenant: sorted(found) for tenant, found in ids.items()}


def test_a_text_another_process_stored_since_the_load_is_a_duplicate(pg_dsn: str, pg_schema: str,
                                                                      tmp_path: Path) -> None:
    """A process whose copy of the namespace predates another process's add of a text finds that
    text's memory, instead of storing the text again (and pointing the dedup index at the copy)."""
    with engine(pg_dsn, pg_schema, tmp_path / "here") as here, engine(pg_dsn, pg_schema, tmp_path / "there") as there:
        here.add("loaded first", vector=vector_for("loaded first"), namespace="shared")
        assert len(there.list_memories("shared")) == 1  # loaded there, before the text exists
        stored = here.add("said twice", vector=vector_for("said twice"), namespace="shared")
        assert there.add("said twice", vector=vector_for("said twice"), namespace="shared") == stored
        assert there.add_many(["said twice", "new"], vectors=np.stack([vector_for("said twice"), vector_for("new")]),
                              namespace="shared").duplicates == [0]
        assert here.count("shared") == there.count("shared") == 3
        assert here.add("said twice", vector=vector_for("said twice"), namespace="shared") == stored


def test_agent_hubs_changed_by_several_processes_stay_one_hub(pg_dsn: str, pg_schema: str, tmp_path: Path) -> None:
    """Three processes register agents in one user's hub, share with each other and update what
    they share, at once: every process's hub ends equal to the store's, every share and update is
    there, versions do not collide and no notification overwrites another."""
    import json
    import subprocess
    import sys

    names = ["ann", "bob", "cid"]
    children = [subprocess.Popen([sys.executable, "-m", "tests.pg_hub_child", pg_dsn, pg_schema,
                                  str(tmp_path / name), name, "4"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
                for name in names]
    for child in children:
        assert child.stdout is not None and json.loads(child.stdout.readline())["ready"]
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    acknowledged = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        acknowledged += [json.loads(line) for line in out.splitlines()]
    shared = [item["shared"] for item in acknowledged if "shared" in item]
    updates = [item for item in acknowledged if "updated" in item]
    assert len(shared) == 12 and len(updates) > 0
    mem = TieredMemory(tmp_path / "checker", cold=pg_cold.postgres_cold(pg_dsn, schema=pg_schema), encoder=None,
                       dimension=DIM)
    try:
        hub = mem.agents("team")
        assert hub.agent_names() == names  # no registration lost to another process's write
        for memory_id in shared:
            info = hub.info(memory_id)
            assert set(info.grants) == set(names)  # the owner and the two it shared with
        for memory_id in shared:  # versions 2..v each acknowledged once, and the history has each
            versions = sorted(item["version"] for item in updates if item["updated"] == memory_id)
            assert versions == list(range(2, 2 + len(versions)))
            assert [v.version for v in hub.history(memory_id)] == list(range(1, 2 + len(versions)))
            assert mem.get(memory_id).version == 1 + len(versions)
        for name in names:  # one notification per share and update by another process, none overwritten
            expected = sum(1 for item in acknowledged if item.get("by") != name and
                           ("shared" in item or item.get("updated") in hub.visible(name)))
            got = hub.notifications(name)
            assert len({n.seq for n in got}) == len(got) == expected
    finally:
        mem.close()
