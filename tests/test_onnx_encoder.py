"""The ONNX Runtime encoders: export and cache, agreement with PyTorch, store identity, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tiered_memory import ConfigError, OnnxMiniLMEncoder, TieredMemory, make_encoder
from tiered_memory.encoders import MINILM, MINILM_INT8, SAME_VECTORS_MIN_COSINE, check_store_encoder
from tiered_memory.onnx_encoder import cache_key, ensure_exported, read_verified

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parent.parent

TEXTS = [
    "User prefers technical explanations with code examples",
    "Thank you .",
    "Discussed RAG for document analysis on March 15th",
    "Can you help me find the train station? I think I am lost, and my phone's battery died an hour ago.",
    "",  # the tokenizer still gives [CLS] [SEP]
    "naïve café déjà vu — 東京 🙂",
    # Longer than tokenizer.json's own 128-token limit: sentence-transformers truncates at 256.
    " ".join(f"word{i}" for i in range(300)),
]


EXPORT_OFFLINE = """
    import socket, sys
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    from tiered_memory import OnnxMiniLMEncoder
    encoder = OnnxMiniLMEncoder("int8")
    vector = encoder.encode(["offline"])[0]
    print(encoder.model_dir, float(vector @ vector))
"""


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory):
    """One export of each variant per session, into a temporary cache directory."""
    directory = tmp_path_factory.mktemp("onnx-cache")
    before = os.environ.get("TIERED_MEMORY_CACHE_DIR")
    os.environ["TIERED_MEMORY_CACHE_DIR"] = str(directory)
    yield directory
    if before is None:
        os.environ.pop("TIERED_MEMORY_CACHE_DIR", None)
    else:
        os.environ["TIERED_MEMORY_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def onnx_float(onnx_cache) -> OnnxMiniLMEncoder:
    encoder = OnnxMiniLMEncoder("float")
    encoder.load()
    return encoder


@pytest.fixture(scope="session")
def concurrent_export(onnx_cache) -> list[tuple[int, str, str]]:
    """Two processes export the int8 model into the empty cache at once, every connect() refused."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TIERED_MEMORY_CACHE_DIR": str(onnx_cache), "HF_HUB_OFFLINE": "1"}
    children = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(EXPORT_OFFLINE)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [child.communicate(timeout=300) for child in children]
    return [(child.returncode, out, err) for child, (out, err) in zip(children, outputs)]


@pytest.fixture(scope="session")
def onnx_int8(concurrent_export) -> OnnxMiniLMEncoder:
    encoder = OnnxMiniLMEncoder("int8")  # loads what the two processes exported
    encoder.load()
    return encoder


def test_float_onnx_matches_torch_within_the_identity_tolerance(onnx_float, minilm) -> None:
    ours, reference = onnx_float.encode(TEXTS), minilm.encode(TEXTS)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= SAME_VECTORS_MIN_COSINE
    assert np.abs(ours - reference).max() < 1e-4
    assert onnx_float.name == minilm.name == MINILM  # same vectors, same store identity


def test_batch_order_and_size_do_not_change_vectors(onnx_float) -> None:
    one_by_one = np.stack([onnx_float.encode([t])[0] for t in TEXTS])
    batched = onnx_float.encode(TEXTS)  # sorted by length, padded to the longest
    assert np.abs(one_by_one - batched).max() < 1e-5


def test_int8_is_close_but_has_its_own_identity(onnx_int8, minilm) -> None:
    cosines = (onnx_int8.encode(TEXTS[:4]) * minilm.encode(TEXTS[:4])).sum(axis=1)
    assert cosines.min() > 0.9  # measured 0.96 minimum over 5k DailyDialog utterances
    assert onnx_int8.name == MINILM_INT8 != MINILM


