"""Search-time parameters of a Faiss index, and the thread count of searches.

Parameters are set with Faiss' own :class:`faiss.ParameterSpace`, which finds
the sub-index a parameter belongs to inside any wrapper (IDMap,
PreTransform, Refine); the inverted file inside an index is found with
:func:`faiss.extract_index_ivf`.

Names used throughout the package: ``nprobe`` (IVF lists visited),
``efSearch`` (HNSW search depth) and ``k_factor`` (candidates re-ranked by a
refine stage, ``...,RFlat``; Faiss calls it ``k_factor_rf``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import faiss

from ..errors import ConfigError
from .types import FaissIndex

__all__ = [
    "SEARCH_PARAMS",
    "unwrap",
    "ivf_of",
    "fallback_nprobe",
    "default_search_params",
    "set_search_params",
    "faiss_threads",
]

#: The search parameters the package knows, and their names in :class:`faiss.ParameterSpace`.
SEARCH_PARAMS = {"nprobe": "nprobe", "efSearch": "efSearch", "k_factor": "k_factor_rf"}

_NEEDS = {"nprobe": "IVF indexes", "efSearch": "HNSW indexes",
          "k_factor": "indexes with a refine stage (',RFlat')"}


def unwrap(index: FaissIndex) -> list[FaissIndex]:
    """The chain of (downcast) indexes inside wrappers: IDMap, PreTransform, Refine."""
    chain: list[FaissIndex] = []
    cur: FaissIndex | None = faiss.downcast_index(index)
    while cur is not None:
        chain.append(cur)
        nxt = None
        if isinstance(cur, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            nxt = cur.index
        elif isinstance(cur, faiss.IndexRefine):
            nxt = cur.base_index
        cur = faiss.downcast_index(nxt) if nxt is not None else None
    return chain


def ivf_of(index: FaissIndex) -> faiss.IndexIVF | None:
    """The inverted-file index inside ``index`` (any wrappers), or ``None``."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:  # "not an IVF index"
        return None


def fallback_nprobe(nlist: int) -> int:
    """nprobe when nothing is measured: ``min(nlist, max(16, ceil(nlist / 8)))``."""
    return min(nlist, max(16, math.ceil(nlist / 8)))


def default_search_params(index: FaissIndex) -> dict[str, int]:
    """Search-time defaults when nothing is measured: nprobe = :func:`fallback_nprobe` for IVF, efSearch = 64
    for HNSW, k_factor 4 for a refine stage (:func:`~similar_images.index.build.build_index` calibrates nprobe)."""
    params: dict[str, int] = {}
    for sub in unwrap(index):
        if isinstance(sub, faiss.IndexIVF):
            params["nprobe"] = fallback_nprobe(sub.nlist)
        elif isinstance(sub, faiss.IndexHNSW):
            params["efSearch"] = 64
        elif isinstance(sub, faiss.IndexRefine):
            params["k_factor"] = 4
    return params


def set_search_params(index: FaissIndex, params: Mapping[str, int | None]) -> dict[str, int]:
    """Apply search parameters (``nprobe``, ``efSearch``, ``k_factor``); ``None`` values are skipped.

    nprobe is capped at the number of lists.

    Returns:
        The parameters that were applied (with their applied values).

    Raises:
        ConfigError: If a value is not positive, or the index has no such parameter.
    """
    space = faiss.ParameterSpace()
    applied: dict[str, int] = {}
    for name, value in params.items():
        if value is None:
            continue
        if name not in SEARCH_PARAMS:
            raise ConfigError(f"Unknown search parameter {name!r}; use nprobe, efSearch or k_factor")
        value = int(value)
        if value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value}")
        if name == "nprobe":
            ivf = ivf_of(index)
            if ivf is None:
                raise ConfigError(f"nprobe applies only to {_NEEDS[name]}")
            value = min(value, int(ivf.nlist))
        try:
            space.set_index_parameter(index, SEARCH_PARAMS[name], value)
        except RuntimeError:
            raise ConfigError(f"{name} applies only to {_NEEDS[name]}") from None
        applied[name] = value
    return applied


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
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
