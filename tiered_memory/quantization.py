"""Quantizers for stored embeddings: float32, float16, int8 and int4 scalar, binary.

Scalar schemes learn one range per dimension from a sample (quantile clipping) and map values
by clipping *then* rounding: a value outside the calibrated range saturates at the end code, it
never wraps around (wrap-around turns a large positive value into a large negative one), and a
huge value never overflows the arithmetic on its way to a code.
Before calibration the range is +-5/sqrt(d) (capped at 1): five standard deviations of a
coordinate of a random unit vector.

Every scheme scores a float32 query against its codes (``scores``, ``score_matrix``) the way a
scan over them would: int8 and int4 without decoding the rows first, binary by Hamming distance.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from tiered_memory.errors import (
    ConfigError,
    DimensionMismatchError,
    InvalidInputError,
    InvalidVectorError,
    StorageError,
)

# Rows widened to float32 at a time when scoring codes: numpy has no int8 BLAS path, and a
# 1,024-row chunk (1.5 MB at 384 dims) stays in cache for the product (see blocks.scan).
_CHUNK_ROWS = 1_024
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)


def _popcount_rows(bits: np.ndarray) -> np.ndarray:
    """Set bits per row of a uint8 or uint64 matrix (numpy >= 2 counts natively; older numpy by table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(bits).sum(axis=1, dtype=np.int32)
    as_bytes = np.ascontiguousarray(bits).view(np.uint8).reshape(len(bits), -1)
    return _POPCOUNT[as_bytes].sum(axis=1, dtype=np.int32)


class Quantizer(ABC):
    """Turns float32 rows into compact codes and back; state is a msgpack-able dict."""

    name: ClassVar[str]
    code_dtype: ClassVar[type[np.generic]] = np.uint8

    def __init__(self, dimension: int) -> None:
        try:
            index = operator.index(dimension)  # ints, and numpy's integer scalars
        except TypeError:
            index = 0
        if isinstance(dimension, bool) or index < 1:
            raise ConfigError(f"dimension must be a positive int, got {dimension!r}")
        self.dimension = index

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dimension={self.dimension})"

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
        return self.score_matrix(np.asarray(query, dtype=np.float32)[None, :], codes)[0]

    def score_matrix(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(m, n) similarities of m queries with n coded rows, decoding 1,024 rows at a time."""
        queries = self._check(queries)
        codes = self._check_codes(codes)
        prepared = self.query_side(queries).T
        out = np.empty((len(queries), len(codes)), dtype=np.float32)
        for start in range(0, len(codes), _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, len(codes))
            out[:, start:stop] = (self.decode(codes[start:stop]) @ prepared).T
        return out

    def query_side(self, queries: np.ndarray) -> np.ndarray:
        """What a query is compared with codes as: the float query itself (asymmetric scoring)."""
        return queries

    def clip_rate(self, vectors: np.ndarray) -> float:
        """Share of values outside the representable range (saturated by encode)."""
        self._check(vectors)
        return 0.0

    def state(self) -> dict[str, Any]:
        return {"scheme": self.name, "dimension": self.dimension}

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise DimensionMismatchError(
                f"{self.name} quantizer expects (n, {self.dimension}) vectors, got shape {vectors.shape}"
            )
        if not np.isfinite(vectors).all():
            row = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            raise InvalidVectorError(f"vector {row} holds NaN or infinity; {self.name} codes need finite values")
        return vectors

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.dtype != self.code_dtype:
            raise InvalidInputError(f"{self.name} codes are {np.dtype(self.code_dtype).name}, got {codes.dtype}")
        if codes.ndim != 2 or codes.shape[1] != self.code_bytes:
            raise DimensionMismatchError(
                f"{self.name} codes of {self.dimension}-d vectors have shape (n, {self.code_bytes}), "
                f"got {codes.shape}"
            )
        return codes


class Float32Quantizer(Quantizer):
    """The reference: no loss, 4 bytes per dimension."""

    name = "float32"

    @property
    def code_bytes(self) -> int:
        return 4 * self.dimension

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._check(vectors)).view(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._check_codes(codes)).view(np.float32)

    def score_matrix(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # The codes *are* float32: one BLAS product, no chunked copy.
        return (self.decode(codes) @ self._check(queries).T).T


class Float16Quantizer(Quantizer):
    """Half precision: 2 bytes per dimension, relative error at most 2**-11 (5e-4)."""

    name = "float16"

    @property
    def code_bytes(self) -> int:
        return 2 * self.dimension

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        # Saturate at float16's largest finite value: a cast alone would overflow to infinity.
        clipped = np.clip(self._check(vectors), -_FLOAT16_MAX, _FLOAT16_MAX)
        return np.ascontiguousarray(clipped.astype(np.float16)).view(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._check_codes(codes)).view(np.float16).astype(np.float32)

    def clip_rate(self, vectors: np.ndarray) -> float:
        vectors = self._check(vectors)
        return float((np.abs(vectors) > _FLOAT16_MAX).mean()) if vectors.size else 0.0


class _ScalarQuantizer(Quantizer):
    """Per-dimension affine map of [lo, hi] onto `levels` integer codes, clipped and rounded."""

    levels: ClassVar[int]
    # Fewer levels make rounding coarser, so clipping more of the tails pays off sooner:
    # measured on DailyDialog (recall@10 of an exact scan), see benchmarks/reports.
    default_clip_quantile: ClassVar[float]

    def __init__(self, dimension: int, clip_quantile: float | None = None) -> None:
        super().__init__(dimension)
        if clip_quantile is None:
            clip_quantile = self.default_clip_quantile
        if isinstance(clip_quantile, bool) or not isinstance(clip_quantile, (int, float)) \
                or not 0.5 < clip_quantile <= 1.0:
            raise ConfigError(f"clip_quantile must be in (0.5, 1], got {clip_quantile!r}")
        self.clip_quantile = float(clip_quantile)
        # Before calibration: +-5 standard deviations of a coordinate of a random unit vector
        # (1/sqrt(d) each), capped at the hard bound 1. Values beyond it saturate, never wrap.
        prior = min(1.0, 5.0 / np.sqrt(self.dimension))
        self.lo = np.full(self.dimension, -prior, dtype=np.float32)
        self.hi = np.full(self.dimension, prior, dtype=np.float32)
        self._calibrated = False
        self._refresh()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dimension={self.dimension}, clip_quantile={self.clip_quantile}, "
                f"calibrated={self._calibrated})")

    @property
    def calibrated(self) -> bool:
        return self._calibrated

    def _refresh(self) -> None:
        span = np.maximum(self.hi - self.lo, 1e-12)
        self.step = (span / (self.levels - 1)).astype(np.float32)

    def fit(self, sample: np.ndarray) -> None:
        sample = self._check(sample)
        if len(sample) < 2:
            raise ConfigError(f"calibration needs at least 2 vectors, got {len(sample)}")
        q = self.clip_quantile
        lo = np.quantile(sample, 1.0 - q, axis=0).astype(np.float32)
        hi = np.quantile(sample, q, axis=0).astype(np.float32)
        flat = hi <= lo  # a constant dimension: give it a tiny range around its value
        lo[flat] -= 1e-6
        hi[flat] += 1e-6
        self.lo, self.hi = lo, hi
        self._calibrated = True
        self._refresh()

    def levels_of(self, vectors: np.ndarray) -> np.ndarray:
        """Integer levels 0..levels-1 (uint8): clipped to [lo, hi] first, then rounded to nearest."""
        vectors = self._check(vectors)
        # Clipping before the division keeps (x - lo) / step finite for any finite x (1e38 / 1e-3
        # would overflow float32); the final clip only absorbs float rounding at the ends.
        inside = np.clip(vectors, self.lo, self.hi)
        scaled = np.rint((inside - self.lo) / self.step)
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
        expected = 4 * self.dimension
        try:
            lo_bytes, hi_bytes, calibrated = state["lo"], state["hi"], state["calibrated"]
        except KeyError as err:
            raise StorageError(f"{self.name} quantizer state lacks {err}; the store's meta is damaged") from err
        if not isinstance(lo_bytes, bytes) or not isinstance(hi_bytes, bytes) \
                or len(lo_bytes) != expected or len(hi_bytes) != expected:
            raise StorageError(f"{self.name} quantizer state has ranges of the wrong size for {self.dimension}-d "
                               "vectors; the store's meta is damaged")
        lo = np.frombuffer(lo_bytes, dtype=np.float32).copy()
        hi = np.frombuffer(hi_bytes, dtype=np.float32).copy()
        if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi > lo).all()):
            raise StorageError(f"{self.name} quantizer state has empty or non-finite ranges; the store's meta "
                               "is damaged")
        self.lo, self.hi = lo, hi
        self._calibrated = bool(calibrated)
        self._refresh()


class Int8Quantizer(_ScalarQuantizer):
    """One byte per dimension. Codes are int8 (level - 128), as the cold tier stores and scans
    them; ``decode`` gives the float32 vectors the warm graph is built on."""

    name = "int8"
    levels = 256
    default_clip_quantile = 0.9999  # as MemoryConfig.clip_quantile
    code_dtype = np.int8

    @property
    def code_bytes(self) -> int:
        return self.dimension

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return (self.levels_of(vectors).astype(np.int16) - 128).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return (self._check_codes(codes).astype(np.float32) + 128.0) * self.step + self.lo

    def scan_weights(self, query: np.ndarray) -> tuple[np.ndarray, float]:
        """(w, b) with q . decode(c) = c . w + b, so a scan is one pass over the raw codes."""
        # q . ((c + 128) * step + lo) = (q * step) . c + q . (128 * step + lo)
        query = np.asarray(query, dtype=np.float32)
        weights = (query * self.step).astype(np.float32)
        return weights, float(query @ (128.0 * self.step + self.lo))

    def score_matrix(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        queries = self._check(queries)
        codes = self._check_codes(codes)
        weights = (queries * self.step).T  # (d, m): one scan_weights per query
        offsets = queries @ (128.0 * self.step + self.lo)
        out = np.empty((len(queries), len(codes)), dtype=np.float32)
        for start in range(0, len(codes), _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, len(codes))
            out[:, start:stop] = (codes[start:stop].astype(np.float32) @ weights).T
        out += offsets[:, None]
        return out


class Int4Quantizer(_ScalarQuantizer):
    """Half a byte per dimension: 16 levels, two dimensions packed in each byte."""

    name = "int4"
    levels = 16
    default_clip_quantile = 0.995

    @property
    def code_bytes(self) -> int:
        return (self.dimension + 1) // 2

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        levels = self.levels_of(vectors)
        if self.dimension % 2:
            levels = np.pad(levels, ((0, 0), (0, 1)))
        return (levels[:, 0::2] << 4) | levels[:, 1::2]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = self._check_codes(codes)
        levels = np.empty((len(codes), codes.shape[1] * 2), dtype=np.uint8)
        levels[:, 0::2] = codes >> 4
        levels[:, 1::2] = codes & 0x0F
        return self.values_of(levels[:, : self.dimension])

    def score_matrix(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # q . decode(c) = (q * step)[even] . high nibbles + (q * step)[odd] . low nibbles + q . lo:
        # two products over the packed bytes, no unpacked (n, d) matrix.
        queries = self._check(queries)
        codes = self._check_codes(codes)
        weights = np.zeros((len(queries), 2 * self.code_bytes), dtype=np.float32)
        weights[:, : self.dimension] = queries * self.step
        high, low = weights[:, 0::2].T.copy(), weights[:, 1::2].T.copy()
        out = np.empty((len(queries), len(codes)), dtype=np.float32)
        for start in range(0, len(codes), _CHUNK_ROWS):
            chunk = codes[start:start + _CHUNK_ROWS]
            out[:, start:start + len(chunk)] = ((chunk >> 4).astype(np.float32) @ high
                                                + (chunk & 0x0F).astype(np.float32) @ low).T
        out += (queries @ self.lo)[:, None]
        return out


class BinaryQuantizer(Quantizer):
    """One bit per dimension (the sign). Ranked by Hamming distance; rescore with floats."""

    name = "binary"

    @property
    def code_bytes(self) -> int:
        return (self.dimension + 7) // 8

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.packbits(self._check(vectors) > 0, axis=1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(self._check_codes(codes), axis=1)[:, : self.dimension]
        # +-1/sqrt(d): unit length, so decoded vectors live on the same scale as the originals.
        return (bits.astype(np.float32) * 2.0 - 1.0) / np.sqrt(self.dimension, dtype=np.float32)

    def query_side(self, queries: np.ndarray) -> np.ndarray:
        # Symmetric: the query is binarized too. Products of +-1/sqrt(d) vectors equal the Hamming
        # scores (d - 2H) / d exactly in float32, and for many queries a float product beats
        # numpy's byte-wise XOR and popcount.
        return self.decode(self.encode(queries))

    def scores(self, query: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # Similarity = (d - 2 * Hamming(sign(q), code)) / d, in [-1, 1]: one XOR and a popcount per byte.
        codes = self._check_codes(codes)
        query_code = self.encode(np.asarray(query, dtype=np.float32)[None, :])
        if self.code_bytes % 8 == 0:
            # XOR and count 8 bytes at a time: 5x faster than byte by byte (61k codes: 2.5 vs 12 ms).
            codes, query_code = np.ascontiguousarray(codes).view(np.uint64), query_code.view(np.uint64)
        hamming = _popcount_rows(np.bitwise_xor(codes, query_code[0]))
        return ((self.dimension - 2.0 * hamming) / self.dimension).astype(np.float32)


SCHEMES: dict[str, type[Quantizer]] = {
    cls.name: cls for cls in (Float32Quantizer, Float16Quantizer, Int8Quantizer, Int4Quantizer, BinaryQuantizer)
}


def make_quantizer(scheme: str, dimension: int, clip_quantile: float | None = None) -> Quantizer:
    """A fresh quantizer of the named scheme; `clip_quantile` (scalar schemes) defaults per scheme."""
    cls = SCHEMES.get(scheme)
    if cls is None:
        raise ConfigError(f"unknown quantization scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    if issubclass(cls, _ScalarQuantizer):
        return cls(dimension, clip_quantile)
    return cls(dimension)


def quantizer_from_state(state: dict[str, Any]) -> Quantizer:
    """Rebuild a quantizer from :meth:`Quantizer.state` (as persisted in the cold tier)."""
    if not isinstance(state, dict) or "scheme" not in state or "dimension" not in state:
        raise StorageError(f"quantizer state must be a dict with 'scheme' and 'dimension', got {state!r:.200}")
    quantizer = make_quantizer(state["scheme"], state["dimension"], state.get("clip_quantile"))
    if isinstance(quantizer, _ScalarQuantizer):
        quantizer._load(state)
    return quantizer
