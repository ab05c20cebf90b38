"""SIFT search: each query descriptor votes for the images of its nearest database descriptors."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DatabaseCorruptError, QueryError
from ...index import read_index, set_search_params
from ...index.types import FaissIndex
from ...search import Match, Results
from ...sources.images import ImageSource
from ...store.folder import read_failures, read_items
from ...store.manifest import Manifest
from .extract import FORMAT, SIFT_DIM, SiftConfig, SiftExtractor

__all__ = ["MAX_K", "count_votes", "SiftMatch", "SiftResults", "SiftDatabase"]

logger = logging.getLogger(__name__)

MAX_K = 10_000


def count_votes(neighbor_images: np.ndarray, distances: np.ndarray, n_images: int, *,
                ratio: float | None = None) -> np.ndarray:
    """Votes per image from the nearest database descriptors of each query descriptor.

    Args:
        neighbor_images: ``(q, knn)`` image id of each neighbour, nearest first; -1 for none.
        distances: ``(q, knn)`` squared L2 distances (as Faiss returns them).
        n_images: Number of database images (length of the result).
        ratio: Lowe ratio (e.g. 0.8). ``None``: every distinct image among a query descriptor's
            ``knn`` neighbours gets one vote. Otherwise only the nearest neighbour's image, and only if
            ``d1 < ratio * d2`` where ``d2`` is the distance of the nearest descriptor of another image
            (accepted when all neighbours belong to the same image).

    Returns:
        int64 array of length ``n_images``.
    """
    nbr = np.asarray(neighbor_images, dtype=np.int64)
    if nbr.ndim != 2:
        raise ValueError(f"neighbor_images must be 2-d (queries x knn), got shape {nbr.shape}")
    if nbr.size == 0:
        return np.zeros(n_images, dtype=np.int64)
    if ratio is None:
        s = np.sort(nbr, axis=1)
        first = np.ones_like(s, dtype=bool)
        first[:, 1:] = s[:, 1:] != s[:, :-1]
        voted = s[first & (s >= 0)]
        return np.bincount(voted, minlength=n_images).astype(np.int64)[:n_images]
    if not 0 < ratio <= 1:
        raise ConfigError(f"ratio must be in (0, 1], e.g. 0.8, got {ratio}")
    dist = np.sqrt(np.maximum(np.asarray(distances, dtype=np.float64), 0.0))
    first = nbr[:, 0]
    other = (nbr != first[:, None]) & (nbr >= 0)
    has_other = other.any(axis=1)
    j = np.argmax(other, axis=1)
    d1 = dist[:, 0]
    d2 = dist[np.arange(len(nbr)), j]
    accept = (first >= 0) & (~has_other | (d1 < ratio * d2))
    return np.bincount(first[accept], minlength=n_images).astype(np.int64)[:n_images]


@dataclass(frozen=True)
class SiftMatch(Match):
    """One SIFT search result: a :class:`~similar_images.search.Match` whose score is the fraction of the query's
    descriptors that voted for the image.

    Attributes:
        votes: Query descriptors matched to this image.
    """

    votes: int = 0

    @property
    def fraction(self) -> float:
        """``votes`` divided by the number of query descriptors (the score)."""
        return self.score

    def to_dict(self, item_key: str = "path") -> dict[str, object]:
        return {"rank": self.rank, "id": self.id, "votes": self.votes, "fraction": round(self.score, 6),
                item_key: self.item}


class SiftResults(Results):
    """Results of :meth:`SiftDatabase.search`, most votes first, with timings and parameters.

    Attributes:
        n_descriptors: Descriptors of the query image.
    """

    def __init__(self, matches: Iterable[SiftMatch], *, n_descriptors: int, search_ms: float, total_ms: float,
                 params: dict[str, object]) -> None:
        super().__init__(list(matches), search_ms=search_ms, total_ms=total_ms, query_id=None, params=params)
        self.n_descriptors = n_descriptors

    def to_dict(self) -> dict[str, object]:
        return {"n_descriptors": self.n_descriptors, **super().to_dict()}


class SiftDatabase:
    """A SIFT database folder written by :func:`extract_sift`.

    Example:
        >>> sdb = SiftDatabase.open("photos-sift")        # doctest: +SKIP
        >>> for m in sdb.search("query.jpg", k=5):        # doctest: +SKIP
        ...     print(m.rank, m.votes, m.path)
    """

    def __init__(self, path: Path, manifest: Manifest, items: list[str], image_ids: np.ndarray,
                 index: FaissIndex) -> None:
        self.path = path
        self.manifest = manifest
        self.items = items
        self.image_ids = image_ids
        self.index = index
        self._extractor: SiftExtractor | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SiftDatabase:
        """Open and check a SIFT database folder.

        Raises:
            DatabaseError: If the folder is not a complete, consistent SIFT database.
        """
        db = Path(path).expanduser()
        manifest = Manifest.load(db, fmt=FORMAT)
        files, counts = manifest.files, manifest.counts
        n_desc = int(counts.extra.get("descriptors", counts.indexed))
        rebuild = "; rebuild the SIFT database"
        for name in ("items", "descriptor_images", "index"):
            if not (db / str(files[name])).exists():
                raise DatabaseCorruptError(f"{db / str(files[name])} is missing{rebuild}")
        items = read_items(db / str(files["items"]), counts.items, "path")
        try:
            image_ids = np.load(db / str(files["descriptor_images"]), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DatabaseCorruptError(f"{db / str(files['descriptor_images'])} cannot be read ({exc}){rebuild}"
                                       ) from None
        if image_ids.ndim != 1 or image_ids.dtype.kind != "i" or len(image_ids) != n_desc:
            raise DatabaseCorruptError(f"{db / str(files['descriptor_images'])} does not hold {n_desc} image ids"
                                       f"{rebuild}")
        if len(image_ids) and (image_ids.min() < 0 or image_ids.max() >= len(items)):
            raise DatabaseCorruptError(f"{db / str(files['descriptor_images'])} names images outside "
                                       f"0..{len(items) - 1}{rebuild}")
        try:
            index = read_index(db / str(files["index"]))
        except RuntimeError as exc:
            raise DatabaseCorruptError(f"{db / str(files['index'])} cannot be read "
                                       f"({str(exc).splitlines()[-1][:120]}){rebuild}") from None
        if index.d != SIFT_DIM or index.ntotal != len(image_ids):
            raise DatabaseCorruptError(f"The descriptor index holds {index.ntotal} {index.d}-d vectors, expected "
                                       f"{len(image_ids)} {SIFT_DIM}-d ones{rebuild}")
        set_search_params(index, manifest.index.search_params if manifest.index else {})
        return cls(db, manifest, items, image_ids, index)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        factory = self.manifest.index.factory if self.manifest.index else "no index"
        return f"SiftDatabase({str(self.path)!r}, {len(self)} images, {len(self.image_ids)} descriptors, {factory})"

    @property
    def failures(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the inputs that could not be read."""
        return read_failures(self.path / str(self.manifest.files["failures"]))

    @property
    def descriptor_counts(self) -> np.ndarray:
        """Number of descriptors of each image."""
        return np.bincount(self.image_ids, minlength=len(self.items))

    @property
    def config(self) -> SiftConfig:
        """The extraction settings recorded in the manifest."""
        m = self.manifest.model
        factory = self.manifest.index.factory if self.manifest.index else "Flat"
        return SiftConfig(max_features=int(m["max_features"]), root_sift=bool(m["root_sift"]),
                          max_side=int(m["max_side"]), factory=factory, verbose=False)

    @property
    def extractor(self) -> SiftExtractor:
        """Describes queries the way the database was built."""
        if self._extractor is None:
            self._extractor = SiftExtractor(self.config)
        return self._extractor

    def search(self, query: ImageSource, k: int = 10, *, knn: int = 5, ratio: float | None = None,
               exclude: int | None = None, ef_search: int | None = None, nprobe: int | None = None) -> SiftResults:
        """Rank database images by the votes of the query's SIFT descriptors.

        Args:
            query: An image path, bytes, file object or PIL image.
            k: Number of images returned (only images with at least one vote).
            knn: Nearest database descriptors looked up per query descriptor.
            ratio: Lowe ratio test (e.g. 0.8); ``None`` disables it (see :func:`count_votes`).
            exclude: An image id to leave out (e.g. the query's own id); the ``knn`` neighbours are then
                taken among the other images' descriptors.
            ef_search: HNSW search depth, for an HNSW descriptor index.
            nprobe: IVF lists visited, for an IVF descriptor index.

        Raises:
            QueryError: For a missing file, bad parameters, or a query without keypoints.
            ImageLoadError: If the query image cannot be decoded.
        """
        t0 = time.perf_counter()
        if isinstance(query, (str, os.PathLike)) and not Path(query).expanduser().exists():
            raise QueryError(f"No such image file: {query}")
        desc = self.extractor.describe(Path(query).expanduser() if isinstance(query, (str, os.PathLike)) else query)
        if not len(desc):
            raise QueryError("The query image has no SIFT keypoints (a flat or tiny image); use a textured photo")
        res = self.search_descriptors(desc, k, knn=knn, ratio=ratio, exclude=exclude, ef_search=ef_search,
                                      nprobe=nprobe)
        res.total_ms = (time.perf_counter() - t0) * 1e3
        return res

    def search_descriptors(self, desc: np.ndarray, k: int = 10, *, knn: int = 5, ratio: float | None = None,
                           exclude: int | None = None, ef_search: int | None = None,
                           nprobe: int | None = None) -> SiftResults:
        """Like :meth:`search`, for already computed (and normalised) descriptors."""
        for name, value in (("k", k), ("knn", knn)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_K:
                raise QueryError(f"{name} must be an integer from 1 to {MAX_K}, got {value!r}")
        if ratio is not None and not 0 < ratio <= 1:
            raise QueryError(f"ratio must be in (0, 1], e.g. 0.8, got {ratio}")
        if ratio is not None and knn < 2:
            raise QueryError("The ratio test needs knn >= 2")
        t0 = time.perf_counter()
        desc = np.ascontiguousarray(desc, dtype=np.float32).reshape(-1, SIFT_DIM)
        knn_eff = min(int(knn), max(int(self.index.ntotal), 1))
        defaults = dict(self.manifest.index.search_params) if self.manifest.index else {}
        wanted = {**defaults, **{n: v for n, v in (("efSearch", ef_search), ("nprobe", nprobe)) if v is not None}}
        try:
            used = set_search_params(self.index, wanted)
        except ConfigError as exc:
            raise QueryError(str(exc)) from exc
        n_excluded = 0
        if exclude is not None:  # look further, so that knn neighbours of other images remain
            if not 0 <= int(exclude) < len(self.items):
                raise QueryError(f"exclude must be an image id from 0 to {len(self.items) - 1}, got {exclude}")
            n_excluded = int(np.count_nonzero(self.image_ids == int(exclude)))
        dist, ids = self.index.search(desc, min(knn_eff + n_excluded, max(int(self.index.ntotal), 1)))
        set_search_params(self.index, defaults)
        nbr = np.where(ids >= 0, self.image_ids[np.maximum(ids, 0)], -1)
        if exclude is not None:
            nbr = np.where(nbr == int(exclude), -1, nbr)
            order = np.argsort(nbr < 0, axis=1, kind="stable")  # keep the rest in distance order
            nbr = np.take_along_axis(nbr, order, axis=1)[:, :knn_eff]
            dist = np.take_along_axis(dist, order, axis=1)[:, :knn_eff]
        votes = count_votes(nbr, dist, len(self.items), ratio=ratio)
        hit = np.flatnonzero(votes)
        top = hit[np.lexsort((hit, -votes[hit]))][: int(k)]
        t1 = time.perf_counter()
        n = len(desc)
        matches = [SiftMatch(rank=r + 1, id=int(i), score=float(votes[i]) / n, item=self.items[int(i)],
                             votes=int(votes[i])) for r, i in enumerate(top)]
        params: dict[str, object] = {"knn": int(knn), "ratio": ratio, **used}
        ms = (t1 - t0) * 1e3
        return SiftResults(matches, n_descriptors=n, search_ms=ms, total_ms=ms, params=params)
