"""Index descriptions: the defaults, and turning a Faiss ``index_factory`` string into an empty index.

All vectors are L2-normalised, so cosine similarity equals the inner
product, and every index is created with ``METRIC_INNER_PRODUCT`` (the
coarse quantizer, the PQ codes and any refinement stage alike).

The defaults were chosen from the tuner's measurements (see
:mod:`similar_images.measure.tune` and the README), and are named so that an
embedder can say which one fits its vectors (:data:`DEFAULTS`):

* ``"ivf-pq"`` (:func:`default_factory`, image features): exact ``Flat``
  below :data:`MIN_PQ_VECTORS` vectors, otherwise an inverted file with about
  ``sqrt(N)`` lists and one 8-bit PQ code per 16 dimensions
  (``IVF{sqrt N},PQ{d/16}``; the original design used 16 codes whatever ``d``:
  :func:`original_factory`);
* ``"pq"`` (:func:`pq_factory`, sentence embeddings): ``PQ16`` scanned
  exhaustively (``Flat`` below :data:`MIN_PQ_VECTORS`): the query's encoding
  costs far more than the scan, and an inverted file only loses recall.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import faiss

from ..errors import ConfigError, IndexDescriptionError, IndexTrainingError
from .params import unwrap
from .types import FaissIndex

__all__ = [
    "MIN_PQ_VECTORS",
    "MAX_FACTORY_CHARS",
    "MAX_CODE_BITS",
    "MAX_FIXED_INDEX_BYTES",
    "DEFAULTS",
    "default_factory",
    "original_factory",
    "pq_factory",
    "factory_for",
    "make_index",
    "check_factory_sizes",
    "fixed_index_bytes",
    "min_training_vectors",
]

#: Fewest vectors for which the default index is compressed: Faiss recommends 39 training
#: points per centroid, and an 8-bit PQ trains 256 centroids per sub-quantizer.
MIN_PQ_VECTORS = 39 * 256

#: The longest index description accepted (Faiss' parser crashes on long ones: 20,000 characters segfault it;
#: the longest useful ones, such as ``OPQ64_256,IVF65536_HNSW32,PQ64x4fsr,Refine(SQfp16)``, take about 50).
MAX_FACTORY_CHARS = 256
#: The most bits a code of a product or additive quantizer may have (``PQ16x16``: 65,536 centroids a
#: sub-quantizer, which already needs 2.5 million training vectors).
MAX_CODE_BITS = 16
#: The most memory the fixed parts of an index (coarse centroids, codebooks, transforms, empty inverted lists)
#: may take; Faiss allocates them when it reads the description, before any check of its own.
MAX_FIXED_INDEX_BYTES = 2**30


def _divisor_at_most(d: int, m: int) -> int:
    return next(c for c in range(max(1, min(m, d)), 0, -1) if d % c == 0)


def original_factory(n: int, d: int) -> str:
    """The original design: ``IVF{round(sqrt(n))},PQ16`` (16, or the largest divisor of d below it)."""
    nlist = max(1, int(round(math.sqrt(max(n, 1)))))
    return f"IVF{nlist},PQ{_divisor_at_most(d, 16)}"


def default_factory(n: int, d: int) -> str:
    """The default index for ``n`` image feature vectors of dimension ``d``, chosen from the tuner's measurements.

    * ``Flat`` (exact) below :data:`MIN_PQ_VECTORS` vectors: PQ codebooks cannot be trained well, the
      fixed costs (codebooks, centroids) are a large part of a small index, and exact search is fast;
    * otherwise ``IVF{round(sqrt(n))},PQ{m}`` with one 8-bit code per 16 dimensions (``m = d / 16``,
      at least 16 and at most 256 bytes a vector, a divisor of ``d``). The original 16 bytes whatever
      ``d`` kept 0.31 of the true top 10 of 4096-d vectors (0.57 after re-ranking); ``d / 16`` bytes
      keep 0.80 (0.97 re-ranked), at 0.027x the memory of the exact index.

    Examples: 40,504 x 4096 -> ``IVF201,PQ256``; 20,000 x 512 -> ``IVF141,PQ32``; 4,064 x 512 -> ``Flat``.
    """
    if n < MIN_PQ_VECTORS:
        return "Flat"
    nlist = max(1, int(round(math.sqrt(n))))
    return f"IVF{nlist},PQ{_divisor_at_most(d, min(256, max(16, d // 16)))}"


def pq_factory(n: int, d: int) -> str:
    """The default index for ``n`` sentence embeddings of dimension ``d``.

    ``PQ16`` (16 sub-quantizers of 8 bits: 16 bytes a text, 96x smaller than
    the 384-d float vectors), scanned exhaustively; below :data:`MIN_PQ_VECTORS`
    vectors ``Flat`` (exact), since the PQ codebooks cannot be trained well and
    the vectors are small anyway. See the README for the measurements.
    """
    if n < MIN_PQ_VECTORS:
        return "Flat"
    return f"PQ{_divisor_at_most(d, 16)}"


#: The default index descriptions, by the name an embedder gives (``ModelSpec.default_index``).
DEFAULTS: dict[str, Callable[[int, int], str]] = {"ivf-pq": default_factory, "pq": pq_factory}


def factory_for(name: str, n: int, d: int) -> str:
    """The default index called ``name`` (a key of :data:`DEFAULTS`) for ``n`` vectors of dimension ``d``.

    Raises:
        ConfigError: For an unknown name.
    """
    try:
        return DEFAULTS[name](n, d)
    except KeyError:
        raise ConfigError(f"Unknown default index {name!r}; expected one of {sorted(DEFAULTS)}") from None


def make_index(factory: str, d: int, *, metric: str = "ip") -> FaissIndex:
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
        ConfigError: For an unknown metric.
    """
    metrics = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
    if metric not in metrics:
        raise ConfigError(f"metric must be 'ip' or 'l2', got {metric!r}")
    if not factory or not factory.strip():
        raise IndexTrainingError("The index description is empty; give a Faiss index_factory string such as 'Flat', "
                                 "'IVF256,PQ16' or 'HNSW32'.")
    check_factory_sizes(factory, d)
    _check_factory_numbers(factory)
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
    for sub in unwrap(index):
        if getattr(sub, "do_polysemous_training", False):
            setattr(sub, "do_polysemous_training", False)  # noqa: B010  (IndexPQ, IndexIVFPQ: not on faiss.Index)
    top = faiss.downcast_index(index)
    native_ids = isinstance(top, (faiss.IndexIVF, faiss.IndexIDMap, faiss.IndexIDMap2)) or (
        isinstance(top, faiss.IndexPreTransform) and isinstance(faiss.downcast_index(top.index), faiss.IndexIVF)
    )
    return index if native_ids else faiss.IndexIDMap2(index)


