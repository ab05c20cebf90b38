"""Training, filling and measuring an index: :func:`build_index`.

The index is trained on a sample of the vectors, filled with all of them
(with their ids), and measured against exact search: recall@10 of the index
alone and as searches serve it (candidates re-ranked exactly), with database
vectors as queries, each removed from its own results. Unless ``nprobe`` is
given, an IVF index's nprobe is calibrated (:func:`~.calibrate.calibrate_nprobe`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError, IndexTrainingError
from .bands import ScoreBands, neighbour_percentiles
from .calibrate import calibrate_nprobe
from .factory import default_factory, make_index, min_training_vectors
from .io import index_nbytes
from .params import default_search_params, set_search_params, unwrap
from .recall import eval_sample, recall_at_k, recall_within, sample_rows
from .rerank import DEFAULT_RERANK
from .types import FaissIndex

__all__ = ["IndexConfig", "BuildReport", "build_index", "add_vectors", "train_index", "finish_index",
           "quiet_clustering"]

logger = logging.getLogger(__name__)


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
                raise ConfigError(f"{name} must be a positive integer, got {value}")
        if self.eval_queries < 0:
            raise ConfigError(f"eval_queries must be >= 0, got {self.eval_queries}")
        if self.factory is not None and not self.factory.strip():
            raise ConfigError("The index description is empty; give a Faiss index_factory string such as 'Flat', "
                              "'IVF256,PQ16' or 'HNSW32', or leave it out for the default")


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
        neighbour_similarity: Percentiles of the exact similarity of each sampled vector to its nearest
            other vector (:func:`~.bands.neighbour_percentiles`; ``None`` without a sample).
        score_bands: The score bands those percentiles give (:class:`~.bands.ScoreBands` as a dict).
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
    neighbour_similarity: dict[str, float] | None = None
    score_bands: dict[str, object] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def quiet_clustering(index: FaissIndex) -> None:
    """Silence Faiss' per-quantizer "please provide at least N training points" lines on stderr
    (one warning through ``logging`` replaces them)."""
    for sub in unwrap(index):
        for cp in (getattr(sub, "cp", None), getattr(getattr(sub, "pq", None), "cp", None)):
            if cp is not None and hasattr(cp, "min_points_per_centroid"):
                cp.min_points_per_centroid = 1


def add_vectors(index: FaissIndex, vectors: np.ndarray, ids: np.ndarray, batch_size: int = 65_536) -> None:
    """Add vectors with explicit int64 ids, in batches (``vectors`` may be a memmap)."""
    for start in range(0, len(ids), batch_size):
        stop = min(start + batch_size, len(ids))
        xb = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
        index.add_with_ids(xb, np.ascontiguousarray(ids[start:stop], dtype=np.int64))


def train_index(vectors: np.ndarray, factory: str, *, train_size: int | None = None,
                seed: int = 1234) -> tuple[FaissIndex, int, float]:
    """An empty index of type ``factory``, trained on a random sample of ``vectors``.

    Args:
        vectors: ``(n, d)`` L2-normalised float32 vectors (a memmap is fine).
        factory: A Faiss ``index_factory`` string.
        train_size: Vectors sampled for training (default: all, at most 100,000).
        seed: Seed of the sample.

    Returns:
        ``(index, vectors trained on (0 when the index needs no training), seconds)``.

    Raises:
        IndexTrainingError: If there are too few vectors to train the index, or Faiss refuses the description.
    """
    n, d = vectors.shape
    index = make_index(factory, d)
    need = min_training_vectors(index)
    n_train = min(n, train_size or 100_000)
    if need > n_train:
        smaller = f"IVF{max(1, int(math.sqrt(n) // 2))},Flat"
        raise IndexTrainingError(
            f"Index {factory!r} needs at least {need:,} training vectors, but only {n_train:,} are available",
            hint=(f"Raise train_size to {need:,} or more." if n_train < n else
                  f"Use a smaller index (for example {smaller!r}, or 'Flat' for exact search), or add more images."),
            setting="train_size" if n_train < n else "factory", value=n_train if n_train < n else factory,
            expected=need if n_train < n else (smaller, "Flat"),
        )
    if index.is_trained:
        return index, 0, 0.0
    quiet_clustering(index)
    if n_train < 39 * need:
        logger.warning("Training %s on %d vectors; Faiss recommends at least %d (39 per centroid)",
                       factory, n_train, 39 * need)
    rows = sample_rows(n, n_train, seed)
    xt = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    logger.info("Training %s on %d of %d vectors", factory, len(xt), n)
    t0 = time.perf_counter()
    try:
        index.train(xt)
    except RuntimeError as exc:
        raise IndexTrainingError(f"Training {factory!r} failed: {str(exc).splitlines()[-1]}") from exc
    return index, n_train, time.perf_counter() - t0


def build_index(vectors: np.ndarray, config: IndexConfig | None = None,
                ids: np.ndarray | None = None) -> tuple[FaissIndex, BuildReport]:
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
    factory = config.factory if config.factory is not None else default_factory(n, d)
    t_start = time.perf_counter()
    index, n_train, train_seconds = train_index(vectors, factory, train_size=config.train_size, seed=config.seed)
    t0 = time.perf_counter()
    add_vectors(index, vectors, ids, config.add_batch_size)
    add_seconds = time.perf_counter() - t0
    report = finish_index(index, vectors, ids, config, factory=factory, n_train=n_train,
                          train_seconds=train_seconds, add_seconds=add_seconds, t_start=t_start)
    logger.info("Built %s: recall@10 %s, %d bytes, %.1f s", factory, report.recall_at_10, report.index_bytes,
                report.build_seconds)
    return index, report


def finish_index(index: FaissIndex, vectors: np.ndarray, ids: np.ndarray, config: IndexConfig, *, factory: str,
                 n_train: int, train_seconds: float, add_seconds: float, t_start: float) -> BuildReport:
    """Set the search defaults of a filled index, calibrate its nprobe and measure its recall.

    The last step of :func:`build_index`, and of builds that fill the index elsewhere (in parts, on a cluster:
    :mod:`.distributed`).

    Args:
        index: The trained, filled index.
        vectors: The vectors in it (rows in ``ids`` order).
        ids: Their ids.
        config: The settings (search parameters given are kept; nprobe is calibrated when not given).
        factory, n_train, train_seconds, add_seconds, t_start: For the report.
    """
    ids = np.asarray(ids, dtype=np.int64)
    params = default_search_params(index)
    overrides = {"nprobe": config.nprobe, "efSearch": config.ef_search, "k_factor": config.k_factor}
    params.update({k: v for k, v in overrides.items() if v is not None})
    params = set_search_params(index, params)
    build_seconds = time.perf_counter() - t_start
    sample = eval_sample(vectors, ids, config.eval_queries, 10, config.seed + 1)
    recall = served = float("nan")
    nprobe_recalls = None
    neighbours: dict[str, float] | None = None
    bands: dict[str, object] | None = None
    if sample is not None and sample.truth_scores is not None:
        neighbours = neighbour_percentiles(sample.truth_scores[:, 0]) or None
        bands = ScoreBands.from_percentiles(neighbours).to_dict() if neighbours else None
    if sample is not None:
        if "nprobe" in params and config.nprobe is None:
            params["nprobe"], measured = calibrate_nprobe(index, vectors, sample=sample)
            nprobe_recalls = {str(p): round(r, 4) for p, r in measured.items()}
        found = sample.search(index, sample.k * DEFAULT_RERANK)  # the top k alone, and the candidates served
        recall = recall_at_k(found, sample.truth, sample.k)
        served = recall_within(found, sample.truth, sample.k)

    def _round(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    return BuildReport(
        factory=factory, n_vectors=len(ids), n_train=n_train, train_seconds=round(train_seconds, 3),
        add_seconds=round(add_seconds, 3), build_seconds=round(build_seconds, 3), index_bytes=index_nbytes(index),
        recall_at_10=_round(recall), n_eval_queries=0 if sample is None else len(sample.queries),
        search_params=params, recall_at_10_served=_round(served), nprobe_recalls=nprobe_recalls,
        neighbour_similarity=neighbours, score_bands=bands,
    )
