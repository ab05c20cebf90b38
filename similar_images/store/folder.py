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

The manifest records a CRC-32 of the committed rows of ``vectors.f32`` and of
the committed lines of ``items.jsonl`` (``checksums``), extended at every
commit that adds rows; opening a database verifies both in full (the vectors
are read once: 30 to 100 ms for 40,000 x 512). A database written before
checksums existed opens without them and gets them at its next add.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._util import io as _io
from ..errors import DatabaseCorruptError, DatabaseExistsError, DatabaseFileError
from .manifest import MANIFEST, Checksum

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
    "vectors_crc32",
    "verify_vectors",
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


def _item_lines(items: Iterable[str], key: str, start_id: int) -> Iterable[bytes]:
    for i, item in enumerate(items, start=start_id):
        yield (json.dumps({"id": i, key: str(item)}, ensure_ascii=False) + "\n").encode("utf-8")


def write_items(path: Path, key: str, items: Iterable[str], start_id: int = 0) -> Checksum:
    """Atomically write ``items.jsonl`` (``{"id": i, key: item}`` per line).

    Returns:
        The number of lines written and the CRC-32 of their bytes (for the manifest's ``checksums``).
    """
    n, crc = 0, 0
    with _io.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for line in _item_lines(items, key, start_id):
            fh.write(line)
            crc = zlib.crc32(line, crc)
            n += 1
    return Checksum(n, crc)


def append_items(path: Path, key: str, items: Iterable[str], *, keep: int) -> Checksum:
    """Keep the first ``keep`` lines of ``items.jsonl`` and append ``items`` (ids from ``keep`` on), atomically.

    Returns:
        The number of lines of the new file and the CRC-32 of all of them.
    """
    n, crc = 0, 0
    with _io.atomic_path(path) as tmp, open(tmp, "wb") as out:
        if keep:
            with _open(path) as fh:
                for line in fh:
                    if n == keep:
                        break
                    line = line if line.endswith(b"\n") else line + b"\n"
                    out.write(line)
                    crc = zlib.crc32(line, crc)
                    n += 1
        for line in _item_lines(items, key, keep):
            out.write(line)
            crc = zlib.crc32(line, crc)
            n += 1
    return Checksum(n, crc)


def _open(path: Path) -> BinaryIO:
    """Open a data file of the database (see :func:`similar_images._util.io.open_regular`), with the advice."""
    try:
        return _io.open_regular(path)
    except DatabaseFileError as exc:
        raise DatabaseFileError(f"{exc}; the database is damaged: rebuild it", path=path, reason=exc.reason) from None


def _damaged(path: Path, what: str) -> DatabaseCorruptError:
    return DatabaseCorruptError(f"{path} does not match the checksum the manifest recorded for its first {what}: "
                                "the file is damaged; rebuild the database")


def _uncounted(path: Path, checksum: Checksum, n: int) -> DatabaseCorruptError:
    return DatabaseCorruptError(f"The manifest records a checksum of {checksum.rows} rows of {path} but counts {n} "
                                "items: the manifest is damaged; rebuild the database")


def read_items(path: Path, n: int, key: str, *, checksum: Checksum | None = None) -> list[str]:
    """The first ``n`` items of ``items.jsonl``.

    Args:
        path: The file.
        n: The number of items the manifest counts.
        key: The key of an item (``"path"``, ``"text"``).
        checksum: The manifest's checksum of the first ``checksum.rows`` lines, verified while they are read.

    Raises:
        DatabaseCorruptError: If the file is missing, a line is not valid JSON, ids are out of order, there are
            fewer than ``n`` lines, or the lines do not match ``checksum``.
        DatabaseFileError: If it is not a regular file that can be read.
    """
    if not (path.exists() or path.is_symlink()):
        raise DatabaseCorruptError(f"Items file {path} is missing; rebuild the database")
    items: list[str] = []
    crc = 0
    try:
        fh = _open(path)
    except FileNotFoundError:
        raise DatabaseCorruptError(f"Items file {path} is missing; rebuild the database") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(items) == n:
                break
            if checksum is not None and lineno <= checksum.rows:
                crc = zlib.crc32(raw, crc)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatabaseCorruptError(f"{path} is not valid UTF-8 ({exc}); rebuild the database") from None
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
    if len(items) != n:
        raise DatabaseCorruptError(f"{path} lists {len(items)} items but the manifest counts {n}; "
                                   "rebuild the database")
    if checksum is not None and checksum.rows > n:
        raise _uncounted(path, checksum, n)
    if checksum is not None and crc != checksum.crc32:
        raise _damaged(path, f"{checksum.rows} lines")
    return items


def write_failures(path: Path, failures: Iterable[tuple[str, str]]) -> None:
    """Atomically write ``failures.csv`` (``path,reason`` rows under a header)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(failures)
    _io.write_bytes(path, buf.getvalue().encode("utf-8"))


def read_failures(path: Path) -> list[tuple[str, str]]:
    """The ``(path, reason)`` rows of ``failures.csv`` (none when it is missing).

    Raises:
        DatabaseFileError: If it is not a regular file that can be read.
    """
    try:
        fh = _open(path)
    except FileNotFoundError:
        return []
    with fh, io.TextIOWrapper(fh, encoding="utf-8", newline="", errors="replace") as text:
        rows = list(csv.reader(text))
    return [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]


def open_vectors(path: Path, n: int, dim: int) -> np.ndarray:
    """Memory-map the first ``n`` rows of a float32 vectors file (see :func:`verify_vectors` for their checksum).

    Raises:
        DatabaseCorruptError: If the file is missing, shorter than ``n`` rows, or not a whole number of rows.
        DatabaseFileError: If it is not a regular file that can be read.
    """
    if not (path.exists() or path.is_symlink()):
        raise DatabaseCorruptError(f"Vectors file {path} is missing; rebuild the database")
    try:
        with _open(path) as fh:
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        raise DatabaseCorruptError(f"Vectors file {path} is missing; rebuild the database") from None
    expected = n * dim * 4
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


def verify_vectors(path: Path, vectors: np.ndarray, checksum: Checksum | None) -> None:
    """Check the first ``checksum.rows`` rows of ``vectors`` (read from ``path``) against the manifest's checksum
    (it reads them: 30 to 100 ms for 40,000 x 512, see ``benchmarks/bench_open.py``); nothing without one.

    Raises:
        DatabaseCorruptError: If they do not match (a zeroed or bit-flipped file).
    """
    if checksum is None:
        return
    if checksum.rows > len(vectors):
        raise _uncounted(path, checksum, len(vectors))
    if vectors_crc32(vectors, 0, checksum.rows) != checksum.crc32:
        raise _damaged(path, f"{checksum.rows} vectors")


def vectors_crc32(vectors: np.ndarray, start: int, stop: int, crc: int = 0) -> int:
    """The CRC-32 of the bytes of rows ``start`` to ``stop`` of ``vectors``, continuing ``crc``."""
    step = max(1, (64 * 2**20) // max(1, vectors.shape[1] * 4))  # 64 MB at a time
    for lo in range(start, stop, step):
        crc = zlib.crc32(np.ascontiguousarray(vectors[lo:min(stop, lo + step)]).data.cast("B"), crc)
    return crc


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


