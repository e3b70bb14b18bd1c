"""The engine on the PostgreSQL cold store: the same API as on LMDB, and what only PostgreSQL promises."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tiered_memory import EncryptionRequiredError, MemoryNotFoundError, StorageError, Tier, TieredMemory
from tiered_memory.config import MemoryConfig

from .conftest import DIM, pg_unavailable, unit_rows
from .test_quantization import drifted_rows

pytestmark = pytest.mark.postgres

pg_cold = pytest.importorskip("tiered_memory.tiers.pg_cold",
                              reason="psycopg 3 is not installed (pip install '.[postgres]')")
KEY = bytes(range(32))


@pytest.fixture
def open_pg(tmp_path: Path, clock, pg_dsn: str, pg_schema: str) -> Iterator[Callable[..., TieredMemory]]:
    """Engines on one PostgreSQL schema; each open gets a cache directory of its own unless told
    (a second process would)."""
    opened: list[TieredMemory] = []
    caches = iter(range(1_000))

    def _open(cache: Path | None = None, **settings: object) -> TieredMemory:
        settings.setdefault("encoder", None)
        if settings["encoder"] is None:
            settings.setdefault("dimension", DIM)
        settings.setdefault("clock", clock)
        settings.setdefault("promote_in_background", False)
        mem = TieredMemory(cache or tmp_path / f"cache{next(caches)}",
                           cold=pg_cold.postgres_cold(pg_dsn, schema=pg_schema), **settings)  # type: ignore[arg-type]
        opened.append(mem)
        return mem

    yield _open
    for mem in opened:
        mem.close()


def server_rows(dsn: str, schema: str, sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        return conn.execute(sql, params).fetchall()


# -- the engine's API on PostgreSQL ------------------------------------------------------------


def test_add_search_get_update_delete_list(open_pg) -> None:
    mem = open_pg()
    vectors = unit_rows(60, seed=1)
    ids = mem.add_many([f"note {i}" for i in range(50)], vectors=vectors[:50], namespace="a",
                       metadata=[{"i": i} for i in range(50)])
    other = mem.add("elsewhere", vector=vectors[50], namespace="b", kind="event")
    assert (mem.count(), mem.count("a"), mem.count("b"), mem.namespaces()) == (51, 50, 1, ["a", "b"])
    assert [h.memory.id for h in mem.search(vector=vectors[7], namespace="a", k=1)] == [ids[7]]
    assert mem.search(vector=vectors[50], namespace="a", k=50)[0].memory.id != other
    assert mem.get(ids[3]).metadata == {"i": 3} and mem.get(other, namespace="b").kind == "event"
    changed = mem.update(ids[3], text="note three, rewritten", vector=vectors[55], metadata={"i": 33})
    assert changed.version == 2 and mem.get(ids[3]).text == "note three, rewritten"
    assert mem.search(vector=vectors[55], namespace="a", k=1)[0].memory.id == ids[3]
    mem.delete(ids[4])
    assert mem.count("a") == 49 and ids[4] not in mem.ids("a") and sorted(mem.ids("b")) == [other]
    listed = mem.list_memories("a", limit=100)
    assert len(listed) == 49 and {m.id for m in listed} == set(ids) - {ids[4]}
    assert mem.stats().cold.count == 50 and mem.stats().cold.disk_bytes > 0


def test_close_and_reopen_from_another_cache_directory(open_pg, tmp_path: Path) -> None:
    mem = open_pg(cache=tmp_path / "first")
    vectors = unit_rows(40, seed=2)
    ids = mem.add_many([f"m{i}" for i in range(40)], vectors=vectors, namespace="n")
    mem.search(vector=vectors[0], namespace="n", k=3)
    mem.close()
    assert (tmp_path / "first" / "LOCK").is_file() and not (tmp_path / "first" / "cold").exists()
    again = open_pg(cache=tmp_path / "second")  # a new process: an empty cache, the same store
    assert again.count("n") == 40 and again.get(ids[9]).text == "m9"
    assert [again.search(vector=vectors[i], namespace="n", k=1)[0].memory.id for i in (0, 17, 39)] == \
        [ids[0], ids[17], ids[39]]
    again.close()
    warm = open_pg(cache=tmp_path / "first")  # the first cache again: its saved graph matches the store
    assert warm.search(vector=vectors[5], namespace="n", k=1)[0].memory.id == ids[5]


def test_read_only_opens_read_and_the_server_refuses_their_writes(open_pg, pg_dsn: str, pg_schema: str) -> None:
    writer = open_pg()
    first = writer.add("kept", vector=unit_rows(1, seed=3)[0])
    writer.close()
    reader = open_pg(read_only=True)
    assert reader.get(first).text == "kept" and reader.count() == 1
    store = pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema, read_only=True)
    try:
        with pytest.raises(StorageError, match="read-only transaction"):
            store.write([store.meta_op("note", 1)])
        assert store.meta_get("note") is None and store.meta_get("dimension") == DIM
    finally:
        store.close()


@pytest.mark.model
def test_dense_and_hybrid_text_search_with_the_real_model(open_pg, minilm) -> None:
    mem = open_pg(encoder=minilm)
    texts = ["The user is allergic to peanuts", "Flight LH-4521 leaves Frankfurt at 9:40",
             "The user prefers short answers with code examples", "Paris museums close on Tuesdays"]
    ids = mem.add_many(texts, namespace="u")
    assert mem.search("What food allergy does the user have?", namespace="u", k=1, mode="dense")[0].memory.id == ids[0]
    assert mem.search("LH-4521", namespace="u", k=1, mode="hybrid")[0].memory.id == ids[1]
    assert mem.search("answer style preference", namespace="u", k=1)[0].memory.id == ids[2]
    again = mem.add("the user is ALLERGIC to   peanuts", namespace="u", dedup=True)  # the dedup index
    assert again == ids[0] and mem.count("u") == 4


@pytest.mark.model
def test_conversation_archives_into_the_postgres_store(open_pg, minilm) -> None:
    mem = open_pg(encoder=minilm)
    conv = mem.conversation("user_123", max_tokens=30)
    conv.add_message("system", "You are a travel assistant.")
    conv.add_message("user", "I am allergic to peanuts, please remember that for restaurant tips.")
    conv.add_message("assistant", "Noted: no peanuts.")
    conv.add_message("user", "Which museums in Paris open on Mondays?")
    assert conv.archived >= 1
    hits = mem.search("What food allergy does the user have?", namespace="user_123", k=1)
    assert "peanuts" in hits[0].memory.text and hits[0].memory.kind == "conversation"


def test_agents_hub_state_lives_in_the_store(open_pg, tmp_path: Path) -> None:
    mem = open_pg()
    hub = mem.agents("acme")
    owner, reader = hub.register("owner"), hub.register("reader")
    owner.put("stats", {"rows": 1200})
    vectors = unit_rows(3, seed=5)
    private = owner.remember("owner's private draft", vector=vectors[0])
    shared = hub.share(owner, ["reader"], "Q3 revenue grew 12%", vector=vectors[1], access="read")
    assert [h.memory.id for h in reader.search(vector=vectors[1], k=5)] == [shared]
    mem.close()
    again = open_pg().agents("acme")
    assert again.agent("owner").get("stats") == {"rows": 1200} and again.agent_names() == ["owner", "reader"]
    assert [n.event for n in again.agent("reader").notifications()] == ["shared"]
    assert again.access("reader", shared) == "read" and again.access("reader", private) is None


def test_sealed_memories_are_not_on_the_server_in_clear(open_pg, pg_dsn: str, pg_schema: str) -> None:
    secret, plain = b"launch code 0000-ZEBRA-7731", b"the weather is mild today"
    mem = open_pg(encryption_key=KEY)
    vectors = unit_rows(2, seed=6)
    sealed_id = mem.add(secret.decode(), vector=vectors[0], sensitive=True, metadata={"pin": "ZEBRA-7731"})
    mem.add(plain.decode(), vector=vectors[1])
    mem.agents("acme").register("owner").put("note", "ZEBRA-7731 in a private entry", sensitive=True)
    assert mem.get(sealed_id).text == secret.decode()
    mem.close()
    tables = [name for (name,) in server_rows(pg_dsn, pg_schema, "SELECT table_name FROM information_schema.tables "
                                              "WHERE table_schema = %s", (pg_schema,))]
    assert "tm_records" in tables and "tm_extra" in tables
    stored = b"".join(value if isinstance(value, bytes) else str(value).encode()
                      for table in tables for row in server_rows(pg_dsn, pg_schema, f"SELECT * FROM {table}")
                      for value in row)
    assert plain in stored  # the scan sees a text stored in clear ...
    assert b"ZEBRA" not in stored and b"launch code" not in stored  # ... and no sealed text, metadata or entry
    with pytest.raises(EncryptionRequiredError):
        open_pg()
    assert open_pg(encryption_key=KEY).get(sealed_id).metadata == {"pin": "ZEBRA-7731"}


def test_memories_expire_and_are_swept_on_the_server(open_pg, clock) -> None:
    mem = open_pg()
    vectors = unit_rows(10, seed=9)
    ids = mem.add_many([f"m{i}" for i in range(10)], vectors=vectors, namespace="n",
                       ttl_s=[30 if i % 2 == 0 else None for i in range(10)])
    idle = mem.add("idle", vector=vectors[0], namespace="idle", ttl_s=30)
    mem.close()
    clock.tick(30)
    again = open_pg()
    with pytest.raises(MemoryNotFoundError):
        again.get(ids[0])
    assert again.count("n") == 5 and again.get(ids[1]).expires_at is None
    assert again.maintain().expired == 6  # "idle" too, without loading it
    assert again.count() == 5 and sorted(again.ids("n")) == sorted(ids[1::2]) and idle not in again.ids()
    assert again.cold.expiry_bounds() == {}


def stored_codes(mem: TieredMemory) -> tuple[list[str], np.ndarray]:
    """Every stored code, by the contract's range reads (one per namespace)."""
    ids, codes = [], []
    for name in mem.namespaces():
        rows = mem.cold.load_namespace(mem.cold.namespace_id(name))
        ids += rows.ids
        codes.append(rows.codes)
    return ids, np.concatenate(codes)


