"""What native code prints to standard output, sent to the log instead.

Faiss' C++ code prints straight to file descriptor 1 (``resizing ... .ivfdata``, ``IO_FLAG_ONDISK_SAME_DIR:
updating ondisk filename ...``): Python's ``sys.stdout`` never sees it, so redirecting that does not help, and
a command printing JSON would print invalid JSON. :func:`stdout_to_log` points descriptor 1 at a temporary
file for the length of a block, then logs each line it received.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

__all__ = ["stdout_to_log"]

# Descriptor 1 belongs to the whole process: one capture at a time (a second thread waits; one thread may nest).
_LOCK = threading.RLock()


def _flush_c_stdout() -> None:
    """Flush C's ``stdout`` buffer (native code writes through it; a pipe or file buffers whole blocks)."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to call (e.g. some Windows builds)
        pass


@contextlib.contextmanager
def stdout_to_log(logger: logging.Logger, level: int = logging.INFO) -> Iterator[None]:
    """Log, line by line, what is written to file descriptor 1 inside the block (by native code, or by Python
    when ``sys.stdout`` writes to it).

    Args:
        logger: Where the lines go.
        level: Their level.

    Without a descriptor 1 to capture (it is closed), the block runs as it is.
    """
    with _LOCK:
        try:
            sys.stdout.flush()
        except (AttributeError, ValueError, OSError):  # no sys.stdout, or it is closed
            pass
        _flush_c_stdout()
        try:
            saved = os.dup(1)
        except OSError:
            yield
            return
        try:
            with tempfile.TemporaryFile() as tmp:
                os.dup2(tmp.fileno(), 1)
                try:
                    yield
                finally:
                    with contextlib.suppress(AttributeError, ValueError, OSError):
                        sys.stdout.flush()
                    _flush_c_stdout()
                    os.dup2(saved, 1)
                    tmp.seek(0)
                    for line in tmp.read().decode("utf-8", errors="replace").splitlines():
                        if line.strip():
                            logger.log(level, "%s", line.rstrip())
        finally:
            os.close(saved)
