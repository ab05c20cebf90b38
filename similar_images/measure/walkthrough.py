"""The numbers behind the teaching walkthrough (``notebooks/how_it_works.ipynb``), measured live on a database.

Each function takes the database's own vectors (L2-normalised float32 rows) and returns plain data that the
figures in :mod:`similar_images.apps.walkthrough` draw:

* :func:`vector_anatomy`: a feature map, the channels that weigh most, and the pooled vector;
* :func:`brute_force_cost`: exact search timed against collection size, with a linear fit extrapolated to 1M
  and 1B vectors;
* :func:`pq_anatomy` and :func:`pq_sweep`: product quantization of one vector, then recall@k and reconstruction
  error against the number of sub-vectors ``M``;
* :func:`ivf_clusters` and :func:`nprobe_sweep`: the inverted file's coarse clusters, and recall and latency
  against ``nprobe``;
* :func:`project_2d` and :func:`neighbourhood_kept`: a 2D map of the collection (PCA, then t-SNE) and how
  much of each vector's neighbourhood the map keeps.

Faiss' clustering warnings are silenced as in :func:`similar_images.index.build.quiet_clustering`; nothing
here prints.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import faiss
import numpy as np

from ..embed.feature_maps import Pooling, pool
from ..errors import ConfigError
from ..index.build import add_vectors, quiet_clustering
from ..index.exact import exact_search
from ..index.factory import make_index
from ..index.params import faiss_threads, ivf_of, set_search_params
from ..index.recall import EvalSample, eval_sample, recall_at_k
from .evaluate import measure_latency

if TYPE_CHECKING:
    from ..store import Database

__all__ = [
    "BruteForceCost",
    "IVFClusters",
    "NprobePoint",
    "PQAnatomy",
    "PQPoint",
    "VectorAnatomy",
    "brute_force_cost",
    "nearest_and_farthest",
    "tradeoff_factories",
    "ivf_clusters",
    "neighbourhood_kept",
    "nprobe_sweep",
    "pq_anatomy",
    "pq_sweep",
    "project_2d",
    "vector_anatomy",
]


#: Why the walkthrough's helpers train and search with one thread by default.
THREADS_NOTE = (
    "one thread: on a shared 2-core machine, OpenMP's multi-threaded k-means and t-SNE slow down several times "
    "under load (measured on 800 photos at load average 8: t-SNE 66 s with the default threads, 12 s with one; "
    "PQ16 training 1.9 s against 0.56 s)"
)


def _as_vectors(vectors: np.ndarray, *, at_least: int = 2) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) < at_least:
        raise ConfigError(f"The walkthrough needs at least {at_least} vectors as an (n, d) array, got shape {x.shape}")
    return x


# --------------------------------------------------------------------------- 1. a photo becomes a vector
@dataclass
class VectorAnatomy:
    """One image's feature map and the vector pooled from it.

    Attributes:
        feature_map: float32 ``(H, W, C)``: the last convolutional feature map.
        vector: float32 ``(C,)``: its global pooling, L2-normalised (what the database stores).
        channels: The ``C`` channels ordered by their weight in the vector, largest first.
        pooling: ``"avg"`` or ``"max"``, or how the model makes its vector when it is no pooling.
    """

    feature_map: np.ndarray
    vector: np.ndarray
    channels: np.ndarray
    pooling: str

    @property
    def grid(self) -> tuple[int, int]:
        """``(H, W)``: the positions of the feature map."""
        return int(self.feature_map.shape[0]), int(self.feature_map.shape[1])

    @property
    def dim(self) -> int:
        """The vector's dimension (the map's channels when the vector is their pooling)."""
        return int(self.vector.size)

    @property
    def active_fraction(self) -> float:
        """Fraction of the vector's values that are not zero (ReLU features are sparse)."""
        return float(np.count_nonzero(self.vector > 0) / max(1, self.vector.size))


