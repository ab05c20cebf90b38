"""Notebook UI for near-duplicates: a similarity histogram and a threshold slider over side-by-side pairs.

Everything is computed in the kernel. The similarity of each image to its
nearest neighbour is measured once (exact); its distribution gives the
default threshold (the near-duplicate band of :mod:`similar_images.index.bands`:
three quarters of the way from a typical image's best match to an identical
copy) and the slider's range. Pairs are found with a batched Faiss range
search (:func:`similar_images.methods.duplicates.find_duplicate_pairs`) at the
lowest threshold the slider has shown so far; moving the slider up only
filters them. Images are shown as small JPEG thumbnails made server-side.

Example (in Jupyter)::

    from similar_images import Database
    from similar_images.apps import DuplicateBrowser
    DuplicateBrowser(Database.open("photos-db", load_index=False))
"""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import ipywidgets as w
import numpy as np

from .._util.types import JSON
from ..errors import ConfigError
from ..index import ScoreBands
from ..methods.duplicates import (
    DuplicateConfig,
    DuplicateReport,
    NearestNeighbors,
    find_duplicate_pairs,
    nearest_similarities,
    write_report,
)
from ..presentation.page import figure_png, shorten_middle
from ..presentation.thumbnails import thumbnail_bytes
from ..store import Database
from .common import log_to_file, quiet_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DuplicateBrowser", "similarity_histogram", "default_thresholds"]

logger = logging.getLogger(__name__)

_CSS = """<style>
.sid-head { font-family: var(--jp-ui-font-family, system-ui, sans-serif); color: var(--jp-ui-font-color1, #222); }
.sid-head h3 { margin: 0 0 4px 0; font-size: 1.3em; }
.sid-head .sid-sub { color: var(--jp-ui-font-color2, #555); font-size: 0.95em; line-height: 1.45; max-width: 980px;
  margin-bottom: 6px; }
.sid-summary { font-family: var(--jp-ui-font-family, system-ui, sans-serif); font-size: 1.02em; margin: 4px 0 8px 0; }
.sid-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 12px; width: 100%;
  font-family: var(--jp-ui-font-family, system-ui, sans-serif); }
.sid-pair { border: 1px solid var(--jp-border-color2, #d8dde3); border-radius: 9px; padding: 8px;
  background: var(--jp-layout-color1, #fff); }
.sid-imgs { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }
.sid-imgs img { width: 100%; aspect-ratio: 1 / 1; object-fit: contain; background: var(--jp-layout-color2, #f3f4f6);
  border-radius: 5px; }
.sid-cap { display: flex; justify-content: space-between; align-items: baseline; margin-top: 6px; font-size: 0.9em; }
.sid-score { font-weight: 650; font-variant-numeric: tabular-nums; }
.sid-names { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; font-size: 0.82em;
  color: var(--jp-ui-font-color2, #59636e); }
.sid-names span { overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.sid-band { font-weight: 600; }
</style>"""


def default_thresholds(similarities: np.ndarray) -> tuple[float, float]:
    """``(threshold, slider minimum)`` for nearest-neighbour similarities.

    The threshold is the near-duplicate band's lower bound (see :class:`~similar_images.index.ScoreBands`); the
    slider starts at the 5th percentile (rounded down to 0.05), so it reaches "similar" pairs too.
    """
    bands = ScoreBands.from_similarities(similarities)
    if bands is None:
        return 0.95, 0.5
    low = math.floor(bands.percentiles.get("p5", bands.similar) * 20) / 20
    return round(bands.near_duplicate, 3), max(-1.0, min(low, bands.near_duplicate))


