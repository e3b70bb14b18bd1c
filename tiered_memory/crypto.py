"""Encryption at rest: AES-256-GCM (from the ``cryptography`` package) under a key the application holds.

Sealed bytes are ``nonce (12) || ciphertext || tag (16)``; the associated data binds each blob to
its memory and field, so a blob moved to another record fails to open instead of decrypting.
"""

from __future__ import annotations

import os

from tiered_memory.errors import ConfigError, DecryptionError

NONCE_BYTES = 12
OVERHEAD = NONCE_BYTES + 16  # nonce + GCM tag
_KEY_CHECK = b"tiered_memory key check v1"


class Sealer:
    """Seals and opens byte strings with one AES-GCM key (16, 24 or 32 bytes; 32 recommended)."""

    def __init__(self, key: bytes) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as err:
            raise ConfigError(
                "encryption needs the cryptography package: pip install 'tiered-memory[crypto]'"
            ) from err
        if not isinstance(key, (bytes, bytearray)) or len(key) not in (16, 24, 32):
            raise ConfigError("encryption_key must be 16, 24 or 32 random bytes (32 for AES-256); "
                              "make one with os.urandom(32) and keep it outside the store")
        self._aead = AESGCM(bytes(key))

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)  # random 96-bit nonces: safe for 2^32 seals per key
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(bytes(sealed[:NONCE_BYTES]), bytes(sealed[NONCE_BYTES:]), context)
        except (InvalidTag, ValueError) as err:
            raise DecryptionError(
                "a sealed value could not be opened: the encryption key is wrong or the bytes were altered"
            ) from err

    def key_check(self) -> bytes:
        """A sealed constant, stored with the store, that only the right key opens."""
        return self.seal(_KEY_CHECK, b"key-check")

    def verify(self, check: bytes) -> None:
        try:
            valid = self.open(check, b"key-check") == _KEY_CHECK
        except DecryptionError:
            valid = False
        if not valid:
            raise DecryptionError("wrong encryption key for this store: its sealed memories cannot be opened "
                                  "with it (nothing was changed)")
