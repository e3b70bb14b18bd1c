"""Syncs killed at random moments (SIGKILL, the crash test's method): on both sides nothing is
half applied, and the next sync completes with every acknowledged memory on both sides."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiered_memory import TieredMemory

from .invariants import check_invariants
from .sync_child import open_side

ROOT = Path(__file__).resolve().parent.parent


def contents(mem: TieredMemory) -> dict[str, tuple]:
    out = {}
    for name in mem.namespaces():
        for memory_id in mem.ids(name):
            m = mem.record(memory_id)
            out[memory_id] = (m.namespace, m.text, m.version)
    return out


def kill_trials(local: str, remote: str, trials: int, seed: int) -> tuple[set[str], set[str], int, int]:
    """Run the child `trials` times, killing it after a random while; returns the acknowledged
    adds, the acknowledged deletes, how many syncs completed and how many kills landed in one."""
    rng = random.Random(seed)
    added: set[str] = set()
    deleted: set[str] = set()
    synced = in_sync = 0
    for trial in range(trials):
        process = subprocess.Popen([sys.executable, "-m", "tests.sync_child", local, remote, str(seed * 100 + trial)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert process.stdout is not None
        lines = [process.stdout.readline()]
        assert lines[0], process.stderr.read() if process.stderr else "the child died"
        # Kill a little after the child starts its k-th sync: inside that sync, most of the time
        # (a sync of batches of 2 takes longer than the wait), whatever the machine's speed.
        target = rng.randint(1, 3)
        while sum('"syncing"' in line for line in lines) < target:
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else "the child died"
            lines.append(line)
        time.sleep(rng.uniform(0.0, 0.01))
        process.send_signal(signal.SIGKILL)
        out, err = process.communicate(timeout=30)
        out = "".join(lines) + out
        assert process.returncode == -signal.SIGKILL, err
        last: dict = {}
        for line in out.splitlines():
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line the kill cut
            last = message
            added.update(message.get("added", []))
            if "deleted" in message:
                deleted.add(message["deleted"])
            synced += "synced" in message
        in_sync += "syncing" in last
        # Between kills: both sides open cleanly and hold consistent stores.
        for where in (local, remote):
            mem = open_side(where)
            try:
                if not where.startswith("pg:"):  # (the invariant checker reads LMDB stores whole)
                    check_invariants(mem)
            finally:
                mem.close()
    return added, deleted, synced, in_sync


def finish_and_check(local: str, remote: str, added: set[str], deleted: set[str]) -> None:
    a, b = open_side(local), open_side(remote)
    try:
        a.sync(b)
        a.sync(b)
        assert contents(a) == contents(b)
        held = set(contents(a))
        missing = added - held - deleted
        assert not missing, f"acknowledged memories lost: {sorted(missing)[:5]}"
        for mem, where in ((a, local), (b, remote)):
            if not where.startswith("pg:"):
                check_invariants(mem)
            assert mem.count() == len(held)  # nothing stored twice
    finally:
        a.close()
        b.close()


def test_syncs_killed_at_random_moments_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    local, remote = str(tmp_path / "device"), str(tmp_path / "other")
    added, deleted, synced, in_sync = kill_trials(local, remote, trials=8, seed=1)
    # The kills hit stores under load, and most of them inside a sync.
    assert len(added) > 50 and synced >= 1 and in_sync >= 4, (len(added), synced, in_sync)
    finish_and_check(local, remote, added, deleted)


@pytest.mark.postgres
def test_syncs_with_postgres_killed_at_random_moments_lose_nothing(tmp_path: Path, pg_dsn: str,
                                                                   pg_schema: str) -> None:
    local, remote = str(tmp_path / "device"), f"pg:{pg_schema}"
    os.environ.setdefault("TIERED_MEMORY_PG_DSN", pg_dsn)
    added, deleted, synced, in_sync = kill_trials(local, remote, trials=5, seed=2)
    assert len(added) > 30 and in_sync >= 2, (len(added), synced, in_sync)
    finish_and_check(local, remote, added, deleted)
