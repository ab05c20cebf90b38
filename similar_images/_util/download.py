"""Resumable downloads of large files (the COCO and Sentiment140 archives), over :mod:`.http`'s connections.

:func:`download_file` writes into ``<dest>.part``, resumes an interrupted
transfer with an HTTP ``Range`` request, and renames the file into place only
when every byte has arrived. The name lookup and the connection are bounded by
``timeout``, a stalled transfer by ``read_timeout``. Failures raise
:class:`~similar_images.errors.DownloadError` with what to do next.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import DownloadError
from .http import _USER_AGENT, build_opener, check_url, describe_network_error
from .io import fsync_dir
from .parsing import parse_int

__all__ = ["download_file", "fetch_range", "human_bytes", "check_free_space", "Progress"]

logger = logging.getLogger(__name__)

_DEFAULT_CHUNK_SIZE = 1 << 20
#: Seconds to wait before resuming an interrupted transfer (multiplied by the attempt number).
_RETRY_WAIT_S = 1.0


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"``."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`DownloadError` unless ``folder``'s disk has ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(
            f"Not enough free disk space in {folder} for {what}: need {human_bytes(needed)}, "
            f"only {human_bytes(free)} free. Free some space or choose another folder."
        )


class _NetworkError(Exception):
    """An attempt failed; ``progressed`` tells whether it received any data (worth resuming)."""

    def __init__(self, reason: str, *, progressed: bool, permanent: bool = False) -> None:
        super().__init__(reason)
        self.progressed = progressed
        self.permanent = permanent


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Return (first byte, total size) of a ``Content-Range`` header; ``None`` where unknown."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


#: ``progress(event, value)``: ``("total", bytes or None)`` then ``("advance", bytes)`` calls.
Progress = Callable[[str, "int | None"], None]


def _fetch_once(opener: urllib.request.OpenerDirector, url: str, part: Path, *, timeout: float,
                read_timeout: float, chunk_size: int, expected_size: int | None, progress: Progress | None) -> None:
    """One HTTP request that appends to ``part``; raises :class:`_NetworkError` unless complete."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        logger.warning("%s is larger than expected (%d > %d bytes); starting over", part, offset, expected_size)
        part.unlink()
        offset = 0
    if expected_size is not None and offset == expected_size:
        return  # complete; the caller renames it
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
        raise _NetworkError(describe_network_error(exc, timeout=timeout, read_timeout=read_timeout, connecting=True),
                            progressed=False, permanent=permanent) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _NetworkError(describe_network_error(exc, timeout=timeout, read_timeout=read_timeout, connecting=True),
                            progressed=False) from exc

    with response:
        status = response.status
        length = parse_int(response.headers.get("Content-Length") or "")
        length = None if length is None or length < 0 else length
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
            check_free_space(part.parent, total - offset, f"downloading {part.name}")
        if progress is not None:
            progress("total", total)
            progress("advance", offset)

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
                    why = describe_network_error(exc, timeout=timeout, read_timeout=read_timeout, connecting=False)
                    raise _NetworkError(why, progressed=received > 0) from exc
                if not chunk:
                    break
                try:
                    fh.write(chunk)
                except OSError as exc:
                    raise DownloadError(f"Cannot write {part}: {exc}") from exc
                received += len(chunk)
                if progress is not None:
                    progress("advance", len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    size = offset + received
    if total is not None and size != total:
        raise _NetworkError(f"the connection was closed after {size:,} of {total:,} bytes", progressed=received > 0)


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    timeout: float = 10.0,
    read_timeout: float = 60.0,
    chunk_size: int = _DEFAULT_CHUNK_SIZE,
    expected_size: int | None = None,
    retries: int = 5,
    progress: Progress | None = None,
    offline_hint: str = "",
    offline_source: str | None = None,
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
        progress: Called with ``("total", n)`` and ``("advance", n)`` events (e.g. to drive a progress bar).
        offline_hint: Appended to network errors: what to do without network access.
        offline_source: What can be used instead without network access (``"images"``, ``"texts"``), carried by a
            network error as :attr:`DownloadError.offline_source`.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: If the download fails; the message says why and how to
            continue (re-running resumes).
        BadURLError: If ``url`` is not an http(s) address.
    """
    check_url(url)
    dest = Path(dest).expanduser()
    if dest.exists():
        size = dest.stat().st_size
        if expected_size is not None and size != expected_size:
            raise DownloadError(
                f"{dest} has {size:,} bytes but {expected_size:,} were expected; "
                "delete it and re-run to download it again."
            )
        logger.info("Already downloaded: %s (%s)", dest, human_bytes(size))
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    opener = build_opener(read_timeout=read_timeout)
    attempt = 0
    while True:
        try:
            _fetch_once(opener, url, part, timeout=timeout, read_timeout=read_timeout, chunk_size=chunk_size,
                        expected_size=expected_size, progress=progress)
            break
        except _NetworkError as exc:
            if exc.progressed and not exc.permanent and attempt < retries:
                attempt += 1
                logger.warning("Download interrupted (%s); resuming (attempt %d of %d)", exc, attempt, retries)
                time.sleep(_RETRY_WAIT_S * attempt)
                continue
            have = part.stat().st_size if part.exists() else 0
            kept = f" The {human_bytes(have)} received so far are kept in {part}; re-running resumes." if have else ""
            raise DownloadError(
                f"Could not download {url}: {exc}. Check the network connection (and proxy settings) "
                f"and re-run.{kept} {offline_hint}".rstrip(), url=url, path=part if have else None,
                offline_source=offline_source,
            ) from exc
    os.replace(part, dest)
    fsync_dir(dest.parent)
    logger.info("Downloaded %s (%s)", dest, human_bytes(dest.stat().st_size))
    return dest


def fetch_range(url: str, start: int | None, end: int | None = None, *, timeout: float = 10.0,
                read_timeout: float = 60.0, max_bytes: int = 256 << 20) -> tuple[bytes, int, int]:
    """Some bytes of a remote file, with one HTTP ``Range`` request.

    Args:
        url: An http:// or https:// address.
        start: The first byte, or ``None`` for the last ``end`` bytes (a suffix range).
        end: The last byte (inclusive), or ``None`` for the end of the file; with ``start=None``, how many of
            the last bytes.
        timeout: Seconds allowed for the name lookup and for connecting.
        read_timeout: Seconds without data after which the transfer counts as stalled.
        max_bytes: The most bytes accepted.

    Returns:
        ``(bytes, position of the first byte, size of the whole file)``.

    Raises:
        DownloadError: If the request fails, or the server does not answer ranges (a plain ``200``: its whole
            file is not read).
    """
    check_url(url)
    spec = f"-{end}" if start is None else f"{start}-{'' if end is None else end}"
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity",
                                                   "Range": f"bytes={spec}"})
    opener = build_opener(read_timeout=read_timeout)
    connecting = True
    try:
        with opener.open(request, timeout=timeout) as response:
            connecting = False
            first, total = _parse_content_range(response.headers.get("Content-Range"))
            if response.status != 206 or first is None or total is None:
                raise DownloadError(f"{url} does not answer HTTP range requests (status {response.status})")
            length = parse_int(response.headers.get("Content-Length") or "")
            if length is not None and length > max_bytes:
                raise DownloadError(f"{url} answered {length:,} bytes for a range; at most {max_bytes:,} expected")
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        why = describe_network_error(exc, timeout=timeout, read_timeout=read_timeout, connecting=True)
        raise DownloadError(f"Could not read bytes {spec} of {url}: {why}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        why = describe_network_error(exc, timeout=timeout, read_timeout=read_timeout, connecting=connecting)
        raise DownloadError(f"Could not read bytes {spec} of {url}: {why}") from exc
    if len(data) > max_bytes or (length is not None and len(data) != length):
        raise DownloadError(f"{url} answered {len(data):,} bytes for the range {spec}, not the {length} announced")
    return data, first, total
