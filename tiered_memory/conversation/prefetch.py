"""Topic tracking and prefetch: move the memories of a conversation's topic up before they are asked for.

Each conversation has a :class:`ConversationTrack`: its message vectors and a decayed mean of
them (:class:`TopicTracker`), the conversation's position in embedding space. One background
:class:`PrefetchWorker` per store embeds new messages off the caller's path and, when the
position moves (or its nearest topics change), promotes the memories of the nearest topics with
the highest decayed importance and closeness to that position: the best ``hot`` to the hot tier, the
next ``warm`` to the warm tier.

The worker stays out of the agent's way. Nothing on the caller's path wakes it (a wake-up cost
the caller ~0.2 ms here, profiled in a replay: a fifth of a whole search of 3k memories): it looks
at its queue every ``yield_s`` and starts on a message ``yield_s`` after it arrived, or at once
when a newer message of that conversation has arrived. An agent that searches right after a
message embeds it on its own path, as it would without a worker, and the worker then finds the
vector ready; a later search finds the vector the worker made. Work is bounded and stale work is
dropped: the queue holds at most ``queue_size`` jobs (the oldest leaves first), a message that
is no longer its conversation's newest is embedded but triggers no prefetch, and a prefetch
stops between chunks when a newer message arrives.

Loading a returning user's namespace is the exception to yielding: a conversation's start and each
message ask the worker to :meth:`PrefetchWorker.preload` the namespace, and when it is not loaded
(a dict lookup on the caller's path; nothing else happens when it is) the worker is woken and loads
it at once, while the caller embeds its query (8-20 ms with MiniLM here). Loading takes the store's
write lock, so it only ever runs on the worker's thread; a search that arrives during the load
waits for the rest of it instead of doing all of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tiered_memory.errors import InvalidInputError, MemoryNotFoundError, StoreClosedError
from tiered_memory.records import Tier

if TYPE_CHECKING:
    from tiered_memory.engine import TieredMemory

log = logging.getLogger(__name__)

# Promotions run in chunks: promote() holds the store's write lock, and a cold memory costs one
# hnswlib insertion (~1.4 ms at ef_construction=200 here), so a chunk of 16 stalls a search ~25 ms at most.
_CHUNK = 16
_PAUSE_S = 0.001


@dataclass(frozen=True)
class PrefetchConfig:
    """What a move of the conversation prefetches, and how fast the tracked topic follows messages."""

    topics: int = 4  # nearest topics whose memories are candidates
    hot: int = 128  # best candidates moved to the hot tier per prefetch
    # The next ones, moved to the warm tier. Off by default: each cold memory moved costs an hnswlib
    # insertion (~1.4 ms), and replaying 20 DailyDialog sessions over 20k memories with warm=256,
    # 3.5% of them were returned by a later search.
    warm: int = 0
    decay: float = 0.5  # weight the topic vector keeps per new message (0: the last message alone)
    # A candidate's rank: decayed importance + relevance_weight x its cosine to the topic vector.
    # Cosine dominates at 10: what a conversation searches next is near what it says, whatever its
    # age (0: importance alone, the `prefetch-decay` ablation of benchmarks/prefetch_replay.py).
    relevance_weight: float = 10.0
    min_shift: float = 0.02  # prefetch again once the topic vector moved this far (1 - cosine)

    def __post_init__(self) -> None:
        for name in ("topics", "hot", "warm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInputError(f"PrefetchConfig.{name} must be an int >= 0, got {value!r}")
        if self.topics < 1:
            raise InvalidInputError("PrefetchConfig.topics must be at least 1")
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not 0.0 <= self.decay < 1.0:
            raise InvalidInputError(f"PrefetchConfig.decay must be in [0, 1), got {self.decay!r}")
        for name in ("relevance_weight", "min_shift"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < float("inf"):
                raise InvalidInputError(f"PrefetchConfig.{name} must be a finite number >= 0, got {value!r}")


class TopicTracker:
    """A decayed mean of message vectors: where the conversation is now."""

    def __init__(self, decay: float = 0.5) -> None:
        self.decay = decay
        self._mean: np.ndarray | None = None
        self.observed = 0

    def observe(self, vector: np.ndarray) -> np.ndarray:
        """Fold in one message's unit vector; returns the current (unit) topic vector."""
        vector = np.asarray(vector, dtype=np.float32)
        if self._mean is None:
            self._mean = vector.copy()
        else:
            self._mean = self.decay * self._mean + (1.0 - self.decay) * vector
        self.observed += 1
        return self.vector

    @property
    def vector(self) -> np.ndarray:
        if self._mean is None:
            raise InvalidInputError("the tracker has seen no message yet")
        return self._mean / max(float(np.linalg.norm(self._mean)), 1e-12)


