"""A LangGraph ``BaseStore`` over a TieredMemory: ``graph.compile(store=TieredStore("./agent_memory"))``.

Each LangGraph item is one memory of the engine (more only when several texts of it are embedded):

- namespace ``("users", "123")`` -> engine namespace ``"langgraph/users.123"``. LangGraph refuses
  labels with a period, so joining on ``.`` is reversible and two tuples never share a name.
- key -> memory id ``"lg" + blake2b(namespace, key)`` (engine ids are restricted; keys are not); the
  key itself is kept in the memory's metadata, so a put of an existing key updates that memory.
- value -> JSON text in the metadata, returned as a fresh dict by every read (verbatim: the JSON
  types round-trip exactly; tuples come back as lists, as from every JSON store).
- the first embedded text is the memory's text and vector; each further one (several ``fields``, or
  ``"list[*]"`` paths) is a memory of kind ``langgraph.vector`` in the same namespace, and search
  scores an item by its best vector, as LangGraph's stores do. Items with nothing to embed keep a
  fixed direction as a placeholder vector and are never returned by a query search.

Semantics follow LangGraph's persistent stores (PostgresStore): reads in a batch see the state
before the batch's writes, the last write to a key in a batch wins, ``created_at`` survives updates,
a listing without a query is newest ``updated_at`` first, a query search returns indexed items only
with their cosine similarity as ``score``. Filters follow InMemoryStore's matching (exact values,
nested dicts, lists, ``$eq $ne $gt $gte $lt $lte``), except that an order comparison between a
number and something else is false instead of an error.

TTL is the engine's expiry (``Memory.expires_at``): a put with a ``ttl`` (or under TTLConfig's
``default_ttl``) gives the item's memory and its ``langgraph.vector`` memories ``ttl_s`` of that many
minutes, a put without one makes them never expire (also under ``MemoryConfig.default_ttl_s``), and a
re-put replaces the expiry. The item's metadata keeps its ``ttl`` in minutes, which a read with
``refresh_ttl`` renews with one ``extend_many`` over the item and its vectors. The engine hides an
expired memory from every read at once and ``maintain()`` deletes it durably; ``sweep_ttl()`` is that
sweep. So expired items are always omitted, as with ``TTLConfig(omit_expired=True)``, and
``omit_expired=False`` (reads may return expired items until the sweep) cannot be honoured. Asked for
explicitly, it warns at construction instead of raising: under LangGraph's TTL a sweep may run at any
time, so no caller can count on reading an expired item, and a TTLConfig written for another store
should still open. Left out (LangGraph's default is False too), nothing was asked and nothing is said.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

try:
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        IndexConfig,
        InvalidNamespaceError,
        Item,
        ListNamespacesOp,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        TTLConfig,
        ensure_embeddings,
        get_text_at_path,
        tokenize_path,
        validate_op_namespace,
    )
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("tiered_memory.integrations.langgraph needs LangGraph: "
                      "pip install 'tiered-memory[langgraph]'") from err

from tiered_memory.engine import MAX_K, TieredMemory
from tiered_memory.errors import (
    ConfigError,
    InvalidFilterError,
    InvalidInputError,
    MemoryNotFoundError,
    StorageError,
    short_repr,
)
from tiered_memory.records import Memory

__all__ = ["ITEM_KIND", "UNINDEXED_KIND", "VECTOR_KIND", "StoreNamespaceError", "TieredStore"]

log = logging.getLogger(__name__)

ITEM_KIND = "langgraph.item"  # an item whose first embedded text is this memory's text and vector
UNINDEXED_KIND = "langgraph.unindexed"  # an item with nothing embedded (index=False, or no text found)
VECTOR_KIND = "langgraph.vector"  # the second and later embedded texts of an item
ITEM_KINDS = (ITEM_KIND, UNINDEXED_KIND)
SEARCHED_KINDS = [ITEM_KIND, VECTOR_KIND]

# Engine namespaces are LMDB keys: at most 256 characters and 480 UTF-8 bytes (records.check_label).
MAX_NAMESPACE_CHARS = 256
MAX_NAMESPACE_BYTES = 480
MAX_KEY_CHARS = 4096  # keys live in the metadata beside the value; far above any real key
FILTER_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
MAX_FILTER_DEPTH = 32
DEFAULT_SWEEP_MINUTES = 5.0  # LangGraph's stores sweep every 5 minutes when no interval is given


class StoreNamespaceError(InvalidNamespaceError, InvalidInputError):
    """A namespace this store cannot hold: too long once encoded, or not encodable as UTF-8.

    Both LangGraph's ``InvalidNamespaceError`` and a ``TieredMemoryError`` (and ``ValueError``)."""


# -- encodings ---------------------------------------------------------------------------------

def item_id(engine_namespace: str, key: str) -> str:
    """The memory id of a key: ids are store-wide, so the namespace is part of the digest (no label
    holds a NUL, so namespace + NUL + key is unambiguous)."""
    data = engine_namespace.encode("utf-8") + b"\0" + key.encode("utf-8")
    return "lg" + hashlib.blake2b(data, digest_size=16).hexdigest()


def vector_id(item: str, slot: int) -> str:
    """The memory holding an item's embedded text number `slot` (slot 0 is the item itself)."""
    return f"{item}.{slot}"


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def to_datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def placeholder_vector(memory_id: str, dimension: int) -> np.ndarray:
    """The vector of an item with nothing embedded (the engine gives every memory one).

    Near the all-equal direction, so its coordinates sit inside every dimension's usual range and
    never stretch the int8 calibration; jittered per id, so thousands of them are not duplicates in
    an hnswlib graph. Query searches never return these (their kind is not searched)."""
    rng = np.random.default_rng(int(memory_id[2:18], 16))
    vector = np.full(dimension, 1.0 / math.sqrt(dimension)) + 0.02 * rng.standard_normal(dimension)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


