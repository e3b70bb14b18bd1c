"""A cold store on PostgreSQL: the engine's source of truth in a database several processes share.

Use it through the engine's ``cold=`` factory; the engine's directory then holds only local
caches (saved warm graphs, lexical indexes) and its lock, so each process opens its own::

    from tiered_memory import TieredMemory
    from tiered_memory.tiers.pg_cold import postgres_cold

    mem = TieredMemory("./cache-of-this-process", cold=postgres_cold("postgresql://app@db/memories"))

Needs ``pip install 'tiered-memory[postgres]'`` (psycopg 3 and psycopg_pool). The DSN defaults to
the environment variable ``TIERED_MEMORY_PG_DSN``, else libpq's own defaults (``PGHOST``, ...).

Tables (created and migrated by the library; ``tm_schema_version`` lists the versions applied), in
the schema given by ``schema=`` or the connection's ``search_path``:

- ``tm_records``, ``tm_rows``, ``tm_codes``, ``tm_originals``: ``(ns_id, memory_id) -> value``,
  the LMDB databases ``records``, ``rows``, ``nscodes``, ``originals``; ``tm_rows`` also keeps the
  memory's version (a guard, below).
- ``tm_texts``: ``(ns_id, digest) -> memory_id``, the dedup index (digests, never texts).
- ``tm_namespaces``: ``ns_id -> name, count, generation, version`` (generation: the LMDB meaning,
  what saved warm graphs are stamped with; version: moved by every write that touches the namespace).
- ``tm_meta``, ``tm_extra``: store-level ``key -> value`` (dimension, quantizer, key check; agent hubs).
- ``tm_stamps``: ``(ns_id, memory_id) -> seq, value``, each memory's change stamp for offline sync
  (tombstones too), numbered by ``tm_namespaces.change_seq`` under the namespace's row lock, so a
  namespace's change numbers are in commit order (index ``(ns_id, seq)``).

``ns_id`` is the tenant key: it is the first column of every per-namespace table's primary key and
the Citus distribution column (``tm_namespaces``, ``tm_meta`` and ``tm_extra`` would be reference
tables). Every write and every range read (load_namespace, namespace_ids, find_texts) stays within
one tenant. Reads by memory id alone (get, get_many, fetch, originals, vector: the engine's API
takes ids without their namespace) use the ``memory_id`` indexes; under Citus they are
multi-shard lookups. ``recode_all`` (store-wide re-calibration) walks every tenant.

Values are ``bytea``, exactly the bytes the LMDB store keeps: sensitive memories' records and
vectors arrive sealed by the op builders and stay sealed on the server.

Writes: each ``write()`` is one database transaction, committed before it returns. Puts are
upserts (``ON CONFLICT``), deletes of absent keys are no-ops, and a namespace's count moves by the
rows actually inserted or deleted, so a write retried after a lost connection (its commit unknown)
cannot double anything: memory ids are made by the client. Connection failures, serialization
failures and deadlocks are retried (``retries``); any other failure rolls back and raises
StorageError.

Several writers (processes, each with its own engine and cache directory) may share one store:

- A write first locks the rows of the namespaces it touches in ``tm_namespaces``, in id order, and
  moves their versions: writers of one namespace take turns, writers of others do not wait.
- A process's loaded copy of a namespace remembers the version it was read at (moved on by its
  own writes when no other came between); :meth:`PostgresColdStore.changed_elsewhere` compares it
  with the server's, and the engine reloads a namespace another process changed before using it.
  Every write also names the namespaces it touched on the store's NOTIFY channel
  (``tiered_memory.<schema>``); :meth:`PostgresColdStore.listen` hands other writers' notices to
  the engine, whose background thread unloads those stale copies early.
- Catalog rows are new only in a write that adds memories (a positive count op); otherwise a put
  updates an existing row, and never one of a later memory version: a statistics flush from a
  stale copy cannot undo another process's update, and an update overtaken by another process's
  delete does not bring back half a memory (records, codes and originals need their row).
- An update (a write that puts a memory's record and row) must move the stored version on by one:
  one made from a version another process has moved on since is refused whole
  (ConcurrentUpdateError), and the engine makes it again from the memory as stored now, so two
  updates at once both land, in turn, with versions v+1 and v+2 (not both v+1, the later undoing
  the earlier).
- Codes are made by the store-wide quantizer: a write of codes takes a shared advisory lock and
  re-encoding all codes (re-calibration, with the new quantizer's state in the same transaction)
  an exclusive one; codes made with a quantizer another writer has replaced are refused
  (StorageError, nothing written) and the new one loaded, so that a retry encodes with it.

- A deduplicating add claims its texts' dedup entries (text_claim_op): an entry that names
  another stored memory by the time of the write (another process added the same text after this
  one looked it up) refuses the write whole (ConcurrentUpdateError), and the engine adds again,
  finding the text a duplicate: two processes adding one text at once store it once.

Agent hubs keep their state in ``tm_extra``; each process mirrors it in RAM, changes it under
:meth:`PostgresColdStore.exclusive` (a session advisory lock per hub) after bringing the mirror up
to date, and re-reads it when the hub's generation moved (one small read per hub call).
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import numpy as np

from tiered_memory.config import MemoryConfig
from tiered_memory.crypto import Sealer
from tiered_memory.errors import (
    ConcurrentUpdateError,
    ConfigError,
    EncryptionRequiredError,
    SchemaVersionError,
    StorageError,
)
from tiered_memory.quantization import Quantizer, make_quantizer, quantizer_from_state
from tiered_memory.records import Memory, unpack_record
from tiered_memory.tiers.cold import STORE_SCHEMA
from tiered_memory.tiers.cold_ops import (
    EXPIRY_PREFIX,
    NS_ID,
    STAMPS,
    ColdOps,
    NamespaceRows,
    Op,
    StoredStamp,
    StoredVersion,
    expiry_bound_of,
    namespace_rows,
    row_key,
    stamp_fields,
    stamped,
    unpack_row,
)
from tiered_memory.tiers.cold_store import ColdStore

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as err:  # pragma: no cover - the extra is not installed
    raise ImportError("the PostgreSQL cold store needs psycopg 3 and psycopg_pool: "
                      "pip install 'tiered-memory[postgres]'") from err

log = logging.getLogger(__name__)

DSN_ENV = "TIERED_MEMORY_PG_DSN"

# The tables' schema versions, applied in order by the first read-write open that lacks them.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        "CREATE TABLE tm_meta (key bytea PRIMARY KEY, value bytea NOT NULL)",
        "CREATE TABLE tm_extra (key bytea PRIMARY KEY, value bytea NOT NULL)",
        "CREATE SEQUENCE tm_namespace_ids",
        "CREATE SEQUENCE tm_store_generation",
        """CREATE TABLE tm_namespaces (
               ns_id integer PRIMARY KEY,
               name text COLLATE "C" NOT NULL UNIQUE,
               count bigint NOT NULL DEFAULT 0,
               generation bigint NOT NULL DEFAULT 0)""",
        *(f"""CREATE TABLE {table} (
                  ns_id integer NOT NULL,
                  memory_id text COLLATE "C" NOT NULL,
                  value bytea NOT NULL,
                  PRIMARY KEY (ns_id, memory_id))"""
          for table in ("tm_records", "tm_rows", "tm_codes", "tm_originals")),
        "CREATE INDEX tm_records_by_id ON tm_records (memory_id)",
        "CREATE INDEX tm_originals_by_id ON tm_originals (memory_id)",
        """CREATE TABLE tm_texts (
               ns_id integer NOT NULL,
               digest bytea NOT NULL,
               memory_id text COLLATE "C" NOT NULL,
               PRIMARY KEY (ns_id, digest))""",
    ]),
    # Several writers: a namespace's version moves with every write that touches it (a loaded copy
    # compares it), a catalog row's memory version guards it against a stale statistics flush.
    (2, [
        "ALTER TABLE tm_namespaces ADD COLUMN version bigint NOT NULL DEFAULT 0",
        "ALTER TABLE tm_rows ADD COLUMN version integer NOT NULL DEFAULT 1",
    ]),
    # Change stamps (offline sync): one row per memory (tombstones too), numbered per namespace in
    # commit order by change_seq, moved under the namespace's row lock.
    (3, [
        "ALTER TABLE tm_namespaces ADD COLUMN change_seq bigint NOT NULL DEFAULT 0",
        """CREATE TABLE tm_stamps (
               ns_id integer NOT NULL,
               memory_id text COLLATE "C" NOT NULL,
               seq bigint NOT NULL,
               value bytea NOT NULL,
               PRIMARY KEY (ns_id, memory_id))""",
        "CREATE INDEX tm_stamps_by_seq ON tm_stamps (ns_id, seq)",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# LMDB database of an op -> table; the tables keyed by (ns_id, memory_id).
_BY_MEMORY = {"records": "tm_records", "rows": "tm_rows", "nscodes": "tm_codes", "originals": "tm_originals"}
_BY_KEY = {"meta": "tm_meta", "extra": "tm_extra"}
_TABLES = ("tm_records", "tm_rows", "tm_codes", "tm_originals", "tm_texts", "tm_stamps", "tm_namespaces", "tm_meta",
           "tm_extra",
           "tm_schema_version")
_RETRIED = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, psycopg.OperationalError, PoolTimeout)
_QUANTIZER_KEY = b"quantizer"
_LISTEN_POLL_S = 0.2  # how often the listener looks at whether the store was closed
_LISTEN_RETRY_MAX_S = 2.0  # longest wait between attempts to listen again (close() waits for the listener)
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def postgres_cold(dsn: str | None = None, **options: Any) -> Callable[[MemoryConfig, bool], PostgresColdStore]:
    """The engine's ``cold=`` factory for a PostgreSQL store: ``TieredMemory(dir, cold=postgres_cold(dsn))``.

    The engine calls it with its config and read_only flag, and closes the store at close();
    options go to :class:`PostgresColdStore` (schema, pool_size, retries)."""

    def open_store(config: MemoryConfig, read_only: bool) -> PostgresColdStore:
        return PostgresColdStore(dsn, config, read_only=read_only, **options)

    return open_store


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with prefix (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _last_per_key(items: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """Puts of one statement, the last of each key kept (as applying them in order would)."""
    return list({item[:width]: item for item in items}.values())


class PostgresColdStore(ColdOps, ColdStore):
    """The cold store contract (:class:`~tiered_memory.tiers.cold_store.ColdStore`) on PostgreSQL."""

    name = "cold"

    def __init__(self, dsn: str | None = None, config: MemoryConfig | None = None, *, read_only: bool = False,
                 schema: str | None = None, pool_size: int = 4, retries: int = 3, timeout_s: float = 30.0) -> None:
        self.config = config or MemoryConfig()
        self.read_only = read_only
        self.dsn = dsn if dsn is not None else os.environ.get(DSN_ENV, "")
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigError(f"schema={schema!r} is not a plain SQL identifier (letters, digits, _)")
        self.schema_name = schema
        self.retries = max(1, retries)
        self.dimension = 0
        self.originals_dtype = {"none": None, "float16": np.float16, "float32": np.float32}[self.config.keep_originals]
        self.quantizer: Quantizer = make_quantizer("int8", 1)
        self.sealer: Sealer | None = None
        self._ns_ids: dict[str, int] = {}
        # ns id -> (version, generation) of the namespace as this process last loaded it, moved on
        # by its own writes when no other writer's came between (changed_elsewhere compares the
        # version with the server's; namespace_info gives the generation, which stamps saved graphs).
        # (version, generation, change_seq): change_seq the last change stamp the copy holds, so
        # that a copy another writer changed can be brought up to date in place (refresh).
        self._seen: dict[int, tuple[int, int, int]] = {}
        self._seen_lock = threading.Lock()
        self._quantizer_stored: bytes | None = None  # the stored state this process's quantizer came from
        # Change notices (LISTEN/NOTIFY): every write names the namespaces it touched on this
        # store's channel; the token tells this store's own notices from other writers'.
        self._token = secrets.token_hex(8)
        self._channel = ""  # "tiered_memory.<schema>", once the schema in use is known
        self._listener: threading.Thread | None = None
        self._closed = False
        self.pool = ConnectionPool(self.dsn, min_size=1, max_size=max(1, pool_size), timeout=timeout_s,
                                   kwargs={"autocommit": True}, configure=self._configure,
                                   check=self._check_idle_connection, open=False, name="tiered_memory")
        try:
            self._first_connection(timeout_s)
            self.pool.open(wait=True, timeout=timeout_s)
            self._migrate()
            with self._connection() as conn:
                self._channel = "tiered_memory." + conn.execute("SELECT current_schema()").fetchone()[0]
        except PoolTimeout as err:
            self.pool.close()
            raise StorageError(f"no PostgreSQL server answers at {self._where()} within {timeout_s:g} s ({err}); "
                               f"start it or set {DSN_ENV}") from err
        except BaseException:
            self.pool.close()
            raise

    def _first_connection(self, timeout_s: float) -> None:
        """One connection of our own before the pool's: the pool retries a failed connect until its
        timeout and then reports only that it timed out, which hides a refused port, a missing
        database or a rejected user behind a wait of timeout_s; the driver's error names them at once."""
        try:
            psycopg.connect(self.dsn, connect_timeout=max(1, math.ceil(timeout_s)), autocommit=True).close()
        except psycopg.OperationalError as err:
            reason = " ".join(str(err).split())
            raise StorageError(f"cannot connect to PostgreSQL at {self._where()} ({reason}); start the server, or "
                               f"fix the DSN (host, port, database, user, password) or {DSN_ENV}") from err

    def __repr__(self) -> str:
        return f"PostgresColdStore({self._where()})"

    def _where(self) -> str:
        """The DSN without a password, and the schema: for messages."""
        shown = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", self.dsn) or "(libpq defaults)"
        shown = re.sub(r"password=\S+", "password=***", shown)
        return shown + (f" schema {self.schema_name}" if self.schema_name else "")

    def _configure(self, conn: psycopg.Connection) -> None:
        if self.schema_name is not None:
            conn.execute(f'SET search_path TO "{self.schema_name}"')
        if self.read_only:
            conn.execute("SET default_transaction_read_only = on")

    @staticmethod
    def _check_idle_connection(conn: psycopg.Connection) -> None:
        """Before the pool hands out a connection: an idle one has nothing to read unless the server
        sent something, as it does when it ends the session (a terminated backend, a restart). Only
        then a round trip tells whether it still works (raising makes the pool discard it and open
        another), so a killed backend costs no failed read and the usual checkout costs a poll."""
        if conn.closed or select.select([conn.fileno()], [], [], 0)[0]:
            ConnectionPool.check_connection(conn)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for reads; driver errors become StorageError."""
        if self._closed:
            raise StorageError(f"the PostgreSQL cold store at {self._where()} is closed")
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as err:
            raise StorageError(f"no connection to {self._where()} ({err}); check the server, or raise pool_size "
                               "if many threads read at once") from err
        except psycopg.Error as err:
            raise StorageError(f"reading the PostgreSQL cold store at {self._where()} failed ({err})") from err

    def _migrate(self) -> None:
        """Create or upgrade the tables, under a transaction-scoped advisory lock (store-level)."""
        with self._connection() as conn:
            if self.read_only:
                applied = self._applied_version(conn)
                if applied < SCHEMA_VERSION:
                    raise SchemaVersionError(f"the PostgreSQL store at {self._where()} has table version {applied}, "
                                             f"this library needs {SCHEMA_VERSION}: open it once without read_only")
            else:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.tiered_memory'))")
                    conn.execute("CREATE TABLE IF NOT EXISTS tm_schema_version (version integer PRIMARY KEY, "
                                 "applied_at timestamptz NOT NULL DEFAULT now())")
                    applied = self._applied_version(conn)
                    for version, statements in MIGRATIONS:
                        if version <= applied:
                            continue
                        for statement in statements:
                            conn.execute(statement)
                        conn.execute("INSERT INTO tm_schema_version (version) VALUES (%s)", (version,))
                        log.info("PostgreSQL cold store at %s: tables at version %d", self._where(), version)
            if applied > SCHEMA_VERSION:
                raise SchemaVersionError(f"the PostgreSQL store at {self._where()} has table version {applied}, "
                                         f"newer than this library's {SCHEMA_VERSION}: upgrade tiered_memory")

    @staticmethod
    def _applied_version(conn: psycopg.Connection) -> int:
        exists = conn.execute("SELECT to_regclass('tm_schema_version') IS NOT NULL").fetchone()[0]
        if not exists:
            return 0
        return conn.execute("SELECT coalesce(max(version), 0) FROM tm_schema_version").fetchone()[0]

    # -- opening and closing ---------------------------------------------------------------

    def use_dimension(self, dimension: int) -> None:
        self.dimension = dimension
        with self._connection() as conn:
            self._load_quantizer(self._stored_quantizer(conn))

    @staticmethod
    def _stored_quantizer(conn: psycopg.Connection) -> bytes | None:
        found = conn.execute("SELECT value FROM tm_meta WHERE key = %s", (_QUANTIZER_KEY,)).fetchone()
        return None if found is None else bytes(found[0])

    def _load_quantizer(self, stored: bytes | None) -> None:
        """Use the quantizer whose stored state is these bytes (None: none stored yet, a new one)."""
        try:
            state = None if stored is None else msgpack.unpackb(stored, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as err:
            raise StorageError(f"the store's 'quantizer' entry is not readable ({err!r}): the store is damaged; "
                               "restore it from a backup") from err
        if isinstance(state, dict) and "sealed" in state:
            if self.sealer is None:
                raise EncryptionRequiredError(f"the store at {self._where()} keeps its quantizer sealed: open it "
                                              "with its encryption_key=")
            state = msgpack.unpackb(self.sealer.open(state["sealed"], b"quantizer"), raw=False)
        if state is None:
            self.quantizer = make_quantizer("int8", self.dimension, self.config.clip_quantile)
        else:
            self.quantizer = quantizer_from_state(state)
        self._quantizer_stored = stored

    def schema(self) -> int:
        stored = self.meta_get("store_schema")
        return STORE_SCHEMA if stored is None else stored

    def migrate_from_schema_2(self) -> int:
        """A PostgreSQL store is created at schema 3 (schema() never reports 2): nothing moves."""
        return 0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._listener is not None and self._listener is not threading.current_thread():
                self._listener.join(timeout=5 * _LISTEN_POLL_S + 5)
            self.pool.close()

    # -- writing ---------------------------------------------------------------------------

    def write(self, ops: Iterable[Op], grow: bool = True) -> int:
        ops = list(ops)
        if self._closed:
            raise StorageError(f"the PostgreSQL cold store at {self._where()} is closed; nothing was stored")
        for attempt in range(1, self.retries + 1):
            try:
                with self.pool.connection() as conn:
                    with conn.transaction():
                        if any(db == "nscodes" and value is not None for db, _, value in ops):
                            self._check_quantizer(conn, exclusive=False)
                        versions = self._apply(conn, ops)
                        generation = self._next_generation(conn, list(versions))
                    self._saw_own(versions)  # committed
                    for db, key, value in ops:
                        if db == "meta" and key == _QUANTIZER_KEY:
                            self._quantizer_stored = value
                    return generation
            except _RETRIED as err:
                if attempt == self.retries:
                    raise StorageError(f"writing to the PostgreSQL cold store at {self._where()} failed after "
                                       f"{attempt} attempts ({err}); nothing of this call was stored (a retry "
                                       "is safe)") from err
                log.warning("write to %s failed (%s), retrying (%d of %d)", self._where(), err, attempt,
                            self.retries)
            except psycopg.Error as err:
                raise StorageError(f"writing to the PostgreSQL cold store at {self._where()} failed ({err}); "
                                   "nothing of this call was stored") from err
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _check_quantizer(self, conn: psycopg.Connection, exclusive: bool) -> None:
        """Inside a transaction that writes codes (shared) or re-encodes them all (exclusive): lock
        the quantizer until commit, and refuse codes of a quantizer another writer has replaced
        (loading the new one, so that a retry encodes with it)."""
        lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.execute(f"SELECT {lock}(hashtext(current_schema() || '.tiered_memory.quantizer'))")
        stored = self._stored_quantizer(conn)
        if stored != self._quantizer_stored:
            self._load_quantizer(stored)
            raise StorageError("another process re-calibrated the store's int8 ranges since this one loaded "
                               "them: nothing of this call was stored; the new ranges are loaded now, retry the call")

    def _apply(self, conn: psycopg.Connection, ops: list[Op]) -> dict[int, tuple[int, int, int]]:
        """Apply the ops: first lock each namespace they touch, then one statement per table and
        kind (puts and deletes of one table keep their order; tables are independent). Returns
        each touched namespace's new (version, generation)."""
        namespace_of = self._namespaces_named_in(ops)
        # Memories whose content this write changes (an add or an update puts the record): their
        # catalog rows must move on from the version the change was made from (see _put_rows).
        # Updates made from what this process read must move a memory's version on by one (another
        # writer's update between the read and this write is refused). A version received by a
        # sync (a stamp op with its own ancestry) replaces what is stored by the stamps' rules and
        # may move it on by more: it is guarded like a statistics flush (never backwards) instead.
        synced = {key[4:].decode("utf-8") for db, key, value in ops if db == STAMPS and value is not None
                  and msgpack.unpackb(value, raw=False)[2] is not None}
        recorded = {key.decode("utf-8"): value for db, key, value in ops
                    if db == "records" and value is not None and key.decode("utf-8") not in synced}
        by_table: dict[str, list[tuple[bool, list[Op]]]] = {}
        counts: dict[int, int] = {}  # count ops per namespace, and whether any adds memories
        adding: set[int] = set()
        stamps: list[Op] = []
        touched = set(namespace_of.values())
        for op in ops:
            db, key, value = op
            if db not in _BY_MEMORY and db not in _BY_KEY and db not in ("texts", "textclaims", "nscount", STAMPS):
                raise StorageError(f"an op for database {db!r}, which a PostgreSQL cold store does not have: "
                                   "nothing of this call was stored")
            if db == "nscount":
                ns = NS_ID.unpack(key)[0]
                counts[ns] = counts.get(ns, 0) + 1
                if int.from_bytes(value or b"", "big", signed=True) > 0:
                    adding.add(ns)
                continue
            if db in ("texts", "textclaims", STAMPS):
                touched.add(NS_ID.unpack(key[:4])[0])
            if db == STAMPS:
                stamps.append(op)
                continue
            runs = by_table.setdefault(db, [])
            if runs and runs[-1][0] == (value is None):
                runs[-1][1].append(op)
            else:
                runs.append((value is None, [op]))
        versions = self._lock_namespaces(conn, sorted(touched | set(counts)), counts)
        counted: dict[int, int] = {}  # rows actually inserted minus deleted, per namespace
        for db in sorted(by_table, key=lambda name: name != "rows"):  # rows first: they say which memories exist
            for deleting, run in by_table[db]:
                if db in _BY_MEMORY:
                    self._apply_memory_run(conn, db, deleting, run, namespace_of, adding, counted, recorded)
                elif db == "texts":
                    self._apply_texts_run(conn, deleting, run)
                elif db == "textclaims":
                    self._apply_text_claims(conn, run)
                else:
                    self._apply_key_run(conn, _BY_KEY[db], deleting, run)
        if stamps:
            for ns, change_seq in self._apply_stamps(conn, stamps).items():
                version, generation, _ = versions[ns]
                versions[ns] = (version, generation, change_seq)
        changed = [(ns, delta) for ns, delta in counted.items() if delta]
        if changed:
            conn.execute("UPDATE tm_namespaces AS n SET count = n.count + d.delta "
                         "FROM unnest(%s::integer[], %s::bigint[]) AS d(ns_id, delta) WHERE n.ns_id = d.ns_id",
                         ([ns for ns, _ in changed], [delta for _, delta in changed]))
        return versions

    @staticmethod
    def _lock_namespaces(conn: psycopg.Connection, namespaces: list[int],
                         counts: dict[int, int]) -> dict[int, tuple[int, int, int]]:
        """Lock the namespaces' rows, in id order (one order for every writer: two writers never
        deadlock), bumping each one's version and, per count op, its generation. The row lock
        serialises the writers of one namespace until commit; writers of others do not wait.
        Returns (version, generation, change_seq) of each (the stamps of the write move the last)."""
        versions: dict[int, tuple[int, int, int]] = {}
        for ns in namespaces:
            found = conn.execute("UPDATE tm_namespaces SET version = version + 1, generation = generation + %s "
                                 "WHERE ns_id = %s RETURNING version, generation, change_seq",
                                 (counts.get(ns, 0), ns)).fetchone()
            if found is None and ns in counts:
                raise StorageError(f"namespace id {ns} is not in the store: nothing of this call was stored")
            if found is not None:
                versions[ns] = (found[0], found[1], found[2])
        return versions

    @staticmethod
    def _namespaces_named_in(ops: list[Op]) -> dict[str, int]:
        """memory id -> ns id, from the ops keyed by namespace (rows, codes): records and
        originals are keyed by memory id alone, and are written with them."""
        found: dict[str, int] = {}
        for db, key, _ in ops:
            if db in ("rows", "nscodes"):
                found[key[4:].decode("utf-8")] = NS_ID.unpack(key[:4])[0]
        return found

    @staticmethod
    def _split(db: str, key: bytes) -> tuple[int | None, str]:
        if db in ("rows", "nscodes"):
            return NS_ID.unpack(key[:4])[0], key[4:].decode("utf-8")
        return None, key.decode("utf-8")

    def _apply_memory_run(self, conn: psycopg.Connection, db: str, deleting: bool, run: list[Op],
                          namespace_of: dict[str, int], adding: set[int], counted: dict[int, int],
                          recorded: dict[str, bytes]) -> None:
        table = _BY_MEMORY[db]
        keyed: list[tuple[int | None, str, bytes | None]] = []
        for _, key, value in run:
            ns, memory_id = self._split(db, key)
            keyed.append((ns if ns is not None else namespace_of.get(memory_id), memory_id, value))
        unknown = sorted({memory_id for ns, memory_id, _ in keyed if ns is None})
        if unknown:
            stored = dict(conn.execute(f"SELECT memory_id, ns_id FROM {table} WHERE memory_id = ANY(%s::text[])",
                                       (unknown,)).fetchall())
            if not deleting and len(stored) < len(unknown):
                missing = [memory_id for memory_id in unknown if memory_id not in stored]
                raise StorageError(f"the {db} of memories {missing[:5]} came without their namespace (no catalog row "
                                   "in the same write, none stored): nothing of this call was stored")
            keyed = [(ns if ns is not None else stored.get(memory_id), memory_id, value)
                     for ns, memory_id, value in keyed]
            keyed = [item for item in keyed if item[0] is not None]  # deletes of absent memories
        if not keyed:
            return
        if deleting:
            deleted = conn.execute(
                f"DELETE FROM {table} WHERE (ns_id, memory_id) IN "
                "(SELECT * FROM unnest(%s::integer[], %s::text[])) RETURNING ns_id",
                ([ns for ns, _, _ in keyed], [memory_id for _, memory_id, _ in keyed])).fetchall()
            if table == "tm_rows":
                for (ns,) in deleted:
                    counted[ns] = counted.get(ns, 0) - 1
            return
        puts = _last_per_key(keyed, 2)
        if table == "tm_rows":
            self._put_rows(conn, puts, adding, counted, recorded)
            return
        # Only memories that have a catalog row (written first, above): an update another writer's
        # delete overtook does not bring back half a memory.
        conn.execute(
            f"INSERT INTO {table} (ns_id, memory_id, value) "
            "SELECT n.* FROM unnest(%s::integer[], %s::text[], %s::bytea[]) AS n(ns_id, memory_id, value) "
            "WHERE EXISTS (SELECT 1 FROM tm_rows r WHERE r.ns_id = n.ns_id AND r.memory_id = n.memory_id) "
            "ON CONFLICT (ns_id, memory_id) DO UPDATE SET value = EXCLUDED.value",
            ([ns for ns, _, _ in puts], [memory_id for _, memory_id, _ in puts], [value for _, _, value in puts]))

    def _put_rows(self, conn: psycopg.Connection, puts: list[tuple[Any, ...]], adding: set[int],
                  counted: dict[int, int], recorded: dict[str, bytes]) -> None:
        """Catalog rows: new ones only in a write that adds memories to that namespace (its count
        op is positive); elsewhere (updates, statistics flushes) existing rows only. A row never
        replaces one of a later memory version: a writer's stale flush cannot undo another's update.
        An update (its record is in the write) must take the stored version one step on: two
        processes that updated the same version at once would otherwise both be acknowledged with
        the same version, the later write silently undoing the earlier (ConcurrentUpdateError)."""
        versions = [unpack_row(row_key(ns, memory_id), value)[8] for ns, memory_id, value in puts]
        inserts = [i for i, (ns, _, _) in enumerate(puts) if ns in adding]
        changes = [i for i, (ns, memory_id, _) in enumerate(puts) if ns not in adding and memory_id in recorded]
        updates = [i for i, (ns, memory_id, _) in enumerate(puts) if ns not in adding and memory_id not in recorded]

        def columns(chosen: list[int]) -> tuple[list[Any], ...]:
            return ([puts[i][0] for i in chosen], [puts[i][1] for i in chosen], [puts[i][2] for i in chosen],
                    [versions[i] for i in chosen])

        if inserts:
            inserted = conn.execute(
                "INSERT INTO tm_rows (ns_id, memory_id, value, version) "
                "SELECT * FROM unnest(%s::integer[], %s::text[], %s::bytea[], %s::integer[]) "
                "ON CONFLICT (ns_id, memory_id) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version "
                "WHERE tm_rows.version <= EXCLUDED.version "
                "RETURNING ns_id, (xmax = 0) AS inserted",  # xmax 0: a new row, not an updated one
                columns(inserts)).fetchall()
            for ns, new in inserted:
                if new:
                    counted[ns] = counted.get(ns, 0) + 1
        if updates:
            conn.execute(
                "UPDATE tm_rows AS r SET value = n.value, version = n.version "
                "FROM unnest(%s::integer[], %s::text[], %s::bytea[], %s::integer[]) AS n(ns_id, memory_id, value, "
                "version) WHERE r.ns_id = n.ns_id AND r.memory_id = n.memory_id AND r.version <= n.version",
                columns(updates))
        if changes:
            self._put_changed_rows(conn, (*columns(changes), [recorded[puts[i][1]] for i in changes]))

    def _put_changed_rows(self, conn: psycopg.Connection, columns: tuple[list[Any], ...]) -> None:
        """Rows of updated memories (columns: ns ids, memory ids, rows, versions, records): each
        must be one version past the stored row, or be that row with that record already (this
        same write retried after its commit went unacknowledged; records go after rows). The
        namespaces' rows are locked (_lock_namespaces), so no other writer's update can come
        between this check and the commit. A row that is gone was deleted by another writer,
        which a late update does not undo (the record is then left out too)."""
        applied = {memory_id for (memory_id,) in conn.execute(
            "UPDATE tm_rows AS r SET value = n.value, version = n.version "
            "FROM unnest(%s::integer[], %s::text[], %s::bytea[], %s::integer[], %s::bytea[]) "
            "AS n(ns_id, memory_id, value, version, record) WHERE r.ns_id = n.ns_id AND r.memory_id = n.memory_id "
            "AND (r.version = n.version - 1 OR (r.version = n.version AND r.value = n.value AND EXISTS "
            "(SELECT 1 FROM tm_records t WHERE t.ns_id = r.ns_id AND t.memory_id = r.memory_id "
            "AND t.value = n.record))) RETURNING r.memory_id", columns).fetchall()}
        wanted = {memory_id: (ns, version) for ns, memory_id, _, version, _ in zip(*columns)
                  if memory_id not in applied}
        if not wanted:
            return
        stored = conn.execute("SELECT memory_id, version FROM tm_rows WHERE (ns_id, memory_id) IN "
                              "(SELECT * FROM unnest(%s::integer[], %s::text[])) ORDER BY memory_id",
                              ([ns for ns, _ in wanted.values()], list(wanted))).fetchall()
        if stored:
            memory_id, version = stored[0]
            raise ConcurrentUpdateError(
                f"memory {memory_id!r} is at version {version} in {self._where()}: another process updated it "
                f"since this one read it (this update would have made version {wanted[memory_id][1]}); nothing "
                "of this call was stored: read the memory again and retry")

    @staticmethod
    def _apply_stamps(conn: psycopg.Connection, ops: list[Op]) -> dict[int, int]:
        """Stamp ops (cold_ops.stamp_op), in order: each put numbered with its namespace's next
        change_seq (the namespace row is locked by this transaction), its ancestry derived from the
        row it replaces; a None value drops the row. Returns each namespace's last change_seq."""
        last: dict[int, int] = {}
        by_ns: dict[int, list[tuple[str, bytes | None]]] = {}
        for _, key, value in ops:
            by_ns.setdefault(NS_ID.unpack(key[:4])[0], []).append((key[4:].decode("utf-8"), value))
        for ns, items in sorted(by_ns.items()):
            ids = sorted({memory_id for memory_id, _ in items})
            current: dict[str, StoredStamp | None] = {
                memory_id: StoredStamp.unpack(bytes(value), memory_id) for memory_id, value in conn.execute(
                    "SELECT memory_id, value FROM tm_stamps WHERE ns_id = %s AND memory_id = ANY(%s::text[])",
                    (ns, ids)).fetchall()}
            asked: list[tuple[str, list[Any] | None]] = []  # checked in order, against what is stored
            following = dict(current)
            for memory_id, value in items:
                fields = stamp_fields(following.get(memory_id), row_key(ns, memory_id), value)
                asked.append((memory_id, fields))
                following[memory_id] = None if fields is None else stamped(following.get(memory_id), fields, 0)
            puts = sum(fields is not None for _, fields in asked)
            seq = 0
            if puts:
                found = conn.execute("UPDATE tm_namespaces SET change_seq = change_seq + %s WHERE ns_id = %s "
                                     "RETURNING change_seq", (puts, ns)).fetchone()
                if found is None:
                    raise StorageError(f"namespace id {ns} is not in the store: nothing of this call was stored")
                seq = found[0] - puts
                last[ns] = found[0]
            changed: dict[str, StoredStamp | None] = {}
            for memory_id, fields in asked:
                if fields is None:
                    current[memory_id] = changed[memory_id] = None
                else:
                    seq += 1
                    current[memory_id] = changed[memory_id] = stamped(current.get(memory_id), fields, seq)
            dropped = [memory_id for memory_id, stamp in changed.items() if stamp is None]
            kept = [(memory_id, stamp) for memory_id, stamp in changed.items() if stamp is not None]
            if dropped:
                conn.execute("DELETE FROM tm_stamps WHERE ns_id = %s AND memory_id = ANY(%s::text[])", (ns, dropped))
            if kept:
                conn.execute("INSERT INTO tm_stamps (ns_id, memory_id, seq, value) "
                             "SELECT %s, * FROM unnest(%s::text[], %s::bigint[], %s::bytea[]) "
                             "ON CONFLICT (ns_id, memory_id) DO UPDATE SET seq = EXCLUDED.seq, value = EXCLUDED.value",
                             (ns, [m for m, _ in kept], [st.seq for _, st in kept], [st.pack() for _, st in kept]))
        return last

    @staticmethod
    def _apply_texts_run(conn: psycopg.Connection, deleting: bool, run: list[Op]) -> None:
        keyed = [(NS_ID.unpack(key[:4])[0], key[4:], value) for _, key, value in run]
        if deleting:
            conn.execute("DELETE FROM tm_texts WHERE (ns_id, digest) IN "
                         "(SELECT * FROM unnest(%s::integer[], %s::bytea[]))",
                         ([ns for ns, _, _ in keyed], [digest for _, digest, _ in keyed]))
            return
        puts = _last_per_key(keyed, 2)
        conn.execute("INSERT INTO tm_texts (ns_id, digest, memory_id) "
                     "SELECT * FROM unnest(%s::integer[], %s::bytea[], %s::text[]) "
                     "ON CONFLICT (ns_id, digest) DO UPDATE SET memory_id = EXCLUDED.memory_id",
                     ([ns for ns, _, _ in puts], [digest for _, digest, _ in puts],
                      [bytes(value or b"").decode("utf-8") for _, _, value in puts]))

    @staticmethod
    def text_claim_op(key: bytes, memory_id: str, holder: str | None) -> Op:
        return ("textclaims", key, msgpack.packb([memory_id, holder], use_bin_type=True))

    @classmethod
    def _apply_text_claims(cls, conn: psycopg.Connection, run: list[Op]) -> None:
        """Dedup entries of a deduplicating add, each refused (the whole write) if it names a
        stored memory other than the one the add found there (or this one: the same write
        retried): another process stored the text after the add looked it up. The namespaces'
        rows are locked, so no other add of the namespace comes between this check and the commit."""
        claims = [(NS_ID.unpack(key[:4])[0], key[4:], *msgpack.unpackb(value, raw=False)) for _, key, value in run]
        held = conn.execute("SELECT t.ns_id, t.digest, t.memory_id FROM tm_texts t JOIN tm_rows r "
                            "ON r.ns_id = t.ns_id AND r.memory_id = t.memory_id WHERE (t.ns_id, t.digest) IN "
                            "(SELECT * FROM unnest(%s::integer[], %s::bytea[]))",
                            ([ns for ns, *_ in claims], [digest for _, digest, *_ in claims])).fetchall()
        holders = {(ns, bytes(digest)): memory_id for ns, digest, memory_id in held}
        for ns, digest, memory_id, found in claims:
            holder = holders.get((ns, digest))
            if holder not in (None, found, memory_id):
                raise ConcurrentUpdateError(
                    f"another process stored the text of new memory {memory_id!r} as {holder!r} since this one "
                    "looked it up: nothing of this call was stored; add it again (the text is then a duplicate)")
        cls._apply_texts_run(conn, False, [("texts", NS_ID.pack(ns) + digest, memory_id.encode("utf-8"))
                                           for ns, digest, memory_id, _ in claims])

    @staticmethod
    def _apply_key_run(conn: psycopg.Connection, table: str, deleting: bool, run: list[Op]) -> None:
        if deleting:
            conn.execute(f"DELETE FROM {table} WHERE key = ANY(%s::bytea[])", ([key for _, key, _ in run],))
            return
        puts = _last_per_key([(key, value) for _, key, value in run], 1)
        conn.execute(f"INSERT INTO {table} (key, value) SELECT * FROM unnest(%s::bytea[], %s::bytea[]) "
                     "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                     ([key for key, _ in puts], [value for _, value in puts]))

    # -- several writers ---------------------------------------------------------------------

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Held by one process at a time among all that share the store (a session advisory lock on
        a connection of the pool, kept for the duration): what features that keep state of their
        own in the store (agent hubs) change it under. A connection that dies releases it."""
        if self._closed:
            raise StorageError(f"the PostgreSQL cold store at {self._where()} is closed")
        lock = "hashtext(current_schema() || '.tiered_memory.exclusive.' || %s)"
        try:
            with self.pool.connection() as conn:
                conn.execute(f"SELECT pg_advisory_lock({lock})", (name,))
                try:
                    yield
                finally:
                    try:
                        conn.execute(f"SELECT pg_advisory_unlock({lock})", (name,))
                    except psycopg.Error:  # the session is gone, and its locks with it
                        log.warning("releasing the lock %r on %s failed; its session ended", name, self._where())
        except PoolTimeout as err:
            raise StorageError(f"no connection to {self._where()} ({err}); check the server") from err
        except psycopg.OperationalError as err:
            raise StorageError(f"locking {name!r} on {self._where()} failed ({err}); retry") from err

    def _next_generation(self, conn: psycopg.Connection, touched: list[int] | None) -> int:
        """The store's next generation, and (delivered at commit) a notice naming the namespaces
        this write touched (None: all of them)."""
        names = "*" if touched is None else ",".join(map(str, sorted(touched)))
        if not names:
            return conn.execute("SELECT nextval('tm_store_generation')").fetchone()[0]
        if len(names) > 7_000:  # NOTIFY payloads stop at 8,000 bytes
            names = "*"
        return conn.execute("SELECT nextval('tm_store_generation'), pg_notify(%s, %s)",
                            (self._channel, f"{self._token} {names}")).fetchone()[0]

    def listen(self, callback: Callable[[list[int] | None], None]) -> None:
        """Call ``callback(ns_ids)`` from a thread of this store soon after another writer commits
        a change to those namespaces (None: possibly all of them). Notices are a hint for dropping
        stale copies early; changed_elsewhere stays the check a use relies on (a notice may come
        late). A listening connection that drops is opened again (backing off up to
        _LISTEN_RETRY_MAX_S), then ``callback(None)``: notices sent meanwhile were lost."""
        if self._listener is not None:
            raise ConfigError("this store already has a listener")
        try:
            conn = self._listening_connection()
        except psycopg.Error as err:
            raise StorageError(f"cannot listen for changes at {self._where()} ({err})") from err
        self._listener = threading.Thread(target=self._listen, args=(conn, callback), daemon=True,
                                          name="tiered-memory-pg-listener")
        self._listener.start()

    def _listening_connection(self) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn, autocommit=True)
        try:
            conn.execute(f'LISTEN "{self._channel}"')
        except BaseException:
            conn.close()
            raise
        return conn

    def _listen(self, conn: psycopg.Connection, callback: Callable[[list[int] | None], None]) -> None:
        def notify(ns_ids: list[int] | None) -> None:
            try:
                callback(ns_ids)
            except Exception:  # a failing callback must not end the notices
                log.exception("change notice callback failed")

        while not self._closed:
            try:
                for notice in conn.notifies(timeout=_LISTEN_POLL_S):
                    token, _, names = notice.payload.partition(" ")
                    if token != self._token:
                        notify(None if names == "*" else [int(name) for name in names.split(",")])
                continue
            except psycopg.Error as err:
                if self._closed:
                    break
                log.warning("change notices from %s stopped (%s); listening again (loaded namespaces are "
                            "checked on use meanwhile)", self._where(), err)
            conn.close()
            delay = _LISTEN_POLL_S
            while not self._closed:
                time.sleep(delay)
                try:
                    conn = self._listening_connection()
                except psycopg.Error:
                    delay = min(_LISTEN_RETRY_MAX_S, 2 * delay)
                    continue
                notify(None)  # what changed while no one listened is unknown
                break
        conn.close()

    def _saw_own(self, versions: dict[int, tuple[int, int, int]]) -> None:
        """After a commit: a namespace whose version moved by our write alone is still as we loaded it."""
        with self._seen_lock:
            for ns, (version, generation, change_seq) in versions.items():
                seen = self._seen.get(ns)
                if seen is not None and seen[0] == version - 1:
                    self._seen[ns] = (version, generation, change_seq)

    def changes_since_loaded(self, ns_id: int, limit: int) -> tuple[list[StoredVersion], tuple[int, int, int]] | None:
        """What another writer changed in this process's copy of a namespace: the memories stamped
        since the copy (their stored bytes; absent ones were deleted) and the namespace's state to
        mark the copy with once it has them (:meth:`refreshed`), from one snapshot. None when the
        copy cannot be brought up to date in place: never loaded, more than `limit` changes, or
        the int8 ranges were re-calibrated since (every code changed)."""
        with self._seen_lock:
            seen = self._seen.get(ns_id)
        if seen is None:
            return None
        query = self._VERSIONS.format(
            first="n.version, n.generation, n.change_seq, (SELECT value FROM tm_meta WHERE key = %(q)s), ",
            id="s.memory_id", ns="n.ns_id",
            source="tm_namespaces n LEFT JOIN tm_stamps s ON s.ns_id = n.ns_id AND s.seq > %(after)s ") + \
            "WHERE n.ns_id = %(ns)s ORDER BY s.seq LIMIT %(limit)s"
        with self._connection() as conn:
            found = conn.execute(query, {"q": _QUANTIZER_KEY, "after": seen[2], "ns": ns_id,
                                         "limit": limit + 1}).fetchall()
        if not found or len(found) > limit:
            return None
        version, generation, change_seq, quantizer = found[0][:4]
        if (None if quantizer is None else bytes(quantizer)) != self._quantizer_stored:
            return None
        changed = self._versions([row[4:] for row in found if row[4] is not None])
        return changed, (version, generation, change_seq)

    def refreshed(self, ns_id: int, state: tuple[int, int, int]) -> None:
        """The copy of a namespace now holds what changes_since_loaded gave with this state."""
        with self._seen_lock:
            self._seen[ns_id] = state

    def changed_elsewhere(self, ns_ids: list[int]) -> list[int]:
        """The namespaces among these, loaded through this store, that another writer changed
        since (one indexed read of their versions); a namespace never loaded is not listed."""
        with self._seen_lock:
            wanted = [ns for ns in ns_ids if ns in self._seen]
        if not wanted:
            return []
        with self._connection() as conn:
            found = dict(conn.execute("SELECT ns_id, version FROM tm_namespaces WHERE ns_id = ANY(%s::integer[])",
                                      (wanted,)).fetchall())
        with self._seen_lock:
            return [ns for ns in wanted if found.get(ns) != self._seen[ns][0]]

    # -- namespaces --------------------------------------------------------------------------

    def namespace_id(self, name: str, create: bool = False) -> int | None:
        ns_id = self._ns_ids.get(name)
        if ns_id is not None:
            return ns_id
        with self._connection() as conn:
            found = conn.execute("SELECT ns_id FROM tm_namespaces WHERE name = %s", (name,)).fetchone()
        if found is None and not create:
            return None
        if found is None:
            try:
                with self.pool.connection() as conn, conn.transaction():
                    # Another process may make the same namespace at once: the name is unique, the
                    # loser's insert does nothing and both read the winner's id.
                    conn.execute("INSERT INTO tm_namespaces (ns_id, name) VALUES (nextval('tm_namespace_ids'), %s) "
                                 "ON CONFLICT (name) DO NOTHING", (name,))
                    found = conn.execute("SELECT ns_id FROM tm_namespaces WHERE name = %s", (name,)).fetchone()
            except (psycopg.Error, PoolTimeout) as err:
                raise StorageError(f"creating namespace {name!r} in {self._where()} failed ({err}); nothing was "
                                   "stored") from err
        self._ns_ids[name] = found[0]
        return found[0]

    def namespace_info(self, ns_id: int) -> tuple[str, int, int]:
        with self._connection() as conn:
            found = conn.execute("SELECT name, count, generation FROM tm_namespaces WHERE ns_id = %s",
                                 (ns_id,)).fetchone()
        if found is None:
            raise StorageError(f"namespace id {ns_id} is not in the store: the store is damaged")
        with self._seen_lock:
            seen = self._seen.get(ns_id)
        # The generation of the copy this process loaded (the server's, unless another writer has
        # changed the namespace since): what a saved warm graph is stamped with must be what it holds.
        return found[0], found[1], found[2] if seen is None else seen[1]

    def namespace_counts(self) -> list[tuple[str, int]]:
        with self._connection() as conn:
            return [(name, count) for name, count in
                    conn.execute("SELECT name, count FROM tm_namespaces ORDER BY ns_id").fetchall()]

    # -- change stamps (offline sync) ----------------------------------------------------------

    # A memory's stamp row and stored bytes, joined from {source} ({first}: columns before them).
    _VERSIONS = ("SELECT {first}{id}, s.value, rec.value, r.value, c.value, o.value FROM {source} "
                 "LEFT JOIN tm_rows r ON r.ns_id = {ns} AND r.memory_id = {id} "
                 "LEFT JOIN tm_records rec ON rec.ns_id = r.ns_id AND rec.memory_id = r.memory_id "
                 "LEFT JOIN tm_codes c ON c.ns_id = r.ns_id AND c.memory_id = r.memory_id "
                 "LEFT JOIN tm_originals o ON o.ns_id = r.ns_id AND o.memory_id = r.memory_id ")

    def change_seqs(self) -> dict[int, int]:
        with self._connection() as conn:
            return dict(conn.execute("SELECT ns_id, change_seq FROM tm_namespaces WHERE change_seq > 0").fetchall())

    def changes_after(self, ns_id: int, after: int, limit: int) -> list[StoredVersion]:
        # One statement, one snapshot: the stamps and the bytes they describe agree.
        query = self._VERSIONS.format(first="", id="s.memory_id", ns="s.ns_id", source="tm_stamps s") + \
            "WHERE s.ns_id = %s AND s.seq > %s ORDER BY s.seq LIMIT %s"
        with self._connection() as conn:
            return self._versions(conn.execute(query, (ns_id, after, limit)).fetchall())

    def stored_versions(self, ns_id: int, memory_ids: list[str]) -> list[StoredVersion]:
        query = self._VERSIONS.format(
            first="", id="q.memory_id", ns="%(ns)s",
            source="unnest(%(ids)s::text[]) WITH ORDINALITY AS q(memory_id, i) "
                   "LEFT JOIN tm_stamps s ON s.ns_id = %(ns)s AND s.memory_id = q.memory_id") + "ORDER BY q.i"
        with self._connection() as conn:
            return self._versions(conn.execute(query, {"ns": ns_id, "ids": list(memory_ids)}).fetchall())

    @staticmethod
    def _versions(found: list[tuple[Any, ...]]) -> list[StoredVersion]:
        def raw(value: Any) -> bytes | None:
            return None if value is None else bytes(value)

        return [StoredVersion(memory_id, None if stamp is None else StoredStamp.unpack(bytes(stamp), memory_id),
                              raw(record), raw(row), raw(code), raw(original))
                for memory_id, stamp, record, row, code, original in found]

    def namespace_ids(self, ns_id: int) -> list[str]:
        with self._connection() as conn:
            return [memory_id for (memory_id,) in
                    conn.execute("SELECT memory_id FROM tm_rows WHERE ns_id = %s ORDER BY memory_id",
                                 (ns_id,)).fetchall()]

    def load_namespace(self, ns_id: int, count_hint: int = 0) -> NamespaceRows:
        """As the contract says; also records the namespace's version read with the rows as this
        store's loaded copy (changed_elsewhere compares with it): the engine's _load is its caller."""
        with self._connection() as conn:
            # One statement, one snapshot: the version read is the one these rows are at.
            found = conn.execute("SELECT n.version, n.generation, n.change_seq, r.memory_id, r.value, c.value "
                                 "FROM tm_namespaces n LEFT JOIN tm_rows r ON r.ns_id = n.ns_id "
                                 "LEFT JOIN tm_codes c ON c.ns_id = r.ns_id AND c.memory_id = r.memory_id "
                                 "WHERE n.ns_id = %s ORDER BY r.memory_id", (ns_id,)).fetchall()
        if found:
            with self._seen_lock:
                self._seen[ns_id] = (found[0][0], found[0][1], found[0][2])
        found = [row[3:] for row in found if row[3] is not None]
        ids = [memory_id for memory_id, _, _ in found]
        return namespace_rows(self.dimension, ids, [row_key(ns_id, memory_id) for memory_id in ids],
                              [bytes(data) for _, data, _ in found],
                              [None if code is None else bytes(code) for _, _, code in found], self._plain_code)

    # -- expiry (see tiered_memory/tiering/expiry.py) ---------------------------------------------

    def expired_rows(self, ns_id: int, now: float) -> tuple[list[str], list[bool], float]:
        with self._connection() as conn:
            found = conn.execute("SELECT memory_id, value FROM tm_rows WHERE ns_id = %s ORDER BY memory_id",
                                 (ns_id,)).fetchall()
        expired: list[str] = []
        sealed: list[bool] = []
        earliest = math.inf
        for memory_id, data in found:
            row = unpack_row(row_key(ns_id, memory_id), data)
            if row[10] <= now:
                expired.append(memory_id)
                sealed.append(row[9])
            elif row[10] < earliest:
                earliest = row[10]
        return expired, sealed, earliest

    def row_expires_at(self, ns_id: int, memory_id: str) -> float:
        with self._connection() as conn:
            found = conn.execute("SELECT value FROM tm_rows WHERE ns_id = %s AND memory_id = %s",
                                 (ns_id, memory_id)).fetchone()
        return math.inf if found is None else float(unpack_row(row_key(ns_id, memory_id), found[0])[10])

    def expiry_bounds(self) -> dict[int, float]:
        with self._connection() as conn:
            found = conn.execute("SELECT key, value FROM tm_meta WHERE key >= %s AND key < %s ORDER BY key",
                                 (EXPIRY_PREFIX, _prefix_end(EXPIRY_PREFIX))).fetchall()
        return dict(expiry_bound_of(bytes(key), bytes(value)) for key, value in found)

    def find_texts(self, keys: list[bytes | None]) -> list[str | None]:
        wanted = [key for key in keys if key is not None]
        if not wanted:
            return [None] * len(keys)
        with self._connection() as conn:
            found = conn.execute("SELECT ns_id, digest, memory_id FROM tm_texts WHERE (ns_id, digest) IN "
                                 "(SELECT * FROM unnest(%s::integer[], %s::bytea[]))",
                                 ([NS_ID.unpack(key[:4])[0] for key in wanted], [key[4:] for key in wanted])).fetchall()
        by_key = {NS_ID.pack(ns) + bytes(digest): memory_id for ns, digest, memory_id in found}
        return [None if key is None else by_key.get(key) for key in keys]

    # -- reading -----------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        return self.get_many([memory_id])[0]

    def get_many(self, memory_ids: Iterable[str]) -> list[Memory | None]:
        memory_ids = list(memory_ids)
        if not memory_ids:
            return []
        with self._connection() as conn:
            found = dict(conn.execute("SELECT memory_id, value FROM tm_records WHERE memory_id = ANY(%s::text[])",
                                      (list(set(memory_ids)),)).fetchall())
        return [None if (data := found.get(memory_id)) is None else unpack_record(data, self.sealer)
                for memory_id in memory_ids]

    def fetch(self, memory_ids: list[str], originals: bool) -> list[tuple[Memory | None, np.ndarray | None]]:
        want_originals = originals and self.originals_dtype is not None
        if not memory_ids:
            return []
        with self._connection() as conn:
            if want_originals:
                found = conn.execute("SELECT r.memory_id, r.value, o.value FROM tm_records r LEFT JOIN tm_originals o "
                                     "ON o.ns_id = r.ns_id AND o.memory_id = r.memory_id "
                                     "WHERE r.memory_id = ANY(%s::text[])", (list(set(memory_ids)),)).fetchall()
            else:
                found = conn.execute("SELECT memory_id, value, NULL FROM tm_records WHERE memory_id = ANY(%s::text[])",
                                     (list(set(memory_ids)),)).fetchall()
        by_id = {memory_id: (data, original) for memory_id, data, original in found}
        out: list[tuple[Memory | None, np.ndarray | None]] = []
        for memory_id in memory_ids:
            data, raw = by_id.get(memory_id, (None, None))
            memory = None if data is None else unpack_record(data, self.sealer)
            vector = None
            if raw is not None:
                vector = self._original_vector(memory_id, raw)
            out.append((memory, vector))
        return out

    def originals(self, memory_ids: list[str]) -> np.ndarray | None:
        if self.originals_dtype is None:
            return None
        with self._connection() as conn:
            found = dict(conn.execute("SELECT memory_id, value FROM tm_originals WHERE memory_id = ANY(%s::text[])",
                                      (list(set(memory_ids)),)).fetchall()) if memory_ids else {}
        out = np.empty((len(memory_ids), self.dimension), dtype=np.float32)
        for i, memory_id in enumerate(memory_ids):
            data = found.get(memory_id)
            if data is None:
                return None
            out[i] = self._original_vector(memory_id, data)
        return out

    def vector(self, memory_id: str) -> np.ndarray | None:
        original = self.originals([memory_id])
        if original is not None:
            return original[0]
        with self._connection() as conn:
            found = conn.execute("SELECT r.ns_id, c.value FROM tm_records r JOIN tm_codes c "
                                 "ON c.ns_id = r.ns_id AND c.memory_id = r.memory_id WHERE r.memory_id = %s",
                                 (memory_id,)).fetchone()
        if found is None:
            return None
        ns_id, code = found
        code = self._plain_vector_bytes(memory_id, "code", code, self.dimension, row_key(ns_id, memory_id))
        return self.quantizer.decode(np.frombuffer(code, dtype=np.int8).reshape(1, -1))[0]

    def meta_get(self, name: str, default: Any = None) -> Any:
        with self._connection() as conn:
            found = conn.execute("SELECT value FROM tm_meta WHERE key = %s", (name.encode(),)).fetchone()
        if found is None:
            return default
        try:
            return msgpack.unpackb(found[0], raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as err:
            raise StorageError(f"the store's {name!r} entry is not readable ({err!r}): the store is damaged; "
                               "restore it from a backup") from err

    def extra_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        end = _prefix_end(prefix)
        with self._connection() as conn:
            if end is None:
                found = conn.execute("SELECT key, value FROM tm_extra WHERE key >= %s ORDER BY key",
                                     (prefix,)).fetchall()
            else:
                found = conn.execute("SELECT key, value FROM tm_extra WHERE key >= %s AND key < %s ORDER BY key",
                                     (prefix, end)).fetchall()
        return iter([(bytes(key), bytes(value)) for key, value in found])

    def ids(self) -> Iterator[str]:
        with self._connection() as conn:
            return iter([memory_id for (memory_id,) in
                         conn.execute("SELECT memory_id FROM tm_records ORDER BY memory_id").fetchall()])

    def __len__(self) -> int:
        # The namespaces' counts, kept in step with the rows by every write: no scan of the records.
        with self._connection() as conn:
            return int(conn.execute("SELECT coalesce(sum(count), 0) FROM tm_namespaces").fetchone()[0])

    def __contains__(self, memory_id: object) -> bool:
        return isinstance(memory_id, str) and self.get_many([memory_id])[0] is not None

    def nbytes(self) -> int:
        with self._connection() as conn:
            return int(conn.execute("SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) "
                                    "FROM unnest(%s::text[]) AS t", (list(_TABLES),)).fetchone()[0])

    # -- re-calibration ----------------------------------------------------------------------

    def recode_all(self, encode: Any, decode_old: Any, then: Iterable[Op] = (), batch: int = 2048) -> None:
        """Every code re-encoded in one transaction, streamed in batches through a server-side
        cursor, with the `then` puts; every namespace's version moves, so that other processes
        reload their copies of the codes. A lost connection, serialization failure or deadlock is
        retried (``retries``) as write() does: the transaction rolled back, or, if its commit went
        through unacknowledged, the stored quantizer is the one `then` stores, which the retry sees."""
        then = list(then)
        meant = next((value for db, key, value in then if db == "meta" and key == _QUANTIZER_KEY), None)
        for attempt in range(1, self.retries + 1):
            try:
                with self.pool.connection() as conn:
                    if attempt > 1 and meant is not None and self._stored_quantizer(conn) == meant:
                        self._recoded(then, {})  # the lost attempt committed
                        return
                    with conn.transaction():
                        self._check_quantizer(conn, exclusive=True)
                        with conn.cursor(name="tm_recode") as cursor:
                            cursor.execute("SELECT c.ns_id, c.memory_id, c.value, o.value FROM tm_codes c "
                                           "LEFT JOIN tm_originals o ON o.ns_id = c.ns_id "
                                           "AND o.memory_id = c.memory_id ORDER BY c.ns_id, c.memory_id")
                            while chunk := cursor.fetchmany(batch):
                                self._recode_chunk(conn, chunk, encode, decode_old)
                        touched = conn.execute("UPDATE tm_namespaces SET version = version + 1 "
                                               "RETURNING ns_id, version, generation, change_seq").fetchall()
                        for op in then:
                            if op[0] not in _BY_KEY:
                                raise StorageError(f"recode_all commits store-level puts only, not {op[0]!r} ones: "
                                                   "nothing was changed")
                            self._apply_key_run(conn, _BY_KEY[op[0]], op[2] is None, [op])
                        self._next_generation(conn, None)
                    self._recoded(then, {ns: (version, generation, seq) for ns, version, generation, seq in touched})
                    return
            except _RETRIED as err:
                if attempt == self.retries:
                    raise StorageError(f"re-encoding the codes in {self._where()} failed after {attempt} attempts "
                                       f"({err}); nothing was changed (a retry is safe)") from err
                log.warning("re-encoding the codes in %s failed (%s), retrying (%d of %d)", self._where(), err,
                            attempt, self.retries)
            except psycopg.Error as err:
                raise StorageError(f"re-encoding the codes in {self._where()} failed ({err}); "
                                   "nothing was changed") from err
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _recoded(self, then: list[Op], versions: dict[int, tuple[int, int, int]]) -> None:
        """After recode_all committed: its own version moves, and the quantizer state it stored."""
        self._saw_own(versions)
        for db, key, value in then:
            if db == "meta" and key == _QUANTIZER_KEY:
                self._quantizer_stored = value

    def _recode_chunk(self, conn: psycopg.Connection, chunk: list[tuple[Any, ...]], encode: Any,
                      decode_old: Any) -> None:
        namespaces, memory_ids, values = [], [], []
        for ns_id, memory_id, stored, original in chunk:
            key = row_key(ns_id, memory_id)
            sealed = len(stored) != self.dimension
            if original is not None and self.originals_dtype is not None:
                vector = self._original_vector(memory_id, original).reshape(1, -1)
            else:
                raw = self._plain_vector_bytes(memory_id, "code", stored, self.dimension, key)
                vector = decode_old(np.frombuffer(raw, dtype=np.int8).reshape(1, -1))
            code = encode(vector)[0].tobytes()
            namespaces.append(ns_id)
            memory_ids.append(memory_id)
            values.append(self._vector_bytes(memory_id, sealed, "code", code, key))
        conn.execute("UPDATE tm_codes AS c SET value = n.value FROM unnest(%s::integer[], %s::text[], %s::bytea[]) "
                     "AS n(ns_id, memory_id, value) WHERE c.ns_id = n.ns_id AND c.memory_id = n.memory_id",
                     (namespaces, memory_ids, values))
