"""PNG plots of the quantization report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tiered_memory.errors import TieredMemoryError

_COLORS = {"float32": "#1f77b4", "float16": "#2ca02c", "int8": "#d62728", "int4": "#9467bd", "binary": "#ff7f0e"}
_ENGINE_EF = 64


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib
    except ImportError as err:
        raise TieredMemoryError("plots need matplotlib: pip install 'tiered-memory[report]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(scheme: str) -> str:
    return _COLORS.get(scheme, "#555555")


def plot_recall_vs_bytes(data: dict[str, Any], path: Path) -> Path:
    """recall@10 against RAM per vector: exact scans (x = code size) and hnswlib at ef=64 (x = graph)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for row in data["flat"]:
        marker = "o" if row["rescore"] == "off" else "^"
        ax.scatter(row["ram_bytes_per_vector"], row["recall@10"], color=_color(row["scheme"]), marker=marker, s=40)
        # the scheme beside its plain point; rescored points only by their oversampling (e.g. "x4")
        label = row["scheme"] if row["rescore"] == "off" else row["rescore"].split()[-1]
        ax.annotate(label, (row["ram_bytes_per_vector"], row["recall@10"]), fontsize=7,
                    xytext=(5, -3 if row["rescore"] == "off" else 2), textcoords="offset points")
    graph_rows = [r for r in data["hnsw"] if r["ef"] == _ENGINE_EF] or data["hnsw"]
    for row in graph_rows:
        marker = "s" if row["rescore"] == "off" else "D"
        ax.scatter(row["ram_bytes_per_vector"], row["recall@10"], color=_color(row["scheme"]), marker=marker, s=40,
                   alpha=0.7)
    return _finish(plt, fig, ax, list(data["schemes"]), path,
                   "RAM bytes per vector (log): code size for exact scans, hnswlib graph for ANN",
                   f"recall@10 vs bytes per vector (circles/triangles: exact scan without/with rescoring; "
                   f"squares/diamonds: hnswlib ef={graph_rows[0]['ef'] if graph_rows else '-'})")


def plot_recall_vs_latency(data: dict[str, Any], path: Path) -> Path:
    """recall@10 against p50 latency: one line per scheme and rescoring across hnswlib's ef values,
    one point per exact scan."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in data["hnsw"]:
        series.setdefault((row["scheme"], row["rescore"]), []).append(row)
    for (scheme, rescore), rows in series.items():
        rows = sorted(rows, key=lambda r: r["ef"])
        ax.plot([r["p50_us"] for r in rows], [r["recall@10"] for r in rows], color=_color(scheme),
                linestyle="-" if rescore == "off" else "--", marker="." if rescore == "off" else "x", linewidth=1)
    for row in data["flat"]:
        ax.scatter(row["p50_us"], row["recall@10"], color=_color(row["scheme"]),
                   marker="o" if row["rescore"] == "off" else "^", s=30)
    return _finish(plt, fig, ax, list(data["schemes"]), path, "p50 latency per query, µs (log), one thread",
                   "recall@10 vs latency (lines: hnswlib over ef, dashed = rescored; points: exact scans)")


def _finish(plt: Any, fig: Any, ax: Any, schemes: list[str], path: Path, xlabel: str, title: str) -> Path:
    """Log x axis, labels, a legend of the schemes' colours; save the PNG and free the figure."""
    from matplotlib.lines import Line2D

    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("recall@10 vs exact float32")
    ax.set_title(title, fontsize=8)
    handles = [Line2D([0], [0], color=_color(s), marker="o", linestyle="", label=s) for s in schemes]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
