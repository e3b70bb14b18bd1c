"""Agents sharing one store: private memory per agent, shared memories with grants, coordinated updates.

Namespace scheme: a hub serves one user (tenant). ``"<user>/<agent>"`` holds an agent's private
memories and ``"<user>/shared"`` every memory that user's agents share; hub records live under
``hub/<user>/`` (see :mod:`tiered_memory.agents.store`). User and agent names hold no ``/``, so two
users' namespaces and records can never overlap. An agent's searches cover its own namespace and,
in the shared one, exactly the memories granted to it (``only_ids``), so a revoked grant stops
showing at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import astuple
from typing import TYPE_CHECKING, Any

from tiered_memory.agents.notify import Notifier
from tiered_memory.agents.store import (
    AgentRecord,
    HubLock,
    HubState,
    HubStore,
    Notification,
    Op,
    SharedInfo,
    SharedRecord,
    Version,
    memory_bytes,
)
from tiered_memory.encoders import as_unit_vectors
from tiered_memory.errors import (
    ConfigError,
    EncryptionRequiredError,
    InvalidInputError,
    MemoryNotFoundError,
    PermissionDenied,
    QuotaExceededError,
)
from tiered_memory.records import Memory, check_importance, check_label, check_metadata, check_text, new_id

if TYPE_CHECKING:
    import numpy as np

    from tiered_memory.agents.agent import Agent
    from tiered_memory.engine import TieredMemory
    from tiered_memory.sync.endpoint import Conflict

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
SHARED = "shared"  # the shared namespace's last part; no agent may take this name
GRANTS = ("read", "read-write")
_RANK = {"read": 0, "read-write": 1}  # a grant onward may raise (or keep) a grant, never lower it
SHARED_ACCESS = ("read-write", "read-only", "none")
CHANGES = frozenset({"text", "metadata", "kind", "importance", "vector"})
_KEEP: Any = object()  # register(): a setting left out keeps its registered value


def _hubs_of(mem: TieredMemory) -> dict[str, AgentHub]:
    """The hubs open on a store, by user. Kept on the store itself: a hub refers to its store, so a
    registry outside it (even a WeakKeyDictionary) would keep every store alive."""
    return mem.attachment("agent hubs", dict)


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(f"{what} name must be 1-64 letters, digits, '_', '.', ':' or '-' (starting with "
                                f"a letter or digit; no '/', which separates user and agent), got {name!r}")
    return name


def hub_for(mem: TieredMemory, user: str = "default", *, seal_shared: bool = False) -> AgentHub:
    """The store's hub for one user: the open one, or a new one."""
    hub = _hubs_of(mem).get(user)
    if hub is None:
        return AgentHub(mem, user, seal_shared=seal_shared)
    if seal_shared:
        hub.seal_shared()
    return hub


