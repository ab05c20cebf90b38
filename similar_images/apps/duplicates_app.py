"""Notebook UI for near-duplicates: a similarity histogram and a threshold slider over side-by-side pairs.

Everything is computed in the kernel: the pairs are found once at the lowest
threshold of the slider (:func:`similar_images.methods.duplicates.find_duplicate_pairs`),
moving the slider only filters them, and images are shown as small JPEG
thumbnails made server-side (the browser never loads the originals).

Example (in Jupyter)::

    from similar_images import Database
    from similar_images.apps import DuplicateBrowser
    DuplicateBrowser(Database.open("photos-db", load_index=False), min_threshold=0.8).widget
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np

from ..errors import ConfigError
from ..methods.duplicates import (
    DuplicateConfig,
    DuplicateReport,
    NearestNeighbors,
    find_duplicate_pairs,
    nearest_similarities,
)
from ..store import Database
from .common import figure_png, thumbnail_bytes

__all__ = ["DuplicateBrowser", "similarity_histogram"]

logger = logging.getLogger(__name__)


def similarity_histogram(similarities: np.ndarray, *, threshold: float | None = None, bins: int = 50,
                         title: str = "Similarity of each image to its nearest neighbour",
                         figsize: tuple[float, float] = (6.0, 2.8)) -> Any:
    """A matplotlib histogram of similarities, with the threshold drawn as a vertical line.

    Args:
        similarities: Cosine similarities (e.g. :attr:`NearestNeighbors.similarity`); NaNs are ignored.
        threshold: Where to draw the threshold line (and how many values it leaves above).
        bins: Histogram bins.
        title: Figure title.
        figsize: Size in inches.

    Returns:
        A :class:`matplotlib.figure.Figure` (not attached to pyplot, so nothing leaks between calls).
    """
    from matplotlib.figure import Figure  # noqa: PLC0415  (heavy: matplotlib)

    sims = np.asarray(similarities, dtype=np.float64)
    sims = sims[np.isfinite(sims)]
    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.hist(sims, bins=bins, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    if threshold is not None:
        above = int((sims >= threshold).sum())
        ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:.3f}: {above} above")
        ax.legend(loc="upper left", fontsize=8)
    return fig


class DuplicateBrowser:
    """A threshold slider, a live histogram and the near-duplicate pairs above the threshold, side by side.

    Args:
        db: The database (no index needed).
        min_threshold: Lowest threshold the slider offers; pairs are searched once at this value.
        threshold: Initial slider value.
        max_pairs: Most pairs shown at once (the most similar ones).
        thumb_size: Thumbnail size in pixels.
        index: Index of the pair search (``"flat"``, ``"hnsw"`` or ``"db"``).
        neighbors: Precomputed :func:`~similar_images.methods.duplicates.nearest_similarities` (computed if
            ``None``).

    Attributes:
        report: All pairs at ``min_threshold``.
        neighbors: Nearest-neighbour similarities behind the histogram.
        slider: The ``FloatSlider``.
        histogram: An ``ipywidgets.Image`` with the histogram and the threshold line.
        summary: An ``HTML`` line with the counts at the current threshold.
        pairs_box: A ``VBox`` with one row per shown pair.
        widget: The whole UI, to display.
    """

    def __init__(self, db: Database, *, min_threshold: float = 0.8, threshold: float | None = None,
                 max_pairs: int = 24, thumb_size: int = 128, index: str = "flat",
                 neighbors: NearestNeighbors | None = None) -> None:
        if threshold is None:
            threshold = max(min_threshold, 0.9)
        if not min_threshold <= threshold <= 1.0:
            raise ConfigError(f"threshold {threshold} must lie between min_threshold {min_threshold} and 1.0")
        if max_pairs < 1 or thumb_size < 16:
            raise ConfigError("max_pairs must be >= 1 and thumb_size >= 16")
        self.db = db
        self.max_pairs = max_pairs
        self.thumb_size = thumb_size
        self.report: DuplicateReport = find_duplicate_pairs(db, DuplicateConfig(threshold=min_threshold,
                                                                                index=index))
        self.neighbors = neighbors if neighbors is not None else nearest_similarities(db)
        self.slider = w.FloatSlider(value=threshold, min=min_threshold, max=1.0, step=0.001, readout_format=".3f",
                                    continuous_update=False, description="threshold",
                                    layout=w.Layout(width="480px"))
        self.histogram = w.Image(format="png", layout=w.Layout(width="480px"))
        self.summary = w.HTML()
        self.pairs_box = w.VBox()
        self.widget = w.VBox([self.histogram, self.slider, self.summary, self.pairs_box])
        self.slider.observe(lambda change: self.update(change["new"]), names="value")
        self.update(threshold)

    @property
    def threshold(self) -> float:
        """The slider's current value."""
        return float(self.slider.value)

    def pairs_at(self, threshold: float) -> DuplicateReport:
        """The pairs (and groups) at least ``threshold`` similar."""
        return self.report.above(threshold)

    def _pair_row(self, a: int, b: int, sim: float) -> Any:
        items = self.db.items
        thumbs = [w.Image(value=thumbnail_bytes(items[i], self.thumb_size), format="jpeg",
                          layout=w.Layout(max_width=f"{self.thumb_size}px", max_height=f"{self.thumb_size}px"))
                  for i in (a, b)]
        caption = w.HTML(
            f"<b>{sim:.4f}</b><br><span title='{html.escape(items[a])}'>#{a} {html.escape(Path(items[a]).name)}"
            f"</span><br><span title='{html.escape(items[b])}'>#{b} {html.escape(Path(items[b]).name)}</span>"
        )
        return w.HBox([*thumbs, caption], layout=w.Layout(align_items="center", margin="2px 0"))

    def update(self, threshold: float | None = None) -> DuplicateReport:
        """Redraw for ``threshold`` (default: the slider's value); returns the pairs shown."""
        t = self.threshold if threshold is None else float(threshold)
        sub = self.pairs_at(t)
        fig = similarity_histogram(self.neighbors.similarity, threshold=t)
        self.histogram.value = figure_png(fig)
        shown = min(len(sub), self.max_pairs)
        self.summary.value = (f"<b>{len(sub)}</b> pairs in <b>{len(sub.groups)}</b> groups at similarity &ge; "
                              f"{t:.3f} among {sub.n_items} images" +
                              (f" (showing the {shown} most similar)" if len(sub) > shown else ""))
        self.pairs_box.children = [self._pair_row(a, b, s) for a, b, s in
                                   zip(sub.id_a[:shown].tolist(), sub.id_b[:shown].tolist(),
                                       sub.similarity[:shown].tolist())]
        return sub
