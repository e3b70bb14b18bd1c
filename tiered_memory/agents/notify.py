"""Notifications of changes to shared memories: a durable, ordered queue per agent, and callbacks.

Each notification is committed in the same transaction as the change it reports (see
:mod:`tiered_memory.agents.store`), so it exists exactly when the change does; it stays queued
until acknowledged, so an agent that restarts is told again (at least once, in order).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from tiered_memory.agents.store import HubState, HubStore, Notification, Op
from tiered_memory.errors import InvalidInputError

log = logging.getLogger(__name__)


class Notifier:
    """The notification half of :class:`tiered_memory.agents.hub.AgentHub`: queues in the hub's
    store, subscribers in this process. ``lock`` is the hub's (its state and quota accounting);
    ``agent_name`` gives the registered name of an agent or its handle (raising if unknown)."""

    def __init__(self, store: HubStore, lock: threading.Lock, agent_name: Callable[[Any], str]) -> None:
        self._store = store
        self._lock = lock
        self._agent_name = agent_name
        self._delivery = threading.RLock()  # re-entrant: a callback may change a shared memory itself
        self._subscribers: dict[str, list[Callable[[Notification], None]]] = {}
        self._delivered: dict[str, int] = {}  # per agent: the last seq its callbacks took (this process)
        self._delivering: set[str] = set()

    @property
    def state(self) -> HubState:
        return self._store.state

    def ops(self, agents: Iterable[str], memory_id: str, event: str, version: int, by: str | None,
                    at: float) -> list[Op]:
        """The puts that queue one notification for each of these agents (committed with the change)."""
        ops = []
        for name in agents:
            seq = self.state.last_seq.get(name, 0) + 1
            ops.append(self._store.op("n", (name, f"{seq:016x}"), [memory_id, event, version, by, at]))
            ops.append(self._store.op("s", (name,), seq))
        return ops

    def notifications(self, agent: Any) -> list[Notification]:
        """See :meth:`AgentHub.notifications`."""
        name = self._agent_name(agent)
        with self._lock:
            return list(self.state.queues.get(name, {}).values())

    def ack(self, agent: Any, upto: int) -> int:
        """See :meth:`AgentHub.ack`."""
        name = self._agent_name(agent)
        if isinstance(upto, bool) or not isinstance(upto, int):
            raise InvalidInputError(f"upto must be a notification's seq (an int), got {upto!r}")
        with self._lock:
            done = [seq for seq in self.state.queues.get(name, {}) if seq <= upto]
            if done:
                self._store.commit([self._store.op("n", (name, f"{seq:016x}"), None) for seq in done])
        return len(done)

    def subscribe(self, agent: Any, callback: Callable[[Notification], None]) -> None:
        """See :meth:`AgentHub.subscribe`."""
        name = self._agent_name(agent)
        if not callable(callback):
            raise InvalidInputError(f"callback must be callable, got {callback!r}")
        self._subscribers.setdefault(name, []).append(callback)
        self.deliver([name])

    def deliver(self, agents: Iterable[str] | None = None) -> None:
        """See :meth:`AgentHub.deliver`."""
        for name in list(self.state.agents if agents is None else agents):
            callbacks = self._subscribers.get(name)
            if not callbacks:
                continue
            with self._delivery:
                if name in self._delivering:
                    # Called from one of this agent's callbacks: the loop below, further up this
                    # thread's stack, delivers what the callback caused once it returns, in order.
                    continue
                self._delivering.add(name)
                try:
                    self._deliver_queued(name, callbacks)
                finally:
                    self._delivering.discard(name)

    def _deliver_queued(self, name: str, callbacks: list[Callable[[Notification], None]]) -> None:
        """Run callbacks over the queued notifications past the last delivered one, then acknowledge."""
        while True:
            with self._lock:
                done = self._delivered.get(name, 0)
                following = (n for seq, n in self.state.queues.get(name, {}).items() if seq > done)
                notification = next(following, None)
            if notification is None:
                break
            try:
                for callback in list(callbacks):
                    callback(notification)
            except Exception:  # a subscriber's bug must not undo a committed change
                log.exception("notification %d for agent %r: callback failed; it stays queued",
                              notification.seq, name)
                break
            self._delivered[name] = max(self._delivered.get(name, 0), notification.seq)
        if self._delivered.get(name):
            self.ack(name, self._delivered[name])