def test_drift_recalibration_reencodes_every_code_on_the_server(open_pg) -> None:
    mem = open_pg(calibration_size=256)
    vectors = np.concatenate([unit_rows(300, seed=20), drifted_rows(200, seed=21)])
    ids = mem.add_many([f"m{i}" for i in range(300)], vectors=vectors[:300], namespace="one")
    ids += mem.add_many([f"d{i}" for i in range(200)], vectors=vectors[300:], namespace="two")
    _, before = stored_codes(mem)
    assert mem.maintain().recalibrated
    quantizer = mem.cold.quantizer
    stored_ids, codes = stored_codes(mem)
    assert sorted(stored_ids) == sorted(ids) and mem.count() == 500
    np.testing.assert_array_equal(codes, quantizer.encode(mem.cold.originals(stored_ids)))
    assert (codes != before).any(axis=1).mean() > 0.9
    state = quantizer.state()
    mem.close()
    again = open_pg(calibration_size=256)
    assert again.cold.quantizer.state() == state
    np.testing.assert_array_equal(stored_codes(again)[1], codes)
    assert again.search(vector=vectors[310], namespace="two", k=1)[0].memory.id == ids[310]
    assert again.tier_of(ids[0]) in (Tier.COLD, Tier.WARM, Tier.HOT)