# -- filters (InMemoryStore's matching, checked before any read) --------------------------------

def check_filter(spec: object, depth: int = 0) -> None:
    if depth > MAX_FILTER_DEPTH:
        raise InvalidFilterError(f"filter is nested more than {MAX_FILTER_DEPTH} levels deep; flatten it")
    if isinstance(spec, Mapping):
        for name in spec:
            if not isinstance(name, str):
                raise InvalidFilterError(f"filter keys are field names (str), got {short_repr(name)}")
        if any(name.startswith("$") for name in spec):
            for name, operand in spec.items():
                if name not in FILTER_OPERATORS:
                    raise InvalidFilterError(f"Unsupported operator: {name!r}; "
                                             f"use one of {', '.join(FILTER_OPERATORS)}")
                if name in ("$gt", "$gte", "$lt", "$lte") and (
                        isinstance(operand, bool) or not isinstance(operand, (int, float, str))):
                    raise InvalidFilterError(f"{name} compares with a number or a str, got {short_repr(operand)}")
            return
        for operand in spec.values():
            check_filter(operand, depth + 1)
    elif isinstance(spec, (list, tuple)):
        for operand in spec:
            check_filter(operand, depth + 1)


def matches(value: Any, spec: Any) -> bool:
    """Whether a stored value matches a filter value (InMemoryStore's _compare_values)."""
    if isinstance(spec, Mapping):
        if any(name.startswith("$") for name in spec):
            return all(_apply_operator(value, name, operand) for name, operand in spec.items())
        if not isinstance(value, Mapping):
            return False
        return all(matches(value.get(name), operand) for name, operand in spec.items())
    if isinstance(spec, (list, tuple)):
        return isinstance(value, (list, tuple)) and len(value) == len(spec) and \
            all(matches(v, s) for v, s in zip(value, spec))
    return bool(value == spec)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b,
}


def _apply_operator(value: Any, operator: str, operand: Any) -> bool:
    if operator == "$eq":
        return bool(value == operand)
    if operator == "$ne":
        return bool(value != operand)
    test = _ORDER[operator]
    if isinstance(operand, str):
        return isinstance(value, str) and test(value, operand)
    # InMemoryStore compares float(value) with float(operand) (booleans count as 0 and 1); a
    # missing or non-numeric value does not match, as in the SQL stores, instead of raising.
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return test(float(value), float(operand))
    return False


def _filter_passes(value: Mapping[str, Any], spec: Mapping[str, Any] | None) -> bool:
    return spec is None or all(matches(value.get(name), operand) for name, operand in spec.items())


# -- checked operations -------------------------------------------------------------------------

@dataclass
class _Put:
    namespace: tuple[str, ...]
    engine_namespace: str
    key: str
    id: str
    value_json: str | None  # None deletes
    texts: list[str] = field(default_factory=list)
    ttl_minutes: float | None = None


@dataclass
class _Checked:
    reads: list[tuple[int, Op, str | None]]  # (position, op, engine namespace of a GetOp)
    puts: list[_Put]
    queries: list[str]
    count: int


@dataclass
class _Write:
    """What one put changes, decided under the write lock from the records as they are."""

    put: _Put
    record: Memory | None
    metadata: dict[str, Any] = field(default_factory=dict)  # the item's, for a put that writes
    slot_texts: list[str | None] = field(default_factory=list)  # current text of slots 1..; None: absent
    slot_expiries: list[float | None] = field(default_factory=list)  # their expires_at (None: never)
    extra_slots: int = 0  # existing slots beyond the new texts, to delete


