"""SIFT extraction: descriptors of every image into one Faiss index, written as a database folder.

:func:`extract_sift` is the one resumable build of :mod:`similar_images.store.build` with a SIFT
"embedder" (:class:`SiftEmbedder`: several descriptors per image) and a writer of the descriptor index
(:class:`SiftDatabaseWriter`): the descriptors are committed in shards, so an interrupted extraction resumes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..._util import io as _io
from ...errors import ConfigError, IndexTrainingError
from ...index import (
    default_search_params,
    index_nbytes,
    make_index,
    min_training_vectors,
    set_search_params,
    write_index,
)
from ...sources.images import DEFAULT_MAX_PIXELS, ImageSource, collect_inputs, load_image
from ...store.build import BuildConfig, CommittedShards, build_database
from ...store.folder import FAILURES, ITEMS, exists_error, prepare_new_database, write_failures, write_items
from ...store.manifest import MANIFEST, Counts, IndexInfo, Manifest

__all__ = [
    "SIFT_DIM",
    "FORMAT",
    "DESCRIPTOR_IMAGES",
    "INDEX",
    "SiftConfig",
    "SiftDatabaseWriter",
    "SiftEmbedder",
    "SiftExtractor",
    "SiftExtractSummary",
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
        shard_size: Images per committed shard of the extraction (the most an interruption can lose).
        verbose: Show a progress bar.
    """

    max_features: int = 200
    root_sift: bool = True
    max_side: int = 640
    factory: str = "Flat"
    train_size: int = 200_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    threads: int | None = None
    shard_size: int = 256
    verbose: bool = True

    def __post_init__(self) -> None:
        for name in ("max_features", "max_side", "train_size", "max_pixels", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_side < 16:
            raise ConfigError(f"max_side must be at least 16 pixels, got {self.max_side}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ConfigError("factory must be a Faiss index_factory string such as 'Flat', 'IVF1024,Flat' or 'HNSW32'")

    def model_info(self) -> dict[str, object]:
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


class SiftEmbedder:
    """The SIFT extractor as an embedder of the one build: an item is an image path, its "vectors" are its
    descriptors (``multi_vector``: ``embed_prepared`` returns them with the count of each image).

    Images are described one at a time in order (``parallel_prepare`` is off: OpenCV runs its own threads).

    Args:
        config: Extraction settings.
    """

    kind = "sift"
    dim = SIFT_DIM
    multi_vector = True
    parallel_prepare = False

    def __init__(self, config: SiftConfig | None = None) -> None:
        self.config = config or SiftConfig()
        self.extractor = SiftExtractor(self.config)

    def info(self) -> dict[str, Any]:
        """The manifest's ``model`` section (also what a resumed build must match)."""
        return self.config.model_info()

    def prepare(self, item: str) -> np.ndarray:
        """The descriptors of one image (see :meth:`SiftExtractor.describe`).

        Raises:
            ImageLoadError: If the image cannot be decoded (the build records it as a failure).
        """
        desc = self.extractor.describe(item)
        if not len(desc):
            logger.info("No SIFT keypoints in %s (flat or tiny image)", item)
        return desc

    def embed_prepared(self, prepared: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """The descriptors of a batch of images, stacked, and how many each image has."""
        rows = [len(d) for d in prepared]
        stacked = np.concatenate(prepared) if prepared else np.zeros((0, SIFT_DIM), np.float32)
        return np.ascontiguousarray(stacked, dtype=np.float32).reshape(-1, SIFT_DIM), rows


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
                f"images gave only {len(data):,}. Use the index 'Flat', a smaller index, or more images."
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
def write_sift_database(
    db: str | os.PathLike[str],
    records: Iterable[tuple[str, np.ndarray]],
    *,
    config: SiftConfig | None = None,
    failures: Sequence[tuple[str, str]] = (),
    extra: dict[str, object] | None = None,
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
    db = prepare_new_database(db, force=force, files=(ITEMS, FAILURES, DESCRIPTOR_IMAGES, INDEX))
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
    """What :func:`extract_sift` did (``resumed_from``: images already done by an interrupted run)."""

    total: int
    extracted: int
    failed: int
    descriptors: int
    seconds: float
    images_per_second: float
    failures: list[tuple[str, str]] = field(default_factory=list)
    resumed_from: int = 0


def extract_sift(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    db_path: str | os.PathLike[str],
    config: SiftConfig | None = None,
    *,
    force: bool = False,
) -> SiftExtractSummary:
    """Extract SIFT descriptors of images into a new SIFT database folder, resumably.

    Unreadable images are skipped and listed in ``failures.csv`` (and in the
    summary); an image without any keypoint (e.g. a flat colour) is kept with
    zero descriptors and counted in the manifest. The descriptors are committed
    in shards of ``config.shard_size`` images (the one build of
    :mod:`similar_images.store.build`): running the same extraction again after
    an interruption resumes it, and the result equals an uninterrupted run's.

    Args:
        inputs: A folder (searched recursively), a file list, or a list of paths.
        db_path: The folder to create (or the interrupted one to resume).
        config: Extraction and index settings.
        force: Replace an existing database at ``db_path`` (and discard an interrupted extraction).

    Raises:
        DatabaseExistsError: If a database exists at ``db_path`` and ``force`` is false.
        InterruptedBuildError: If an interrupted extraction with other settings is found.
        NoInputsError: If no image is found.
    """
    config = config or SiftConfig()
    db = Path(db_path).expanduser()
    if (db / MANIFEST).exists() and not force:
        raise exists_error(db)
    paths = [str(p) for p in collect_inputs(inputs)]
    build = BuildConfig(shard_size=config.shard_size, verbose=config.verbose, unit="img", workers=1)
    summary = build_database(paths, SiftEmbedder(config), db, build, force=force,
                             extra=lambda _s: {"extraction": {**asdict(config), "images": len(paths)}},
                             writer=SiftDatabaseWriter(config))
    descriptors = int(Manifest.load(db, fmt=FORMAT).counts.extra.get("descriptors", 0))
    return SiftExtractSummary(total=summary.total, extracted=summary.embedded, failed=summary.failed,
                              descriptors=descriptors, seconds=summary.seconds,
                              images_per_second=summary.items_per_second, failures=summary.failures,
                              resumed_from=summary.resumed_from)


class SiftDatabaseWriter:
    """Writes a SIFT database from the committed shards of a build (:func:`write_sift_database`)."""

    format = FORMAT

    def __init__(self, config: SiftConfig) -> None:
        self.config = config

    def write(self, db: Path, shards: CommittedShards, failures: list[tuple[str, str]],
              extra: dict[str, Any]) -> None:
        """Stream each image's descriptors into the index, then write the files and the manifest."""
        write_sift_database(db, shards.item_vectors(), config=self.config, failures=failures, extra=extra)
