"""Feature extraction of photos that are still arriving: the quick start's background work.

:func:`extract_while_downloading` embeds the COCO photos while their archive downloads
(:class:`~similar_images.sources.coco_stream.ArchiveStream`), then builds the index. The build is the one
resumable build of :mod:`similar_images.store.build`, planned over the archive's photos in archive order;
:class:`~similar_images.engines.arriving.ArrivingEngine` runs each shard once its photos are on disk, so shards
are committed while the rest downloads, and a reader that follows the shards (or the finished database) has
something to search long before the 6.2 GB have arrived.

Stopping it (Ctrl+C, SIGTERM) keeps the partial download, the photos on disk and the committed shards;
running it again resumes all three.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..embed.backends import DEFAULT_CALIBRATION_SIZE
from ..engines.arriving import ArrivingEngine
from ..index import IndexConfig
from ..sources.coco import DownloadConfig
from ..sources.coco_stream import ArchiveStream
from .builders import ExtractConfig, ExtractSummary, extract_features
from .database import Database
from .manifest import MANIFEST, Manifest

__all__ = ["QuickstartSummary", "extract_while_downloading"]

logger = logging.getLogger(__name__)


@dataclass
class QuickstartSummary:
    """What :func:`extract_while_downloading` did.

    Attributes:
        file_list: The photos' file list (as ``download-coco`` writes it).
        extraction: The extraction's summary (``None``: the database was complete already).
        index_built: Whether this run built the index (``False``: it was there already, or not asked for).
    """

    file_list: Path
    extraction: ExtractSummary | None
    index_built: bool


def extract_while_downloading(download: DownloadConfig, db: str | os.PathLike[str], config: ExtractConfig,
                              *, index: IndexConfig | None = None) -> QuickstartSummary:
    """Download an archive of photos, extract their features as they arrive, then build the index.

    The database's items are the archive's photos in archive order (the shards fill in the order the bytes
    arrive). Resumable at every step: the download, the photos on disk and the committed shards are kept when
    it stops, for whatever reason.

    Args:
        download: The archive's address, the folder for it and its photos, and its checks.
        db: The database folder to create (or the interrupted one to resume).
        config: The extraction settings. ``auto`` precision and int8 calibrate on the first photos to arrive.
        index: Settings of the index built at the end; ``None`` builds none.

    Returns:
        The file list, the extraction's summary and whether the index was built.

    Raises:
        DownloadError: If the download fails or the archive is truncated or corrupt (the photos extracted and
            the shards committed before are kept; re-running resumes).
        DatabaseExistsError, DatabaseError: As :func:`~similar_images.store.extract_features`.
    """
    db = Path(db).expanduser()
    with ArchiveStream(download) as stream:
        items = [str(p) for p in stream.items]
        calibration = None
        if not (db / MANIFEST).exists() and (config.precision == "auto" or config.backend == "openvino"):
            n = min(config.calibration_size or DEFAULT_CALIBRATION_SIZE, len(items))
            logger.info("Waiting for the first %d photos to calibrate the precision", n)
            stream.wait_ready(n)
            calibration = items[:n]
        summary = None
        if not (db / MANIFEST).exists():
            engine = ArrivingEngine(stream.wait_ready)
            summary = extract_features(items, db, config, engine=engine, calibration=calibration)
        file_list = stream.finish()
    built = False
    if index is not None and Manifest.load(db).files.get("index") is None:
        logger.info("Building the index of %s", db)
        Database.open(db, load_index=False).build_index(index)
        built = True
    return QuickstartSummary(file_list=file_list, extraction=summary, index_built=built)
