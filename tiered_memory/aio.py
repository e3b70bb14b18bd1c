"""asyncio access to a store: :class:`AsyncTieredMemory` runs each call in a thread pool.

For servers and agent frameworks built on asyncio (FastAPI, LangGraph): ``await mem.search(...)``
never blocks the event loop, and many calls run at once. The store itself is thread-safe
(searches share a readers-writer lock, writes take it alone, see ``tiered_memory.locks``), so
the wrapper only moves the work off the loop; results and errors are exactly the sync API's.

Pool size. Threads pay off where the work releases the GIL: the ONNX encoder (one intra-op
thread per call, so concurrent calls use the cores side by side), hnswlib's ``knn_query``,
numpy scans of int8 codes, and an LMDB commit's fsync. Two threads per core keep every core busy
with one call while another waits for an fsync or the write lock; beyond that, threads only
queue on the GIL and on the write lock, and each reading thread holds an LMDB reader slot
(``MemoryConfig.max_readers``, 256). Hence ``2 x cpu_count`` threads, at least 4, at most 32.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from tiered_memory.engine import DEFAULT_NAMESPACE, MaintenanceReport, StoreStats, TieredMemory
from tiered_memory.errors import ConfigError, StoreClosedError
from tiered_memory.records import Hit, Memory, Tier
from tiered_memory.tiering.expiry import UNCHANGED

T = TypeVar("T")


def default_workers() -> int:
    """Threads of the pool when ``max_workers`` is not given: 2 per core, from 4 to 32."""
    return max(4, min(32, 2 * (os.cpu_count() or 1)))


class AsyncTieredMemory:
    """A :class:`~tiered_memory.TieredMemory` with ``async`` methods that run in a thread pool.

    >>> async with AsyncTieredMemory("./agent_memory") as mem:          # doctest: +SKIP
    ...     mid = await mem.add("User prefers code examples", namespace="user_123")
    ...     hits = await mem.search("How should I explain things?", namespace="user_123")

    Give it an open store (which :meth:`close` leaves open for its owner) or the arguments of
    ``TieredMemory(...)`` (it opens the store, here or with ``await AsyncTieredMemory.open(...)``,
    and closes it). The sync store stays available as ``.memory``.
    """

    def __init__(self, store: TieredMemory | str | os.PathLike[str], /, *, max_workers: int | None = None,
                 **options: Any) -> None:
        workers = default_workers() if max_workers is None else max_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"max_workers must be a positive int, got {max_workers!r}")
        if isinstance(store, TieredMemory):
            if options:
                raise ConfigError(f"options {sorted(options)} are for opening a store; this one is open already")
            self.memory, self._owns_store = store, False
        else:
            self.memory, self._owns_store = TieredMemory(store, **options), True
        if workers >= self.memory.config.max_readers:
            if self._owns_store:
                self.memory.close()
            raise ConfigError(f"max_workers={workers} would let more threads read at once than "
                              f"MemoryConfig.max_readers={self.memory.config.max_readers}; use fewer workers")
        self.max_workers = workers
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tiered-memory-aio")
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        self._closing = False

    @classmethod
    async def open(cls, path: str | os.PathLike[str], /, *, max_workers: int | None = None,
                   **options: Any) -> AsyncTieredMemory:
        """Open a store without blocking the loop (opening reads LMDB and may load the encoder)."""
        return await asyncio.to_thread(functools.partial(cls, path, max_workers=max_workers, **options))

    # -- running calls ---------------------------------------------------------------------

    def _run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Submit one sync call to the pool (with the caller's context variables, as
        asyncio.to_thread does); the returned future resolves to its result or raises its error."""
        if self._closing:
            raise StoreClosedError(f"the async store at {self.memory.path} is closed or closing; open a new one")
        future = self._executor.submit(contextvars.copy_context().run, function, *args, **kwargs)
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return asyncio.wrap_future(future)

    @property
    def in_flight(self) -> int:
        """Calls submitted and not finished."""
        return len(self._in_flight)

    @property
    def closed(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Refuse new calls, wait for those in flight (a write in progress completes and is
        durable), then close the store if this wrapper opened it. Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        pending = list(self._in_flight)
        if pending:
            await asyncio.gather(*(asyncio.wrap_future(future) for future in pending), return_exceptions=True)
        try:
            if self._owns_store:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._executor, self.memory.close)
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> AsyncTieredMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the store's methods, awaitable (arguments and errors as in TieredMemory) ------------

    async def add(self, text: str, *, namespace: str = DEFAULT_NAMESPACE, **options: Any) -> str:
        """:meth:`TieredMemory.add`."""
        return await self._run(self.memory.add, text, namespace=namespace, **options)

    async def add_many(self, texts: Sequence[str], *, namespace: str = DEFAULT_NAMESPACE,
                       **options: Any) -> list[str]:
        """:meth:`TieredMemory.add_many` (one durable transaction, encoded in one batch)."""
        return await self._run(self.memory.add_many, texts, namespace=namespace, **options)

    async def get(self, memory_id: str, *, namespace: str | None = None) -> Memory:
        """:meth:`TieredMemory.get`."""
        return await self._run(self.memory.get, memory_id, namespace=namespace)

    async def search(self, query: str | None = None, *, vector: Any = None,
                     namespace: str | Sequence[str] = DEFAULT_NAMESPACE, k: int = 10,
                     kinds: Iterable[str] | None = None, where: Mapping[str, Any] | None = None,
                     min_score: float | None = None, only_ids: Collection[str] | None = None,
                     mode: str | None = None, since: Any = None, until: Any = None) -> list[Hit]:
        """:meth:`TieredMemory.search`."""
        return await self._run(self.memory.search, query, vector=vector, namespace=namespace, k=k, kinds=kinds,
                               where=where, min_score=min_score, only_ids=only_ids, mode=mode, since=since,
                               until=until)

    async def update(self, memory_id: str, *, expires_at: Any = UNCHANGED, **changes: Any) -> Memory:
        """:meth:`TieredMemory.update` (``expires_at=None`` clears the expiry, as there)."""
        return await self._run(self.memory.update, memory_id, expires_at=expires_at, **changes)

    async def delete(self, memory_id: str, *, namespace: str | None = None) -> None:
        """:meth:`TieredMemory.delete`."""
        await self._run(self.memory.delete, memory_id, namespace=namespace)

    async def extend(self, memory_id: str, *, ttl_s: float, namespace: str | None = None) -> float | None:
        """:meth:`TieredMemory.extend`."""
        return await self._run(self.memory.extend, memory_id, ttl_s=ttl_s, namespace=namespace)

    async def extend_many(self, memory_ids: Sequence[str], *, ttl_s: float | Sequence[float],
                          namespace: str | None = None) -> list[float | None]:
        """:meth:`TieredMemory.extend_many`."""
        return await self._run(self.memory.extend_many, memory_ids, ttl_s=ttl_s, namespace=namespace)

    async def sync(self, remote: Any, **options: Any) -> Any:
        """:meth:`TieredMemory.sync` (another AsyncTieredMemory is synced through its store)."""
        if isinstance(remote, AsyncTieredMemory):
            remote = remote.memory
        return await self._run(self.memory.sync, remote, **options)

    async def list_memories(self, namespace: str = DEFAULT_NAMESPACE, **options: Any) -> list[Memory]:
        """:meth:`TieredMemory.list_memories`."""
        return await self._run(self.memory.list_memories, namespace, **options)

    async def count(self, namespace: str | None = None) -> int:
        """:meth:`TieredMemory.count`."""
        return await self._run(self.memory.count, namespace)

    async def ids(self, namespace: str | None = None) -> list[str]:
        """:meth:`TieredMemory.ids`."""
        return await self._run(self.memory.ids, namespace)

    async def namespaces(self) -> list[str]:
        """:meth:`TieredMemory.namespaces`."""
        return await self._run(self.memory.namespaces)

    async def record(self, memory_id: str) -> Memory | None:
        """:meth:`TieredMemory.record`."""
        return await self._run(self.memory.record, memory_id)

    async def stats(self) -> StoreStats:
        """:meth:`TieredMemory.stats`."""
        return await self._run(self.memory.stats)

    async def maintain(self) -> MaintenanceReport:
        """:meth:`TieredMemory.maintain` (decay, capacities, the expiry sweep, persisting)."""
        return await self._run(self.memory.maintain)

    async def preload(self, namespace: str | Sequence[str]) -> None:
        """:meth:`TieredMemory.preload`: load namespaces before their first search needs them."""
        await self._run(self.memory.preload, namespace)

    async def promote(self, memory_ids: Iterable[str], tier: Tier = Tier.HOT) -> int:
        """:meth:`TieredMemory.promote`."""
        return await self._run(self.memory.promote, list(memory_ids), tier)

    async def encode_query(self, text: str) -> np.ndarray:
        """:meth:`TieredMemory.encode_query`: encode (and cache) a query ahead of its search."""
        return await self._run(self.memory.encode_query, text)

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """:meth:`TieredMemory.wait_idle`: wait for background promotions."""
        return await self._run(self.memory.wait_idle, timeout)