# -- what only the PostgreSQL store promises ---------------------------------------------------


def test_tables_are_versioned_and_migrated_once(pg_dsn: str, pg_schema: str) -> None:
    first = pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema)
    first.close()
    second = pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema)
    second.close()
    applied = [version for version, _ in pg_cold.MIGRATIONS]
    assert server_rows(pg_dsn, pg_schema, "SELECT version FROM tm_schema_version ORDER BY version") == \
        [(version,) for version in applied]
    server_rows(pg_dsn, pg_schema, "INSERT INTO tm_schema_version (version) VALUES (%s) RETURNING version",
                (pg_cold.SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match="newer than this library"):
        pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema)


def test_a_store_at_table_version_1_is_migrated_with_its_data(pg_dsn: str, pg_schema: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{pg_schema}"')
        conn.execute("CREATE TABLE tm_schema_version (version integer PRIMARY KEY, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        for statement in pg_cold.MIGRATIONS[0][1]:
            conn.execute(statement)
        conn.execute("INSERT INTO tm_schema_version (version) VALUES (1)")
        conn.execute("INSERT INTO tm_namespaces (ns_id, name, count, generation) VALUES (1, 'old', 1, 4)")
        conn.execute("INSERT INTO tm_rows (ns_id, memory_id, value) VALUES (1, 'm', %s)", (b"row",))
    store = pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema)
    try:
        assert store.namespace_info(1) == ("old", 1, 4) and store.namespace_ids(1) == ["m"]
    finally:
        store.close()
    applied = server_rows(pg_dsn, pg_schema, "SELECT version FROM tm_schema_version ORDER BY version")
    assert applied == [(1,), (2,), (3,)]
    assert server_rows(pg_dsn, pg_schema, "SELECT version FROM tm_rows") == [(1,)]


def test_every_per_namespace_table_leads_with_the_tenant_key(pg_dsn: str, pg_schema: str) -> None:
    pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema).close()
    keys = server_rows(pg_dsn, pg_schema, """
        SELECT c.relname, a.attname FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
        WHERE i.indisprimary AND n.nspname = %s""", (pg_schema,))
    first_column = dict(keys)
    for table in ("tm_records", "tm_rows", "tm_codes", "tm_originals", "tm_texts", "tm_namespaces"):
        assert first_column[table] == "ns_id", table
    assert first_column["tm_meta"] == first_column["tm_extra"] == "key"  # store-level


