"""Working memory: a conversation's recent messages within a token budget, bound to the store.

:class:`ConversationBuffer` is the window an LLM call sees: messages counted once each with
tiktoken (offline), pinned system messages, the oldest others evicted first when the window
is over budget or too old. :class:`Conversation` binds a buffer to a :class:`TieredMemory`:
what falls out of the window is stored as episodic memory (``kind="conversation"``, with its
timestamp), and a background worker embeds each message and prefetches the memories of the
conversation's current topic into the fast tiers (see :mod:`tiered_memory.conversation.prefetch`).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered_memory.conversation.prefetch import (
    ConversationTrack,
    PrefetchConfig,
    PrefetchStats,
    PrefetchWorker,
    worker_for,
)
from tiered_memory.conversation.tokens import get_encoding
from tiered_memory.errors import EncoderError, InvalidInputError
from tiered_memory.records import Hit, check_label, check_metadata, check_text, check_timestamp, new_id

if TYPE_CHECKING:
    from tiered_memory.engine import TieredMemory

_METADATA_MAX_BYTES = 64 * 2**10
_METADATA_MAX_DEPTH = 16


class MessageTooLargeError(InvalidInputError):
    """A message that cannot fit in the token budget even with every unpinned message evicted."""


@dataclass(frozen=True)
class Message:
    """One message of a conversation; `tokens` is its count in the buffer's encoding."""

    role: str
    content: str
    timestamp: float  # seconds since the epoch
    tokens: int
    seq: int  # position in the conversation, from 0
    pinned: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def as_chat(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


class ConversationBuffer:
    """The recent messages of one conversation, within `max_tokens` and `max_age` seconds.

    Messages whose role is in `pin_roles` (the system prompt) are pinned: never evicted, and
    counted against the budget. Others leave oldest first. Each message is tokenised once,
    when added; `tokens` is a running sum, never a recount. `on_evict` receives the messages
    an operation evicts *before* they are dropped: if it raises, the buffer is left unchanged.
    """

    def __init__(
        self,
        max_tokens: int = 4000,
        max_age: float | timedelta | None = None,
        encoding: str = "cl100k_base",
        *,
        pin_roles: Collection[str] = ("system",),
        per_message_tokens: int = 0,
        max_chars: int = 1_000_000,
        clock: Callable[[], float] = time.time,
        on_evict: Callable[[list[Message]], None] | None = None,
    ) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be a positive int, got {max_tokens!r}")
        if isinstance(max_age, timedelta):
            max_age = max_age.total_seconds()
        if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, (int, float))
                                    or not math.isfinite(max_age) or max_age <= 0):
            raise InvalidInputError(f"max_age must be a positive number of seconds (or a timedelta), got {max_age!r}")
        if isinstance(per_message_tokens, bool) or not isinstance(per_message_tokens, int) or per_message_tokens < 0:
            raise InvalidInputError(f"per_message_tokens must be an int >= 0, got {per_message_tokens!r}")
        if isinstance(pin_roles, str):
            raise InvalidInputError(f"pin_roles takes a collection of roles, e.g. [{pin_roles!r}]")
        self.max_tokens = max_tokens
        self.max_age: float | None = None if max_age is None else float(max_age)
        self.encoding = get_encoding(encoding)
        self.pin_roles = frozenset(pin_roles)
        self.per_message_tokens = per_message_tokens
        self.max_chars = max_chars
        self.clock = clock
        self.on_evict = on_evict
        self._pinned: list[Message] = []
        self._window: deque[Message] = deque()
        self._pinned_tokens = 0
        self._window_tokens = 0
        self._next_seq = 0
        self._lock = threading.RLock()

    # -- reading ----------------------------------------------------------------------------

    @property
    def tokens(self) -> int:
        """Exact token count of every message held (contents plus `per_message_tokens` each)."""
        return self._pinned_tokens + self._window_tokens

    @property
    def messages(self) -> list[Message]:
        """Every message held, in conversation order."""
        with self._lock:
            return list(heapq.merge(self._pinned, self._window, key=lambda m: m.seq))

    def __len__(self) -> int:
        return len(self._pinned) + len(self._window)

    def context(self) -> list[dict[str, str]]:
        """The messages ready for an LLM call (``[{"role", "content"}, ...]``), too-old ones dropped first."""
        with self._lock:
            self.expire()
            return [message.as_chat() for message in self.messages]

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text)) + self.per_message_tokens

    # -- changing ---------------------------------------------------------------------------

    def add(
        self,
        role: str,
        content: str,
        *,
        timestamp: float | Any = None,
        metadata: Mapping[str, Any] | None = None,
        pinned: bool | None = None,
    ) -> Message:
        """Append a message, evicting the oldest unpinned ones until the buffer fits again."""
        role = check_label(role, "role")
        content = check_text(content, self.max_chars)
        metadata = check_metadata(metadata, _METADATA_MAX_BYTES, _METADATA_MAX_DEPTH)
        stamp = self.clock() if timestamp is None else check_timestamp(timestamp, "timestamp")
        pin = role in self.pin_roles if pinned is None else bool(pinned)
        tokens = self.count(content)
        with self._lock:
            room = self.max_tokens - self._pinned_tokens
            if tokens > room:
                what = "pinned messages" if pin else "the pinned messages"
                raise MessageTooLargeError(
                    f"a {role!r} message of {tokens} tokens does not fit: max_tokens={self.max_tokens} and "
                    f"{what} already take {self._pinned_tokens}; shorten it or raise max_tokens")
            message = Message(role, content, stamp, tokens, self._next_seq, pin, metadata)
            # Pinned or not, the window must end up within room - tokens.
            evicted = self._over_budget(room - tokens) + self._expired()
            evicted = sorted({m.seq: m for m in evicted}.values(), key=lambda m: m.seq)
            if evicted and self.on_evict is not None:
                self.on_evict(evicted)  # may raise: nothing has changed yet
            self._drop(evicted)
            if pin:
                self._pinned.append(message)
                self._pinned_tokens += tokens
            else:
                self._window.append(message)
                self._window_tokens += tokens
            self._next_seq += 1
            return message

    def expire(self) -> list[Message]:
        """Evict (and hand to `on_evict`) the unpinned messages older than `max_age`; returns them."""
        with self._lock:
            evicted = self._expired()
            if evicted and self.on_evict is not None:
                self.on_evict(evicted)
            self._drop(evicted)
            return evicted

    def drain(self) -> list[Message]:
        """Remove and return every unpinned message, without calling `on_evict`."""
        with self._lock:
            drained = list(self._window)
            self._window.clear()
            self._window_tokens = 0
            return drained

    def _over_budget(self, budget: int) -> list[Message]:
        """The oldest window messages to drop so the rest take at most `budget` tokens."""
        excess = self._window_tokens - budget
        chosen = []
        for message in self._window:
            if excess <= 0:
                break
            chosen.append(message)
            excess -= message.tokens
        return chosen

    def _expired(self) -> list[Message]:
        if self.max_age is None:
            return []
        cutoff = self.clock() - self.max_age
        return [m for m in self._window if m.timestamp < cutoff]

    def _drop(self, evicted: Iterable[Message]) -> None:
        gone = {message.seq for message in evicted}
        if not gone:
            return
        kept = deque(m for m in self._window if m.seq not in gone)
        self._window_tokens = sum(m.tokens for m in kept)
        self._window = kept


