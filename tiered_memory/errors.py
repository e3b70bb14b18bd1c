"""Exceptions raised by tiered_memory: one base class, one subclass per failure.

Every message names the bad value and says what to do about it. Input errors also
subclass ``ValueError`` / ``TypeError`` / ``KeyError`` so generic handlers still work.
"""

from __future__ import annotations

import reprlib


class TieredMemoryError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidInputError(TieredMemoryError, ValueError):
    """An argument was rejected before anything was written."""


class EmptyTextError(InvalidInputError):
    """A memory's text is empty or only white space."""


class TextTooLargeError(InvalidInputError):
    """A memory's text is longer than ``MemoryConfig.max_text_chars``."""


class InvalidTextError(InvalidInputError):
    """A text that cannot be stored (not a str, or not encodable as UTF-8)."""


class DimensionMismatchError(InvalidInputError):
    """A vector's length differs from the store's dimension."""


class InvalidVectorError(InvalidInputError):
    """A vector holds NaN or infinity, is all zeros, or has the wrong shape."""


class MetadataError(InvalidInputError):
    """Metadata that cannot be stored: not a str-keyed mapping, not serializable, too large or too deep."""


class InvalidFilterError(InvalidInputError):
    """A ``where=`` or ``kinds=`` filter that cannot be evaluated."""


class ConfigError(InvalidInputError):
    """A configuration value out of range, or a store opened with settings it was not built with."""


class InvalidExpiryError(InvalidInputError):
    """A ``ttl_s=`` or ``expires_at=`` that cannot be used: not a number, not positive, in the past, or both given."""


class MemoryNotFoundError(TieredMemoryError, KeyError):
    """No memory has this id (in this namespace)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "memory not found"


class MemoryExpiredError(MemoryNotFoundError):
    """The memory's ``expires_at`` has passed: it is gone for every read, and maintenance deletes it."""


class StoreClosedError(TieredMemoryError):
    """The store was closed; open a new ``TieredMemory`` to continue."""


class StorageError(TieredMemoryError):
    """The cold tier (LMDB) failed: disk full, permissions, an unreadable file."""


class StoreLockedError(StorageError):
    """Another process holds this store open for writing."""


class ConcurrentUpdateError(StorageError):
    """Another process changed the memory (or stored the text a deduplicating add looked up)
    between this process's read and its write: nothing of the write was stored. ``update`` and
    ``add`` retry by themselves; raised when their retries keep losing."""


class SchemaVersionError(StorageError):
    """The store was written by a newer tiered_memory than this one."""


class EncoderError(TieredMemoryError):
    """No encoder is available for text, or the encoder returned unusable vectors."""


class PermissionDenied(TieredMemoryError, PermissionError):
    """An agent tried an operation it was not granted."""


class QuotaExceededError(TieredMemoryError):
    """An agent's private memory would exceed its quota."""


class DecryptionError(TieredMemoryError):
    """A sealed memory could not be opened: wrong key, or the bytes were altered."""


class EncryptionRequiredError(TieredMemoryError):
    """A sensitive memory was written or read without the store's encryption key."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 3, 80, 80, 6, 6


def short_repr(value: object) -> str:
    """A bounded repr for error messages: a hostile, deeply nested or huge value cannot make the
    message itself raise RecursionError or run to megabytes (issue 11.11)."""
    try:
        return _SHORT.repr(value)
    except Exception:  # a __repr__ that raises: say what type it was
        return f"<{type(value).__name__}>"


class SyncError(TieredMemoryError):
    """A sync between two stores could not go on; nothing of the batch that failed was applied on
    either side, and the next sync resumes where the last applied batch ended."""


class IncompatibleStoresError(SyncError):
    """Two stores whose memories cannot be exchanged (another encoder, dimension or layout)."""
