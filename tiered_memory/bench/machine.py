"""What a result was measured on: CPU, cores, memory, Python, library versions, load; and RSS."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "tiered-memory", "numpy", "hnswlib", "lmdb", "msgpack", "cachetools", "sentence-transformers", "torch",
    "transformers", "onnxruntime", "onnx", "tokenizers", "chromadb", "usearch", "tqdm",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _git_revision() -> str | None:
    """The checkout's commit (with '+dirty' when files differ), when run from a git checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _blas() -> list[dict[str, Any]] | None:
    """numpy's BLAS and its thread count (numpy exact search and our scans run on it)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [{"api": pool.get("internal_api"), "threads": pool.get("num_threads"), "version": pool.get("version")}
            for pool in threadpool_info() if pool.get("user_api") == "blas"]


def warm_occupancy(mem: Any) -> tuple[int, int]:
    """(elements in use, slots allocated) over a store's warm graphs: hnswlib allocates every
    slot up front, but only the pages of written slots become resident."""
    graphs = mem.warm.graphs.values()
    return (sum(g.index.element_count for g in graphs), sum(g.index.get_max_elements() for g in graphs))


def describe_machine() -> dict[str, Any]:
    """The facts a reader needs to compare a result with their own machine."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _total_memory_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "libraries": _versions(),
        "git_revision": _git_revision(),
        # Load at the start: a busy machine widens every tail; readers should know.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "blas": _blas(),
    }


def rss_bytes() -> int:
    """Resident set size of this process now (Linux: /proc/self/statm; elsewhere the peak)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def rss_parts() -> dict[str, int]:
    """RSS split (Linux) into anonymous memory (heap: what the process really costs) and
    file-backed pages (mapped files such as LMDB's data.mdb: page cache, reclaimable)."""
    parts = {"rss": rss_bytes(), "anon": 0, "file": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile", "RssShmem"):
                key = "anon" if name == "RssAnon" else "file"
                parts[key] += int(value.split()[0]) * 1024
    except OSError:
        parts["anon"] = parts["rss"]
    return parts


def peak_rss_bytes() -> int:
    """The most this process has held resident since it started."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def directory_bytes(path: Path) -> int:
    """Bytes of disk the files under `path` occupy (allocated blocks: LMDB files are sparse)."""
    total = 0
    for file in Path(path).rglob("*"):
        if file.is_file():
            stat = file.stat()
            total += getattr(stat, "st_blocks", 0) * 512 or stat.st_size
    return total