class Conversation:
    """A conversation bound to a store: its window, its archive, its topic and prefetch.

    Built by ``TieredMemory.conversation(namespace, max_tokens, ...)``. Evicted messages become
    memories of `kind` (default ``"conversation"``) in `namespace`, with their timestamps and
    ``metadata = {"role", "conversation", "seq", ...the message's metadata}``, so nothing said
    is lost; `summarize` (optional) turns each evicted batch into one extra ``kind="summary"``
    memory. With `prefetch` on, a background worker embeds each message off the caller's path,
    tracks the conversation's topic and moves the memories of the nearest topics into the hot
    and warm tiers before they are searched for; and when the conversation starts (or a message
    arrives) while `namespace` is not loaded, the worker loads it, overlapping the query's embedding.
    `embed` maps a text to a unit vector (default: the store's cached query encoder). Messages
    still in the window when the conversation (or the store) closes are archived too, unless
    ``archive_on_close=False``; pinned (system) messages are instructions, not things said, and
    are never archived.
    """

    def __init__(
        self,
        memory: TieredMemory,
        namespace: str = "default",
        max_tokens: int = 4000,
        *,
        max_age: float | timedelta | None = None,
        encoding: str = "cl100k_base",
        kind: str = "conversation",
        summarize: Callable[[list[Message]], str | None] | None = None,
        prefetch: bool | PrefetchConfig = True,
        embed_ahead: bool = True,
        embed: Callable[[str], np.ndarray] | None = None,
        conversation_id: str | None = None,
        archive_on_close: bool = True,
        pin_roles: Collection[str] = ("system",),
        per_message_tokens: int = 0,
    ) -> None:
        memory.check_writable()
        self.memory = memory
        self.namespace = check_label(namespace, "namespace")
        self.kind = check_label(kind, "kind")
        self.id = conversation_id if conversation_id is not None else new_id()
        check_label(self.id, "conversation_id")
        if prefetch is True:
            prefetch = PrefetchConfig()
        if prefetch is not False and not isinstance(prefetch, PrefetchConfig):
            raise InvalidInputError(f"prefetch takes True, False or a PrefetchConfig, got {prefetch!r}")
        if embed is None and memory.encoder is None:
            raise EncoderError("this store has no encoder: pass embed= (text -> unit vector) to the conversation")
        self.summarize = summarize
        self.archive_on_close = archive_on_close
        self.buffer = ConversationBuffer(
            max_tokens, max_age, encoding, pin_roles=pin_roles, per_message_tokens=per_message_tokens,
            max_chars=memory.config.max_text_chars, clock=memory.clock, on_evict=self._archive)
        self.track = ConversationTrack(self.namespace, embed or memory.encode_query,
                                       prefetch if isinstance(prefetch, PrefetchConfig) else None)
        self.worker: PrefetchWorker | None = None
        if prefetch or embed_ahead:
            self.worker = worker_for(memory)
        self._preload()  # a returning user: their namespace loads while the first query is embedded
        self.archived = 0  # messages stored as memories so far
        self._closed = False
        memory.on_close(self.close)

    # -- the window -------------------------------------------------------------------------

    def add_message(self, role: str, content: str, *, timestamp: float | Any = None,
                    metadata: Mapping[str, Any] | None = None) -> Message:
        """Append a message; archive what it pushes out of the window; embed it in the background."""
        self._check_open()
        message = self.buffer.add(role, content, timestamp=timestamp, metadata=metadata)
        if not message.pinned:
            self.track.last_seq = message.seq
            self.track.last_text = message.content
            self._preload()
            if self.worker is not None:
                self.worker.submit(self.track, message.seq, message.content)
        return message

    def _preload(self) -> None:
        """With prefetch on, have the worker load the namespace if it is not loaded (a dict lookup
        when it is); the load itself, and its write lock, stay on the worker's thread."""
        if self.worker is not None and self.track.config is not None:
            self.worker.preload(self.namespace)

    def context(self) -> list[dict[str, str]]:
        """The messages ready for an LLM call; too-old ones are archived first."""
        self._check_open()
        return self.buffer.context()

    @property
    def messages(self) -> list[Message]:
        return self.buffer.messages

    @property
    def tokens(self) -> int:
        return self.buffer.tokens

    @property
    def topics(self) -> list[int]:
        """The topics last prefetched for (nearest first); empty before the namespace has topics."""
        return list(self.track.topics)

    @property
    def prefetch_stats(self) -> PrefetchStats | None:
        """Work done by the store's prefetch worker (shared by its conversations)."""
        return None if self.worker is None else self.worker.stats

    # -- memory -----------------------------------------------------------------------------

    def recall(self, query: str | None = None, *, k: int = 5, kinds: Iterable[str] | None = None,
               where: Mapping[str, Any] | None = None, min_score: float | None = None) -> list[Hit]:
        """Memories relevant to the conversation now: to `query`, else to its last message.

        Texts are embedded with the conversation's `embed`. A recall right after a message embeds
        it here (the worker gives the caller ``yield_s`` before it starts); a later one finds the
        vector the worker made."""
        self._check_open()
        if query is not None:
            vector = self.track.embed(check_text(query, self.memory.config.max_text_chars))
        else:
            seq, text = self.track.last_seq, self.track.last_text
            if seq is None or text is None:
                raise InvalidInputError("nothing to recall from yet: add a message first, or pass query=")
            vector = self.track.vector_of(seq, text)
        return self.memory.search(vector=vector, namespace=self.namespace, k=k, kinds=kinds, where=where,
                                  min_score=min_score)

    def _archive(self, evicted: list[Message]) -> None:
        """Store evicted messages as memories (one transaction), then their summary if asked."""
        if not evicted:
            return
        vectors = np.stack([self.track.take_vector(m.seq, m.content) for m in evicted])
        metadata = [{**m.metadata, "role": m.role, "conversation": self.id, "seq": m.seq} for m in evicted]
        self.memory.add_many([m.content for m in evicted], namespace=self.namespace, kind=self.kind,
                             metadata=metadata, created_at=[m.timestamp for m in evicted], vectors=vectors,
                             dedup=False)  # a conversation's turns are episodes: "ok" said twice happened twice
        self.archived += len(evicted)
        if self.summarize is not None:
            summary = self.summarize(list(evicted))
            if summary is not None and summary.strip():
                self.memory.add(summary, namespace=self.namespace, kind="summary", dedup=False,
                                created_at=evicted[-1].timestamp, vector=self.track.embed(summary),
                                metadata={"conversation": self.id, "first_seq": evicted[0].seq,
                                          "last_seq": evicted[-1].seq})

    # -- lifecycle --------------------------------------------------------------------------

    def close(self, archive: bool | None = None) -> None:
        """Archive the window (unless told not to) and stop following this conversation. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.track.closed = True
        self.memory.cancel_on_close(self.close)  # a no-op when the store's close() is what called it
        keep = self.archive_on_close if archive is None else archive
        if keep and not self.memory.closed:
            remaining = self.buffer.drain()
            self._archive(remaining)

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidInputError(f"conversation {self.id!r} is closed; start a new one with mem.conversation()")
        self.memory.check_writable()

