"""A fair readers-writer lock.

hnswlib's ``knn_query`` runs without the GIL and may run in several threads at once, but
``add_items``, ``mark_deleted`` and ``resize_index`` must never overlap it; LMDB's map may only
grow while no transaction of this process is open. Searches and cold reads take the shared side,
anything that changes an index or the map takes the exclusive side.

Fairness: the lock serves tickets in arrival order. Consecutive readers share it; a writer waits
for the readers that came before it, and readers that come after a waiting writer wait for it.
So neither a stream of searches nor a stream of writers can starve the other side, or
``close()`` (a loop of ``update()`` let another thread's ``add()`` through once in 3 s with the
old writer-preferring lock: issue 11.6).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class RWLock:
    """Many readers or one writer, in ticket order. Not re-entrant.

    Use ``with lock.read:`` / ``with lock.write:``. The two sides are plain objects with
    ``__enter__``/``__exit__`` rather than ``@contextmanager`` generators, which cost ~3 us
    per use: this lock is taken on every search.
    """

    def __init__(self) -> None:
        # The sides take the plain lock under the condition (`with self._lock`): the same lock,
        # without Condition.__enter__/__exit__, two Python calls on every search.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._readers = 0
        self._writer = False
        self._next_ticket = 0
        self._serving = 0  # the ticket whose holder may enter next
        self.read = _Side(self._acquire_read, self._release_read)
        self.write = _Side(self._acquire_write, self._release_write)

    def _acquire_read(self) -> None:
        with self._lock:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket or self._writer:
                self._cond.wait()
            self._readers += 1
            self._serving += 1
            if self._next_ticket != self._serving:
                self._cond.notify_all()  # the next in line may be a reader that can enter beside us

    def _release_read(self) -> None:
        with self._lock:
            self._readers -= 1
            if not self._readers and self._next_ticket != self._serving:
                self._cond.notify_all()

    def _acquire_write(self) -> None:
        with self._lock:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket or self._writer or self._readers:
                self._cond.wait()
            self._writer = True
            self._serving += 1

    def _release_write(self) -> None:
        with self._lock:
            self._writer = False
            if self._next_ticket != self._serving:
                self._cond.notify_all()


class _Side:
    __slots__ = ("_acquire", "_release")

    def __init__(self, acquire: Callable[[], None], release: Callable[[], None]) -> None:
        self._acquire = acquire
        self._release = release

    def __enter__(self) -> None:
        self._acquire()

    def __exit__(self, *exc: object) -> None:
        self._release()
