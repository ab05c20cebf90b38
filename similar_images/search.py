"""Searching with any kind of query.

A query can be a database id (its stored vector is reused, no model run), a
vector, or anything the database's embedder takes
(:meth:`~similar_images.embed.Embedder.coerce_query`): an image path, raw
image bytes, a PIL image or an http(s) URL for an image database, a string
for a text database. Scores are cosine similarities: higher is more similar,
1.0 is identical.

This module works on anything that has the :class:`Searchable` attributes;
:class:`similar_images.store.Database` is the one the package provides, and
its ``search`` methods call the functions here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

import numpy as np

from ._util.http import FetchConfig
from .embed import Embedder
from .errors import ConfigError, QueryError
from .index import DEFAULT_RERANK, exact_search, faiss_threads, merged_search, rerank_exact, set_search_params
from .index.rerank import candidates_for
from .index.types import FaissIndex

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Query", "Searchable", "Match", "Results", "MAX_K", "query_vectors", "search", "search_batch",
           "search_vectors"]

logger = logging.getLogger(__name__)

MAX_K = 10_000
#: Batches up to this size are searched with one Faiss thread (see index.faiss_threads).
SINGLE_THREAD_MAX_QUERIES = 4

Query: TypeAlias = "int | np.integer | np.ndarray | str | os.PathLike[str] | bytes | Image.Image"
"""What a search accepts: a database id, a vector, an image path, image bytes, a PIL image, an http(s) URL, or (text
database) a string (:meth:`Embedder.coerce_query` turns the last ones into an item to embed)."""


class Searchable(Protocol):
    """What a search needs from a database.

    Attributes:
        vectors: ``(n, dim)`` stored L2-normalised vectors, row ``i`` = id ``i`` (a memmap is fine).
        items: Item ``i`` of id ``i`` (path or text).
        removed: Boolean mask over ids: removed items are never returned.
        index: The Faiss index over the ids (``None``: searches are exact, or merged, see ``indexed_part``).
        index_lock: Held while search parameters are changed on the shared index.
        search_defaults: The index's saved search parameters (``nprobe`` ...).
        filtered_ids: Ids still in an index that cannot delete, filtered out of its results.
        embedder: Embeds queries the way the database was built.
        item_key: Key of the item in JSON results (``"path"`` or ``"text"``).

    Optionally, where ``index`` is ``None``, an ``indexed_part`` attribute: an
    :class:`~similar_images.index.IndexedPart` over the first rows (a database still being built); searches
    then use it for those rows and exact search for the rest (:func:`~similar_images.index.merged_search`).
    """

    @property
    def vectors(self) -> np.ndarray: ...
    @property
    def items(self) -> list[str]: ...
    @property
    def removed(self) -> np.ndarray: ...
    @property
    def index(self) -> FaissIndex | None: ...
    @property
    def index_lock(self) -> threading.RLock: ...
    @property
    def search_defaults(self) -> dict[str, int]: ...
    @property
    def filtered_ids(self) -> np.ndarray: ...
    @property
    def embedder(self) -> Embedder: ...
    @property
    def item_key(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def check_id(self, item_id: int) -> int: ...


@dataclass(frozen=True)
class Match:
    """One search result.

    Attributes:
        rank: 1 for the most similar.
        id: Database id.
        score: Cosine similarity (higher is more similar).
        item: Image path (image database) or text (text database).
    """

    rank: int
    id: int
    score: float
    item: str

    @property
    def path(self) -> str:
        return self.item

    @property
    def text(self) -> str:
        return self.item

    def to_dict(self, item_key: str = "path") -> dict[str, object]:
        return {"rank": self.rank, "id": self.id, "score": round(self.score, 6), item_key: self.item}


class Results(list):  # list[Match]
    """The matches of one query, best first, with timing.

    Attributes:
        search_ms: Time of the index search alone, in milliseconds.
        total_ms: Time including embedding the query.
        query_id: Database id of the query, when it was one.
        params: Search parameters used (``exact``, ``nprobe``, ...).
    """

    def __init__(self, matches: Sequence[Match], *, search_ms: float, total_ms: float, query_id: int | None,
                 params: dict[str, object], item_key: str = "path") -> None:
        super().__init__(matches)
        self.search_ms = search_ms
        self.total_ms = total_ms
        self.query_id = query_id
        self.params = params
        self.item_key = item_key

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self]

    @property
    def scores(self) -> list[float]:
        return [m.score for m in self]

    def to_dict(self) -> dict[str, object]:
        return {
            "query_id": self.query_id,
            "search_ms": round(self.search_ms, 3),
            "total_ms": round(self.total_ms, 3),
            "params": self.params,
            "results": [m.to_dict(self.item_key) for m in self],
        }


def _as_vector(db: Searchable, vec: np.ndarray) -> np.ndarray:
    v = np.asarray(vec, dtype=np.float32).reshape(1, -1)
    if v.shape[1] != db.dim:
        raise QueryError(f"Query vector has dimension {v.shape[1]}, the database {db.dim}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        raise QueryError("Query vector is zero or not finite")
    return v / norm


def query_vectors(db: Searchable, queries: Sequence[Query], *,
                  fetch_config: FetchConfig | None = None) -> tuple[np.ndarray, list[int | None]]:
    """Turn queries into normalised vectors (running the model once for all that need it).

    Returns:
        ``(vectors, ids)`` where ``ids[i]`` is the database id of query ``i`` or ``None``.

    Raises:
        QueryError: For an unknown id, an unreachable URL, or an unsupported type.
        ImageLoadError: For an unreadable image.
    """
    vecs: list[np.ndarray | None] = [None] * len(queries)
    ids: list[int | None] = [None] * len(queries)
    to_embed: list[tuple[int, object]] = []
    for i, q in enumerate(queries):
        if isinstance(q, (bool, np.bool_)):
            raise QueryError("A query cannot be a boolean")
        if isinstance(q, (int, np.integer)):
            ids[i] = db.check_id(int(q))
            vecs[i] = np.asarray(db.vectors[ids[i]], dtype=np.float32).reshape(1, -1)
        elif isinstance(q, np.ndarray) and q.dtype.kind == "f":
            vecs[i] = _as_vector(db, q)
        else:
            to_embed.append((i, db.embedder.coerce_query(q, fetch_config=fetch_config)))
    if to_embed:
        embedded = db.embedder.embed([q for _, q in to_embed])
        for (i, _), v in zip(to_embed, embedded):
            vecs[i] = v.reshape(1, -1)
    return np.concatenate(vecs).astype(np.float32), ids  # type: ignore[arg-type]


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise QueryError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return int(k)


def search_vectors(db: Searchable, xq: np.ndarray, k: int, *, exact: bool = False, nprobe: int | None = None,
                   ef_search: int | None = None, k_factor: int | None = None,
                   rerank: int = DEFAULT_RERANK) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Search normalised query vectors; removed items are never returned.

    Args:
        db: The database.
        xq: ``(q, dim)`` normalised query vectors.
        k: Results per query.
        exact: Brute force over the stored vectors instead of the index.
        nprobe, ef_search, k_factor: Index search parameters (default: the database's, or those of the
            ``indexed_part`` of a database still being built).
        rerank: Fetch ``k * rerank`` candidates from the index and re-rank
            them with the stored vectors, so that scores are exact cosine
            similarities (a compressed index's own scores are approximate, and
            PQ's are biased low) and the ranking improves. ``1`` (or ``0``)
            keeps the index's own ranking and scores.

    Returns:
        ``(scores, ids, params)``; rows hold ``k`` results padded with id -1.
    """
    k = _check_k(k)
    if isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0:
        raise QueryError(f"rerank must be a non-negative integer, got {rerank!r}")
    k_eff = min(k, max(len(db), 1))
    threads = 1 if len(xq) <= SINGLE_THREAD_MAX_QUERIES else None
    part = None if exact or db.index is not None else getattr(db, "indexed_part", None)
    if part is not None:  # an index over the first rows, exact search over the newer ones, merged
        overrides = {"nprobe": nprobe, "efSearch": ef_search, "k_factor": k_factor}
        try:
            return merged_search(part, db.vectors, xq, k_eff, exclude=db.removed if db.removed.any() else None,
                                 overrides=overrides, rerank=rerank, threads=threads)
        except ConfigError as exc:
            raise QueryError(str(exc)) from exc
    if exact or db.index is None:
        removed = db.removed if db.removed.any() else None
        with faiss_threads(threads):
            scores, ids = exact_search(db.vectors, xq, k_eff, exclude=removed)
        return scores, ids, {"exact": True}

    filtered = db.filtered_ids
    defaults = dict(db.search_defaults)
    overrides = {"nprobe": nprobe, "efSearch": ef_search, "k_factor": k_factor}
    wanted = {**defaults, **{n: v for n, v in overrides.items() if v is not None}}
    k_index = min(candidates_for(k_eff, rerank), MAX_K)
    with db.index_lock:  # search parameters live on the shared index
        try:
            used = set_search_params(db.index, wanted)
        except ConfigError as exc:
            raise QueryError(str(exc)) from exc
        with faiss_threads(threads):
            scores, ids = db.index.search(np.ascontiguousarray(xq), min(k_index + len(filtered), db.index.ntotal or 1))
        set_search_params(db.index, defaults)
    params: dict[str, object] = {"exact": False, **used}
    if len(filtered):
        keep = ~np.isin(ids, np.asarray(filtered, dtype=np.int64))
        scores = np.stack([np.concatenate([s[m], np.full(len(s), -np.inf)])[:k_index] for s, m in zip(scores, keep)])
        ids = np.stack([np.concatenate([i[m], np.full(len(i), -1)])[:k_index] for i, m in zip(ids, keep)])
    if rerank > 1:
        scores, ids = rerank_exact(db.vectors, xq, ids, k_eff)
        params["rerank"] = int(rerank)
    return scores, ids, params


