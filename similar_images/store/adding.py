"""Adding to an existing database: embedding new items with an engine through a work folder of shards.

:func:`embed_items` runs an :class:`~similar_images.engines.local.Engine` over the new items in a temporary
``DB/.adding-XXXX/`` folder (which every worker of a distributed engine can reach);
:meth:`~similar_images.store.Database.add` then appends the vectors under the write lock.
:func:`remove_stale_work_dirs` removes the folders of adds that were killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._util import io as _io
from .._util.locks import LockTimeoutError, file_lock
from ..embed import Embedder
from ..engines.local import BuildJob, Engine, LocalEngine
from ..engines.shards import shard_meta
from ..sources.images import normalize_path
from .build import BuildConfig

__all__ = ["embed_items", "remove_stale_work_dirs"]

logger = logging.getLogger(__name__)


def embed_items(items: Sequence[str], embedder: Embedder, db_path: str | os.PathLike[str],
                config: BuildConfig | None = None, *,
                engine: Engine | None = None) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Embed ``items`` with an engine, through a temporary shard folder inside the database folder (which
    every worker of a distributed engine can reach), for adding them to an existing database.

    Returns:
        ``(items that embedded, their (m, dim) vectors, (item, reason) failures)``.
    """
    config = config or BuildConfig()
    db = normalize_path(db_path)  # absolute (links kept): an engine's workers may run in other folders
    remove_stale_work_dirs(db)
    with _work_dir(db) as work:
        job = BuildJob(partial=work, items=[str(x) for x in items], shard_size=config.shard_size,
                       batch_size=config.batch_size, workers=config.workers or min(8, os.cpu_count() or 1),
                       embedder_info=embedder.info(), kind=embedder.kind, dim=embedder.dim)
        with tqdm(total=len(items), unit=config.unit, desc="add", disable=not config.verbose) as bar:

            def progress(n: int) -> None:
                bar.update(n)

            (engine or LocalEngine()).run(job, list(range(job.n_shards)), embedder, progress)
        metas = [_io.read_json(shard_meta(work, s)) for s in range(job.n_shards)]
        ok = [job.items[i] for m in metas for i in m["ok"]]
        vectors = [np.load(work / m["vectors"], allow_pickle=False) for m in metas]
        failures = [(job.items[i], r) for m in metas for i, r in m["failures"]]
    arr = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), dtype=np.float32)
    return ok, arr, failures


# --------------------------------------------------------------------------- work folders of adds
_WORK_PREFIX = ".adding-"
#: Lock files of work folders older than this (seconds) whose folder is gone are removed.
_ORPHAN_LOCK_AGE = 3600.0


@contextlib.contextmanager
def _work_dir(db: Path) -> Iterator[Path]:
    """A new ``DB/.adding-XXXX/`` folder for the shards of an add, removed afterwards.

    Its lock file (``.adding-XXXX.lock``) is locked before the folder is made and unlocked after it is removed,
    so that :func:`remove_stale_work_dirs` removes only the folders of adds that were killed.
    """
    fd, lock_name = tempfile.mkstemp(prefix=_WORK_PREFIX, suffix=".lock", dir=db)
    os.close(fd)
    lock = Path(lock_name)
    work = lock.with_suffix("")
    try:
        with file_lock(lock, timeout=0):
            work.mkdir()
            try:
                yield work
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.unlink(missing_ok=True)


def remove_stale_work_dirs(db: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``.adding-*`` folders that killed adds left in ``db`` (those whose lock nobody holds).

    Returns:
        The folders removed.
    """
    db = Path(db)
    removed: list[Path] = []
    for work in db.glob(_WORK_PREFIX + "*"):
        if work.suffix == ".lock":
            if not work.with_suffix("").exists() and time.time() - _mtime(work) > _ORPHAN_LOCK_AGE:
                work.unlink(missing_ok=True)
            continue
        if not work.is_dir():
            continue
        lock = work.with_name(work.name + ".lock")
        try:
            with file_lock(lock, timeout=0):
                shutil.rmtree(work, ignore_errors=True)
                lock.unlink(missing_ok=True)
        except LockTimeoutError:
            continue  # an add in progress
        removed.append(work)
        logger.info("Removed %s, left by an interrupted add", work)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
