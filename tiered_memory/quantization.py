"""Quantizers for stored embeddings: float32, float16, int8 and int4 scalar, binary.

Scalar schemes learn one range per dimension from a sample (quantile clipping) and map values
by rounding and *clipping*: a value outside the calibrated range saturates at the end code, it
never wraps around (wrap-around turns a large positive value into a large negative one).
Before calibration the range is +-5/sqrt(d) (capped at 1): five standard deviations of a
coordinate of a random unit vector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError, DimensionMismatchError


class Quantizer(ABC):
    """Turns float32 rows into compact codes and back; state is a msgpack-able dict."""

    name: ClassVar[str]

    def __init__(self, dimension: int) -> None:
        if not isinstance(dimension, int) or dimension < 1:
            raise ConfigError(f"dimension must be a positive int, got {dimension!r}")
        self.dimension = dimension

    @property
    @abstractmethod
    def code_bytes(self) -> int:
        """Bytes of one encoded vector."""

    @property
    def calibrated(self) -> bool:
        return True

    def fit(self, sample: np.ndarray) -> None:
        """Learn ranges from a sample of vectors; schemes without parameters ignore it."""
        self._check(sample)

    @abstractmethod
    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> (n, code_bytes) codes."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, code_bytes) codes -> (n, d) float32 approximations."""

    def scores(self, query: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Inner products of one float32 query with every coded row."""
        return self.decode(codes) @ query

    def clip_rate(self, vectors: np.ndarray) -> float:
        """Share of values outside the representable range (saturated by encode)."""
        return 0.0

    def state(self) -> dict[str, Any]:
        return {"scheme": self.name, "dimension": self.dimension}

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise DimensionMismatchError(
                f"{self.name} quantizer expects (n, {self.dimension}) vectors, got shape {vectors.shape}"
            )
        return vectors


class Float32Quantizer(Quantizer):
    """The reference: no loss, 4 bytes per dimension."""

    name = "float32"

    @property
    def code_bytes(self) -> int:
        return 4 * self.dimension

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._check(vectors)).view(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(codes, dtype=np.uint8).view(np.float32)


class Float16Quantizer(Quantizer):
    """Half precision: 2 bytes per dimension, error below 1e-3 for unit-vector coordinates."""

    name = "float16"

    @property
    def code_bytes(self) -> int:
        return 2 * self.dimension

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._check(vectors).astype(np.float16)).view(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(codes, dtype=np.uint8).view(np.float16).astype(np.float32)


class _ScalarQuantizer(Quantizer):
    """Per-dimension affine map of [lo, hi] onto `levels` integer codes, rounded and clipped."""

    levels: ClassVar[int]

    def __init__(self, dimension: int, clip_quantile: float = 0.999) -> None:
        super().__init__(dimension)
        if not 0.5 < clip_quantile <= 1.0:
            raise ConfigError(f"clip_quantile must be in (0.5, 1], got {clip_quantile!r}")
        self.clip_quantile = clip_quantile
        # Before calibration: +-5 standard deviations of a coordinate of a random unit vector
        # (1/sqrt(d) each), capped at the hard bound 1. Values beyond it saturate, never wrap.
        prior = min(1.0, 5.0 / np.sqrt(dimension))
        self.lo = np.full(dimension, -prior, dtype=np.float32)
        self.hi = np.full(dimension, prior, dtype=np.float32)
        self._calibrated = False
        self._refresh()

    @property
    def calibrated(self) -> bool:
        return self._calibrated

    def _refresh(self) -> None:
        span = np.maximum(self.hi - self.lo, 1e-12)
        self.step = (span / (self.levels - 1)).astype(np.float32)

    def fit(self, sample: np.ndarray) -> None:
        sample = self._check(sample)
        if len(sample) < 2:
            raise ConfigError("calibration needs at least 2 vectors")
        q = self.clip_quantile
        self.lo = np.quantile(sample, 1.0 - q, axis=0).astype(np.float32)
        self.hi = np.quantile(sample, q, axis=0).astype(np.float32)
        flat = self.hi <= self.lo  # a constant dimension: give it a tiny range around its value
        self.lo[flat] -= 1e-6
        self.hi[flat] += 1e-6
        self._calibrated = True
        self._refresh()

    def levels_of(self, vectors: np.ndarray) -> np.ndarray:
        """Integer levels 0..levels-1 (uint8), rounded to nearest and clipped."""
        vectors = self._check(vectors)
        scaled = np.rint((vectors - self.lo) / self.step)
        return np.clip(scaled, 0, self.levels - 1).astype(np.uint8)

    def values_of(self, levels: np.ndarray) -> np.ndarray:
        return levels.astype(np.float32) * self.step + self.lo

    def clip_rate(self, vectors: np.ndarray) -> float:
        vectors = self._check(vectors)
        if vectors.size == 0:
            return 0.0
        half_step = self.step / 2
        outside = (vectors < self.lo - half_step) | (vectors > self.hi + half_step)
        return float(outside.mean())

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "clip_quantile": self.clip_quantile,
            "calibrated": self._calibrated,
            "lo": self.lo.tobytes(),
            "hi": self.hi.tobytes(),
        }

    def _load(self, state: dict[str, Any]) -> None:
        self.lo = np.frombuffer(state["lo"], dtype=np.float32).copy()
        self.hi = np.frombuffer(state["hi"], dtype=np.float32).copy()
        self._calibrated = bool(state["calibrated"])
        self._refresh()


class Int8Quantizer(_ScalarQuantizer):
    """One byte per dimension. Codes are int8 (level - 128) so that they are what hnswlib-free
    scans and the cold tier store; ``decode`` gives the float32 vectors the warm graph is built on."""

    name = "int8"
    levels = 256

    @property
    def code_bytes(self) -> int:
        return self.dimension

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return (self.levels_of(vectors).astype(np.int16) - 128).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return (codes.astype(np.float32) + 128.0) * self.step + self.lo

    def scan_weights(self, query: np.ndarray) -> tuple[np.ndarray, float]:
        """(w, b) with q . decode(c) = c . w + b, so a scan is one pass over the raw codes."""
        # q . ((c + 128) * step + lo) = (q * step) . c + q . (128 * step + lo)
        weights = (query * self.step).astype(np.float32)
        return weights, float(query @ (128.0 * self.step + self.lo))

    def scores(self, query: np.ndarray, codes: np.ndarray) -> np.ndarray:
        weights, offset = self.scan_weights(query)
        return codes.astype(np.float32) @ weights + np.float32(offset)


class Int4Quantizer(_ScalarQuantizer):
    """Half a byte per dimension: 16 levels, two dimensions packed in each byte."""

    name = "int4"
    levels = 16

    @property
    def code_bytes(self) -> int:
        return (self.dimension + 1) // 2

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        levels = self.levels_of(vectors)
        if self.dimension % 2:
            levels = np.pad(levels, ((0, 0), (0, 1)))
        return (levels[:, 0::2] << 4) | levels[:, 1::2]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.uint8)
        levels = np.empty((len(codes), codes.shape[1] * 2), dtype=np.uint8)
        levels[:, 0::2] = codes >> 4
        levels[:, 1::2] = codes & 0x0F
        return self.values_of(levels[:, : self.dimension])


class BinaryQuantizer(Quantizer):
    """One bit per dimension (the sign). Ranked by Hamming distance; rescore with floats."""

    name = "binary"

    @property
    def code_bytes(self) -> int:
        return (self.dimension + 7) // 8

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.packbits(self._check(vectors) > 0, axis=1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1)[:, : self.dimension]
        # +-1/sqrt(d): unit length, so decoded vectors live on the same scale as the originals.
        return (bits.astype(np.float32) * 2.0 - 1.0) / np.sqrt(self.dimension, dtype=np.float32)

    def scores(self, query: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # Similarity = d - 2 * Hamming(sign(q), code), scaled to [-1, 1]; numpy >= 2 counts bits natively.
        query_code = self.encode(query[None, :])[0]
        hamming = np.bitwise_count(np.bitwise_xor(codes, query_code)).sum(axis=1, dtype=np.int32)
        return (self.dimension - 2.0 * hamming) / self.dimension


SCHEMES: dict[str, type[Quantizer]] = {
    cls.name: cls for cls in (Float32Quantizer, Float16Quantizer, Int8Quantizer, Int4Quantizer, BinaryQuantizer)
}


def make_quantizer(scheme: str, dimension: int, clip_quantile: float = 0.999) -> Quantizer:
    """A fresh quantizer of the named scheme."""
    cls = SCHEMES.get(scheme)
    if cls is None:
        raise ConfigError(f"unknown quantization scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    if issubclass(cls, _ScalarQuantizer):
        return cls(dimension, clip_quantile)
    return cls(dimension)


def quantizer_from_state(state: dict[str, Any]) -> Quantizer:
    """Rebuild a quantizer from :meth:`Quantizer.state` (as persisted in the cold tier)."""
    quantizer = make_quantizer(state["scheme"], state["dimension"], state.get("clip_quantile", 0.999))
    if isinstance(quantizer, _ScalarQuantizer):
        quantizer._load(state)
    return quantizer
