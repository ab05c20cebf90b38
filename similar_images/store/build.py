"""The one resumable build: items in, a database folder out, for images and texts alike.

:func:`build_database` embeds a list of items with any
:class:`~similar_images.embed.Embedder` and writes a new database folder:

1. **Plan** (:mod:`.plan`). ``DB/.partial/plan.json`` pins the settings (the embedder's
   ``info()``, the shard size) and ``DB/.partial/items.jsonl`` the items, so that
   running the same command again resumes, and running it with other settings
   is refused instead of mixing vectors of two models (unless nothing was
   committed yet: then the new settings simply replace the old plan).
2. **Shards** (:mod:`similar_images.engines`). Items are embedded in fixed-size shards by an
   :class:`~similar_images.engines.local.Engine` (:class:`~similar_images.engines.local.LocalEngine`:
   a thread pool prepares items while the model runs on the previous batch; a Spark engine runs shards on a
   cluster). Each shard is committed atomically (:mod:`similar_images.engines.shards`):
   ``shard-NNNNNN.npy`` (the vectors of the items that embedded) then ``shard-NNNNNN.json`` (their positions
   and the failures), the commit marker. A killed run loses at most the shards in progress, and since
   shard boundaries are fixed by position the result equals an uninterrupted run's.
3. **Commit.** The shards are streamed into ``vectors.f32``, ``items.jsonl``
   and ``failures.csv``, then the manifest is written (the commit point), then
   ``.partial/`` is removed.

Image extraction (:func:`~similar_images.store.builders.extract_features`) and
the text build (:func:`~similar_images.store.builders.build_text_database`)
are thin calls of :func:`build_database`; adding to a database is :mod:`.adding`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from .._util import io as _io
from ..embed import item_kind, l2_normalize
from ..engines.local import BuildJob, Engine, LocalEngine, ShardEmbedder
from ..engines.shards import shard_meta, valid_shard
from ..errors import ConfigError, DatabaseError
from ..sources.images import normalize_path
from .folder import (
    FAILURES,
    ITEMS,
    PARTIAL_DIR,
    VECTORS,
    exists_error,
    prepare_new_database,
    remove_database_files,
    write_failures,
    write_items,
)
from .locking import database_lock
from .manifest import FORMAT, MANIFEST, Checksum, Counts, Manifest
from .plan import PLAN, digest, load_or_create_plan, plan_settings

__all__ = [
    "BuildConfig",
    "BuildSummary",
    "CommittedShards",
    "DatabaseWriter",
    "VectorDatabaseWriter",
    "build_database",
    "unit_rows",
    "write_database",
]

logger = logging.getLogger(__name__)

@dataclass
class BuildConfig:
    """Settings of a build.

    Attributes:
        batch_size: Items per model call.
        workers: Threads preparing (decoding) items (default: number of CPUs, at most 8).
        shard_size: Items per committed shard (the most an interruption can lose).
        verbose: Show a progress bar.
        unit: What an item is called in the progress bar (``"img"``, ``"text"``).
    """

    batch_size: int = 32
    workers: int | None = None
    shard_size: int = 1024
    verbose: bool = True
    unit: str = "item"

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")


@dataclass
class BuildSummary:
    """What a build did.

    Attributes:
        total: Items planned (inputs that could be read or not).
        embedded: Items in the database.
        failed: Items that could not be used (listed in ``failures.csv``).
        resumed_from: Items already done by an interrupted run.
        seconds: Time of this run's embedding.
        items_per_second: Items processed per second in this run.
        failures: ``(item, reason)`` of every failure.
    """

    total: int
    embedded: int
    failed: int
    resumed_from: int
    seconds: float
    items_per_second: float
    failures: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- the commit
def write_database(
    db: str | os.PathLike[str],
    *,
    kind: str,
    model: dict[str, Any],
    items: Sequence[str],
    vector_chunks: Iterable[np.ndarray],
    failures: Sequence[tuple[str, str]] = (),
    extra: dict[str, Any] | None = None,
    force: bool = False,
) -> Manifest:
    """Write a new database (without an index) from vectors streamed in chunks.

    Args:
        db: Folder to write.
        kind: The kind of items (``"image"`` or ``"text"``).
        model: The embedder's ``info()`` (must contain ``name`` and ``dim``).
        items: Path (or text) of each vector, in order; item ``i`` gets id ``i``.
        vector_chunks: Arrays of shape ``(m, dim)`` whose rows concatenate to one per item (L2-normalised
            here, as the manifest says they are: searches score by inner product).
        failures: ``(item, reason)`` of inputs that could not be used.
        extra: More manifest sections (e.g. extraction settings).
        force: Replace an existing database.

    Returns:
        The manifest.

    Raises:
        DatabaseExistsError: If a database exists and ``force`` is false.
        ValueError: If the vectors do not match the items or the dimension.
    """
    key = item_kind(kind).item_key
    db = prepare_new_database(db, force=force)
    dim = int(model["dim"])
    n, crc = 0, 0
    with _io.atomic_path(db / VECTORS) as tmp, open(tmp, "wb") as fh:
        for chunk in vector_chunks:
            arr = np.ascontiguousarray(chunk, dtype=np.float32)
            if arr.ndim != 2 or arr.shape[1] != dim:
                raise ValueError(f"Vectors of shape {arr.shape} do not match the model dimension {dim}")
            data = unit_rows(arr).tobytes()
            fh.write(data)
            crc = zlib.crc32(data, crc)
            n += len(arr)
    if n != len(items):
        (db / VECTORS).unlink(missing_ok=True)
        raise ValueError(f"Got {n} vectors for {len(items)} items")
    items_checksum = write_items(db / ITEMS, key, items)
    write_failures(db / FAILURES, failures)
    manifest = Manifest(kind=kind, model=dict(model),
                        files={"vectors": VECTORS, "items": ITEMS, "failures": FAILURES, "index": None},
                        checksums={"vectors": Checksum(n, crc), "items": items_checksum},
                        counts=Counts(items=n, failed=len(failures)), extra=dict(extra or {}))
    manifest.save(db)
    logger.info("Wrote database %s: %d items, %d failures", db, n, len(failures))
    return manifest


def unit_rows(arr: np.ndarray) -> np.ndarray:
    """``arr`` with every row of unit length (zero rows stay zero); rows that already are keep their exact bits."""
    norms = np.linalg.norm(arr, axis=1)
    off = np.flatnonzero((np.abs(norms - 1.0) > 1e-5) & (norms > 0))
    if not len(off):
        return arr
    arr = arr.copy()
    arr[off] = l2_normalize(arr[off])
    return arr


# --------------------------------------------------------------------------- the build
def build_database(
    items: Sequence[str],
    embedder: ShardEmbedder,
    db_path: str | os.PathLike[str],
    config: BuildConfig | None = None,
    *,
    failures: Sequence[tuple[str, str]] = (),
    extra: Callable[[BuildSummary], dict[str, Any]] | None = None,
    force: bool = False,
    engine: Engine | None = None,
    writer: DatabaseWriter | None = None,
) -> BuildSummary:
    """Embed ``items`` into a new database folder, resumably (see the module documentation).

    Args:
        items: The items (image paths, texts), in id order.
        embedder: Embeds them.
        db_path: The database folder to create (or the interrupted one to resume).
        config: Batch and shard sizes, threads, progress bar.
        failures: ``(item, reason)`` of inputs already known to be unusable (e.g. empty CSV rows); listed first
            in ``failures.csv``.
        extra: Makes more manifest sections from the summary (e.g. the extraction settings and speed).
        force: Replace an existing database and discard an interrupted build.
        engine: Runs the shards (default: :class:`~similar_images.engines.local.LocalEngine`).
        writer: Writes the database from the committed shards (default: :class:`VectorDatabaseWriter`; the
            SIFT method writes its descriptor index).

    Returns:
        The :class:`BuildSummary`.

    Raises:
        DatabaseExistsError: If a database already exists at ``db_path`` and ``force`` is false.
        InterruptedBuildError: If an interrupted build with other settings is found.
    """
    config = config or BuildConfig()
    writer = writer or VectorDatabaseWriter()
    db = normalize_path(db_path)  # absolute (links kept): an engine's workers may run in other folders
    db.mkdir(parents=True, exist_ok=True)
    partial = db / PARTIAL_DIR
    info = embedder.info()
    settings = plan_settings(info, embedder.kind, config.shard_size)
    with database_lock(db):
        if (db / MANIFEST).exists():
            if not force:
                done = _finished_build(db, partial, settings, writer.format)
                if done is not None:
                    return done
                raise exists_error(db)
            remove_database_files(db)
        if force and partial.exists():
            shutil.rmtree(partial)
        items = load_or_create_plan(partial, [str(x) for x in items], settings)
        job = BuildJob(partial=partial, items=items, shard_size=config.shard_size, batch_size=config.batch_size,
                       workers=config.workers or min(8, os.cpu_count() or 1), embedder_info=info,
                       kind=embedder.kind, dim=embedder.dim)
        todo = [s for s in range(job.n_shards) if not valid_shard(partial, s, job.shard_items(s), job.dim)]
        done_before = len(items) - sum(len(job.shard_items(s)) for s in todo)
        if done_before:
            logger.info("Resuming: %d of %d items already done", done_before, len(items))
        processed = 0
        t0 = time.perf_counter()
        if todo:
            with tqdm(total=len(items), initial=done_before, unit=config.unit, desc=f"embed {info['name']}",
                      disable=not config.verbose, smoothing=0.1, miniters=1) as bar:

                def progress(n: int) -> None:
                    nonlocal processed
                    processed += n
                    bar.update(n)

                warm = getattr(embedder, "warm_up", None)
                if warm is not None and getattr(engine, "embeds_in_this_process", True):
                    warm()  # build the model before the clock starts: the speed reported is the pipeline's
                    t0 = time.perf_counter()
                (engine or LocalEngine()).run(job, todo, embedder, progress)
        seconds = time.perf_counter() - t0
        missing = [s for s in range(job.n_shards) if not valid_shard(partial, s, job.shard_items(s), job.dim)]
        if missing:
            raise DatabaseError(f"{len(missing)} shard(s) of the build were not committed (first: {missing[0]})",
                                hint="Building again with the same settings finishes them.", path=db)
        summary = _commit(db, partial, job, list(failures), processed, seconds, done_before, extra, writer)
    return summary


@dataclass
class CommittedShards:
    """The committed shards of a finished build, read in order by its writer.

    Attributes:
        job: The build.
        metas: Each shard's commit marker, in shard order.
    """

    job: BuildJob
    metas: list[dict[str, Any]]

    @property
    def items(self) -> list[str]:
        """The items that embedded, in id order."""
        return [self.job.items[i] for meta in self.metas for i in meta["ok"]]

    def vector_chunks(self) -> Iterator[np.ndarray]:
        """Each shard's vectors (memory-mapped), in order: one row per item, or ``rows`` rows per item for an
        embedder that gives several vectors per item (see :meth:`item_vectors`)."""
        for meta in self.metas:
            yield np.load(self.job.partial / meta["vectors"], mmap_mode="r", allow_pickle=False)

    def item_vectors(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(item, its vectors)`` of every item that embedded, in id order (``(rows, dim)`` arrays)."""
        for meta, chunk in zip(self.metas, self.vector_chunks()):
            rows = meta.get("rows") or [1] * len(meta["ok"])
            start = 0
            for pos, n in zip(meta["ok"], rows):
                yield self.job.items[pos], np.asarray(chunk[start:start + n])
                start += n