class TieredStore(BaseStore):
    """LangGraph's ``BaseStore`` (get/put/delete/search/list_namespaces, sync and async, TTL) over a
    :class:`~tiered_memory.TieredMemory`.

    ``memory``: an open TieredMemory (the caller closes it) or a directory, opened here with
    ``open_options`` and closed by :meth:`close`. ``index``: LangGraph's ``IndexConfig``; by default
    every item is embedded whole (``fields=["$"]``) with the store's own encoder; ``embed=`` brings
    another embedding (its ``dims`` must be the store's dimension); ``index=False`` keeps a plain
    key-value store. ``ttl``: LangGraph's ``TTLConfig`` (minutes), kept as the engine's expiry:
    expired items are gone for every read at once (``omit_expired=False`` cannot be honoured: it
    warns) and deleted from disk by :meth:`sweep_ttl`, by the thread :meth:`start_ttl_sweeper`
    starts, or by the engine's own maintenance. ``namespace_prefix`` names
    the engine namespaces this store owns, so one TieredMemory can hold several stores and other
    memories beside them.
    """

    supports_ttl = True

    def __init__(
        self,
        memory: TieredMemory | str | os.PathLike[str],
        *,
        index: IndexConfig | Literal[False] | None = None,
        ttl: TTLConfig | None = None,
        namespace_prefix: str = "langgraph/",
        **open_options: Any,
    ) -> None:
        if isinstance(memory, TieredMemory):
            if open_options:
                raise ConfigError(f"options {sorted(open_options)} open a store; pass them to TieredMemory instead")
            self.memory, self._owns_memory = memory, False
        else:
            self.memory, self._owns_memory = TieredMemory(memory, **open_options), True
        try:
            self._configure(index, ttl, namespace_prefix)
        except BaseException:
            if self._owns_memory:
                self.memory.close()
            raise
        self._write_lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._sweeper_stop = threading.Event()
        self.memory.on_close(self.stop_ttl_sweeper)  # a sweeper must not outlive the store it sweeps

    def _configure(self, index: Any, ttl: Any, namespace_prefix: Any) -> None:
        if not isinstance(namespace_prefix, str) or not namespace_prefix or "\0" in namespace_prefix or \
                len(namespace_prefix.encode("utf-8")) > 64:
            raise ConfigError(f"namespace_prefix must be a str of 1 to 64 UTF-8 bytes without NUL, "
                              f"got {short_repr(namespace_prefix)}")
        self.namespace_prefix = namespace_prefix
        self._names: dict[tuple[str, ...], str] = {}
        if ttl is not None and not isinstance(ttl, Mapping):
            raise ConfigError(f"ttl must be a TTLConfig dict, got {short_repr(ttl)}")
        self.ttl_config: TTLConfig | None = dict(ttl) if ttl is not None else None  # type: ignore[assignment]
        if self.ttl_config is not None:
            default = self.ttl_config.get("default_ttl")
            if default is not None:
                _check_ttl(default)
            interval = self.ttl_config.get("sweep_interval_minutes")
            if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))
                                         or not interval > 0):
                raise ConfigError(f"sweep_interval_minutes must be a positive number, got {short_repr(interval)}")
            if self.ttl_config.get("omit_expired", True) is False:
                # Asked for explicitly (left out, LangGraph's default is the same False, but nothing
                # was asked): say once, here, why expired items never come back before the sweep.
                warnings.warn("TieredStore always omits expired items: the engine hides a memory from every "
                              "read once it expires, so TTLConfig(omit_expired=False) cannot return expired "
                              "items until the sweep; reads behave as if the sweep had just run. Drop "
                              "omit_expired from the TTLConfig to silence this.", UserWarning, stacklevel=3)
        self.embeddings: Any = None  # a LangChain Embeddings when index["embed"] is given
        self.index_config: IndexConfig | None = None
        self._fields: list[tuple[str, str | list[str]]] = []
        if index is False:
            return
        if index is not None and not isinstance(index, Mapping):
            raise ConfigError(f"index must be an IndexConfig dict or False, got {short_repr(index)}")
        config = dict(index or {})
        if config.get("embed") is not None:
            self.embeddings = ensure_embeddings(config["embed"])
        elif self.memory.encoder is None:
            if index is None:
                return  # a store without an encoder and no embed=: a plain key-value store
            raise ConfigError("index= without embed= needs a TieredMemory with an encoder (this one has "
                              "encoder=None); pass embed= or open the store with an encoder")
        dims = config.get("dims")
        if dims is not None and dims != self.memory.dimension:
            raise ConfigError(f"index dims={dims!r} but the store holds {self.memory.dimension}-d vectors; "
                              "use an embedding of the store's dimension, or a new directory")
        config["dims"] = self.memory.dimension
        fields = config.get("fields") or ["$"]
        self._fields = _tokenized_paths(fields, "index fields")
        config["fields"] = list(fields)
        self.index_config = config  # type: ignore[assignment]

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the TTL sweeper; close the TieredMemory if this store opened it."""
        self.stop_ttl_sweeper()
        self.memory.cancel_on_close(self.stop_ttl_sweeper)
        if self._owns_memory:
            self.memory.close()

    def __enter__(self) -> TieredStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the two entry points LangGraph calls ------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run operations: every op is checked first (bad input raises and nothing is read or
        written), then reads (get, search, list_namespaces) see the state before the puts."""
        if isinstance(ops, (list, tuple)) and len(ops) == 1 and type(ops[0]) is GetOp:
            return [self._get_one(ops[0])]  # BaseStore.get's batch: the hot path, without the planning
        checked = self._check_ops(ops)
        queries = {text: self._query_vector(text) for text in checked.queries}
        results = self._read(checked, queries)
        vectors: dict[str, np.ndarray] = {}
        while missing := self._write(checked.puts, vectors):
            vectors.update(zip(missing, self._embed(missing)))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`batch` for asyncio: engine calls run in a worker thread, an async ``embed`` is awaited."""
        checked = self._check_ops(ops)
        queries = {text: await self._aquery_vector(text) for text in checked.queries}
        results = await asyncio.to_thread(self._read, checked, queries)
        vectors: dict[str, np.ndarray] = {}
        while missing := await asyncio.to_thread(self._write, checked.puts, vectors):
            vectors.update(zip(missing, await self._aembed(missing)))
        return results

    # -- checking ----------------------------------------------------------------------------

    def _get_one(self, op: GetOp) -> Item | None:
        _check_tuple(op.namespace)
        validate_op_namespace(op)
        _check_key(op.key)
        _check_flag(op.refresh_ttl, "refresh_ttl")
        refresh: dict[str, str] = {}
        item = self._get(op, self._engine_namespace(op.namespace), refresh)
        if refresh:
            self._refresh_ttl(refresh)
        return item

    def _engine_namespace(self, namespace: tuple[str, ...]) -> str:
        """The engine namespace of a (validated) LangGraph namespace; recent ones are remembered,
        since an agent reads and writes a handful of namespaces over and over."""
        name = self._names.get(namespace)
        if name is not None:
            return name
        name = self._encode_namespace(namespace)
        if len(self._names) >= 4096:
            self._names.clear()
        self._names[namespace] = name
        return name

    def _encode_namespace(self, namespace: tuple[str, ...]) -> str:
        name = self.namespace_prefix + ".".join(namespace)
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError as err:
            raise StoreNamespaceError(f"namespace {short_repr(namespace)} is not encodable as UTF-8 "
                                      "(a lone surrogate?); use valid text") from err
        if len(name) > MAX_NAMESPACE_CHARS or size > MAX_NAMESPACE_BYTES:
            room = MAX_NAMESPACE_BYTES - len(self.namespace_prefix.encode("utf-8"))
            raise StoreNamespaceError(
                f"namespace {short_repr(namespace)} takes {size} UTF-8 bytes ({len(name)} characters) joined "
                f"with '.' after the prefix {self.namespace_prefix!r}; this store holds namespaces of at most "
                f"{room} bytes and {MAX_NAMESPACE_CHARS - len(self.namespace_prefix)} characters: "
                "use shorter labels")
        return name

    def _namespace_of(self, engine_namespace: str) -> tuple[str, ...] | None:
        if not engine_namespace.startswith(self.namespace_prefix):
            return None
        rest = engine_namespace[len(self.namespace_prefix):]
        return tuple(rest.split(".")) if rest else None

    def _check_ops(self, ops: Iterable[Op]) -> _Checked:
        reads: list[tuple[int, Op, str | None]] = []
        puts: dict[tuple[tuple[str, ...], str], _Put] = {}  # last write to a key wins
        queries: list[str] = []
        position = -1
        for position, op in enumerate(ops):
            if not isinstance(op, (GetOp, SearchOp, ListNamespacesOp, PutOp)):
                raise InvalidInputError(f"Unknown operation type: {type(op).__name__}; "
                                        "pass GetOp, SearchOp, ListNamespacesOp or PutOp")
            if isinstance(op, (GetOp, PutOp)):
                _check_tuple(op.namespace)
            elif isinstance(op, SearchOp):
                _check_tuple(op.namespace_prefix)
            elif op.match_conditions is not None:
                _check_conditions(op.match_conditions)
            validate_op_namespace(op)  # LangGraph's label rules: str, not empty, no '.', no NUL
            if isinstance(op, GetOp):
                _check_key(op.key)
                _check_flag(op.refresh_ttl, "refresh_ttl")
                reads.append((position, op, self._engine_namespace(op.namespace)))
            elif isinstance(op, SearchOp):
                prefix = op.namespace_prefix
                if prefix:
                    self._engine_namespace(prefix)
                if op.filter is not None:
                    if not isinstance(op.filter, Mapping):
                        raise InvalidFilterError(f"filter must be a dict such as {{'color': 'red'}}, "
                                                 f"got {short_repr(op.filter)}")
                    check_filter(op.filter)
                _check_count(op.limit, "limit")
                _check_count(op.offset, "offset")
                _check_flag(op.refresh_ttl, "refresh_ttl")
                if op.query is not None and not isinstance(op.query, str):
                    raise InvalidInputError(f"query must be a str or None, got {short_repr(op.query)}")
                if op.query and self.index_config is not None and op.query not in queries:
                    queries.append(op.query)
                reads.append((position, op, None))
            elif isinstance(op, ListNamespacesOp):
                if op.max_depth is not None and (isinstance(op.max_depth, bool) or
                                                 not isinstance(op.max_depth, int) or op.max_depth < 1):
                    raise InvalidInputError(f"max_depth must be None or an int >= 1, got {short_repr(op.max_depth)}")
                _check_count(op.limit, "limit")
                _check_count(op.offset, "offset")
                reads.append((position, op, None))
            else:
                put = self._check_put(op)
                puts.pop((put.namespace, put.key), None)
                puts[(put.namespace, put.key)] = put
        return _Checked(reads, list(puts.values()), queries, position + 1)

    def _check_put(self, op: PutOp) -> _Put:
        namespace = op.namespace
        if not namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        engine_namespace = self._engine_namespace(namespace)
        _check_key(op.key)
        put = _Put(namespace, engine_namespace, op.key, item_id(engine_namespace, op.key), None)
        if op.value is None:
            return put
        if not isinstance(op.value, Mapping):
            raise InvalidInputError(f"a value is a dict of JSON-serializable data, got {type(op.value).__name__}")
        value = dict(op.value)
        _check_json_keys(value)
        try:
            put.value_json = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            size = len(put.value_json.encode("utf-8"))
        except (TypeError, ValueError, RecursionError) as err:
            raise InvalidInputError(f"value for key {short_repr(op.key)} is not JSON-serializable ({err}); "
                                    "store str, int, float (finite), bool, None, lists and dicts") from err
        if op.ttl is not None:
            put.ttl_minutes = _check_ttl(op.ttl)
        if op.index is not False and self.index_config is not None:
            paths = self._fields if op.index is None else _tokenized_paths(op.index, "index")
            limit = self.memory.config.max_text_chars
            for path, tokens in paths:
                for text in get_text_at_path(value, tokens):
                    if not text.strip():
                        continue  # nothing to search for; LangGraph would embed the empty string
                    if len(text) > limit:
                        raise InvalidInputError(f"the text at {path!r} of key {short_repr(op.key)} has "
                                                f"{len(text):,} characters, more than max_text_chars={limit:,}; "
                                                "index a shorter field")
                    put.texts.append(text)
        # The metadata holds the key, the value's JSON and a 16-character digest per text; check its
        # size here, so that no put of the batch is written when one of them is too large.
        budget = self.memory.config.max_metadata_bytes
        needed = size + len(op.key.encode("utf-8")) + 20 * len(put.texts) + 256
        if needed > budget:
            raise InvalidInputError(f"value for key {short_repr(op.key)} takes {size:,} bytes as JSON; this store "
                                    f"keeps values up to about {budget - 256:,} bytes: raise "
                                    "MemoryConfig.max_metadata_bytes or store large payloads elsewhere and keep a "
                                    "reference here")
        return put

    # -- embedding -----------------------------------------------------------------------------

    def _query_vector(self, text: str) -> np.ndarray:
        if self.embeddings is None:
            return self.memory.encode_query(text)
        return np.asarray(self.embeddings.embed_query(text), dtype=np.float32)

    async def _aquery_vector(self, text: str) -> np.ndarray:
        if self.embeddings is None:
            return await asyncio.to_thread(self.memory.encode_query, text)
        return np.asarray(await self.embeddings.aembed_query(text), dtype=np.float32)

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.embeddings is None:
            return self.memory.encode(texts)
        return self._as_matrix(self.embeddings.embed_documents(texts), len(texts))

    async def _aembed(self, texts: list[str]) -> np.ndarray:
        if self.embeddings is None:
            return await asyncio.to_thread(self.memory.encode, texts)
        return self._as_matrix(await self.embeddings.aembed_documents(texts), len(texts))

    def _as_matrix(self, rows: Any, n: int) -> np.ndarray:
        matrix = np.asarray(rows, dtype=np.float32)
        if matrix.shape != (n, self.memory.dimension):
            raise ConfigError(f"the index's embed returned an array of shape {matrix.shape} for {n} texts; "
                              f"expected ({n}, {self.memory.dimension})")
        return matrix

    # -- reading -------------------------------------------------------------------------------

    def _read(self, checked: _Checked, queries: Mapping[str, np.ndarray]) -> list[Result]:
        results: list[Result] = [None] * checked.count
        refresh: dict[str, str] = {}  # item id -> engine namespace, of items read whose TTL restarts
        namespaces: list[str] | None = None
        for position, op, engine_namespace in checked.reads:
            if isinstance(op, GetOp):
                results[position] = self._get(op, str(engine_namespace), refresh)
                continue
            if namespaces is None:
                namespaces = self._own_namespaces()
            if isinstance(op, SearchOp):
                results[position] = self._search(op, namespaces, queries, refresh)
            else:
                results[position] = self._list_namespaces(op, namespaces)
        if refresh:
            self._refresh_ttl(refresh)
        return results

    def _own_namespaces(self) -> list[str]:
        return [name for name in self.memory.namespaces() if self._namespace_of(name) is not None]

    def _get(self, op: GetOp, engine_namespace: str, refresh: dict[str, str]) -> Item | None:
        memory_id = item_id(engine_namespace, op.key)
        try:
            memory = self.memory.get(memory_id, namespace=engine_namespace)
        except MemoryNotFoundError:
            return None
        if not self._is_item(memory, op.key):
            return None
        if op.refresh_ttl and memory.metadata.get("ttl") is not None:
            refresh[memory_id] = engine_namespace
        return Item(value=json.loads(memory.metadata["value"]), key=op.key, namespace=tuple(op.namespace),
                    created_at=to_datetime(memory.created_at), updated_at=to_datetime(memory.metadata["updated"]))

    @staticmethod
    def _is_item(memory: Memory, key: str | None = None) -> bool:
        return memory.kind in ITEM_KINDS and "value" in memory.metadata and \
            (key is None or memory.metadata.get("key") == key)

    def _matching_namespaces(self, prefix: tuple[str, ...], namespaces: list[str]) -> list[str]:
        size = len(prefix)
        return [name for name in namespaces if (self._namespace_of(name) or ())[:size] == tuple(prefix)]

    def _items(self, engine_namespace: str) -> list[Memory]:
        """Every item of one namespace (not counted as accesses)."""
        count = self.memory.count(engine_namespace)
        if not count:
            return []
        return [memory for memory in self.memory.list_memories(engine_namespace, limit=count)
                if self._is_item(memory)]

    def _search_item(self, memory: Memory, score: float | None) -> SearchItem:
        return SearchItem(namespace=self._namespace_of(memory.namespace) or (), key=memory.metadata["key"],
                          value=json.loads(memory.metadata["value"]), created_at=to_datetime(memory.created_at),
                          updated_at=to_datetime(memory.metadata["updated"]), score=score)

    def _search(self, op: SearchOp, namespaces: list[str], queries: Mapping[str, np.ndarray],
                refresh: dict[str, str]) -> list[SearchItem]:
        scope = self._matching_namespaces(op.namespace_prefix, namespaces)
        if not scope or op.limit == 0:
            return []
        spec = op.filter or None
        if op.query and self.index_config is not None:
            found = self._semantic(op, scope, queries[op.query], spec)
        else:
            listed = [memory for name in scope for memory in self._items(name)
                      if _filter_passes(json.loads(memory.metadata["value"]), spec)]
            listed.sort(key=lambda m: (-m.metadata["updated"], m.namespace, m.metadata["key"]))
            found = [(memory, None) for memory in listed[op.offset:op.offset + op.limit]]
        if op.refresh_ttl:
            for memory, _ in found:
                if memory.metadata.get("ttl") is not None:
                    refresh[memory.id] = memory.namespace
        return [self._search_item(memory, score) for memory, score in found]

    def _semantic(self, op: SearchOp, scope: list[str], query: np.ndarray,
                  spec: Mapping[str, Any] | None) -> list[tuple[Memory, float | None]]:
        """Items by their best vector's cosine, as the engine ranks them; a filter (evaluated on the
        values, which the engine's where= cannot see) becomes the set of ids the search may return."""
        allowed: set[str] | None = None
        if spec is not None:
            allowed = set()
            for name in scope:
                for memory in self._items(name):
                    if memory.kind != ITEM_KIND or not _filter_passes(json.loads(memory.metadata["value"]), spec):
                        continue
                    allowed.add(memory.id)
                    allowed.update(vector_id(memory.id, slot) for slot in range(1, len(memory.metadata["texts"])))
            if not allowed:
                return []
        needed = op.offset + op.limit
        k = min(MAX_K, max(2 * needed, needed + 10))
        while True:
            hits = self.memory.search(vector=query, namespace=scope, k=k, kinds=SEARCHED_KINDS, mode="dense",
                                      only_ids=allowed)
            best: dict[str, tuple[Memory, float]] = {}
            for hit in hits:  # best first: an item's first hit is its best vector (max pooling)
                memory = hit.memory
                owner = memory.id if memory.kind == ITEM_KIND else memory.id.rsplit(".", 1)[0]
                if owner in best:
                    continue
                item = memory if memory.kind == ITEM_KIND else self._owner_of(memory, owner)
                if item is not None and self._is_item(item):
                    best[owner] = (item, float(hit.score))
            if len(best) >= needed or len(hits) < k or k >= MAX_K:
                break
            k = min(MAX_K, 4 * k)  # items with several vectors filled the page: fetch deeper
        return list(best.values())[op.offset:needed]

    def _owner_of(self, memory: Memory, owner: str) -> Memory | None:
        """The item a vector memory belongs to, if that vector is still the item's (a put that
        stopped halfway leaves stale vectors, recognised by their text's digest)."""
        try:
            item = self.memory.get(owner, namespace=memory.namespace)
        except MemoryNotFoundError:
            return None
        slot = int(memory.id.rsplit(".", 1)[1])
        texts = item.metadata.get("texts", [])
        if item.kind != ITEM_KIND or slot >= len(texts) or texts[slot] != text_digest(memory.text):
            return None
        return item

    def _list_namespaces(self, op: ListNamespacesOp, namespaces: list[str]) -> list[tuple[str, ...]]:
        names = [self._namespace_of(name) for name in namespaces]
        found = [name for name, tup in zip(namespaces, names) if tup is not None and
                 all(_namespace_matches(condition[0], condition[1], tup) for condition in op.match_conditions or ())]
        tuples = [self._namespace_of(name) or () for name in found]
        if op.max_depth is not None:
            tuples = list({tup[:op.max_depth] for tup in tuples})
        return sorted(tuples)[op.offset:op.offset + op.limit]

    # -- writing ---------------------------------------------------------------------------------

    def _write(self, puts: list[_Put], vectors: dict[str, np.ndarray]) -> list[str]:
        """Apply the puts, or (writing nothing) return the texts still to embed.

        Decided under the write lock from the records as they are now, so a concurrent put of the
        same key cannot make this one reuse vectors of texts it no longer holds."""
        if not puts:
            return []
        with self._write_lock:
            plans = [self._plan(put) for put in puts]
            missing = list(dict.fromkeys(text for plan in plans for text in self._texts_to_embed(plan)
                                         if text not in vectors))
            if missing:
                return missing
            fresh: dict[str, list[tuple[str, str, str, dict[str, Any], np.ndarray, float, float]]] = {}
            for plan in plans:
                self._drop_expired(plan)
                if plan.put.value_json is None:
                    self._delete(plan.put.id, plan.put.engine_namespace, len(plan.slot_texts),
                                 item=plan.record is not None)
                elif plan.record is None and not any(text is not None for text in plan.slot_texts):
                    fresh.setdefault(plan.put.engine_namespace, []).extend(self._new_memories(plan, vectors))
                else:
                    self._update(plan, vectors)
            for engine_namespace, memories in fresh.items():
                ids, texts, kinds, metadata, rows, stamps, ttls = zip(*memories)
                self.memory.add_many(list(texts), namespace=engine_namespace, kind=list(kinds),
                                     metadata=list(metadata), vectors=np.stack(rows), ids=list(ids),
                                     created_at=list(stamps), ttl_s=list(ttls))
        return []

    def _plan(self, put: _Put) -> _Write:
        record = self.memory.record(put.id)
        if record is not None and (record.namespace != put.engine_namespace or not self._is_item(record, put.key)):
            raise StorageError(f"memory {put.id!r} is not the item {put.key!r} of {put.namespace!r}; "
                               "the store's namespace prefix is shared with other memories")
        plan = _Write(put, record)
        slot = 1
        while (current := self.memory.record(vector_id(put.id, slot))) is not None:
            plan.slot_texts.append(current.text)
            plan.slot_expiries.append(current.expires_at)
            slot += 1
        if put.value_json is None:
            return plan
        plan.metadata = {
            "key": put.key, "value": put.value_json, "texts": [text_digest(text) for text in put.texts],
            "updated": self.memory.clock(), "ttl": put.ttl_minutes,  # the expiry itself is the engine's
        }
        plan.extra_slots = max(0, len(plan.slot_texts) - max(len(put.texts) - 1, 0))
        return plan

    def _texts_to_embed(self, plan: _Write) -> list[str]:
        put = plan.put
        if put.value_json is None or not put.texts:
            return []
        wanted = []
        record = plan.record
        if record is None or record.kind != ITEM_KIND or record.text != put.texts[0]:
            wanted.append(put.texts[0])
        for slot, text in enumerate(put.texts[1:], start=1):
            current = plan.slot_texts[slot - 1] if slot - 1 < len(plan.slot_texts) else None
            if current != text:
                wanted.append(text)
        return wanted

    def _item_text_and_vector(self, plan: _Write,
                              vectors: Mapping[str, np.ndarray]) -> tuple[str, str, np.ndarray | None]:
        """The item memory's text, kind and vector (None when its text is unchanged and was not embedded)."""
        put = plan.put
        if put.texts:
            return put.texts[0], ITEM_KIND, vectors.get(put.texts[0])
        # An item with nothing embedded keeps its key as its text (never searched by query).
        return put.key if put.key.strip() else "(empty key)", UNINDEXED_KIND, \
            placeholder_vector(put.id, self.memory.dimension)

    def _new_memories(self, plan: _Write, vectors: Mapping[str, np.ndarray]) -> list[tuple[Any, ...]]:
        put = plan.put
        text, kind, vector = self._item_text_and_vector(plan, vectors)
        stamp = plan.metadata["updated"]  # a new item's created_at is its updated_at
        ttl = _ttl_seconds(put.ttl_minutes)
        memories = [(put.id, text, kind, plan.metadata, vector, stamp, ttl)]
        for slot, extra in enumerate(put.texts[1:], start=1):
            memories.append((vector_id(put.id, slot), extra, VECTOR_KIND, {"item": put.id}, vectors[extra], stamp,
                             ttl))
        return memories

    def _update(self, plan: _Write, vectors: Mapping[str, np.ndarray]) -> None:
        """Change an existing item: the item first (the value and the digests of its texts are what
        reads trust), then its further vectors, then drop the ones it no longer has, last first.

        A put replaces the expiry of the item and of every vector it keeps (LangGraph: the TTL
        restarts, and a put without one never expires); vectors are written after the item, so
        they never expire before it."""
        put, record = plan.put, plan.record
        namespace = put.engine_namespace
        ttl_s = _ttl_seconds(put.ttl_minutes)
        expiry: dict[str, Any] = {"expires_at": None} if ttl_s == math.inf else {"ttl_s": ttl_s}
        text, kind, vector = self._item_text_and_vector(plan, vectors)
        if record is None:  # vectors left by a put that stopped before its item was written
            self.memory.add(text, namespace=namespace, kind=kind, metadata=plan.metadata, vector=vector, id=put.id,
                            ttl_s=ttl_s)
        elif record.kind == kind and record.text == text:
            self.memory.update(put.id, metadata=plan.metadata, namespace=namespace, **expiry)
        else:
            self.memory.update(put.id, text=text, kind=kind, metadata=plan.metadata, vector=vector,
                               namespace=namespace, **expiry)
        added, extended = [], []
        for slot, extra in enumerate(put.texts[1:], start=1):
            memory_id = vector_id(put.id, slot)
            current = plan.slot_texts[slot - 1] if slot - 1 < len(plan.slot_texts) else None
            if current is None:
                added.append((memory_id, extra))
            elif current != extra:
                self.memory.update(memory_id, text=extra, vector=vectors[extra], namespace=namespace, **expiry)
            elif ttl_s == math.inf:
                if plan.slot_expiries[slot - 1] is not None:
                    self.memory.update(memory_id, expires_at=None, namespace=namespace)
            elif plan.slot_expiries[slot - 1] is None or plan.slot_expiries[slot - 1] > self.memory.clock() + ttl_s:
                self.memory.update(memory_id, ttl_s=ttl_s, namespace=namespace)  # shortened: extend never does
            else:
                extended.append(memory_id)
        if extended:  # the usual case, a TTL restarted: one transaction for all of them
            self.memory.extend_many(extended, ttl_s=ttl_s, namespace=namespace)
        if added:
            ids, texts = zip(*added)
            self.memory.add_many(list(texts), namespace=namespace, kind=VECTOR_KIND, metadata={"item": put.id},
                                 vectors=np.stack([vectors[text] for text in texts]), ids=list(ids), ttl_s=ttl_s)
        keep = max(len(put.texts) - 1, 0)
        for slot in range(len(plan.slot_texts), keep, -1):
            self.memory.delete(vector_id(put.id, slot), namespace=namespace)

    def _delete(self, memory_id: str, engine_namespace: str, slots: int, item: bool = True) -> None:
        """Vectors first, last first, then the item: a delete that stops halfway leaves an item
        with fewer vectors, never vectors without an item."""
        for slot in range(slots, 0, -1):
            self.memory.delete(vector_id(memory_id, slot), namespace=engine_namespace)
        if item:
            self.memory.delete(memory_id, namespace=engine_namespace)

    def _drop_expired(self, plan: _Write) -> None:
        """Delete what the plan could not see but the disk still holds: an expired item (reads skip
        it, but its id stays taken until the sweep) and every vector memory after the item's
        readable ones (expired, or stranded behind an expired one). The plan then holds for a
        new item, or for one whose vectors outlived it."""
        namespace = plan.put.engine_namespace
        slot = len(plan.slot_texts) + 1
        while self._delete_if_stored(vector_id(plan.put.id, slot), namespace):
            slot += 1
        if plan.record is None:
            self._delete_if_stored(plan.put.id, namespace)

    def _delete_if_stored(self, memory_id: str, engine_namespace: str) -> bool:
        try:
            self.memory.delete(memory_id, namespace=engine_namespace)
        except MemoryNotFoundError:
            return False
        return True

    # -- TTL ---------------------------------------------------------------------------------------

    def _refresh_ttl(self, items: Mapping[str, str]) -> None:
        """Restart the TTL of items just read (LangGraph: refresh_ttl on get and search): the item
        and its vector memories, ``ttl`` minutes from now, in one durable ``extend_many``.

        Each item is read again under the write lock, so a put since the read (another TTL, or none)
        is what counts; ``extend`` never shortens, so a refresh cannot undo that put either."""
        with self._write_lock:
            ids: list[str] = []
            ttls: list[float] = []
            for memory_id in items:
                record = self.memory.record(memory_id)
                if record is None or not self._is_item(record) or record.metadata.get("ttl") is None:
                    continue
                own = [memory_id] + [vector_id(memory_id, slot) for slot in range(1, len(record.metadata["texts"]))]
                ids += own
                ttls += [60.0 * record.metadata["ttl"]] * len(own)
            if not ids:
                return
            try:
                self.memory.extend_many(ids, ttl_s=ttls)
            except MemoryNotFoundError:
                # All or none: one memory expired since the read, or a vector a stopped put never
                # wrote. Extend the others one by one (whatever expired stays expired).
                for memory_id, ttl_s in zip(ids, ttls):
                    try:
                        self.memory.extend(memory_id, ttl_s=ttl_s)
                    except MemoryNotFoundError:
                        continue

    def sweep_ttl(self) -> int:
        """Delete expired memories from disk now (the engine's ``maintain()``, which sweeps every
        expired memory of the TieredMemory); returns how many it deleted: one per expired item
        plus one per further embedded text of it (its ``langgraph.vector`` memories).

        Reads never see expired items, swept or not: this frees their space and ids."""
        return self.memory.maintain().expired

    def start_ttl_sweeper(self, sweep_interval_minutes: float | None = None) -> concurrent.futures.Future[None]:
        """Sweep expired items every ``sweep_interval_minutes`` (else TTLConfig's, else 5) in a
        daemon thread, until :meth:`stop_ttl_sweeper`, :meth:`close` or the returned future's cancel."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.add_done_callback(lambda done: self._sweeper_stop.set() if done.cancelled() else None)
        if self.ttl_config is None:
            future.set_result(None)
            return future
        if self._sweeper is not None and self._sweeper.is_alive():
            return future
        interval = sweep_interval_minutes or self.ttl_config.get("sweep_interval_minutes") or DEFAULT_SWEEP_MINUTES
        self._sweeper_stop.clear()

        def sweep_loop() -> None:
            try:
                while not self._sweeper_stop.wait(60.0 * float(interval)):
                    try:
                        swept = self.sweep_ttl()
                        if swept:
                            log.info("TTL sweep deleted %d expired memories", swept)
                    except Exception:  # keep sweeping: one failed sweep must not stop expiry for good
                        if self.memory.closed:
                            break
                        log.exception("TTL sweep failed")
            finally:
                if not future.done():
                    future.set_result(None)

        self._sweeper = threading.Thread(target=sweep_loop, name="tiered-memory-ttl-sweeper", daemon=True)
        self._sweeper.start()
        return future

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the sweeper thread; returns whether it stopped within `timeout` seconds."""
        sweeper = self._sweeper
        if sweeper is None or not sweeper.is_alive():
            return True
        self._sweeper_stop.set()
        if sweeper is not threading.current_thread():
            sweeper.join(timeout)
        stopped = not sweeper.is_alive()
        if stopped:
            self._sweeper = None
        return stopped


