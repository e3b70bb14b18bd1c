"""The agent hub's persisted state: records in the cold tier's ``extra`` database, mirrored in RAM.

Every record lives under ``hub/<user>/`` (so two users' hubs never read each other's records)::

    a/<agent>                 agent settings
    k/<agent>/<entry id>      one private key-value entry: [key, value, metadata, updated_at]
    m/<memory id>             a shared memory: owner, key, sensitive, last_updated_by, updated_at
    g/<memory id>/<agent>     a grant: "read" or "read-write"
    h/<memory id>/<version>   a version of a shared memory: text, metadata, kind, importance, by, at
    n/<agent>/<seq>           an undelivered (un-acked) notification
    s/<agent>                 the last notification sequence number issued to an agent
    p/<memory id>             an intent: hub records to write once an engine write has happened
    G                         the hub generation: bumped in every hub transaction, so that a
                              read-only process knows when to reload what it decides access with
                              (an envelope like the others: earlier versions load it and ignore it)

Values are envelopes, ``msgpack([sealed, payload])``; a sealed payload is AES-GCM with the record's
own key as associated data, so a sealed value copied under another key fails to open. RAM holds
exactly what the records say: :meth:`HubState.apply` is used both to load them at open and to
follow each committed write, so the two can never disagree.

A hub change that goes with an engine write (share, update, delete of a shared memory) is made
crash-consistent with an intent: (1) the intent, holding every hub record to write and the
memory's version the engine write will leave, is committed; (2) the engine writes; (3) the hub
records are committed and the intent removed, in one transaction. At open, an intent whose
expected version is what the engine holds is completed, any other is dropped: a crash at any
point leaves either the whole change or none of it, and running the recovery twice is harmless.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from tiered_memory.errors import EncryptionRequiredError, InvalidInputError, StorageError, TieredMemoryError
from tiered_memory.records import Memory

if TYPE_CHECKING:
    from tiered_memory.engine import TieredMemory

log = logging.getLogger(__name__)

Op = tuple[bytes, bytes | None]  # (key, value): a hub record to write; None deletes it
GENERATION = "G"  # hub/<user>/G: the hub generation, bumped by every hub transaction (see HubStore.refresh)


class HubLock:
    """The lock a hub's changes (and the reads they decide on) hold: this process's threads take
    turns, and on a store several processes write (PostgreSQL) so do the processes, through the
    store's exclusive lock of the hub's name. Whoever takes it first brings the hub's RAM state up
    to date (another process may have changed it), settling an intent a crashed process left: no
    living process is amid a change while the lock is held."""

    def __init__(self, name: str, mem: TieredMemory, store: HubStore, on_reload: Callable[[], None]) -> None:
        self._thread = threading.Lock()
        self._name = name
        self._mem = mem
        self._store = store
        self._on_reload = on_reload
        self._held: Any = None

    def __enter__(self) -> None:
        self._thread.acquire()
        if not self._mem.shared:
            return
        try:
            held = self._mem.cold.exclusive(self._name)
            held.__enter__()
        except BaseException:
            self._thread.release()
            raise
        self._held = held
        try:
            if self._store.refresh(recover=True):
                self._on_reload()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: object) -> None:
        held, self._held = self._held, None
        try:
            if held is not None:
                held.__exit__(None, None, None)
        finally:
            self._thread.release()


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def memory_bytes(text: str, metadata: Mapping[str, Any] | None) -> int:
    """What a private memory counts against its agent's quota: its text and metadata, serialized."""
    return len(pack([text, dict(metadata or {})]))


