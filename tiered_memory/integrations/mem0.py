"""A mem0-style facade over a TieredMemory store: ``Memory`` and ``AsyncMemory``.

Code written against mem0's ``Memory`` (``add / search / get / get_all / update / delete /
delete_all / history / reset``) runs on a local store with the same call shapes and the same
result dicts. What differs, on purpose:

- **No LLM inside.** ``add()`` stores each message verbatim (its role kept in metadata) unless an
  extractor is given: ``infer=callable`` per call, or ``Memory(..., infer=callable)`` as the
  default (then ``add()`` infers, as mem0 does by default). The callable turns messages into facts
  (a list of str); it may also take ``existing=`` and answer mem0's ADD / UPDATE / DELETE / NONE
  actions on the scope's nearest memories. Facts the scope already holds (same text, case and white
  space folded) are reported as ``NONE`` by the engine's dedup, never stored twice.
- **Scopes are namespaces.** ``user_id`` / ``agent_id`` / ``run_id`` (at least one, as in mem0)
  select memories whose ids equal every id given, as mem0's filters do: ``user_id="u"`` alone
  covers all of u's agents and runs; ``agent_id="a"`` alone covers agent a across users (pass
  ``user_id`` too to keep users apart). Each (user, agent, run) triple is one engine namespace, so
  one search never reads another scope's vectors.
- **By id.** As in mem0, ``get / update / delete / history`` take an id without a scope: a fresh id
  ends in 72 random bits and no listing ever shows an id outside its scope, so holding an id is the
  capability. They only ever reach memories this facade wrote (in its collection); any
  other memory of the store is "not found". Give ``user_id=`` (etc.) as well and a memory outside
  that scope is "not found" too.
- **History** (ADD / UPDATE / DELETE events) is an event log in the store's ``extra`` database,
  written right after each change; a crash between the two loses that one event, never a memory.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgpack

from tiered_memory.config import MemoryConfig
from tiered_memory.engine import DEFAULT_ENCODER, MAX_K, TieredMemory
from tiered_memory.errors import (
    ConfigError,
    InvalidInputError,
    MemoryNotFoundError,
    MetadataError,
    short_repr,
)
from tiered_memory.integrations.mem0_filters import SCOPE_KEYS, WILDCARD, translate
from tiered_memory.records import Hit, check_id, check_label, check_metadata, check_text, is_real_number
from tiered_memory.records import Memory as Record

__all__ = [
    "AsyncMemory",
    "ExtractedFactsError",
    "Memory",
    "MemoryIdNotFoundError",
    "MessageFormatError",
    "ScopeError",
]

DEFAULT_COLLECTION = "mem0"
DEFAULT_LIMIT = 100  # mem0's search / get_all default (its `limit=` API)
MESSAGE_KIND = "conversation"  # verbatim turns: the engine's BM25 gives them their neighbours' words
FACT_KIND = "fact"
EXISTING_SHOWN = 10  # memories offered to an extractor that takes existing= (mem0 searches 10 too)
_PAGE = 500  # records read per list_memories call when listing a scope
_EVENTS = ("ADD", "UPDATE", "DELETE", "NONE")


class ScopeError(InvalidInputError):
    """A call without user_id / agent_id / run_id, or with one that is not a usable id."""


class MessageFormatError(InvalidInputError):
    """``messages`` is not a str, a {"role", "content"} dict or a list of them."""


class ExtractedFactsError(InvalidInputError):
    """The ``infer=`` callable returned something other than facts or mem0 actions."""


class MemoryIdNotFoundError(MemoryNotFoundError, ValueError):
    """No memory of this facade (in this scope) has the id; a ValueError too, as mem0 raises."""


# -- scopes ------------------------------------------------------------------------------------

class Scope(NamedTuple):
    """The ids a call gives; None means "any"."""

    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None

    def covers(self, other: Scope) -> bool:
        """Whether every id given here equals other's (mem0's filter semantics)."""
        return all(mine is None or mine == theirs for mine, theirs in zip(self, other))

    def as_dict(self) -> dict[str, str]:
        return {key: value for key, value in zip(SCOPE_KEYS, self) if value is not None}


_TAGS = ("u", "a", "r")  # user, agent, run: in this order in a namespace
_ESCAPED = re.compile(r"[%|\x00-\x1f\x7f]")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def _escape(value: str) -> str:
    # Only '%' and the separator '|' (and control characters) are escaped, so the mapping is
    # injective and ids in any script stay readable in the namespace.
    return _ESCAPED.sub(lambda m: f"%{ord(m.group()):02X}", value)


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)


def scope_namespace(scope: Scope, collection: str) -> str:
    """The engine namespace of a full scope: ``<collection>|u:<user>|a:<agent>|r:<run>`` (given parts only)."""
    parts = [f"{tag}:{_escape(value)}" for tag, value in zip(_TAGS, scope) if value is not None]
    namespace = "|".join([collection, *parts])
    try:
        return check_label(namespace, "namespace")
    except InvalidInputError as err:
        raise ScopeError(f"user_id/agent_id/run_id {short_repr(scope.as_dict())} are too long together: their "
                         "namespace must fit 256 characters and 480 UTF-8 bytes; use shorter ids") from err


@functools.lru_cache(maxsize=65_536)  # pure, and asked for every hit a search returns
def parse_namespace(namespace: str, collection: str) -> Scope | None:
    """The scope a namespace encodes, None if it is not one of this collection's."""
    if not namespace.startswith(collection + "|"):
        return None
    values: dict[str, str] = {}
    last = -1
    for part in namespace[len(collection) + 1:].split("|"):
        tag, colon, value = part.partition(":")
        order = _TAGS.index(tag) if tag in _TAGS else -1
        if not colon or order <= last or not value:
            return None
        last = order
        values[SCOPE_KEYS[order]] = _unescape(value)
    return Scope(**values) if values else None