class ConversationTrack:
    """What the worker knows of one conversation: its embedder, message vectors and topic."""

    def __init__(self, namespace: str, embed: Callable[[str], np.ndarray], config: PrefetchConfig | None) -> None:
        self.namespace = namespace
        self.embed = embed
        self.config = config  # None: embed ahead, never prefetch
        self.tracker = TopicTracker(config.decay if config is not None else 0.5)
        self.topics: tuple[int, ...] = ()  # the topics last prefetched for
        self.prefetched_at: np.ndarray | None = None  # the topic vector last prefetched for
        self.last_seq: int | None = None  # newest unpinned message
        self.last_text: str | None = None
        self.submitted = -1  # newest seq handed to the worker
        self.closed = False
        self._vectors: dict[int, np.ndarray] = {}
        self._archived_max = -1  # vectors of messages at or below this seq are no longer needed
        self._lock = threading.Lock()

    def vector_of(self, seq: int, text: str) -> np.ndarray:
        """The message's vector: cached (usually by the worker) or embedded now and cached."""
        with self._lock:
            vector = self._vectors.get(seq)
        if vector is None:
            vector = self.embed(text)
            self.remember(seq, vector)
        return vector

    def remember(self, seq: int, vector: np.ndarray) -> None:
        with self._lock:
            if seq > self._archived_max:
                self._vectors[seq] = vector

    def take_vector(self, seq: int, text: str) -> np.ndarray:
        """The vector of a message being archived (its cache entry is dropped)."""
        with self._lock:
            vector = self._vectors.pop(seq, None)
            self._archived_max = max(self._archived_max, seq)
        return vector if vector is not None else self.embed(text)


@dataclass
class PrefetchStats:
    """What the worker did and what it cost (wall and CPU seconds spent on jobs)."""

    submitted: int = 0
    messages: int = 0  # messages whose vector the worker made (or found) ready and tracked
    prefetches: int = 0
    promoted_hot: int = 0
    promoted_warm: int = 0
    skipped_stale: int = 0  # messages superseded before their prefetch ran
    preloads: int = 0  # namespaces the worker loaded ahead of their first search
    dropped_full: int = 0  # jobs dropped because the queue was full
    errors: int = 0
    busy_s: float = 0.0
    cpu_s: float = 0.0


_Job = tuple[ConversationTrack, int, str, float]  # track, seq, text, arrival (time.monotonic)


