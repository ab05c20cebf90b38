"""Building, training and measuring Faiss indexes for cosine similarity.

All vectors are L2-normalised, so cosine similarity equals the inner
product, and every index is created with ``METRIC_INNER_PRODUCT`` (the
coarse quantizer, the PQ codes and any refinement stage alike).

The default index (:func:`default_factory`) was chosen from the tuner's
measurements (see :mod:`similar_images.tuning` and the README): exact ``Flat``
below :data:`MIN_PQ_VECTORS` vectors, otherwise an inverted file with about
``sqrt(N)`` lists and product quantization with one 8-bit code per 16
dimensions (``IVF{sqrt N},PQ{d/16}``; the original design used 16 codes
whatever ``d``: :func:`original_factory`). Unless ``nprobe`` is given, the
build measures recall against exact search at nprobe 1, 2, 4, ... (up to a
scan budget, :data:`MAX_SCAN_BYTES`) and keeps the smallest nprobe within
:data:`NPROBE_TOLERANCE` (0.5%) of the best (:func:`calibrate_nprobe`). Any
Faiss ``index_factory`` string can be used instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _io
from .errors import IndexTrainingError

__all__ = [
    "IndexConfig",
    "BuildReport",
    "MIN_PQ_VECTORS",
    "DEFAULT_RERANK",
    "NPROBE_TOLERANCE",
    "default_factory",
    "original_factory",
    "default_search_params",
    "calibrate_nprobe",
    "choose_nprobe",
    "nprobe_cap",
    "nprobe_steps",
    "fallback_nprobe",
    "make_index",
    "min_training_vectors",
    "build_index",
    "add_vectors",
    "set_search_params",
    "exact_search",
    "recall_at_k",
    "recall_within",
    "recall_stalled",
    "index_nbytes",
    "write_index",
    "read_index",
    "faiss_threads",
]

logger = logging.getLogger(__name__)

#: Fewest vectors for which the default index is compressed: Faiss recommends 39 training
#: points per centroid, and an 8-bit PQ trains 256 centroids per sub-quantizer.
MIN_PQ_VECTORS = 39 * 256
#: Index candidates fetched per wanted result and re-ranked exactly by the search
#: (see :func:`similar_images.search.search_vectors`).
DEFAULT_RERANK = 4
#: nprobe calibration keeps the smallest nprobe whose served recall@10 is within this fraction of the best
#: measured (0.5%: 0.972 when the best is 0.977).
NPROBE_TOLERANCE = 0.005
#: ... among the nprobe values whose inverted lists hold at most this many code bytes on average: about
#: 0.75 ms of scanning on one core of these machines (IVF201,PQ256 over 40,504 vectors: 7 lists).
MAX_SCAN_BYTES = 384 * 1024


def _faiss() -> Any:
    import faiss  # noqa: PLC0415

    return faiss


@dataclass
class IndexConfig:
    """Settings of the index stage.

    Attributes:
        factory: A Faiss ``index_factory`` string; ``None`` picks :func:`default_factory`.
        train_size: Vectors sampled for training (default: all, at most 100,000).
        nprobe: IVF lists visited per query (saved as the database default); ``None``: calibrated by
            measurement (:func:`calibrate_nprobe`) when ``eval_queries > 0``, else :func:`default_search_params`.
        ef_search: HNSW search depth (saved as the database default).
        k_factor: Re-ranking depth of a refine stage (``...,RFlat``).
        eval_queries: Database vectors used as queries to measure recall@10 (and calibrate nprobe); 0 skips it.
        seed: Seed of the training and evaluation samples.
        add_batch_size: Vectors added per call (bounds memory).
    """

    factory: str | None = None
    train_size: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    k_factor: int | None = None
    eval_queries: int = 1000
    seed: int = 1234
    add_batch_size: int = 65_536

    def __post_init__(self) -> None:
        for name in ("train_size", "nprobe", "ef_search", "k_factor"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.eval_queries < 0:
            raise ValueError(f"eval_queries must be >= 0, got {self.eval_queries}")


@dataclass
class BuildReport:
    """Measured facts about a built index (all stored in the manifest).

    Attributes:
        recall_at_10: Recall@10 of the index alone against exact search (database vectors as queries,
            each excluded from its own results).
        recall_at_10_served: The same as the search serves it by default: ``10 * DEFAULT_RERANK`` index
            candidates re-ranked with the exact vectors.
        nprobe_recalls: Served recall@10 measured at each nprobe tried by the calibration (``None`` when
            nprobe was given or the index has no inverted file).
    """

    factory: str
    n_vectors: int
    n_train: int
    train_seconds: float
    add_seconds: float
    build_seconds: float
    index_bytes: int
    recall_at_10: float | None
    n_eval_queries: int
    search_params: dict[str, int] = field(default_factory=dict)
    recall_at_10_served: float | None = None
    nprobe_recalls: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _divisor_at_most(d: int, m: int) -> int:
    return next(c for c in range(max(1, min(m, d)), 0, -1) if d % c == 0)


def original_factory(n: int, d: int) -> str:
    """The original design: ``IVF{round(sqrt(n))},PQ16`` (16, or the largest divisor of d below it)."""
    nlist = max(1, int(round(math.sqrt(max(n, 1)))))
    return f"IVF{nlist},PQ{_divisor_at_most(d, 16)}"


def default_factory(n: int, d: int) -> str:
    """The default index for ``n`` vectors of dimension ``d``, chosen from the tuner's measurements.

    * ``Flat`` (exact) below :data:`MIN_PQ_VECTORS` vectors: PQ codebooks cannot be trained well, the
      fixed costs (codebooks, centroids) are a large part of a small index, and exact search is fast;
    * otherwise ``IVF{round(sqrt(n))},PQ{m}`` with one 8-bit code per 16 dimensions (``m = d / 16``,
      at least 16 and at most 256 bytes a vector, a divisor of ``d``). The original 16 bytes whatever
      ``d`` kept 0.31 of the true top 10 of 4096-d vectors (0.57 after re-ranking); ``d / 16`` bytes
      keep 0.80 (0.97 re-ranked), at 0.027x the memory of the exact index (codes 1/64 of the float
      vectors, plus ids, coarse centroids and codebooks).

    Examples: 40,504 x 4096 -> ``IVF201,PQ256``; 20,000 x 512 -> ``IVF141,PQ32``; 4,064 x 512 -> ``Flat``.
    """
    if n < MIN_PQ_VECTORS:
        return "Flat"
    nlist = max(1, int(round(math.sqrt(n))))
    return f"IVF{nlist},PQ{_divisor_at_most(d, min(256, max(16, d // 16)))}"


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """Run Faiss with ``n`` OpenMP threads in the calling thread, then restore the setting.

    OpenMP's thread count is per calling thread. For one or a few queries a
    team of threads costs more than it saves, and on a busy machine, or with
    many request threads each starting its own team, much more (a 0.1 ms
    search became 19 ms in the HTTP service's measurements).
    """
    if n is None:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _unwrap(index: Any) -> list[Any]:
    """The chain of (downcast) indexes inside wrappers: IDMap, PreTransform, Refine."""
    faiss = _faiss()
    chain = []
    cur = faiss.downcast_index(index)
    while cur is not None:
        chain.append(cur)
        nxt = None
        if isinstance(cur, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            nxt = cur.index
        elif isinstance(cur, faiss.IndexRefine):
            nxt = cur.base_index
        cur = faiss.downcast_index(nxt) if nxt is not None else None
    return chain


def _ivf_of(index: Any) -> Any | None:
    """The inverted-file index inside ``index`` (any wrappers), or ``None``."""
    faiss = _faiss()
    return next((s for s in _unwrap(index) if isinstance(s, faiss.IndexIVF)), None)


def fallback_nprobe(nlist: int) -> int:
    """nprobe when nothing is measured: ``min(nlist, max(16, ceil(nlist / 8)))``."""
    return min(nlist, max(16, math.ceil(nlist / 8)))


def default_search_params(index: Any) -> dict[str, int]:
    """Search-time defaults when nothing is measured: nprobe = ``min(nlist, max(16, ceil(nlist / 8)))`` for
    IVF, efSearch = 64 for HNSW, k_factor 4 for refine (:func:`build_index` calibrates nprobe instead)."""
    faiss = _faiss()
    params: dict[str, int] = {}
    for sub in _unwrap(index):
        if isinstance(sub, faiss.IndexIVF):
            params["nprobe"] = fallback_nprobe(sub.nlist)
        elif isinstance(sub, faiss.IndexHNSW):
            params["efSearch"] = 64
        elif isinstance(sub, faiss.IndexRefine):
            params["k_factor"] = 4
    return params


def set_search_params(index: Any, params: dict[str, int | None]) -> dict[str, int]:
    """Apply search parameters (``nprobe``, ``efSearch``, ``k_factor``); ``None`` values are skipped.

    Returns:
        The parameters that were applied.

    Raises:
        ValueError: If the index has no such parameter.
    """
    faiss = _faiss()
    applied: dict[str, int] = {}
    chain = _unwrap(index)
    for name, value in params.items():
        if value is None:
            continue
        value = int(value)
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
        if name == "k_factor":
            refine = [s for s in chain if isinstance(s, faiss.IndexRefine)]
            if not refine:
                raise ValueError("k_factor applies only to indexes with a refine stage (',RFlat')")
            refine[0].k_factor = value
        elif name == "nprobe":
            ivf = _ivf_of(index)
            if ivf is None:
                raise ValueError("nprobe applies only to IVF indexes")
            ivf.nprobe = min(value, ivf.nlist)
            value = ivf.nprobe
        elif name == "efSearch":
            hnsw = [s for s in chain if isinstance(s, faiss.IndexHNSW)]
            if not hnsw:
                raise ValueError("efSearch applies only to HNSW indexes")
            hnsw[0].hnsw.efSearch = value
        else:
            raise ValueError(f"Unknown search parameter {name!r}; use nprobe, efSearch or k_factor")
        applied[name] = value
    return applied


def make_index(factory: str, d: int, *, metric: str = "ip") -> Any:
    """Create an untrained index that accepts explicit ids.

    IVF indexes store ids natively; every other index is wrapped in
    ``IndexIDMap2`` so database ids survive additions and removals.

    Args:
        factory: A Faiss ``index_factory`` string.
        d: Vector dimension.
        metric: ``"ip"`` (inner product: cosine on normalised vectors, used for
            all feature vectors) or ``"l2"`` (e.g. SIFT descriptors).

    Raises:
        IndexTrainingError: If Faiss does not understand ``factory``.
    """
    faiss = _faiss()
    metrics = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
    if metric not in metrics:
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    try:
        index = faiss.index_factory(d, factory, metrics[metric])
    except RuntimeError as exc:
        raise IndexTrainingError(
            f"Invalid index description {factory!r} for {d}-d vectors: {str(exc).splitlines()[-1]}. "
            "Examples: 'Flat', 'IVF256,Flat', 'IVF256,PQ16', 'OPQ16,IVF256,PQ16', 'HNSW32', 'IVF256,SQ8'."
        ) from exc
    # The factory turns on polysemous training for "PQ<m>" (not "PQ<m>np"): a slow
    # code reordering (a minute for a few thousand vectors) that only helps
    # polysemous search, which this package never uses.
    for sub in _unwrap(index):
        if getattr(sub, "do_polysemous_training", False):
            sub.do_polysemous_training = False
    top = faiss.downcast_index(index)
    native_ids = isinstance(top, (faiss.IndexIVF, faiss.IndexIDMap, faiss.IndexIDMap2)) or (
        isinstance(top, faiss.IndexPreTransform) and isinstance(faiss.downcast_index(top.index), faiss.IndexIVF)
    )
    return index if native_ids else faiss.IndexIDMap2(index)


def min_training_vectors(index: Any) -> int:
    """The fewest training vectors Faiss accepts for ``index`` (0 if it needs no training)."""
    faiss = _faiss()
    need = 0
    for sub in _unwrap(index):
        if isinstance(sub, faiss.IndexIVF):
            need = max(need, sub.nlist)
        pq = getattr(sub, "pq", None)
        if pq is not None and hasattr(pq, "ksub"):
            need = max(need, int(pq.ksub))
        if isinstance(sub, faiss.IndexPreTransform):
            for i in range(sub.chain.size()):
                vt = faiss.downcast_VectorTransform(sub.chain.at(i))
                if isinstance(vt, faiss.OPQMatrix):
                    need = max(need, 2 ** 8)
        if not sub.is_trained:
            need = max(need, 1)
    return need


def _quiet_clustering(index: Any) -> None:
    """Silence Faiss' per-quantizer "please provide at least N training points" lines on stderr
    (one warning through ``logging`` replaces them)."""
    for sub in _unwrap(index):
        for cp in (getattr(sub, "cp", None), getattr(getattr(sub, "pq", None), "cp", None)):
            if cp is not None and hasattr(cp, "min_points_per_centroid"):
                cp.min_points_per_centroid = 1


def _sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def add_vectors(index: Any, vectors: np.ndarray, ids: np.ndarray, batch_size: int = 65_536) -> None:
    """Add vectors with explicit int64 ids, in batches (``vectors`` may be a memmap)."""
    for start in range(0, len(ids), batch_size):
        stop = min(start + batch_size, len(ids))
        xb = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
        index.add_with_ids(xb, np.ascontiguousarray(ids[start:stop], dtype=np.int64))


def exact_search(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    ids: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    block_size: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search over ``vectors``, block by block (bounded memory).

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
    faiss = _faiss()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    n = len(vectors)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        xb = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
        kk = min(k, stop - start)
        scores, rows = faiss.knn(queries, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
        if exclude is not None:
            dropped = exclude[start:stop][np.maximum(rows, 0)] | (rows < 0)
            scores = np.where(dropped, -np.inf, scores).astype(np.float32)
            rows = np.where(dropped, -1, rows)
        block_ids = np.where(rows >= 0, (ids[start:stop][np.maximum(rows, 0)] if ids is not None else rows + start), -1)
        heap.add_result(scores.astype(np.float32), block_ids.astype(np.int64))
    heap.finalize()
    return heap.D, heap.I


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


@dataclass
class _EvalSample:
    """Database vectors used as queries, their ids, and their exact top-k (each query's own id removed)."""

    queries: np.ndarray
    self_ids: np.ndarray
    truth: np.ndarray
    k: int

    def search(self, index: Any, width: int) -> np.ndarray:
        """The index's top ``width`` ids of every query, the query's own id removed."""
        from .evaluation import drop_self  # noqa: PLC0415

        _, found = index.search(self.queries, min(width + 1, index.ntotal))
        return drop_self(found, self.self_ids, width)[0]


def _eval_sample(vectors: np.ndarray, ids: np.ndarray, n_queries: int, k: int, seed: int) -> _EvalSample | None:
    from .evaluation import drop_self  # noqa: PLC0415

    n = len(vectors)
    k = min(k, n - 1)
    if n_queries == 0 or k < 1:
        return None
    rows = _sample_rows(n, n_queries, seed)
    xq = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    self_ids = ids[rows]
    _, truth = exact_search(vectors, xq, k + 1, ids=ids)
    return _EvalSample(xq, self_ids, drop_self(truth, self_ids, k)[0], k)


def recall_stalled(recalls: list[float], min_gain: float) -> bool:
    """Whether a sweep of growing search effort can stop: recall reached 1, or the last two steps each added
    less than ``min_gain``."""
    if recalls and recalls[-1] >= 1.0 - 1e-9:
        return True
    return len(recalls) >= 3 and recalls[-1] - recalls[-2] < min_gain and recalls[-2] - recalls[-3] < min_gain


def choose_nprobe(recalls: dict[int, float], tolerance: float = NPROBE_TOLERANCE) -> int:
    """The smallest nprobe whose recall is at least ``(1 - tolerance)`` times the best measured.

    Relative, so that low recalls (e.g. on random vectors, 0.024 against 0.030) are not all "equal"."""
    if not recalls:
        raise ValueError("choose_nprobe needs at least one measured nprobe")
    best = max(recalls.values())
    return min(p for p, r in recalls.items() if r >= best * (1.0 - tolerance) - 1e-12)


def nprobe_cap(index: Any, max_scan_bytes: int | None = MAX_SCAN_BYTES) -> int | None:
    """The largest nprobe whose lists hold at most ``max_scan_bytes`` of codes on average (at least 1, at most
    nlist); ``None`` for an index without an inverted file."""
    ivf = _ivf_of(index)
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


def calibrate_nprobe(index: Any, vectors: np.ndarray, *, ids: np.ndarray | None = None, n_queries: int = 1000,
                     k: int = 10, depth: int = DEFAULT_RERANK, tolerance: float = NPROBE_TOLERANCE,
                     max_scan_bytes: int | None = MAX_SCAN_BYTES, seed: int = 0,
                     _sample: _EvalSample | None = None) -> tuple[int, dict[int, float]]:
    """Measure the served recall@k at nprobe 1, 2, 4, ... and set the smallest nprobe within a fraction
    ``tolerance`` of the best.

    The nprobe values tried stop at :func:`nprobe_cap`: the lists a query scans hold at most ``max_scan_bytes``
    of codes on average, which bounds the latency (on data without neighbourhood structure, such as random
    vectors, recall grows until every list is scanned, and the index would be no faster than a full scan).

    The served recall is what :meth:`Database.search <similar_images.database.Database.search>` returns by
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
    ivf = _ivf_of(index)
    if ivf is None:
        raise ValueError("calibrate_nprobe needs an IVF index")
    if _sample is None:
        ids = np.arange(len(vectors), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        _sample = _eval_sample(vectors, ids, n_queries, k, seed)
    if _sample is None:
        raise ValueError("calibrate_nprobe needs at least 2 vectors and 1 query")
    width = _sample.k * max(1, depth)
    recalls: dict[int, float] = {}
    cap = nprobe_cap(index, max_scan_bytes) or ivf.nlist
    for nprobe in nprobe_steps(cap):
        ivf.nprobe = nprobe
        recalls[nprobe] = recall_within(_sample.search(index, width), _sample.truth, _sample.k)
        if recall_stalled(list(recalls.values()), 0.002):
            break
    chosen = choose_nprobe(recalls, tolerance)
    ivf.nprobe = chosen
    logger.info("nprobe calibration (served recall@%d): %s -> nprobe %d%s", _sample.k,
                ", ".join(f"{p}: {r:.3f}" for p, r in recalls.items()), chosen,
                f" (at most {cap} of {ivf.nlist} lists: the scan budget)" if cap < ivf.nlist else "")
    return chosen, recalls


def index_nbytes(index: Any) -> int:
    """Size of the serialised index in bytes (what it occupies on disk and, roughly, in memory)."""
    return int(_faiss().serialize_index(index).size)


def build_index(vectors: np.ndarray, config: IndexConfig | None = None,
                ids: np.ndarray | None = None) -> tuple[Any, BuildReport]:
    """Train an index on a sample of ``vectors``, add them all, and measure it.

    Args:
        vectors: ``(n, d)`` L2-normalised float32 vectors (a memmap is fine).
        config: Index settings.
        ids: Id of each vector (default: ``0 .. n-1``).

    Returns:
        ``(index, report)``; search defaults are already applied to the index.

    Raises:
        IndexTrainingError: If there are too few vectors to train the index.
    """
    config = config or IndexConfig()
    n, d = vectors.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    factory = config.factory or default_factory(n, d)
    t_start = time.perf_counter()
    index = make_index(factory, d)
    need = min_training_vectors(index)
    n_train = min(n, config.train_size or 100_000)
    if need > n_train:
        raise IndexTrainingError(
            f"Index {factory!r} needs at least {need:,} training vectors, but only {n_train:,} are available"
            f"{' (raise --train-size)' if n_train < n else ''}. Use a smaller index (for example "
            f"'IVF{max(1, int(math.sqrt(n) // 2))},Flat', or 'Flat' for exact search), or add more images."
        )
    train_seconds = 0.0
    if not index.is_trained:
        _quiet_clustering(index)
        if n_train < 39 * need:
            logger.warning("Training %s on %d vectors; Faiss recommends at least %d (39 per centroid)",
                           factory, n_train, 39 * need)
        rows = _sample_rows(n, n_train, config.seed)
        xt = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        logger.info("Training %s on %d of %d vectors", factory, len(xt), n)
        t0 = time.perf_counter()
        try:
            index.train(xt)
        except RuntimeError as exc:
            raise IndexTrainingError(f"Training {factory!r} failed: {str(exc).splitlines()[-1]}") from exc
        train_seconds = time.perf_counter() - t0
    else:
        n_train = 0
    t0 = time.perf_counter()
    add_vectors(index, vectors, ids, config.add_batch_size)
    add_seconds = time.perf_counter() - t0
    params = default_search_params(index)
    overrides = {"nprobe": config.nprobe, "efSearch": config.ef_search, "k_factor": config.k_factor}
    params.update({k: v for k, v in overrides.items() if v is not None})
    params = set_search_params(index, params)
    build_seconds = time.perf_counter() - t_start
    sample = _eval_sample(vectors, ids, config.eval_queries, 10, config.seed + 1)
    recall = served = float("nan")
    nprobe_recalls = None
    if sample is not None:
        if "nprobe" in params and config.nprobe is None:
            params["nprobe"], measured = calibrate_nprobe(index, vectors, _sample=sample)
            nprobe_recalls = {str(p): round(r, 4) for p, r in measured.items()}
        found = sample.search(index, sample.k * DEFAULT_RERANK)  # the top k alone, and the candidates served
        recall = recall_at_k(found, sample.truth, sample.k)
        served = recall_within(found, sample.truth, sample.k)

    def _round(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    report = BuildReport(
        factory=factory, n_vectors=n, n_train=n_train, train_seconds=round(train_seconds, 3),
        add_seconds=round(add_seconds, 3), build_seconds=round(build_seconds, 3), index_bytes=index_nbytes(index),
        recall_at_10=_round(recall), n_eval_queries=0 if sample is None else len(sample.queries),
        search_params=params, recall_at_10_served=_round(served), nprobe_recalls=nprobe_recalls,
    )
    logger.info("Built %s: recall@10 %.3f, %d bytes, %.1f s", factory, recall, report.index_bytes, build_seconds)
    return index, report


def write_index(index: Any, path: str | Path) -> None:
    """Atomically write a Faiss index."""
    faiss = _faiss()
    with _io.atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_index(path: str | Path, *, mmap: bool = False) -> Any:
    """Read a Faiss index (optionally memory-mapped, for indexes that support it)."""
    faiss = _faiss()
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    return faiss.read_index(str(path), flags)