def _scope_value(value: object, name: str, *, wildcard: bool) -> str | None:
    """mem0's id rule: str (or int) ids, trimmed, never empty, no white space inside."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ScopeError(f"{name} must be a str (or an int) id, got {short_repr(value)}")
    text = str(value).strip()
    if not text or any(c.isspace() for c in text):
        raise ScopeError(f"{name} {short_repr(value)} is empty or holds white space; give an id without spaces")
    if text == WILDCARD and not wildcard:
        raise ScopeError(f"{name}='*' means any {name} in filters; memories are stored under a real id")
    return None if text == WILDCARD else text


def _call_scope(user_id: object, agent_id: object, run_id: object, filter_scope: Mapping[str, Any] | None = None,
                *, wildcard: bool = True) -> Scope:
    """The scope of a call from its keyword ids and the scope ids inside ``filters``."""
    given = {"user_id": user_id, "agent_id": agent_id, "run_id": run_id}
    merged: dict[str, str | None] = {}
    for key in SCOPE_KEYS:
        top = _scope_value(given[key], key, wildcard=wildcard)
        inner = _scope_value((filter_scope or {}).get(key), f"filters[{key!r}]", wildcard=wildcard)
        if top is not None and inner is not None and top != inner:
            raise ScopeError(f"{key}={top!r} and filters[{key!r}]={inner!r} disagree; give the scope once")
        merged[key] = top if top is not None else inner
    scope = Scope(**merged)
    if scope == Scope():
        raise ScopeError("give at least one of user_id, agent_id or run_id (as keywords or inside filters=), "
                         "as mem0 requires: every memory belongs to a scope")
    return scope


def _digest(value: str) -> bytes:
    return hashlib.blake2b(value.encode("utf-8"), digest_size=16).digest()


# -- the facade's records in the store's extra database ----------------------------------------

class _Scopes:
    """Which namespaces each user, agent and run has: one small key per (id, namespace).

    A call scoped by user_id alone must find that user's namespaces without listing every
    namespace of the store (namespaces() reads one row per namespace: milliseconds at 10,000
    tenants), so each scope's namespace is registered, before its first memory is written, under
    a key per id it holds. Keys are digests (LMDB keys stop at 511 bytes); values hold the
    namespace, which is checked on read."""

    def __init__(self, extra: Any, collection: str) -> None:
        self.extra = extra
        self.collection = collection
        self.base = extra.prefix + b"s/"

    def _key(self, tag: str, value: str, namespace: str) -> bytes:
        return self.base + tag.encode() + b"/" + _digest(value) + _digest(namespace)

    def register(self, scope: Scope, namespace: str) -> None:
        # Checked in the store each time (one small read beside the milliseconds of encoding), not
        # cached: another facade on the same store may have reset the collection since.
        keys = [self._key(tag, value, namespace) for tag, value in zip(_TAGS, scope) if value is not None]
        if self.extra.items(keys[0][len(self.extra.prefix):]):
            return
        self.extra.write([(key, namespace.encode("utf-8")) for key in keys])

    def namespaces(self, scope: Scope) -> list[str]:
        """This collection's namespaces whose scope the call's scope covers, in name order."""
        tag, value = next((t, v) for t, v in zip(_TAGS, scope) if v is not None)
        prefix = (self.base + tag.encode() + b"/" + _digest(value))[len(self.extra.prefix):]
        found = set()
        for _, stored in self.extra.items(prefix):
            namespace = stored.decode("utf-8")
            held = parse_namespace(namespace, self.collection)
            if held is not None and scope.covers(held):
                found.add(namespace)
        return sorted(found)

    def all(self) -> list[str]:
        found = {stored.decode("utf-8") for _, stored in self.extra.items(b"s/")}
        return sorted(ns for ns in found if parse_namespace(ns, self.collection) is not None)


class _History:
    """mem0's history table as an event log: one key per event, ordered per memory.

    Key: ``h/`` + digest(memory id) + 8-byte big-endian sequence (nanoseconds, kept increasing
    per memory), so one range read returns a memory's events in order. A store opened with an
    encryption key seals each event (it holds the old and new texts), bound to its key."""

    def __init__(self, extra: Any, clock: Callable[[], float]) -> None:
        self.extra = extra
        self.clock = clock
        self.base = extra.prefix + b"h/"
        self._lock = threading.Lock()
        self._last = 0

    def _prefix(self, memory_id: str) -> bytes:
        return self.base + _digest(memory_id)

    def _entries(self, memory_id: str) -> list[tuple[bytes, dict[str, Any]]]:
        out = []
        for key, value in self.extra.items(self._prefix(memory_id)[len(self.extra.prefix):]):
            if value[:1] == b"S":
                value = b"P" + self.extra.open(value[1:], key)
            event = msgpack.unpackb(value[1:], raw=False)
            if event.get("memory_id") == memory_id:  # a digest collision is not this memory's event
                out.append((key, event))
        return out

    def events(self, memory_id: str) -> list[dict[str, Any]]:
        return [event for _, event in self._entries(memory_id)]

    def record(self, changes: Sequence[tuple[str, str, Record, str | None, str | None]]) -> None:
        """(event, namespace, record, old text, new text) per change, in one durable write."""
        if not changes:
            return
        now = self.clock()
        puts = []
        with self._lock:
            for event, namespace, record, old, new in changes:
                floor = 0
                if event != "ADD":  # a new id has no events yet; others continue after their last
                    entries = self._entries(record.id)
                    if entries:
                        floor = struct.unpack(">Q", entries[-1][0][-8:])[0]
                self._last = max(time.time_ns(), self._last + 1, floor + 1)
                key = self._prefix(record.id) + struct.pack(">Q", self._last)
                packed = msgpack.packb({
                    "id": str(uuid.uuid4()), "memory_id": record.id, "old_memory": old, "new_memory": new,
                    # updated_at: when this change happened (the record's own stamp for an add or update)
                    "event": event, "created_at": _iso(record.created_at),
                    "updated_at": _iso(now if event == "DELETE" else record.updated_at),
                    "is_deleted": event == "DELETE", "actor_id": record.metadata.get("actor_id"),
                    "role": record.metadata.get("role"), "namespace": namespace,
                }, use_bin_type=True)
                value = b"S" + self.extra.seal(packed, key) if self.extra.can_seal else b"P" + packed
                puts.append((key, value))
            self.extra.write(puts)


@functools.lru_cache(maxsize=65_536)  # 2.7 us a call here; the memories a search returns repeat
def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


# -- results ----------------------------------------------------------------------------------

_PROMOTED = ("actor_id", "role")  # metadata keys mem0 lifts to the top of a result


def _item(record: Record, scope: Scope, score: float | None = None) -> dict[str, Any]:
    """A memory in mem0's result shape."""
    metadata = dict(record.metadata)
    promoted = {key: metadata.pop(key) for key in _PROMOTED if key in metadata}
    created = _iso(record.created_at)
    item: dict[str, Any] = {
        "id": record.id,
        "memory": record.text,
        "hash": hashlib.md5(record.text.encode("utf-8"), usedforsecurity=False).hexdigest(),
        "metadata": metadata or None,
        "created_at": created,
        "updated_at": created if record.updated_at == record.created_at else _iso(record.updated_at),
    }
    if score is not None:
        item["score"] = score
    item.update(scope.as_dict())
    item.update(promoted)
    return item