@dataclass(frozen=True, slots=True)
class Notification:
    """A change to a shared memory an agent can see: event is shared, updated, revoked, deleted, or
    conflict (a sync replaced the version this store had with another store's, or kept it)."""

    seq: int
    memory_id: str
    event: str
    version: int
    by: str | None
    at: float


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a shared memory, and who made it."""

    version: int
    text: str
    metadata: dict[str, Any]
    kind: str
    importance: float
    by: str | None
    at: float


@dataclass(frozen=True, slots=True)
class SharedInfo:
    """Who owns a shared memory, who may see it, and its last change."""

    memory_id: str
    owner: str
    key: str | None
    sensitive: bool
    grants: dict[str, str]
    last_updated_by: str | None
    updated_at: float


@dataclass
class AgentRecord:
    capabilities: list[str]
    private_quota_bytes: int | None
    shared_access: str  # "read-write", "read-only" or "none"
    created_at: float


@dataclass
class SharedRecord:
    owner: str
    key: str | None
    sensitive: bool
    last_updated_by: str | None
    updated_at: float


@dataclass
class HubState:
    """The RAM mirror of one user's hub records."""

    agents: dict[str, AgentRecord] = field(default_factory=dict)
    kv: dict[str, dict[str, tuple[str, bytes]]] = field(default_factory=dict)  # agent -> key -> (entry id, packed)
    kv_keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (agent, entry id) -> key
    shared: dict[str, SharedRecord] = field(default_factory=dict)
    shared_keys: dict[str, str] = field(default_factory=dict)  # key -> memory id
    grants: dict[str, dict[str, str]] = field(default_factory=dict)  # memory id -> agent -> access
    visible: dict[str, set[str]] = field(default_factory=dict)  # agent -> shared memory ids granted
    queues: dict[str, dict[int, Notification]] = field(default_factory=dict)  # agent -> seq -> notification
    last_seq: dict[str, int] = field(default_factory=dict)

    def apply(self, kind: str, parts: list[str], value: Any) -> None:
        """Follow one record (value None: deleted); ``parts`` are the key's fields after its type."""
        if kind == "a":
            if value is None:
                self.agents.pop(parts[0], None)
            else:
                self.agents[parts[0]] = AgentRecord(*value)
        elif kind == "k":
            self._apply_kv(parts[0], parts[1], value)
        elif kind == "m":
            self._apply_shared(parts[0], value)
        elif kind == "g":
            memory_id, agent = parts
            if value is None:
                self.grants.get(memory_id, {}).pop(agent, None)
                self.visible.get(agent, set()).discard(memory_id)
            else:
                self.grants.setdefault(memory_id, {})[agent] = value
                self.visible.setdefault(agent, set()).add(memory_id)
        elif kind == "n":
            agent, seq = parts[0], int(parts[1], 16)
            if value is None:
                self.queues.get(agent, {}).pop(seq, None)
            else:
                self.queues.setdefault(agent, {})[seq] = Notification(seq, *value)
        elif kind == "s":
            self.last_seq[parts[0]] = value

    def _apply_kv(self, agent: str, entry_id: str, value: Any) -> None:
        entries = self.kv.setdefault(agent, {})
        old_key = self.kv_keys.pop((agent, entry_id), None)
        if old_key is not None:
            entries.pop(old_key, None)
        if value is not None:
            key = value[0]
            entries[key] = (entry_id, pack(value))
            self.kv_keys[(agent, entry_id)] = key

    def _apply_shared(self, memory_id: str, value: Any) -> None:
        old = self.shared.pop(memory_id, None)
        if old is not None and old.key is not None:
            self.shared_keys.pop(old.key, None)
        if value is not None:
            record = SharedRecord(*value)
            self.shared[memory_id] = record
            if record.key is not None:
                self.shared_keys[record.key] = memory_id


