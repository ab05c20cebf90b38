"""The one resumable build: items in, a database folder out, for images and texts alike.

:func:`build_database` embeds a list of items with any
:class:`~similar_images.embed.Embedder` and writes a new database folder:

1. **Plan.** ``DB/.partial/plan.json`` pins the settings (the embedder's
   ``info()``, the shard size) and ``DB/.partial/items.jsonl`` the items, so that
   running the same command again resumes, and running it with other settings
   is refused instead of mixing vectors of two models (unless nothing was
   committed yet: then the new settings simply replace the old plan).
2. **Shards.** Items are embedded in fixed-size shards by an :class:`Engine`
   (:class:`LocalEngine`: a thread pool prepares items while the model runs on
   the previous batch; a Spark engine runs shards on a cluster). Each shard is
   committed atomically: ``shard-NNNNNN.npy`` (the vectors of the items that
   embedded) then ``shard-NNNNNN.json`` (their positions and the failures), the
   commit marker. A killed run loses at most the shards in progress, and since
   shard boundaries are fixed by position the result equals an uninterrupted
   run's.
3. **Commit.** The shards are streamed into ``vectors.f32``, ``items.jsonl``
   and ``failures.csv``, then the manifest is written (the commit point), then
   ``.partial/`` is removed.

Image extraction (:func:`~similar_images.store.builders.extract_features`) and
the text build (:func:`~similar_images.store.builders.build_text_database`)
are thin calls of :func:`build_database`.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from .._util import io as _io
from .._util.locks import LockTimeoutError, file_lock
from ..embed import Embedder, embedder_from_info, item_kind, l2_normalize
from ..errors import ConfigError, DatabaseError, InputError, InterruptedBuildError
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
from .manifest import MANIFEST, Checksum, Counts, Manifest

__all__ = [
    "BuildConfig",
    "BuildSummary",
    "BuildJob",
    "Engine",
    "LocalEngine",
    "build_database",
    "embed_items",
    "write_database",
    "write_shard",
    "shard_done",
    "remove_stale_work_dirs",
    "PLAN",
]

logger = logging.getLogger(__name__)

#: The plan file of an unfinished build.
PLAN = "plan.json"
_PLAN_ITEMS = "items.jsonl"


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


# --------------------------------------------------------------------------- shards
def _shard_meta(partial: Path, shard: int) -> Path:
    return partial / f"shard-{shard:06d}.json"


def shard_done(partial: Path, shard: int) -> bool:
    """Whether ``shard`` is committed in ``partial`` (its marker and its vectors exist)."""
    meta = _shard_meta(partial, shard)
    if not meta.exists():
        return False
    try:
        info = _io.read_json(meta)
    except (OSError, ValueError, DatabaseError):  # damaged, or not a regular file: _valid_shard says which
        return False
    return (partial / info["vectors"]).exists()


def write_shard(partial: Path, shard: int, ok: Sequence[int], vectors: np.ndarray,
                failures: Sequence[tuple[int, str]], dim: int) -> None:
    """Commit one shard: its vectors, then the JSON marker (positions of the embedded items and failures).

    Args:
        partial: The ``.partial/`` folder of the database.
        shard: The shard number.
        ok: Positions (in the plan's items) of the items whose vectors are ``vectors``, in order.
        vectors: ``(len(ok), dim)`` float32 vectors.
        failures: ``(position, reason)`` of the items that could not be used.
        dim: The vectors' dimension (for an empty shard).
    """
    name = f"shard-{shard:06d}.npy"
    arr = np.asarray(vectors, dtype=np.float32).reshape(-1, dim) if len(ok) else np.zeros((0, dim), dtype=np.float32)
    if len(arr) != len(ok):
        raise ValueError(f"shard {shard}: {len(arr)} vectors for {len(ok)} items")
    with _io.atomic_path(partial / name) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    _io.write_json(_shard_meta(partial, shard), {"vectors": name, "ok": [int(i) for i in ok],
                                                  "failures": [[int(i), str(r)] for i, r in failures]})


@dataclass
class BuildJob:
    """What an engine needs to embed shards (picklable: it is sent to Spark executors).

    Attributes:
        partial: The ``.partial/`` folder every worker writes its shards into.
        items: The planned items (paths or texts), by position.
        shard_size: Items per shard.
        batch_size: Items per model call.
        workers: Threads preparing items.
        embedder_info: The embedder's ``info()``; :func:`~similar_images.embed.embedder_from_info` rebuilds it.
        kind: The kind of items.
        dim: The vectors' dimension.
        n_items: The number of items, when ``items`` travels apart from the job (a Spark partition carries only
            its own shards' items); ``-1``: ``len(items)``.
    """

    partial: Path
    items: Sequence[str]
    shard_size: int
    batch_size: int
    workers: int
    embedder_info: dict[str, Any]
    kind: str
    dim: int
    n_items: int = -1

    @property
    def n_shards(self) -> int:
        return (self.size + self.shard_size - 1) // self.shard_size

    @property
    def size(self) -> int:
        """The number of items of the build."""
        return self.n_items if self.n_items >= 0 else len(self.items)

    def shard_items(self, shard: int) -> range:
        """Positions of the items of ``shard``."""
        return range(shard * self.shard_size, min(self.size, (shard + 1) * self.shard_size))

    def write_shard(self, shard: int, ok: Sequence[int], vectors: np.ndarray,
                    failures: Sequence[tuple[int, str]]) -> None:
        """Commit ``shard`` (see :func:`write_shard`)."""
        write_shard(self.partial, shard, ok, vectors, failures, self.dim)

    def make_embedder(self, **options: Any) -> Embedder:
        """A new embedder like the one the build was planned with (for another process)."""
        return embedder_from_info(self.embedder_info, kind=self.kind, **options)


class Engine(Protocol):
    """Runs the shards of a build (an engine may also have ``describe() -> dict`` for manifests, and
    ``embeds_in_this_process = False`` when other processes load the model, so that a build does not load it here)."""

    def run(self, job: BuildJob, shards: Sequence[int], embedder: Embedder | None,
            progress: Callable[[int], None]) -> None:
        """Embed every shard in ``shards`` and commit each with ``job.write_shard``.

        Args:
            job: The build.
            shards: The shards still to do, in order.
            embedder: The embedder of this process (``None``: make one with ``job.make_embedder()``).
            progress: Called with the number of items processed, as they are.
        """
        ...


def describe_engine(engine: Engine | None) -> dict[str, Any]:
    """What ran a build, for manifests (``{"name": "local"}`` when no engine was given)."""
    if engine is None:
        return {"name": "local"}
    describe = getattr(engine, "describe", None)
    return describe() if describe is not None else {"name": type(engine).__name__}


def prepare_one(embedder: Embedder, item: str) -> tuple[Any, str | None]:
    """``(prepared, None)``, or ``(None, reason)`` when the item cannot be used (never raises for bad input)."""
    try:
        return embedder.prepare(item), None
    except InputError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a failure report must never abort the run
        return None, f"{exc.__class__.__name__}: {exc}"


@dataclass
class _Batch:
    shard: int
    positions: list[int] = field(default_factory=list)
    prepared: list[Any] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    last: bool = False  # the last batch of its shard


class LocalEngine:
    """Embeds shards in this process: a thread pool prepares (decodes) items ahead of the model.

    Args:
        prefetch_batches: Batches prepared ahead of the one the model runs on.
    """

    #: The model runs here: a build warms it up before it starts its clock.
    embeds_in_this_process = True

    def __init__(self, prefetch_batches: int = 2) -> None:
        self.prefetch_batches = prefetch_batches

    def describe(self) -> dict[str, Any]:
        """The engine, for manifests."""
        return {"name": "local"}

    def run(self, job: BuildJob, shards: Sequence[int], embedder: Embedder | None,
            progress: Callable[[int], None]) -> None:
        emb = embedder if embedder is not None else job.make_embedder()
        # An embedder that reports per model call (a text chunk is many calls) advances the bar as it embeds;
        # otherwise an item counts once prepared (decoding is the slow part of an image, and runs ahead).
        embed_batches = getattr(emb, "embed_batches", None)
        per_call = embed_batches is None and bool(getattr(emb, "reports_progress", False))
        batches = self._batches(job, shards, emb, progress, count_prepared=not per_call)
        pending: collections.deque[_Batch] = collections.deque()
        shard_vecs: list[np.ndarray] = []
        shard_ok: list[int] = []
        shard_fail: list[tuple[int, str]] = []

        def feed() -> Iterator[list[Any]]:
            for b in batches:
                pending.append(b)
                if b.prepared:
                    yield b.prepared

        def finish(b: _Batch, vecs: np.ndarray | None) -> None:
            if vecs is not None:
                shard_vecs.append(vecs)
                shard_ok.extend(b.positions)
            shard_fail.extend(b.failures)
            if b.last:
                out = np.concatenate(shard_vecs) if shard_vecs else np.zeros((0, job.dim), dtype=np.float32)
                job.write_shard(b.shard, shard_ok, out, shard_fail)
                shard_vecs.clear()
                shard_ok.clear()
                shard_fail.clear()

        if embed_batches is not None:
            outputs = embed_batches(feed())
        elif per_call:
            outputs = (emb.embed_prepared(p, progress=progress) for p in feed())  # type: ignore[call-arg]
        else:
            outputs = (emb.embed_prepared(p) for p in feed())
        for vecs in outputs:
            while pending and not pending[0].prepared:
                finish(pending.popleft(), None)
            finish(pending.popleft(), vecs)
        while pending:  # trailing batches without items to embed (all failed)
            finish(pending.popleft(), None)

    def _batches(self, job: BuildJob, shards: Sequence[int], emb: Embedder, progress: Callable[[int], None],
                 *, count_prepared: bool = True) -> Iterator[_Batch]:
        positions = (p for s in shards for p in job.shard_items(s))
        prepared = self._prepared(job, emb, positions)
        batch: _Batch | None = None
        for pos, value, err in prepared:
            shard = pos // job.shard_size
            if batch is None or batch.shard != shard or len(batch.prepared) >= job.batch_size:
                if batch is not None:
                    batch.last = batch.shard != shard
                    yield batch
                batch = _Batch(shard)
            if err is not None:
                logger.debug("Skipping %s: %s", job.items[pos], err)
                batch.failures.append((pos, err))
                progress(1)  # a failed item is done
            else:
                batch.positions.append(pos)
                batch.prepared.append(value)
                if count_prepared:
                    progress(1)
        if batch is not None:
            batch.last = True
            yield batch

    def _prepared(self, job: BuildJob, emb: Embedder,
                  positions: Iterator[int]) -> Iterator[tuple[int, Any, str | None]]:
        """``(position, prepared, error)`` in order, prepared in a thread pool ahead of the consumer."""
        if not getattr(emb, "parallel_prepare", True) or job.workers <= 1:
            for pos in positions:
                value, err = prepare_one(emb, job.items[pos])
                yield pos, value, err
            return
        prefetch = max(1, self.prefetch_batches) * job.batch_size
        with ThreadPoolExecutor(max_workers=job.workers, thread_name_prefix="prepare") as pool:
            queue: collections.deque[tuple[int, Future]] = collections.deque()
            for pos in positions:
                queue.append((pos, pool.submit(prepare_one, emb, job.items[pos])))
                if len(queue) >= prefetch:
                    break
            while queue:
                pos, fut = queue.popleft()
                nxt = next(positions, None)
                if nxt is not None:
                    queue.append((nxt, pool.submit(prepare_one, emb, job.items[nxt])))
                value, err = fut.result()
                yield pos, value, err


def _valid_shard(job: BuildJob, shard: int) -> bool:
    """Whether ``shard`` is committed and whole: its marker names its own positions and a readable vectors file
    of the right shape. A damaged shard is removed (and embedded again) with a warning."""
    meta_path = _shard_meta(job.partial, shard)
    if not meta_path.exists():
        return False
    try:
        meta = _io.read_json(meta_path)
        name, ok, failures = meta["vectors"], meta["ok"], meta["failures"]
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad vectors file name {name!r}")
        positions = [int(i) for i in ok] + [int(i) for i, _ in failures]
        if sorted(positions) != list(job.shard_items(shard)):
            raise ValueError("its positions are not those of the shard")
        _io.check_regular(job.partial / name)  # a FIFO would hang np.load
        vectors = np.load(job.partial / name, mmap_mode="r", allow_pickle=False)
        if vectors.dtype != np.float32 or vectors.shape != (len(ok), job.dim):
            raise ValueError(f"vectors of shape {vectors.shape} ({vectors.dtype}) for {len(ok)} items")
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, DatabaseError) as exc:
        logger.warning("Shard %d of the interrupted build in %s is damaged (%s); embedding it again", shard,
                       job.partial, exc)
        meta_path.unlink(missing_ok=True)
        return False
    return True


# --------------------------------------------------------------------------- the plan
def _digest(items: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in items:
        h.update(str(t).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def _committed_shards(partial: Path) -> int:
    return sum(1 for _ in partial.glob("shard-*.json"))


def _load_or_create_plan(partial: Path, items: list[str], settings: dict[str, Any]) -> list[str]:
    """The items of the build: this run's, or those of the interrupted build being resumed.

    Raises:
        DatabaseError: If ``partial`` holds committed shards made with other settings.
    """
    plan_file = partial / PLAN
    digest = _digest(items)
    if plan_file.exists():
        try:
            saved = _io.read_json(plan_file)
            if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
                raise ValueError("not a plan")
            saved_items = _read_plan_items(partial / _PLAN_ITEMS)
            if len(saved_items) != saved.get("n"):
                raise ValueError(f"{partial / _PLAN_ITEMS} is damaged")
        except (OSError, ValueError, KeyError, TypeError, DatabaseError) as exc:
            saved, saved_items = None, None
            logger.warning("The plan of the interrupted build in %s is unreadable (%s); starting over", partial, exc)
        if saved is not None and saved_items is not None and saved.get("settings") == settings:
            if saved.get("digest") != digest:
                logger.warning("The input changed since the interrupted run; resuming with the saved list of %d "
                               "items (a forced build starts over with the new input)", len(saved_items))
            return saved_items
        committed = _committed_shards(partial)
        if saved is not None and committed:
            shown = {k: v for k, v in (saved.get("settings") or {}).items()}
            raise InterruptedBuildError(partial.parent, shown, committed)
        logger.info("Replacing the plan of an interrupted build that committed nothing (settings changed)")
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    with _io.atomic_path(partial / _PLAN_ITEMS) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    _io.write_json(plan_file, {"settings": settings, "n": len(items), "digest": digest})
    return items


def _read_plan_items(path: Path) -> list[str]:
    with _io.open_regular(path) as fh:  # a FIFO or a device is refused, not read forever
        items = [json.loads(line.decode("utf-8")) for line in fh]
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{path} is damaged")
    return items


def _plan_settings(embedder_info: dict[str, Any], kind: str, shard_size: int) -> dict[str, Any]:
    return {"kind": kind, "model": embedder_info, "shard_size": shard_size}


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
            data = _unit_rows(arr).tobytes()
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


def _unit_rows(arr: np.ndarray) -> np.ndarray:
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
    embedder: Embedder,
    db_path: str | os.PathLike[str],
    config: BuildConfig | None = None,
    *,
    failures: Sequence[tuple[str, str]] = (),
    extra: Callable[[BuildSummary], dict[str, Any]] | None = None,
    force: bool = False,
    engine: Engine | None = None,
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
        engine: Runs the shards (default: :class:`LocalEngine`).

    Returns:
        The :class:`BuildSummary`.

    Raises:
        DatabaseExistsError: If a database already exists at ``db_path`` and ``force`` is false.
        InterruptedBuildError: If an interrupted build with other settings is found.
    """
    config = config or BuildConfig()
    db = Path(db_path).expanduser()
    db.mkdir(parents=True, exist_ok=True)
    partial = db / PARTIAL_DIR
    info = embedder.info()
    settings = _plan_settings(info, embedder.kind, config.shard_size)
    with database_lock(db):
        if (db / MANIFEST).exists():
            if not force:
                done = _finished_build(db, partial, settings)
                if done is not None:
                    return done
                raise exists_error(db)
            remove_database_files(db)
        if force and partial.exists():
            shutil.rmtree(partial)
        items = _load_or_create_plan(partial, [str(x) for x in items], settings)
        job = BuildJob(partial=partial, items=items, shard_size=config.shard_size, batch_size=config.batch_size,
                       workers=config.workers or min(8, os.cpu_count() or 1), embedder_info=info,
                       kind=embedder.kind, dim=embedder.dim)
        todo = [s for s in range(job.n_shards) if not _valid_shard(job, s)]
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
        missing = [s for s in range(job.n_shards) if not _valid_shard(job, s)]
        if missing:
            raise DatabaseError(f"{len(missing)} shard(s) of the build were not committed (first: {missing[0]}); "
                                "run the same command again to finish them")
        summary = _commit(db, partial, job, list(failures), processed, seconds, done_before, extra)
    return summary


def _commit(db: Path, partial: Path, job: BuildJob, pre_failures: list[tuple[str, str]], processed: int,
            seconds: float, done_before: int, extra: Callable[[BuildSummary], dict[str, Any]] | None) -> BuildSummary:
    metas = [_io.read_json(_shard_meta(partial, s)) for s in range(job.n_shards)]
    items = job.items
    ok_items = [items[i] for meta in metas for i in meta["ok"]]
    failures = pre_failures + [(items[i], reason) for meta in metas for i, reason in meta["failures"]]
    chunks = (np.load(partial / meta["vectors"], mmap_mode="r", allow_pickle=False) for meta in metas)
    rate = processed / seconds if seconds > 0 and processed else 0.0
    summary = BuildSummary(total=len(items), embedded=len(ok_items), failed=len(failures), resumed_from=done_before,
                           seconds=seconds, items_per_second=rate, failures=failures)
    write_database(db, kind=job.kind, model=job.embedder_info, items=ok_items, vector_chunks=chunks,
                   failures=failures, extra={**(extra(summary) if extra else {}),
                                             "build": {"plan_digest": _digest(items), "shard_size": job.shard_size}})
    shutil.rmtree(partial, ignore_errors=True)
    if failures:
        logger.warning("%d of %d inputs could not be used; see %s", len(failures), len(items) + len(pre_failures),
                       db / FAILURES)
    return summary


def _finished_build(db: Path, partial: Path, settings: dict[str, Any]) -> BuildSummary | None:
    """The summary of a database whose build finished but was killed before removing ``.partial/`` (the same
    plan); ``None`` otherwise."""
    if not (partial / PLAN).exists():
        return None
    try:
        saved = _io.read_json(partial / PLAN)
        manifest = Manifest.load(db)
    except (OSError, ValueError, DatabaseError):
        return None
    if not isinstance(saved, dict) or saved.get("settings") != settings \
            or manifest.extra.get("build", {}).get("plan_digest") != saved.get("digest"):
        return None
    logger.info("%s is already complete (an earlier run stopped while cleaning up); removing %s", db, partial)
    shutil.rmtree(partial, ignore_errors=True)
    return BuildSummary(total=manifest.counts.items + manifest.counts.failed, embedded=manifest.counts.items,
                        failed=manifest.counts.failed, resumed_from=manifest.counts.items, seconds=0.0,
                        items_per_second=0.0, failures=[])


def embed_items(items: Sequence[str], embedder: Embedder, db_path: str | os.PathLike[str],
                config: BuildConfig | None = None, *,
                engine: Engine | None = None) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Embed ``items`` with an engine, through a temporary shard folder inside the database folder (which
    every worker of a distributed engine can reach), for adding them to an existing database.

    Returns:
        ``(items that embedded, their (m, dim) vectors, (item, reason) failures)``.
    """
    config = config or BuildConfig()
    db = Path(db_path).expanduser()
    remove_stale_work_dirs(db)
    with _work_dir(db) as work:
        job = BuildJob(partial=work, items=[str(x) for x in items], shard_size=config.shard_size,
                       batch_size=config.batch_size, workers=config.workers or min(8, os.cpu_count() or 1),
                       embedder_info=embedder.info(), kind=embedder.kind, dim=embedder.dim)
        with tqdm(total=len(items), unit=config.unit, desc="add", disable=not config.verbose) as bar:
            (engine or LocalEngine()).run(job, list(range(job.n_shards)), embedder, bar.update)
        metas = [_io.read_json(_shard_meta(work, s)) for s in range(job.n_shards)]
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
