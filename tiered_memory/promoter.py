"""A background thread that applies promotions, so that the read that asked for one does not wait.

Moving a memory up costs a record read (warm -> hot) or an hnswlib insertion (cold -> warm, about
a millisecond with ef_construction 200): work that a `get` or a `search` should not pay for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Promoter:
    """Calls `drain` in a daemon thread whenever woken; `drain` takes the work it finds."""

    def __init__(self, drain: Callable[[], bool], name: str = "tiered-memory-promoter") -> None:
        self._drain = drain  # returns True if it did some work
        self._name = name
        self._wakeup = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def wake(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopping:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
        self._wakeup.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wakeup.wait()
            with self._idle:  # busy before the event clears: wait_idle() never sees neither
                self._busy = True
                self._wakeup.clear()
            try:
                while not self._stopping and self._drain():
                    pass
            except Exception:  # a failed promotion must not kill the thread; the memory stays where it was
                log.exception("background promotion failed")
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is being promoted and nothing is waiting (True) or the timeout ends."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy and not self._wakeup.is_set(), timeout)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