class DatabaseWriter(Protocol):
    """Writes the database of a build from its committed shards (the commit point is its manifest)."""

    #: The ``format`` of the manifests it writes.
    format: str

    def write(self, db: Path, shards: CommittedShards, failures: list[tuple[str, str]],
              extra: dict[str, Any]) -> None:
        """Write the database into ``db`` (whose previous files were removed), its manifest last."""
        ...


class VectorDatabaseWriter:
    """The feature-vector database: :func:`write_database` of one vector per item."""

    format = FORMAT

    def write(self, db: Path, shards: CommittedShards, failures: list[tuple[str, str]],
              extra: dict[str, Any]) -> None:
        """Stream the shards into ``vectors.f32``, ``items.jsonl`` and ``failures.csv``, then the manifest."""
        job = shards.job
        write_database(db, kind=job.kind, model=job.embedder_info, items=shards.items,
                       vector_chunks=shards.vector_chunks(), failures=failures, extra=extra)


def _commit(db: Path, partial: Path, job: BuildJob, pre_failures: list[tuple[str, str]], processed: int,
            seconds: float, done_before: int, extra: Callable[[BuildSummary], dict[str, Any]] | None,
            writer: DatabaseWriter) -> BuildSummary:
    shards = CommittedShards(job, [_io.read_json(shard_meta(partial, s)) for s in range(job.n_shards)])
    items = job.items
    ok_items = shards.items
    failures = pre_failures + [(items[i], reason) for meta in shards.metas for i, reason in meta["failures"]]
    rate = processed / seconds if seconds > 0 and processed else 0.0
    summary = BuildSummary(total=len(items), embedded=len(ok_items), failed=len(failures), resumed_from=done_before,
                           seconds=seconds, items_per_second=rate, failures=failures)
    writer.write(db, shards, failures, {**(extra(summary) if extra else {}),
                                        "build": {"plan_digest": digest(items), "shard_size": job.shard_size}})
    shutil.rmtree(partial, ignore_errors=True)
    if failures:
        logger.warning("%d of %d inputs could not be used; see %s", len(failures), len(items) + len(pre_failures),
                       db / FAILURES)
    return summary


def _finished_build(db: Path, partial: Path, settings: dict[str, Any], fmt: str) -> BuildSummary | None:
    """The summary of a database whose build finished but was killed before removing ``.partial/`` (the same
    plan); ``None`` otherwise."""
    if not (partial / PLAN).exists():
        return None
    try:
        saved = _io.read_json(partial / PLAN)
        manifest = Manifest.load(db, fmt=fmt)
    except (OSError, ValueError, DatabaseError):
        return None
    if not isinstance(saved, dict) or saved.get("settings") != settings \
            or manifest.build_plan_digest != saved.get("digest"):
        return None
    logger.info("%s is already complete (an earlier run stopped while cleaning up); removing %s", db, partial)
    shutil.rmtree(partial, ignore_errors=True)
    return BuildSummary(total=manifest.counts.items + manifest.counts.failed, embedded=manifest.counts.items,
                        failed=manifest.counts.failed, resumed_from=manifest.counts.items, seconds=0.0,
                        items_per_second=0.0, failures=[])