def vector_anatomy(feature_map: np.ndarray, pooling: Pooling | None = "avg", *,
                   vector: np.ndarray | None = None) -> VectorAnatomy:
    """Pool a feature map into the model's vector, and rank its channels.

    Args:
        feature_map: float32 ``(H, W, C)`` map (e.g. from :meth:`Explainer.feature_maps
            <similar_images.methods.explain.Explainer.feature_maps>`).
        pooling: The model's global pooling; ``None`` for a model whose vector is made by more layers
            (``vgg16-fc2``): then ``vector`` is the model's vector, and channels are ranked by their mean.
        vector: The stored vector, when ``pooling`` is ``None``.

    Raises:
        ConfigError: If the map is not ``(H, W, C)``, or ``pooling`` is ``None`` without a vector.
    """
    fmap = np.asarray(feature_map, dtype=np.float32)
    if fmap.ndim != 3:
        raise ConfigError(f"A feature map is (H, W, C), got shape {fmap.shape}")
    if pooling is None:
        if vector is None:
            raise ConfigError("This model's vector is not a pooling of its feature map: pass the stored vector")
        weight = pool(fmap[None], "avg")[0]
        out = np.asarray(vector, dtype=np.float32).reshape(-1)
        return VectorAnatomy(fmap, out, np.argsort(-weight, kind="stable"), "fully connected layers")
    raw = pool(fmap[None], pooling)[0]
    norm = float(np.linalg.norm(raw))
    out = raw / norm if norm > 0 else raw
    return VectorAnatomy(fmap, out.astype(np.float32), np.argsort(-out, kind="stable"), pooling)


def nearest_and_farthest(db: Database, item_id: int) -> tuple[int, int]:
    """The ids of the photo most similar to ``item_id`` (itself left out) and of the least similar one."""
    item_id = db.check_id(item_id)
    ids = db.live_ids()
    sims = np.asarray(db.vectors[ids], dtype=np.float32) @ np.asarray(db.vector(item_id), dtype=np.float32)
    sims[ids == item_id] = np.nan
    return int(ids[np.nanargmax(sims)]), int(ids[np.nanargmin(sims)])


def tradeoff_factories(n: int, d: int, own: str | None = None) -> list[str]:
    """A short sweep for the trade-off figure: exact, compressed, clustered and graph indexes, and ``own``.

    ``IVF`` uses ``round(sqrt(n))`` lists as the default index does, with a 16-byte PQ code (larger codes train
    several times longer: the tuner's full sweep, ``similar-images tune``, measures them).
    """
    nlist = max(1, int(round(math.sqrt(max(n, 1)))))
    pq = f"PQ{16 if d % 16 == 0 else next(m for m in range(min(16, d), 0, -1) if d % m == 0)}"
    names = ["Flat", "SQ8", f"IVF{nlist},Flat", f"IVF{nlist},SQ8", f"IVF{nlist},{pq}", "HNSW32"]
    if own and own not in names:
        names.append(own)
    return names


# --------------------------------------------------------------------------- 3. exact search
#: Collection sizes the brute-force curve extrapolates to.
EXTRAPOLATE_TO = (1_000_000, 1_000_000_000)


@dataclass
class BruteForceCost:
    """Single-query latency of exact search against collection size, and its linear fit.

    Attributes:
        sizes: Collection sizes measured (prefixes of the database's vectors).
        ms: Median single-query latency at each size, in milliseconds (one thread).
        dim: Vector dimension.
        intercept_ms: The fit's fixed cost per query.
        ms_per_vector: The fit's cost per stored vector.
    """

    sizes: list[int]
    ms: list[float]
    dim: int
    intercept_ms: float
    ms_per_vector: float

    def predict_ms(self, n: int) -> float:
        """The fitted latency of one exact query over ``n`` vectors."""
        return self.intercept_ms + self.ms_per_vector * n

    def memory_bytes(self, n: int) -> int:
        """Bytes of ``n`` float32 vectors: what brute force reads for every query."""
        return int(n) * self.dim * 4

    @property
    def method(self) -> str:
        """How the extrapolation is made, in one sentence."""
        return (f"least-squares line t = a + b*N through the {len(self.sizes)} measured sizes (exact search reads "
                f"every stored {self.dim}-d float32 vector once per query, so its time grows linearly with N), "
                "one thread, median of single queries")

    def extrapolate(self, sizes: Sequence[int] = EXTRAPOLATE_TO) -> dict[int, float]:
        """Fitted milliseconds per query at each size."""
        return {int(n): self.predict_ms(int(n)) for n in sizes}


