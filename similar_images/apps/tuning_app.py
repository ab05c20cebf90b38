"""Display helpers of the index-tuning notebook: exact neighbours next to an index's, missed ones marked.

Kept apart from the library's measuring code so that the notebook stays thin
(a parameter cell and calls into the package).
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING

from ..embed import item_kind
from ..errors import ConfigError
from ..measure.compare import NeighbourComparison, compare_neighbours
from ..measure.tune_report import TuneReport
from ..store import Database
from .common import figure_png, thumbnail_array

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["comparison_for", "neighbours_figure", "neighbours_html", "figure_png", "comparison_text"]

logger = logging.getLogger(__name__)

MISSED = "#d62728"
EXTRA = "#ff7f0e"
FOUND = "#2ca02c"


def comparison_for(db: Database, report: TuneReport | None, query_id: int, which: str = "original", *,
                   params: dict[str, int] | None = None, k: int = 10) -> NeighbourComparison:
    """Compare exact and approximate neighbours of ``query_id`` for the index named by ``which``.

    Args:
        db: The database.
        report: A tuning report (needed for ``"original"`` and ``"pick"``).
        query_id: A database id (excluded from both lists).
        which: ``"original"`` (the default factory searched with nprobe 4, as the original design), ``"pick"``
            (the tuner's choice), ``"db"`` (the database's own index), or any index description.
        params: Search parameters overriding those of the chosen setting.
        k: Neighbours to compare.

    Raises:
        ConfigError: If the named index is not available.
    """
    point = None
    if which in ("original", "pick"):
        if report is None:
            raise ConfigError(f"{which!r} needs a tuning report")
        point = report.original if which == "original" else report.chosen
        if point is None and which == "original":
            logger.warning("The original configuration %s could not be built here; showing the pick instead",
                           report.original_factory)
            point = report.chosen
        if point is None:
            raise ConfigError("The tuning report has no such configuration; name an index description instead")
        return compare_neighbours(db, query_id, k=k, factory=point.factory, params={**point.params, **(params or {})})
    if which == "db":
        return compare_neighbours(db, query_id, k=k, params=params)
    return compare_neighbours(db, query_id, k=k, factory=which, params=params)


def comparison_text(db: Database, cmp: NeighbourComparison) -> str:
    """A plain-text side-by-side listing; missed true neighbours are flagged."""
    missed, extra = set(cmp.missed), set(cmp.extra)
    lines = [f"query id {cmp.query_id}: {db.items[cmp.query_id]}",
             f"index {cmp.description}: recall@{len(cmp.exact_ids)} = {cmp.recall:.2f}, "
             f"missed {len(cmp.missed)} of {len(cmp.exact_ids)} true neighbours",
             f"{'rank':>4}  {'exact id':>8} {'score':>7}        {'index id':>8} {'score':>7}"]
    for r in range(max(len(cmp.exact_ids), len(cmp.approx_ids))):
        e = f"{cmp.exact_ids[r]:>8} {cmp.exact_scores[r]:>7.4f} {'MISSED' if cmp.exact_ids[r] in missed else '':<6}" \
            if r < len(cmp.exact_ids) else " " * 23
        a = f"{cmp.approx_ids[r]:>8} {cmp.approx_scores[r]:>7.4f} {'extra' if cmp.approx_ids[r] in extra else ''}" \
            if r < len(cmp.approx_ids) else ""
        lines.append(f"{r + 1:>4}  {e} {a}")
    return "\n".join(lines)


def neighbours_figure(db: Database, cmp: NeighbourComparison, *, thumb: int = 112) -> Figure:
    """Thumbnails: the query, then the exact top-k (missed ones framed red) above the index's top-k
    (results outside the true top-k framed orange).

    Raises:
        ConfigError: For a text database (use :func:`neighbours_html`).
    """
    if not item_kind(db.kind).files:
        raise ConfigError("Thumbnails need an image database; use neighbours_html() for a text database")
    from matplotlib.figure import Figure  # noqa: PLC0415  (heavy: matplotlib)

    k = max(len(cmp.exact_ids), len(cmp.approx_ids), 1)
    cols = k + 1
    fig = Figure(figsize=(1.25 * cols, 3.1), dpi=100)
    missed, extra = set(cmp.missed), set(cmp.extra)
    rows = (("exact", cmp.exact_ids, cmp.exact_scores), (cmp.description, cmp.approx_ids, cmp.approx_scores))
    for r, (_, ids, scores) in enumerate(rows):
        ax = fig.add_subplot(2, cols, r * cols + 1)
        if r == 0:
            ax.imshow(thumbnail_array(db.items[cmp.query_id], thumb))
            ax.set_title(f"query {cmp.query_id}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.set_axis_off()
        for c, (i, s) in enumerate(zip(ids, scores)):
            ax = fig.add_subplot(2, cols, r * cols + c + 2)
            ax.imshow(thumbnail_array(db.items[i], thumb))
            ax.set_xticks([])
            ax.set_yticks([])
            colour = MISSED if (r == 0 and i in missed) else EXTRA if (r == 1 and i in extra) else FOUND
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if colour != FOUND else 1)
            tag = " missed" if (r == 0 and i in missed) else ""
            ax.set_title(f"{i} ({s:.2f}){tag}", fontsize=6, color=colour if colour != FOUND else "black")
            if c == 0:
                ax.set_ylabel("exact" if r == 0 else "index", fontsize=8)
    fig.suptitle(f"{cmp.description}: recall@{len(cmp.exact_ids)} {cmp.recall:.2f}; red = true neighbour the "
                 "index missed, orange = not a true top-k neighbour", fontsize=8)
    fig.tight_layout()
    return fig


def neighbours_html(db: Database, cmp: NeighbourComparison) -> str:
    """An HTML table of exact and approximate neighbours (for any database; texts shown for text ones)."""
    missed, extra = set(cmp.missed), set(cmp.extra)

    def cell(i: int, s: float, flag: str, colour: str) -> str:
        item = html.escape(str(db.items[i])[:120])
        return (f'<td style="border-left:4px solid {colour};padding:2px 6px">{i} ({s:.3f}) '
                f"<b>{flag}</b><br><small>{item}</small></td>")

    rows = []
    for r in range(max(len(cmp.exact_ids), len(cmp.approx_ids))):
        e = cell(cmp.exact_ids[r], cmp.exact_scores[r], "missed" if cmp.exact_ids[r] in missed else "",
                 MISSED if cmp.exact_ids[r] in missed else FOUND) if r < len(cmp.exact_ids) else "<td></td>"
        a = cell(cmp.approx_ids[r], cmp.approx_scores[r], "extra" if cmp.approx_ids[r] in extra else "",
                 EXTRA if cmp.approx_ids[r] in extra else FOUND) if r < len(cmp.approx_ids) else "<td></td>"
        rows.append(f"<tr><td>{r + 1}</td>{e}{a}</tr>")
    return (f"<p>Query {cmp.query_id}; index {html.escape(cmp.description)}: missed {len(cmp.missed)} of "
            f"{len(cmp.exact_ids)}</p><table><tr><th>rank</th><th>exact</th><th>index</th></tr>"
            + "".join(rows) + "</table>")
