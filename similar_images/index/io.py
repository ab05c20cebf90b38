"""Reading and writing Faiss indexes (atomically), and their size."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import faiss

from .._util.capture import stdout_to_log
from .._util.io import atomic_path
from .types import FaissIndex

__all__ = ["write_index", "read_index", "index_nbytes"]

logger = logging.getLogger(__name__)


def index_nbytes(index: FaissIndex) -> int:
    """Size of the serialised index in bytes (what it occupies on disk and, roughly, in memory)."""
    return int(faiss.serialize_index(index).size)


#: How Faiss words a write that ran out of space (it reports the C library's message in a RuntimeError).
_FULL_MESSAGES = {os.strerror(errno.ENOSPC): errno.ENOSPC, os.strerror(errno.EDQUOT): errno.EDQUOT}


def write_index(index: FaissIndex, path: str | Path) -> None:
    """Atomically write a Faiss index.

    Raises:
        DiskFullError: If the device ran out of space (the previous file, if any, is left as it was).
    """
    with atomic_path(path) as tmp:
        try:
            faiss.write_index(index, str(tmp))
        except RuntimeError as exc:
            code = next((c for m, c in _FULL_MESSAGES.items() if m in str(exc)), None)
            if code is None:
                raise
            raise OSError(code, os.strerror(code), str(tmp)) from exc  # atomic_path turns it into DiskFullError


def read_index(path: str | Path, *, mmap: bool = False) -> FaissIndex:
    """Read a Faiss index (optionally memory-mapped, for indexes that support it).

    On-disk inverted lists (an ``.ivfdata`` file) are looked up in the index file's own folder, so a database
    folder can be moved.
    """
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR
    if mmap:
        flags |= faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    if not any(Path(path).parent.glob("*.ivfdata")):
        return faiss.read_index(str(path), flags)
    # Faiss prints the on-disk lists' new location to standard output: to the log instead (--json stays JSON).
    with stdout_to_log(logger, logging.DEBUG):
        return faiss.read_index(str(path), flags)
