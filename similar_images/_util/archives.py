"""Zip archives: test every member's CRC (like ``unzip -t``) and extract all or nothing, safely.

:func:`verify_zip` reads every member and checks its CRC-32, plus the archive
size and member count when known. :func:`extract_zip` refuses unsafe member
names (absolute paths, ``..``), extracts into a hidden temporary folder next
to the target, writes a completion marker there and renames the folder into
place: a folder with the target's name exists only once it is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ..errors import DownloadError
from .download import check_free_space, human_bytes
from .io import atomic_path, fsync_dir

__all__ = ["EXTRACTED_MARKER", "verify_zip", "extract_zip", "common_top_folder", "member_parts", "move_aside"]

logger = logging.getLogger(__name__)

#: Name of the marker file written inside a completely extracted folder.
EXTRACTED_MARKER = ".extracted.json"

_CHUNK = 1 << 20


def verify_zip(
    path: str | os.PathLike[str],
    *,
    expected_size: int | None = None,
    expected_members: int | None = None,
    verbose: bool = False,
) -> int:
    """Test a zip archive like ``unzip -t``: read every member and check its CRC-32.

    Args:
        path: The archive.
        expected_size: Size of the archive in bytes, checked when given.
        expected_members: Number of files (directories not counted), checked when given.
        verbose: Show a tqdm progress bar.

    Returns:
        The number of files in the archive.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DownloadError: If the archive is truncated, corrupt, unsupported, or
            does not have the expected size or member count.
    """
    path = Path(path)
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError(f"Archive {path} has {size:,} bytes, expected {expected_size:,}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            total = sum(i.file_size for i in infos)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"checking {path.name}",
                      disable=not verbose) as progress:
                for info in infos:
                    try:
                        with zf.open(info) as member:
                            # ZipExtFile checks the CRC-32 when the end of the member is reached.
                            while chunk := member.read(_CHUNK):
                                progress.update(len(chunk))
                    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
                        raise DownloadError(
                            f"Archive {path} is corrupt: member {info.filename!r} fails the test ({exc})"
                        ) from exc
                    except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encryption
                        raise DownloadError(f"Archive {path} cannot be read: member {info.filename!r}: {exc}") from exc
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"Archive {path} is corrupt or truncated ({exc})") from exc
    if expected_members is not None and len(infos) != expected_members:
        raise DownloadError(f"Archive {path} holds {len(infos):,} files, expected {expected_members:,}")
    logger.info("Archive %s is intact: %d files, %s uncompressed", path, len(infos), human_bytes(total))
    return len(infos)


def _member_parts(name: str) -> list[str]:
    """Split a member name into path parts, refusing names that could escape the target folder."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized) or "\x00" in normalized:
        raise DownloadError(f"Refusing to extract the member {name!r}: absolute paths are not allowed")
    parts = [p for p in normalized.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DownloadError(
            f"Refusing to extract the member {name!r}: '..' in a member name could write outside the target folder"
        )
    return parts


#: Public name of the member-name check (used by the streaming extraction too).
member_parts = _member_parts


def common_top_folder(names: list[str]) -> str | None:
    """Return the single top-level folder that holds every member, or ``None``."""
    tops = {PurePosixPath(n.replace("\\", "/")).parts[0] for n in names if n.strip("/")}
    if len(tops) != 1:
        return None
    top = next(iter(tops))
    # Every member must be inside the folder (not a file of that name).
    if all(n.replace("\\", "/").startswith(top + "/") for n in names if n.strip("/")):
        return top
    return None


def extract_zip(
    archive: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    strip_components: int = 0,
    verbose: bool = False,
) -> Path:
    """Extract ``archive`` into the folder ``target``, all or nothing.

    Every member name is checked first (absolute paths and ``..`` are refused).
    Members are extracted into a hidden temporary folder next to ``target``;
    a marker file (:data:`EXTRACTED_MARKER`) is written into it and the folder
    is renamed to ``target``. A ``target`` holding the marker is left as it is.

    Args:
        archive: A zip file.
        target: The folder to create.
        strip_components: Leading path components removed from each member
            name (like ``tar --strip-components``); members with no component
            left are skipped.
        verbose: Show a tqdm progress bar.

    Returns:
        ``target`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: If a member name is unsafe, the archive is corrupt, there
            is not enough disk space, or ``target`` exists without the marker.
    """
    archive, target = Path(archive), Path(target).expanduser()
    if (target / EXTRACTED_MARKER).is_file():
        logger.info("Already extracted: %s", target)
        return target
    if target.exists():
        raise DownloadError(
            f"{target} already exists but is not a completed extraction (no {EXTRACTED_MARKER} inside); "
            "move it away or delete it, then re-run."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        logger.info("Removing %s left by an interrupted extraction", stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"Archive {archive} is corrupt or truncated ({exc})") from exc
    with zf:
        plan: list[tuple[zipfile.ZipInfo, list[str]]] = []
        for info in zf.infolist():
            parts = _member_parts(info.filename)[strip_components:]
            if parts:
                plan.append((info, parts))
        total = sum(info.file_size for info, _ in plan if not info.is_dir())
        check_free_space(target.parent, total, f"extracting {archive.name}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        root = tmp.resolve()
        n_files = 0
        try:
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extracting {archive.name}",
                      disable=not verbose) as progress:
                for info, parts in plan:
                    out = tmp.joinpath(*parts)
                    if not out.resolve().is_relative_to(root):  # belt and braces
                        raise DownloadError(
                            f"Refusing to extract the member {info.filename!r}: it leaves the target folder"
                        )
                    if info.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        with zf.open(info) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst, _CHUNK)
                    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                        raise DownloadError(f"Archive {archive} is corrupt: member {info.filename!r} ({exc})") from exc
                    with contextlib.suppress(OverflowError, ValueError, OSError):
                        mtime = time.mktime(info.date_time + (0, 0, -1))
                        os.utime(out, (mtime, mtime))
                    n_files += 1
                    progress.update(info.file_size)
            marker = {
                "archive": archive.name,
                "archive_size": archive.stat().st_size,
                "files": n_files,
                "strip_components": strip_components,
            }
            with atomic_path(tmp / EXTRACTED_MARKER) as marker_tmp:
                marker_tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            os.rename(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("Extracted %d files into %s", n_files, target)
    return target


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<path>.corrupt`` (or ``.corrupt.1``, ...) and return the new path."""
    aside = path.with_name(path.name + ".corrupt")
    n = 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt.{n}")
    os.replace(path, aside)
    return aside
