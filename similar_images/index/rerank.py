"""Exact re-ranking of an index's candidates with the stored vectors: one implementation, one default depth.

A compressed index ranks with approximate scores (for PQ about 0.2 below the
true cosine). Every search (:mod:`similar_images.search`), evaluation
(:mod:`similar_images.measure.evaluate`) and tuning sweep
(:mod:`similar_images.measure.tune`) therefore asks the index for
``k * DEFAULT_RERANK`` candidates and re-scores them here, so the scores shown
are exact cosine similarities and the ranking improves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["DEFAULT_RERANK", "rerank_exact", "candidates_for", "RerankedSearch"]

#: Index candidates fetched per wanted result and re-ranked exactly.
DEFAULT_RERANK = 4


def candidates_for(k: int, depth: int) -> int:
    """How many index candidates a search for ``k`` results re-ranks at ``depth`` (``k`` when ``depth <= 1``)."""
    return k * depth if depth > 1 else k


def rerank_exact(vectors: np.ndarray, xq: np.ndarray, cand: np.ndarray, k: int, *,
                 ids: np.ndarray | None = None, row_of: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate ids with the stored vectors (exact cosine) and keep the best ``k`` of each row.

    Args:
        vectors: ``(n, d)`` stored vectors (a memmap is fine).
        xq: ``(q, d)`` normalised queries.
        cand: ``(q, m)`` candidate ids (``-1``: none).
        k: Results to keep.
        ids: Id of each row of ``vectors`` (default: row numbers).
        row_of: Row of each id (default: the id itself).

    Returns:
        ``(scores, ids)`` of shape ``(q, k)``, padded with ``-inf`` / ``-1``.
    """
    scores = np.full((len(xq), k), -np.inf, dtype=np.float32)
    out = np.full((len(xq), k), -1, dtype=np.int64)
    for r, (q, c) in enumerate(zip(xq, cand)):
        c = c[c >= 0]
        rows = row_of[c] if row_of is not None else c
        exact = np.asarray(vectors[rows], dtype=np.float32) @ q
        order = np.argsort(-exact, kind="stable")[:k]
        scores[r, :len(order)] = exact[order]
        out[r, :len(order)] = ids[rows[order]] if ids is not None else rows[order]
    return scores, out


class RerankedSearch:
    """A search function that re-ranks ``k * depth`` candidates of another one exactly (what searches serve).

    Args:
        search: ``search(xq, k) -> (scores, ids)``, e.g. a Faiss index's ``search``.
        vectors: The stored vectors the candidates are re-scored with.
        ids: Id of each row of ``vectors`` (default: row numbers).
        depth: Candidates per wanted result.
        extra: Result slots reserved for the query itself (a database vector used as a query, dropped
            afterwards): it gets one more candidate, not ``depth`` more.

    Calling it as ``search(xq, k)`` returns ``(scores, ids)`` of shape ``(q, k)``.
    """

    def __init__(self, search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], vectors: np.ndarray, *,
                 ids: np.ndarray | None = None, depth: int = DEFAULT_RERANK, extra: int = 0,
                 ntotal: int | None = None) -> None:
        self.search = search
        self.vectors = vectors
        self.ids = ids
        self.depth = depth
        self.extra = extra
        self.ntotal = ntotal if ntotal is not None else len(vectors)
        self.row_of = None
        if ids is not None:
            self.row_of = np.full(int(ids.max()) + 1 if len(ids) else 1, -1, dtype=np.int64)
            self.row_of[ids] = np.arange(len(ids))

    def __call__(self, xq: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        _, cand = self.search(xq, min((kk - self.extra) * self.depth + self.extra, self.ntotal))
        return rerank_exact(self.vectors, xq, cand, kk, ids=self.ids, row_of=self.row_of)