# -- helpers -----------------------------------------------------------------------------------------

def _check_tuple(namespace: object) -> tuple[str, ...]:
    if not isinstance(namespace, tuple):
        raise InvalidNamespaceError(f"a namespace is a tuple of str labels, got {short_repr(namespace)}")
    return namespace


def _check_conditions(conditions: object) -> None:
    if not isinstance(conditions, (tuple, list)):
        raise InvalidInputError(f"match_conditions is a tuple of MatchCondition, got {short_repr(conditions)}")
    for condition in conditions:
        if not isinstance(condition, tuple) or len(condition) != 2:
            raise InvalidInputError(f"match_conditions holds MatchCondition values, got {short_repr(condition)}")
        if condition[0] not in ("prefix", "suffix"):
            raise InvalidInputError(f"Unsupported match type: {short_repr(condition[0])}; use 'prefix' or 'suffix'")
        if not isinstance(condition[1], tuple):
            raise InvalidNamespaceError(f"a match condition's path is a tuple of str, got {short_repr(condition[1])}")


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidInputError(f"a key is a str, got {short_repr(key)}")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidInputError(f"key {short_repr(key)} has {len(key):,} characters, more than {MAX_KEY_CHARS:,}; "
                                "use a shorter key")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(f"key {short_repr(key)} is not encodable as UTF-8 (a lone surrogate?)") from err
    return key


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True or False, got {short_repr(value)}")


