"""Advisory file locks (POSIX ``flock``) that serialise writers across processes.

A lock is held on a small lock file beside what it protects; the lock file
itself is never deleted (deleting it would let two processes lock two
different files of the same name). On platforms without ``fcntl`` the locks
are no-ops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["file_lock", "LockTimeoutError"]

logger = logging.getLogger(__name__)


class LockTimeoutError(TimeoutError):
    """The lock was not obtained within the time allowed."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], *, shared: bool = False, timeout: float | None = None,
              poll: float = 0.05) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if missing) for the duration of the block.

    Args:
        path: The lock file.
        shared: A shared (reader) lock instead of an exclusive (writer) one.
        timeout: Seconds to wait; ``None`` waits for as long as it takes, ``0`` does not wait.
        poll: Seconds between attempts while waiting with a timeout.

    Raises:
        LockTimeoutError: If the lock was not obtained in time.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        if timeout is None:
            fcntl.flock(fd, mode)
        else:
            end = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= end:
                        raise LockTimeoutError(f"{path} is locked by another process") from None
                    time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