def brute_force_cost(vectors: np.ndarray, *, steps: int = 6, n_queries: int = 30, k: int = 10,
                     threads: int | None = 1, seed: int = 0) -> BruteForceCost:
    """Time exact search over growing prefixes of ``vectors``, up to all of them, and fit a line.

    Args:
        vectors: ``(n, d)`` database vectors.
        steps: Number of collection sizes, spaced evenly up to ``n``.
        n_queries: Queries timed one at a time at each size (database vectors).
        k: Results per query.
        threads: Faiss threads while timing.
        seed: Seed of the query sample.

    Raises:
        ConfigError: If there are fewer than 2 vectors or ``steps < 2``.
    """
    x = _as_vectors(vectors)
    if steps < 2:
        raise ConfigError(f"steps must be at least 2 to fit a line, got {steps}")
    n, d = x.shape
    sizes = sorted({max(k + 1, int(round(n * (i + 1) / steps))) for i in range(steps)} | {n})
    sizes = [s for s in sizes if s <= n]
    rng = np.random.default_rng(seed)
    xq = x[rng.choice(n, size=min(n_queries, n), replace=False)]
    ms = []
    for size in sizes:
        stats = measure_latency(functools.partial(_exact_over, x[:size]), xq, min(k, size), n_single=len(xq),
                                threads=threads)
        ms.append(stats.median_ms)
    slope, intercept = np.polyfit(np.asarray(sizes, dtype=np.float64), np.asarray(ms), 1)
    slope = max(float(slope), 0.0)
    return BruteForceCost(sizes=sizes, ms=ms, dim=d, intercept_ms=max(float(intercept), 0.0), ms_per_vector=slope)


# --------------------------------------------------------------------------- 5. product quantization
def _pq_ms(d: int) -> list[int]:
    return [m for m in (4, 8, 16, 32, 64) if d % m == 0 and m <= d]


def _train_pq(x: np.ndarray, m: int, nbits: int, seed: int) -> faiss.ProductQuantizer:
    d = x.shape[1]
    if m < 1 or d % m:
        raise ConfigError(f"M={m} must divide the dimension {d}; try one of {_pq_ms(d)}")
    if len(x) < 2 ** nbits:
        raise ConfigError(f"Product quantization with {nbits}-bit codes needs at least {2 ** nbits} vectors to "
                          f"train its codebooks, got {len(x)}; use fewer bits or a larger database")
    pq = faiss.ProductQuantizer(d, m, nbits)
    pq.cp.min_points_per_centroid = 1  # as quiet_clustering: no "provide at least N points" lines
    pq.cp.seed = seed
    pq.train(x)
    return pq


@dataclass
class PQAnatomy:
    """One vector's product-quantization code.

    Attributes:
        m: Sub-vectors per vector.
        nbits: Bits per sub-vector code (``2 ** nbits`` centroids per codebook).
        sub_vectors: float32 ``(m, d / m)``: the vector cut into pieces.
        codebooks: float32 ``(m, 2 ** nbits, d / m)``: each piece's centroids.
        code: int ``(m,)``: the centroid chosen for each piece.
        reconstruction: float32 ``(d,)``: the vector rebuilt from its code.
    """

    m: int
    nbits: int
    sub_vectors: np.ndarray
    codebooks: np.ndarray
    code: np.ndarray
    reconstruction: np.ndarray

    @property
    def bytes_per_vector(self) -> float:
        """Bytes of one code."""
        return self.m * self.nbits / 8

    @property
    def float_bytes(self) -> int:
        """Bytes of the float32 vector it replaces."""
        return int(self.sub_vectors.size) * 4

    @property
    def error(self) -> float:
        """Squared distance between the vector and its reconstruction (unit vectors: 0 to 4)."""
        return float(np.sum((self.sub_vectors.reshape(-1) - self.reconstruction) ** 2))


