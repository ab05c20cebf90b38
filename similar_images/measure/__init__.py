"""Measuring a database: its index against exact search, retrieval quality, and a tuning sweep of indexes.

* :mod:`.evaluate`: recall@k (index alone and as served), latency and size, plus :mod:`.quality`
  (precision@k and mAP@k with class labels) and :mod:`.compare` (one query, exact against index);
* :mod:`.tune`: build and measure a sweep of Faiss indexes on the database's own vectors, and pick one;
* :mod:`.tune_report`, :mod:`.plot`: the sweep's figures, tables and plot;
* :mod:`.synthetic`: embeddings shaped like CNN features, for benchmarks at scale.
"""

from __future__ import annotations

from .compare import NeighbourComparison, compare_neighbours
from .evaluate import EvalConfig, EvaluationReport, evaluate_database
from .plot import plot_tuning
from .quality import QualityReport
from .synthetic import clustered_chunks, clustered_vectors
from .tune import TuneConfig, apply_choice, tune_database, tune_vectors
from .tune_report import TunePoint, TuneReport

__all__ = [
    "EvalConfig",
    "NeighbourComparison",
    "QualityReport",
    "EvaluationReport",
    "compare_neighbours",
    "evaluate_database",
    "plot_tuning",
    "clustered_chunks",
    "clustered_vectors",
    "TuneConfig",
    "apply_choice",
    "tune_database",
    "tune_vectors",
    "TunePoint",
    "TuneReport",
]
