"""SIFT local features: descriptor extraction, one Faiss index of all descriptors, search by votes.

Each image yields up to ``max_features`` 128-d OpenCV SIFT descriptors (the
strongest keypoints), optionally RootSIFT-normalised (L1-normalise, then
square root: the Hellinger kernel, usually better for matching). All
descriptors of all images go into one Faiss index (L2 metric) whose ids are
descriptor numbers; ``descriptor_images.npy`` maps each descriptor number to
the id of its image.

A query image is described the same way; each of its descriptors looks up its
``knn`` nearest database descriptors, and every image found gets one vote per
query descriptor. Images are ranked by votes (matches). With the Lowe ratio
test (``ratio``), a query descriptor votes only for the image of its nearest
neighbour, and only if that neighbour is clearly closer than the nearest
descriptor of any *other* image (``d1 < ratio * d2``); comparing with another
image rather than with the second neighbour keeps matches when an image has
repeated structure.

Layout of a SIFT database folder (no pickle anywhere)::

    manifest.json           format, model "sift" and its settings, counts, versions (the commit point)
    items.jsonl             {"id": i, "path": ...} per image
    failures.csv            path, reason of the files that could not be read
    descriptor_images.npy   int32, image id of each descriptor (descriptor id = row)
    descriptors.faiss       the Faiss index of all descriptors (ids = descriptor ids)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .._util import io as _io
from ..errors import (
    ConfigError,
    DatabaseCorruptError,
    DatabaseExistsError,
    ImageLoadError,
    IndexTrainingError,
    QueryError,
)
from ..index import (
    default_search_params,
    index_nbytes,
    make_index,
    min_training_vectors,
    read_index,
    set_search_params,
    write_index,
)
from ..search import Match, Results
from ..sources.images import DEFAULT_MAX_PIXELS, ImageSource, collect_inputs, load_image
from ..store.folder import FAILURES, ITEMS, read_failures, read_items, write_failures, write_items
from ..store.locking import database_lock
from ..store.manifest import MANIFEST, Counts, IndexInfo, Manifest

__all__ = [
    "SIFT_DIM",
    "SiftConfig",
    "SiftExtractor",
    "SiftExtractSummary",
    "SiftMatch",
    "SiftResults",
    "SiftDatabase",
    "count_votes",
    "root_sift",
    "extract_sift",
    "write_sift_database",
]

logger = logging.getLogger(__name__)

SIFT_DIM = 128
#: ``format`` of a SIFT database's manifest.
FORMAT = "similar-images-sift"
DESCRIPTOR_IMAGES = "descriptor_images.npy"
INDEX = "descriptors.faiss"
MAX_K = 10_000


def _cv2() -> Any:
    try:
        import cv2  # noqa: PLC0415  (heavy: OpenCV)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("SIFT needs OpenCV: pip install opencv-python-headless") from exc
    return cv2


@dataclass
class SiftConfig:
    """Settings of SIFT extraction and of its descriptor index.

    Attributes:
        max_features: Most descriptors kept per image (the strongest keypoints).
        root_sift: Apply RootSIFT normalisation (L1, then square root).
        max_side: Images are downscaled so that their longer side is at most this (speed, scale normalisation).
        factory: Faiss ``index_factory`` string for the descriptor index (L2 metric): ``"Flat"``
            (exact), or e.g. ``"IVF1024,Flat"`` / ``"HNSW32"`` for millions of descriptors.
        train_size: Descriptors used to train an index that needs training.
        max_pixels: Decompression-bomb guard for decoded images.
        threads: OpenCV threads (``None``: OpenCV's default).
        verbose: Show a progress bar.
    """

    max_features: int = 200
    root_sift: bool = True
    max_side: int = 640
    factory: str = "Flat"
    train_size: int = 200_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    threads: int | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        for name in ("max_features", "max_side", "train_size", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_side < 16:
            raise ConfigError(f"max_side must be at least 16 pixels, got {self.max_side}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ConfigError("factory must be a Faiss index_factory string such as 'Flat', 'IVF1024,Flat' or 'HNSW32'")

    def model_info(self) -> dict[str, Any]:
        """The ``model`` section of the manifest."""
        return {"name": "sift", "dim": SIFT_DIM, "max_features": self.max_features, "root_sift": self.root_sift,
                "max_side": self.max_side}


class SiftExtractor:
    """Computes SIFT descriptors of images with OpenCV (imported on first use).

    Args:
        config: Extraction settings (``max_features``, ``root_sift``, ``max_side``, ``max_pixels``).
    """

    def __init__(self, config: SiftConfig | None = None) -> None:
        self.config = config or SiftConfig()
        self._sift: Any = None

    @property
    def sift(self) -> Any:
        """The OpenCV SIFT detector, created on first use."""
        if self._sift is None:
            cv2 = _cv2()
            if self.config.threads is not None:
                cv2.setNumThreads(self.config.threads)
            self._sift = cv2.SIFT_create(nfeatures=self.config.max_features)
        return self._sift

    def gray(self, source: ImageSource) -> np.ndarray:
        """Decode an image (with :func:`~similar_images.sources.images.load_image`) to a uint8 grayscale array,
        downscaled to at most ``max_side`` pixels on its longer side."""
        side = self.config.max_side
        img = load_image(source, max_pixels=self.config.max_pixels, draft_size=(side, side))
        w, h = img.size
        if max(w, h) > side:
            scale = side / max(w, h)
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR,
                             reducing_gap=3.0)
        return np.asarray(img.convert("L"), dtype=np.uint8)

    def describe(self, source: ImageSource) -> np.ndarray:
        """SIFT descriptors of one image.

        Returns:
            float32 ``(n, 128)`` with ``n <= max_features`` (strongest keypoints first); ``n`` may be 0
            for a flat image.

        Raises:
            ImageLoadError: If the image cannot be decoded.
        """
        gray = self.gray(source)
        keypoints, desc = self.sift.detectAndCompute(gray, None)
        if desc is None or len(keypoints) == 0:
            return np.zeros((0, SIFT_DIM), dtype=np.float32)
        desc = np.asarray(desc, dtype=np.float32)
        if len(desc) > self.config.max_features:  # OpenCV may keep a few extra (ties, several orientations)
            order = np.argsort([-kp.response for kp in keypoints], kind="stable")[: self.config.max_features]
            desc = desc[np.sort(order)]
        if self.config.root_sift:
            desc = root_sift(desc)
        return np.ascontiguousarray(desc, dtype=np.float32)


def root_sift(desc: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalise each descriptor and take the element-wise square root (unit L2 norm)."""
    desc = np.maximum(np.asarray(desc, dtype=np.float32), 0)
    l1 = desc.sum(axis=1, keepdims=True)
    return np.sqrt(desc / np.maximum(l1, 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------- index
class _IndexBuilder:
    """Adds descriptors to a Faiss index as they come; buffers the first ones if the index needs training."""

    def __init__(self, factory: str, train_size: int) -> None:
        self.factory = factory
        self.index = make_index(factory, SIFT_DIM, metric="l2")
        self.train_size = train_size
        self.need = min_training_vectors(self.index)
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.ntotal = 0
        self.n_train = 0

    def _add(self, desc: np.ndarray, first_id: int) -> None:
        ids = np.arange(first_id, first_id + len(desc), dtype=np.int64)
        self.index.add_with_ids(np.ascontiguousarray(desc, dtype=np.float32), ids)

    def _train_and_flush(self) -> None:
        data = np.concatenate(self.buffer) if self.buffer else np.zeros((0, SIFT_DIM), np.float32)
        if len(data) < max(self.need, 1):
            raise IndexTrainingError(
                f"Descriptor index {self.factory!r} needs at least {self.need:,} training descriptors, but the "
                f"images gave only {len(data):,}. Use --index Flat, a smaller index, or more images."
            )
        rng = np.random.default_rng(0)
        sample = data if len(data) <= self.train_size else data[np.sort(rng.choice(len(data), self.train_size,
                                                                                     replace=False))]
        logger.info("Training %s on %d descriptors", self.factory, len(sample))
        self.index.train(np.ascontiguousarray(sample))
        self.n_train = len(sample)
        first = self.ntotal - len(data)
        for start in range(0, len(data), 65_536):
            self._add(data[start:start + 65_536], first + start)
        self.buffer, self.buffered = [], 0

    def add(self, desc: np.ndarray) -> None:
        first = self.ntotal
        self.ntotal += len(desc)
        if self.index.is_trained:
            if len(desc):
                self._add(desc, first)
            return
        self.buffer.append(desc)
        self.buffered += len(desc)
        if self.buffered >= self.train_size:
            self._train_and_flush()

    def finish(self) -> Any:
        if not self.index.is_trained:
            self._train_and_flush()
        set_search_params(self.index, default_search_params(self.index))
        return self.index


# -------------------------------------------------------------------------- database
def _remove_files(db: Path) -> None:
    (db / MANIFEST).unlink(missing_ok=True)  # the commit point goes first
    for name in (ITEMS, FAILURES, DESCRIPTOR_IMAGES, INDEX):
        (db / name).unlink(missing_ok=True)


def write_sift_database(
    db: str | os.PathLike[str],
    records: Iterable[tuple[str, np.ndarray]],
    *,
    config: SiftConfig | None = None,
    failures: Sequence[tuple[str, str]] = (),
    extra: dict[str, Any] | None = None,
    force: bool = False,
) -> Manifest:
    """Write a SIFT database from ``(path, descriptors)`` records, streamed.

    Every file is written atomically and the manifest last, so an
    interrupted run never leaves a database that opens.

    Args:
        db: Folder to write.
        records: ``(path, float32 (n, 128) descriptors)`` per image, in id order.
        config: Settings recorded in the manifest (and the index factory).
        failures: ``(path, reason)`` of unreadable inputs; read after ``records`` is exhausted,
            so a generator may append to it.
        extra: More manifest sections.
        force: Replace an existing database.

    Returns:
        The manifest.

    Raises:
        DatabaseExistsError: If a database exists at ``db`` and ``force`` is false.
        ValueError: If descriptors do not have 128 columns.
        IndexTrainingError: If the index needs more training descriptors than there are.
    """
    config = config or SiftConfig()
    db = Path(db).expanduser()
    if (db / MANIFEST).exists():
        if not force:
            raise DatabaseExistsError(f"A database already exists at {db}; pass --force (force=True) to replace it")
        _remove_files(db)
    db.mkdir(parents=True, exist_ok=True)
    builder = _IndexBuilder(config.factory, config.train_size)
    items: list[str] = []
    owners: list[np.ndarray] = []
    for path, desc in records:
        desc = np.asarray(desc, dtype=np.float32).reshape(-1, SIFT_DIM) if np.size(desc) else np.zeros(
            (0, SIFT_DIM), np.float32)
        if desc.ndim != 2 or desc.shape[1] != SIFT_DIM:
            raise ValueError(f"Descriptors of {path} have shape {desc.shape}, expected (n, {SIFT_DIM})")
        owners.append(np.full(len(desc), len(items), dtype=np.int32))
        items.append(str(path))
        builder.add(desc)
    index = builder.finish()
    image_ids = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int32)
    failures = list(failures)
    write_index(index, db / INDEX)
    with _io.atomic_path(db / DESCRIPTOR_IMAGES) as tmp, open(tmp, "wb") as fh:
        np.save(fh, image_ids, allow_pickle=False)
    write_items(db / ITEMS, "path", items)
    write_failures(db / FAILURES, failures)
    counts = Counts(items=len(items), failed=len(failures), indexed=int(len(image_ids)),
                    extra={"descriptors": int(len(image_ids)),
                           "images_without_descriptors": int(len(items) - len(np.unique(image_ids)))})
    manifest = Manifest(
        kind="sift", model=config.model_info(), metric="l2", normalized=bool(config.root_sift), format=FORMAT,
        files={"items": ITEMS, "failures": FAILURES, "descriptor_images": DESCRIPTOR_IMAGES, "index": INDEX},
        counts=counts,
        index=IndexInfo(factory=config.factory, search_params=default_search_params(index),
                        figures={"n_train": builder.n_train, "index_bytes": index_nbytes(index)}),
        extra=dict(extra or {}),
    )
    manifest.save(db)
    logger.info("Wrote SIFT database %s: %d images, %d descriptors, %d failures", db, len(items), len(image_ids),
                len(failures))
    return manifest


@dataclass
class SiftExtractSummary:
    """What :func:`extract_sift` did."""

    total: int
    extracted: int
    failed: int
    descriptors: int
    seconds: float
    images_per_second: float
    failures: list[tuple[str, str]] = field(default_factory=list)


def extract_sift(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    db_path: str | os.PathLike[str],
    config: SiftConfig | None = None,
    *,
    force: bool = False,
) -> SiftExtractSummary:
    """Extract SIFT descriptors of images into a new SIFT database folder.

    Unreadable images are skipped and listed in ``failures.csv`` (and in the
    summary); an image without any keypoint (e.g. a flat colour) is kept with
    zero descriptors and counted in the manifest. Not resumable: an
    interrupted run leaves no manifest, so run it again.

    Args:
        inputs: A folder (searched recursively), a file list, or a list of paths.
        db_path: The folder to create.
        config: Extraction and index settings.
        force: Replace an existing database at ``db_path``.

    Raises:
        DatabaseExistsError: If a database exists at ``db_path`` and ``force`` is false.
        NoInputsError: If no image is found.
    """
    config = config or SiftConfig()
    db = Path(db_path).expanduser()
    if (db / MANIFEST).exists() and not force:
        raise DatabaseExistsError(
            f"A database already exists at {db}. Choose another folder, or pass --force (force=True) to replace it."
        )
    paths = collect_inputs(inputs)
    extractor = SiftExtractor(config)
    failures: list[tuple[str, str]] = []
    counts = {"ok": 0, "descriptors": 0}

    def records() -> Iterator[tuple[str, np.ndarray]]:
        for p in tqdm(paths, unit="img", desc="extract sift", disable=not config.verbose):
            try:
                desc = extractor.describe(p)
            except ImageLoadError as exc:
                logger.debug("Skipping %s: %s", p, exc)
                failures.append((str(p), str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - one bad file must not abort the run
                failures.append((str(p), f"{exc.__class__.__name__}: {exc}"))
                continue
            if not len(desc):
                logger.info("No SIFT keypoints in %s (flat or tiny image)", p)
            counts["ok"] += 1
            counts["descriptors"] += len(desc)
            yield str(p), desc

    t0 = time.perf_counter()
    db.mkdir(parents=True, exist_ok=True)
    with database_lock(db):
        write_sift_database(db, records(), config=config, failures=failures, force=force,
                            extra={"extraction": {**asdict(config), "images": len(paths)}})
    seconds = time.perf_counter() - t0
    if failures:
        logger.warning("%d of %d images could not be read; see %s", len(failures), len(paths), db / FAILURES)
    return SiftExtractSummary(total=len(paths), extracted=counts["ok"], failed=len(failures),
                              descriptors=counts["descriptors"], seconds=seconds,
                              images_per_second=len(paths) / seconds if seconds > 0 else 0.0, failures=failures)


# ---------------------------------------------------------------------------- search
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

    def to_dict(self, item_key: str = "path") -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "votes": self.votes, "fraction": round(self.score, 6),
                item_key: self.item}


class SiftResults(Results):
    """Results of :meth:`SiftDatabase.search`, most votes first, with timings and parameters.

    Attributes:
        n_descriptors: Descriptors of the query image.
    """

    def __init__(self, matches: Iterable[SiftMatch], *, n_descriptors: int, search_ms: float, total_ms: float,
                 params: dict[str, Any]) -> None:
        super().__init__(list(matches), search_ms=search_ms, total_ms=total_ms, query_id=None, params=params)
        self.n_descriptors = n_descriptors

    def to_dict(self) -> dict[str, Any]:
        return {"n_descriptors": self.n_descriptors, **super().to_dict()}


class SiftDatabase:
    """A SIFT database folder written by :func:`extract_sift`.

    Example:
        >>> sdb = SiftDatabase.open("photos-sift")        # doctest: +SKIP
        >>> for m in sdb.search("query.jpg", k=5):        # doctest: +SKIP
        ...     print(m.rank, m.votes, m.path)
    """

    def __init__(self, path: Path, manifest: Manifest, items: list[str], image_ids: np.ndarray,
                 index: Any) -> None:
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
        manifest = Manifest.load(db, fmt=FORMAT, build_hint=f" Build one with:\n  similar-images sift extract "
                                 f"IMAGES_FOLDER {db}")
        files, counts = manifest.files, manifest.counts
        n_desc = int(counts.extra.get("descriptors", counts.indexed))
        rebuild = "; rebuild the SIFT database with --force"
        for name in ("items", "descriptor_images", "index"):
            if not (db / str(files[name])).exists():
                raise DatabaseCorruptError(f"{db / str(files[name])} is missing{rebuild}")
        items = read_items(db / str(files["items"]), counts.items, "path")
        try:
            image_ids = np.load(db / str(files["descriptor_images"]), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DatabaseCorruptError(f"{db / str(files['descriptor_images'])} cannot be read ({exc}){rebuild}") from None
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
        params = {"knn": int(knn), "ratio": ratio, **used}
        ms = (t1 - t0) * 1e3
        return SiftResults(matches, n_descriptors=n, search_ms=ms, total_ms=ms, params=params)
