"""Near-duplicate finder: every pair of database images at least ``T`` similar.

The finder never forms an ``N x N`` similarity matrix. It searches the
database vectors against an index over themselves, one batch of queries at a
time, and keeps only the neighbours whose cosine similarity is at least the
threshold ``T``. Three indexes can be used (``DuplicateConfig.index``):

``flat`` (exact, the default)
    ``faiss.IndexFlatIP`` over blocks of at most ``block_size`` database
    vectors, searched with ``range_search(queries, T)``. Every pair with
    similarity >= T is found, each from its lower id only, so memory is
    bounded by the block and by the number of pairs found.

``hnsw`` (approximate, fast on large databases)
    A fresh ``IndexHNSWFlat`` (inner product) built with ``M`` links per node
    and ``efConstruction``. Faiss' HNSW ``range_search`` visits only about
    ``efSearch`` candidates, so it silently drops neighbours of large groups
    (measured: 300 near-identical vectors, efSearch 16 -> 157 of 300 found).
    Instead each batch runs a k-nearest-neighbour search with ``k`` starting
    at ``initial_k``; the queries whose k-th score is still >= T are searched
    again with ``k`` doubled (and ``efSearch >= k``) until the k-th score
    falls below T, every live image is returned, or ``max_k`` is reached
    (those queries are counted as truncated and logged).

``db``
    The database's own saved index (``build-index``): ``range_search`` where
    Faiss supports it (Flat, IVF; PQ scores are approximate), otherwise the
    growing-k search above (HNSW).

Pairs are reported once, ``id_a < id_b``, sorted by similarity (highest
first). Groups are the connected components of the pair graph. Removed
images are excluded.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from .._util import io as _io
from ..errors import ConfigError, IndexNotBuiltError
from ..index import exact_search, make_index, set_search_params, unwrap
from ..index.types import FaissIndex

if TYPE_CHECKING:
    from ..store import Database

__all__ = [
    "INDEX_CHOICES",
    "DuplicateConfig",
    "DuplicateReport",
    "NearestNeighbors",
    "connected_components",
    "find_duplicates",
    "find_duplicate_pairs",
    "nearest_similarities",
    "write_report",
]

logger = logging.getLogger(__name__)

INDEX_CHOICES = ("flat", "hnsw", "db")
PAIRS_CSV = "pairs.csv"
GROUPS_CSV = "groups.csv"
SUMMARY_JSON = "summary.json"


@dataclass
class DuplicateConfig:
    """Settings of the near-duplicate finder.

    Attributes:
        threshold: Minimum cosine similarity of a reported pair (-1 to 1).
        index: ``"flat"`` (exact), ``"hnsw"`` (approximate) or ``"db"`` (the database's own index).
        batch_size: Query vectors per Faiss call.
        block_size: Database vectors per exact (flat) block; bounds memory.
        hnsw_m: HNSW links per node (``M``).
        ef_construction: HNSW build depth (``efConstruction``).
        ef_search: HNSW search depth (``efSearch``); raised to ``k`` when k grows beyond it.
        initial_k: First number of neighbours asked per query in k-NN mode.
        max_k: Largest k in k-NN mode; queries with more neighbours above the threshold are truncated.
    """

    threshold: float = 0.9
    index: str = "flat"
    batch_size: int = 1024
    block_size: int = 65_536
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    initial_k: int = 32
    max_k: int = 4096

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, (int, float)) or not -1.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(
                f"threshold is a cosine similarity between -1 and 1, got {self.threshold!r}; "
                "near-duplicates typically score above 0.9"
            )
        if self.index not in INDEX_CHOICES:
            raise ConfigError(f"index must be one of {', '.join(INDEX_CHOICES)}, got {self.index!r}")
        for name in ("batch_size", "block_size", "hnsw_m", "ef_construction", "ef_search", "initial_k", "max_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.initial_k > self.max_k:
            raise ConfigError(f"initial_k ({self.initial_k}) must not exceed max_k ({self.max_k})")


@dataclass
class DuplicateReport:
    """Pairs of near-duplicate images and their groups.

    Attributes:
        id_a: Lower id of each pair (int64).
        id_b: Higher id of each pair (int64).
        similarity: Cosine similarity of each pair (float32), in descending order.
        groups: Connected components of the pairs, as sorted id lists, largest first.
        config: The settings used.
        n_items: Live images searched.
        seconds: Wall time of the search.
        truncated_queries: Queries whose neighbours above the threshold exceeded ``max_k`` (k-NN mode only).
        method: ``"range_search"`` or ``"knn"`` (growing k).
    """

    id_a: np.ndarray
    id_b: np.ndarray
    similarity: np.ndarray
    groups: list[list[int]]
    config: DuplicateConfig
    n_items: int
    seconds: float
    truncated_queries: int = 0
    method: str = "range_search"
    extra: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.id_a)

    def pair_set(self) -> set[tuple[int, int]]:
        """The pairs as a set of ``(id_a, id_b)`` tuples."""
        return set(zip(self.id_a.tolist(), self.id_b.tolist()))

    def above(self, threshold: float) -> DuplicateReport:
        """The pairs at least ``threshold`` similar (a higher threshold than the report's), regrouped.

        Raises:
            ConfigError: If ``threshold`` is below the report's (those pairs were never searched for).
        """
        if float(threshold) < float(self.config.threshold) - 1e-9:
            raise ConfigError(f"This report holds pairs >= {self.config.threshold}; search again with a threshold "
                             f"of {threshold} or lower")
        mask = self.similarity >= np.float32(threshold)
        a, b, s = self.id_a[mask], self.id_b[mask], self.similarity[mask]
        cfg = DuplicateConfig(**{**asdict(self.config), "threshold": max(float(threshold), -1.0)})
        return DuplicateReport(a, b, s, connected_components(a, b), cfg, self.n_items, self.seconds,
                               self.truncated_queries, self.method, dict(self.extra))

    def summary(self) -> dict[str, object]:
        """Counts and settings, JSON-serialisable."""
        sizes = [len(g) for g in self.groups]
        return {
            "threshold": float(self.config.threshold),
            "index": self.config.index,
            "method": self.method,
            "n_items": self.n_items,
            "n_pairs": len(self),
            "n_groups": len(self.groups),
            "images_in_groups": int(sum(sizes)),
            "largest_group": int(max(sizes, default=0)),
            "truncated_queries": self.truncated_queries,
            "seconds": round(self.seconds, 3),
            "config": asdict(self.config),
            **self.extra,
        }


@dataclass
class NearestNeighbors:
    """Each live image's most similar other image.

    Attributes:
        ids: Live image ids.
        neighbor: Id of the nearest other image (-1 when the database holds a single image).
        similarity: Cosine similarity to it.
    """

    ids: np.ndarray
    neighbor: np.ndarray
    similarity: np.ndarray


# ---------------------------------------------------------------------------- helpers
def _live(db: Database) -> np.ndarray:
    return db.live_ids().astype(np.int64)


def _rows(db: Database, live: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Vectors of live positions ``start:stop`` as a contiguous float32 array."""
    ids = live[start:stop]
    if len(ids) and ids[-1] - ids[0] == len(ids) - 1:  # a contiguous run: slice the memmap
        block = db.vectors[int(ids[0]):int(ids[-1]) + 1]
    else:
        block = db.vectors[ids]
    return np.ascontiguousarray(block, dtype=np.float32)


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _radius(threshold: float) -> float:
    # Faiss keeps inner products strictly above the radius; step just below T to keep scores equal to T.
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def _canonical(a: np.ndarray, b: np.ndarray, s: np.ndarray, n_total: int) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """Order each pair (low id first), drop self-pairs and repeats (keeping the highest score), sort by score."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    s = np.asarray(s, dtype=np.float32)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    lo, hi, s = lo[keep], hi[keep], s[keep]
    if len(lo):
        key = lo * np.int64(max(n_total, 1)) + hi
        order = np.lexsort((-s, key))
        key, lo, hi, s = key[order], lo[order], hi[order], s[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        lo, hi, s = lo[first], hi[first], s[first]
    order = np.lexsort((hi, lo, -s))
    return lo[order], hi[order], s[order]


def connected_components(id_a: np.ndarray, id_b: np.ndarray) -> list[list[int]]:
    """Groups of ids linked by pairs (connected components of the pair graph).

    Args:
        id_a: First id of each pair.
        id_b: Second id of each pair.

    Returns:
        Sorted id lists, largest group first (ties: lowest first id first).
    """
    a = np.asarray(id_a, dtype=np.int64)
    b = np.asarray(id_b, dtype=np.int64)
    if len(a) == 0:
        return []
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ea, eb = inv[: len(a)], inv[len(a):]
    label = np.arange(len(nodes), dtype=np.int64)
    while True:  # min-label propagation with pointer jumping; converges in O(log diameter) rounds
        m = np.minimum(label[ea], label[eb])
        new = label.copy()
        np.minimum.at(new, ea, m)
        np.minimum.at(new, eb, m)
        new = new[new]
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    order = np.argsort(label, kind="stable")
    splits = np.flatnonzero(np.diff(label[order])) + 1
    groups = [sorted(nodes[g].tolist()) for g in np.split(order, splits)]
    groups.sort(key=lambda g: (-len(g), g[0]))
    return groups


# ------------------------------------------------------------------------- searching
def _flat_range_pairs(db: Database, live: np.ndarray, config: DuplicateConfig) -> tuple[list[np.ndarray], ...]:
    """Exact: range_search of every query batch against each block of database vectors (pairs with i < j)."""
    n = len(live)
    radius = _radius(config.threshold)
    out_a: list[np.ndarray] = []
    out_b: list[np.ndarray] = []
    out_s: list[np.ndarray] = []
    for b0, b1 in _batches(n, config.block_size):
        index = faiss.IndexFlatIP(db.dim)
        index.add(_rows(db, live, b0, b1))
        for q0, q1 in _batches(b1, config.batch_size):  # queries at positions < b1 can pair with this block
            lims, scores, rows = index.range_search(_rows(db, live, q0, q1), radius)
            qpos = q0 + np.repeat(np.arange(q1 - q0, dtype=np.int64), np.diff(lims).astype(np.int64))
            dpos = b0 + rows.astype(np.int64)
            keep = (dpos > qpos) & (scores >= np.float32(config.threshold))
            out_a.append(live[qpos[keep]])
            out_b.append(live[dpos[keep]])
            out_s.append(scores[keep])
    return out_a, out_b, out_s


def _index_range_pairs(index: FaissIndex, db: Database, live: np.ndarray,
                       config: DuplicateConfig) -> tuple[list[np.ndarray], ...]:
    """range_search of every query batch against a saved index whose ids are database ids."""
    radius = _radius(config.threshold)
    out_a, out_b, out_s = [], [], []
    for q0, q1 in _batches(len(live), config.batch_size):
        lims, scores, ids = index.range_search(_rows(db, live, q0, q1), radius)
        qid = live[q0 + np.repeat(np.arange(q1 - q0, dtype=np.int64), np.diff(lims).astype(np.int64))]
        keep = (ids >= 0) & (scores >= np.float32(config.threshold))
        out_a.append(qid[keep])
        out_b.append(ids[keep].astype(np.int64))
        out_s.append(scores[keep])
    return out_a, out_b, out_s


def _knn_growing_pairs(index: FaissIndex, db: Database, live: np.ndarray, config: DuplicateConfig,
                       set_k: Callable[[int], None]) -> tuple[tuple[list[np.ndarray], ...], int]:
    """k-NN search with k doubling until the k-th score of every query falls below the threshold."""
    t = np.float32(config.threshold)
    n_index = int(index.ntotal)
    out_a, out_b, out_s = [], [], []
    truncated = 0
    k_cap = min(config.max_k, n_index)
    for q0, q1 in _batches(len(live), config.batch_size):
        pending = np.arange(q0, q1, dtype=np.int64)
        k = min(config.initial_k, k_cap)
        while len(pending):
            set_k(k)
            if len(pending) == q1 - q0:
                xq = _rows(db, live, q0, q1)
            else:
                xq = np.ascontiguousarray(db.vectors[live[pending]], dtype=np.float32)
            scores, ids = index.search(xq, k)
            full = (scores[:, -1] >= t) & (ids[:, -1] >= 0)
            done = ~full if k < k_cap else np.ones(len(pending), dtype=bool)
            if k >= k_cap:
                truncated += int(full.sum()) if k_cap < n_index else 0
            sel_s, sel_i = scores[done], ids[done]
            qid = np.repeat(live[pending[done]], sel_s.shape[1])
            flat_s, flat_i = sel_s.ravel(), sel_i.ravel().astype(np.int64)
            keep = (flat_i >= 0) & (flat_s >= t)
            out_a.append(qid[keep])
            out_b.append(flat_i[keep])
            out_s.append(flat_s[keep])
            pending = pending[~done]
            k = min(k * 2, k_cap)
    if truncated:
        logger.warning("%d images have more than max_k=%d neighbours above %.3f; their lists were cut "
                       "(raise max_k)", truncated, config.max_k, config.threshold)
    return (out_a, out_b, out_s), truncated


def _build_hnsw(db: Database, live: np.ndarray, config: DuplicateConfig) -> tuple[FaissIndex, faiss.IndexHNSW]:
    """A fresh inner-product HNSW index over the live vectors (ids = database ids)."""
    index = make_index(f"HNSW{config.hnsw_m}", db.dim)
    hnsw = next(s for s in unwrap(index) if isinstance(s, faiss.IndexHNSW))
    hnsw.hnsw.efConstruction = config.ef_construction
    for b0, b1 in _batches(len(live), 65_536):
        index.add_with_ids(_rows(db, live, b0, b1), np.ascontiguousarray(live[b0:b1]))
    return index, hnsw


def find_duplicate_pairs(db: Database, config: DuplicateConfig | None = None) -> DuplicateReport:
    """Find every pair of live images whose cosine similarity is at least ``config.threshold``.

    Args:
        db: An image (or text) database.
        config: Threshold, index choice and search settings.

    Returns:
        A :class:`DuplicateReport` (pairs once each, lower id first, highest similarity first; groups).

    Raises:
        IndexNotBuiltError: If ``config.index`` is ``"db"`` and the database has no index.
    """
    config = config or DuplicateConfig()
    live = _live(db)
    t0 = time.perf_counter()
    method = "range_search"
    truncated = 0
    extra: dict[str, object] = {}
    if len(live) < 2:
        parts: tuple[list[np.ndarray], ...] = ([], [], [])
    elif config.index == "flat":
        parts = _flat_range_pairs(db, live, config)
    elif config.index == "hnsw":
        index, hnsw = _build_hnsw(db, live, config)
        extra["build_seconds"] = round(time.perf_counter() - t0, 3)

        def set_ef(k: int) -> None:
            hnsw.hnsw.efSearch = max(config.ef_search, k)

        method = "knn"
        parts, truncated = _knn_growing_pairs(index, db, live, config, set_ef)
    else:
        if db.index is None:
            raise IndexNotBuiltError(db.path, "finding duplicates with its index (index='db')")
        index = db.index
        defaults = db.search_defaults
        extra["db_index"] = db.manifest.index.factory if db.manifest.index else "index"
        hnsw_parts = [s for s in unwrap(index) if isinstance(s, faiss.IndexHNSW)]
        with db.index_lock:
            use_range = not hnsw_parts  # HNSW range_search only visits ~efSearch candidates: use growing k
            if use_range:
                try:
                    parts = _index_range_pairs(index, db, live, config)
                except RuntimeError as exc:  # an index type without range_search
                    logger.info("Index %s has no range_search (%s); using growing-k search", extra["db_index"],
                                str(exc).splitlines()[-1])
                    use_range = False
            if not use_range:
                method = "knn"
                base_ef = int(defaults.get("efSearch", config.ef_search))

                def set_ef_db(k: int) -> None:
                    if hnsw_parts:
                        hnsw_parts[0].hnsw.efSearch = max(base_ef, k)

                try:
                    parts, truncated = _knn_growing_pairs(index, db, live, config, set_ef_db)
                finally:
                    set_search_params(index, defaults)
    a = np.concatenate(parts[0]) if parts[0] else np.zeros(0, np.int64)
    b = np.concatenate(parts[1]) if parts[1] else np.zeros(0, np.int64)
    s = np.concatenate(parts[2]) if parts[2] else np.zeros(0, np.float32)
    if db.removed.any() and len(b):  # indexes that cannot delete (HNSW) still hold removed ids
        ok = ~db.removed[b] & ~db.removed[a]
        a, b, s = a[ok], b[ok], s[ok]
    a, b, s = _canonical(a, b, s, db.ntotal)
    seconds = time.perf_counter() - t0
    groups = connected_components(a, b)
    logger.info("Found %d pairs in %d groups among %d images at similarity >= %.3f (%s, %.2f s)",
                len(a), len(groups), len(live), config.threshold, config.index, seconds)
    return DuplicateReport(a, b, s, groups, config, len(live), seconds, truncated, method, extra)


def find_duplicates(db: Database, config: DuplicateConfig | None = None,
                    out_dir: str | Path | None = None) -> DuplicateReport:
    """Find near-duplicate pairs and, if ``out_dir`` is given, write the CSV report there.

    See :func:`find_duplicate_pairs` and :func:`write_report`.
    """
    report = find_duplicate_pairs(db, config)
    if out_dir is not None:
        write_report(report, db, out_dir)
    return report


def _csv_bytes(header: list[str], rows: Iterator[list[Any]] | list[list[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_report(report: DuplicateReport, db: Database, out_dir: str | Path) -> dict[str, Path]:
    """Atomically write ``pairs.csv``, ``groups.csv`` and ``summary.json`` into ``out_dir``.

    ``pairs.csv`` columns: ``path_a, path_b, similarity, id_a, id_b`` (one row
    per pair, ``id_a < id_b``, highest similarity first). ``groups.csv``
    columns: ``group, size, id, path`` (one row per image of a group; groups
    numbered from 1, largest first).

    Returns:
        The written paths by name (``pairs``, ``groups``, ``summary``).
    """
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    items = db.items
    pairs = _csv_bytes(
        ["path_a", "path_b", "similarity", "id_a", "id_b"],
        [[items[a], items[b], f"{s:.6f}", a, b]
         for a, b, s in zip(report.id_a.tolist(), report.id_b.tolist(), report.similarity.tolist())],
    )
    groups = _csv_bytes(
        ["group", "size", "id", "path"],
        [[g, len(members), i, items[i]] for g, members in enumerate(report.groups, start=1) for i in members],
    )
    paths = {"pairs": out / PAIRS_CSV, "groups": out / GROUPS_CSV, "summary": out / SUMMARY_JSON}
    _io.write_bytes(paths["pairs"], pairs)
    _io.write_bytes(paths["groups"], groups)
    _io.write_json(paths["summary"], {"database": str(db.path), "model": db.model_name, **report.summary()})
    logger.info("Wrote %s and %s", paths["pairs"], paths["groups"])
    return paths


def nearest_similarities(db: Database, *, batch_size: int = 4096) -> NearestNeighbors:
    """Exact similarity of every live image to its most similar other image (for choosing a threshold).

    Runs a blocked brute-force 2-NN search (no ``N x N`` matrix).
    """
    live = _live(db)
    n = len(live)
    neighbor = np.full(n, -1, dtype=np.int64)
    sims = np.full(n, np.nan, dtype=np.float32)
    exclude = db.removed if db.removed.any() else None
    for q0, q1 in _batches(n, batch_size):
        if n < 2:
            break
        scores, ids = exact_search(db.vectors, _rows(db, live, q0, q1), 2, exclude=exclude)
        own = live[q0:q1]
        first_is_self = ids[:, 0] == own
        neighbor[q0:q1] = np.where(first_is_self, ids[:, 1], ids[:, 0])
        sims[q0:q1] = np.where(first_is_self, scores[:, 1], scores[:, 0])
    return NearestNeighbors(ids=live, neighbor=neighbor, similarity=sims)
