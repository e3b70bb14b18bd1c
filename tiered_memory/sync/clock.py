"""Hybrid logical clock stamps: what orders versions of a memory made in different stores.

A stamp is 16 bytes that compare as bytes in the order they were made: 6 bytes of wall-clock
milliseconds, 2 of a counter (for stamps within one millisecond, and for running ahead of a slow
clock after seeing a later stamp from elsewhere), 8 of the writer (random per open engine, so two
processes writing one shared store never make equal stamps for different versions).

The clock never goes back: ``now()`` is above every stamp it made or observed, even when the
wall clock steps back. A stamp from a store whose clock runs ahead pulls this one ahead with it
(by the counter first), so causally later changes always get larger stamps.
"""

from __future__ import annotations

import secrets
import struct
import threading
import time
from collections.abc import Callable

from tiered_memory.tiers.cold_ops import STAMP_BYTES

_TIME = struct.Struct(">Q")  # the first 8 bytes: milliseconds << 16 | counter


def stamp_time(stamp: bytes) -> float:
    """The wall-clock time (seconds) a stamp carries."""
    return (_TIME.unpack(stamp[:8])[0] >> 16) / 1000.0


class HybridClock:
    """Makes stamps for one writer; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time, writer: bytes | None = None) -> None:
        self._clock = clock
        self.writer = writer if writer is not None else secrets.token_bytes(8)
        if len(self.writer) != 8:
            raise ValueError("a writer id is 8 bytes")
        self._last = 0  # milliseconds << 16 | counter of the latest stamp made or observed
        self._lock = threading.Lock()

    def now(self) -> bytes:
        with self._lock:
            wall = int(self._clock() * 1000) << 16
            self._last = wall if wall > self._last else self._last + 1
            return _TIME.pack(self._last) + self.writer

    def observe(self, stamp: bytes) -> None:
        """Take in a stamp from elsewhere: every later now() is above it."""
        if len(stamp) != STAMP_BYTES:
            raise ValueError(f"a stamp is {STAMP_BYTES} bytes")
        seen = _TIME.unpack(stamp[:8])[0]
        with self._lock:
            if seen > self._last:
                self._last = seen
