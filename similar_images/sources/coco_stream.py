"""The COCO photos while their archive downloads: each photo is on disk as soon as its bytes have arrived.

:class:`ArchiveStream` does what :func:`~similar_images.sources.coco.download_coco_val2014` does, with the
steps overlapped instead of one after another:

1. one HTTP ``Range`` request reads the archive's central directory (its tail), so the list of photos and
   their order in the archive are known before the download starts; it is also the plan of the extraction;
2. a thread downloads the archive into ``<name>.part`` (resumable, size-checked, as
   :func:`~similar_images._util.download.download_file` always does);
3. another thread writes each photo into ``DEST/<stem>/`` as soon as its bytes are in the partial file,
   after checking its CRC-32 (:mod:`similar_images._util.streamzip`); :meth:`ArchiveStream.wait_ready`
   tells a consumer (the feature extraction) when the first ``n`` photos are there;
4. :meth:`ArchiveStream.finish` checks that the finished archive still ends with the central directory read
   in step 1, writes the completion marker and the file list, exactly as the sequential pipeline does.

Running it again resumes: the partial download continues with a ``Range`` request and photos already on
disk (with their full size) are not written again. A truncated or corrupt archive raises
:class:`~similar_images.errors.DownloadError` naming the member; the photos written before it are kept, and a
corrupt archive is moved aside (``*.corrupt``) so that the next run downloads it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path, PurePosixPath

from .._util.archives import EXTRACTED_MARKER, common_top_folder, member_parts, move_aside
from .._util.download import download_file, fetch_range
from .._util.io import atomic_path, write_bytes
from .._util.locks import LockTimeoutError, file_lock
from .._util.streamzip import TAIL_GUESS, GrowingFile, ZipMember, parse_central_directory, read_member, tail_start
from ..errors import DownloadError
from .coco import (
    COCO_VAL2014_IMAGES,
    COCO_VAL2014_URL,
    LOCAL_IMAGES_HINT,
    DownloadConfig,
    _archive_name,
    write_file_list,
)
from .images import IMAGE_EXTENSIONS

__all__ = ["ArchiveStream"]

logger = logging.getLogger(__name__)

#: Seconds :meth:`ArchiveStream.close` waits for each thread.
_JOIN_S = 5.0
#: Largest central directory read (COCO's 40,504 members take about 4 MB).
_MAX_DIRECTORY = 256 << 20


class _StoppedError(Exception):
    """Raised inside the download thread to end it (:meth:`ArchiveStream.close`)."""


class ArchiveStream:
    """Download a zip of photos and extract each photo as soon as its bytes have arrived.

    Use it as a context manager (it holds the download folder's lock and stops its threads on exit)::

        with ArchiveStream(DownloadConfig(dest)) as stream:
            stream.wait_ready(1024)          # the first 1,024 photos are on disk
            ...
            file_list = stream.finish()      # every photo is there, the archive is checked

    Attributes:
        config: The download settings (address, folder, timeouts, expected size and member count).
        items: Absolute paths of the photos, in the order of the archive (known once entered).
    """

    def __init__(self, config: DownloadConfig) -> None:
        self.config = config
        self.dest = config.dest.expanduser().resolve()
        name = _archive_name(config.url)
        stem = name[: -len(".zip")] if name.lower().endswith(".zip") else name
        self.archive = self.dest / name
        self.part = self.archive.with_name(self.archive.name + ".part")
        self.target = self.dest / stem
        self.file_list = self.dest / f"{stem}_files.txt"
        self.items: list[Path] = []
        self._members: list[ZipMember] = []
        self._tail = b""
        self._tail_offset = 0
        self._size = 0
        self._ready = 0
        self._error: BaseException | None = None
        self._download_result: str | None = None  # None: running; "": done; else: why it failed
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stack = contextlib.ExitStack()
        self._source: GrowingFile | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ArchiveStream:
        self.dest.mkdir(parents=True, exist_ok=True)
        lock = self.dest / ".download.lock"
        try:
            self._stack.enter_context(file_lock(lock, timeout=0))
        except LockTimeoutError as exc:
            raise DownloadError(f"Another download into {self.dest} is running (it holds {lock}); wait for it "
                                "to finish.") from exc
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads (the partial download and the photos on disk are kept) and release the lock."""
        self._stop.set()
        if self._source is not None:
            self._source.stop.set()
        for thread in self._threads:
            thread.join(_JOIN_S)  # a download stalled in a read ends at its read timeout; it is a daemon thread
        self._stack.close()

    @property
    def complete(self) -> bool:
        """Whether the photos were all extracted by an earlier run (the completion marker is there)."""
        return (self.target / EXTRACTED_MARKER).is_file()

    def _start(self) -> None:
        if self.complete:
            listed = [line for line in self.file_list.read_text(encoding="utf-8").splitlines() if line] \
                if self.file_list.is_file() else []
            self.items = [Path(p) for p in listed] or sorted(p for p in self.target.rglob("*")
                                                                if p.suffix.lower() in IMAGE_EXTENSIONS)
            self._ready = len(self.items)
            self._download_result = ""
            logger.info("Already downloaded and extracted: %s", self.target)
            return
        self._read_directory()
        names = [m.name for m in self._members]
        strip = 1 if common_top_folder(names) is not None else 0
        self._paths: list[Path | None] = []
        for member in sorted(self._members, key=lambda m: m.header_offset):
            parts = member_parts(member.name)[strip:]
            if member.is_dir or not parts or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
                self._paths.append(None)
                continue
            path = self.target.joinpath(*parts)
            self._paths.append(path)
            self.items.append(path)
        self._members.sort(key=lambda m: m.header_offset)
        if not self.items:
            raise DownloadError(f"{self.config.url} holds no photos ({len(self._members)} members, none an image)")
        self._source = GrowingFile([self.part, self.archive], lambda: self._download_result,
                                   where=self.archive.name)
        self._threads = [threading.Thread(target=self._download, name="similar-images-download", daemon=True),
                         threading.Thread(target=self._extract, name="similar-images-unzip", daemon=True)]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ step 1: the central directory
    def _read_directory(self) -> None:
        config, where = self.config, self.config.url
        if self.archive.is_file():  # downloaded by an earlier run: read its own end
            where = str(self.archive)
            size = self.archive.stat().st_size
            with open(self.archive, "rb") as fh:
                first = max(0, size - TAIL_GUESS)
                fh.seek(first)
                tail = fh.read()
                start = tail_start(tail, first, where)
                if start < first:
                    fh.seek(start)
                    tail, first = fh.read(), start
        else:
            tail, first, size = fetch_range(config.url, None, TAIL_GUESS, timeout=config.timeout,
                                            read_timeout=config.read_timeout)
            start = tail_start(tail, first, where)
            if start < first:
                if first - start > _MAX_DIRECTORY:
                    raise DownloadError(f"The central directory of {where} is over {_MAX_DIRECTORY:,} bytes")
                head, _, _ = fetch_range(config.url, start, first - 1, timeout=config.timeout,
                                         read_timeout=config.read_timeout, max_bytes=_MAX_DIRECTORY)
                tail, first = head + tail, start
        if config.expected_size is not None and size != config.expected_size:
            raise DownloadError(f"The server reports {size:,} bytes for {where} but {config.expected_size:,} were "
                                "expected; the file on the server changed or the address is wrong.")
        self._members = parse_central_directory(tail, first, where)
        self._tail, self._tail_offset, self._size = tail, first, size
        expected = config.expected_members
        if expected is None and config.url == COCO_VAL2014_URL:
            expected = COCO_VAL2014_IMAGES
        files = sum(1 for m in self._members if not m.is_dir)
        if expected is not None and files != expected:
            raise DownloadError(f"{where} lists {files:,} files, expected {expected:,}")

    # ------------------------------------------------------------------ step 2: the download
    def _download(self) -> None:
        def progress(event: str, value: int | None) -> None:
            if self._stop.is_set():
                raise _StoppedError

        config = self.config
        try:
            download_file(config.url, self.archive, timeout=config.timeout, read_timeout=config.read_timeout,
                          chunk_size=config.chunk_size, expected_size=self._size, retries=config.retries,
                          progress=progress, offline_hint=LOCAL_IMAGES_HINT, offline_source="images")
            result = ""
        except _StoppedError:
            result = "The download was stopped"
        except DownloadError as exc:
            result = str(exc)
        except BaseException as exc:  # noqa: BLE001  (reported to the reader, which raises it in its thread)
            result = f"The download failed: {exc.__class__.__name__}: {exc}"
        with self._cond:
            self._download_result = result
            self._cond.notify_all()

    # ------------------------------------------------------------------ step 3: the photos
    def _extract(self) -> None:
        assert self._source is not None
        try:
            for member, path in zip(self._members, self._paths):
                if path is None:
                    continue
                if not (path.is_file() and path.stat().st_size == member.file_size):
                    write_bytes(path, read_member(self._source, member, self.archive.name))
                with self._cond:
                    self._ready += 1
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001  (raised again in the consumer's thread)
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    @property
    def ready(self) -> int:
        """How many photos (a prefix of :attr:`items`) are on disk."""
        with self._cond:
            return self._ready

    def wait_ready(self, n: int, timeout: float | None = None) -> int:
        """Wait until the first ``n`` photos of :attr:`items` are on disk (or all of them, if fewer).

        Returns:
            How many are on disk.

        Raises:
            DownloadError: If the archive turned out truncated or corrupt (a corrupt archive is moved aside) or
                the download failed; the photos on disk are kept.
            TimeoutError: If ``timeout`` seconds passed first.
        """
        n = min(n, len(self.items))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._ready < n and self._error is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{self._ready} of {n} photos after {timeout} s")
                self._cond.wait(left if left is not None else 1.0)
            if self._ready >= n:
                return self._ready
            error = self._error
        self._fail(error)
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail(self, error: BaseException | None) -> None:
        self._stop.set()
        if isinstance(error, DownloadError):
            text = str(error)
            if "corrupt" in text or "CRC" in text:
                with contextlib.suppress(OSError):
                    for path in (self.part, self.archive):
                        if path.exists():
                            aside = move_aside(path)
                            text += (f". The archive was moved aside to {aside}; re-run to download it again (the "
                                     f"{self._ready:,} photos already extracted are kept)")
                            break
            raise DownloadError(text) from error
        raise DownloadError(f"Extracting {self.archive.name} failed: {error}") from error

    # ------------------------------------------------------------------ step 4: the end
    def finish(self) -> Path:
        """Wait for the download and every photo, check the archive's end, write the marker and the file list.

        Returns:
            The file list (one absolute photo path per line).

        Raises:
            DownloadError: As :meth:`wait_ready`, or if the finished archive does not end with the central
                directory read at the start (the file on the server changed during the download).
        """
        if not self.complete:
            self.wait_ready(len(self.items))
            for thread in self._threads:
                thread.join()
            if self._download_result:
                raise DownloadError(self._download_result)
            with open(self.archive, "rb") as fh:
                fh.seek(self._tail_offset)
                if fh.read() != self._tail:
                    aside = move_aside(self.archive)
                    raise DownloadError(f"{self.archive} changed on the server during the download (its central "
                                        f"directory differs); it was moved aside to {aside}: re-run to download it "
                                        "again")
            marker = {"archive": self.archive.name, "archive_size": self._size, "files": len(self.items),
                      "strip_components": 1 if common_top_folder([m.name for m in self._members]) else 0,
                      "streamed": True}
            with atomic_path(self.target / EXTRACTED_MARKER) as tmp:
                tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            if not self.config.keep_archive:
                self.archive.unlink()
                logger.info("Deleted %s", self.archive)
        marker_path = self.target / EXTRACTED_MARKER
        if not (self.file_list.is_file() and self.file_list.stat().st_mtime >= marker_path.stat().st_mtime):
            write_file_list(self.target, self.file_list)
        return self.file_list