#: Graph sizes Faiss accepts in a description but crashes or never finishes with (measured with faiss 1.x:
#: ``HNSW1`` segfaults when vectors are added, ``NSG2`` and ``NSG4`` never finish building), and the largest
#: that fit in memory for any useful number of vectors.
_GRAPH_LIMITS = {"HNSW": (2, 1024), "NSG": (8, 1024)}


def _refuse(factory: str, part: str, why: str, needed: int = 0) -> IndexDescriptionError:
    shown = factory if len(factory) <= 80 else f"{factory[:60]}... ({len(factory):,} characters)"
    return IndexDescriptionError(f"Invalid index description {shown!r}: {why}. Examples: 'Flat', 'IVF256,PQ16', "
                                 "'HNSW32'.", factory=shown, part=part, needed_bytes=needed,
                                 limit_bytes=MAX_FIXED_INDEX_BYTES if needed else 0)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def fixed_index_bytes(factory: str, d: int) -> list[tuple[str, int]]:
    """The memory the fixed parts of an index take, by part of its description (an upper estimate).

    Counted: coarse centroids and empty inverted lists (``IVF``, ``IMI``), codebooks (``PQ``, ``RQ``, ``LSQ``,
    ``PRQ``, ``PLSQ``), and transform matrices (``PCA``, ``OPQ``, ``ITQ``, ``RR``), at the largest dimension the
    description reaches. Not counted: what grows with the vectors (codes, ids, graph links).

    Raises:
        IndexDescriptionError: If a code has more than :data:`MAX_CODE_BITS` bits.
    """
    outs = [int(x) for x in re.findall(r"(?:PCAW?R?|ITQ|RR|OPQ\d+_)(\d+)", factory)]
    dmax = max([d, *outs])
    parts: list[tuple[str, int]] = []
    for m in re.finditer(r"(?<![A-Za-z])(?:PCAW?R?|ITQ|RR)(\d+)", factory):
        parts.append((m.group(), d * int(m.group(1)) * 4))
    for m in re.finditer(r"OPQ(\d+)(?:_(\d+))?", factory):
        parts.append((m.group(), d * int(m.group(2) or d) * 4))
    for m in re.finditer(r"IVF(\d+)", factory):
        parts.append((m.group(), int(m.group(1)) * (dmax * 4 + 48)))
    for m in re.finditer(r"IMI(\d+)x(\d+)", factory):
        if int(m.group(2)) > MAX_CODE_BITS:
            raise _refuse(factory, m.group(), f"{m.group()} asks for codes of {m.group(2)} bits (at most "
                                              f"{MAX_CODE_BITS})")
        lists = 2 ** min(64, int(m.group(1)) * int(m.group(2)))
        parts.append((m.group(), lists * 48 + 2 ** int(m.group(2)) * dmax * 4))
    quantizers = [(m.group(), 1, m.group(2)) for m in re.finditer(r"(?<![A-Za-z])PQ(\d+)(?:x(\d+))?", factory)]
    quantizers += [(m.group(), int(m.group(1)), m.group(2)) for m in
                   re.finditer(r"(?<![A-Za-z])(?:RQ|LSQ)(\d+)x(\d+)", factory)]
    quantizers += [(m.group(), int(m.group(1)), m.group(2)) for m in
                   re.finditer(r"(?<![A-Za-z])P(?:RQ|LSQ)\d+x(\d+)x(\d+)", factory)]
    for part, books, bits in quantizers:
        nbits = int(bits or 8)
        if nbits > MAX_CODE_BITS:
            raise _refuse(factory, part, f"{part} asks for codes of {nbits} bits, {2 ** nbits:,} centroids each "
                                         f"(at most {MAX_CODE_BITS} bits)")
        parts.append((part, books * 2 ** nbits * dmax * 4))
    return parts


