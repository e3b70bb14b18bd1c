"""One writer per store directory, enforced with an advisory file lock.

``flock`` locks belong to the open file: the kernel drops them when the process dies, however
it dies, so a crash never leaves a lock that blocks the next open.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tiered_memory.errors import StoreLockedError


class DirectoryLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "LOCK"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise StoreLockedError(
                f"{self.path.parent} is open for writing in process {holder}; close it there, or open "
                "this one with TieredMemory(..., read_only=True) to read alongside it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def acquire_shared(self) -> None:
        """A reader's hold, for work that reads the whole store (export, verify): no writer opens
        it meanwhile. Writes nothing; a store never opened for writing has no LOCK to hold."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise StoreLockedError(
                f"{self.path.parent} is open for writing in process {holder}; close it there and retry "
                "(a store read whole while it is written could mix two states)"
            ) from None
        self._fd = fd
