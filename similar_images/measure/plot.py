"""The tuning plot: recall@k against single-query latency, marker area showing memory (matplotlib, headless)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._util.io import atomic_path
from .tune_report import TunePoint, TuneReport, fraction_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_tuning"]

logger = logging.getLogger(__name__)


def plot_tuning(report: TuneReport, path: str | os.PathLike[str] | None = None, *,
                title: str | None = None, served: bool | None = None) -> Figure:
    """Recall@k against single-query latency, marker area showing memory; optionally saved as a PNG.

    Args:
        report: The tuning report.
        path: Where to save the PNG (atomically); ``None`` only returns the figure.
        title: Figure title.
        served: Plot the recall and latency as served (after the search's exact re-ranking) instead of the
            index's own (default: the report's mode).

    Uses matplotlib's object API (no pyplot, no GUI backend), so it works headless.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415  (heavy: matplotlib)
    from matplotlib.lines import Line2D  # noqa: PLC0415  (heavy: matplotlib)
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415  (heavy: matplotlib)

    fig = Figure(figsize=(11, 6.8), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    families = sorted({p.family for p in report.points})
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f", "#393b79", "#e7969c", "#637939"]
    colours = {f: palette[i % len(palette)] for i, f in enumerate(families)}
    max_mem = max(p.memory_bytes for p in report.points)

    def size(mem: float) -> float:
        return 12 + 420 * math.sqrt(mem / max_mem)

    mode = report._mode(served)

    def rec(p: TunePoint) -> float:
        return p.recall_in(mode)

    def lat(p: TunePoint) -> float:
        return p.latency_in(mode)

    best = {p.factory: p for p in report.by_factory(mode)}
    by_factory: dict[str, list[TunePoint]] = {}
    for p in report.points:
        # for re-ranking indexes, draw only the k_factor chain of the index's best setting
        if "k_factor" in p.params and p.params["k_factor"] != best[p.factory].params.get("k_factor"):
            continue
        by_factory.setdefault(p.factory, []).append(p)
    for factory, pts in by_factory.items():
        colour = colours[pts[0].family]
        ax.plot([lat(p) for p in pts], [rec(p) for p in pts], "-", color=colour, alpha=0.45, lw=1)
        ax.scatter([lat(p) for p in pts], [rec(p) for p in pts], s=[size(p.memory_bytes) for p in pts],
                   color=colour, alpha=0.5, edgecolors="white", linewidths=0.5)
        b = best[factory]
        ax.annotate(factory, (lat(b), rec(b)), textcoords="offset points", xytext=(4, 3), fontsize=8,
                    color=colour, alpha=0.9)
    ax.axhline(report.target_recall, color="grey", ls="--", lw=1)
    ax.text(min(lat(p) for p in report.points), report.target_recall,
            f" target {report.target_recall:g}", va="bottom", fontsize=9, color="grey")
    marks = [("original: ", report.original, "X", "black", (10, -24)),
             ("pick: ", report.pick(mode), "*", "red", (-40, -34)),
             ("build-index default: ", report.current_default, "D", "#6a3d9a", (-150, -26))]
    for prefix, mark, marker, colour, offset in marks:
        if mark is None:
            continue
        ax.scatter([lat(mark)], [rec(mark)], marker=marker, s=200, color=colour, zorder=5)
        ax.annotate(prefix + mark.label + f"\n({mark.memory_ratio:.3f} x Flat memory)", (lat(mark), rec(mark)),
                    textcoords="offset points", xytext=offset, fontsize=9, color=colour, zorder=6,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
    ax.set_xlabel(f"single-query latency, median ms ({report.threads or 'default'} Faiss thread(s), log scale)")
    ax.set_ylabel(f"recall@{report.k} vs exact search" + (
        f", served (index candidates x{report.rerank} re-ranked exactly)" if mode else ", index alone"))
    ax.set_ylim(max(0.0, min(rec(p) for p in report.points) - 0.05), 1.01)
    ax.grid(True, which="both", alpha=0.25)
    handles = [Line2D([0], [0], marker="o", ls="", color=colours[f], label=f, markersize=7) for f in families]
    for frac in (1.0, 0.25, 1 / 16):
        handles.append(Line2D([0], [0], marker="o", ls="", color="#cccccc",
                              markersize=math.sqrt(size(frac * report.flat_bytes)),
                              label=f"memory {fraction_label(frac) if frac < 1 else '1'} x Flat"))
    ax.legend(handles=handles, fontsize=8, loc="lower right", ncol=2, framealpha=0.85, labelspacing=1.1)
    ax.set_title(title or f"{report.n_vectors:,} vectors, {report.dim}-d: recall@{report.k} / latency / memory "
                 "(marker area ~ index memory)", fontsize=11)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        logger.info("Wrote %s", path)
    return fig
