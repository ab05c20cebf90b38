"""Crash-safe file writing, and reading files that may not be what they should be.

Every artifact the package writes goes through :func:`atomic_path`: the data
is written to a temporary file in the destination folder, flushed to disk,
and then renamed over the destination. A crash at any moment leaves either
the old file or the new one, never a half-written file; a full disk raises
:class:`~similar_images.errors.DiskFullError` naming the file.

Every file the package reads back goes through :func:`open_regular` (or
:func:`check_regular`): a folder, a FIFO, a device (a link to ``/dev/zero``),
a symbolic-link loop or an unreadable file is refused at once with a typed
error naming it, instead of a hang, a traceback or a read that never ends.
:func:`read_json` adds bounds on the size, the nesting depth and the numbers
(``1e400``, ``NaN``) of a JSON file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import DatabaseFileError, DiskFullError, InputFileError

__all__ = [
    "UMASK",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "atomic_path",
    "write_json",
    "read_json",
    "parse_json",
    "write_bytes",
    "fsync_dir",
    "user_cache_dir",
    "open_regular",
    "check_regular",
    "disk_full",
]

#: The largest JSON file :func:`read_json` reads (a manifest with a million removed ids takes about 8 MB).
MAX_JSON_BYTES = 64 * 2**20
#: The deepest nesting :func:`read_json` accepts (the package's own files nest 5 deep at most).
MAX_JSON_DEPTH = 64

#: The errno values of a full device or quota.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

#: The process umask, read once (os.umask can only be read by setting it, which is not thread-safe later).
UMASK = os.umask(0)
os.umask(UMASK)


def user_cache_dir() -> Path:
    """This project's folder in the user's cache: ``$XDG_CACHE_HOME/similar-images``, else
    ``~/.cache/similar-images``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "similar-images"


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (renames) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to ``dest``.

    The caller writes the temporary file (by any means: ``np.save``,
    ``faiss.write_index``, ...). If the block raises, the temporary file is
    removed and ``dest`` is left untouched. The file gets the permissions of
    the file it replaces, or those of any new file (``0o666`` less the
    umask), not the owner-only mode of a temporary file.

    Args:
        dest: Final path of the file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        if exc.errno in _FULL:
            raise disk_full(dest, exc.errno) from exc
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            mode = dest.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~UMASK
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _FULL and not isinstance(exc, DiskFullError):
            raise disk_full(dest, exc.errno) from exc
        raise


def disk_full(path: str | os.PathLike[str], code: int = errno.ENOSPC) -> DiskFullError:
    """The error for a write of ``path`` that ran out of space (``ENOSPC``) or quota (``EDQUOT``)."""
    path = Path(path)
    what = "quota" if code == errno.EDQUOT else "space"
    return DiskFullError(f"No {what} left on the device to write {path}; nothing was changed (files are replaced "
                         "whole or not at all): free some space and run it again", path=path, errno=code)


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write ``data`` to ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: str | os.PathLike[str], obj: object) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON."""
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    write_bytes(dest, text.encode("utf-8"))


def _kind(mode: int) -> str | None:
    """What a file of this mode is, when it is not a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], *, max_bytes: int | None = None,
                 error: type[DatabaseFileError] | type[InputFileError] = DatabaseFileError) -> BinaryIO:
    """Open a regular file for reading in binary, refusing anything else at once.

    The file is opened without blocking (a FIFO with no writer would otherwise hang) and checked with
    ``fstat`` on the open descriptor, so what is checked is what is read.

    Args:
        path: The file (a symbolic link to a regular file is fine).
        max_bytes: Refuse a larger file (``None``: any size).
        error: The error type to raise (:class:`~similar_images.errors.DatabaseFileError` for a database file,
            :class:`~similar_images.errors.InputFileError` for an input).

    Returns:
        The open binary file.

    Raises:
        FileNotFoundError: If there is no such file (or a link points nowhere): callers phrase that themselves.
        DatabaseFileError, InputFileError: (``error``) For a folder, a FIFO, a device, a socket, a link loop, a
            file that cannot be read, or one larger than ``max_bytes``; the message names the file.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "a loop of symbolic links"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            reason = "not readable (permission denied)"
        elif exc.errno == errno.ENXIO:
            reason = "a socket or device that cannot be opened, not a regular file"
        else:
            reason = f"cannot be opened ({exc.strerror or exc})"
        raise error(f"{path} is {reason}", path=path, reason=reason) from None
    try:
        st = os.fstat(fd)
        kind = _kind(st.st_mode)
        if kind is None and max_bytes is not None and st.st_size > max_bytes:
            kind = f"{st.st_size:,} bytes, more than the {max_bytes:,} such a file can have"
        if kind is not None:
            raise error(f"{path} is {kind}", path=path, reason=kind)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | os.PathLike[str], *, max_bytes: int | None = None,
                  error: type[DatabaseFileError] | type[InputFileError] = DatabaseFileError) -> int:
    """Check that ``path`` is a regular file that can be read (see :func:`open_regular`); returns its size."""
    with open_regular(path, max_bytes=max_bytes, error=error) as fh:
        return os.fstat(fh.fileno()).st_size


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text (strings left out)."""
    codes = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    steps = np.zeros(len(codes), dtype=np.int64)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse UTF-8 JSON text with bounds: nesting at most ``max_depth`` deep, finite numbers only (``1e400``,
    ``NaN`` and ``Infinity`` are refused), integers of at most 4,300 digits.

    Raises:
        ValueError: For invalid JSON (:class:`json.JSONDecodeError`), text that is not UTF-8
            (:class:`UnicodeDecodeError`), or JSON beyond the bounds; the message says which.
    """
    depth = _depth(data)
    if depth > max_depth:
        raise ValueError(f"nested {depth:,} deep (at most {max_depth})")
    return json.loads(data.decode("utf-8"), parse_float=_finite, parse_constant=_no_constant)


def read_json(path: str | os.PathLike[str], *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
              error: type[DatabaseFileError] | type[InputFileError] = DatabaseFileError) -> Any:
    """Read a JSON file written by :func:`write_json`, within bounds (see :func:`open_regular`, :func:`parse_json`).

    Raises:
        FileNotFoundError: If there is no such file.
        DatabaseFileError, InputFileError: (``error``) If it is not a regular readable file, or is larger than
            ``max_bytes``.
        ValueError: If it is not valid UTF-8 JSON, or is beyond the bounds.
    """
    with open_regular(path, max_bytes=max_bytes, error=error) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while being read
        raise error(f"{path} is more than the {max_bytes:,} bytes such a file can have", path=path,
                    reason="too large")
    return parse_json(data, max_depth=max_depth)
