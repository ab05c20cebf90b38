"""The MS-COCO 2014 validation photos: download, check, extract, list.

The pipeline behind ``similar-images download-coco`` and
``data_scripts/get_ms_coco_dataset.sh``:

1. :func:`~similar_images._util.http.download_file` fetches the archive into
   ``<name>.part``, resuming a partial file with an HTTP ``Range`` request, and
   renames it into place only when every byte has arrived.
2. :func:`~similar_images._util.archives.verify_zip` reads every member and
   checks its CRC-32 (like ``unzip -t``), plus the member count.
3. :func:`~similar_images._util.archives.extract_zip` refuses unsafe member
   names and extracts all or nothing.
4. :func:`write_file_list` writes one absolute image path per line, atomically.

:func:`download_coco_val2014` runs the four steps and skips any step whose
result is already on disk, so running it twice does no work twice.
Every failure raises :class:`~similar_images.errors.DownloadError` with a
message that says what to do next.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .._util.archives import EXTRACTED_MARKER, common_top_folder, extract_zip, move_aside, verify_zip
from .._util.download import download_file
from .._util.http import check_url
from .._util.io import atomic_path
from .._util.locks import LockTimeoutError, file_lock
from .._util.progress import byte_progress
from ..errors import BadURLError, ConfigError, DownloadError, NoInputsError
from .images import find_images

__all__ = [
    "COCO_VAL2014_URL",
    "COCO_VAL2014_IMAGES",
    "EXTRACTED_MARKER",
    "LOCAL_IMAGES_HINT",
    "DownloadConfig",
    "write_file_list",
    "download_coco_val2014",
]

logger = logging.getLogger(__name__)

#: The MS-COCO 2014 validation images (about 6.2 GB).
COCO_VAL2014_URL = "http://images.cocodataset.org/zips/val2014.zip"

#: Number of photos in the COCO 2014 validation archive.
COCO_VAL2014_IMAGES = 40_504

#: Appended to network errors: what to do without network access.
LOCAL_IMAGES_HINT = (
    "Without network access you can use a local folder of images instead (extract its features into a "
    "database)."
)

_DEFAULT_CHUNK_SIZE = 1 << 20


@dataclass
class DownloadConfig:
    """Settings of :func:`download_coco_val2014`.

    Attributes:
        dest: Folder that receives the archive, the extracted images and the file list.
        url: Address of the zip archive.
        timeout: Seconds allowed for the name lookup and for connecting.
        read_timeout: Seconds without any data after which a transfer counts as stalled.
        chunk_size: Bytes read from the network (and written to disk) at a time.
        expected_size: Size of the archive in bytes, checked when given.
        expected_members: Number of files in the archive, checked when given.
            ``None`` means 40,504 for the default COCO address and no check otherwise.
        retries: How many times an interrupted transfer is resumed within one call.
            Failures before any data arrived (no network) are not retried.
        keep_archive: Keep the zip after a successful extraction (set ``False``
            to free 6.2 GB of disk).
        verbose: Show tqdm progress bars.
    """

    dest: Path
    url: str = COCO_VAL2014_URL
    timeout: float = 10.0
    read_timeout: float = 60.0
    chunk_size: int = _DEFAULT_CHUNK_SIZE
    expected_size: int | None = None
    expected_members: int | None = None
    retries: int = 5
    keep_archive: bool = True
    verbose: bool = True

    def __post_init__(self) -> None:
        self.dest = Path(self.dest).expanduser()
        if self.timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError(f"timeouts must be positive, got timeout={self.timeout}, "
                              f"read_timeout={self.read_timeout}")
        if self.chunk_size <= 0:
            raise ConfigError(f"chunk_size must be positive, got {self.chunk_size}")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        if self.expected_size is not None and self.expected_size <= 0:
            raise ConfigError(f"expected_size must be positive, got {self.expected_size}")
        if self.expected_members is not None and self.expected_members < 0:
            raise ConfigError(f"expected_members must be >= 0, got {self.expected_members}")
        try:
            check_url(self.url)
        except BadURLError as exc:
            raise ConfigError(str(exc)) from None


def write_file_list(root: str | os.PathLike[str], dest: str | os.PathLike[str]) -> int:
    """Write the images below ``root`` to ``dest``, one absolute path per line (atomically).

    Args:
        root: A folder of images (searched recursively with
            :func:`similar_images.sources.images.find_images`).
        dest: The text file to write.

    Returns:
        The number of images listed.

    Raises:
        SourceNotFoundError: If ``root`` does not exist.
        NoInputsError: If ``root`` holds no images.
    """
    images = find_images(root)
    lines = []
    for image in images:
        if "\n" in str(image) or "\r" in str(image):
            logger.warning("Skipping %r: a line break in a file name cannot be written to a file list", str(image))
            continue
        lines.append(f"{image}\n")
    if not lines:
        raise NoInputsError(f"No images found in {root}")
    with atomic_path(dest) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    logger.info("Wrote %d image paths to %s", len(lines), dest)
    return len(lines)


def _archive_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "download.zip"


def download_coco_val2014(config: DownloadConfig) -> Path:
    """Download, check and extract an image archive and write its file list.

    With the default configuration this fetches the MS-COCO 2014 validation
    images (6.2 GB, 40,504 photos) into ``config.dest``::

        dest/val2014.zip          the archive (deleted when keep_archive=False)
        dest/val2014/             the photos, with a completion marker
        dest/val2014_files.txt    one absolute image path per line

    Each step is skipped when its result is already there, so a second run
    does no work (and sends no request). A partial download is resumed. A
    corrupt archive is renamed to ``*.corrupt`` and refused.

    Args:
        config: Address, destination folder, timeouts and checks.

    Returns:
        Path of the file list.

    Raises:
        DownloadError: If the download fails (with a hint to use a local folder
            of images instead), the archive is corrupt, or the disk is full.
    """
    dest = config.dest.expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    name = _archive_name(config.url)
    stem = name[: -len(".zip")] if name.lower().endswith(".zip") else name
    archive = dest / name
    target = dest / stem
    file_list = dest / f"{stem}_files.txt"
    marker = target / EXTRACTED_MARKER
    expected_members = config.expected_members
    if expected_members is None and config.url == COCO_VAL2014_URL:
        expected_members = COCO_VAL2014_IMAGES

    lock = dest / ".download.lock"
    try:
        with file_lock(lock, timeout=0):
            _download_steps(config, archive, target, file_list, marker, expected_members)
    except LockTimeoutError as exc:
        raise DownloadError(
            f"Another download into {dest} is running (it holds {lock}); wait for it to finish."
        ) from exc
    return file_list


def _download_steps(config: DownloadConfig, archive: Path, target: Path, file_list: Path, marker: Path,
                    expected_members: int | None) -> None:
    if marker.is_file():
        logger.info("Already downloaded and extracted: %s", target)
    else:
        with byte_progress(archive.name, enabled=config.verbose) as progress:
            download_file(config.url, archive, timeout=config.timeout, read_timeout=config.read_timeout,
                          chunk_size=config.chunk_size, expected_size=config.expected_size,
                          retries=config.retries, progress=progress, offline_hint=LOCAL_IMAGES_HINT,
                          offline_source="images")
        try:
            verify_zip(archive, expected_size=config.expected_size, expected_members=expected_members,
                       verbose=config.verbose)
            with zipfile.ZipFile(archive) as zf:
                strip = 1 if common_top_folder(zf.namelist()) is not None else 0
        except (DownloadError, zipfile.BadZipFile) as exc:
            aside = move_aside(archive)
            raise DownloadError(
                f"{exc}. The archive was moved aside to {aside}; re-run to download it again "
                f"(and delete {aside} once you no longer need it)."
            ) from exc
        extract_zip(archive, target, strip_components=strip, verbose=config.verbose)
        if not config.keep_archive:
            archive.unlink()
            logger.info("Deleted %s", archive)
    if file_list.is_file() and file_list.stat().st_mtime >= marker.stat().st_mtime:
        logger.info("File list already written: %s", file_list)
    else:
        write_file_list(target, file_list)