class PrefetchWorker:
    """One background thread per store: embeds messages, tracks topics, prefetches memories.

    ``on_promoted(namespace, hot_ids, warm_ids)`` (optional) hears which memories each prefetch
    actually moved up, e.g. to measure how many are used later."""

    def __init__(self, memory: TieredMemory, queue_size: int = 256, yield_s: float = 0.05,
                 on_promoted: Callable[[str, list[str], list[str]], None] | None = None) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise InvalidInputError(f"queue_size must be a positive int, got {queue_size!r}")
        if isinstance(yield_s, bool) or not isinstance(yield_s, (int, float)) or not 0.0 <= yield_s < 60.0:
            raise InvalidInputError(f"yield_s must be a number of seconds in [0, 60), got {yield_s!r}")
        self.memory = memory
        self.queue_size = queue_size
        self.yield_s = float(yield_s)
        self.on_promoted = on_promoted
        self.stats = PrefetchStats()
        self._jobs: deque[_Job] = deque()
        self._preloads: deque[str] = deque()  # namespaces to load, before any message job
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="tiered-memory-prefetch", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._stopping

    def submit(self, track: ConversationTrack, seq: int, text: str) -> None:
        """Queue a new message of a conversation; never blocks (a full queue drops its oldest job)."""
        with self._cond:
            if self._stopping:
                return
            if len(self._jobs) >= self.queue_size:
                self._jobs.popleft()
                self.stats.dropped_full += 1
            self._jobs.append((track, seq, text, time.monotonic()))
            track.submitted = seq
            self.stats.submitted += 1
            if self.yield_s == 0:  # no yielding asked for: start at once
                self._cond.notify_all()

    def preload(self, namespace: str) -> bool:
        """Have the worker load `namespace` now, ahead of its first search, unless it is loaded or
        queued already; never blocks and never loads on the calling thread. True if queued."""
        if namespace in self.memory.registry:
            return False
        with self._cond:
            if self._stopping or namespace in self._preloads:
                return False
            if len(self._preloads) >= self.queue_size:
                self._preloads.popleft()
                self.stats.dropped_full += 1
            self._preloads.append(namespace)
            self._cond.notify_all()  # a load is worth a wake-up: it saves the next search a range read
            return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the queue is empty and no job runs (True), or until `timeout` s pass (False)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._stopping or (not self._jobs and not self._preloads and not self._busy), timeout)

    def close(self) -> None:
        """Drop queued jobs, let the running one finish, and join the thread. Idempotent."""
        with self._cond:
            self._stopping = True
            self._jobs.clear()
            self._preloads.clear()
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with _WORKERS_LOCK:
            if _WORKERS.get(id(self.memory)) is self:
                del _WORKERS[id(self.memory)]

    def _next_job(self) -> _Job | str | None:
        """A namespace to preload (at once), else the oldest message job once it may start (see the
        module docstring); None when stopping."""
        # Timed waits rather than wake-ups from submit(): see the module docstring.
        with self._cond:
            while not self._stopping:
                if self._preloads:
                    self._busy = True
                    return self._preloads.popleft()
                if not self._jobs:
                    self._cond.wait(self.yield_s or None)
                    continue
                track, seq, _, arrived = self._jobs[0]
                wait = arrived + self.yield_s - time.monotonic()
                if wait <= 0 or track.submitted > seq or track.closed:
                    self._busy = True
                    return self._jobs.popleft()
                self._cond.wait(wait)
            self._cond.notify_all()
            return None

    def _loop(self) -> None:
        while (job := self._next_job()) is not None:
            started, cpu = time.perf_counter(), time.thread_time()
            namespace = job if isinstance(job, str) else job[0].namespace
            try:
                if isinstance(job, str):
                    self._preload(job)
                else:
                    self._run(job[0], job[1], job[2])
            except StoreClosedError:
                pass  # the store closed under a job: nothing left to do
            except Exception:  # a background thread has no caller to raise to: log, count, go on
                self.stats.errors += 1
                log.exception("prefetch job for namespace %r failed", namespace)
            finally:
                with self._cond:
                    self.stats.busy_s += time.perf_counter() - started
                    self.stats.cpu_s += time.thread_time() - cpu
                    self._busy = False
                    self._cond.notify_all()

    def _preload(self, namespace: str) -> None:
        if self._stopping or namespace in self.memory.registry:
            return
        self.memory.preload(namespace)  # takes the write lock: on this thread only
        if namespace in self.memory.registry:  # a namespace with no memory yet has nothing to load
            with self._cond:
                self.stats.preloads += 1

    def _run(self, track: ConversationTrack, seq: int, text: str) -> None:
        if track.closed or self._stopping:
            return
        track.tracker.observe(track.vector_of(seq, text))
        self.stats.messages += 1
        if track.config is None:
            return
        if seq < track.submitted:
            self.stats.skipped_stale += 1
            return
        vector = track.tracker.vector
        topics = tuple(self.memory.nearest_topics(track.namespace, vector, track.config.topics))
        if not topics:
            return  # the namespace has no topic model yet (fewer than topic_min_memories memories)
        moved = track.prefetched_at is None or 1.0 - float(vector @ track.prefetched_at) >= track.config.min_shift
        if not moved and topics == track.topics:
            return
        track.topics, track.prefetched_at = topics, vector
        self._prefetch(track, track.config, seq, topics, vector)

    def _prefetch(self, track: ConversationTrack, config: PrefetchConfig, seq: int, topics: tuple[int, ...],
                  vector: np.ndarray) -> None:
        ranked = self.memory.top_by_decay(track.namespace, topics, limit=config.hot + config.warm, near=vector,
                                          near_weight=config.relevance_weight)
        self.stats.prefetches += 1
        for ids, tier in ((ranked[:config.hot], Tier.HOT), (ranked[config.hot:], Tier.WARM)):
            for start in range(0, len(ids), _CHUNK):
                if seq < track.submitted or self._stopping:  # a newer message: this prefetch is stale
                    self.stats.skipped_stale += 1
                    return
                if self._promote(track.namespace, ids[start:start + _CHUNK], tier):
                    # The store's lock prefers writers: without a pause, the next chunk's write
                    # request would keep a waiting search out until the whole prefetch is done.
                    time.sleep(_PAUSE_S)

    def _promote(self, namespace: str, ids: list[str], tier: Tier) -> bool:
        """Move the ids not yet at `tier` up to it; True if any moved."""
        below = (Tier.WARM, Tier.COLD) if tier is Tier.HOT else (Tier.COLD,)
        moving = []
        for memory_id in ids:
            try:
                if self.memory.tier_of(memory_id) in below:
                    moving.append(memory_id)
            except MemoryNotFoundError:
                continue  # deleted since it was ranked
        if not moving:
            return False
        self.memory.promote(moving, tier=tier)
        if tier is Tier.HOT:
            self.stats.promoted_hot += len(moving)
        else:
            self.stats.promoted_warm += len(moving)
        if self.on_promoted is not None:
            self.on_promoted(namespace, moving if tier is Tier.HOT else [], moving if tier is Tier.WARM else [])
        return True


_WORKERS: dict[int, PrefetchWorker] = {}
_WORKERS_LOCK = threading.Lock()


def worker_for(memory: TieredMemory) -> PrefetchWorker:
    """The store's prefetch worker, started on first use; the store's close() stops it."""
    with _WORKERS_LOCK:
        worker = _WORKERS.get(id(memory))
        if worker is None or worker.closed:
            worker = PrefetchWorker(memory)
            _WORKERS[id(memory)] = worker
            memory.on_close(worker.close)
        return worker
