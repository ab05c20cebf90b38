"""Search a trained index over the first rows of a set of vectors and the rest exactly, merged by score.

A reader of a database still being built holds an index trained on the rows committed some time ago
(:class:`IndexedPart`, ids ``0 .. rows-1``) while newer rows keep arriving. :func:`merged_search` answers a
query with both: the index's candidates for ``[0, rows)``, re-scored exactly with the stored vectors, and an
exact search over ``[rows, n)``; the two result lists are merged by score (:func:`faiss.merge_knn_results`).
Ids stay global (row numbers), and every score is an exact cosine similarity, so the merge compares like
with like.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from .exact import exact_search
from .params import faiss_threads, set_search_params
from .rerank import DEFAULT_RERANK, candidates_for, rerank_exact

__all__ = ["IndexedPart", "merged_search"]


@dataclass(frozen=True)
class IndexedPart:
    """A trained index holding exactly the rows ``0 .. rows-1`` (as ids) of a set of vectors.

    Never changed once made (a bigger one is a new object), so searches need no lock but for the search
    parameters set on the index.

    Attributes:
        index: The Faiss index (ids = row numbers; ``ntotal == rows``).
        rows: How many of the first rows it holds.
        search_params: Its search defaults (``nprobe`` ...), restored after a search that overrides them.
        factory: Its ``index_factory`` description.
        trained_rows: Rows there were when it was trained (it may hold more, added since without retraining).
        lock: Held while search parameters are set on the index.
    """

    index: Any
    rows: int
    search_params: dict[str, int]
    factory: str
    trained_rows: int
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)


def merged_search(part: IndexedPart, vectors: np.ndarray, xq: np.ndarray, k: int, *,
                  exclude: np.ndarray | None = None, overrides: dict[str, int | None] | None = None,
                  rerank: int = DEFAULT_RERANK, threads: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                     dict[str, Any]]:
    """The ``k`` best rows for each query: the index over ``[0, part.rows)`` and exact over the rest, merged.

    Args:
        part: The index over the first rows.
        vectors: ``(n, d)`` stored L2-normalised vectors, ``n >= part.rows`` (a memmap is fine).
        xq: ``(q, d)`` normalised queries.
        k: Results per query.
        exclude: Boolean mask of rows never returned (removed items).
        overrides: Search parameters for this search (``nprobe``, ``efSearch``, ``k_factor``; ``None``
            values keep the index's defaults).
        rerank: Index candidates per result, re-scored with the stored vectors. The index's candidates are
            always re-scored (at ``1``: exactly ``k`` of them), so that both parts carry exact scores.
        threads: Faiss threads for this search (``None``: Faiss' setting).

    Returns:
        ``(scores, ids, params)``: ``(q, k)`` arrays best first, padded with ``-inf`` / ``-1``, and the search
        parameters used.

    Raises:
        ConfigError: If an override does not apply to the index.
        ValueError: If ``vectors`` holds fewer rows than the index.
    """
    n, m = len(vectors), part.rows
    if n < m:
        raise ValueError(f"The index holds {m} rows but only {n} vectors were given")
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    skipped = int(np.count_nonzero(exclude[:m])) if exclude is not None else 0
    k_index = min(candidates_for(k, rerank) + skipped, max(m, 1))
    wanted = {**part.search_params, **{name: v for name, v in (overrides or {}).items() if v is not None}}
    with part.lock:  # search parameters live on the shared index
        try:
            used = set_search_params(part.index, wanted)
            with faiss_threads(threads):
                _, cand = part.index.search(xq, k_index)
        finally:
            set_search_params(part.index, part.search_params)
    if skipped:
        cand = np.where((cand >= 0) & exclude[np.maximum(cand, 0)], -1, cand)  # type: ignore[index]
    d_index, i_index = rerank_exact(vectors, xq, cand, k)
    if m < n:
        with faiss_threads(threads):
            d_tail, i_tail = exact_search(vectors[m:n], xq, k, exclude=exclude[m:n] if exclude is not None else None)
        i_tail = np.where(i_tail >= 0, i_tail + m, -1)
        d_tail = np.where(i_tail >= 0, d_tail, -np.inf).astype(np.float32)
        scores, ids = faiss.merge_knn_results(np.stack([d_index, d_tail]), np.stack([i_index, i_tail]),
                                              keep_max=True)
    else:
        scores, ids = d_index, i_index
    params: dict[str, Any] = {"exact": False, **used, "indexed_rows": m}
    if rerank > 1:
        params["rerank"] = int(rerank)
    return scores, ids, params
