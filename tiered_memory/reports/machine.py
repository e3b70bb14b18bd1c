"""The machine description printed beside every measured number (shared with the benchmarks)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tiered_memory.bench.machine import describe_machine as _describe

_SHOWN_LIBRARIES = ("tiered-memory", "numpy", "hnswlib", "lmdb", "sentence-transformers", "torch")


def describe_machine(command: str) -> dict[str, Any]:
    """CPU, cores, memory, OS, Python, library versions, load, the date, and the command that ran."""
    return {**_describe(), "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), "command": command}


def machine_markdown(machine: dict[str, Any]) -> str:
    """A short Markdown list of :func:`describe_machine`'s answer."""
    memory = machine.get("memory_bytes")
    libraries = machine.get("libraries", {})
    versions = ", ".join(f"{name} {libraries[name]}" for name in _SHOWN_LIBRARIES if libraries.get(name))
    load = machine.get("load_average_1m")
    return "\n".join([
        f"- CPU: {machine['cpu']}, {machine['cores']} cores" + (f", {memory / 2**30:.1f} GiB RAM" if memory else ""),
        f"- OS: {machine['os']}; Python {machine['python']}; {versions}",
        f"- Load average at the start (1 min): {load:.2f}" if load is not None else "- Load average: not available",
        f"- Revision: {machine.get('git_revision') or 'not a git checkout'}",
        f"- Date: {machine['date_utc']}",
        f"- Command: `{machine['command']}`",
    ])