def check_factory_sizes(factory: str, d: int) -> None:
    """Refuse a description Faiss would crash on or allocate too much memory for, before Faiss reads it.

    Checks its length (:data:`MAX_FACTORY_CHARS`), its numbers (at most 2**31 - 1), the bits of each code
    (:data:`MAX_CODE_BITS`) and the memory of its fixed parts (:func:`fixed_index_bytes`, at most
    :data:`MAX_FIXED_INDEX_BYTES`).

    Raises:
        IndexDescriptionError: Naming the part refused and, for memory, what it needs and the limit.
    """
    if len(factory) > MAX_FACTORY_CHARS:
        raise _refuse(factory, "", f"it has {len(factory):,} characters, at most {MAX_FACTORY_CHARS}")
    for m in re.finditer(r"\d+", factory):
        if len(m.group()) > 10 or int(m.group()) >= 2**31:
            raise _refuse(factory, m.group(), f"the number {m.group()[:20]} is too large for a size")
    parts = fixed_index_bytes(factory, d)
    total = sum(b for _, b in parts)
    if total > MAX_FIXED_INDEX_BYTES:
        part, need = max(parts, key=lambda p: p[1])
        raise _refuse(factory, part, f"for {d}-d vectors its fixed parts need {_gib(total)} before any vector is "
                                     f"added ({part}: {_gib(need)}), more than the limit of "
                                     f"{_gib(MAX_FIXED_INDEX_BYTES)}; use fewer lists or fewer bits", total)


def _check_factory_numbers(factory: str) -> None:
    """Refuse sizes that Faiss accepts and then aborts, segfaults or hangs on.

    Every number in a description is a size (lists, sub-quantizers, bits, neighbours, dimensions), and Faiss
    does not check them: ``HNSW0`` aborts, ``PQ4x0``, ``RQ0x8``, ``OPQ4_0`` and ``PCAR0`` crash the process.
    """
    for match in re.finditer(r"\d+", factory):
        if int(match.group()) == 0:
            start = max(0, match.start() - 8)
            raise IndexTrainingError(
                f"Invalid index description {factory!r}: every number in it is a size and must be at least 1 "
                f"(found 0 in {factory[start:match.end()]!r}). Examples: 'Flat', 'IVF256,PQ16', 'HNSW32'."
            )
    for name, value in re.findall(r"(HNSW|NSG)(\d+)", factory):
        low, high = _GRAPH_LIMITS[name]
        if not low <= int(value) <= high:
            raise IndexTrainingError(
                f"Invalid index description {factory!r}: {name}{value} needs from {low} to {high} neighbours "
                f"per vector (for example {name}32)."
            )


def min_training_vectors(index: FaissIndex) -> int:
    """The fewest training vectors Faiss accepts for ``index`` (0 if it needs no training)."""
    need = 0
    for sub in unwrap(index):
        if isinstance(sub, faiss.IndexIVF):
            need = max(need, sub.nlist)
        pq = getattr(sub, "pq", None)
        if pq is not None and hasattr(pq, "ksub"):
            need = max(need, int(pq.ksub))
        if isinstance(sub, faiss.IndexPreTransform):
            chain = sub.chain  # a SWIG vector at run time (faiss' stubs say list)
            for i in range(chain.size()):  # type: ignore[attr-defined]
                vt = faiss.downcast_VectorTransform(chain.at(i))  # type: ignore[attr-defined]
                if isinstance(vt, faiss.OPQMatrix):
                    need = max(need, 2 ** 8)
        if not sub.is_trained:
            need = max(need, 1)
    return need
