"""Sync as a property: replicas edited offline and synced with a server in random orders converge,
and no acknowledged write disappears without a trace."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tiered_memory import TieredMemory

from .conftest import DIM, FakeClock, unit_rows

DELETED = "<deleted>"

ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 2)),
    st.tuples(st.just("update"), st.integers(0, 2), st.integers(0, 50)),
    st.tuples(st.just("update"), st.integers(0, 2), st.integers(0, 3)),
    st.tuples(st.just("delete"), st.integers(0, 2), st.integers(0, 50)),
    st.tuples(st.just("sync"), st.integers(0, 2)),
    st.tuples(st.just("tick"), st.integers(0, 3)),
), min_size=1, max_size=40)


def contents(mem: TieredMemory) -> dict[str, tuple[Any, ...]]:
    out = {}
    for name in mem.namespaces():
        for memory_id in mem.ids(name):
            m = mem.record(memory_id)
            out[memory_id] = (m.namespace, m.text, dict(m.metadata), m.version, m.updated_at)
    return out


def run_scenario(steps: list[tuple[Any, ...]], open_server: Callable[[Path, FakeClock], TieredMemory],
                 replicas: int = 3) -> None:
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = open_server(root, clock)
        devices = [TieredMemory(root / f"replica-{i}", encoder=None, dimension=DIM, clock=clock)
                   for i in range(replicas)]
        acknowledged: list[tuple[str, str]] = []  # (memory id, text or DELETED) of every write that returned
        superseded: set[tuple[str, str]] = set()  # versions a later local write replaced
        conflicts = 0
        # A few memories every replica starts with: edits of one memory on two replicas between
        # syncs (conflicts) are then common, not a rare draw.
        base = server.add_many([f"shared {i}" for i in range(4)], namespace="ns0", vectors=unit_rows(4, seed=99))
        acknowledged += [(memory_id, f"shared {i}") for i, memory_id in enumerate(base)]
        for device in devices:
            device.sync(server)
        counter = 0
        try:
            for step in steps:
                kind = step[0]
                if kind == "tick":
                    clock.tick(step[1] * 0.01)
                    continue
                device = devices[step[1] % replicas]
                if kind == "sync":
                    conflicts += len(device.sync(server, batch_size=3).conflicts)
                    continue
                counter += 1
                text = f"text {counter} from replica {step[1] % replicas}"
                if kind == "add":
                    memory_id = device.add(text, namespace=f"ns{counter % 2}", vector=unit_rows(1, seed=counter)[0],
                                           metadata={"n": counter}, dedup=False)
                    acknowledged.append((memory_id, text))
                    continue
                held = sorted(contents(device))
                if not held:
                    continue
                memory_id = held[step[2] % len(held)]
                superseded.add((memory_id, device.record(memory_id).text))
                if kind == "update":
                    device.update(memory_id, text=text, vector=unit_rows(1, seed=counter)[0])
                    acknowledged.append((memory_id, text))
                else:
                    device.delete(memory_id)
                    acknowledged.append((memory_id, DELETED))
            for _ in range(2):  # everything reaches the server, then every replica
                for device in devices:
                    conflicts += len(device.sync(server, batch_size=3).conflicts)
            event(f"conflicts: {min(conflicts, 3)}{'+' if conflicts >= 3 else ''}")
            final = contents(server)
            for device in devices:
                assert contents(device) == final
            lost = set()
            for mem in (server, *devices):
                for memory_id, namespace in {(m, final.get(m, ("ns0",))[0]) for m, _ in acknowledged}:
                    for name in ({namespace} | {"ns0", "ns1"}):
                        for version in mem.sync_endpoint.history(name, memory_id):
                            lost.add((memory_id, DELETED if version.deleted else version.memory.text))
            for memory_id, text in acknowledged:
                current = final[memory_id][1] if memory_id in final else DELETED
                assert text == current or (memory_id, text) in superseded or (memory_id, text) in lost, \
                    f"the acknowledged write {text!r} of {memory_id} vanished"
        finally:
            for mem in (server, *devices):
                mem.close()


def lmdb_server(root: Path, clock: FakeClock) -> TieredMemory:
    return TieredMemory(root / "server", encoder=None, dimension=DIM, clock=clock)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_replicas_and_a_server_converge_and_lose_no_acknowledged_write(steps) -> None:
    run_scenario(steps, lmdb_server)


@pytest.mark.postgres
def test_replicas_converge_through_a_postgres_server(pg_dsn: str, pg_schema: str) -> None:
    from tiered_memory.tiers.pg_cold import postgres_cold

    def pg_server(root: Path, clock: FakeClock) -> TieredMemory:
        return TieredMemory(root / "server-cache", encoder=None, dimension=DIM, clock=clock,
                            cold=postgres_cold(pg_dsn, schema=pg_schema))

    @settings(max_examples=6, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops)
    def scenario(steps) -> None:
        with_clean_schema(pg_dsn, pg_schema)
        run_scenario(steps, pg_server, replicas=2)

    scenario()


def with_clean_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
