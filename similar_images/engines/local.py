"""The engine seam: what runs the embedding of a build's shards, and the training and filling of an index.

* :class:`Engine`: the protocol every engine implements: :meth:`~Engine.run` embeds shards of a
  :class:`BuildJob` and commits each (:mod:`.shards`), :meth:`~Engine.build_index` trains and fills an index;
* :class:`LocalEngine`: both in this process (a thread pool prepares items ahead of the model);
* :class:`~similar_images.engines.spark.SparkEngine`: both on Apache Spark.

An engine only computes: the store (:mod:`similar_images.store`) owns the database's locks, files and
manifests, plans the build, and commits the shards and the index an engine made.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from ..embed import Embedder, embedder_from_info
from ..errors import InputError
from ..index import BuildReport, IndexConfig, build_index
from .shards import write_shard

__all__ = [
    "BuildJob",
    "Engine",
    "IndexBuild",
    "IndexFiles",
    "LocalEngine",
    "ShardEmbedder",
    "describe_engine",
    "prepare_one",
]

logger = logging.getLogger(__name__)


class ShardEmbedder(Protocol):
    """What a build needs of an embedder: an :class:`~similar_images.embed.Embedder` is one; so is an embedder
    that gives several vectors per item (``multi_vector = True``: SIFT descriptors), whose ``embed_prepared``
    returns ``(vectors, rows per item)``."""

    kind: str

    @property
    def dim(self) -> int: ...

    def info(self) -> dict[str, Any]: ...

    def prepare(self, item: Any, /) -> Any: ...

    def embed_prepared(self, batch: Sequence[Any], /) -> np.ndarray | tuple[np.ndarray, Sequence[int]]: ...


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
                    failures: Sequence[tuple[int, str]], rows: Sequence[int] | None = None) -> None:
        """Commit ``shard`` (see :func:`~.shards.write_shard`)."""
        write_shard(self.partial, shard, ok, vectors, failures, self.dim, rows)

    def make_embedder(self, **options: Any) -> Embedder:
        """A new embedder like the one the build was planned with (for another process)."""
        return embedder_from_info(self.embedder_info, kind=self.kind, **options)


@dataclass
class IndexFiles:
    """Where the vectors of an index build lie on disk, and where an engine may write (for engines whose
    workers read the vectors themselves, e.g. Spark executors; paths every worker reaches).

    Attributes:
        vectors: The float32 ``(n_rows, dim)`` vectors file of the database (``vectors.f32``).
        n_rows: Rows in that file (live and removed items).
        work_dir: A scratch folder for the parts of the index (created, then removed, by the engine).
        ivfdata: Where on-disk inverted lists go if the engine makes them (beside the next index generation).
    """

    vectors: Path
    n_rows: int
    work_dir: Path
    ivfdata: Path


class IndexBuild(NamedTuple):
    """What :meth:`Engine.build_index` made: the index, its build report, and figures for the manifest's
    index section (how the engine built it; ``None``: nothing to add)."""

    index: Any
    report: BuildReport
    figures: dict[str, Any] | None = None


class Engine(Protocol):
    """Runs the shards of a build and builds indexes (see the module documentation).

    An engine whose model runs in other processes (Spark's executors) also says ``embeds_in_this_process = False``,
    so that a build does not load the model here.
    """

    def describe(self) -> dict[str, Any]:
        """The engine and its settings, for manifests."""
        ...

    def run(self, job: BuildJob, shards: Sequence[int], embedder: ShardEmbedder | None,
            progress: Callable[[int], None]) -> None:
        """Embed every shard in ``shards`` and commit each with ``job.write_shard``.

        Args:
            job: The build.
            shards: The shards still to do, in order.
            embedder: The embedder of this process (``None``: make one with ``job.make_embedder()``).
            progress: Called with the number of items processed, as they are.
        """
        ...

    def build_index(self, vectors: np.ndarray, config: IndexConfig, *, ids: np.ndarray | None = None,
                    files: IndexFiles | None = None) -> IndexBuild:
        """Train an index on a sample of ``vectors``, add them all, and measure it.

        Args:
            vectors: ``(n, d)`` L2-normalised float32 vectors (a memmap is fine).
            config: Index settings, with its ``factory`` set.
            ids: Id of each vector (``None``: ``0 .. n-1``, every row of ``files.vectors``).
            files: Where the vectors lie on disk, for engines whose workers read them.

        Returns:
            The index (search defaults applied), its report, and the engine's figures for the manifest.
        """
        ...


def describe_engine(engine: Engine | None) -> dict[str, Any]:
    """What ran a build, for manifests (``{"name": "local"}`` when no engine was given)."""
    if engine is None:
        return {"name": "local"}
    describe = getattr(engine, "describe", None)
    return describe() if describe is not None else {"name": type(engine).__name__}


def prepare_one(embedder: ShardEmbedder, item: str) -> tuple[Any, str | None]:
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

    An embedder with ``multi_vector = True`` gives several vectors per item (SIFT descriptors): its
    ``embed_prepared`` returns ``(vectors, rows per item)``, and each shard records the rows of its items.

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

    def run(self, job: BuildJob, shards: Sequence[int], embedder: ShardEmbedder | None,
            progress: Callable[[int], None]) -> None:
        """Embed ``shards`` in this process and commit each (see :meth:`Engine.run`)."""
        emb = embedder if embedder is not None else job.make_embedder()
        # An embedder that reports per model call (a text chunk is many calls) advances the bar as it embeds;
        # otherwise an item counts once prepared (decoding is the slow part of an image, and runs ahead).
        embed_batches = getattr(emb, "embed_batches", None)
        per_call = embed_batches is None and bool(getattr(emb, "reports_progress", False))
        multi = bool(getattr(emb, "multi_vector", False))
        batches = self._batches(job, shards, emb, progress, count_prepared=not per_call)
        pending: collections.deque[_Batch] = collections.deque()
        shard_vecs: list[np.ndarray] = []
        shard_ok: list[int] = []
        shard_fail: list[tuple[int, str]] = []
        shard_rows: list[int] = []

        def feed() -> Iterator[list[Any]]:
            for b in batches:
                pending.append(b)
                if b.prepared:
                    yield b.prepared

        def finish(b: _Batch, vecs: Any) -> None:
            if vecs is not None:
                if multi:
                    vecs, rows = vecs
                    shard_rows.extend(int(n) for n in rows)
                shard_vecs.append(vecs)
                shard_ok.extend(b.positions)
            shard_fail.extend(b.failures)
            if b.last:
                out = np.concatenate(shard_vecs) if shard_vecs else np.zeros((0, job.dim), dtype=np.float32)
                job.write_shard(b.shard, shard_ok, out, shard_fail, shard_rows if multi else None)
                shard_rows.clear()
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

    def build_index(self, vectors: np.ndarray, config: IndexConfig, *, ids: np.ndarray | None = None,
                    files: IndexFiles | None = None) -> IndexBuild:
        """Train, fill and measure an index in this process (:func:`similar_images.index.build_index`)."""
        del files  # the vectors are at hand
        index, report = build_index(vectors, config, ids=ids)
        return IndexBuild(index, report)

    def _batches(self, job: BuildJob, shards: Sequence[int], emb: ShardEmbedder, progress: Callable[[int], None],
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

    def _prepared(self, job: BuildJob, emb: ShardEmbedder,
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
