"""A reader's interim index over a database still being built, trained in the background.

While a build runs, a reader (:mod:`.live`) holds the committed vectors in one growing buffer and searches them
exactly; past a few hundred thousand rows an exact query takes longer than a person waits for. Once a view
holds at least ``at`` rows, :class:`InterimIndex` trains an index over them in a background thread (the
project's default index for that many rows, by an :class:`~similar_images.engines.local.Engine`, the
:class:`~similar_images.engines.local.LocalEngine` unless another is given) and publishes it as an
:class:`~similar_images.index.IndexedPart`; searches go on exactly until then, and afterwards use it for the
rows it holds and exact search for the newer ones (:func:`~similar_images.index.merged_search`).

It is carried from one view of the build to the next like the buffer. When ``at`` more rows have arrived
than it holds, a copy of it gets them added (the inverted lists grow, nothing is retrained; the copy keeps
the index a view is searching unchanged); when the rows have grown :data:`RETRAIN_GROWTH` times since it was
trained, a new one is trained. Nothing is written: the finished build's own index replaces it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import faiss
import numpy as np

from ..engines.local import Engine, LocalEngine
from ..errors import ConfigError, IndexTrainingError
from ..index import IndexConfig, IndexedPart, add_vectors, default_factory, faiss_threads

__all__ = ["INTERIM_INDEX_BYTES", "INTERIM_EVAL_QUERIES", "RETRAIN_GROWTH", "InterimIndex", "default_interim_rows"]

logger = logging.getLogger(__name__)

#: Vector bytes from which an exact single-thread query takes about 50 ms on the 2 shared cores this was
#: measured on (d = 512..4096: 400 MiB took 31-55 ms; see README, "A live database").
INTERIM_INDEX_BYTES = 400 * 2**20
#: Database vectors used to calibrate the interim index's nprobe (fewer than a final build: it is temporary).
INTERIM_EVAL_QUERIES = 200
#: A new interim index is trained when the rows have grown this many times since the last training.
RETRAIN_GROWTH = 4


def default_interim_rows(dim: int) -> int:
    """Rows of ``dim``-d float32 vectors from which a reader trains an interim index
    (:data:`INTERIM_INDEX_BYTES` of vectors: 204,800 at d = 512, 25,600 at d = 4096)."""
    return max(1, INTERIM_INDEX_BYTES // (4 * int(dim)))


class InterimIndex:
    """The index a reader trains over the rows of an unfinished build, in a background thread.

    Args:
        at: Rows from which an index is trained, and new rows that make it grow (by adding, not retraining).
        config: Index settings (default: the project's default index for the rows, its nprobe calibrated on
            :data:`INTERIM_EVAL_QUERIES` queries).
        engine: What trains and fills it (default: :class:`~similar_images.engines.local.LocalEngine`).

    Raises:
        ConfigError: If ``at`` is below 1.
    """

    def __init__(self, at: int, *, config: IndexConfig | None = None, engine: Engine | None = None) -> None:
        if isinstance(at, bool) or not isinstance(at, int) or at < 1:
            raise ConfigError(f"interim_index_at must be a positive number of rows, got {at!r}")
        self.at = at
        self.config = config if config is not None else IndexConfig(eval_queries=INTERIM_EVAL_QUERIES)
        self.engine: Engine = engine if engine is not None else LocalEngine()
        self._part: IndexedPart | None = None
        self._offered: np.ndarray | None = None
        self._failed_at = 0  # rows at which training last failed (not tried again before they grow)
        self._closed = False
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.trainings = 0
        self.extensions = 0

    @property
    def part(self) -> IndexedPart | None:
        """The newest index published (``None`` until the first training ends)."""
        return self._part

    def covering(self, rows: int) -> IndexedPart | None:
        """The newest index for a view of ``rows`` rows: ``None`` while none is trained, or when the newest
        holds rows the view does not have (an older view: it searches exactly)."""
        part = self._part
        return part if part is not None and part.rows <= rows else None

    @property
    def busy(self) -> bool:
        """Whether the background thread is training or extending now."""
        worker = self._worker
        return worker is not None and worker.is_alive()

    def offer(self, vectors: np.ndarray) -> None:
        """The rows a new view holds (``vectors[i]`` never changes once offered); starts the background work
        when it is due and none runs. Never waits for it."""
        with self._lock:
            if self._closed:
                return
            self._offered = vectors
            if self._due(len(vectors)) and not self.busy:
                self._worker = threading.Thread(target=self._work, name="interim-index", daemon=True)
                self._worker.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background work in progress (for tests and benchmarks); whether it has ended."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return not self.busy

    def close(self) -> None:
        """Start no more work (the build finished: its own index replaces this one)."""
        with self._lock:
            self._closed = True

    def _due(self, n: int) -> bool:
        if n < self.at or n < RETRAIN_GROWTH * self._failed_at:
            return False
        part = self._part
        return part is None or n >= RETRAIN_GROWTH * part.trained_rows or n - part.rows >= self.at

    def _work(self) -> None:
        while True:
            with self._lock:
                vectors = self._offered
                if self._closed or vectors is None or not self._due(len(vectors)):
                    self._worker = None if self._worker is threading.current_thread() else self._worker
                    return
            n = len(vectors)
            part = self._part
            try:
                with faiss_threads(1):  # a background helper: it leaves the other cores to the build and requests
                    if part is None or n >= RETRAIN_GROWTH * part.trained_rows:
                        new = self._train(vectors)
                    else:
                        new = self._extend(part, vectors)
            except (IndexTrainingError, ConfigError, RuntimeError, ValueError, MemoryError) as exc:
                logger.warning("No interim index over %d rows (%s); searches over them stay exact", n, exc)
                self._failed_at = n
                continue
            self._part = new

    def _train(self, vectors: np.ndarray) -> IndexedPart:
        n, d = vectors.shape
        factory = self.config.factory or default_factory(n, d)
        built = self.engine.build_index(vectors, replace(self.config, factory=factory))
        self.trainings += 1
        logger.info("Interim index %s over %d rows trained in %.1f s", factory, n, built.report.build_seconds)
        return IndexedPart(built.index, n, dict(built.report.search_params), factory, trained_rows=n)

    def _extend(self, part: IndexedPart, vectors: np.ndarray) -> IndexedPart:
        n = len(vectors)
        # A copy: views searching the published one never see it change. Not under its lock, so no request
        # waits: a search only sets search parameters on it, which every search sets again before it runs.
        index = faiss.clone_index(part.index)
        add_vectors(index, vectors[part.rows:n], np.arange(part.rows, n, dtype=np.int64),
                    self.config.add_batch_size)
        self.extensions += 1
        logger.info("Interim index %s extended from %d to %d rows", part.factory, part.rows, n)
        return IndexedPart(index, n, part.search_params, part.factory, trained_rows=part.trained_rows)
