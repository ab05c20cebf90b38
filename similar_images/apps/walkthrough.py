"""The figures and sliders of the teaching walkthrough (``notebooks/how_it_works.ipynb``).

Each ``*_figure`` function draws what :mod:`similar_images.measure.walkthrough` measured on a database, as a
matplotlib :class:`~matplotlib.figure.Figure` (object API, no pyplot: headless and without a GUI backend),
sized and lettered for a projector. :func:`show` turns a figure into a PNG for the notebook's output area;
:func:`figure_slider` redraws a figure as a slider moves (the ``M`` of product quantization, ``nprobe``).

Example (in a notebook)::

    from similar_images.apps import walkthrough as wt
    wt.show(wt.brute_force_figure(brute_force_cost(db.vectors)))
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .._util.types import JSON, Widget
from ..errors import DatabaseError
from ..measure.plot import plot_tuning
from ..measure.tune_report import TuneReport, human_bytes
from ..measure.walkthrough import BruteForceCost, IVFClusters, NprobePoint, PQAnatomy, PQPoint, VectorAnatomy
from ..presentation.page import figure_png
from ..presentation.thumbnails import thumbnail_array
from ..store import Database
from .common import find_database, index_words, log_to_file, no_database_message, quiet_output

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..search import Results

T = TypeVar("T")

__all__ = [
    "NoDatabaseError",
    "database_summary",
    "image",
    "nprobe_slider",
    "open_database",
    "pq_slider",
    "quiet",
    "text",
    "brute_force_figure",
    "figure_slider",
    "ivf_figure",
    "map_figure",
    "nprobe_figure",
    "pair_figure",
    "pq_anatomy_figure",
    "pq_sweep_figure",
    "results_figure",
    "show",
    "tradeoff_figure",
    "vector_figure",
]

#: Letter sizes legible on a projector (points, at the figures' 80 dpi).
TITLE, LABEL, SMALL = 16, 13, 11
DPI = 80
HIGHLIGHT = "#d62728"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # noqa: PLC0415  (heavy: matplotlib)

    return Figure(figsize=(width, height), dpi=DPI)


def _photo_axis(ax: Axes, tile: np.ndarray, title: str = "", *, colour: str | None = None) -> None:
    ax.imshow(tile)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=SMALL, color=colour or "black")
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour:
            spine.set_color(colour)
            spine.set_linewidth(3)


def show(fig: Figure) -> Widget:
    """The figure as a PNG image for the notebook's output area (``IPython.display.Image``)."""
    from IPython.display import Image  # noqa: PLC0415  (only in a notebook)

    return Image(data=figure_png(fig), format="png")


def quiet() -> AbstractContextManager[Path]:
    """A ``with`` block whose TensorFlow, Faiss and library output goes to the apps' log, not to the notebook."""
    log_to_file()
    return quiet_output()


def text(markdown: str) -> Widget:
    """Markdown for the output area (live numbers in a sentence)."""
    from IPython.display import Markdown  # noqa: PLC0415  (only in a notebook)

    return Markdown(markdown)


def image(png: bytes) -> Widget:
    """PNG bytes (e.g. :func:`~similar_images.methods.explain.explanation_png`) for the output area."""
    from IPython.display import Image  # noqa: PLC0415  (only in a notebook)

    return Image(data=png, format="png")


class NoDatabaseError(DatabaseError):
    """The walkthrough has no database to open (in a notebook: the cell shows how to build one, no traceback)."""


def _one_line(shell: Widget, etype: type, evalue: BaseException, tb: TracebackType | None,
              tb_offset: int | None = None) -> list[str]:
    """IPython's handler of :class:`NoDatabaseError`: no traceback under the message ``open_database`` displayed
    (a kernel shows nothing more; a terminal shows this one line)."""
    return [f"{etype.__name__}: {evalue}"]


def open_database(path: str | os.PathLike[str], *, weights: str | None = None) -> Database:
    """Open the database at ``path`` (a folder, or a parent holding one) for the walkthrough, quietly.

    In a notebook, a database that is missing or cannot be opened is explained in the output area (what
    happened and the commands that build one), and the cell stops with one line, so that "Run All" stops there
    and no later cell runs (without a traceback under the message).

    Raises:
        NoDatabaseError: If the database cannot be opened (its cause chained).
    """
    try:
        with quiet():
            return Database.open(find_database(path), weights=weights)
    except DatabaseError as exc:
        message = no_database_message(path, exc, what="image database", commands=[
            f"similar-images extract IMAGES {path}", f"similar-images build-index {path}"],
            note="IMAGES is a folder of 500 photos or more. Or point SIMILAR_IMAGES_DB at an existing database.")
        shell = _ipython()
        if shell is not None:
            from IPython.display import display  # noqa: PLC0415  (only in a notebook)

            display(message)
            shell.set_custom_exc((NoDatabaseError,), _one_line)
        raise NoDatabaseError(f"{message.title}; build one as shown above, then run the notebook again") from exc


