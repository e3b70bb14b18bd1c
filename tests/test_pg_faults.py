"""Faults of the PostgreSQL cold store: backends killed between and during calls, a server that is not there."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tiered_memory import StorageError, TieredMemory

from .conftest import DIM, unit_rows

pytestmark = pytest.mark.postgres

pg_cold = pytest.importorskip("tiered_memory.tiers.pg_cold",
                              reason="psycopg 3 is not installed (pip install '.[postgres]')")
psycopg = pytest.importorskip("psycopg")


def tagged(dsn: str, tag: str) -> str:
    """The DSN with an application_name: the store's backends are then found by it, and only
    those are terminated (other tests may share the server)."""
    return dsn + ("&" if "?" in dsn else "?") + f"application_name={tag}"


def engine(dsn: str, schema: str, cache: Path) -> TieredMemory:
    return TieredMemory(cache, cold=pg_cold.postgres_cold(dsn, schema=schema), encoder=None, dimension=DIM,
                        promote_in_background=False)


def terminate(admin: psycopg.Connection, tag: str) -> int:
    """pg_terminate_backend every backend opened with this application_name; how many."""
    killed = admin.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE application_name = %s AND pid <> pg_backend_pid()", (tag,)).fetchone()[0]
    deadline = time.monotonic() + 10
    while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND "
                        "pid <> pg_backend_pid()", (tag,)).fetchone()[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    return killed


def server_counts(dsn: str, schema: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  for table in ("tm_records", "tm_rows", "tm_codes", "tm_originals", "tm_texts")}
        counts["tm_namespaces.count"] = conn.execute("SELECT coalesce(sum(count), 0) FROM tm_namespaces").fetchone()[0]
        return counts


def contents(mem: TieredMemory, namespace: str) -> dict[str, str]:
    return {memory.id: memory.text for memory in mem.list_memories(namespace)}


@pytest.fixture
def admin(pg_dsn: str):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def test_every_backend_killed_between_calls_the_next_calls_reconnect(pg_dsn: str, pg_schema: str, tmp_path: Path,
                                                                      admin) -> None:
    tag = f"tmf_{pg_schema}"
    dsn = tagged(pg_dsn, tag)
    vectors = unit_rows(40, seed=11)
    with engine(dsn, pg_schema, tmp_path / "here") as mem:
        ids = mem.add_many([f"note {i}" for i in range(30)], vectors=vectors[:30], namespace="shared")
        assert mem.search(vector=vectors[3], namespace="shared", k=1)[0].memory.id == ids[3]
        steps = [
            lambda: mem.add("added after a kill", vector=vectors[30], namespace="shared"),
            lambda: mem.search(vector=vectors[4], namespace="shared", k=1)[0].memory.id,
            lambda: mem.get(ids[5]).text,
            lambda: mem.update(ids[6], text="updated after a kill", vector=vectors[31]),
            lambda: mem.delete(ids[7]),
            lambda: mem.add_many([f"batch after a kill {i}" for i in range(5)], vectors=vectors[32:37],
                                 namespace="other"),
            lambda: mem.count("shared"),
            lambda: mem.get(ids[6]).text,
        ]
        results = []
        for step in steps:
            assert terminate(admin, tag) >= 1  # the pool keeps at least one connection open
            results.append(step())
        added, batch = results[0], results[5]
        assert results[1] == ids[4] and results[2] == "note 5" and results[6] == 30 and results[7] == \
            "updated after a kill"
        here = contents(mem, "shared")
        here_other = contents(mem, "other")
    expected = {memory_id: f"note {i}" for i, memory_id in enumerate(ids)}
    expected.pop(ids[7])
    expected[ids[6]] = "updated after a kill"
    expected[added] = "added after a kill"
    assert here == expected and set(here_other) == set(batch)
    with engine(pg_dsn, pg_schema, tmp_path / "elsewhere") as fresh:
        assert contents(fresh, "shared") == expected and contents(fresh, "other") == here_other
        assert fresh.search(vector=vectors[31], namespace="shared", k=1)[0].memory.id == ids[6]
        assert fresh.count() == 35
    counts = server_counts(pg_dsn, pg_schema)
    assert counts == {"tm_records": 35, "tm_rows": 35, "tm_codes": 35, "tm_originals": 35, "tm_texts": 35,
                      "tm_namespaces.count": 35}


def stall_commits(admin: psycopg.Connection, schema: str, times: int) -> None:
    """Make the next `times` write transactions of this schema stall at COMMIT: a deferred
    constraint trigger on the namespaces' rows (every write moves their versions) sleeps then,
    which leaves a killer the time to end the backend while the commit is under way. The count
    lives in a sequence, which a rolled-back transaction does not undo."""
    admin.execute(f'CREATE SEQUENCE "{schema}".tm_fault_stalls')
    admin.execute(f"""CREATE FUNCTION "{schema}".tm_fault_stall() RETURNS trigger LANGUAGE plpgsql AS $$
                      BEGIN
                          IF nextval('"{schema}".tm_fault_stalls') <= {times} THEN PERFORM pg_sleep(60); END IF;
                          RETURN NULL;
                      END $$""")
    admin.execute(f'CREATE CONSTRAINT TRIGGER tm_fault_stall AFTER UPDATE ON "{schema}".tm_namespaces '
                  f'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{schema}".tm_fault_stall()')


class Killer(threading.Thread):
    """Ends every backend of this application_name found sleeping in the stall, until stopped."""

    def __init__(self, dsn: str, tag: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.tag = dsn, tag
        self.kills = 0
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.done.is_set():
                self.kills += conn.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = %s AND wait_event = 'PgSleep'", (self.tag,)).fetchone()[0]
                time.sleep(0.02)

    def __enter__(self) -> Killer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(timeout=10)


@pytest.mark.parametrize("early", [20, 300], ids=["re-calibrating", "plain-write"])
def test_a_backend_killed_while_a_large_add_commits_is_retried_once(pg_dsn: str, pg_schema: str, tmp_path: Path,
                                                                      admin, early: int) -> None:
    """With 20 memories stored the large add first re-calibrates the int8 ranges (re-encoding every
    code in one transaction): that commit dies; with 300 the ranges are learned already and the
    add's own write dies."""
    tag = f"tmf_{pg_schema}"
    vectors = unit_rows(early + 500, seed=21)
    with engine(tagged(pg_dsn, tag), pg_schema, tmp_path / "here") as mem:
        first = mem.add_many([f"early {i}" for i in range(early)], vectors=vectors[:early], namespace="shared")
        stall_commits(admin, pg_schema, times=1)
        with Killer(pg_dsn, tag) as killer:
            ids = mem.add_many([f"large batch {i}" for i in range(500)], vectors=vectors[early:],
                               namespace="shared")
        assert killer.kills == 1  # the first commit died, the retry went through
        assert len(set(ids)) == 500 and mem.count("shared") == early + 500
        assert mem.search(vector=vectors[early + 280], namespace="shared", k=1)[0].memory.text == "large batch 280"
    assert server_counts(pg_dsn, pg_schema) == {table: early + 500 for table in
                                                ("tm_records", "tm_rows", "tm_codes", "tm_originals", "tm_texts",
                                                 "tm_namespaces.count")}
    with engine(pg_dsn, pg_schema, tmp_path / "elsewhere") as fresh:
        assert sorted(fresh.ids("shared")) == sorted(first + ids)
        assert fresh.get(ids[499]).text == "large batch 499"


