"""Faiss indexes for cosine similarity: defaults, building, search parameters, exact search, recall, re-ranking.

This layer knows Faiss and numpy only: it never sees a database. Modules:

* :mod:`.factory`: the default index descriptions and :func:`make_index`;
* :mod:`.build`: :func:`build_index` (train on a sample, add all, measure);
* :mod:`.distributed`: the same in parts (add to copies of the trained index, merge);
* :mod:`.calibrate`: nprobe measured against exact search;
* :mod:`.params`: search parameters through :class:`faiss.ParameterSpace`, thread counts;
* :mod:`.exact`, :mod:`.recall`, :mod:`.rerank`: exact search, recall@k, exact re-ranking;
* :mod:`.merged`: an index over the first rows and exact search over the rest, merged by score;
* :mod:`.bands`: score bands in plain words, thresholds from the nearest-neighbour similarities;
* :mod:`.io`: atomic reads and writes.

To add an index type, nothing is needed: any Faiss ``index_factory`` string
works (``--index``); to make it a default, add it to :data:`.factory.DEFAULTS`.
"""

from __future__ import annotations

from .bands import BAND_NAMES, ScoreBands, neighbour_percentiles
from .build import BuildReport, IndexConfig, add_vectors, build_index, finish_index, train_index
from .calibrate import MAX_SCAN_BYTES, NPROBE_TOLERANCE, calibrate_nprobe, choose_nprobe, nprobe_cap, nprobe_steps
from .exact import exact_search
from .factory import (
    DEFAULTS,
    MIN_PQ_VECTORS,
    default_factory,
    factory_for,
    make_index,
    min_training_vectors,
    original_factory,
    pq_factory,
)
from .io import index_nbytes, read_index, write_index
from .merged import IndexedPart, merged_search
from .params import default_search_params, faiss_threads, fallback_nprobe, ivf_of, set_search_params, unwrap
from .recall import drop_self, recall_at_k, recall_stalled, recall_table, recall_within
from .rerank import DEFAULT_RERANK, RerankedSearch, rerank_exact

__all__ = [
    "BAND_NAMES",
    "ScoreBands",
    "neighbour_percentiles",
    "BuildReport",
    "IndexConfig",
    "add_vectors",
    "build_index",
    "finish_index",
    "train_index",
    "MAX_SCAN_BYTES",
    "NPROBE_TOLERANCE",
    "calibrate_nprobe",
    "choose_nprobe",
    "nprobe_cap",
    "nprobe_steps",
    "exact_search",
    "DEFAULTS",
    "MIN_PQ_VECTORS",
    "default_factory",
    "factory_for",
    "make_index",
    "min_training_vectors",
    "original_factory",
    "pq_factory",
    "index_nbytes",
    "IndexedPart",
    "merged_search",
    "read_index",
    "write_index",
    "default_search_params",
    "faiss_threads",
    "fallback_nprobe",
    "ivf_of",
    "set_search_params",
    "unwrap",
    "drop_self",
    "recall_at_k",
    "recall_stalled",
    "recall_table",
    "recall_within",
    "DEFAULT_RERANK",
    "RerankedSearch",
    "rerank_exact",
]