def _results(db: Searchable, scores: np.ndarray, ids: np.ndarray, *, search_ms: float, total_ms: float,
             query_id: int | None, params: dict[str, object], k: int, exclude_query: bool) -> Results:
    pairs = [(float(s), int(i)) for s, i in zip(scores, ids) if i >= 0 and not (exclude_query and i == query_id)]
    matches = [Match(rank=r + 1, id=i, score=s, item=db.items[i]) for r, (s, i) in enumerate(pairs[:k])]
    return Results(matches, search_ms=search_ms, total_ms=total_ms, query_id=query_id, params=params,
                   item_key=db.item_key)


def search(db: Searchable, query: Query, k: int = 8, *, exact: bool = False, nprobe: int | None = None,
           ef_search: int | None = None, k_factor: int | None = None, rerank: int = DEFAULT_RERANK,
           fetch_config: FetchConfig | None = None, exclude_query: bool = False) -> Results:
    """Find the ``k`` items most similar to ``query``.

    Args:
        db: The database.
        query: A database id, an image path, bytes, a PIL image, an http(s)
            URL, a vector, or (text database) a string.
        k: Number of results (fewer if the database is smaller).
        exact: Brute-force search over the stored vectors instead of the index.
        nprobe: IVF lists to visit (default: the database's).
        ef_search: HNSW search depth (default: the database's).
        k_factor: Re-ranking depth of a refine stage.
        rerank: Index candidates per result re-ranked with the stored vectors,
            so scores are exact cosine similarities; ``1`` keeps the index's
            own ranking and (for compressed indexes, approximate) scores.
        fetch_config: Limits for URL queries.
        exclude_query: When the query is a database id, leave it out of the results (``k`` *other* items).

    Returns:
        :class:`Results`, best first.

    Raises:
        QueryError: For a bad query or parameter.
        ImageLoadError: For an unreadable image.
    """
    t0 = time.perf_counter()
    k = _check_k(k)
    xq, qids = query_vectors(db, [query], fetch_config=fetch_config)
    extra = 1 if exclude_query and qids[0] is not None else 0
    t1 = time.perf_counter()
    scores, ids, params = search_vectors(db, xq, min(k + extra, MAX_K), exact=exact, nprobe=nprobe,
                                         ef_search=ef_search, k_factor=k_factor, rerank=rerank)
    t2 = time.perf_counter()
    return _results(db, scores[0], ids[0], search_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3,
                    query_id=qids[0], params=params, k=k, exclude_query=bool(extra))


def search_batch(db: Searchable, queries: Sequence[Query], k: int = 8, *, exact: bool = False,
                 nprobe: int | None = None, ef_search: int | None = None, k_factor: int | None = None,
                 rerank: int = DEFAULT_RERANK, fetch_config: FetchConfig | None = None) -> list[Results]:
    """Search several queries in one model call and one index call.

    The keywords are :func:`search`'s (a batch has no ``exclude_query``).
    """
    t0 = time.perf_counter()
    k = _check_k(k)
    if not len(queries):
        return []
    xq, qids = query_vectors(db, list(queries), fetch_config=fetch_config)
    t1 = time.perf_counter()
    scores, ids, params = search_vectors(db, xq, k, exact=exact, nprobe=nprobe, ef_search=ef_search,
                                         k_factor=k_factor, rerank=rerank)
    t2 = time.perf_counter()
    per_query = (t2 - t1) * 1e3 / len(queries)
    return [_results(db, s, i, search_ms=per_query, total_ms=(t2 - t0) * 1e3 / len(queries), query_id=q,
                     params=params, k=k, exclude_query=False) for s, i, q in zip(scores, ids, qids)]