def test_a_write_whose_every_attempt_dies_raises_and_leaves_nothing_half_applied(pg_dsn: str, pg_schema: str,
                                                                                 tmp_path: Path, admin) -> None:
    tag = f"tmf_{pg_schema}"
    vectors = unit_rows(120, seed=31)
    with engine(tagged(pg_dsn, tag), pg_schema, tmp_path / "here") as mem:
        first = mem.add_many([f"early {i}" for i in range(20)], vectors=vectors[:20], namespace="shared")
        before = server_counts(pg_dsn, pg_schema)
        stall_commits(admin, pg_schema, times=1_000)
        with Killer(pg_dsn, tag) as killer:
            with pytest.raises(StorageError, match="nothing of this call was stored") as failed:
                mem.add_many([f"doomed {i}" for i in range(100)], vectors=vectors[20:], namespace="shared")
            with pytest.raises(StorageError, match="nothing of this call was stored"):
                mem.update(first[0], text="doomed update", vector=vectors[0])
            with pytest.raises(StorageError, match="nothing of this call was stored"):
                mem.delete(first[1])
        assert killer.kills == 3 * 3  # each call's three attempts
        assert "retry is safe" in str(failed.value)
        assert server_counts(pg_dsn, pg_schema) == before
        # The process's own tiers agree with the server: nothing of the failed calls shows.
        assert mem.count("shared") == 20 and sorted(mem.ids("shared")) == sorted(first)
        assert contents(mem, "shared") == {memory_id: f"early {i}" for i, memory_id in enumerate(first)}
        assert mem.get(first[0]).text == "early 0" and mem.get(first[1]).text == "early 1"
        assert all(not hit.memory.text.startswith("doomed")
                   for hit in mem.search(vector=vectors[50], namespace="shared", k=20))
        admin.execute(f'DROP TRIGGER tm_fault_stall ON "{pg_schema}".tm_namespaces')
        ids = mem.add_many([f"doomed {i}" for i in range(100)], vectors=vectors[20:], namespace="shared")  # the advice
        assert mem.count("shared") == 120
    assert server_counts(pg_dsn, pg_schema) == {table: 120 for table in before}
    with engine(pg_dsn, pg_schema, tmp_path / "elsewhere") as fresh:
        assert sorted(fresh.ids("shared")) == sorted(first + ids) and fresh.get(first[0]).text == "early 0"


