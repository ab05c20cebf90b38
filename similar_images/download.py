"""Downloading, checking and extracting an image archive (MS-COCO 2014 val).

The pipeline behind ``similar-images download-coco`` and
``data_scripts/get_ms_coco_dataset.sh``:

1. :func:`download_file` fetches the archive into ``<name>.part``, resuming a
   partial file with an HTTP ``Range`` request, and renames it into place
   only when every byte has arrived.
2. :func:`verify_zip` reads every member and checks its CRC-32 (like
   ``unzip -t``), plus the archive size and member count when known.
3. :func:`extract_zip` refuses unsafe member names (absolute paths, ``..``),
   extracts into a hidden temporary folder next to the target, writes a
   completion marker there and renames the folder into place: a folder with
   the target's name exists only once it is complete.
4. :func:`write_file_list` writes one absolute image path per line, atomically.

:func:`download_coco_val2014` runs the four steps and skips any step whose
result is already on disk, so running it twice does no work twice.

Network failures are reported quickly: the connection attempt and the name
lookup are bounded by ``timeout`` and a stalled transfer by ``read_timeout``.
Every failure raises :class:`~similar_images.errors.DownloadError` with a
message that says what to do next.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from ._io import atomic_path, fsync_dir
from .errors import DownloadError

__all__ = [
    "COCO_VAL2014_URL",
    "COCO_VAL2014_IMAGES",
    "EXTRACTED_MARKER",
    "LOCAL_IMAGES_HINT",
    "DownloadConfig",
    "download_file",
    "verify_zip",
    "extract_zip",
    "write_file_list",
    "download_coco_val2014",
]

logger = logging.getLogger(__name__)

#: The MS-COCO 2014 validation images (about 6.2 GB).
COCO_VAL2014_URL = "http://images.cocodataset.org/zips/val2014.zip"

#: Number of photos in the COCO 2014 validation archive.
COCO_VAL2014_IMAGES = 40_504

#: Name of the marker file written inside a completely extracted folder.
EXTRACTED_MARKER = ".extracted.json"

#: Appended to network errors: what to do without network access.
LOCAL_IMAGES_HINT = (
    "Without network access you can use a local folder of images instead: "
    "`similar-images extract /path/to/your/images DB`."
)

_DEFAULT_CHUNK_SIZE = 1 << 20
#: Seconds to wait before resuming an interrupted transfer (multiplied by the attempt number).
_RETRY_WAIT_S = 1.0
_USER_AGENT = "similar-images-downloader/1"


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
            raise ValueError(f"timeouts must be positive, got timeout={self.timeout}, read_timeout={self.read_timeout}")
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.expected_size is not None and self.expected_size <= 0:
            raise ValueError(f"expected_size must be positive, got {self.expected_size}")
        if self.expected_members is not None and self.expected_members < 0:
            raise ValueError(f"expected_members must be >= 0, got {self.expected_members}")
        _check_url(self.url)


# --------------------------------------------------------------------------
# HTTP with separate connect and read timeouts
# --------------------------------------------------------------------------


class _HTTPConnection(http.client.HTTPConnection):
    """Connects with the request's timeout, then waits ``read_timeout`` for each read."""

    def __init__(self, *args: Any, read_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        if self._read_timeout is not None and self.sock is not None:
            self.sock.settimeout(self._read_timeout)


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS variant of :class:`_HTTPConnection`."""

    def __init__(self, *args: Any, read_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        if self._read_timeout is not None and self.sock is not None:
            self.sock.settimeout(self._read_timeout)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._read_timeout = read_timeout

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req, read_timeout=self._read_timeout)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._read_timeout = read_timeout

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, read_timeout=self._read_timeout)  # default SSL context


def _build_opener(read_timeout: float) -> urllib.request.OpenerDirector:
    # build_opener keeps the default proxy and redirect handlers.
    return urllib.request.build_opener(_HTTPHandler(read_timeout), _HTTPSHandler(read_timeout))


def _check_url(url: str) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"expected an http:// or https:// address, got {url!r}")


def _resolve_host(url: str, timeout: float) -> None:
    """Look the host name up within ``timeout`` seconds (the OS resolver itself may hang far longer).

    Skipped when a proxy handles the address (the proxy resolves it) or the host is an IP literal.
    """
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or ""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return
    if parsed.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
        return
    result: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, parsed.port or (443 if parsed.scheme == "https" else 80), type=socket.SOCK_STREAM)
            result.append(None)
        except BaseException as exc:  # reported to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=lookup, name="similar-images-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise _NetworkError(f"looking up the host name {host!r} timed out after {timeout:g} s", progressed=False)
    if result[0] is not None:
        raise _NetworkError(f"cannot resolve the host name {host!r} ({result[0]})", progressed=False)


class _NetworkError(Exception):
    """An attempt failed; ``progressed`` tells whether it received any data (worth resuming)."""

    def __init__(self, reason: str, *, progressed: bool, permanent: bool = False) -> None:
        super().__init__(reason)
        self.progressed = progressed
        self.permanent = permanent


def _describe(exc: BaseException, timeout: float, read_timeout: float, connecting: bool) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"the server answered HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return _describe(reason, timeout, read_timeout, connecting)
        return str(reason)
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        if connecting:
            return f"no connection within {timeout:g} s"
        return f"no data received for {read_timeout:g} s (stalled transfer)"
    if isinstance(exc, (http.client.IncompleteRead, ConnectionError, http.client.HTTPException)):
        return f"the connection was lost ({exc.__class__.__name__})"
    return f"{exc.__class__.__name__}: {exc}"


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Return (first byte, total size) of a ``Content-Range`` header; ``None`` where unknown."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _check_free_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(
            f"Not enough free disk space in {folder} for {what}: need {_human(needed)}, "
            f"only {_human(free)} free. Free some space or choose another folder."
        )


def _fetch_once(
    opener: urllib.request.OpenerDirector,
    url: str,
    part: Path,
    *,
    timeout: float,
    read_timeout: float,
    chunk_size: int,
    expected_size: int | None,
    bar: dict[str, Any],
    verbose: bool,
) -> None:
    """One HTTP request that appends to ``part``; raises :class:`_NetworkError` unless complete."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        logger.warning("%s is larger than expected (%d > %d bytes); starting over", part, offset, expected_size)
        part.unlink()
        offset = 0
    if expected_size is not None and offset == expected_size:
        return  # complete; the caller renames it
    _resolve_host(url, timeout)
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        logger.info("Resuming %s at byte %d", url, offset)
    else:
        logger.info("Downloading %s", url)
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: either the file is already complete or it changed.
            _, total = _parse_content_range(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset and (expected_size is None or expected_size == total):
                return
            logger.warning("The server refused to resume %s; starting over", part)
            part.unlink()
            raise _NetworkError("the server refused to resume the download", progressed=True) from exc
        exc.close()
        permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise _NetworkError(_describe(exc, timeout, read_timeout, True), progressed=False, permanent=permanent) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _NetworkError(_describe(exc, timeout, read_timeout, True), progressed=False) from exc

    with response:
        status = response.status
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if status == 206 and offset:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                logger.warning("The server resumed %s at byte %s instead of %d; starting over", part, start, offset)
                part.unlink()
                raise _NetworkError("the server answered an unexpected range", progressed=True)
            mode = "ab"
        elif status == 200:
            if offset:
                logger.info("The server does not support resuming; downloading %s from the start", url)
            offset, total, mode = 0, length, "wb"
        else:
            raise _NetworkError(f"unexpected HTTP status {status}", progressed=False, permanent=True)
        if total is None and length is not None:
            total = offset + length
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(
                f"The server reports {total:,} bytes for {url} but {expected_size:,} were expected; "
                "the file on the server changed or the address is wrong."
            )
        if total is None:
            total = expected_size
        if total is not None:
            _check_free_space(part.parent, total - offset, f"downloading {part.name}")

        if verbose and bar.get("bar") is None:
            bar["bar"] = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=part.name.removesuffix(".part"), disable=not verbose)
        progress = bar.get("bar")
        if progress is not None:
            progress.reset(total=total)
            progress.update(offset)

        received = 0
        try:
            fh = open(part, mode)
        except OSError as exc:
            raise DownloadError(f"Cannot write {part}: {exc}") from exc
        with fh:
            while True:
                try:
                    chunk = response.read1(chunk_size)  # whatever has arrived: nothing is lost on a stall
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    raise _NetworkError(_describe(exc, timeout, read_timeout, False), progressed=received > 0) from exc
                if not chunk:
                    break
                try:
                    fh.write(chunk)
                except OSError as exc:
                    raise DownloadError(f"Cannot write {part}: {exc}") from exc
                received += len(chunk)
                if progress is not None:
                    progress.update(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    size = offset + received
    if total is not None and size != total:
        raise _NetworkError(
            f"the connection was closed after {size:,} of {total:,} bytes", progressed=received > 0
        )


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    timeout: float = 10.0,
    read_timeout: float = 60.0,
    chunk_size: int = _DEFAULT_CHUNK_SIZE,
    expected_size: int | None = None,
    retries: int = 5,
    verbose: bool = False,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial download.

    Bytes go to ``<dest>.part``; an existing ``.part`` file is continued with an
    HTTP ``Range`` request (a server that ignores ranges restarts it). Once the
    full size has arrived the file is flushed and renamed to ``dest``, so
    ``dest`` exists only when complete, and an existing ``dest`` is not
    downloaded again.

    Args:
        url: An http:// or https:// address.
        dest: Final path of the file.
        timeout: Seconds allowed for the name lookup and for connecting.
        read_timeout: Seconds without data after which a transfer counts as stalled.
        chunk_size: Bytes read at a time.
        expected_size: Size in bytes, checked when given.
        retries: How many times an interrupted transfer is resumed within this
            call. An attempt that receives nothing (no network, refused
            connection, HTTP error) is not retried, so failure is quick.
        verbose: Show a tqdm progress bar.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: If the download fails; the message says why and how to
            continue (re-running resumes, or use a local folder of images).
        ValueError: If ``url`` is not an http(s) address.
    """
    _check_url(url)
    dest = Path(dest).expanduser()
    if dest.exists():
        size = dest.stat().st_size
        if expected_size is not None and size != expected_size:
            raise DownloadError(
                f"{dest} has {size:,} bytes but {expected_size:,} were expected; "
                "delete it and re-run to download it again."
            )
        logger.info("Already downloaded: %s (%s)", dest, _human(size))
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    opener = _build_opener(read_timeout)
    bar: dict[str, Any] = {}
    attempt = 0
    try:
        while True:
            try:
                _fetch_once(opener, url, part, timeout=timeout, read_timeout=read_timeout, chunk_size=chunk_size,
                            expected_size=expected_size, bar=bar, verbose=verbose)
                break
            except _NetworkError as exc:
                if exc.progressed and not exc.permanent and attempt < retries:
                    attempt += 1
                    logger.warning("Download interrupted (%s); resuming (attempt %d of %d)", exc, attempt, retries)
                    time.sleep(_RETRY_WAIT_S * attempt)
                    continue
                have = part.stat().st_size if part.exists() else 0
                kept = f" The {_human(have)} received so far are kept in {part}; re-running resumes." if have else ""
                raise DownloadError(
                    f"Could not download {url}: {exc}. Check the network connection (and proxy settings) "
                    f"and re-run.{kept} {LOCAL_IMAGES_HINT}"
                ) from exc
    finally:
        if bar.get("bar") is not None:
            bar["bar"].close()
    os.replace(part, dest)
    fsync_dir(dest.parent)
    logger.info("Downloaded %s (%s)", dest, _human(dest.stat().st_size))
    return dest


# --------------------------------------------------------------------------
# Checking and extracting
# --------------------------------------------------------------------------


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
                            while chunk := member.read(_DEFAULT_CHUNK_SIZE):
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
    logger.info("Archive %s is intact: %d files, %s uncompressed", path, len(infos), _human(total))
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


def _common_top_folder(names: list[str]) -> str | None:
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
        _check_free_space(target.parent, total, f"extracting {archive.name}")
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
                            shutil.copyfileobj(src, dst, _DEFAULT_CHUNK_SIZE)
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


def write_file_list(root: str | os.PathLike[str], dest: str | os.PathLike[str]) -> int:
    """Write the images below ``root`` to ``dest``, one absolute path per line (atomically).

    Args:
        root: A folder of images (searched recursively with
            :func:`similar_images.images.find_images`).
        dest: The text file to write.

    Returns:
        The number of images listed.

    Raises:
        FileNotFoundError: If ``root`` does not exist.
        DownloadError: If ``root`` holds no images.
    """
    from .images import find_images  # numpy and PIL: only when needed

    images = find_images(root)
    lines = []
    for image in images:
        if "\n" in str(image) or "\r" in str(image):
            logger.warning("Skipping %r: a line break in a file name cannot be written to a file list", str(image))
            continue
        lines.append(f"{image}\n")
    if not lines:
        raise DownloadError(f"No images found in {root}")
    with atomic_path(dest) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    logger.info("Wrote %d image paths to %s", len(lines), dest)
    return len(lines)


# --------------------------------------------------------------------------
# The whole pipeline
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold a lock on ``folder`` so that two downloads into it do not interfere (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path = folder / ".download.lock"
    with open(lock_path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise DownloadError(
                f"Another download into {folder} is running (it holds {lock_path}); wait for it to finish."
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<path>.corrupt`` (or ``.corrupt.1``, ...) and return the new path."""
    aside = path.with_name(path.name + ".corrupt")
    n = 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt.{n}")
    os.replace(path, aside)
    return aside


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

    with _exclusive(dest):
        if marker.is_file():
            logger.info("Already downloaded and extracted: %s", target)
        else:
            download_file(config.url, archive, timeout=config.timeout, read_timeout=config.read_timeout,
                          chunk_size=config.chunk_size, expected_size=config.expected_size,
                          retries=config.retries, verbose=config.verbose)
            try:
                verify_zip(archive, expected_size=config.expected_size, expected_members=expected_members,
                           verbose=config.verbose)
                with zipfile.ZipFile(archive) as zf:
                    strip = 1 if _common_top_folder(zf.namelist()) is not None else 0
            except (DownloadError, zipfile.BadZipFile) as exc:
                aside = _move_aside(archive)
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
    return file_list