# -- add: what a call asks for, checked before anything is written ----------------------------

@dataclass
class _AddPlan:
    scope: Scope
    namespace: str
    messages: list[dict[str, Any]]
    metadata: dict[str, Any]
    extractor: Callable[..., Any] | None
    prompt: str | None


def _normalize_messages(messages: object, max_chars: int) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    elif isinstance(messages, Mapping):
        messages = [messages]
    elif not isinstance(messages, (list, tuple)):
        raise MessageFormatError(f"messages must be a str, a {{'role', 'content'}} dict or a list of them, got "
                                 f"{type(messages).__name__}")
    if not messages:
        raise MessageFormatError("messages is empty; pass the text or the turns to remember")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise MessageFormatError(f"messages[{i}] must be a {{'role', 'content'}} dict, got {short_repr(message)}")
        role, content, name = message.get("role"), message.get("content"), message.get("name")
        if not isinstance(role, str) or not role:
            raise MessageFormatError(f"messages[{i}] needs a 'role' str such as 'user' or 'assistant', "
                                     f"got {short_repr(role)}")
        if not isinstance(content, str):
            raise MessageFormatError(f"messages[{i}]['content'] must be a str (images and parts lists are not "
                                     f"supported), got {type(content).__name__}")
        if name is not None and not isinstance(name, str):
            raise MessageFormatError(f"messages[{i}]['name'] must be a str, got {short_repr(name)}")
        try:
            check_text(content, max_chars)
        except InvalidInputError as err:
            raise type(err)(f"messages[{i}]: {err}") from err
        out.append({key: value for key, value in (("role", role), ("content", content), ("name", name))
                    if value is not None})
    return out


