"""The index-tuning notebook's measuring, quietly: the tuning sweep, and one query's exact neighbours against
an index's (the query whose true neighbours the index misses most, unless one is named).

What Faiss prints while it trains the candidate indexes ("WARNING clustering ...") and the package's log lines go
to the app log (:func:`~.common.quiet_output`), not into the notebook. The notebook shows the results with
:mod:`similar_images.presentation.tuning` (the tuning table, the neighbours side by side).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..index import IndexConfig, build_index, drop_self, exact_search, set_search_params
from ..measure.compare import NeighbourComparison, compare_neighbours
from ..measure.tune import TuneConfig, tune_database
from ..measure.tune_report import TunePoint, TuneReport
from ..store import Database
from .common import log_to_file, quiet_output

__all__ = ["run_tuning", "comparison_for", "pick_query"]

logger = logging.getLogger(__name__)


def run_tuning(db: Database, config: TuneConfig | None = None) -> TuneReport:
    """:func:`~similar_images.measure.tune_database`, with what Faiss and the package print sent to the app log."""
    log_to_file()
    with quiet_output():
        return tune_database(db, config or TuneConfig())


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
