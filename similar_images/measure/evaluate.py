"""Measuring a database: recall of its index, search latency, size, and retrieval quality.

Two kinds of measurement live here:

* **Index fidelity** -- how many of the exact (brute-force) top-k neighbours
  the approximate index returns (recall@k), how fast it answers (median and
  99th percentile of single-query latency, and the per-query cost of a batch),
  and how many bytes it occupies. Both for the index alone and as the
  database's search serves results by default ("served": ``k * rerank`` index
  candidates re-ranked exactly with the stored vectors, see
  :func:`similar_images.search.search_vectors`).
* **Retrieval quality** -- when the images carry class labels (class
  sub-folders, or a CSV of ``path,label``), how many of the top-k results of a
  labeled image share its label (precision@k) and the mean average precision
  (mAP@k), each labeled image being a leave-one-out query.

Queries. Unless a query set is given, ``n`` database vectors are sampled as
queries and **each query's own id is removed from both result lists** (the
index is asked for ``k + 1`` results and the query's id dropped, the exact
ground truth likewise). This measures exactly the index the database serves,
without rebuilding it. Because Faiss compares an uncompressed query with the
compressed database vectors (asymmetric distances), the only optimism left is
that the query vectors were part of the index's training sample; a query set
of unseen images (``queries=``) removes even that.

Average precision at k of one query, with ``rel_i`` = 1 when result ``i`` has
the query's label and ``R`` = the number of other items with that label::

    AP@k = sum_{i<=k} P@i * rel_i / min(k, R)

Queries whose label no other item has (``R = 0``) are skipped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..embed import item_kind, l2_normalize
from ..errors import ConfigError, QueryError, SourceNotFoundError
from ..index import (
    DEFAULT_RERANK,
    RerankedSearch,
    drop_self,
    exact_search,
    faiss_threads,
    index_nbytes,
    recall_table,
)
from ..search import search_vectors
from ..sources.images import collect_inputs
from .quality import QualityReport, resolve_labels, retrieval_quality

if TYPE_CHECKING:
    from ..store import Database

__all__ = [
    "EvalConfig",
    "LatencyStats",
    "EvaluationReport",
    "measure_latency",
    "load_query_vectors",
    "sample_query_ids",
    "evaluate_database",
]

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Settings of :func:`evaluate_database`.

    Attributes:
        ks: Cut-offs at which recall is reported.
        n_queries: Database vectors sampled as queries (each excluded from its own results)
            when no query set is given.
        latency_queries: Queries timed one by one for the single-query latency.
        latency_k: Results asked per query when timing.
        quality_k: Cut-off of precision@k and mAP@k.
        quality_queries: Labeled items used as leave-one-out queries (default: all).
        threads: Faiss threads while timing (1 gives per-core figures that other machines can compare).
        rerank: Depth of the exact re-ranking of the "served" figures (``k * rerank`` index candidates
            re-scored with the stored vectors, as :func:`similar_images.search.search_vectors` does);
            ``None``: the search's default; 0 or 1: measure the index alone only.
        seed: Seed of the query samples.
    """

    ks: tuple[int, ...] = (1, 10, 100)
    n_queries: int = 1000
    latency_queries: int = 200
    latency_k: int = 10
    quality_k: int = 10
    quality_queries: int | None = None
    threads: int | None = 1
    rerank: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rerank is not None and self.rerank < 0:
            raise ConfigError(f"rerank must be >= 0, got {self.rerank}")
        self.ks = tuple(sorted({int(k) for k in self.ks}))
        if not self.ks or self.ks[0] < 1:
            raise ConfigError(f"ks must be positive integers, got {self.ks}")
        for name in ("n_queries", "latency_queries", "latency_k", "quality_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.quality_queries is not None and self.quality_queries < 1:
            raise ConfigError(f"quality_queries must be a positive integer, got {self.quality_queries}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be a positive integer, got {self.threads}")


@dataclass
class LatencyStats:
    """Search latency in milliseconds.

    Attributes:
        median_ms: Median time of one single-query call.
        p99_ms: 99th percentile of the single-query calls.
        batch_ms_per_query: Time of one call with all queries, divided by their number.
        n_single: Number of single-query calls timed.
        batch_size: Queries in the batched call.
        threads: Faiss threads used (``None``: Faiss' default).
    """

    median_ms: float
    p99_ms: float
    batch_ms_per_query: float
    n_single: int
    batch_size: int
    threads: int | None

    def to_dict(self) -> dict[str, object]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class EvaluationReport:
    """Everything :func:`evaluate_database` measured."""

    database: str
    n_items: int
    dim: int
    factory: str | None
    search_params: dict[str, int]
    index_bytes: int | None
    vectors_bytes: int
    queries: str
    n_queries: int
    recall: dict[int, float]
    latency: LatencyStats | None
    exact_latency: LatencyStats | None
    quality: list[QualityReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rerank: int = 1
    recall_served: dict[int, float] = field(default_factory=dict)
    latency_served: LatencyStats | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "database": self.database,
            "n_items": self.n_items,
            "dim": self.dim,
            "factory": self.factory,
            "search_params": self.search_params,
            "index_bytes": self.index_bytes,
            "vectors_bytes": self.vectors_bytes,
            "queries": self.queries,
            "n_queries": self.n_queries,
            "recall": {f"recall@{k}": round(v, 4) for k, v in self.recall.items()},
            "latency": self.latency.to_dict() if self.latency else None,
            "rerank": self.rerank,
            "recall_served": {f"recall@{k}": round(v, 4) for k, v in self.recall_served.items()},
            "latency_served": self.latency_served.to_dict() if self.latency_served else None,
            "exact_latency": self.exact_latency.to_dict() if self.exact_latency else None,
            "quality": [q.to_dict() for q in self.quality],
            "notes": self.notes,
        }

    def format_table(self) -> str:
        """A plain-text report for terminals."""
        lines = [f"Database {self.database}: {self.n_items:,} items, {self.dim}-d"]
        if self.factory is None:
            lines.append("  no index (searches are exact); build one to measure it")
        else:
            params = ", ".join(f"{k}={v}" for k, v in self.search_params.items()) or "none"
            lines.append(f"  index {self.factory} (search params: {params})")
            index_bytes = self.index_bytes or 0  # measured whenever there is an index
            lines.append(f"  index size {index_bytes:,} bytes = {index_bytes / self.vectors_bytes:.3f} x the "
                         f"raw vectors ({self.vectors_bytes:,} bytes)" if self.vectors_bytes else
                         f"  index size {index_bytes:,} bytes")
            lines.append(f"  queries: {self.n_queries} {self.queries}")
            lines.append("")
            srv = bool(self.recall_served)
            lines.append(f"  {'metric':<26}{'index alone':>12}" + (f"{'served':>12}" if srv else "") + f"{'exact':>12}")
            for k, v in self.recall.items():
                mid = f"{self.recall_served.get(k, float('nan')):>12.4f}" if srv else ""
                lines.append(f"  {f'recall@{k}':<26}{v:>12.4f}{mid}{1.0:>12.4f}")
            for name, attr in (("latency median (ms)", "median_ms"), ("latency p99 (ms)", "p99_ms"),
                               ("batched (ms/query)", "batch_ms_per_query")):
                a = getattr(self.latency, attr) if self.latency else float("nan")
                m = getattr(self.latency_served, attr) if self.latency_served else float("nan")
                b = getattr(self.exact_latency, attr) if self.exact_latency else float("nan")
                lines.append(f"  {name:<26}{a:>12.4f}" + (f"{m:>12.4f}" if srv else "") + f"{b:>12.4f}")
            if self.latency:
                th = self.latency.threads
                lines.append(f"  (timed with {th if th else 'default'} Faiss thread(s), "
                             f"{self.latency.n_single} single queries, batches of {self.latency.batch_size})")
            if srv:
                lines.append(f"  (served = as 'search' returns results by default: k x {self.rerank} index candidates "
                             "re-ranked with the stored vectors, read from vectors.f32)")
        for q in self.quality:
            lines.append("")
            lines.append(f"  Retrieval quality ({q.search} search, labels from {q.labels_source}): "
                         f"{q.n_queries} leave-one-out queries, {q.n_classes} classes")
            lines.append(f"  {'class':<20}{'queries':>9}{f'P@{q.k}':>9}{f'mAP@{q.k}':>9}")
            for c in q.per_class:
                lines.append(f"  {c.label[:20]:<20}{c.n_queries:>9}{c.precision:>9.4f}{c.map:>9.4f}")
            lines.append(f"  {'all':<20}{q.n_queries:>9}{q.precision:>9.4f}{q.map:>9.4f}   (chance {q.chance:.3f})")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
def measure_latency(search: Callable[[np.ndarray, int], object], queries: np.ndarray, k: int, *,
                    n_single: int = 200, threads: int | None = 1, warmup: int = 3) -> LatencyStats:
    """Time a search function on single queries and on one batch.

    Args:
        search: Called as ``search(xq, k)`` (e.g. a Faiss index's ``search``).
        queries: ``(q, d)`` float32 query vectors.
        k: Results per query.
        n_single: Queries timed one at a time (the first ``n_single`` rows).
        threads: Faiss threads while timing (``None``: leave as is).
        warmup: Untimed single calls first (caches, lazy allocations).
    """
    xq = np.ascontiguousarray(queries, dtype=np.float32)
    if len(xq) == 0:
        raise ValueError("measure_latency needs at least one query")
    singles = xq[: max(1, min(n_single, len(xq)))]
    times: list[float] = []
    with faiss_threads(threads):
        for i in range(min(warmup, len(singles))):
            search(singles[i:i + 1], k)
        for i in range(len(singles)):
            q = singles[i:i + 1]
            t0 = time.perf_counter()
            search(q, k)
            times.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        search(xq, k)
        batch = (time.perf_counter() - t0) * 1e3 / len(xq)
    arr = np.asarray(times)
    return LatencyStats(median_ms=float(np.median(arr)), p99_ms=float(np.percentile(arr, 99)),
                        batch_ms_per_query=float(batch), n_single=len(arr), batch_size=len(xq), threads=threads)


# --------------------------------------------------------------------------- queries
def sample_query_ids(live_ids: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A sorted random sample of ``n`` ids (all of them when there are fewer)."""
    live_ids = np.asarray(live_ids, dtype=np.int64)
    if n >= len(live_ids):
        return live_ids.copy()
    return np.sort(np.random.default_rng(seed).choice(live_ids, size=n, replace=False))


def load_query_vectors(db: Database, source: str | os.PathLike[str]) -> np.ndarray:
    """Query vectors from a ``.npy`` file of shape ``(n, dim)``, or images (a folder or a file list) embedded
    with the database's model.

    Returns:
        ``(n, dim)`` L2-normalised float32 vectors.

    Raises:
        FileNotFoundError: If ``source`` does not exist.
        QueryError: If the vectors do not match the database.
    """
    src = Path(source).expanduser()
    if not src.exists():
        raise SourceNotFoundError(f"No such query set: {src} (give a folder of images, a file list or a .npy file)")
    if src.suffix.lower() == ".npy":
        try:
            arr = np.load(src, allow_pickle=False)
        except ValueError as exc:
            raise QueryError(f"{src} is not a plain numpy array file: {exc}") from exc
        if arr.ndim != 2 or arr.shape[1] != db.dim or arr.dtype.kind != "f":
            raise QueryError(f"{src} holds an array of shape {arr.shape} ({arr.dtype}); expected float (n, {db.dim})")
        if len(arr) == 0 or not np.isfinite(arr).all() or (np.linalg.norm(arr, axis=1) == 0).any():
            raise QueryError(f"{src} holds no vectors, or zero or non-finite ones")
        return l2_normalize(arr)
    if not item_kind(db.kind).files:
        raise QueryError(f"A {db.kind} database takes a .npy file of query vectors")
    paths = collect_inputs(src)
    logger.info("Embedding %d query images with %s", len(paths), db.model_name)
    return db.embedder.embed(paths)


# --------------------------------------------------------------------------- the evaluation
def _exact_fn(db: Database) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    removed = db.removed if db.removed.any() else None

    def run(xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(db.vectors, xq, k, exclude=removed)

    return run


def _index_fn(db: Database, rerank: int) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """The database's search through its index: alone (``rerank`` 1) or with the exact re-ranking."""
    def run(xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids, _ = search_vectors(db, xq, k, rerank=rerank)
        return scores, ids

    return run


def _served_fn(db: Database, rerank: int, extra: int) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """The search's default path, for queries that may be database items: ``k * rerank`` index candidates
    (plus ``extra`` for the query itself, which is dropped afterwards) re-ranked with the stored vectors."""
    return RerankedSearch(_index_fn(db, 1), db.vectors, depth=rerank, extra=extra, ntotal=10**9)


def evaluate_database(db: Database, config: EvalConfig | None = None, *,
                      queries: str | os.PathLike[str] | np.ndarray | None = None,
                      labels: str | os.PathLike[str] | None = "auto") -> EvaluationReport:
    """Measure a database's index against exact search, and its retrieval quality when labels exist.

    Args:
        db: An open database.
        config: Measurement settings.
        queries: A query set (``.npy`` file, image folder, file list, or an array); default: sampled
            database vectors, each excluded from its own results.
        labels: ``"auto"`` (class sub-folders, when there are some), ``"folders"``, a CSV of
            ``path,label``, or ``None``/``"none"``.

    Returns:
        The :class:`EvaluationReport`.

    Raises:
        ValueError: If the database is empty or the inputs are invalid.
    """
    config = config or EvalConfig()
    live = db.live_ids()
    if len(live) < 2:
        raise ConfigError(f"{db.path} holds {len(live)} searchable item(s); evaluation needs at least 2")
    notes: list[str] = []
    if queries is None:
        qids = sample_query_ids(live, config.n_queries, config.seed)
        xq = np.ascontiguousarray(db.vectors[qids], dtype=np.float32)
        qdesc = "database vectors, each excluded from its own results"
        self_ids = qids
    else:
        if isinstance(queries, np.ndarray):
            if queries.ndim != 2 or queries.shape[1] != db.dim:
                raise QueryError(f"Query array of shape {queries.shape} does not match the database ({db.dim}-d)")
            xq, qdesc = l2_normalize(queries), "given query vectors"
        else:
            xq, qdesc = load_query_vectors(db, queries), f"from {queries}"
        self_ids = np.full(len(xq), -1, dtype=np.int64)
    extra = 1 if queries is None else 0
    kmax = min(max(config.ks), len(live) - extra)
    ks = [k for k in config.ks if k <= kmax]
    if len(ks) < len(config.ks):
        notes.append(f"recall@k for k > {kmax} left out: the database holds only {len(live)} items")
    exact = _exact_fn(db)
    recall: dict[int, float] = {}
    recall_served: dict[int, float] = {}
    rerank = DEFAULT_RERANK if config.rerank is None else max(1, config.rerank)
    latency = exact_latency = latency_served = None
    index_bytes = None
    factory = None
    params: dict[str, int] = {}
    vectors_bytes = int(len(db.items) * db.dim * 4)
    if db.index is not None and db.manifest.index is not None:
        factory, params = db.manifest.index.factory, db.search_defaults
        index_bytes = index_nbytes(db.index)
        _, truth = exact(xq, kmax + extra)
        truth, _ = drop_self(truth, self_ids, kmax)
        # one search per k: a top-100 search's first 10 results are not always a top-10 search's (HNSW's
        # search depth grows with k; the re-ranking's candidates are k x rerank)
        modes = [(recall, _index_fn(db, 1))] + ([(recall_served, _served_fn(db, rerank, extra))] if rerank > 1 else [])
        for table, fn in modes:
            for k in ks:
                with faiss_threads(config.threads):
                    _, found = fn(xq, k + extra)
                found, _ = drop_self(found, self_ids, k)
                table.update(recall_table(found, truth[:, :k], [k]))
        lk = min(config.latency_k, len(live))
        latency = measure_latency(db.index.search, xq, lk, n_single=config.latency_queries, threads=config.threads)
        if rerank > 1:
            latency_served = measure_latency(_index_fn(db, rerank), xq, lk, n_single=config.latency_queries,
                                             threads=config.threads)
        exact_latency = measure_latency(exact, xq, lk, n_single=config.latency_queries, threads=config.threads)
        if len(db.filtered_ids):
            notes.append("the index still holds removed items (filtered at search time); latency includes them")
    else:
        notes.append("no index: recall and latency need one (build the index)")
    quality: list[QualityReport] = []
    resolved = resolve_labels(db, labels, notes=notes)
    if resolved is not None:
        codes, names, source = resolved
        live_mask = ~db.removed
        qids_l = np.flatnonzero(live_mask & (codes >= 0))
        if config.quality_queries is not None:
            qids_l = sample_query_ids(qids_l, config.quality_queries, config.seed + 1)
        kq = min(config.quality_k, len(live) - 1)
        xl = np.ascontiguousarray(db.vectors[qids_l], dtype=np.float32)
        searches: list[tuple[str, Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]]] = [("exact", exact)]
        if db.index is not None:
            searches.append(("served", _served_fn(db, rerank, 1)) if rerank > 1 else ("index", _index_fn(db, 1)))
        for name, fn in searches:
            with faiss_threads(config.threads):
                _, ids = fn(xl, kq + 1)
            ids, _ = drop_self(ids, qids_l, kq)
            quality.append(retrieval_quality(ids, qids_l, codes, names, kq, live=live_mask, search=name,
                                             labels_source=source))
    return EvaluationReport(
        database=str(db.path), n_items=len(live), dim=db.dim, factory=factory, search_params=params,
        index_bytes=index_bytes, vectors_bytes=vectors_bytes, queries=qdesc, n_queries=len(xq), recall=recall,
        latency=latency, exact_latency=exact_latency, quality=quality, notes=notes, rerank=rerank,
        recall_served=recall_served, latency_served=latency_served,
    )
