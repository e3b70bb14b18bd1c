"""Crash test: a child process changes a store and is SIGKILLed at random moments; after each
kill the store is reopened and every acknowledged add, update and delete must be there.

The same store is crashed again and again (trial after trial), so damage that one crash leaves
behind (a stale warm index, half-saved files, a dead writer's LOCK) meets the next trial.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tiered_memory import MemoryNotFoundError, TieredMemory

from .crash_child import DIM, PROFILE_VARIABLE, PROFILES, vector_for
from .invariants import LoggedErrors, invariant_violations

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Expected:
    """What the parent knows a memory must look like."""

    namespace: str
    text: str
    metadata: dict[str, Any]
    version: int = 1
    importance: float = 0.5


@dataclass
class CrashReport:
    trials: int = 0
    kills: int = 0
    operations_acknowledged: int = 0
    writes_acknowledged: int = 0
    in_flight_at_kill: dict[str, int] = field(default_factory=dict)  # op -> kills that landed inside it
    in_flight_applied: int = 0  # in-flight writes found applied (all of them) after the kill
    warm_repairs: int = 0  # reopens that repaired the warm index from cold
    lost: int = 0  # acknowledged changes missing after a reopen
    searched: int = 0  # memories looked for by their own vector
    search_misses: int = 0  # ... and not returned (stored intact, but the search missed them)
    phantoms: int = 0  # memories (or changes) present that nobody wrote, or half of a batch
    invariant_violations: int = 0
    logged_errors: int = 0  # ERROR records (background threads log what they cannot raise)
    problems: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Lines:
    """Collects a child's stdout lines in a thread, so its pipe never fills and blocks it."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            if line.startswith('{"ready"'):
                self.ready.set()
        self.ready.set()

    def join(self) -> list[str]:
        self._thread.join(timeout=30)
        return self.lines


class _RepairCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.repairs = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "repaired" in record.getMessage() or "rebuilt" in record.getMessage():
            self.repairs += 1


def _parse(lines: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(acknowledged operations in order, the operation begun but not acknowledged, if any)."""
    import json

    begun: dict[int, dict[str, Any]] = {}
    acked: list[dict[str, Any]] = []
    for line in lines:
        if not line.endswith("\n"):
            break  # the kill cut this line short: it was never written whole
        message = json.loads(line)
        if "begin" in message:
            begun[message["begin"]] = message
        elif "ack" in message:
            acked.append(begun.pop(message["ack"]))
    if len(begun) > 1:
        raise AssertionError(f"the child had {len(begun)} operations in flight; it is single-threaded")
    return acked, next(iter(begun.values()), None)


def _apply(model: dict[str, Expected], deleted: dict[str, Expected], op: dict[str, Any]) -> None:
    if op["op"] == "add":
        for memory_id, text, metadata in zip(op["ids"], op["texts"], op["metadata"]):
            model[memory_id] = Expected(op["namespace"], text, metadata)
    elif op["op"] == "update":
        expected = model[op["id"]]
        expected.text = op.get("text", expected.text)
        expected.metadata = op.get("metadata", expected.metadata)
        expected.importance = op.get("importance", expected.importance)
        expected.version += 1
    elif op["op"] == "delete":
        deleted[op["id"]] = model.pop(op["id"])


def _matches(mem: TieredMemory, memory_id: str, expected: Expected) -> bool:
    try:
        memory = mem.get(memory_id)
    except MemoryNotFoundError:
        return False
    return (memory.namespace, memory.text, memory.metadata, memory.version, memory.importance) == \
        (expected.namespace, expected.text, expected.metadata, expected.version, expected.importance)


def _resolve_in_flight(mem: TieredMemory, model: dict[str, Expected], deleted: dict[str, Expected],
                       op: dict[str, Any], report: CrashReport) -> set[str]:
    """Adopt whichever outcome of the unacknowledged write is in the store (all or nothing).

    Returns the ids it concerned, which the phantom check must not count."""
    if op["op"] == "add":
        present = [memory_id in mem for memory_id in op["ids"]]
        if any(present) and not all(present):
            report.phantoms += 1
            report.problems.append(f"batch add {op['begin']} half applied: {present}")
        if all(present):
            _apply(model, deleted, op)
            report.in_flight_applied += 1
        return set(op["ids"])
    if op["op"] == "update":
        after = {op["id"]: Expected(**asdict(model[op["id"]]))}
        _apply(after, {}, op)
        if _matches(mem, op["id"], after[op["id"]]):
            model[op["id"]] = after[op["id"]]
            report.in_flight_applied += 1
        return {op["id"]}
    if op["op"] == "delete":
        if op["id"] not in mem:
            _apply(model, deleted, op)
            report.in_flight_applied += 1
        return {op["id"]}
    return set()


def verify(mem: TieredMemory, model: dict[str, Expected], deleted: dict[str, Expected], report: CrashReport,
           exempt: set[str], recent: set[str] | None = None) -> None:
    """Every expected memory is stored as expected; every deleted one is gone. Searching its own
    vector finds a memory, and does not find a deleted one: checked for the `recent` ids (written
    since the last check) and a sample of the others, or for all when `recent` is None."""
    sample = set(random.Random(len(model)).sample(sorted(model), min(len(model), 40)))
    for memory_id, expected in model.items():
        if memory_id in exempt:
            continue
        if not _matches(mem, memory_id, expected):
            report.lost += 1
            report.problems.append(f"{memory_id}: acknowledged state {expected} not found")
            continue
        if recent is not None and memory_id not in recent and memory_id not in sample:
            continue
        hits = mem.search(vector=vector_for(expected.text), namespace=expected.namespace, k=3)
        report.searched += 1
        if memory_id not in [hit.memory.id for hit in hits]:
            report.search_misses += 1
            report.misses.append(f"{memory_id}: stored intact but not found by searching its own vector")
    for memory_id, gone in deleted.items():
        if memory_id in mem:
            report.lost += 1
            report.problems.append(f"{memory_id}: acknowledged delete undone")
        elif recent is None or memory_id in recent:
            hits = mem.search(vector=vector_for(gone.text), namespace=gone.namespace, k=3)
            if memory_id in [hit.memory.id for hit in hits]:
                report.lost += 1
                report.problems.append(f"{memory_id}: deleted, yet returned by search")
    phantoms = set(mem.ids()) - set(model) - exempt
    if phantoms:
        report.phantoms += len(phantoms)
        report.problems.append(f"memories nobody acknowledged: {sorted(phantoms)[:5]}")
    violations = invariant_violations(mem)
    report.invariant_violations += len(violations)
    report.problems.extend(violations)


def run_crash_trials(store: Path, trials: int, seed: int = 0, durability: str = "sync",
                     max_alive_s: float = 0.6, profile: str = "default") -> CrashReport:
    """Run `trials` kill-and-reopen rounds on one store; returns the figures. `profile`: the
    child's namespaces and settings (tests/crash_child.py PROFILES)."""
    rng = random.Random(seed)
    report = CrashReport()
    model: dict[str, Expected] = {}
    deleted: dict[str, Expected] = {}
    started = time.perf_counter()
    store.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env[PROFILE_VARIABLE] = profile
    repairs = _RepairCounter()
    logger = logging.getLogger("tiered_memory")
    with LoggedErrors() as errors:
        _trials(store, trials, seed, durability, max_alive_s, rng, report, model, deleted, env, repairs, logger,
                errors)
    report.seconds = round(time.perf_counter() - started, 1)
    return report


def _trials(store: Path, trials: int, seed: int, durability: str, max_alive_s: float, rng: random.Random,
            report: CrashReport, model: dict[str, Expected], deleted: dict[str, Expected], env: dict[str, str],
            repairs: _RepairCounter, logger: logging.Logger, errors: LoggedErrors) -> None:
    seen_errors = 0
    for trial in range(trials):
        child_seed = seed * 1_000_003 + trial
        with open(store.parent / "child.stderr", "w+") as stderr, subprocess.Popen(
            [sys.executable, "-m", "tests.crash_child", str(store), str(child_seed), durability],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, env=env,
        ) as process:
            lines = _Lines(process)
            if not lines.ready.wait(timeout=60):
                process.kill()
                raise AssertionError("the child did not open the store within 60 s")
            time.sleep(rng.uniform(0.0, max_alive_s))
            process.send_signal(signal.SIGKILL)
            returncode = process.wait(timeout=30)
            output = lines.join()
            stderr.seek(0)
            logged = stderr.read()
            if returncode != -signal.SIGKILL:
                raise AssertionError(f"the child died by itself (exit {returncode}):\n{logged[-3000:]}")
            if "Traceback" in logged:  # logged by a background thread of the child, which went on
                report.logged_errors += 1
                report.problems.append(f"the child logged an exception:\n{logged[-3000:]}")
        report.trials += 1
        report.kills += 1
        acked, in_flight = _parse(output)
        recent = {memory_id for op in acked for memory_id in op.get("ids", [op.get("id")])}
        for op in acked:
            _apply(model, deleted, op)
            report.operations_acknowledged += 1
            report.writes_acknowledged += op["op"] in ("add", "update", "delete")
        if in_flight is not None:
            report.in_flight_at_kill[in_flight["op"]] = report.in_flight_at_kill.get(in_flight["op"], 0) + 1
        # Reopen like the next run of the agent would: half the time for writing (takes the
        # LOCK the dead child held), half the time read-only (leaves the crash state untouched).
        warnings_before = repairs.repairs
        logger.addHandler(repairs)
        try:
            mem = TieredMemory(store, encoder=None, dimension=DIM, read_only=trial % 2 == 1,
                               **PROFILES[env[PROFILE_VARIABLE]][1])
        finally:
            logger.removeHandler(repairs)
        report.warm_repairs += repairs.repairs > warnings_before
        try:
            exempt = set() if in_flight is None else _resolve_in_flight(mem, model, deleted, in_flight, report)
            verify(mem, model, deleted, report, exempt, recent | exempt)
        finally:
            mem.close()
        new_errors, seen_errors = errors.messages[seen_errors:], len(errors.messages)  # this trial's, here
        report.logged_errors += len(new_errors)
        report.problems.extend(new_errors)
        if report.problems:
            break  # the first broken trial is the one worth reading


def _check(report: CrashReport) -> None:
    assert report.problems == [], "\n".join(report.problems[:20])
    assert report.lost == 0 and report.phantoms == 0 and report.invariant_violations == 0
    assert report.logged_errors == 0
    # Stored intact but not found by its own vector: not a loss, but a broken promise all the same
    # (an unreachable warm graph node did this; see test_concurrency.py).
    assert report.search_misses == 0, report.misses


def test_nothing_acknowledged_is_lost_across_random_kills(tmp_path: Path) -> None:
    report = run_crash_trials(tmp_path / "store", trials=20, seed=1)
    _check(report)
    assert report.trials == 20 and report.kills == 20
    # The kills must have hit a store under load, or the test proves nothing.
    assert report.writes_acknowledged > 200, report
    assert sum(report.in_flight_at_kill.values()) >= 10, report


def test_kills_during_unloads_and_background_index_builds_lose_nothing(tmp_path: Path) -> None:
    """Six namespaces under a budget of a few rows: the background thread unloads and builds
    on-disk cold indexes the whole time, and the kills land there too."""
    report = run_crash_trials(tmp_path / "store", trials=16, seed=4, profile="unloading", max_alive_s=1.2)
    _check(report)
    assert report.trials == 16 and report.writes_acknowledged > 150, report
    # The background builds ran (and so could be killed): their files are there.
    assert any((tmp_path / "store" / "coldindex").glob("*.usearch")), "no on-disk cold index was ever built"


@pytest.mark.slow
def test_nothing_acknowledged_is_lost_across_many_kills(tmp_path: Path) -> None:
    report = run_crash_trials(tmp_path / "store", trials=100, seed=2)
    _check(report)
    assert report.trials == 100


def test_async_durability_survives_a_killed_process(tmp_path: Path) -> None:
    """durability="async" skips fsync: a killed process (not a power cut) still loses nothing."""
    report = run_crash_trials(tmp_path / "store", trials=6, seed=3, durability="async")
    _check(report)
    assert report.writes_acknowledged > 50, report


def test_the_checker_sees_a_lost_write(tmp_path: Path) -> None:
    """The verification itself can fail: an acknowledged add removed behind its back is reported."""
    store = tmp_path / "store"
    mem = TieredMemory(store, encoder=None, dimension=DIM)
    text = "memory x"
    mem.add(text, vector=vector_for(text), id="x", namespace="agent/a")
    model = {"x": Expected("agent/a", text, {}), "y": Expected("agent/a", "never written", {})}
    report = CrashReport()
    verify(mem, model, {}, report, exempt=set())
    assert report.lost == 1 and "y" in report.problems[0]
    mem.delete("x")
    mem.add("memory z", vector=vector_for("memory z"), id="z", namespace="agent/a")
    report = CrashReport()
    verify(mem, {}, {"x": model["x"]}, report, exempt=set())
    assert report.phantoms == 1 and report.lost == 0
    mem.close()