def similarity_histogram(similarities: np.ndarray, *, threshold: float | None = None, bins: int = 50,
                         title: str = "Similarity of each image to its most similar other image",
                         figsize: tuple[float, float] = (8.0, 3.0), bands: ScoreBands | None = None) -> Figure:
    """A matplotlib histogram of similarities, with the threshold drawn as a vertical line.

    Args:
        similarities: Cosine similarities (e.g. :attr:`NearestNeighbors.similarity`); NaNs are ignored.
        threshold: Where to draw the threshold line (and how many values it leaves above).
        bins: Histogram bins.
        title: Figure title.
        figsize: Size in inches (drawn at 110 dpi: labels stay readable).
        bands: Score bands to mark (the median best match).

    Returns:
        A :class:`matplotlib.figure.Figure` (not attached to pyplot, so nothing leaks between calls).
    """
    from matplotlib.figure import Figure  # noqa: PLC0415  (heavy: matplotlib)

    sims = np.asarray(similarities, dtype=np.float64)
    sims = sims[np.isfinite(sims)]
    fig = Figure(figsize=figsize, dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.hist(sims, bins=bins, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_xlabel("cosine similarity to the nearest other image", fontsize=10)
    ax.set_ylabel("images", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.set_title(title, fontsize=11)
    if bands is not None:
        ax.axvline(bands.very_similar, color="#2ca02c", linestyle=":", linewidth=1.5,
                   label=f"median best match {bands.very_similar:.3f}")
    if threshold is not None:
        above = int((sims >= threshold).sum())
        ax.axvline(threshold, color="#c44e52", linestyle="--", linewidth=1.8,
                   label=f"threshold {threshold:.3f}: {above} images above")
        ax.axvspan(threshold, max(1.0, threshold), color="#c44e52", alpha=0.08)
    if bands is not None or threshold is not None:
        ax.legend(loc="upper left", fontsize=9)
    return fig


class DuplicateBrowser:
    """A histogram, a threshold slider and the near-duplicate pairs above the threshold, side by side.

    Args:
        db: The database (no index needed).
        min_threshold: Lowest value of the slider (default: from the distribution, see :func:`default_thresholds`).
        threshold: Initial slider value (default: the near-duplicate band of the distribution).
        max_pairs: Most pairs shown at once (the most similar ones).
        thumb_size: Thumbnail size in pixels.
        index: Index of the pair search (``"flat"``, ``"hnsw"`` or ``"db"``).
        neighbors: Precomputed :func:`~similar_images.methods.duplicates.nearest_similarities` (computed if
            ``None``).

    Attributes:
        neighbors: Nearest-neighbour similarities behind the histogram and the default threshold.
        bands: The score bands they give.
        report: The pairs at the lowest threshold searched so far.
        slider: The ``FloatSlider``.
        histogram: An ``ipywidgets.Image`` with the histogram and the threshold line.
        summary: An ``HTML`` line with the counts at the current threshold (it follows the slider).
        pairs_html: An ``HTML`` grid of the shown pairs.
        shown: The pairs shown, ``(id_a, id_b, similarity)``.
        widget: The whole UI, to display (or display the browser itself).
    """

    def __init__(self, db: Database, *, min_threshold: float | None = None, threshold: float | None = None,
                 max_pairs: int = 24, thumb_size: int = 160, index: str = "flat",
                 neighbors: NearestNeighbors | None = None) -> None:
        log_to_file()
        if max_pairs < 1 or thumb_size < 16:
            raise ConfigError("max_pairs must be >= 1 and thumb_size >= 16")
        self.db = db
        self.max_pairs = max_pairs
        self.thumb_size = thumb_size
        self.index = index
        with quiet_output():
            self.neighbors = neighbors if neighbors is not None else nearest_similarities(db)
        self.bands = ScoreBands.from_similarities(self.neighbors.similarity)
        auto_threshold, auto_min = default_thresholds(self.neighbors.similarity)
        self.default_threshold = auto_threshold
        threshold = auto_threshold if threshold is None else float(threshold)
        min_threshold = min(auto_min, threshold) if min_threshold is None else float(min_threshold)
        if not min_threshold <= threshold <= 1.0:
            raise ConfigError(f"threshold {threshold} must lie between min_threshold {min_threshold} and 1.0")
        self.report: DuplicateReport = self._search(threshold)
        self.shown: list[tuple[int, int, float]] = []
        self.slider = w.FloatSlider(value=threshold, min=min_threshold, max=1.0, step=0.005, readout_format=".3f",
                                    continuous_update=False, description="Threshold",
                                    style={"description_width": "76px"}, layout=w.Layout(width="min(100%, 640px)"))
        self.histogram = w.Image(format="png", layout=w.Layout(width="min(100%, 880px)"))
        self.summary = w.HTML()
        self.pairs_html = w.HTML(layout=w.Layout(width="100%"))
        self.header = w.HTML(_CSS + self._header_html())
        self.widget = w.VBox([self.header, self.histogram, self.slider, self.summary, self.pairs_html],
                             layout=w.Layout(width="100%"))
        self.slider.observe(lambda change: self.update(change["new"]), names="value")
        self.update(threshold)

    # ------------------------------------------------------------------ state
    @property
    def threshold(self) -> float:
        """The slider's current value."""
        return float(self.slider.value)

    def pairs_at(self, threshold: float) -> DuplicateReport:
        """The pairs (and groups) at least ``threshold`` similar (searched again if below what was searched)."""
        if threshold < float(self.report.config.threshold) - 1e-9:
            self.report = self._search(threshold)
        return self.report.above(threshold)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``pairs.csv`` and ``groups.csv`` for the current threshold into ``out_dir``; returns their paths."""
        return write_report(self.pairs_at(self.threshold), self.db, out_dir)

    # ------------------------------------------------------------------ drawing
    def _search(self, threshold: float) -> DuplicateReport:
        with quiet_output():
            return find_duplicate_pairs(self.db, DuplicateConfig(threshold=max(threshold, -1.0), index=self.index))

    def _header_html(self) -> str:
        b = self.bands
        how = (f"The default threshold, {self.default_threshold:.3f}, comes from this database: three quarters of the "
               f"way from a typical image's best match (median {b.very_similar:.3f}, over {len(self.db):,} images) "
               "to an identical copy (1.0). Resized, recompressed or slightly cropped copies score above it; two "
               "different photos of the same kind of scene score below.") if b is not None else ""
        return (f"<div class='sid-head'><div class='sid-sub'>{len(self.db):,} images "
                f"&middot; model {html.escape(self.db.model_name)} &middot; "
                f"<span title='{html.escape(str(self.db.path))}'>"
                f"{html.escape(Path(self.db.path).name)}</span><br>{html.escape(how)}</div></div>")

    def _thumb_uri(self, i: int) -> str:
        data = thumbnail_bytes(self.db.items[i], self.thumb_size)
        return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")

    def _pair_html(self, a: int, b: int, sim: float) -> str:
        items = self.db.items
        band = self.bands.band(sim) if self.bands is not None else ""
        names = "".join(f"<span title='{html.escape(items[i], quote=True)}'>#{i} "
                        f"{html.escape(shorten_middle(Path(items[i]).name, 18))}</span>" for i in (a, b))
        return (f"<div class='sid-pair'><div class='sid-imgs'><img src='{self._thumb_uri(a)}' alt=''>"
                f"<img src='{self._thumb_uri(b)}' alt=''></div><div class='sid-cap'>"
                f"<span class='sid-band'>{html.escape(band)}</span><span class='sid-score'>{sim:.4f}</span></div>"
                f"<div class='sid-names'>{names}</div></div>")

    def update(self, threshold: float | None = None) -> DuplicateReport:
        """Redraw for ``threshold`` (default: the slider's value); returns the pairs at that threshold."""
        t = self.threshold if threshold is None else float(threshold)
        sub = self.pairs_at(t)
        self.histogram.value = figure_png(similarity_histogram(self.neighbors.similarity, threshold=t,
                                                               bands=self.bands))
        shown = min(len(sub), self.max_pairs)
        in_groups = sum(len(g) for g in sub.groups)
        more = f" (showing the {shown} most similar)" if len(sub) > shown else ""
        self.summary.value = (f"<div class='sid-summary'><b>{len(sub)}</b> pair{'s' if len(sub) != 1 else ''} in "
                              f"<b>{len(sub.groups)}</b> group{'s' if len(sub.groups) != 1 else ''} "
                              f"({in_groups} images) at similarity &ge; <b>{t:.3f}</b>, among {sub.n_items:,} "
                              f"images{more}</div>")
        self.shown = list(zip(sub.id_a[:shown].tolist(), sub.id_b[:shown].tolist(),
                              [float(s) for s in sub.similarity[:shown]]))
        self.pairs_html.value = ("<div class='sid-grid'>" + "".join(self._pair_html(a, b, s) for a, b, s in self.shown)
                                 + "</div>") if self.shown else ""
        return sub

    def _repr_mimebundle_(self, **kwargs: object) -> JSON:
        return self.widget._repr_mimebundle_(**kwargs)