def _clean_metadata(metadata: object, scope: Scope, config: MemoryConfig) -> dict[str, Any]:
    """The caller's metadata without scope ids: those come from the call (mem0 drops them too)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise MetadataError(f"metadata must be a dict with str keys, got {type(metadata).__name__}")
    clean = dict(metadata)
    for key, value in zip(SCOPE_KEYS, scope):
        if key in clean:
            if clean[key] != value:
                raise MetadataError(f"metadata[{key!r}]={short_repr(clean[key])} differs from the memory's "
                                    f"{key}={value!r}: the scope is set by {key}=, not by metadata")
            del clean[key]
    return check_metadata(clean, config.max_metadata_bytes, config.max_metadata_depth)


def _takes(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: they take what they are given
        return False
    return any(p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.kind == p.VAR_KEYWORD
               for p in parameters)


def _is_async(function: Callable[..., Any]) -> bool:
    # An object whose __call__ is `async def` (a client wrapper) is async too.
    call = type(function).__call__ if not inspect.isfunction(function) and not inspect.ismethod(function) else None
    return inspect.iscoroutinefunction(function) or (call is not None and inspect.iscoroutinefunction(call))


class _Action(NamedTuple):
    event: str
    text: str | None
    target: str | None  # the real id, for UPDATE / DELETE / NONE on an existing memory


# -- the facade -------------------------------------------------------------------------------

_UNSET: Any = object()
_OPTIONS = ("path", "store", "encoder", "dimension", "encryption_key", "settings", "collection", "infer")
_PROVIDERS = (None, "tiered_memory", "tiered-memory")
_MODEL_ALIASES = {"all-MiniLM-L6-v2": DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2": DEFAULT_ENCODER}
_COLLECTION = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _section(config: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    section = config.get(name)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"config[{name!r}] must be a dict like {{'config': {{...}}}}, got {short_repr(section)}")
    unknown = set(section) - {"provider", "config"}
    if unknown:
        raise ConfigError(f"config[{name!r}] takes 'provider' and 'config', not {sorted(unknown)}")
    if section.get("provider") not in _PROVIDERS:
        raise ConfigError(f"config[{name!r}]['provider']={section['provider']!r}: this facade runs on a local "
                          "tiered_memory store with the bundled model; drop 'provider'")
    inner = section.get("config") or {}
    if not isinstance(inner, Mapping) or set(inner) - set(keys):
        raise ConfigError(f"config[{name!r}]['config'] takes {list(keys)}, got {short_repr(inner)}")
    return dict(inner)


def _options_from_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Our keys as they are, plus mem0's nested ones where they mean something here."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a dict (see Memory.from_config), got {type(config).__name__}")
    if "llm" in config:
        raise ConfigError("no LLM runs inside this store: pass infer=<callable(messages) -> list of facts> "
                          "wrapping your LLM, or store messages verbatim")
    if "history_db_path" in config:
        raise ConfigError("history is kept inside the store directory (path=); drop history_db_path")
    mem0_keys = ("vector_store", "embedder", "version")
    unknown = set(config) - set(_OPTIONS) - set(mem0_keys)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}; use {list(_OPTIONS)} "
                          "(or mem0's vector_store.config.path / collection_name, embedder.config.model)")
    if config.get("version", "v1.1") != "v1.1":
        raise ConfigError(f"version={config['version']!r}: results come in mem0's v1.1 shape only")
    options = {key: config[key] for key in _OPTIONS if key in config}
    nested: dict[str, Any] = {}
    store = _section(config, "vector_store", ("path", "collection_name"))
    if "path" in store:
        nested["path"] = store["path"]
    if "collection_name" in store:
        nested["collection"] = store["collection_name"]
    embedder = _section(config, "embedder", ("model", "embedding_dims"))
    if "model" in embedder:
        model = embedder["model"]
        nested["encoder"] = _MODEL_ALIASES.get(model, model) if isinstance(model, str) else model
    if "embedding_dims" in embedder:
        nested["dimension"] = embedder["embedding_dims"]
    for key, value in nested.items():
        if key in options and options[key] != value:
            raise ConfigError(f"config gives {key} twice, with different values ({short_repr(options[key])} and "
                              f"{short_repr(value)}); keep one")
        options[key] = value
    return options


class Memory:
    """mem0's ``Memory`` over a tiered_memory store (see the module docstring for what differs).

    ``Memory(path="./memory")``, ``Memory(store=an_open_TieredMemory)`` or
    ``Memory.from_config({"path": ..., "encoder": ..., "encryption_key": ..., "infer": ...})``.
    ``collection`` (mem0's collection_name) keeps several facades apart in one store. With an
    encryption key every memory is sealed at rest, and so are its history events.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, path: Any = _UNSET, store: Any = _UNSET,
                 encoder: Any = _UNSET, dimension: Any = _UNSET, encryption_key: Any = _UNSET, settings: Any = _UNSET,
                 collection: Any = _UNSET, infer: Any = _UNSET) -> None:
        options = _options_from_config(config)
        given = {"path": path, "store": store, "encoder": encoder, "dimension": dimension,
                 "encryption_key": encryption_key, "settings": settings, "collection": collection, "infer": infer}
        for key, value in given.items():
            if value is _UNSET:
                continue
            if key in options:
                raise ConfigError(f"{key} is given both in config and as {key}=; give it once")
            options[key] = value
        collection = options.get("collection", DEFAULT_COLLECTION)
        if not isinstance(collection, str) or not _COLLECTION.fullmatch(collection):
            raise ConfigError(f"collection must be 1-32 letters, digits, '_' or '-', got {short_repr(collection)}")
        extractor = options.get("infer")
        if extractor is not None and not callable(extractor):
            raise ConfigError(f"infer must be a callable (messages -> list of facts), got {short_repr(extractor)}")
        self.collection = collection
        self.extractor: Callable[..., Any] | None = extractor
        self.mem, self._owns_store = self._open(options)
        extra = self.mem.extra(b"compat/" + collection.encode("ascii") + b"/")
        self._scopes = _Scopes(extra, collection)
        self._history = _History(extra, self.mem.clock)
        self._sealed = self.mem.has_key  # a store opened with a key seals every memory of the facade
        # Changes that read a memory, then write it and its event (update, delete, an extractor's
        # actions) go one at a time, so two updates of one memory cannot interleave their merges.
        self._write_lock = threading.RLock()

    @staticmethod
    def _open(options: dict[str, Any]) -> tuple[TieredMemory, bool]:
        store = options.get("store")
        if store is not None:
            if not isinstance(store, TieredMemory):
                raise ConfigError(f"store must be an open TieredMemory, got {type(store).__name__}")
            clash = [key for key in ("path", "encoder", "dimension", "encryption_key", "settings") if key in options]
            if clash:
                raise ConfigError(f"store= is already open; {clash} apply only when the facade opens the store")
            return store, False
        if options.get("path") is None:
            raise ConfigError("Memory needs path= (the store's directory) or store= (an open TieredMemory)")
        settings = options.get("settings")
        keywords: dict[str, Any] = {"encoder": options.get("encoder", DEFAULT_ENCODER),
                                    "dimension": options.get("dimension"),
                                    "encryption_key": options.get("encryption_key")}
        if isinstance(settings, MemoryConfig):
            keywords["config"] = settings
        elif isinstance(settings, Mapping):
            unknown = sorted(set(settings) - {field.name for field in fields(MemoryConfig)})
            if unknown:
                raise ConfigError(f"settings {unknown} are not MemoryConfig fields; see MemoryConfig")
            keywords["config"] = MemoryConfig(**settings)
        elif settings is not None:
            raise ConfigError(f"settings must be a MemoryConfig or a dict of its fields, got {short_repr(settings)}")
        return TieredMemory(options["path"], **keywords), True

    @classmethod
    def from_config(cls, config_dict: Mapping[str, Any]) -> Memory:
        """mem0's constructor from a dict (keys: see ``Memory``)."""
        return cls(config=config_dict)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store if this facade opened it (a store passed as store= stays open)."""
        if self._owns_store:
            self.mem.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- add ------------------------------------------------------------------------------

    def add(self, messages: Any, *, user_id: Any = None, agent_id: Any = None, run_id: Any = None,
            metadata: Mapping[str, Any] | None = None, infer: Any = None, prompt: str | None = None
            ) -> dict[str, list[dict[str, Any]]]:
        """Store messages (verbatim, or the facts ``infer`` draws from them) in one scope.

        ``messages``: a str, a ``{"role", "content"[, "name"]}`` dict or a list of them. Verbatim,
        each non-system message becomes a memory with ``metadata["role"]`` (and ``"actor_id"`` from
        ``name``), as mem0's ``infer=False`` does. ``infer``: None (the facade's extractor if it has
        one, else verbatim), False, True (the facade's extractor, required), or a callable.
        Returns ``{"results": [{"id", "memory", "event", ...}]}``."""
        plan = self._plan_add(messages, user_id, agent_id, run_id, metadata, infer, prompt)
        if plan.extractor is None:
            return self._store_verbatim(plan)
        if _is_async(plan.extractor):
            raise ConfigError("this infer= callable is async: use AsyncMemory, or pass a sync callable")
        existing = self._existing(plan) if _takes(plan.extractor, "existing") else None
        items = plan.extractor(_copy_messages(plan.messages), **self._extractor_keywords(plan, existing))
        if inspect.isawaitable(items):
            if inspect.iscoroutine(items):
                items.close()
            raise ExtractedFactsError("infer= returned an awaitable: use AsyncMemory for async extractors")
        return self._apply(plan, items, existing)

    def _plan_add(self, messages: Any, user_id: Any, agent_id: Any, run_id: Any, metadata: Any, infer: Any,
                  prompt: Any) -> _AddPlan:
        self.mem.check_writable()
        scope = _call_scope(user_id, agent_id, run_id, wildcard=False)
        namespace = scope_namespace(scope, self.collection)
        config = self.mem.config
        clean = _clean_metadata(metadata, scope, config)
        normalized = _normalize_messages(messages, config.max_text_chars)
        if infer is None:
            extractor = self.extractor
        elif infer is True:
            if self.extractor is None:
                raise ConfigError("infer=True needs an extractor: Memory(..., infer=callable) or "
                                  "add(..., infer=callable); without one, messages are stored verbatim (infer=False)")
            extractor = self.extractor
        elif infer is False:
            extractor = None
        elif callable(infer):
            extractor = infer
        else:
            raise InvalidInputError(f"infer must be True, False, None or a callable, got {short_repr(infer)}")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InvalidInputError(f"prompt must be a str, got {type(prompt).__name__}")
            if extractor is None or not _takes(extractor, "prompt"):
                raise InvalidInputError("prompt= is passed to the infer= callable, and this add has none that takes "
                                        "prompt=; give infer=callable(messages, prompt=...) or drop prompt")
        return _AddPlan(scope, namespace, normalized, clean, extractor, prompt)

    def _store_verbatim(self, plan: _AddPlan) -> dict[str, list[dict[str, Any]]]:
        # mem0 skips system messages: they instruct the model, they are not something said.
        turns = [message for message in plan.messages if message["role"] != "system"]
        if not turns:
            return {"results": []}
        metadata = []
        for message in turns:
            meta = {**plan.metadata, "role": message["role"]}
            if "name" in message:
                meta["actor_id"] = message["name"]
            metadata.append(meta)
        self._scopes.register(plan.scope, plan.namespace)
        # Every turn is kept (dedup=False), as conversation archives are: "ok" said twice is two turns.
        ids = self.mem.add_many([message["content"] for message in turns], namespace=plan.namespace,
                                kind=MESSAGE_KIND, metadata=metadata, dedup=False, sensitive=self._sealed)
        self._record_adds(plan.namespace, ids)
        return {"results": [{"id": memory_id, "memory": message["content"], "event": "ADD",
                             "actor_id": message.get("name"), "role": message["role"]}
                            for memory_id, message in zip(ids, turns)]}

    def _record_adds(self, namespace: str, ids: Sequence[str]) -> None:
        # The records as stored (their created_at, role, actor), read back from cold: a few
        # microseconds each, beside the milliseconds the encoding of their texts took.
        records = [record for record in (self.mem.record(memory_id) for memory_id in ids) if record is not None]
        self._history.record([("ADD", namespace, record, None, record.text) for record in records])

    def _existing(self, plan: _AddPlan) -> list[dict[str, Any]]:
        """The scope's memories nearest the messages, for an extractor that takes existing=.

        Ids are shown as "0", "1", ... (mem0's guard against an LLM inventing ids) and mapped back
        when its actions are applied."""
        said = "\n".join(m["content"] for m in plan.messages if m["role"] != "system")[:self.mem.config.max_text_chars]
        if not said.strip():
            return []
        namespaces = self._scopes.namespaces(plan.scope)
        if not namespaces:
            return []
        hits = self.mem.search(said, namespace=namespaces, k=EXISTING_SHOWN)
        return [{"id": str(i), "text": hit.memory.text, "memory_id": hit.memory.id} for i, hit in enumerate(hits)]

    def _extractor_keywords(self, plan: _AddPlan, existing: list[dict[str, Any]] | None) -> dict[str, Any]:
        keywords: dict[str, Any] = {}
        if existing is not None:
            keywords["existing"] = [{"id": item["id"], "text": item["text"]} for item in existing]
        if plan.prompt is not None:
            keywords["prompt"] = plan.prompt
        return keywords

    def _actions(self, items: object, existing: list[dict[str, Any]] | None) -> list[_Action]:
        """Check everything the extractor answered before anything is written."""
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise ExtractedFactsError(f"infer= must return a list of facts (str) or mem0 actions (dicts), got "
                                      f"{short_repr(items)}")
        shown = {item["id"]: item["memory_id"] for item in existing or []}
        max_chars = self.mem.config.max_text_chars
        actions, changed = [], set()
        for i, item in enumerate(items):
            if isinstance(item, str):
                event, text, shown_id = "ADD", item, None
            elif isinstance(item, Mapping):
                event = item.get("event", "ADD")
                text, shown_id = item.get("text"), item.get("id")
                if not isinstance(event, str) or event.upper() not in _EVENTS:
                    raise ExtractedFactsError(f"infer= item {i}: event must be one of {_EVENTS}, "
                                              f"got {short_repr(event)}")
                event = event.upper()
            else:
                raise ExtractedFactsError(f"infer= item {i} must be a str fact or a dict action, "
                                          f"got {short_repr(item)}")
            if event in ("ADD", "UPDATE") or text is not None:
                try:
                    check_text(text, max_chars)
                except InvalidInputError as err:
                    raise ExtractedFactsError(f"infer= item {i}: {err}") from err
            target = None
            if event != "ADD" and (shown_id is not None or event != "NONE"):
                key = str(shown_id) if isinstance(shown_id, (str, int)) and not isinstance(shown_id, bool) else None
                if key not in shown:
                    raise ExtractedFactsError(
                        f"infer= item {i}: {event} names id {short_repr(shown_id)}, which is not one of the existing "
                        f"memories shown to it ({sorted(shown) or 'none'}); nothing was written")
                target = shown[key]
                if event in ("UPDATE", "DELETE"):
                    if target in changed:
                        raise ExtractedFactsError(f"infer= item {i}: memory {key!r} is changed twice in one answer")
                    changed.add(target)
            actions.append(_Action(event, text, target))
        return actions

    def _apply(self, plan: _AddPlan, items: object, existing: list[dict[str, Any]] | None
               ) -> dict[str, list[dict[str, Any]]]:
        actions = self._actions(items, existing)
        results: list[dict[str, Any] | None] = [None] * len(actions)
        adds = [i for i, action in enumerate(actions) if action.event == "ADD"]
        shown_texts = {item["memory_id"]: item["text"] for item in existing or []}
        with self._write_lock:
            if adds:
                self._scopes.register(plan.scope, plan.namespace)
                texts = [actions[i].text for i in adds]
                ids = self.mem.add_many(texts, namespace=plan.namespace, kind=FACT_KIND, metadata=plan.metadata,
                                        sensitive=self._sealed)
                repeated = set(getattr(ids, "duplicates", ()))
                for position, (i, memory_id) in enumerate(zip(adds, ids)):
                    event = "NONE" if position in repeated else "ADD"
                    results[i] = {"id": memory_id, "memory": actions[i].text, "event": event}
                self._record_adds(plan.namespace, [memory_id for position, memory_id in enumerate(ids)
                                                   if position not in repeated])
            for i, action in enumerate(actions):
                if action.event == "UPDATE" and action.target is not None and action.text is not None:
                    previous = self._update_owned(action.target, action.text, plan.metadata, plan.scope)
                    results[i] = {"id": action.target, "memory": action.text, "event": "UPDATE",
                                  "previous_memory": previous}
                elif action.event == "DELETE" and action.target is not None:
                    gone = self._delete_owned(action.target, plan.scope)
                    results[i] = {"id": action.target, "memory": gone, "event": "DELETE"}
                elif action.event == "NONE":
                    results[i] = {"id": action.target, "memory": action.text if action.text is not None else
                                  shown_texts.get(action.target), "event": "NONE"}
        return {"results": [result for result in results if result is not None]}

    # -- reading --------------------------------------------------------------------------

    def search(self, query: str, *, user_id: Any = None, agent_id: Any = None, run_id: Any = None,
               filters: Mapping[str, Any] | None = None, limit: int | None = None, top_k: int | None = None,
               threshold: float | None = None, rerank: bool = False, mode: str | None = None
               ) -> dict[str, list[dict[str, Any]]]:
        """The memories of a scope most relevant to ``query``, best first.

        The scope comes from the keywords or from ``filters`` (mem0's newer spelling); the rest of
        ``filters`` are metadata conditions (see :mod:`.mem0_filters`). ``limit`` (or ``top_k``)
        defaults to 100. ``threshold`` is a floor on the cosine similarity (0 to 1), as the engine's
        ``min_score``. ``score`` is the engine's ranking score: in the default hybrid mode, z-scored
        cosine + z-scored BM25 (not bounded to 0..1); ``mode="dense"`` makes it the cosine.
        ``rerank`` is accepted for mem0's signature; no reranker is configured, as in mem0 without one."""
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a str, got {type(query).__name__}")
        check_text(query, self.mem.config.max_text_chars)
        translated = translate(filters)
        scope = _call_scope(user_id, agent_id, run_id, translated.scope)
        k = _limit(limit, top_k)
        if threshold is not None and (not is_real_number(threshold) or not 0.0 <= float(threshold) <= 1.0):
            raise InvalidInputError(f"threshold must be a number from 0 to 1, got {short_repr(threshold)}")
        if not isinstance(rerank, bool):
            raise InvalidInputError(f"rerank must be True or False, got {short_repr(rerank)}")
        namespaces = self._scopes.namespaces(scope)
        if not namespaces:
            return {"results": []}
        only_ids = None
        if translated.local is not None:
            only_ids = {record.id for record in self._records(namespaces, translated.local)}
            if not only_ids:
                return {"results": []}
        hits = self.mem.search(query, namespace=namespaces, k=k, where=translated.where, only_ids=only_ids,
                               min_score=None if threshold is None else float(threshold), mode=mode)
        return {"results": [self._hit_item(hit) for hit in hits]}

    def _hit_item(self, hit: Hit) -> dict[str, Any]:
        held = parse_namespace(hit.memory.namespace, self.collection)
        return _item(hit.memory, held or Scope(), hit.score)

    def get(self, memory_id: str, *, user_id: Any = None, agent_id: Any = None, run_id: Any = None
            ) -> dict[str, Any] | None:
        """The memory with this id in mem0's shape, or None (unknown, not this facade's, or outside
        the scope given)."""
        check_id(memory_id)
        scope = _optional_scope(user_id, agent_id, run_id)
        try:
            memory = self.mem.get(memory_id)
        except MemoryNotFoundError:
            return None
        held = parse_namespace(memory.namespace, self.collection)
        if held is None or (scope is not None and not scope.covers(held)):
            return None
        return _item(memory, held)

    def get_all(self, *, user_id: Any = None, agent_id: Any = None, run_id: Any = None,
                filters: Mapping[str, Any] | None = None, limit: int | None = None, top_k: int | None = None
                ) -> dict[str, list[dict[str, Any]]]:
        """A scope's memories, oldest first (then by id), up to ``limit`` (default 100)."""
        translated = translate(filters)
        scope = _call_scope(user_id, agent_id, run_id, translated.scope)
        k = _limit(limit, top_k)
        namespaces = self._scopes.namespaces(scope)
        condition = translated.matches if translated.where is not None or translated.local is not None else None
        records = sorted(self._records(namespaces, condition, k), key=lambda r: (r.created_at, r.id))[:k]
        return {"results": [_item(record, parse_namespace(record.namespace, self.collection) or Scope())
                            for record in records]}

    def _records(self, namespaces: list[str], condition: Callable[[Mapping[str, Any]], bool] | None,
                 limit: int | None = None) -> list[Record]:
        """Memories of the namespaces whose metadata meets `condition` (up to `limit` per namespace)."""
        out: list[Record] = []
        for namespace in namespaces:
            taken, offset = 0, 0
            while limit is None or taken < limit:
                page = self.mem.list_memories(namespace, limit=_PAGE, offset=offset)
                for record in page:
                    if condition is None or condition(record.metadata):
                        out.append(record)
                        taken += 1
                        if limit is not None and taken >= limit:
                            break
                if len(page) < _PAGE:
                    break
                offset += _PAGE
        return out

    def history(self, memory_id: str, *, user_id: Any = None, agent_id: Any = None, run_id: Any = None
                ) -> list[dict[str, Any]]:
        """Every ADD / UPDATE / DELETE event of a memory, oldest first (kept after a delete)."""
        check_id(memory_id)
        scope = _optional_scope(user_id, agent_id, run_id)
        events = self._history.events(memory_id)
        out = []
        for event in events:
            held = parse_namespace(event.pop("namespace", ""), self.collection)
            if held is None or (scope is not None and not scope.covers(held)):
                return []
            out.append(event)
        return out

    # -- changing -------------------------------------------------------------------------

    def update(self, memory_id: str, data: str | None = None, metadata: Mapping[str, Any] | None = None, *,
               text: str | None = None, user_id: Any = None, agent_id: Any = None, run_id: Any = None
               ) -> dict[str, str]:
        """Change a memory's text (``data``, or ``text`` as mem0 now spells it) and/or merge
        ``metadata`` into its metadata. Raises MemoryIdNotFoundError for an unknown id."""
        if data is not None and text is not None and data != text:
            raise InvalidInputError("data= and text= are two names for the new text; give one")
        new_text = data if data is not None else text
        if new_text is None and metadata is None:
            raise InvalidInputError("update needs the new text (data=) or metadata= to merge")
        if new_text is not None:
            check_text(new_text, self.mem.config.max_text_chars)
        check_id(memory_id)
        scope = _optional_scope(user_id, agent_id, run_id)
        with self._write_lock:
            self._update_owned(memory_id, new_text, metadata, scope, replace_metadata=False)
        return {"message": "Memory updated successfully!"}

    def _owned(self, memory_id: str, scope: Scope | None) -> tuple[Record, Scope]:
        record = self.mem.record(memory_id)
        held = None if record is None else parse_namespace(record.namespace, self.collection)
        if record is None or held is None or (scope is not None and not scope.covers(held)):
            where = "" if scope is None else f" in scope {scope.as_dict()}"
            raise MemoryIdNotFoundError(f"no memory with id {memory_id!r}{where}; ids come from add(), search() "
                                        "or get_all()")
        return record, held

    def _update_owned(self, memory_id: str, new_text: str | None, metadata: Mapping[str, Any] | None,
                      scope: Scope | None, replace_metadata: bool = False) -> str:
        """Update under the write lock; returns the previous text."""
        record, held = self._owned(memory_id, scope)
        merged = None
        if metadata is not None:
            changes = _clean_metadata(metadata, held, self.mem.config)
            merged = changes if replace_metadata else {**record.metadata, **changes}
        try:
            changed = self.mem.update(memory_id, text=new_text, metadata=merged, namespace=record.namespace)
        except MemoryNotFoundError as err:  # deleted by another caller since it was read
            raise MemoryIdNotFoundError(f"no memory with id {memory_id!r}") from err
        self._history.record([("UPDATE", record.namespace, changed, record.text, changed.text)])
        return record.text

    def delete(self, memory_id: str, *, user_id: Any = None, agent_id: Any = None, run_id: Any = None
               ) -> dict[str, str]:
        """Delete one memory (its history stays). Raises MemoryIdNotFoundError for an unknown id."""
        check_id(memory_id)
        scope = _optional_scope(user_id, agent_id, run_id)
        with self._write_lock:
            self._delete_owned(memory_id, scope)
        return {"message": "Memory deleted successfully!"}

    def _delete_owned(self, memory_id: str, scope: Scope | None) -> str:
        record, _ = self._owned(memory_id, scope)
        try:
            self.mem.delete(memory_id, namespace=record.namespace)
        except MemoryNotFoundError as err:
            raise MemoryIdNotFoundError(f"no memory with id {memory_id!r}") from err
        self._history.record([("DELETE", record.namespace, record, record.text, None)])
        return record.text

    def delete_all(self, *, user_id: Any = None, agent_id: Any = None, run_id: Any = None) -> dict[str, str]:
        """Delete every memory of a scope (each gets its DELETE event). Not one transaction: a crash
        midway leaves the rest, and calling it again finishes the job."""
        scope = _call_scope(user_id, agent_id, run_id)
        self.mem.check_writable()
        with self._write_lock:
            for namespace in self._scopes.namespaces(scope):
                for memory_id in self.mem.ids(namespace):
                    try:
                        self._delete_owned(memory_id, scope)
                    except MemoryIdNotFoundError:
                        continue
        return {"message": "Memories deleted successfully!"}

    def reset(self) -> None:
        """Delete every memory of this facade's collection and all its history (mem0's reset);
        the store's other memories are left alone."""
        self.mem.check_writable()
        with self._write_lock:
            for namespace in self._scopes.all():
                for memory_id in self.mem.ids(namespace):
                    try:
                        self.mem.delete(memory_id, namespace=namespace)
                    except MemoryNotFoundError:
                        continue
            extra = self._scopes.extra
            extra.write([(key, None) for key, _ in extra.items(b"")])


def _copy_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(message) for message in messages]


def _limit(limit: object, top_k: object) -> int:
    if limit is not None and top_k is not None and limit != top_k:
        raise InvalidInputError("limit= and top_k= are two names for one bound; give one")
    value = DEFAULT_LIMIT if limit is None and top_k is None else (limit if limit is not None else top_k)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise InvalidInputError(f"limit must be an int from 1 to {MAX_K}, got {short_repr(value)}")
    return value


def _optional_scope(user_id: object, agent_id: object, run_id: object) -> Scope | None:
    if user_id is None and agent_id is None and run_id is None:
        return None
    return _call_scope(user_id, agent_id, run_id)


# -- async ------------------------------------------------------------------------------------

class AsyncMemory:
    """mem0's ``AsyncMemory``: the same methods as coroutines.

    The store's work (encoding, LMDB, index search) runs in this facade's own thread pool
    (``max_workers``, default 4), so the event loop never waits on it and the application's default
    executor is left alone. An async ``infer=`` callable is awaited on the loop; a sync one runs in
    the pool. Constructing one opens the store (and loads the model) right away, as mem0's does:
    build it before the loop's hot path, or in ``loop.run_in_executor``."""

    def __init__(self, config: Mapping[str, Any] | None = None, *, max_workers: int = 4, **options: Any) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(f"max_workers must be a positive int, got {short_repr(max_workers)}")
        self._facade = Memory(config, **options)
        self.mem = self._facade.mem
        self.collection = self._facade.collection
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tiered-memory-mem0")

    @classmethod
    def from_config(cls, config_dict: Mapping[str, Any]) -> AsyncMemory:
        return cls(config=config_dict)

    async def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args, **kwargs))

    async def add(self, messages: Any, *, user_id: Any = None, agent_id: Any = None, run_id: Any = None,
                  metadata: Mapping[str, Any] | None = None, infer: Any = None, prompt: str | None = None
                  ) -> dict[str, list[dict[str, Any]]]:
        facade = self._facade
        plan = facade._plan_add(messages, user_id, agent_id, run_id, metadata, infer, prompt)
        if plan.extractor is None:
            return await self._run(facade._store_verbatim, plan)
        extractor = plan.extractor
        existing = await self._run(facade._existing, plan) if _takes(extractor, "existing") else None
        keywords = facade._extractor_keywords(plan, existing)
        if _is_async(extractor):
            items = await extractor(_copy_messages(plan.messages), **keywords)
        else:
            items = await self._run(extractor, _copy_messages(plan.messages), **keywords)
            if inspect.isawaitable(items):
                items = await items
        return await self._run(facade._apply, plan, items, existing)

    async def search(self, query: str, **options: Any) -> dict[str, list[dict[str, Any]]]:
        return await self._run(self._facade.search, query, **options)

    async def get(self, memory_id: str, **scope: Any) -> dict[str, Any] | None:
        return await self._run(self._facade.get, memory_id, **scope)

    async def get_all(self, **options: Any) -> dict[str, list[dict[str, Any]]]:
        return await self._run(self._facade.get_all, **options)

    async def update(self, memory_id: str, data: str | None = None, metadata: Mapping[str, Any] | None = None,
                     **options: Any) -> dict[str, str]:
        return await self._run(self._facade.update, memory_id, data, metadata, **options)

    async def delete(self, memory_id: str, **scope: Any) -> dict[str, str]:
        return await self._run(self._facade.delete, memory_id, **scope)

    async def delete_all(self, **scope: Any) -> dict[str, str]:
        return await self._run(self._facade.delete_all, **scope)

    async def history(self, memory_id: str, **scope: Any) -> list[dict[str, Any]]:
        return await self._run(self._facade.history, memory_id, **scope)

    async def reset(self) -> None:
        await self._run(self._facade.reset)

    def close(self) -> None:
        """Wait for work in flight, then close the store if this facade opened it."""
        self._executor.shutdown(wait=True)
        self._facade.close()

    async def __aenter__(self) -> AsyncMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