def _ipython() -> Widget:
    try:
        from IPython import get_ipython  # noqa: PLC0415  (only in a notebook)
    except ImportError:
        return None
    return get_ipython()


def database_summary(db: Database) -> Widget:
    """One Markdown line: photos, model, vector size and index of the database."""
    return text(f"**This database:** {len(db):,} photos, model `{db.model_name}`, {db.dim}-d vectors, "
                f"{index_words(db)}.")


# --------------------------------------------------------------------------- 1. a photo becomes a vector
def vector_figure(path: str, anatomy: VectorAnatomy, *, maps: int = 5, model: str = "") -> Figure:
    """The photo, the feature maps of the channels that weigh most in its vector, and the vector as a strip."""
    fig = _figure(13, 4.4)
    grid = fig.add_gridspec(2, maps + 1, height_ratios=[3, 0.8], hspace=0.25, top=0.86, bottom=0.13)
    _photo_axis(fig.add_subplot(grid[0, 0]), thumbnail_array(path, 224), "the photo")
    h, w = anatomy.grid
    for i, channel in enumerate(anatomy.channels[:maps]):
        ax = fig.add_subplot(grid[0, i + 1])
        ax.imshow(anatomy.feature_map[:, :, channel], cmap="magma")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"channel {channel}\n{h}x{w} map", fontsize=SMALL)
    ax = fig.add_subplot(grid[1, :])
    ax.imshow(anatomy.vector[None, :], aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks([])
    how = (f"one per channel: the {anatomy.pooling} of each {h}x{w} map" if anatomy.pooling in ("avg", "max")
           else f"made from the {anatomy.feature_map.shape[2]} maps by {anatomy.pooling}")
    ax.set_xlabel(f"the vector: {anatomy.dim} numbers, {how}; {anatomy.active_fraction:.0%} are above zero",
                  fontsize=LABEL)
    fig.suptitle(f"A photo becomes {anatomy.dim} numbers{f' ({model})' if model else ''}", fontsize=TITLE)
    return fig


# --------------------------------------------------------------------------- 2. similarity
def pair_figure(db: Database, a: int, b: int, c: int | None = None) -> Figure:
    """Two (or three) database photos and the cosine of each pair, with both vectors drawn as strips."""
    ids = [a, b] if c is None else [a, b, c]
    vecs = np.stack([np.asarray(db.vector(i), dtype=np.float32) for i in ids])
    fig = _figure(4.2 * len(ids), 5.6)
    grid = fig.add_gridspec(2, len(ids), height_ratios=[3, 1])
    for j, i in enumerate(ids):
        title = "photo A" if j == 0 else f"cos(A, {'B' if j == 1 else 'C'}) = {float(vecs[0] @ vecs[j]):.3f}"
        _photo_axis(fig.add_subplot(grid[0, j]), thumbnail_array(db.item(i), 224), title)
    ax = fig.add_subplot(grid[1, :])
    ax.imshow(vecs, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(ids)), ["A", "B", "C"][:len(ids)], fontsize=LABEL)
    ax.set_xlabel("their vectors: cosine = sum of the products of matching numbers (unit-length vectors)",
                  fontsize=LABEL)
    return fig


# --------------------------------------------------------------------------- 3. exact search
def results_figure(db: Database, results: Results, *, columns: int = 5) -> Figure:
    """The query and its results with their scores."""
    n = len(results) + 1
    rows = math.ceil(n / columns)
    fig = _figure(2.8 * columns, 3.0 * rows)
    if results.query_id is None:
        raise ValueError("results_figure shows the results of a search by database id")
    items = [(results.query_id, "query", HIGHLIGHT)] + [(m.id, f"#{m.rank}  {m.score:.3f}", None) for m in results]
    for j, (item, title, colour) in enumerate(items):
        _photo_axis(fig.add_subplot(rows, columns, j + 1), thumbnail_array(db.item(item), 160), title, colour=colour)
    fig.suptitle(f"Exact search: the {len(results)} most similar of {len(db):,} photos "
                 f"({results.search_ms:.2f} ms)", fontsize=TITLE)
    return fig