def test_store_accepts_compatible_backends_and_refuses_int8(tmp_path, onnx_float, onnx_int8, minilm) -> None:
    path = tmp_path / "m"
    with TieredMemory(path, encoder=onnx_float) as mem:
        mid = mem.add("The user lives in Lisbon and works remotely")
    with TieredMemory(path, encoder=minilm) as mem:  # torch opens the ONNX float store
        assert mem.search("Where does the user live?", k=1)[0].memory.id == mid
    with pytest.raises(ConfigError, match="built with encoder 'all-MiniLM-L6-v2'.*minilm-onnx' or 'minilm-torch'"):
        TieredMemory(path, encoder=onnx_int8)
    with TieredMemory(tmp_path / "q", encoder=onnx_int8):
        pass
    with pytest.raises(ConfigError, match="encoder='minilm-onnx-int8'"):
        TieredMemory(tmp_path / "q", encoder=minilm)


def test_encoder_names_select_backends(tmp_path, onnx_cache) -> None:
    with TieredMemory(tmp_path / "a", encoder="minilm-onnx-int8") as mem:
        assert isinstance(mem.encoder, OnnxMiniLMEncoder) and mem.encoder.variant == "int8"
    assert make_encoder("minilm-torch").backend == "torch"
    assert make_encoder("default").backend == "onnx"
    with pytest.raises(ConfigError, match="unknown encoder 'minilm-gpu'; use one of minilm-onnx-int8"):
        TieredMemory(tmp_path / "b", encoder="minilm-gpu")


def test_check_store_encoder_names_no_opener_for_a_foreign_model() -> None:
    class Other:
        name, dimension = "other-model", 384

    with pytest.raises(ConfigError, match="with the encoder it was built with"):
        check_store_encoder("store", "bge-small", Other())
    check_store_encoder("store", None, Other())  # a store without an encoder yet


def test_a_damaged_cached_model_is_exported_again(onnx_int8, tmp_path) -> None:
    directory = onnx_int8.model_dir
    data = read_verified(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert directory.name == cache_key(onnx_int8.model_path, "int8") and manifest["bytes"] == len(data)
    with open(directory / "model.onnx", "r+b") as handle:  # flip bytes in the middle
        handle.seek(len(data) // 2)
        handle.write(b"\xff" * 64)
    assert read_verified(directory) is None
    again, same = ensure_exported(onnx_int8.model_path, "int8")
    assert same == directory and read_verified(directory) == again
    copy = tmp_path / "copy"  # a model without its manifest (a crash between the two renames)
    copy.mkdir()
    (copy / "model.onnx").write_bytes(again)
    assert read_verified(copy) is None
    (copy / "manifest.json").write_text(json.dumps({"sha256": "0" * 64}))
    assert read_verified(copy) is None


def _python(code: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                          text=True, timeout=timeout)




def test_two_processes_exporting_at_once_leave_one_valid_model_offline(concurrent_export, onnx_cache) -> None:
    for _, out, err in concurrent_export:
        assert "network access attempted" not in err
        assert out, err[-2000:]
    assert [code for code, _, _ in concurrent_export] == [0, 0]
    directories = {out.split()[0] for _, out, _ in concurrent_export}
    assert len(directories) == 1
    directory = Path(directories.pop())
    assert read_verified(directory) is not None
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "model.onnx"]
    assert [p.name for p in directory.parent.iterdir() if p.name.startswith(".")] == []  # no temporaries left
    assert all(abs(float(out.split()[1]) - 1.0) < 1e-5 for _, out, _ in concurrent_export)


def test_the_onnx_path_does_not_import_torch_once_cached(onnx_float, onnx_cache) -> None:
    result = _python("""
        import sys
        from tiered_memory import TieredMemory
        import tempfile
        with tempfile.TemporaryDirectory() as scratch:
            with TieredMemory(scratch + "/m", encoder="minilm-onnx") as mem:
                mem.add("a memory")
                mem.search("a query")
        print(sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules))
    """, {"TIERED_MEMORY_CACHE_DIR": str(onnx_cache)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
