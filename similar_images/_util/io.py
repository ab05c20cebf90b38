"""Crash-safe file writing.

Every artifact the package writes goes through :func:`atomic_path`: the data
is written to a temporary file in the destination folder, flushed to disk,
and then renamed over the destination. A crash at any moment leaves either
the old file or the new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["UMASK", "atomic_path", "write_json", "read_json", "write_bytes", "fsync_dir", "user_cache_dir"]

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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write ``data`` to ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON."""
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    write_bytes(dest, text.encode("utf-8"))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
