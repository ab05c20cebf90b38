"""Building an IVF index in parts: train once, add in parts, merge (Faiss only; the parts may run anywhere).

The recipe of autofaiss' distributed build, with Faiss' own helpers:

1. :func:`~.build.train_index` trains the coarse quantizer and the product
   quantizer on a sample, where the build is driven (the same sample and
   settings as a single-process :func:`~.build.build_index`);
2. :func:`add_to_copy` adds a part's vectors to a copy of the trained empty
   index (shipped as ``faiss.serialize_index`` bytes);
3. the parts are merged: :func:`merge_in_memory` (``merge_from`` on the
   inverted lists found with ``faiss.extract_index_ivf``) or
   :func:`merge_on_disk` (``faiss.contrib.ondisk.merge_ondisk``: the lists go
   to one ``.ivfdata`` file that is memory-mapped, so the index may exceed the
   RAM);
4. :func:`~.build.finish_index` sets the search defaults, calibrates nprobe
   and measures recall, as a single-process build does.

With parts holding consecutive ascending ids, the merged inverted lists hold
the same entries in the same order as one index that added everything at
once, so searches return the same results. :func:`estimate_index_bytes` says
how large the index will be, to choose between the two merges.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from .._util.capture import stdout_to_log
from ..errors import ConfigError
from .build import add_vectors
from .factory import make_index
from .params import ivf_of
from .types import FaissIndex

__all__ = ["is_ivf_factory", "add_to_copy", "merge_in_memory", "merge_on_disk", "estimate_index_bytes"]

logger = logging.getLogger(__name__)


def is_ivf_factory(factory: str, d: int) -> bool:
    """Whether ``factory`` makes an index with inverted lists (which can be built in parts and merged)."""
    return ivf_of(make_index(factory, d)) is not None


def _copy(index_or_bytes: FaissIndex | np.ndarray) -> FaissIndex:
    data = index_or_bytes if isinstance(index_or_bytes, np.ndarray) else faiss.serialize_index(index_or_bytes)
    return faiss.deserialize_index(data)


def add_to_copy(trained: FaissIndex, vectors: np.ndarray, ids: np.ndarray, *, batch_size: int = 65_536) -> FaissIndex:
    """A copy of the trained empty index (an index or its ``faiss.serialize_index`` bytes) holding ``vectors``."""
    index = _copy(trained)
    add_vectors(index, vectors, np.asarray(ids, dtype=np.int64), batch_size)
    return index


def _check_empty(trained: FaissIndex) -> None:
    if trained.ntotal != 0:
        raise ConfigError(f"The trained index must be empty to merge parts into it; it holds {trained.ntotal}")


def merge_in_memory(trained: FaissIndex, parts: Iterable[FaissIndex]) -> FaissIndex:
    """Merge the parts (copies of ``trained`` filled by :func:`add_to_copy`) into a copy of ``trained``.

    Parts are consumed one at a time (each may be read from disk just before and freed just after); Faiss'
    ``merge_from`` empties each part it merges.
    """
    _check_empty(trained)
    out = _copy(trained)
    ivf = faiss.extract_index_ivf(out)
    for part in parts:
        ivf.merge_from(faiss.extract_index_ivf(part), 0)
    out.ntotal = ivf.ntotal  # wrappers (e.g. an OPQ PreTransform) keep their own count
    return out


def merge_on_disk(trained: FaissIndex, part_files: Iterable[str | Path], ivfdata: str | Path) -> FaissIndex:
    """Merge the parts saved in ``part_files`` into on-disk inverted lists stored in ``ivfdata``.

    The returned index (a copy of ``trained``) keeps only its quantizers in memory; its lists are
    memory-mapped from ``ivfdata``, whose file name is stored in the index when it is written: keep the two
    files in the same folder (they are read with ``faiss.IO_FLAG_ONDISK_SAME_DIR``).
    """
    _check_empty(trained)
    out = _copy(trained)
    Path(ivfdata).unlink(missing_ok=True)
    with stdout_to_log(logger, logging.DEBUG):  # Faiss prints "resizing ..." to standard output
        merge_ondisk(out, [str(f) for f in part_files], str(ivfdata))
    return out


def estimate_index_bytes(n: int, d: int, factory: str) -> dict[str, int]:
    """Memory an IVF index of ``n`` vectors takes: inverted lists (codes + 8-byte ids) and quantizers.

    Returns:
        ``{"lists": ..., "quantizers": ..., "total": ...}`` in bytes; the lists are what on-disk inverted
        lists move out of memory.

    Raises:
        ConfigError: If ``factory`` has no inverted file.
    """
    index = make_index(factory, d)  # kept alive while its inner IVF is read
    ivf = ivf_of(index)
    if ivf is None:
        raise ConfigError(f"{factory!r} has no inverted file")
    lists = n * (int(ivf.code_size) + 8) + int(ivf.nlist) * 48  # 48: a list's two std::vector headers
    quantizers = int(ivf.nlist) * d * 4  # coarse centroids
    pq = getattr(faiss.downcast_index(ivf), "pq", None)
    if pq is not None:
        quantizers += int(pq.M) * int(pq.ksub) * int(pq.dsub) * 4
    return {"lists": lists, "quantizers": quantizers, "total": lists + quantizers}