def test_a_server_not_there_at_open_fails_naming_the_cause(pg_dsn: str, pg_schema: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"cannot connect to PostgreSQL at .*:1/test.*refused.*start the server, "
                                           r"or fix the DSN"):
        TieredMemory(tmp_path / "cache", cold=pg_cold.postgres_cold("postgresql://postgres@127.0.0.1:1/test"),
                     encoder=None, dimension=DIM)
    missing = pg_dsn.rsplit("/", 1)[0] + "/tm_no_such_database"
    with pytest.raises(StorageError, match='database "tm_no_such_database" does not exist.*fix the DSN'):
        TieredMemory(tmp_path / "cache", cold=pg_cold.postgres_cold(missing), encoder=None, dimension=DIM)
    with engine(pg_dsn, pg_schema, tmp_path / "cache") as mem:  # the failed opens left the directory unlocked
        assert mem.add("stored once the DSN is right", vector=unit_rows(1, seed=5)[0]) in mem.ids()


def test_a_killed_listening_connection_listens_again(pg_dsn: str, pg_schema: str, admin) -> None:
    tag = f"tmf_{pg_schema}"
    heard: list[list[int] | None] = []
    arrived = threading.Condition()

    def on_notice(ns_ids: list[int] | None) -> None:
        with arrived:
            heard.append(ns_ids)
            arrived.notify_all()

    def listening() -> int:
        return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND query ILIKE "
                             "'LISTEN%%' AND pid <> pg_backend_pid()", (tag,)).fetchone()[0]

    listener = pg_cold.PostgresColdStore(tagged(pg_dsn, tag), schema=pg_schema)
    writer = pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema)
    try:
        for store in (listener, writer):
            store.use_dimension(DIM)
        ns = writer.namespace_id("shared", create=True)
        listener.listen(on_notice)
        assert listening() == 1
        assert terminate(admin, tag) >= 1 and listening() == 0
        deadline = time.monotonic() + 30
        while listening() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listening() == 1  # listening again
        with arrived:
            assert arrived.wait_for(lambda: None in heard, timeout=30)  # told that notices may have been lost
        writer.write([writer.count_op(ns, 0)])  # touches the namespace: its version moves, a notice names it
        with arrived:
            assert arrived.wait_for(lambda: [ns] in heard, timeout=30)
    finally:
        listener.close()
        writer.close()


def test_a_search_racing_another_process_delete_leaves_the_memory_out(pg_dsn: str, pg_schema: str,
                                                                      tmp_path: Path, admin) -> None:
    """Another process deletes a memory between a search's version check and its read of the
    record. The window is made wide on the server: the rows go without the namespace's version
    moving, which is what the searching process sees inside it."""
    vectors = unit_rows(30, seed=41)
    with engine(pg_dsn, pg_schema, tmp_path / "writer") as writer:
        ids = writer.add_many([f"note {i}" for i in range(30)], vectors=vectors, namespace="shared")
    with engine(pg_dsn, pg_schema, tmp_path / "reader") as reader:
        assert reader.search(vector=vectors[7], namespace="shared", k=1)[0].memory.id == ids[7]  # loaded
        for table in ("tm_records", "tm_rows", "tm_codes", "tm_originals"):
            admin.execute(f'DELETE FROM "{pg_schema}".{table} WHERE memory_id = %s', (ids[8],))
        hits = reader.search(vector=vectors[8], namespace="shared", k=5)
        assert len(hits) >= 4 and ids[8] not in {hit.memory.id for hit in hits}
