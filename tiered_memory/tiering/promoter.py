"""A background thread that applies promotions, so that the read that asked for one does not wait.

Moving a memory up costs a record read (warm -> hot) or an hnswlib insertion (cold -> warm, about
a millisecond with ef_construction 200): work that a `get` or a `search` should not pay for.

Waking a blocked thread from the caller's thread cost the caller about 0.2 ms here (the switch
it forces), more than the promotion saves. So while work keeps coming the thread polls every
20 ms and nobody wakes it; after a second without work it blocks, and only then does the next
request wake it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

POLL_S = 0.02
SLEEP_AFTER_S = 1.0


class Promoter:
    """Runs `drain` (which returns whether it found work) in a daemon thread."""

    def __init__(self, drain: Callable[[], bool], has_work: Callable[[], bool],
                 name: str = "tiered-memory-promoter") -> None:
        self._drain = drain
        self._has_work = has_work
        self._name = name
        self._wakeup = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._sleeping = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def wake(self) -> None:
        """Tell the thread there is work (cheap unless the thread is asleep or not started)."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopping:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
        if self._sleeping:
            self._wakeup.set()

    def _run(self) -> None:
        last_work = time.monotonic()
        while not self._stopping:
            if time.monotonic() - last_work > SLEEP_AFTER_S:
                self._sleeping = True  # set before the check below: a request after it sees the flag
                if not self._has_work():
                    self._wakeup.wait()
                self._sleeping = False
            else:
                self._wakeup.wait(POLL_S)
            with self._idle:
                self._busy = True
                self._wakeup.clear()
            try:
                while not self._stopping and self._drain():
                    last_work = time.monotonic()
            except Exception:  # a failed promotion must not kill the thread; the memory stays where it was
                log.exception("background promotion failed")
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is being promoted and nothing is waiting (True), or the timeout ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._busy or self._has_work():
                if self._thread is None or self._stopping:
                    return not self._busy and not self._has_work()
                self._wakeup.set()  # the caller asked to wait: no need to save it a thread switch
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(POLL_S if remaining is None else min(POLL_S, remaining))
            return True

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
