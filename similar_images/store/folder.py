"""The files of a database folder, read and written the same way by every kind of database.

::

    manifest.json      what everything is (see :mod:`.manifest`): the commit point
    vectors.f32        float32 vectors, row i is item id i (L2-normalised)
    items.jsonl        one JSON object per line: {"id": i, "path": ...} (or "text")
    failures.csv       inputs that could not be read, with the reason
    index-NNNN.faiss   the Faiss index (ids = item ids); NNNN is its generation

``vectors.f32`` and ``items.jsonl`` only ever grow, and readers use the first
``counts.items`` rows of each, so a crash while adding leaves extra rows that
are ignored. Every file is written to a temporary name, flushed and renamed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .._util import io as _io
from ..errors import DatabaseCorruptError, DatabaseExistsError
from .manifest import MANIFEST

__all__ = [
    "VECTORS",
    "ITEMS",
    "FAILURES",
    "PARTIAL_DIR",
    "LOCK_FILE",
    "write_items",
    "append_items",
    "read_items",
    "write_failures",
    "read_failures",
    "open_vectors",
    "index_file_name",
    "index_generation",
    "remove_database_files",
    "exists_error",
    "prepare_new_database",
]

logger = logging.getLogger(__name__)

VECTORS = "vectors.f32"
ITEMS = "items.jsonl"
FAILURES = "failures.csv"
#: The folder, inside the database folder, where an unfinished build keeps its pieces.
PARTIAL_DIR = ".partial"
#: The lock file that serialises writers of a database (see :mod:`.locking`).
LOCK_FILE = ".lock"

_INDEX_NAME = re.compile(r"^index-(\d+)\.faiss$")


def _item_lines(items: Iterable[str], key: str, start_id: int) -> Iterable[str]:
    for i, item in enumerate(items, start=start_id):
        yield json.dumps({"id": i, key: str(item)}, ensure_ascii=False) + "\n"


def write_items(path: Path, key: str, items: Iterable[str], start_id: int = 0) -> int:
    """Atomically write ``items.jsonl`` (``{"id": i, key: item}`` per line); returns the number written."""
    n = 0
    with _io.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for line in _item_lines(items, key, start_id):
            fh.write(line)
            n += 1
    return n


def append_items(path: Path, key: str, items: Iterable[str], *, keep: int) -> None:
    """Keep the first ``keep`` lines of ``items.jsonl`` and append ``items`` (ids from ``keep`` on), atomically."""
    with _io.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        if keep:
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh):
                    if n == keep:
                        break
                    out.write(line if line.endswith("\n") else line + "\n")
        for line in _item_lines(items, key, keep):
            out.write(line)


def read_items(path: Path, n: int, key: str) -> list[str]:
    """The first ``n`` items of ``items.jsonl``.

    Raises:
        DatabaseCorruptError: If the file is missing, a line is not valid JSON, ids are out of order, or there are
            fewer than ``n`` lines.
    """
    if not path.exists():
        raise DatabaseCorruptError(f"Items file {path} is missing; rebuild the database")
    items: list[str] = []
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if len(items) == n:
                    break
                try:
                    rec = json.loads(line)
                    ident, item = rec["id"], rec[key]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DatabaseCorruptError(
                        f"{path} line {lineno} is damaged ({exc.__class__.__name__}: {exc}); rebuild the database"
                    ) from None
                if ident != len(items):
                    raise DatabaseCorruptError(
                        f"{path} line {lineno}: expected id {len(items)}, found {ident}; rebuild the database")
                items.append(item)
        except UnicodeDecodeError as exc:
            raise DatabaseCorruptError(f"{path} is not valid UTF-8 ({exc}); rebuild the database") from None
    if len(items) != n:
        raise DatabaseCorruptError(f"{path} lists {len(items)} items but the manifest counts {n}; "
                                   "rebuild the database")
    return items


def write_failures(path: Path, failures: Iterable[tuple[str, str]]) -> None:
    """Atomically write ``failures.csv`` (``path,reason`` rows under a header)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(failures)
    _io.write_bytes(path, buf.getvalue().encode("utf-8"))


def read_failures(path: Path) -> list[tuple[str, str]]:
    """The ``(path, reason)`` rows of ``failures.csv`` (none when it is missing)."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="", errors="replace") as fh:
        rows = list(csv.reader(fh))
    return [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]


def open_vectors(path: Path, n: int, dim: int) -> np.ndarray:
    """Memory-map the first ``n`` rows of a float32 vectors file.

    Raises:
        DatabaseCorruptError: If the file is missing, shorter than ``n`` rows, or not a whole number of rows.
    """
    if not path.exists():
        raise DatabaseCorruptError(f"Vectors file {path} is missing; rebuild the database")
    expected = n * dim * 4
    size = path.stat().st_size
    if size < expected:
        raise DatabaseCorruptError(
            f"{path} holds {size // (dim * 4)} vectors of dimension {dim}, but the manifest counts {n}; "
            "the database is damaged: rebuild it"
        )
    if size % (dim * 4):
        raise DatabaseCorruptError(f"{path} size {size} is not a multiple of the {dim}-d vector size; "
                                   "rebuild the database")
    if size > expected:
        logger.debug("%s has %d rows beyond the %d committed ones (an interrupted add); they are ignored",
                     path, (size - expected) // (dim * 4), n)
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))


def index_file_name(generation: int) -> str:
    """``index-0001.faiss`` for generation 1."""
    return f"index-{generation:04d}.faiss"


def index_generation(name: str | None) -> int:
    """The generation of an index file name (0 for ``None``)."""
    if not name:
        return 0
    m = _INDEX_NAME.match(name)
    return int(m.group(1)) if m else 0


def remove_database_files(db: str | os.PathLike[str], files: Iterable[str] = (VECTORS, ITEMS, FAILURES)) -> None:
    """Delete the files of a database (manifest first, so a crash never leaves a half-valid one).

    Args:
        db: The database folder.
        files: The data files to delete besides the manifest and the ``index-*`` generations.
    """
    db = Path(db)
    (db / MANIFEST).unlink(missing_ok=True)
    for name in files:
        (db / name).unlink(missing_ok=True)
    for old in [*db.glob("index-*.faiss"), *db.glob("index-*.ivfdata")]:
        old.unlink()


def exists_error(db: Path) -> DatabaseExistsError:
    """The error for a new database asked for where one already exists."""
    return DatabaseExistsError(f"A database already exists at {db}; replacing it needs force=True", path=db)


def prepare_new_database(
    db: str | os.PathLike[str], *, force: bool, files: Iterable[str] = (VECTORS, ITEMS, FAILURES)
) -> Path:
    """Make ``db`` ready for a new database: refuse an existing one, or remove its files when ``force``.

    Raises:
        DatabaseExistsError: If a database exists at ``db`` and ``force`` is false.
    """
    db = Path(db).expanduser()
    if (db / MANIFEST).exists():
        if not force:
            raise exists_error(db)
        remove_database_files(db, files)
    db.mkdir(parents=True, exist_ok=True)
    return db


