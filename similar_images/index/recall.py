"""Recall against exact search, with database vectors as queries (each removed from its own results)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .exact import exact_search
from .types import FaissIndex

__all__ = [
    "recall_at_k",
    "recall_within",
    "recall_table",
    "recall_stalled",
    "drop_self",
    "sample_rows",
    "EvalSample",
    "eval_sample",
]


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true top-k ids that appear in the found top-k ids."""
    if len(truth) == 0:
        return float("nan")
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) for f, t in zip(found, truth))
    return hits / (len(truth) * k)


def recall_within(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true top-k ids found anywhere in each row of ``found``.

    With ``found`` = the ``k * r`` index candidates that an exact re-ranking starts from, this is the
    recall@k after the re-ranking (each true neighbour among the candidates is ranked above every
    candidate that is not one).
    """
    if len(truth) == 0:
        return float("nan")
    hits = sum(len(set(f.tolist()) & set(t[:k].tolist()) - {-1}) for f, t in zip(found, truth))
    return hits / (len(truth) * k)


def recall_table(found: np.ndarray, truth: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Recall@k (:func:`recall_at_k`) for every ``k`` in ``ks``; cut-offs larger than the lists are left out."""
    width = min(found.shape[1], truth.shape[1])
    return {int(k): float(recall_at_k(found, truth, int(k))) for k in ks if k <= width}


def recall_stalled(recalls: list[float], min_gain: float) -> bool:
    """Whether a sweep of growing search effort can stop: recall reached 1, or the last two steps each added
    less than ``min_gain``."""
    if recalls and recalls[-1] >= 1.0 - 1e-9:
        return True
    return len(recalls) >= 3 and recalls[-1] - recalls[-2] < min_gain and recalls[-2] - recalls[-3] < min_gain


def drop_self(ids: np.ndarray, self_ids: Sequence[int] | np.ndarray, k: int,
              scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Remove each query's own id from its result row and keep the first ``k``.

    Args:
        ids: ``(q, m)`` result ids (``m >= k``; ``-1`` pads missing results).
        self_ids: Id of each query (``-1`` when the query is not in the database).
        k: Results to keep per row.
        scores: Optional ``(q, m)`` scores, filtered alike.

    Returns:
        ``(ids, scores)`` of shape ``(q, k)``, padded with ``-1`` / ``-inf``.
    """
    ids = np.asarray(ids)
    out = np.full((len(ids), k), -1, dtype=np.int64)
    out_s = np.full((len(ids), k), -np.inf, dtype=np.float32) if scores is not None else None
    for r, (row, me) in enumerate(zip(ids, np.asarray(self_ids))):
        keep = row != me
        kept = row[keep][:k]
        out[r, :len(kept)] = kept
        if out_s is not None and scores is not None:
            out_s[r, :len(kept)] = np.asarray(scores[r])[keep][:k]
    return out, out_s


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A sorted random sample of ``size`` of ``range(n)`` (all of it when ``size >= n``)."""
    rng = np.random.default_rng(seed)
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


@dataclass
class EvalSample:
    """Database vectors used as queries, their ids, and their exact top-k (each query's own id removed).

    Attributes:
        truth_scores: The exact similarities of ``truth`` (column 0: each query's nearest other vector).
    """

    queries: np.ndarray
    self_ids: np.ndarray
    truth: np.ndarray
    k: int
    truth_scores: np.ndarray | None = None

    def search(self, index: FaissIndex, width: int) -> np.ndarray:
        """The index's top ``width`` ids of every query, the query's own id removed."""
        _, found = index.search(self.queries, min(width + 1, index.ntotal))
        return drop_self(found, self.self_ids, width)[0]


def eval_sample(vectors: np.ndarray, ids: np.ndarray, n_queries: int, k: int, seed: int) -> EvalSample | None:
    """Sample ``n_queries`` of ``vectors`` as queries and find their exact top ``k`` (``None`` if too few)."""
    n = len(vectors)
    k = min(k, n - 1)
    if n_queries == 0 or k < 1:
        return None
    rows = sample_rows(n, n_queries, seed)
    xq = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    self_ids = ids[rows]
    scores, truth = exact_search(vectors, xq, k + 1, ids=ids)
    kept, kept_scores = drop_self(truth, self_ids, k, scores)
    return EvalSample(xq, self_ids, kept, k, kept_scores)