def _check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"{name} must be an int >= 0, got {short_repr(value)}")


def _check_ttl(minutes: object) -> float:
    # > 0, as the engine's ttl_s: an item that expires as it is written is a delete (put None).
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or \
            not math.isfinite(float(minutes)) or minutes <= 0:
        raise InvalidInputError(f"ttl is a number of minutes > 0 (or None for no expiry), got {short_repr(minutes)}")
    return float(minutes)


def _ttl_seconds(minutes: float | None) -> float:
    """The engine's ttl_s of a LangGraph TTL: math.inf (never expire, whatever the TieredMemory's
    default_ttl_s) when the put has none, as LangGraph's stores do."""
    return math.inf if minutes is None else 60.0 * minutes


def _tokenized_paths(paths: object, what: str) -> list[tuple[str, str | list[str]]]:
    if isinstance(paths, str) or not isinstance(paths, Sequence) or \
            not all(isinstance(path, str) for path in paths):
        raise InvalidInputError(f"{what} takes a list of str paths such as ['text', 'items[*].content'], "
                                f"got {short_repr(paths)}")
    return [(path, path if path == "$" else tokenize_path(path)) for path in paths]


def _check_json_keys(value: Mapping[str, Any]) -> None:
    """JSON turns non-str dict keys into str without a word: refuse them so values round-trip."""
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            for name, child in node.items():
                if not isinstance(name, str):
                    raise InvalidInputError(f"value holds the dict key {short_repr(name)}; JSON keys are str")
                stack.append(child)
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def _namespace_matches(match_type: str, path: Sequence[str], namespace: tuple[str, ...]) -> bool:
    """A LangGraph match condition: the path's labels (``"*"`` is any one label) at the start
    ("prefix") or at the end ("suffix") of the namespace."""
    if len(namespace) < len(path):
        return False
    part = namespace[:len(path)] if match_type == "prefix" else namespace[len(namespace) - len(path):]
    return all(want == "*" or want == have for want, have in zip(path, part))