def test_a_retried_write_changes_nothing_more(pg_dsn: str, pg_schema: str) -> None:
    """Memory ids come from the client, puts are upserts and counts follow the rows: a write
    replayed after a lost acknowledgement leaves the store as one write would."""
    from .test_cold_store_contract import memory

    cold = pg_cold.PostgresColdStore(pg_dsn, schema=pg_schema)
    try:
        cold.use_dimension(DIM)
        ns = cold.namespace_id("ns", create=True)
        vectors = unit_rows(3, seed=7)
        ops = cold.memory_ops(ns, [memory(f"m{i}") for i in range(3)], cold.quantizer.encode(vectors), vectors)
        cold.write(ops)
        cold.write(ops)
        assert cold.namespace_info(ns)[:2] == ("ns", 3) and len(cold) == 3
        deletes = cold.delete_ops(ns, ["m0"])
        cold.write(deletes)
        cold.write(deletes)
        assert cold.namespace_info(ns)[:2] == ("ns", 2) and cold.namespace_ids(ns) == ["m1", "m2"]
    finally:
        cold.close()


def test_no_server_is_a_storage_error_that_says_so() -> None:
    with pytest.raises(StorageError, match="cannot connect to PostgreSQL .*start the server, or fix the DSN"):
        pg_cold.PostgresColdStore("postgresql://nobody:hunter2@127.0.0.1:1/none?connect_timeout=1", timeout_s=1.5)


def test_messages_never_show_the_password() -> None:
    with pytest.raises(StorageError) as caught:
        pg_cold.PostgresColdStore("postgresql://nobody:hunter2@127.0.0.1:1/none?connect_timeout=1", timeout_s=1.0)
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_the_dsn_comes_from_the_environment(monkeypatch, pg_dsn: str, pg_schema: str) -> None:
    monkeypatch.setenv(pg_cold.DSN_ENV, pg_dsn)
    cold = pg_cold.PostgresColdStore(config=MemoryConfig(), schema=pg_schema)
    try:
        assert cold.dsn == pg_dsn and cold.namespace_counts() == []
    finally:
        cold.close()


def test_a_schema_name_must_be_an_identifier(pg_dsn: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        pg_cold.PostgresColdStore(pg_dsn, schema='x"; DROP TABLE y; --')


def test_without_a_server_these_tests_skip_except_in_ci(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server here"):
        pg_unavailable("no server here")
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("TIERED_MEMORY_PG_DSN", "postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(pytest.fail.Exception, match="CI must run the PostgreSQL tests, but no server here"):
        pg_unavailable("no server here")


def test_ci_fails_the_postgres_tests_when_its_server_is_down() -> None:
    """End to end, as CI runs them: .ci/run exports the DSN, and a server that does not answer fails."""
    root = Path(__file__).resolve().parent.parent
    assert "TIERED_MEMORY_PG_DSN" in (root / ".ci" / "run").read_text()
    env = {**os.environ, "CI": "1", "TIERED_MEMORY_PG_DSN": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_pg_cold.py::test_tables_are_versioned_and_migrated_once"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "CI must run the PostgreSQL tests" in run.stdout, run.stdout
