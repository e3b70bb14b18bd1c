"""An agent's handle: its private key-value entries and memories, and its view of shared memories."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered_memory.agents.store import Notification, memory_bytes, pack, unpack
from tiered_memory.encoders import as_unit_vectors
from tiered_memory.errors import EncryptionRequiredError, InvalidInputError, MemoryNotFoundError
from tiered_memory.records import Hit, Memory, check_label, check_metadata, check_text, new_id

if TYPE_CHECKING:
    from tiered_memory.agents.hub import AgentHub

SCOPES = ("all", "private", "shared")


@dataclass(frozen=True, slots=True)
class Entry:
    """A key-value entry, or a shared memory found by its key (then ``value`` is its text)."""

    key: str
    value: Any
    metadata: dict[str, Any]
    updated_at: float
    sensitive: bool
    memory_id: str | None = None


class Agent:
    """One registered agent: ``put/get`` (key-value), ``remember/search`` (semantic), sharing, notifications.

    It reads only its own private memory and the shared memories granted to it."""

    __slots__ = ("hub", "name", "namespace")

    def __init__(self, hub: AgentHub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.namespace = hub.namespace(name)

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, user={self.hub.user!r})"

    @property
    def capabilities(self) -> list[str]:
        self.hub.refresh()
        return list(self.hub.state.agents[self.name].capabilities)

    @property
    def shared_access(self) -> str:
        self.hub.refresh()
        return self.hub.state.agents[self.name].shared_access

    @property
    def sealed(self) -> bool:
        """Its private memories and key-value entries are sealed at rest."""
        return self.hub.mem.is_sealed(self.namespace)

    def usage(self) -> int:
        """Bytes its private key-value entries and memories take against its quota."""
        with self.hub.lock:
            return self.hub.usage(self.name)

    # -- key-value -------------------------------------------------------------------------

    def put(self, key: str, value: Any, *, metadata: Mapping[str, Any] | None = None, sensitive: bool = False) -> None:
        """Store a value under a key in its private memory, durably (replacing any older value).

        Values are msgpack-serializable (str, numbers, bool, None, bytes, lists, dicts). An entry
        once sensitive (or any entry of a sealed agent) stays sealed at rest."""
        hub, mem = self.hub, self.hub.mem
        mem.check_writable()
        key = check_label(key, "key")
        metadata = check_metadata(metadata, mem.config.max_metadata_bytes, mem.config.max_metadata_depth)
        if not isinstance(sensitive, bool):
            raise InvalidInputError(f"sensitive must be True or False, got {sensitive!r}")
        with hub.lock:
            old = hub.state.kv.get(self.name, {}).get(key)
            sealed = sensitive or self.sealed or (old is not None and unpack(old[1])[4])
            if sealed and not mem.has_key:
                raise EncryptionRequiredError("a sensitive entry is sealed at rest: open the store with "
                                              "encryption_key=")
            record = [key, value, metadata, mem.clock(), sealed]
            try:
                size = len(pack(record))
            except (TypeError, ValueError, OverflowError) as err:
                raise InvalidInputError(f"the value for key {key!r} is not serializable ({err}); use str, numbers, "
                                        "bool, None, bytes, lists and dicts") from err
            if size > 4 * mem.config.max_text_chars:
                raise InvalidInputError(f"the value for key {key!r} takes {size:,} bytes serialized, more than "
                                        f"4 x max_text_chars={4 * mem.config.max_text_chars:,}; store a reference")
            delta = size - (0 if old is None else len(old[1]))
            hub.charge(self.name, delta)
            entry_id = new_id() if old is None else old[0]
            hub.records.commit([hub.records.op("k", (self.name, entry_id), record, sealed=sealed)])
            hub.charged(self.name, delta)

    def get(self, key: str, default: Any = None) -> Any:
        """The value under a key: its own entry first, then a shared memory of that key granted to it
        (its text); ``default`` if neither."""
        # Lock-free: one dict lookup and a msgpack decode (the hub replaces entries, never mutates them).
        self.hub.refresh()
        found = self.hub.state.kv.get(self.name, {}).get(key)
        if found is not None:
            return unpack(found[1])[1]
        entry = self._shared_entry(key)
        return default if entry is None else entry.value

    def entry(self, key: str) -> Entry | None:
        """The entry under a key, with its metadata (private first, then shared), or None."""
        self.hub.refresh()
        found = self.hub.state.kv.get(self.name, {}).get(key)
        if found is not None:
            return Entry(*unpack(found[1]))
        return self._shared_entry(key)

    def _shared_entry(self, key: str) -> Entry | None:
        memory_id = self.hub.state.shared_keys.get(key) if isinstance(key, str) else None
        if memory_id is None or self.hub.access(self.name, memory_id) is None:
            return None
        try:
            memory = self.hub.mem.get(memory_id, namespace=self.hub.shared_namespace)
        except MemoryNotFoundError:  # expired (or deleted behind the hub's back): no entry, as for a missing key
            return None
        return Entry(key, memory.text, memory.metadata, memory.updated_at, memory.sensitive, memory_id)

    def keys(self) -> list[str]:
        self.hub.refresh()
        return sorted(self.hub.state.kv.get(self.name, {}))

    def delete(self, key: str) -> bool:
        """Remove a private key-value entry; False if there was none."""
        hub = self.hub
        hub.mem.check_writable()
        with hub.lock:
            old = hub.state.kv.get(self.name, {}).get(key)
            if old is None:
                return False
            hub.usage(self.name)
            hub.records.commit([hub.records.op("k", (self.name, old[0]), None)])
            hub.charged(self.name, -len(old[1]))
        return True

    # -- semantic memory -------------------------------------------------------------------

    def remember(self, text: str, *, kind: str = "fact", metadata: Mapping[str, Any] | None = None,
                 importance: float = 0.5, vector: Any = None, sensitive: bool = False, created_at: Any = None) -> str:
        """Store a memory in its private namespace (counted against its quota); returns the id."""
        hub, mem = self.hub, self.hub.mem
        mem.check_writable()
        text = check_text(text, mem.config.max_text_chars)
        metadata = check_metadata(metadata, mem.config.max_metadata_bytes, mem.config.max_metadata_depth)
        vectors = as_unit_vectors(vector, mem.dimension) if vector is not None else mem.encode([text])
        size = memory_bytes(text, metadata)
        with hub.lock:
            hub.charge(self.name, size)
            # No dedup: the quota is charged for what this call stores.
            memory_id = mem.add(text, namespace=self.namespace, kind=kind, metadata=metadata, importance=importance,
                                vector=vectors, sensitive=sensitive, created_at=created_at, dedup=False)
            hub.charged(self.name, size)
        return memory_id

    def search(self, query: str | None = None, *, vector: Any = None, k: int = 10, kinds: Iterable[str] | None = None,
               where: Mapping[str, Any] | None = None, min_score: float | None = None,
               scope: str = "all", mode: str = "dense") -> list[Hit]:
        """The k memories most similar to a query among its own and (``scope="all"``) those shared
        with it; ``scope="private"`` or ``"shared"`` searches one side only. ``mode`` as in
        ``TieredMemory.search`` (dense by default here: the two sides are searched apart, and only
        cosines compare across searches; in the text modes the sides merge by cosine)."""
        if scope not in SCOPES:
            raise InvalidInputError(f"scope must be one of {SCOPES}, got {scope!r}")
        hub, mem = self.hub, self.hub.mem
        options: dict[str, Any] = {"vector": vector, "k": k, "kinds": kinds, "where": where, "min_score": min_score,
                                   "mode": mode if query is not None else None}
        hits: list[Hit] = []
        if scope != "shared":
            hits += mem.search(query, namespace=self.namespace, **options)
        if scope != "private":
            with hub.lock:
                allowed = hub.visible(self.name)
            # Searched even when nothing is granted, so that bad arguments are refused the same way.
            # The same query twice costs one encoding: the engine caches query vectors.
            hits += mem.search(query, namespace=hub.shared_namespace, only_ids=allowed, **options)
        hits.sort(key=lambda hit: -(hit.score if hit.dense_score is None else hit.dense_score))
        return hits[:k]

    def recall(self, memory_id: str) -> Memory:
        """One of its memories, or a shared memory granted to it."""
        hub = self.hub
        namespace = hub.records.namespace_of(memory_id)
        if namespace == self.namespace:
            return hub.mem.get(memory_id, namespace=namespace)
        if namespace == hub.shared_namespace and hub.access(self.name, memory_id) is not None:
            return hub.mem.get(memory_id, namespace=namespace)
        raise hub.refuse(memory_id, self.name, "read")

    def update(self, memory_id: str, *, text: str | None = None, metadata: Mapping[str, Any] | None = None,
               kind: str | None = None, importance: float | None = None, vector: Any = None) -> Memory:
        """Change one of its memories, or (with read-write access) a shared one: see AgentHub.update."""
        hub, mem = self.hub, self.hub.mem
        changes = {name: value for name, value in (("text", text), ("metadata", metadata), ("kind", kind),
                                                    ("importance", importance), ("vector", vector))
                   if value is not None}
        namespace = hub.records.namespace_of(memory_id)
        if namespace == hub.shared_namespace and memory_id in hub.state.shared:
            return hub.update(memory_id, changes, by=self.name)
        if namespace != self.namespace:
            raise hub.refuse(memory_id, self.name, "update")
        mem.check_writable()
        text = None if text is None else check_text(text, mem.config.max_text_chars)
        metadata = None if metadata is None else check_metadata(metadata, mem.config.max_metadata_bytes,
                                                                mem.config.max_metadata_depth)
        vectors: np.ndarray | None = None
        if vector is not None:
            vectors = as_unit_vectors(vector, mem.dimension)
        elif text is not None:
            vectors = mem.encode([text])
        with hub.lock:
            old = hub.records.record(memory_id)
            if old is None:
                raise hub.refuse(memory_id, self.name, "update")
            delta = memory_bytes(text or old.text, old.metadata if metadata is None else metadata) - \
                memory_bytes(old.text, old.metadata)
            hub.charge(self.name, delta)
            result = mem.update(memory_id, namespace=self.namespace, text=text, metadata=metadata, kind=kind,
                                importance=importance, vector=vectors)
            hub.charged(self.name, delta)
        return result

    def forget(self, memory_id: str) -> None:
        """Delete one of its memories, or a shared memory it owns."""
        hub = self.hub
        namespace = hub.records.namespace_of(memory_id)
        if namespace == hub.shared_namespace and memory_id in hub.state.shared:
            hub.delete(memory_id, by=self.name)
            return
        if namespace != self.namespace:
            raise hub.refuse(memory_id, self.name, "delete")
        with hub.lock:
            old = hub.records.record(memory_id)
            if old is None:
                raise hub.refuse(memory_id, self.name, "delete")
            hub.usage(self.name)
            hub.mem.delete(memory_id, namespace=self.namespace)
            hub.charged(self.name, -memory_bytes(old.text, old.metadata))

    # -- sharing and notifications ---------------------------------------------------------

    def share(self, to_agents: Any, content: str | None = None, **options: Any) -> str:
        """``hub.share(self, to_agents, content, ...)``."""
        return self.hub.share(self, to_agents, content, **options)

    def shared_ids(self) -> list[str]:
        """The shared memories it may read now."""
        with self.hub.lock:
            return sorted(self.hub.visible(self.name))

    def notifications(self) -> list[Notification]:
        return self.hub.notifications(self.name)

    def ack(self, upto: int) -> int:
        return self.hub.ack(self.name, upto)

    def subscribe(self, callback: Callable[[Notification], None]) -> None:
        self.hub.subscribe(self.name, callback)