class AgentHub:
    """Registers one user's agents over one store and coordinates what they share.

    >>> hub = mem.agents()                                                 # doctest: +SKIP
    >>> analyst = hub.register("data-analyst", shared_access="read-write")
    >>> writer = hub.register("report-generator", shared_access="read-only")
    >>> mid = hub.share(analyst, [writer], "Q3 revenue grew 12%", kind="finding")
    """

    def __init__(self, mem: TieredMemory, user: str = "default", *, seal_shared: bool = False) -> None:
        self.user = check_name(user, "user")
        mem.check_open()
        if user in _hubs_of(mem):
            raise ConfigError(f"this store already has a hub for user {user!r}; use mem.agents({user!r}) to get it")
        self.mem = mem
        self.shared_namespace = f"{user}/{SHARED}"
        self._store = HubStore(mem, user)
        # Hub state and quota accounting, across processes on a shared store; before the engine's locks.
        self._lock = HubLock(f"hub/{self.user}", mem, self._store, self._usage_changed)
        self._notifier = Notifier(self._store, self._lock, self._agent_name)
        self._usage: dict[str, int] = {}
        if mem.shared:
            with self._lock:  # another process may be amid a change of the hub: the lock waits for it
                self._store.load()
        else:
            self._store.load()
        if seal_shared:
            self.seal_shared()
        _hubs_of(mem)[user] = self
        mem.sync_endpoint.add_conflict_listener(self._synced_conflicts)

    @property
    def state(self) -> HubState:
        return self._store.state

    @property
    def lock(self) -> HubLock:
        """What changes of the hub (and the reads they decide on) hold: the agents' handles take it."""
        return self._lock

    @property
    def records(self) -> HubStore:
        """The hub's persisted records (agents' entries are written through it)."""
        return self._store

    # -- notifications (the notifier's) -----------------------------------------------------

    def notifications(self, agent: Any) -> list[Notification]:
        """An agent's un-acknowledged notifications, in order."""
        return self._notifier.notifications(agent)

    def ack(self, agent: Any, upto: int) -> int:
        """Acknowledge an agent's notifications up to sequence number ``upto``; returns how many."""
        return self._notifier.ack(agent, upto)

    def subscribe(self, agent: Any, callback: Callable[[Notification], None]) -> None:
        """Call ``callback(notification)`` for each of the agent's notifications, in order, from the
        thread that made the change, once it is durable; each is acknowledged after its callbacks
        return. Un-acknowledged ones (e.g. from before a restart) are delivered now."""
        self._notifier.subscribe(agent, callback)

    def deliver(self, agents: Iterable[str] | None = None) -> None:
        """Hand pending notifications to subscribers; a callback that raises is retried next time."""
        self._notifier.deliver(agents)

    def namespace(self, agent: str) -> str:
        return f"{self.user}/{agent}"

    def seal_shared(self) -> None:
        """Seal every memory shared from now on (see TieredMemory.seal_namespace)."""
        if not self.mem.is_sealed(self.shared_namespace):
            self.mem.seal_namespace(self.shared_namespace)

    # -- agents ----------------------------------------------------------------------------

    def register(self, name: str, *, capabilities: Iterable[str] | None = None, private_quota_bytes: Any = _KEEP,
                 shared_access: str | None = None, sealed: bool = False) -> Agent:
        """Add an agent, or change a registered one's settings (those left out are kept); returns its handle.

        ``shared_access`` caps what it may do with shared memories ("read-write", the default,
        "read-only" or "none"); ``private_quota_bytes`` (default None: no quota) bounds its private
        memory; ``sealed=True`` seals its private memories and key-value entries at rest, for good."""
        from tiered_memory.agents.agent import Agent

        name = check_name(name, "agent")
        if name == SHARED:
            raise InvalidInputError(f"agent name {SHARED!r} is reserved for the shared namespace")
        if isinstance(capabilities, str):
            raise InvalidInputError(f"capabilities takes a list, e.g. [{capabilities!r}]")
        caps = None if capabilities is None else [check_label(cap, "capability") for cap in capabilities]
        quota = private_quota_bytes
        if quota is not _KEEP and quota is not None and (isinstance(quota, bool) or not isinstance(quota, int)
                                                          or quota < 0):
            raise InvalidInputError(f"private_quota_bytes must be an int >= 0 or None, got {quota!r}")
        if shared_access is not None and shared_access not in SHARED_ACCESS:
            raise InvalidInputError(f"shared_access must be one of {SHARED_ACCESS}, got {shared_access!r}")
        if not isinstance(sealed, bool):
            raise InvalidInputError(f"sealed must be True or False, got {sealed!r}")
        with self._lock:
            existing = self.state.agents.get(name) or AgentRecord([], None, "read-write", self.mem.clock())
            record = AgentRecord(existing.capabilities if caps is None else caps,
                                 existing.private_quota_bytes if quota is _KEEP else quota,
                                 shared_access or existing.shared_access, existing.created_at)
            if sealed and not self.mem.is_sealed(self.namespace(name)):
                if self.state.kv.get(name):
                    raise InvalidInputError(f"agent {name!r} already holds unsealed key-value entries; seal an "
                                            "agent when registering it first")
                self.mem.seal_namespace(self.namespace(name))  # refuses a namespace with unsealed memories
            if record != self.state.agents.get(name):
                self._store.commit([self._store.op("a", (name,), astuple(record))])
        return Agent(self, name)

    def agent(self, name: str) -> Agent:
        """The handle of a registered agent."""
        from tiered_memory.agents.agent import Agent

        self._agent_name(name)
        return Agent(self, name)

    def agent_names(self) -> list[str]:
        self.refresh()
        return sorted(self.state.agents)

    def find(self, capability: str) -> list[str]:
        """Agents registered with this capability."""
        self.refresh()
        return sorted(name for name, rec in self.state.agents.items() if capability in rec.capabilities)

    def refresh(self) -> None:
        """In a read-only process or on a shared store, reload the hub's records if another
        process changed them (one small read when it did not): grants, revokes and deletes apply
        to this process's next call too."""
        if self._store.refresh():
            self._usage_changed()

    def _usage_changed(self) -> None:
        self._usage.clear()  # counted again from the records: another process may have changed them

    def _agent_name(self, agent: Any) -> str:
        self.refresh()
        name = getattr(agent, "name", agent)
        if not isinstance(name, str) or name not in self.state.agents:
            raise InvalidInputError(f"no agent {name!r} is registered with user {self.user!r}'s hub; "
                                    f"register it first (registered: {self.agent_names()})")
        return name

    def _agent_names(self, agents: Any) -> list[str]:
        if isinstance(agents, str) or hasattr(agents, "name"):
            agents = [agents]
        return list(dict.fromkeys(self._agent_name(agent) for agent in agents))

    # -- access ----------------------------------------------------------------------------

    def access(self, agent: Any, memory_id: str) -> str | None:
        """What an agent may do with a shared memory: "read", "read-write" or None."""
        name = self._agent_name(agent)
        grant = self.state.grants.get(memory_id, {}).get(name)
        ceiling = self.state.agents[name].shared_access
        if grant is None or ceiling == "none":
            return None
        return "read" if ceiling == "read-only" else grant

    def visible(self, agent: str) -> set[str]:
        """The shared memories an agent may read now (a copy)."""
        self.refresh()
        if self.state.agents[agent].shared_access == "none":
            return set()
        return set(self.state.visible.get(agent, ()))

    def refuse(self, memory_id: Any, agent: str, action: str) -> PermissionDenied | MemoryNotFoundError:
        """The error for an agent reaching a memory it may not: refused if it belongs to this user,
        not found otherwise (another user's memories are not even confirmed to exist)."""
        namespace = self._store.namespace_of(memory_id)
        if namespace is not None and namespace.startswith(f"{self.user}/"):
            return PermissionDenied(f"agent {agent!r} may not {action} memory {memory_id!r}; "
                                    "only its own memories and shared memories granted to it are open to it")
        return MemoryNotFoundError(f"no memory with id {memory_id!r} for agent {agent!r}")

    def _shared(self, memory_id: Any, agent: str, need: str, action: str) -> SharedRecord:
        """The record of a shared memory the agent has ``need`` ("read", "read-write", "owner") on."""
        record = self.state.shared.get(memory_id) if isinstance(memory_id, str) else None
        have = self.access(agent, memory_id) if record is not None else None
        if record is None or have is None:
            raise self.refuse(memory_id, agent, action)
        if need == "read-write" and have != need:
            why = "is registered read-only" if self.state.agents[agent].shared_access == "read-only" else \
                "was granted read access only"
            raise PermissionDenied(f"agent {agent!r} may not {action} shared memory {memory_id!r}: it {why}")
        if need == "owner" and record.owner != agent:
            raise PermissionDenied(f"agent {agent!r} may not {action} shared memory {memory_id!r}: only its owner "
                                   f"{record.owner!r} may")
        return record

    # -- sharing ---------------------------------------------------------------------------

    def share(self, from_agent: Any, to_agents: Any, content: str | None = None, *, memory_id: str | None = None,
              kind: str = "fact", metadata: Mapping[str, Any] | None = None, access: str = "read",
              key: str | None = None, importance: float = 0.5, vector: Any = None, sensitive: bool = False) -> str:
        """Share new ``content``, a copy of one of ``from_agent``'s private memories, or (more
        grants on) a shared memory, with ``to_agents``; returns the shared memory's id.

        The sharer owns a new shared memory; ``key`` names it for ``Agent.get(key)``."""
        owner = self._agent_name(from_agent)
        targets = [name for name in self._agent_names(to_agents) if name != owner]
        if access not in GRANTS:
            raise InvalidInputError(f"access must be one of {GRANTS}, got {access!r}")
        if (content is None) == (memory_id is None):
            raise InvalidInputError("share() takes either content (a text) or memory_id, not both or neither")
        for name in targets:
            ceiling = self.state.agents[name].shared_access
            if ceiling == "none" or (access == "read-write" and ceiling == "read-only"):
                raise PermissionDenied(f"agent {name!r} is registered with shared_access={ceiling!r}, which does "
                                       f"not allow access={access!r}; grant less or register it again")
        if memory_id is not None and memory_id in self.state.shared:
            self._grant_more(owner, targets, memory_id, access)
        else:
            memory_id = self._share_new(owner, targets, content, memory_id, kind, metadata, access, key,
                                        importance, vector, sensitive)
        self.deliver(targets)
        return memory_id

    def _grant_more(self, agent: str, targets: list[str], memory_id: str, access: str) -> None:
        """Grant onward: the owner sets any grant (adds, raises, lowers); a read-write grantee adds
        grants and raises them up to its own level, and never lowers an existing one (the owner's
        included): a partial revoke is the owner's alone, like a revoke."""
        with self._lock:
            record = self._shared(memory_id, agent, "read-write", "share")
            if record.owner != agent:
                own = self.access(agent, memory_id)
                granted = self.state.grants.get(memory_id, {})
                lowered = [name for name in targets if _RANK.get(granted.get(name), -1) > _RANK[access]]
                if lowered or _RANK[access] > _RANK.get(own, -1):
                    why = (f"it would lower the grant of {lowered} to {access!r}, which only the owner "
                           f"{record.owner!r} may do (or revoke)") if lowered else \
                        f"it would grant more than its own {own!r} access"
                    raise PermissionDenied(f"agent {agent!r} may not share memory {memory_id!r} onward with "
                                           f"access={access!r}: {why}; nothing was changed")
            version = self._store.engine_version(memory_id)
            now = self.mem.clock()
            # A sensitive memory's grants are sealed (bound to their key): someone who can write the
            # files but has no key cannot grant himself a sealed memory (issue 11.5).
            ops = [self._store.op("g", (memory_id, name), access, sealed=record.sensitive) for name in targets]
            self._store.commit(ops + self._notifier.ops(targets, memory_id, "shared", version, agent, now))

    def _share_new(self, owner: str, targets: list[str], content: str | None, source_id: str | None, kind: str,
                   metadata: Mapping[str, Any] | None, access: str, key: str | None, importance: float,
                   vector: Any, sensitive: bool) -> str:
        mem = self.mem
        mem.check_writable()
        if self.state.agents[owner].shared_access != "read-write":
            raise PermissionDenied(f"agent {owner!r} has shared_access={self.state.agents[owner].shared_access!r}"
                                   "; only read-write agents add shared memories")
        if key is not None and check_label(key, "key") in self.state.shared_keys:
            raise InvalidInputError(f"a shared memory is already named {key!r}; update it or choose another key")
        if not isinstance(sensitive, bool):
            raise InvalidInputError(f"sensitive must be True or False, got {sensitive!r}")
        vectors = None if vector is None else as_unit_vectors(vector, mem.dimension)
        if source_id is not None:  # a copy of one of the owner's private memories
            if self._store.namespace_of(source_id) != self.namespace(owner):
                raise self.refuse(source_id, owner, "share")
            source = mem.get(source_id, namespace=self.namespace(owner))
            content, kind, metadata = source.text, source.kind, source.metadata
            importance, sensitive = source.importance, sensitive or source.sensitive
            if vectors is None:
                found = mem.vector(source_id)
                vectors = None if found is None else as_unit_vectors(found, mem.dimension)
        text = check_text(content, mem.config.max_text_chars)
        metadata = check_metadata(metadata, mem.config.max_metadata_bytes, mem.config.max_metadata_depth)
        kind, importance = check_label(kind, "kind"), check_importance(importance)
        sensitive = sensitive or mem.is_sealed(self.shared_namespace)
        if sensitive and not mem.has_key:
            raise EncryptionRequiredError("sensitive shared memories are sealed at rest: open the store with "
                                          "encryption_key=")
        if vectors is None:
            vectors = mem.encode([text])  # before anything is written: a failure leaves no trace
        memory_id, now = new_id(), mem.clock()
        with self._lock:
            if key is not None and key in self.state.shared_keys:
                raise InvalidInputError(f"a shared memory is already named {key!r}; update it or choose another key")
            grants = {owner: "read-write", **{name: access for name in targets}}
            ops = [self._store.op("m", (memory_id,), [owner, key, sensitive, owner, now], sealed=sensitive)]
            ops += [self._store.op("g", (memory_id, name), grant, sealed=sensitive) for name, grant in grants.items()]
            ops.append(self._history_op(memory_id, 1, text, metadata, kind, importance, owner, now, sensitive))
            ops += self._notifier.ops(targets, memory_id, "shared", 1, owner, now)
            self._store.coordinated(memory_id, 1, ops, lambda: mem.add(
                text, namespace=self.shared_namespace, kind=kind, metadata=metadata, importance=importance,
                vector=vectors, id=memory_id, sensitive=sensitive))
        return memory_id

    def revoke(self, memory_id: str, agents: Any, *, by: Any = None) -> None:
        """Take agents' access to a shared memory away, at once. ``by``, if given, must be its owner."""
        targets = self._agent_names(agents)
        with self._lock:
            record = self.state.shared.get(memory_id) if isinstance(memory_id, str) else None
            if record is None:
                raise MemoryNotFoundError(f"no shared memory {memory_id!r} in user {self.user!r}'s hub")
            if by is not None:
                self._shared(memory_id, self._agent_name(by), "owner", "revoke grants on")
            if record.owner in targets:
                raise InvalidInputError(f"{record.owner!r} owns memory {memory_id!r}; delete it instead of "
                                        "revoking its owner's access")
            targets = [name for name in targets if name in self.state.grants.get(memory_id, {})]
            if not targets:
                return
            ops = [self._store.op("g", (memory_id, name), None) for name in targets]
            ops += self._notifier.ops(targets, memory_id, "revoked", self._store.engine_version(memory_id),
                                    None if by is None else self._agent_name(by), self.mem.clock())
            self._store.commit(ops)
        self.deliver(targets)

    # -- coordinated changes ---------------------------------------------------------------

    def update(self, memory_id: str, changes: Mapping[str, Any], *, by: Any) -> Memory:
        """Change a shared memory for an agent allowed to: the version is bumped, the new version
        recorded in its history, and every other agent with access notified (after it is durable)."""
        agent = self._agent_name(by)
        if not isinstance(changes, Mapping) or not changes or not set(changes) <= CHANGES:
            raise InvalidInputError(f"changes must be a non-empty mapping with keys among {sorted(CHANGES)}, "
                                    f"got {changes!r}")
        mem = self.mem
        mem.check_writable()
        self._shared(memory_id, agent, "read-write", "update")
        text = changes.get("text")
        text = None if text is None else check_text(text, mem.config.max_text_chars)
        metadata = changes.get("metadata")
        metadata = None if metadata is None else check_metadata(metadata, mem.config.max_metadata_bytes,
                                                                mem.config.max_metadata_depth)
        kind = None if changes.get("kind") is None else check_label(changes["kind"], "kind")
        importance = None if changes.get("importance") is None else check_importance(changes["importance"])
        vectors: np.ndarray | None = None
        if changes.get("vector") is not None:
            vectors = as_unit_vectors(changes["vector"], mem.dimension)
        elif text is not None:
            vectors = mem.encode([text])
        with self._lock:
            record = self._shared(memory_id, agent, "read-write", "update")  # again: a revoke may have come
            old = self._store.record(memory_id)
            if old is None:
                raise MemoryNotFoundError(f"shared memory {memory_id!r} is gone from the store")
            version, now = old.version + 1, mem.clock()
            others = [name for name in self.state.grants.get(memory_id, {})
                      if name != agent and self.access(name, memory_id)]
            ops = [self._store.op("m", (memory_id,), [record.owner, record.key, record.sensitive, agent, now],
                                  sealed=record.sensitive),
                   self._history_op(memory_id, version, text or old.text,
                                    old.metadata if metadata is None else metadata, kind or old.kind,
                                    old.importance if importance is None else importance, agent, now,
                                    record.sensitive)]
            ops += self._notifier.ops(others, memory_id, "updated", version, agent, now)
            result = self._store.coordinated(memory_id, version, ops, lambda: mem.update(
                memory_id, namespace=self.shared_namespace, text=text, kind=kind, metadata=metadata,
                importance=importance, vector=vectors))
        self.deliver(others)
        return result

    def delete(self, memory_id: str, *, by: Any) -> None:
        """Delete a shared memory, its grants and its history; only its owner may."""
        agent = self._agent_name(by)
        self.mem.check_writable()
        with self._lock:
            self._shared(memory_id, agent, "owner", "delete")
            grants = self.state.grants.get(memory_id, {})
            others = [name for name in grants if name != agent and self.access(name, memory_id)]
            history = [key for key, _ in self._store.items("h", memory_id)]
            ops: list[Op] = [(key, None) for key in history]
            ops += [self._store.op("m", (memory_id,), None)]
            ops += [self._store.op("g", (memory_id, name), None) for name in grants]
            ops += self._notifier.ops(others, memory_id, "deleted", self._store.engine_version(memory_id), agent,
                                    self.mem.clock())
            self._store.coordinated(memory_id, 0, ops,
                                    lambda: self.mem.delete(memory_id, namespace=self.shared_namespace))
        self.deliver(others)

    def _synced_conflicts(self, conflicts: list[Conflict]) -> None:
        """A sync resolved conflicts (tiered_memory.sync): the agents with access to a conflicted
        shared memory are notified ("conflict": the version they knew may have been replaced by
        another store's). Committed after the sync's batch, in a transaction of its own."""
        if self.mem.read_only:
            return
        told: list[str] = []
        for conflict in conflicts:
            if conflict.namespace != self.shared_namespace:
                continue
            with self._lock:
                agents = [name for name in self.state.grants.get(conflict.memory_id, {})
                          if name in self.state.agents and self.access(name, conflict.memory_id)]
                if not agents:
                    continue
                self._store.commit(self._notifier.ops(agents, conflict.memory_id, "conflict",
                                                    self._store.engine_version(conflict.memory_id), None,
                                                    self.mem.clock()))
            told += agents
        if told:
            self.deliver(list(dict.fromkeys(told)))

    def _history_op(self, memory_id: str, version: int, text: str, metadata: dict[str, Any], kind: str,
                    importance: float, by: str | None, at: float, sensitive: bool) -> Op:
        return self._store.op("h", (memory_id, f"{version:010d}"),
                              [version, text, metadata, kind, importance, by, at], sealed=sensitive)

    # -- reading shared state --------------------------------------------------------------

    def history(self, memory_id: str, *, by: Any = None) -> list[Version]:
        """Every version of a shared memory, oldest first, with who made it."""
        self.refresh()
        if by is not None:
            self._shared(memory_id, self._agent_name(by), "read", "read the history of")
        elif memory_id not in self.state.shared:
            raise MemoryNotFoundError(f"no shared memory {memory_id!r} in user {self.user!r}'s hub")
        return [Version(*value) for _, value in self._store.items("h", memory_id)]

    def info(self, memory_id: str) -> SharedInfo:
        self.refresh()
        record = self.state.shared.get(memory_id)
        if record is None:
            raise MemoryNotFoundError(f"no shared memory {memory_id!r} in user {self.user!r}'s hub")
        return SharedInfo(memory_id, record.owner, record.key, record.sensitive,
                          dict(self.state.grants.get(memory_id, {})), record.last_updated_by, record.updated_at)

    # -- quota -----------------------------------------------------------------------------

    def usage(self, agent: str) -> int:
        """Bytes an agent's private key-value entries and memories take (serialized). Holds the lock."""
        if agent not in self._usage:
            kv = sum(len(packed) for _, packed in self.state.kv.get(agent, {}).values())
            records = [self.mem.record(memory_id) for memory_id in self.mem.ids(self.namespace(agent))]
            self._usage[agent] = kv + sum(memory_bytes(r.text, r.metadata) for r in records if r is not None)
        return self._usage[agent]

    def charge(self, agent: str, delta: int) -> None:
        """Check that growing an agent's private memory by delta bytes fits its quota. Holds the lock."""
        quota = self.state.agents[agent].private_quota_bytes
        used = self.usage(agent)
        if quota is not None and delta > 0 and used + delta > quota:
            raise QuotaExceededError(
                f"agent {agent!r} would use {used + delta:,} bytes of private memory, over its "
                f"private_quota_bytes={quota:,} (it uses {used:,}); forget() memories or delete() keys it no "
                "longer needs, or register it again with a larger private_quota_bytes")

    def charged(self, agent: str, delta: int) -> None:
        self._usage[agent] = self.usage(agent) + delta

