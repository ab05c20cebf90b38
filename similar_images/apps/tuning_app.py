"""Display helpers of the index-tuning notebook: the tuning table, and one query's exact neighbours next to an
index's, missed ones marked.

Kept apart from the library's measuring code so that the notebook stays thin
(a parameter cell and calls into the package). What Faiss prints while it
trains the candidate indexes ("WARNING clustering ...") and the package's log
lines go to the app log (:func:`~.common.quiet_output`), not into the notebook.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ..embed import item_kind
from ..errors import ConfigError
from ..index import IndexConfig, build_index, drop_self, exact_search, set_search_params
from ..measure.compare import NeighbourComparison, compare_neighbours
from ..measure.tune import TuneConfig, tune_database
from ..measure.tune_report import TunePoint, TuneReport, human_bytes
from ..store import Database
from .common import figure_png, log_to_file, quiet_output, shorten_middle, thumbnail_array, thumbnail_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["run_tuning", "report_html", "comparison_for", "pick_query", "neighbours_figure", "neighbours_html",
           "figure_png", "comparison_text", "HTML"]

logger = logging.getLogger(__name__)

MISSED = "#d62728"
EXTRA = "#ff7f0e"
FOUND = "#2ca02c"


class HTML:
    """HTML shown as such by Jupyter (``_repr_html_``), without importing IPython here."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_html_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


def run_tuning(db: Database, config: TuneConfig | None = None) -> TuneReport:
    """:func:`~similar_images.measure.tune_database`, with what Faiss and the package print sent to the app log."""
    log_to_file()
    with quiet_output():
        return tune_database(db, config or TuneConfig())


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


def _point(report: TuneReport | None, which: str) -> TunePoint | None:
    if which not in ("original", "pick"):
        return None
    if report is None:
        raise ConfigError(f"{which!r} needs a tuning report")
    point = report.original if which == "original" else report.chosen
    if point is None and which == "original":
        logger.warning("The original configuration %s could not be built here; showing the pick instead",
                       report.original_factory)
        point = report.chosen
    if point is None:
        raise ConfigError("The tuning report has no such configuration; name an index description instead")
    return point


def _index_for(db: Database, report: TuneReport | None, which: str,
               params: dict[str, int] | None) -> tuple[Any, dict[str, int], str]:
    """``(index, search parameters, description)`` of the index named by ``which``."""
    point = _point(report, which)
    if point is not None:
        factory, wanted = point.factory, {**point.params, **(params or {})}
    elif which == "db":
        if db.index is None:
            raise ConfigError(f"{db.path} has no index; build one or name an index description")
        info = db.manifest.index
        return db.index, {**db.search_defaults, **(params or {})}, info.factory if info else "index"
    else:
        factory, wanted = which, dict(params or {})
    live = db.live_ids()
    vectors = db.vectors if len(live) == len(db.items) else np.asarray(db.vectors[live])
    ids = None if len(live) == len(db.items) else live
    index, _ = build_index(vectors, IndexConfig(factory=factory, eval_queries=0), ids=ids)
    return index, wanted, factory


def pick_query(db: Database, index: Any, params: dict[str, int], *, k: int = 10, sample: int = 300,
               seed: int = 0) -> tuple[int, int]:
    """The database item (of a random sample) whose true top-``k`` the index misses most: ``(id, misses)``.

    Ties go to the lowest id; ``(first sampled id, 0)`` when the index finds every true neighbour.
    """
    live = db.live_ids()
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(live, size=min(sample, len(live)), replace=False))
    xq = np.ascontiguousarray(db.vectors[ids], dtype=np.float32)
    k = max(1, min(k, len(live) - 1))
    _, truth = exact_search(db.vectors, xq, k + 1, exclude=db.removed if db.removed.any() else None)
    set_search_params(index, params)
    _, found = index.search(xq, k + 1)
    truth = drop_self(truth, ids, k)[0]
    found = drop_self(found, ids, k)[0]
    misses = np.array([len(set(t.tolist()) - set(f.tolist()) - {-1}) for t, f in zip(truth, found)])
    best = int(np.argmax(misses))  # the first of the most missed
    return int(ids[best]), int(misses[best])


def comparison_for(db: Database, report: TuneReport | None, query_id: int | str | None, which: str = "original", *,
                   params: dict[str, int] | None = None, k: int = 10) -> NeighbourComparison:
    """Compare exact and approximate neighbours of a query for the index named by ``which``.

    Args:
        db: The database.
        report: A tuning report (needed for ``"original"`` and ``"pick"``).
        query_id: A database id (excluded from both lists), or ``"auto"``/``None``: the sampled item whose true
            neighbours that index misses most (:func:`pick_query`), so that misses show.
        which: ``"original"`` (the default factory searched with nprobe 4, as the original design), ``"pick"``
            (the tuner's choice), ``"db"`` (the database's own index), or any index description.
        params: Search parameters overriding those of the chosen setting.
        k: Neighbours to compare.

    Raises:
        ConfigError: If the named index is not available.
    """
    log_to_file()
    with quiet_output():
        index, wanted, factory = _index_for(db, report, which, params)
        if query_id is None or str(query_id).strip().lower() in ("auto", ""):
            query_id, misses = pick_query(db, index, wanted, k=k)
            logger.info("Query %d: %d of its true top-%d missed by %s", query_id, misses, k, factory)
        cmp = compare_neighbours(db, int(query_id), k=k, index=index, params=wanted)
    used = " (" + ", ".join(f"{n}={v}" for n, v in wanted.items()) + ")" if wanted else ""
    return dataclasses.replace(cmp, description=factory + used)


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
