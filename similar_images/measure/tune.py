"""Choosing an index from measurements on the database's own vectors.

:func:`tune_vectors` (or :func:`tune_database`) builds a sweep of Faiss
indexes -- exact ``Flat``; ``IVF,Flat``; ``IVF,PQ`` with several code sizes;
OPQ and PCA transforms before PQ; ``HNSW``; scalar quantization (SQ8, SQ6, SQ4),
also after a Hadamard rotation (``HR``);
re-ranking of PQ candidates with exact distances (``RFlat``) or with SQ8 codes
(``Refine(SQ8)``) -- and sweeps each one's search-time parameters (``nprobe``,
``efSearch``, ``k_factor``). For every setting it measures:

* **recall@k** against exact search, with sampled database vectors as queries,
  each excluded from its own results (see :mod:`similar_images.measure.evaluate`);
* **latency**: median and p99 of single-query calls and the per-query cost of a
  batch, with one Faiss thread by default (comparable per-core figures);
* **memory**: the serialised size of the index (:func:`~similar_images.index.index_nbytes`),
  which is every byte its search needs: codes, ids (8 bytes per vector), coarse
  centroids, PQ codebooks, OPQ/PCA matrices, HNSW links, and for ``RFlat`` the
  full float vectors it re-ranks with (they are inside the index). The
  database's ``vectors.f32`` is not counted: index searches never read it;
* **build time**: training plus adding all vectors.

It then picks the smallest index (in memory) that reaches the target recall,
and reports the best recall reachable within fractions (1/4, 1/8) of the exact
``Flat`` index's memory. :func:`apply_choice` builds the pick into the
database with its search parameters saved as the defaults.

A search-parameter sweep stops early once recall reaches 1 or stops growing
(two steps in a row adding less than 0.001), since more effort only costs time.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, IndexTrainingError
from ..index import (
    DEFAULT_RERANK,
    BuildReport,
    IndexConfig,
    RerankedSearch,
    build_index,
    default_factory,
    drop_self,
    exact_search,
    faiss_threads,
    fallback_nprobe,
    index_nbytes,
    nprobe_cap,
    nprobe_steps,
    original_factory,
    recall_at_k,
    recall_stalled,
    set_search_params,
)
from .evaluate import measure_latency, sample_query_ids
from .tune_report import ORIGINAL_NPROBE, TunePoint, TuneReport, pareto_points, pick_point

if TYPE_CHECKING:
    from ..store import Database

__all__ = [
    "TuneConfig",
    "Candidate",
    "TunePoint",
    "TuneReport",
    "default_candidates",
    "candidate_for",
    "tune_vectors",
    "tune_database",
    "pick_point",
    "pareto_points",
    "apply_choice",
]

logger = logging.getLogger(__name__)

@dataclass
class TuneConfig:
    """Settings of the tuning sweep.

    Attributes:
        target_recall: Recall@k the pick must reach.
        k: The k of recall@k.
        n_queries: Database vectors used as queries (each excluded from its own results).
        latency_queries: Queries timed one at a time per setting.
        factories: Index descriptions to try instead of :func:`default_candidates` (``Flat``
            is always added, as the reference for memory).
        train_size: Training sample of every index (default: as ``build-index``).
        threads: Faiss threads while searching and timing (builds use Faiss' default).
        max_latency_ms: If set, the pick must also answer a single query within this median time.
        memory_fractions: Memory budgets, as fractions of ``Flat``, for which the best recall is reported.
        rerank: Depth of the exact re-ranking that :meth:`Database.search <similar_images.database.Database.search>`
            applies by default (``k * rerank`` index candidates re-scored with the stored vectors); every
            setting is also measured that way ("served"). 0 or 1 skips it.
        served: Pick by the served recall and latency instead of the index's own.
        seed: Seed of the query sample.
    """

    target_recall: float = 0.95
    k: int = 10
    n_queries: int = 500
    latency_queries: int = 100
    factories: Sequence[str] | None = None
    train_size: int | None = None
    threads: int | None = 1
    max_latency_ms: float | None = None
    memory_fractions: tuple[float, ...] = (0.25, 0.125)
    rerank: int = DEFAULT_RERANK
    served: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rerank < 0:
            raise ConfigError(f"rerank must be >= 0, got {self.rerank}")
        if self.served and self.rerank < 2:
            raise ConfigError("served=True needs rerank >= 2 (the depth of the search's exact re-ranking)")
        if not 0.0 < self.target_recall <= 1.0:
            raise ConfigError(f"target_recall must be in (0, 1], got {self.target_recall}")
        for name in ("k", "n_queries", "latency_queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be a positive integer, got {self.threads}")
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise ConfigError(f"max_latency_ms must be positive, got {self.max_latency_ms}")
        if self.factories is not None:
            self.factories = [f.strip() for f in self.factories if f and f.strip()]
            if not self.factories:
                raise ConfigError("factories is empty; give index descriptions such as 'IVF64,PQ16' or leave it unset")


@dataclass
class Candidate:
    """One index to build, and the search-parameter settings to try on it.

    Attributes:
        factory: The Faiss ``index_factory`` string.
        family: A short group name for tables and plots.
        chains: Lists of parameter settings, each ordered from least to most search effort
            (a chain stops early once recall stops growing).
        min_effort: A chain never stops before these values: the original nprobe 4 and build-index's
            unmeasured default ``min(nlist, max(16, ceil(nlist / 8)))``, efSearch 64, so those settings are
            always measured.
    """

    factory: str
    family: str
    chains: list[list[dict[str, int]]] = field(default_factory=lambda: [[{}]])
    min_effort: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- the sweep
def _nprobes(nlist: int) -> list[int]:
    values = {v for v in nprobe_steps(nlist) if v <= 1024 or v == nlist}
    values |= {fallback_nprobe(nlist), min(ORIGINAL_NPROBE, nlist)}
    return sorted(values)


EF_SEARCH = (16, 32, 64, 128, 256, 512)
K_FACTORS = (1, 2, 4, 8, 16)


def _nlist_of(factory: str) -> int | None:
    for part in factory.split(","):
        if part.startswith("IVF"):
            digits = "".join(ch for ch in part[3:] if ch.isdigit())
            return int(digits) if digits else None
    return None


def _family(factory: str) -> str:
    f = factory.upper()
    parts = f.split(",")
    if "RFLAT" in parts or "REFINE(FLAT)" in parts:
        return "PQ + exact re-rank"
    if any(p.startswith("REFINE") for p in parts):
        return "PQ + SQ8 re-rank"
    if parts[0].startswith("OPQ"):
        return "OPQ + PQ"
    if parts[0].startswith("PCA"):
        return "PCA + " + ("PQ" if "PQ" in f else "SQ")
    if parts[0].startswith("RR"):
        return "rotation + SQ" if "SQ" in f else "rotation + PQ"
    if parts[0].startswith("HR"):
        return "Hadamard + SQ" if "SQ" in f else "Hadamard + PQ"
    if "HNSW" in f:
        return "HNSW" + (" SQ" if "SQ" in f else "")
    if "PQ" in f:
        return "IVF-PQ" if "IVF" in f else "PQ"
    if "SQ" in f:
        return "IVF-SQ" if "IVF" in f else "SQ"
    if f == "FLAT":
        return "Flat (exact)"
    if "IVF" in f:
        return "IVF-Flat"
    return "other"


def candidate_for(factory: str) -> Candidate:
    """The parameter sweep of one index description (nprobe for IVF, efSearch for HNSW, k_factor for refine)."""
    f = factory.upper()
    nlist = _nlist_of(factory)
    refine = "RFLAT" in f.split(",") or "REFINE" in f
    chains: list[list[dict[str, int]]] = []
    for kf in (K_FACTORS if refine else (None,)):
        base = {"k_factor": kf} if kf is not None else {}
        if nlist:
            chains.append([{"nprobe": v, **base} for v in _nprobes(nlist)])
        elif "HNSW" in f:
            chains.append([{"efSearch": v, **base} for v in EF_SEARCH])
        else:
            chains.append([dict(base)])
    min_effort = ({"nprobe": fallback_nprobe(nlist)} if nlist
                  else {"efSearch": 64} if "HNSW" in f else {})
    return Candidate(factory=factory, family=_family(factory), chains=chains, min_effort=min_effort)


def default_candidates(n: int, d: int) -> list[Candidate]:
    """The default sweep for ``n`` vectors of dimension ``d``.

    * exact ``Flat`` (the reference) and ``IVF,Flat``;
    * scalar quantization, 8, 6 and 4 bits per dimension, in an IVF and as an exhaustive scan
      (no coarse centroids: the least fixed overhead, which matters for small databases);
    * the same after a Hadamard rotation (``HR``: seeded sign flips and fast Walsh-Hadamard transforms,
      stored as a seed, not a matrix; ``d`` is padded to the next power of two). CNN features are skewed:
      a few dimensions carry large values, and a per-dimension SQ range wastes its levels on them; the
      rotation spreads every vector's energy evenly over the dimensions first;
    * ``IVF,PQ`` with code sizes from 16 bytes up to ``d / 4`` bytes (at most 256);
    * OPQ (a learned rotation, and reduction to ``8 m`` dimensions) before PQ, for the smallest code
      (OPQ training is the slowest of the sweep; larger codes can be tried with ``factories``);
    * PCA to ``d / 4`` dimensions before PQ. Faiss' PCA subtracts the mean, which changes
      inner-product rankings (a query ranks by ``<q - mean, y>``), so with non-negative CNN features
      it usually loses many neighbours; it is measured to show it;
    * a random rotation before SQ6 (when ``d <= 1024``: the ``d x d`` matrix is part of the memory),
      the stored-matrix counterpart of ``HR``;
    * ``HNSW32`` with full vectors and with SQ8;
    * the original ``IVF,PQ16`` re-ranked with exact distances (``RFlat``, full vectors kept) or with
      SQ8 codes (``Refine(SQ8)``);
    * build-index's default (:func:`~similar_images.index.default_factory`) and the original design
      (:func:`~similar_images.index.original_factory`).

    IVF indexes use ``nlist = round(sqrt(n))`` coarse lists, as the default index does.
    """
    nl = max(1, int(round(math.sqrt(max(n, 1)))))
    ivf = f"IVF{nl}"
    ms = [m for m in (16, 32, 64, 128, 256) if d % m == 0 and m <= d // 4] or \
        [m for m in range(min(16, d), 0, -1) if d % m == 0][:1]
    original = original_factory(n, d)
    names = ["Flat", f"{ivf},Flat", f"{ivf},SQ8", f"{ivf},SQ6", f"{ivf},SQ4", "SQ8", "SQ6",
             "HR,SQ8", "HR,SQ6", "HR,SQ4", f"HR,{ivf},SQ6", "HNSW32", "HNSW32,SQ8", original,
             default_factory(n, d)]
    names += [f"{ivf},PQ{m}" for m in ms]
    d_out = min(d, 8 * ms[0])
    names.append(f"OPQ{ms[0]}_{d_out - d_out % ms[0]},{ivf},PQ{ms[0]}")
    dp = max(8, d // 4)
    mp = next((m for m in (32, 16, 8) if dp % m == 0 and m <= dp // 2), None)
    if mp:
        names.append(f"PCAR{dp},{ivf},PQ{mp}")
    if d <= 1024:
        names.append(f"RR{d},{ivf},SQ6")
    names += [f"{original},RFlat", f"{original},Refine(SQ8)"]
    seen: set[str] = set()
    unique = [x for x in names if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]
    return [candidate_for(x) for x in unique]


def _with_nprobe(chain: list[dict[str, int]], nprobe: int) -> list[dict[str, int]]:
    """``chain`` with a setting at ``nprobe`` added in order (if it has nprobe settings and lacks that one)."""
    if not chain or "nprobe" not in chain[0] or any(p["nprobe"] == nprobe for p in chain):
        return chain
    extra = {**chain[0], "nprobe": nprobe}
    return sorted([*chain, extra], key=lambda p: p["nprobe"])


def _stalled(recalls: list[float]) -> bool:
    return recall_stalled(recalls, 1e-3)


@contextlib.contextmanager
def _quiet_index_warnings() -> Iterator[None]:
    """Mute the index module's per-build warnings ("Faiss recommends at least ... training vectors"), which
    would repeat for every candidate; they are kept when debugging."""
    index_logger = logging.getLogger("similar_images.index.build")
    level = index_logger.level
    if not index_logger.isEnabledFor(logging.DEBUG):
        index_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        index_logger.setLevel(level)


def _short_reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "failed: " in text:  # a Faiss assertion: keep its message, not the C++ location
        text = text.split("failed: ")[0] + "failed: " + text.split("failed: ")[-1]
    text = text.split(". ")[0]
    return text if len(text) <= 160 else text[:157] + "..."


def tune_vectors(vectors: np.ndarray, config: TuneConfig | None = None, *, ids: np.ndarray | None = None,
                 queries: np.ndarray | None = None) -> TuneReport:
    """Build and measure a sweep of indexes over ``vectors``.

    Args:
        vectors: ``(n, d)`` L2-normalised float32 vectors (a memmap is fine).
        config: Sweep settings.
        ids: Id of each row (default: row numbers).
        queries: Query vectors; default: ``config.n_queries`` sampled rows, each excluded from its own results.

    Returns:
        The :class:`TuneReport`.

    Raises:
        ConfigError: If there are too few vectors or the queries do not match.
        IndexTrainingError: If no candidate index could be built.
    """
    config = config or TuneConfig()
    t_start = time.perf_counter()
    n, d = vectors.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if n < 3:
        raise ConfigError(f"Tuning needs at least 3 vectors, got {n}")
    if queries is None:
        rows = sample_query_ids(np.arange(n), config.n_queries, config.seed)
        xq = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        self_ids = ids[rows]
        qdesc = "database vectors, each excluded from its own results"
        extra = 1
    else:
        xq = np.ascontiguousarray(queries, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != d or len(xq) == 0:
            raise ConfigError(f"Queries of shape {xq.shape} do not match {d}-d vectors")
        self_ids = np.full(len(xq), -1, dtype=np.int64)
        qdesc = "given query vectors"
        extra = 0
    k = min(config.k, n - extra)
    with faiss_threads(config.threads):
        _, truth = exact_search(vectors, xq, k + extra, ids=ids)
    truth, _ = drop_self(truth, self_ids, k)
    candidates = ([candidate_for(f) for f in config.factories] if config.factories
                  else default_candidates(n, d))
    if not any(c.factory == "Flat" for c in candidates):
        candidates.insert(0, candidate_for("Flat"))
    candidates.sort(key=lambda c: c.factory != "Flat")  # Flat first: it is the memory reference
    served = config.rerank >= 2
    default, default_cap = default_factory(n, d), None
    points: list[TunePoint] = []
    skipped: list[tuple[str, str]] = []
    flat_bytes = 0
    for cand in candidates:
        logger.info("Building %s", cand.factory)
        try:
            with _quiet_index_warnings():
                index, report = build_index(vectors, IndexConfig(factory=cand.factory, train_size=config.train_size,
                                                                 eval_queries=0, seed=config.seed), ids=ids)
        except (IndexTrainingError, RuntimeError, MemoryError) as exc:
            reason = _short_reason(exc)
            logger.info("Skipping %s: %s", cand.factory, reason)
            skipped.append((cand.factory, reason))
            continue
        mem = index_nbytes(index)
        if cand.factory == "Flat":
            flat_bytes = mem
        if cand.factory == default:
            default_cap = nprobe_cap(index)
            if default_cap is not None:  # measure the nprobe at build-index's scan budget too
                cand.chains = [_with_nprobe(chain, default_cap) for chain in cand.chains]
        for chain in cand.chains:
            recalls: list[float] = []
            recalls_served: list[float] = []
            for params in chain:
                applied = set_search_params(index, params)
                if points and any(p.factory == cand.factory and p.params == applied for p in points):
                    continue  # nprobe clipped to nlist gives a setting already measured
                with faiss_threads(config.threads):
                    _, found = index.search(xq, k + extra)
                found, _ = drop_self(found, self_ids, k)
                recall = float(recall_at_k(found, truth, k))
                lat = measure_latency(index.search, xq, k + extra, n_single=config.latency_queries,
                                      threads=config.threads)
                point = TunePoint(
                    factory=cand.factory, family=cand.family, params=dict(applied), recall=recall,
                    latency_ms=lat.median_ms, p99_ms=lat.p99_ms, batch_ms=lat.batch_ms_per_query, memory_bytes=mem,
                    bytes_per_vector=mem / n, memory_ratio=0.0, build_seconds=report.build_seconds)
                recalls.append(recall)
                if served:
                    search = RerankedSearch(index.search, vectors, ids=ids, depth=config.rerank, extra=extra,
                                            ntotal=index.ntotal)
                    with faiss_threads(config.threads):
                        _, found_s = search(xq, k + extra)
                    found_s, _ = drop_self(found_s, self_ids, k)
                    point.recall_served = float(recall_at_k(found_s, truth, k))
                    point.latency_served_ms = measure_latency(search, xq, k + extra, n_single=config.latency_queries,
                                                              threads=config.threads).median_ms
                    recalls_served.append(point.recall_served)
                points.append(point)
                logger.info("  %s: recall@%d %.4f, %.3f ms%s", point.label, k, recall, lat.median_ms,
                            f"; served {point.recall_served:.4f}, {point.latency_served_ms:.3f} ms"
                            if point.recall_served is not None else "")
                if (_stalled(recalls) and (not served or _stalled(recalls_served))
                        and all(applied.get(name, 0) >= v for name, v in cand.min_effort.items())):
                    break
        del index
    if not points:
        raise IndexTrainingError("No candidate index could be built: " + "; ".join(f"{f}: {r}" for f, r in skipped))
    if not flat_bytes:
        flat_bytes = n * (4 * d + 8)
    for p in points:
        p.memory_ratio = p.memory_bytes / flat_bytes
    for p in pareto_points(points):
        p.pareto = True
    return TuneReport(
        n_vectors=n, dim=d, k=k, n_queries=len(xq), queries=qdesc, target_recall=config.target_recall,
        max_latency_ms=config.max_latency_ms, threads=config.threads, flat_bytes=flat_bytes, points=points,
        skipped=skipped, default_factory=default, tune_seconds=time.perf_counter() - t_start,
        original_factory=original_factory(n, d), default_nprobe_cap=default_cap,
        rerank=config.rerank if config.rerank >= 2 else 1, served=config.served,
        memory_fractions=tuple(config.memory_fractions),
    )


def tune_database(db: Database, config: TuneConfig | None = None, *,
                  queries: np.ndarray | None = None) -> TuneReport:
    """:func:`tune_vectors` on the live (not removed) vectors of a database."""
    live = db.live_ids()
    vectors = db.vectors if len(live) == len(db.items) else np.asarray(db.vectors[live])
    return tune_vectors(vectors, config, ids=live, queries=queries)


def apply_choice(db: Database, point: TunePoint, *, train_size: int | None = None,
                 eval_queries: int = 1000) -> BuildReport:
    """Build ``point``'s index into the database (replacing its index) with its search parameters as defaults."""
    p = point.params
    config = IndexConfig(factory=point.factory, train_size=train_size, nprobe=p.get("nprobe"),
                         ef_search=p.get("efSearch"), k_factor=p.get("k_factor"), eval_queries=eval_queries)
    return db.build_index(config, force=True)