def pq_anatomy(vectors: np.ndarray, m: int, *, row: int = 0, nbits: int = 8, seed: int = 0,
               threads: int | None = 1) -> PQAnatomy:
    """Train a product quantizer with ``m`` sub-vectors on ``vectors`` and encode row ``row``.

    ``threads``: Faiss threads (see :data:`THREADS_NOTE`).

    Raises:
        ConfigError: If ``m`` does not divide the dimension or there are too few vectors to train on.
    """
    x = _as_vectors(vectors)
    if not 0 <= row < len(x):
        raise ConfigError(f"row {row} is outside the {len(x)} vectors")
    with faiss_threads(threads):
        pq = _train_pq(x, m, nbits, seed)
    d = x.shape[1]
    codebooks = faiss.vector_to_array(pq.centroids).reshape(m, 2 ** nbits, d // m)
    one = x[row:row + 1]
    packed = pq.compute_codes(one)
    recon = pq.decode(packed)[0]  # type: ignore[call-arg,func-returns-value,index]  # faiss' stubs: decode(x, n)
    # the code of each sub-vector: the nearest centroid of its codebook (what compute_codes packed)
    subs = one[0].reshape(m, d // m)
    code = np.array([int(np.argmin(((codebooks[j] - subs[j]) ** 2).sum(axis=1))) for j in range(m)])
    return PQAnatomy(m=m, nbits=nbits, sub_vectors=subs, codebooks=codebooks, code=code, reconstruction=recon)


@dataclass
class PQPoint:
    """Product quantization with ``m`` sub-vectors, measured.

    Attributes:
        m: Sub-vectors per vector (8-bit code each).
        bytes_per_vector: Bytes of one code.
        compression: float32 bytes over code bytes.
        recall: recall@k of an exhaustive PQ scan against exact search.
        error: Mean squared reconstruction error over mean squared norm (0: exact, 1: nothing kept).
        k: The k of recall@k.
    """

    m: int
    bytes_per_vector: float
    compression: float
    recall: float
    error: float
    k: int


def _sample(x: np.ndarray, n_queries: int, k: int, seed: int) -> EvalSample:
    sample = eval_sample(x, np.arange(len(x), dtype=np.int64), n_queries, k, seed)
    if sample is None:
        raise ConfigError(f"Need at least 2 vectors and k >= 1 to measure recall, got {len(x)} vectors, k={k}")
    return sample


def pq_sweep(vectors: np.ndarray, ms: Sequence[int] | None = None, *, nbits: int = 8, n_queries: int = 200,
             k: int = 10, seed: int = 0, threads: int | None = 1) -> list[PQPoint]:
    """Recall@k and reconstruction error of product quantization for each number of sub-vectors ``M``.

    Args:
        vectors: ``(n, d)`` database vectors (also the training set and, sampled, the queries).
        ms: Values of ``M`` (default: those of 4, 8, 16, 32, 64 that divide ``d``).
        nbits: Bits per sub-vector code.
        n_queries: Database vectors used as queries, each excluded from its own results.
        k: The k of recall@k.
        seed: Seed of training and of the query sample.
        threads: Faiss threads (see :data:`THREADS_NOTE`).
    """
    x = _as_vectors(vectors)
    d = x.shape[1]
    ms = list(ms) if ms is not None else _pq_ms(d)
    sample = _sample(x, n_queries, k, seed)
    norm2 = float(np.mean(np.sum(x ** 2, axis=1))) or 1.0
    with faiss_threads(threads):
        return [_pq_point(x, m, nbits, seed, sample, norm2) for m in ms]


def _pq_point(x: np.ndarray, m: int, nbits: int, seed: int, sample: EvalSample, norm2: float) -> PQPoint:
    d = x.shape[1]
    pq = _train_pq(x, m, nbits, seed)
    codes = pq.compute_codes(x)
    err = float(np.mean(np.sum((pq.decode(codes) - x) ** 2, axis=1))) / norm2  # type: ignore[call-arg,func-returns-value]
    index = faiss.IndexPQ(d, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.pq = pq
    index.is_trained = True
    index.add(x)  # encodes with the quantizer just trained
    found = sample.search(index, sample.k)
    return PQPoint(m=m, bytes_per_vector=m * nbits / 8, compression=4 * d / (m * nbits / 8),
                   recall=recall_at_k(found, sample.truth, sample.k), error=err, k=sample.k)




# --------------------------------------------------------------------------- 6. the inverted file
@dataclass
class IVFClusters:
    """The coarse clusters of an inverted file over a database's vectors.

    Attributes:
        nlist: Number of clusters.
        assignment: int ``(n,)``: each vector's cluster.
        centroids: float32 ``(nlist, d)``.
        members: For each cluster, its rows ordered from nearest to farthest from the centroid.
    """

    nlist: int
    assignment: np.ndarray
    centroids: np.ndarray
    members: list[np.ndarray] = field(default_factory=list)

    @property
    def sizes(self) -> np.ndarray:
        """Vectors per cluster."""
        return np.bincount(self.assignment, minlength=self.nlist)

    def largest(self, count: int) -> list[int]:
        """The ``count`` largest clusters, largest first."""
        return [int(c) for c in np.argsort(-self.sizes, kind="stable")[:count]]


def _exact_over(xb: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return exact_search(xb, q, k)


def _the_ivf(index: faiss.Index) -> faiss.IndexIVF:
    ivf = ivf_of(index)
    assert ivf is not None, "an IVF index"
    return ivf


def _ivf(x: np.ndarray, nlist: int, seed: int) -> faiss.Index:
    if not 1 <= nlist <= len(x):
        raise ConfigError(f"nlist must be between 1 and the number of vectors ({len(x)}), got {nlist}")
    index = make_index(f"IVF{nlist},Flat", x.shape[1])
    quiet_clustering(index)
    ivf = _the_ivf(index)
    ivf.cp.seed = seed
    index.train(x)
    return index


def ivf_clusters(vectors: np.ndarray, nlist: int, *, seed: int = 0, threads: int | None = 1) -> IVFClusters:
    """Train the coarse quantizer of ``IVF{nlist},Flat`` on ``vectors`` and group the vectors by cluster.

    ``threads``: Faiss threads (see :data:`THREADS_NOTE`).

    Raises:
        ConfigError: If ``nlist`` is not between 1 and the number of vectors.
    """
    x = _as_vectors(vectors)
    with faiss_threads(threads):
        index = _ivf(x, nlist, seed)
        quantizer = _the_ivf(index).quantizer
        scores, lists = quantizer.search(x, 1)
    assignment = lists[:, 0].astype(np.int64)
    centroids = quantizer.reconstruct_n(0, nlist)
    members = []
    for c in range(nlist):
        rows = np.flatnonzero(assignment == c)
        members.append(rows[np.argsort(-scores[rows, 0], kind="stable")])
    return IVFClusters(nlist=nlist, assignment=assignment, centroids=centroids, members=members)


@dataclass
class NprobePoint:
    """An inverted file searched with ``nprobe`` lists, measured.

    Attributes:
        nprobe: Lists visited per query.
        recall: recall@k against exact search.
        latency_ms: Median single-query latency (one thread).
        scanned: Mean fraction of the collection scanned per query.
        k: The k of recall@k.
    """

    nprobe: int
    recall: float
    latency_ms: float
    scanned: float
    k: int


def nprobe_sweep(vectors: np.ndarray, nlist: int, nprobes: Sequence[int] | None = None, *, n_queries: int = 200,
                 latency_queries: int = 50, k: int = 10, seed: int = 0) -> list[NprobePoint]:
    """Recall@k, latency and scanned fraction of ``IVF{nlist},Flat`` for each ``nprobe``.

    Args:
        vectors: ``(n, d)`` database vectors.
        nlist: Coarse clusters.
        nprobes: Values to measure (default: 1, 2, 4, ... up to ``nlist``).
        n_queries: Database vectors used as queries, each excluded from its own results.
        latency_queries: Queries timed one at a time.
        k: The k of recall@k.
        seed: Seed of the clustering and the query sample.
    """
    x = _as_vectors(vectors)
    with faiss_threads(1):
        index = _ivf(x, nlist, seed)
        add_vectors(index, x, np.arange(len(x), dtype=np.int64))
    ivf = _the_ivf(index)
    sizes = np.asarray([ivf.get_list_size(c) for c in range(nlist)], dtype=np.float64)
    if nprobes is None:
        nprobes = sorted({min(nlist, 2 ** i) for i in range(int(math.log2(nlist)) + 2)})
    sample = _sample(x, n_queries, k, seed)
    quantizer = ivf.quantizer
    points = []
    for nprobe in nprobes:
        set_search_params(index, {"nprobe": int(nprobe)})
        found = sample.search(index, sample.k)
        _, probed = quantizer.search(sample.queries, int(nprobe))
        scanned = float(np.mean(sizes[probed].sum(axis=1)) / len(x))
        lat = measure_latency(index.search, sample.queries, sample.k + 1, n_single=latency_queries, threads=1)
        points.append(NprobePoint(nprobe=int(nprobe), recall=recall_at_k(found, sample.truth, sample.k),
                                  latency_ms=lat.median_ms, scanned=scanned, k=sample.k))
    return points


# --------------------------------------------------------------------------- 4. a map of the collection
def project_2d(vectors: np.ndarray, *, method: str = "tsne", pca_dims: int = 50, perplexity: float = 20.0,
               seed: int = 0) -> np.ndarray:
    """Project vectors to 2D: PCA to ``pca_dims`` dimensions, then t-SNE (or PCA's first two components).

    Args:
        vectors: ``(n, d)`` vectors.
        method: ``"tsne"`` (scikit-learn's t-SNE after PCA) or ``"pca"``.
        pca_dims: Dimensions kept by the PCA step.
        perplexity: t-SNE's neighbourhood size (clipped below ``n / 3``).
        seed: Seed.

    t-SNE runs with one thread (see :data:`THREADS_NOTE`). Perplexity 20 and 400 iterations: on 800 real
    photos (MobileNetV2) the map keeps as much of each photo's neighbourhood (:func:`neighbourhood_kept`, 0.46)
    as perplexity 30 and 500 iterations, in half the time.

    Returns:
        float32 ``(n, 2)`` coordinates scaled to ``[0, 1]`` on the longer axis.

    Raises:
        ConfigError: For an unknown method, fewer than 3 vectors, or t-SNE without scikit-learn.
    """
    x = _as_vectors(vectors, at_least=3)
    if method not in ("tsne", "pca"):
        raise ConfigError(f"method must be 'tsne' or 'pca', got {method!r}")
    centred = x - x.mean(axis=0, keepdims=True)
    # PCA by SVD of the centred data (exact, no extra dependency)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    dims = 2 if method == "pca" else max(2, min(pca_dims, len(s)))
    reduced = centred @ vt[:dims].T
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE  # noqa: PLC0415  (heavy, optional: scikit-learn)
        except ImportError as exc:
            raise ConfigError("The t-SNE map needs scikit-learn (pip install scikit-learn); "
                              "or use method='pca'") from exc
        tsne = TSNE(n_components=2, perplexity=float(min(perplexity, (len(x) - 1) / 3)), init="pca",
                    random_state=seed, max_iter=400)
        from threadpoolctl import threadpool_limits  # noqa: PLC0415  (scikit-learn's own dependency)

        # scikit-learn's version notices are not the reader's business; one thread: see THREADS_NOTE
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", FutureWarning)
            reduced = tsne.fit_transform(reduced.astype(np.float32))
    out = reduced[:, :2].astype(np.float64)
    out -= out.min(axis=0)
    span = float(out.max()) or 1.0
    return (out / span).astype(np.float32)


def neighbourhood_kept(vectors: np.ndarray, points: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each vector's ``k`` nearest neighbours (cosine) that are also its ``k`` nearest on the map.

    1.0: the map keeps every neighbourhood; about ``k / n``: no better than chance.
    """
    x = _as_vectors(vectors, at_least=k + 1)
    p = np.ascontiguousarray(points, dtype=np.float32)
    if p.shape != (len(x), 2):
        raise ConfigError(f"points must be ({len(x)}, 2), got {p.shape}")
    _, near = exact_search(x, x, k + 1)
    _, near2d = faiss.knn(p, p, k + 1)
    own = np.arange(len(x))[:, None]
    hits = [len(set(a[a != i]) & set(b[b != i])) for a, b, i in zip(near, near2d, own[:, 0])]
    return float(np.mean(hits) / k)
