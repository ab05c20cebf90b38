"""The index-tuning notebook's HTML: the tuning table, and one query's exact neighbours next to an index's,
missed ones marked (thumbnails for an image database, texts for a text database).

The numbers and their plain-text forms are :mod:`similar_images.measure.tune_report`'s; the measuring itself,
with what Faiss prints sent to the app log, is :mod:`similar_images.apps.tuning_app`'s.
"""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING

from ..embed import item_kind
from ..errors import ConfigError
from ..measure.compare import NeighbourComparison
from ..measure.tune_report import TuneReport, human_bytes
from ..store import Database
from .page import HTML, shorten_middle
from .thumbnails import thumbnail_array, thumbnail_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["report_html", "neighbours_figure", "neighbours_html", "comparison_text"]

MISSED = "#d62728"
EXTRA = "#ff7f0e"
FOUND = "#2ca02c"


_TABLE_CSS = """<style>
.sit-wrap { overflow-x: auto; max-width: 100%; font-family: var(--jp-ui-font-family, system-ui, sans-serif); }
.sit-table { border-collapse: collapse; font-size: 0.92em; white-space: nowrap; }
.sit-table th, .sit-table td { padding: 3px 10px; border-bottom: 1px solid var(--jp-border-color2, #e0e0e0);
  white-space: nowrap; }
.sit-table th { text-align: right; font-weight: 600; background: var(--jp-layout-color2, #f3f4f6); }
.sit-table th:first-child, .sit-table th:nth-child(2), .sit-table td:first-child, .sit-table td:nth-child(2) {
  text-align: left; }
.sit-table td { text-align: right; font-variant-numeric: tabular-nums; }
.sit-table tr.sit-pick td { background: #fff1f0; font-weight: 600; }
.sit-table tr.sit-pareto td:first-child::after { content: " +"; color: #1f6fb2; }
.sit-notes { margin: 8px 0 0 0; padding-left: 18px; max-width: 1000px; }
.sit-cmp { font-family: var(--jp-ui-font-family, system-ui, sans-serif); }
.sit-row { display: grid; grid-template-columns: 110px repeat(var(--n), minmax(88px, 1fr)); gap: 6px;
  align-items: start; margin: 6px 0; }
.sit-row .sit-label { font-weight: 600; padding-top: 30px; }
.sit-cell { border: 3px solid transparent; border-radius: 6px; padding: 2px; text-align: center; font-size: 12px;
  line-height: 1.3; overflow: hidden; }
.sit-cell img { width: 100%; aspect-ratio: 1 / 1; object-fit: contain; background: var(--jp-layout-color2, #f3f4f6);
  border-radius: 3px; display: block; }
.sit-cell.sit-missed { border-color: #d62728; }
.sit-cell.sit-extra { border-color: #ff7f0e; }
.sit-cell .sit-tag { font-weight: 700; }
.sit-text { text-align: left; font-size: 12px; max-height: 7.5em; overflow: hidden; }
</style>"""



