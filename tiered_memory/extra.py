"""A prefix-scoped key-value store inside the cold tier, for features built on the store.

Agents keep their hub records here (``hub/<user>/...``). A feature gets one with
``TieredMemory.extra(prefix)``: it reads and writes only keys under its prefix, every write is one
durable transaction taken under the store's write lock, and sealing uses the store's key without
the feature ever holding it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from tiered_memory.errors import EncryptionRequiredError, InvalidInputError

if TYPE_CHECKING:
    from tiered_memory.crypto import Sealer
    from tiered_memory.locks import RWLock
    from tiered_memory.tiers.cold import ColdTier

Put = tuple[bytes, bytes | None]  # (key, value); None deletes


class ExtraStore:
    """Keys under one prefix of the cold tier's ``extra`` database."""

    def __init__(self, prefix: bytes, cold: ColdTier, lock: RWLock, sealer: Sealer | None,
                 check_open: Callable[[], None], check_writable: Callable[[], None]) -> None:
        if not isinstance(prefix, bytes) or not prefix:
            raise InvalidInputError(f"an extra store needs a non-empty bytes prefix, got {prefix!r}")
        self.prefix = prefix
        self._cold = cold
        self._lock = lock
        self._sealer = sealer
        self._check_open = check_open
        self._check_writable = check_writable

    def items(self, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """(key, value) of every entry whose key starts with this store's prefix + ``prefix``."""
        with self._lock.read:
            self._check_open()
            return list(self._cold.extra_items(self._own(self.prefix + prefix)))

    def write(self, puts: Iterable[Put]) -> None:
        """Apply puts and deletes in one durable transaction (all or none)."""
        ops = [("extra", self._own(key), value) for key, value in puts]
        with self._lock.write:
            self._check_writable()
            self._cold.write(ops)

    @property
    def can_seal(self) -> bool:
        return self._sealer is not None

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        return self._need_sealer().seal(plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        return self._need_sealer().open(sealed, context)

    def _need_sealer(self) -> Sealer:
        if self._sealer is None:
            raise EncryptionRequiredError("sealed records need the store opened with encryption_key=")
        return self._sealer

    def _own(self, key: bytes) -> bytes:
        if not isinstance(key, bytes) or not key.startswith(self.prefix):
            raise InvalidInputError(f"key {key!r} is outside this store's prefix {self.prefix!r}")
        return key
