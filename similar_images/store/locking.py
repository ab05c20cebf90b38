"""Serialising the writers of a database folder.

Every change to a database (a build, an add, a remove, a new index) holds an
exclusive advisory lock on ``DB/.lock`` from reading the manifest to
committing the new one, so that two processes never both extend the same
version (which would lose one's work). Readers take no lock: they read the
manifest, which is replaced atomically, and the files it names.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from .._util.locks import LockTimeoutError, file_lock
from ..errors import DatabaseError
from .folder import LOCK_FILE

__all__ = ["database_lock", "DEFAULT_LOCK_TIMEOUT"]

#: Seconds a writer waits for another writer of the same database before giving up.
DEFAULT_LOCK_TIMEOUT = 600.0


#: ``{lock file: (thread id, depth)}``: the locks this process holds, so that a thread may take its own lock
#: again (a distributed index build commits through the same steps as a local one).
_HELD: dict[Path, tuple[int, int]] = {}
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def database_lock(db: str | os.PathLike[str], *, timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the write lock of the database folder ``db`` (created if missing).

    Re-entrant within a thread; other threads and other processes wait.

    Raises:
        DatabaseError: If another process or thread holds it for longer than ``timeout`` seconds.
    """
    path = (Path(db).expanduser() / LOCK_FILE).resolve()
    me = threading.get_ident()
    with _HELD_GUARD:
        owner, depth = _HELD.get(path, (None, 0))
        mine = owner == me
        if mine:
            _HELD[path] = (me, depth + 1)
    if mine:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[path] = (me, _HELD[path][1] - 1)
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path, timeout=timeout))
        except LockTimeoutError:
            raise DatabaseError(
                f"Another process has been changing {Path(db)} for over {timeout:g} s (it holds {path}); "
                "wait for it to finish and try again"
            ) from None
        except PermissionError:
            raise  # the command line says "Permission denied" with the file name
        except OSError as exc:
            raise DatabaseError(f"Cannot lock the database for writing: {path} cannot be opened as a lock file "
                                f"({exc.strerror or exc}); remove it and try again") from None
        with _HELD_GUARD:
            _HELD[path] = (me, 1)
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD.pop(path, None)