class HubStore:
    """Reads and writes one user's hub records; keeps :class:`HubState` in step with them.

    It reaches the store only through its public surface: the records through an
    :class:`~tiered_memory.extra.ExtraStore` scoped to ``hub/<user>/`` (which also seals and
    opens with the store's key), memories through ``record``, ``version_of`` and ``namespace_of``.
    """

    def __init__(self, mem: TieredMemory, user: str) -> None:
        self.mem = mem
        self.prefix = f"hub/{user}/".encode()
        self.extra = mem.extra(self.prefix)
        self.state = HubState()
        self.generation = 0  # the hub generation `state` mirrors (see refresh)
        self.unsettled: str | None = None  # a shared memory whose coordinated change failed half-way
        self._writing = threading.Lock()  # one transaction at a time takes the next generation
        self._reloading = threading.Lock()

    # -- keys and envelopes ----------------------------------------------------------------

    def key(self, kind: str, *parts: str) -> bytes:
        return self.prefix + "/".join((kind, *parts)).encode()

    def _split(self, key: bytes) -> tuple[str, list[str]]:
        # Every field is "/"-free: agent names are checked, memory and entry ids are hub-made hex.
        kind, _, rest = key[len(self.prefix):].decode().partition("/")
        return kind, rest.split("/")

    def envelope(self, key: bytes, value: Any, sealed: bool) -> bytes:
        """A record value, sealed (bound to its key) when asked."""
        if not sealed:
            return pack([False, pack(value)])
        if not self.extra.can_seal:
            raise EncryptionRequiredError("sealed hub records need the store opened with encryption_key=")
        return pack([True, self.extra.seal(pack(value), key)])

    def open_envelope(self, key: bytes, data: bytes) -> Any:
        sealed, payload = unpack(data)
        if sealed:
            if not self.extra.can_seal:
                raise EncryptionRequiredError(
                    f"the agent hub holds sealed records ({key.decode()!r}): open the store with its encryption_key")
            payload = self.extra.open(payload, key)
        return unpack(payload)

    def op(self, kind: str, parts: tuple[str, ...], value: Any, sealed: bool = False) -> Op:
        key = self.key(kind, *parts)
        return (key, None if value is None else self.envelope(key, value, sealed))

    # -- reading ---------------------------------------------------------------------------

    def _items(self, key_prefix: bytes) -> list[tuple[bytes, bytes]]:
        return self.extra.items(key_prefix[len(self.prefix):])

    def items(self, kind: str, *parts: str) -> list[tuple[bytes, Any]]:
        """Decoded records of one type (and key prefix), in key order."""
        prefix = self.key(kind, *parts) + (b"/" if parts else b"")
        return [(key, self.open_envelope(key, data)) for key, data in self._items(prefix)]

    def load(self, recover: bool = True) -> None:
        """Complete or drop pending intents, then mirror every record in RAM. recover=False
        leaves intents alone (on a shared store, outside the hub's lock, one may be another
        process's change in progress)."""
        unsettled = self._recover() if recover else []
        state, generation = HubState(), 0
        plain_grants: list[list[str]] = []
        for key, data in self.extra.items():  # one read transaction: a consistent snapshot
            if key == self.key(GENERATION):
                generation = self.open_envelope(key, data)
                continue
            kind, parts = self._split(key)
            if kind not in ("h", "p"):  # history is read on demand; intents were settled above
                state.apply(kind, parts, self.open_envelope(key, data))
                if kind == "g" and not unpack(data)[0]:
                    plain_grants.append(parts)
        for memory_id, agent in plain_grants:  # a sensitive memory's grant must be sealed (issue 11.5)
            record = state.shared.get(memory_id)
            if record is not None and record.sensitive:
                log.warning("the agent hub %r holds an unsealed grant of sealed memory %r to %r: it was not "
                            "written by this library with the store's key; ignored", self.prefix.decode(),
                            memory_id, agent)
                state.apply("g", [memory_id, agent], None)
        self._follow(unsettled, state)
        self.state, self.generation = state, generation  # replaced whole: a reader thread sees one or the other

    def stored_generation(self) -> int:
        """The hub generation on disk: bumped by every hub transaction (see refresh)."""
        key = self.key(GENERATION)
        found = self._items(key)
        return self.open_envelope(key, found[0][1]) if found else 0

    def refresh(self, recover: bool = False) -> bool:
        """Reload the records if another process changed them since the last load; returns
        whether it did. In a read-only process (the writer changes the hub) and on a shared store
        (other processes do, each under the hub's lock, :class:`HubLock`).

        Every hub transaction bumps the hub generation, so one small read per hub call tells
        whether what this process decides access with is still what the store says. The only
        writer of an LMDB store needs none of this: it follows its own writes. recover: settle
        intents too (only under the hub's lock: no other process is then amid a change)."""
        if not (self.mem.read_only or self.mem.shared) or self.stored_generation() == self.generation:
            return False
        with self._reloading:
            if self.stored_generation() != self.generation:
                self.load(recover=recover and not self.mem.read_only)
                return True
        return False

    def engine_version(self, memory_id: str) -> int:
        """The version the engine holds for a memory, 0 if it holds none."""
        return self.mem.version_of(memory_id)

    def record(self, memory_id: str) -> Memory | None:
        """A memory as stored, without counting an access or promoting it."""
        return self.mem.record(memory_id)

    def namespace_of(self, memory_id: str) -> str | None:
        if not isinstance(memory_id, str):
            return None
        try:
            return self.mem.namespace_of(memory_id)
        except InvalidInputError:  # not even a well-formed id: no memory has it
            return None

    # -- writing ---------------------------------------------------------------------------

    def commit(self, ops: Iterable[Op]) -> None:
        """Write records in one durable transaction, then follow them in RAM."""
        ops = list(ops)
        self._write(ops)
        self._follow(ops)

    def _write(self, ops: list[Op]) -> None:
        if self.unsettled is not None:
            raise StorageError(f"an earlier change to shared memory {self.unsettled!r} failed half-way; close and "
                               "reopen the store, which completes or undoes it, before changing the hub again")
        self._transaction(ops)

    def _transaction(self, ops: list[Op]) -> None:
        """One durable transaction of hub records, with the next hub generation."""
        with self._writing:
            following = self.generation + 1
            self.extra.write([*ops, self.op(GENERATION, (), following)])
            self.generation = following

    def _follow(self, ops: list[Op], state: HubState | None = None) -> None:
        state = self.state if state is None else state
        for key, data in ops:
            kind, parts = self._split(key)
            if kind not in ("h", "p"):
                state.apply(kind, parts, None if data is None else self.open_envelope(key, data))

    def coordinated(self, memory_id: str, expect_version: int, ops: list[Op], engine_write: Callable[[], Any]) -> Any:
        """Commit hub records with one engine write that leaves the memory at ``expect_version``
        (0: deleted), crash-consistently: intent, engine write, records (see the module doc)."""
        intent = (self.key("p", memory_id), pack([expect_version, [[key, data] for key, data in ops]]))
        self._write([intent])
        # Until the intent is settled RAM may lack what the disk will hold after recovery (and
        # later notifications would reuse its sequence numbers): refuse hub writes meanwhile.
        self.unsettled = memory_id
        try:
            result = engine_write()
        except BaseException:
            try:
                written = self.engine_version(memory_id) == expect_version  # e.g. maintenance failed after it
                self._settle(memory_id, ops if written else [])
            except TieredMemoryError:  # e.g. the store closed meanwhile: the intent stays, the next open settles it
                pass
            raise
        self._settle(memory_id, ops)
        return result

    def _settle(self, memory_id: str, ops: list[Op]) -> None:
        self._transaction([*ops, (self.key("p", memory_id), None)])
        self.unsettled = None
        self._follow(ops)

    def _recover(self) -> list[Op]:
        """Settle intents; returns the records of completed ones a read-only opener could not write."""
        unsettled: list[Op] = []
        if not self.mem.read_only:
            self.generation = self.stored_generation()  # the writer's next transaction follows the disk's
        for key, data in self._items(self.key("p", "")):
            memory_id = self._split(key)[1][0]
            try:
                expect, records = unpack(data)
                ops: list[Op] = [(bytes(k), None if v is None else bytes(v)) for k, v in records]
            except (ValueError, TypeError, msgpack.UnpackException) as err:
                raise StorageError(f"the agent hub's intent {key.decode()!r} is unreadable; the store is "
                                   "damaged (restore it from a backup)") from err
            done = self.engine_version(memory_id) == expect
            if self.mem.read_only:
                unsettled.extend(ops if done else [])  # seen in RAM now, written by the next writer
                continue
            self._transaction([*(ops if done else []), (key, None)])
        return unsettled
