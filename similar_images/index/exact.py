"""Exact (brute-force) inner-product search over stored vectors, block by block (bounded memory)."""

from __future__ import annotations

import faiss
import numpy as np

__all__ = ["exact_search"]


def exact_search(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    ids: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    block_size: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search over ``vectors``.

    Args:
        vectors: ``(n, d)`` database vectors (a memmap is fine).
        queries: ``(q, d)`` query vectors.
        k: Neighbours per query.
        ids: Id of each row (default: row numbers).
        exclude: Boolean mask of rows to ignore (e.g. removed images).
        block_size: Rows per block.

    Returns:
        ``(scores, ids)`` of shape ``(q, k)``, best first; missing results have id -1.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    n = len(vectors)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        xb = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
        # excluded rows may take slots: ask for as many more as the block excludes
        skipped = int(np.count_nonzero(exclude[start:stop])) if exclude is not None else 0
        kk = min(k + skipped, stop - start)
        scores, rows = faiss.knn(queries, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
        if exclude is not None:
            dropped = exclude[start:stop][np.maximum(rows, 0)] | (rows < 0)
            scores = np.where(dropped, -np.inf, scores).astype(np.float32)
            rows = np.where(dropped, -1, rows)
        block_ids = np.where(rows >= 0, (ids[start:stop][np.maximum(rows, 0)] if ids is not None else rows + start), -1)
        keep = np.argsort(block_ids < 0, axis=1, kind="stable")[:, :min(k, kk)]  # the best k kept ones, in order
        scores = np.take_along_axis(scores, keep, axis=1)
        block_ids = np.take_along_axis(block_ids, keep, axis=1)
        heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(block_ids, dtype=np.int64))
    heap.finalize()
    return heap.D, heap.I
