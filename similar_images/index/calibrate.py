"""nprobe measured, not guessed: the served recall@10 at nprobe 1, 2, 4, ... up to a scan budget.

:func:`calibrate_nprobe` keeps the smallest nprobe within
:data:`NPROBE_TOLERANCE` (0.5%) of the best served recall measured, among the
nprobe values whose inverted lists hold at most :data:`MAX_SCAN_BYTES` of
codes on average (a latency budget).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .params import ivf_of
from .recall import EvalSample, eval_sample, recall_stalled, recall_within
from .rerank import DEFAULT_RERANK
from .types import FaissIndex

__all__ = ["NPROBE_TOLERANCE", "MAX_SCAN_BYTES", "choose_nprobe", "nprobe_cap", "nprobe_steps", "calibrate_nprobe"]

logger = logging.getLogger(__name__)

#: nprobe calibration keeps the smallest nprobe whose served recall@10 is within this fraction of the best
#: measured (0.5%: 0.972 when the best is 0.977).
NPROBE_TOLERANCE = 0.005
#: ... among the nprobe values whose inverted lists hold at most this many code bytes on average: about
#: 0.75 ms of scanning on one core of these machines (IVF201,PQ256 over 40,504 vectors: 7 lists).
MAX_SCAN_BYTES = 384 * 1024


def choose_nprobe(recalls: dict[int, float], tolerance: float = NPROBE_TOLERANCE) -> int:
    """The smallest nprobe whose recall is at least ``(1 - tolerance)`` times the best measured.

    Relative, so that low recalls (e.g. on random vectors, 0.024 against 0.030) are not all "equal"."""
    if not recalls:
        raise ValueError("choose_nprobe needs at least one measured nprobe")
    best = max(recalls.values())
    return min(p for p, r in recalls.items() if r >= best * (1.0 - tolerance) - 1e-12)


def nprobe_cap(index: FaissIndex, max_scan_bytes: int | None = MAX_SCAN_BYTES) -> int | None:
    """The largest nprobe whose lists hold at most ``max_scan_bytes`` of codes on average (at least 1, at most
    nlist); ``None`` for an index without an inverted file."""
    ivf = ivf_of(index)
    if ivf is None:
        return None
    if max_scan_bytes is None or ivf.ntotal == 0:
        return int(ivf.nlist)
    per_list = ivf.ntotal / ivf.nlist * max(1, int(ivf.code_size))
    return int(min(ivf.nlist, max(1, math.floor(max_scan_bytes / per_list))))


def nprobe_steps(cap: int) -> list[int]:
    """1, 2, 4, ... below ``cap``, then ``cap``."""
    steps = [1]
    while steps[-1] * 2 < cap:
        steps.append(steps[-1] * 2)
    return steps + ([cap] if cap > 1 else [])


def calibrate_nprobe(index: FaissIndex, vectors: np.ndarray, *, ids: np.ndarray | None = None, n_queries: int = 1000,
                     k: int = 10, depth: int = DEFAULT_RERANK, tolerance: float = NPROBE_TOLERANCE,
                     max_scan_bytes: int | None = MAX_SCAN_BYTES, seed: int = 0,
                     sample: EvalSample | None = None) -> tuple[int, dict[int, float]]:
    """Measure the served recall@k at nprobe 1, 2, 4, ... and set the smallest nprobe within a fraction
    ``tolerance`` of the best.

    The nprobe values tried stop at :func:`nprobe_cap`: the lists a query scans hold at most ``max_scan_bytes``
    of codes on average, which bounds the latency (on data without neighbourhood structure, such as random
    vectors, recall grows until every list is scanned, and the index would be no faster than a full scan).

    The served recall is what :meth:`Database.search <similar_images.store.Database.search>` returns by
    default: ``k * depth`` index candidates re-ranked exactly (:func:`recall_within`). Database vectors are the
    queries, each excluded from its own results. The sweep stops once recall reaches 1 or two doublings in a
    row add less than 0.002.

    Args:
        index: A trained and filled index with an inverted file (any wrappers).
        vectors: The vectors in the index (rows in ``ids`` order).
        ids: Id of each row (default: row numbers).
        n_queries: Sampled queries.
        k: The k of recall@k.
        depth: Re-ranking depth of the served search (0 or 1: the index alone).
        tolerance: The fraction of the best measured recall the chosen nprobe may give up.
        max_scan_bytes: Latency budget, in code bytes scanned per query (``None``: up to all lists).
        seed: Seed of the query sample.

    Returns:
        ``(chosen nprobe, {nprobe: recall})``; the chosen nprobe is set on the index.

    Raises:
        ValueError: If the index has no inverted file.
    """
    ivf = ivf_of(index)
    if ivf is None:
        raise ValueError("calibrate_nprobe needs an IVF index")
    if sample is None:
        ids = np.arange(len(vectors), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        sample = eval_sample(vectors, ids, n_queries, k, seed)
    if sample is None:
        raise ValueError("calibrate_nprobe needs at least 2 vectors and 1 query")
    width = sample.k * max(1, depth)
    recalls: dict[int, float] = {}
    cap = nprobe_cap(index, max_scan_bytes) or ivf.nlist
    for nprobe in nprobe_steps(cap):
        ivf.nprobe = nprobe
        recalls[nprobe] = recall_within(sample.search(index, width), sample.truth, sample.k)
        if recall_stalled(list(recalls.values()), 0.002):
            break
    chosen = choose_nprobe(recalls, tolerance)
    ivf.nprobe = chosen
    logger.info("nprobe calibration (served recall@%d): %s -> nprobe %d%s", sample.k,
                ", ".join(f"{p}: {r:.3f}" for p, r in recalls.items()), chosen,
                f" (at most {cap} of {ivf.nlist} lists: the scan budget)" if cap < ivf.nlist else "")
    return chosen, recalls