def brute_force_figure(cost: BruteForceCost) -> Figure:
    """Measured exact-search latency against collection size, and its linear extrapolation to 1M and 1B."""
    fig = _figure(13, 5.4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sizes = np.asarray(cost.sizes)
    ax1.plot(sizes, cost.ms, "o", color="#1f77b4", ms=9, label="measured")
    ax1.plot(sizes, [cost.predict_ms(int(n)) for n in sizes], "-", color="grey", label="fitted line")
    ax1.set_xlabel("photos in the collection", fontsize=LABEL)
    ax1.set_ylabel("ms per query (one core)", fontsize=LABEL)
    ax1.set_title("measured on this database", fontsize=LABEL)
    ax1.legend(fontsize=SMALL)
    far = cost.extrapolate()
    xs = np.logspace(math.log10(max(1, sizes[0])), 9, 50)
    ax2.loglog(xs, [cost.predict_ms(int(x)) for x in xs], "-", color="grey")
    ax2.loglog(sizes, cost.ms, "o", color="#1f77b4", ms=7)
    for j, (n, ms) in enumerate(far.items()):
        ax2.loglog([n], [ms], "s", color=HIGHLIGHT, ms=10)
        label = f"{n:,.0f} photos:\n{_duration(ms)} per query,\n{human_bytes(cost.memory_bytes(n))} of vectors"
        offset = (12, -12) if j == 0 else (-190, -12)
        ax2.annotate(label, (n, ms), textcoords="offset points", xytext=offset, fontsize=SMALL, color=HIGHLIGHT,
                     va="top")
    ax2.set_xlabel("photos (log scale)", fontsize=LABEL)
    ax2.set_title("extrapolated (straight line through the measurements)", fontsize=LABEL)
    ax2.grid(True, which="major", alpha=0.3)
    fig.suptitle("Brute force reads every vector for every query: its cost grows with the collection",
                 fontsize=TITLE)
    fig.subplots_adjust(top=0.85, wspace=0.25)
    return fig


def _duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.3g} ms"
    if ms < 120_000:
        return f"{ms / 1000:.3g} s"
    return f"{ms / 60_000:.3g} min"


# --------------------------------------------------------------------------- 4. a map of the collection
def _spread(points: np.ndarray, cells: int) -> list[int]:
    """One point per occupied cell of a ``cells x cells`` grid over the map (thumbnails that do not pile up)."""
    cell = np.minimum((points * cells).astype(int), cells - 1)
    seen: dict[tuple[int, int], int] = {}
    for i, (cx, cy) in enumerate(cell):
        seen.setdefault((int(cx), int(cy)), i)
    return sorted(seen.values())


