"""One query, side by side: the exact top-k of a database item next to an index's, the missed ones marked."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ..index import IndexConfig, build_index, drop_self, exact_search, set_search_params
from ..index.types import FaissIndex

if TYPE_CHECKING:
    from ..store import Database

__all__ = ["NeighbourComparison", "compare_neighbours"]


@dataclass
class NeighbourComparison:
    """Exact and approximate neighbours of one query.

    Attributes:
        query_id: The query's database id (excluded from both lists).
        exact_ids, exact_scores: The true top-k.
        approx_ids, approx_scores: What the index returned.
        missed: True neighbours the index did not return.
        extra: Returned ids that are not true top-k neighbours.
        recall: ``1 - len(missed) / k``.
        description: The index and its search parameters.
    """

    query_id: int
    exact_ids: list[int]
    exact_scores: list[float]
    approx_ids: list[int]
    approx_scores: list[float]
    missed: list[int]
    extra: list[int]
    recall: float
    description: str


def compare_neighbours(db: Database, query_id: int, *, k: int = 10, index: FaissIndex | None = None,
                       factory: str | None = None, params: dict[str, int] | None = None,
                       train_size: int | None = None) -> NeighbourComparison:
    """The exact top-k of a database item next to an index's top-k.

    The index is, in order of preference: ``index`` (any Faiss index over the
    database ids), a new one built from ``factory`` over the live vectors, or
    the database's own index.

    Raises:
        QueryError: For an unknown or removed id.
        ValueError: If there is no index to compare with.
    """
    qid = db.check_id(query_id)
    live = db.live_ids()
    k = max(1, min(int(k), len(live) - 1))
    xq = np.ascontiguousarray(db.vectors[qid:qid + 1], dtype=np.float32)
    if index is None and factory is not None:
        if len(live) == len(db.items):
            index, _ = build_index(db.vectors, IndexConfig(factory=factory, eval_queries=0, train_size=train_size))
        else:
            index, _ = build_index(np.asarray(db.vectors[live]), IndexConfig(factory=factory, eval_queries=0,
                                                                              train_size=train_size), ids=live)
        desc = factory
    elif index is None:
        if db.index is None:
            raise ConfigError(f"{db.path} has no index; build one or pass factory=")
        index = db.index
        desc = db.manifest.index.factory if db.manifest.index else "index"
        params = {**db.search_defaults, **(params or {})}
    else:
        desc = "given index"
    used = set_search_params(index, params or {})
    if used:
        desc += " (" + ", ".join(f"{n}={v}" for n, v in used.items()) + ")"
    es, ei = exact_search(db.vectors, xq, k + 1, exclude=db.removed if db.removed.any() else None)
    as_, ai = index.search(xq, k + 1)
    ei, kept_es = drop_self(ei, [qid], k, es)
    ai, kept_as = drop_self(ai, [qid], k, as_)
    exact_ids = [int(i) for i in ei[0] if i >= 0]
    approx_ids = [int(i) for i in ai[0] if i >= 0]
    missed = [i for i in exact_ids if i not in set(approx_ids)]
    extra = [i for i in approx_ids if i not in set(exact_ids)]
    assert kept_es is not None and kept_as is not None
    return NeighbourComparison(
        query_id=qid, exact_ids=exact_ids, exact_scores=[float(s) for s in kept_es[0][:len(exact_ids)]],
        approx_ids=approx_ids, approx_scores=[float(s) for s in kept_as[0][:len(approx_ids)]], missed=missed,
        extra=extra, recall=1.0 - len(missed) / max(len(exact_ids), 1) if exact_ids else math.nan, description=desc,
    )