def report_html(report: TuneReport) -> HTML:
    """The tuning table as HTML: one row per index, numbers aligned, rows never wrapped (it scrolls sideways
    when wider than the page), the pick highlighted, then the decision in sentences."""
    srv = report.rerank >= 2
    cols = ["index", "params", f"recall@{report.k}", "ms/query", "p99 ms", "batch ms"]
    if srv:
        cols += ["served recall", "served ms"]
    cols += ["memory", "x Flat", "bytes/vector", "build s"]
    chosen = report.chosen
    rows = []
    for p in report.by_factory():
        params = " ".join(f"{k}={v}" for k, v in p.params.items()) or "\u2013"
        cells = [html.escape(p.factory), html.escape(params), f"{p.recall:.4f}", f"{p.latency_ms:.3f}",
                 f"{p.p99_ms:.3f}", f"{p.batch_ms:.3f}"]
        if srv:
            cells += [f"{p.recall_served:.4f}" if p.recall_served is not None else "",
                      f"{p.latency_served_ms:.3f}" if p.latency_served_ms is not None else ""]
        cells += [human_bytes(p.memory_bytes), f"{p.memory_ratio:.3f}", f"{p.bytes_per_vector:.0f}",
                  f"{p.build_seconds:.2f}"]
        cls = "sit-pick" if p is chosen else ("sit-pareto" if p.pareto else "")
        rows.append(f"<tr class='{cls}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    notes = [f"{report.n_vectors:,} vectors, {report.dim}-d; {report.n_queries} queries ({report.queries}); latency "
             f"with {report.threads or 'default'} Faiss thread(s). Highlighted: the pick; + : on the recall / latency "
             "/ memory frontier of the index alone."]
    notes += [f"skipped {name}: {reason}" for name, reason in report.skipped]
    notes += [line for line in report.summary_lines() if line.strip()]
    return HTML(_TABLE_CSS + f"<div class='sit-wrap'><table class='sit-table'><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table></div><ul class='sit-notes'>"
                + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")



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
    (results outside the true top-k framed orange). For the notebook, :func:`neighbours_html` reads better.

    Raises:
        ConfigError: For a text database (use :func:`neighbours_html`).
    """
    if not item_kind(db.kind).files:
        raise ConfigError("Thumbnails need an image database; use neighbours_html() for a text database")
    from matplotlib.figure import Figure  # noqa: PLC0415  (heavy: matplotlib)

    k = max(len(cmp.exact_ids), len(cmp.approx_ids), 1)
    cols = k + 1
    fig = Figure(figsize=(1.1 * cols, 3.2), dpi=100)
    missed, extra = set(cmp.missed), set(cmp.extra)
    rows = (("exact", cmp.exact_ids, cmp.exact_scores), (cmp.description, cmp.approx_ids, cmp.approx_scores))
    for r, (_, ids, scores) in enumerate(rows):
        ax = fig.add_subplot(2, cols, r * cols + 1)
        if r == 0:
            ax.imshow(thumbnail_array(db.items[cmp.query_id], thumb))
            ax.set_title(f"query {cmp.query_id}", fontsize=9)
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
            tag = "\nmissed" if (r == 0 and i in missed) else ""
            ax.set_title(f"{i} ({s:.2f}){tag}", fontsize=8, color=colour if colour != FOUND else "black")
    fig.suptitle(f"{cmp.description}: recall@{len(cmp.exact_ids)} {cmp.recall:.2f}; red = true neighbour the "
                 "index missed, orange = not a true top-k neighbour", fontsize=9)
    fig.tight_layout()
    return fig



def neighbours_html(db: Database, cmp: NeighbourComparison, *, thumb: int = 160) -> HTML:
    """Exact neighbours (top row) next to the index's (bottom row), as HTML: thumbnails for an image database,
    texts for a text database; true neighbours the index missed framed red, its results outside the true
    top-k framed orange. The labels are page text: readable at any width."""
    missed, extra = set(cmp.missed), set(cmp.extra)
    files = item_kind(db.kind).files
    n = max(len(cmp.exact_ids), len(cmp.approx_ids), 1)

    def body(i: int) -> str:
        item = str(db.items[i])
        if files:
            data = base64.b64encode(thumbnail_bytes(item, thumb)).decode("ascii")
            return f"<img src='data:image/jpeg;base64,{data}' alt='' title='{html.escape(item, quote=True)}'>"
        return f"<div class='sit-text' title='{html.escape(item, quote=True)}'>{html.escape(item[:200])}</div>"

    def cell(i: int, s: float, flag: str) -> str:
        tag = f"<div class='sit-tag'>{flag}</div>" if flag else ""
        return (f"<div class='sit-cell sit-{flag or 'found'}'>{body(i)}<div>#{i} &middot; {s:.3f}</div>{tag}</div>")

    exact = "".join(cell(i, s, "missed" if i in missed else "") for i, s in zip(cmp.exact_ids, cmp.exact_scores))
    approx = "".join(cell(i, s, "extra" if i in extra else "") for i, s in zip(cmp.approx_ids, cmp.approx_scores))
    name = shorten_middle(str(db.items[cmp.query_id]).rsplit("/", 1)[-1], 40) if files else ""
    query = (f"<div class='sit-row' style='--n:{n}'><div class='sit-label'>query #{cmp.query_id}</div>"
             f"<div class='sit-cell'>{body(cmp.query_id)}<div>{html.escape(name)}</div></div></div>")
    head = (f"<p><b>{html.escape(cmp.description)}</b>: recall@{len(cmp.exact_ids)} {cmp.recall:.2f}, missed "
            f"{len(cmp.missed)} of {len(cmp.exact_ids)} true neighbours of query #{cmp.query_id}. Red: a true "
            "neighbour the index missed; orange: an index result outside the true top-k.</p>")
    return HTML(_TABLE_CSS + f"<div class='sit-cmp'>{head}{query}"
                f"<div class='sit-row' style='--n:{n}'><div class='sit-label'>exact</div>{exact}</div>"
                f"<div class='sit-row' style='--n:{n}'><div class='sit-label'>index</div>{approx}</div></div>")