def map_figure(db: Database, points: np.ndarray, *, highlight: Sequence[int] = (), cells: int = 14,
               thumb: int = 44, title: str = "") -> Figure:
    """All live photos on the 2D map (dots, ``points`` in the order of ``db.live_ids()``), with thumbnails spread
    over it; the photos ``highlight`` (ids) circled in red."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # noqa: PLC0415  (heavy: matplotlib)

    fig = _figure(12, 10)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(points[:, 0], points[:, 1], s=8, color="#888888", alpha=0.5)
    rows = db.live_ids()
    for i in _spread(points, cells):
        box = OffsetImage(thumbnail_array(db.item(int(rows[i])), thumb), zoom=1.0)
        ax.add_artist(AnnotationBbox(box, (points[i, 0], points[i, 1]), frameon=False, pad=0.0))
    if len(highlight):
        hl = np.searchsorted(rows, np.asarray(highlight, dtype=np.int64))
        ax.scatter(points[hl, 0], points[hl, 1], s=260, facecolors="none", edgecolors=HIGHLIGHT, linewidths=3,
                   zorder=5)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{len(points):,} photos placed so that similar vectors lie close together",
                 fontsize=TITLE)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.94)
    return fig


# --------------------------------------------------------------------------- 5. product quantization
def pq_anatomy_figure(anatomy: PQAnatomy, *, codebooks: int = 4) -> Figure:
    """The vector cut into ``M`` sub-vectors, the first codebooks with the chosen centroid, and the code."""
    m, dsub = anatomy.sub_vectors.shape
    ksub = anatomy.codebooks.shape[1]
    fig = _figure(13, 7.5)
    grid = fig.add_gridspec(3, codebooks, height_ratios=[1, 3, 1], hspace=0.6)
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(anatomy.sub_vectors.reshape(1, -1), aspect="auto", cmap="magma", interpolation="nearest")
    for j in range(1, m):
        ax.axvline(j * dsub - 0.5, color="white", lw=2 if m <= 32 else 1)
    ax.set_yticks([])
    ax.set_title(f"the {m * dsub}-d vector cut into M = {m} sub-vectors of {dsub} numbers", fontsize=LABEL)
    for j in range(min(codebooks, m)):
        ax = fig.add_subplot(grid[1, j])
        ax.imshow(anatomy.codebooks[j], aspect="auto", cmap="magma", interpolation="nearest")
        ax.axhline(anatomy.code[j], color="#2ca02c", lw=3)
        ax.set_title(f"codebook {j}: {ksub} centroids\nnearest: #{anatomy.code[j]}", fontsize=SMALL)
        ax.set_xticks([])
        ax.set_ylabel("centroid" if j == 0 else "", fontsize=SMALL)
    ax = fig.add_subplot(grid[2, :])
    shown = anatomy.code[:32]
    ax.imshow(shown[None, :], aspect="auto", cmap="tab20", interpolation="nearest")
    for j, c in enumerate(shown):
        ax.text(j, 0, str(int(c)), ha="center", va="center", fontsize=SMALL if len(shown) <= 16 else 8,
                color="white", fontweight="bold")
    ax.set_xticks([])
    ax.set_yticks([])
    more = f" (first 32 of {m})" if m > 32 else ""
    ax.set_title(f"the photo's code{more}: {anatomy.bytes_per_vector:g} bytes instead of "
                 f"{anatomy.float_bytes:,} ({anatomy.float_bytes / anatomy.bytes_per_vector:.0f}x smaller)",
                 fontsize=LABEL)
    return fig


def pq_sweep_figure(points: Sequence[PQPoint], selected: int | None = None) -> Figure:
    """Recall@k and reconstruction error against ``M`` (bytes per photo); ``selected`` marked."""
    fig = _figure(13, 5.2)
    ms = [p.m for p in points]
    panels = [("recall", f"recall@{points[0].k} vs exact search", (0, 1.02)),
              ("error", "reconstruction error (0 = exact)", (0, None))]
    for j, (attr, label, ylim) in enumerate(panels):
        ax = fig.add_subplot(1, 2, j + 1)
        ys = [getattr(p, attr) for p in points]
        ax.plot(ms, ys, "o-", color="#1f77b4", ms=8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms, [f"{m}\n{p.bytes_per_vector:g} B" for m, p in zip(ms, points)], fontsize=SMALL)
        ax.set_xlabel("M sub-vectors = bytes per photo", fontsize=LABEL)
        ax.set_title(label, fontsize=LABEL)
        ax.set_ylim(*ylim)
        ax.grid(True, alpha=0.3)
        for p in points:
            if p.m == selected:
                ax.plot([p.m], [getattr(p, attr)], "o", color=HIGHLIGHT, ms=16, zorder=5)
                ax.annotate(f"{getattr(p, attr):.3f}", (p.m, getattr(p, attr)), textcoords="offset points",
                            xytext=(8, 8), fontsize=LABEL, color=HIGHLIGHT)
    fig.suptitle("Product quantization: more bytes per photo, better recall", fontsize=TITLE)
    return fig


# --------------------------------------------------------------------------- 6. the inverted file
def ivf_figure(db: Database, clusters: IVFClusters, *, count: int = 8, per: int = 3, thumb: int = 72) -> Figure:
    """The ``count`` largest coarse clusters, each as a ``per x per`` mosaic of the photos nearest its centroid."""
    chosen = clusters.largest(count)
    columns = min(4, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    fig = _figure(3.2 * columns, 3.5 * rows)
    ids = db.live_ids()
    blank = np.full((thumb, thumb, 3), 255, dtype=np.uint8)
    for j, c in enumerate(chosen):
        tiles = [thumbnail_array(db.item(int(ids[r])), thumb) for r in clusters.members[c][:per * per]]
        tiles += [blank] * (per * per - len(tiles))
        mosaic = np.vstack([np.hstack(tiles[r * per:(r + 1) * per]) for r in range(per)])
        _photo_axis(fig.add_subplot(rows, columns, j + 1), mosaic, f"cluster {c}: {clusters.sizes[c]} photos")
    fig.suptitle(f"The inverted file: {clusters.nlist} clusters; a query visits only the nearest nprobe of them",
                 fontsize=TITLE)
    return fig


def nprobe_figure(points: Sequence[NprobePoint], selected: int | None = None) -> Figure:
    """Recall@k and latency against ``nprobe``; ``selected`` marked."""
    fig = _figure(13, 5.2)
    nps = [p.nprobe for p in points]
    panels = [([p.recall for p in points], f"recall@{points[0].k} vs exact search"),
              ([p.latency_ms for p in points], "ms per query (one core)"),
              ([p.scanned for p in points], "fraction of the photos scanned")]
    for j, (ys, label) in enumerate(panels):
        ax = fig.add_subplot(1, 3, j + 1)
        ax.plot(nps, ys, "o-", color="#1f77b4", ms=8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(nps, [str(n) for n in nps], fontsize=SMALL)
        ax.set_xlabel("nprobe (clusters visited)", fontsize=LABEL)
        ax.set_title(label, fontsize=LABEL)
        ax.grid(True, alpha=0.3)
        for n, y in zip(nps, ys):
            if n == selected:
                ax.plot([n], [y], "o", color=HIGHLIGHT, ms=16, zorder=5)
                ax.annotate(f"{y:.3g}", (n, y), textcoords="offset points", xytext=(8, -16), fontsize=LABEL,
                            color=HIGHLIGHT)
    fig.suptitle("Visiting more clusters: better recall, slower queries", fontsize=TITLE)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 7. the trade-off
def tradeoff_figure(report: TuneReport, factory: str | None, params: dict[str, int] | None = None) -> Figure:
    """The tuner's recall / latency / memory plot with this database's own index marked (a green ring)."""
    fig = plot_tuning(report, title=f"{report.n_vectors:,} photos: recall@{report.k} / latency / memory "
                                    "(marker area ~ memory)")
    ax = fig.axes[0]
    own = [p for p in report.points if p.factory == (factory or "Flat")]
    if own and params:
        own = [p for p in own if all(p.params.get(k) == v for k, v in params.items() if k in p.params)] or own
    if own:
        p = own[-1]
        ax.scatter([p.latency_ms], [p.recall], s=700, facecolors="none", edgecolors="#2ca02c", linewidths=4,
                   zorder=7)
        ax.annotate(f"this database's index: {p.label}", (p.latency_ms, p.recall), textcoords="offset points",
                    xytext=(-60, -48), fontsize=LABEL, color="#2ca02c", zorder=8,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
    return fig


# --------------------------------------------------------------------------- sliders
def figure_slider(values: Sequence[T], draw: Callable[[T], Figure], *, description: str,
                  value: T | None = None) -> Widget:
    """A slider over ``values`` and the figure ``draw(value)`` below it, redrawn when the slider moves.

    Returns an ``ipywidgets.VBox``; its ``slider`` and ``image`` attributes are the two widgets.
    """
    import ipywidgets as widgets  # noqa: PLC0415  (only in a notebook)

    values = list(values)
    start = value if value in values else values[len(values) // 2]
    slider = widgets.SelectionSlider(options=values, value=start, description=description,
                                     continuous_update=False, style={"description_width": "initial"},
                                     layout=widgets.Layout(width="60%"))
    image = widgets.Image(value=figure_png(draw(start)), format="png", layout=widgets.Layout(max_width="100%"))

    def redraw(change: JSON) -> None:
        image.value = figure_png(draw(change["new"]))

    slider.observe(redraw, names="value")
    box = widgets.VBox([slider, image])
    box.slider, box.image = slider, image
    return box


def pq_slider(points: Sequence[PQPoint]) -> Widget:
    """A slider over the measured ``M`` values, redrawing :func:`pq_sweep_figure` with that ``M`` marked."""
    return figure_slider([p.m for p in points], lambda m: pq_sweep_figure(points, m), description="M sub-vectors")


def nprobe_slider(points: Sequence[NprobePoint]) -> Widget:
    """A slider over the measured ``nprobe`` values, redrawing :func:`nprobe_figure` with that value marked."""
    return figure_slider([p.nprobe for p in points], lambda n: nprobe_figure(points, n), description="nprobe")
