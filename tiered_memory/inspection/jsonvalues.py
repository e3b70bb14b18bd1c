"""Stored values as JSON and back, exactly: what msgpack holds (bytes, non-finite floats, maps
with any keys) has a tagged form, so a value read back packs to the same msgpack bytes.

Tags are one-key objects: ``{"$bytes": base64}``, ``{"$float": "nan" | "inf" | "-inf"}``, and
``{"$map": [[key, value], ...]}`` for a map whose keys are not all str or one of which starts
with ``$`` (so a caller's own ``{"$bytes": ...}`` metadata is never mistaken for a tag).
"""

from __future__ import annotations

import base64
import math
from typing import Any


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def to_json(value: Any) -> Any:
    """A JSON-ready form of a msgpack-decoded value."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": b64(bytes(value))}
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("$") for key in value):
            return {key: to_json(item) for key, item in value.items()}
        return {"$map": [[to_json(key), to_json(item)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    raise TypeError(f"a {type(value).__name__} has no JSON form here")


def from_json(value: Any) -> Any:
    """Inverse of :func:`to_json`."""
    if isinstance(value, list):
        return [from_json(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "$bytes":
            return unb64(inner)
        if tag == "$float":
            if inner not in ("nan", "inf", "-inf"):
                raise ValueError(f"{{'$float': {inner!r}}} is not a non-finite float")
            return float(inner)
        if tag == "$map":
            return {_hashable(from_json(key)): from_json(item) for key, item in inner}
    return {key: from_json(item) for key, item in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key
