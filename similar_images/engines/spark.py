"""Apache Spark engine: feature extraction and index building on a cluster (or in local mode).

Extraction (:class:`SparkEngine`, an ``Engine`` of the one resumable build): the driver plans the build
as the local build does and hands the shards still to do to Spark, grouped into partitions. Each Spark
task rebuilds the embedder once per executor Python process (a process-level cache; Spark reuses its
Python workers), embeds its partition's shards with the local pipeline's code, and commits each shard
into the database's ``.partial/`` folder: a local path in local mode, storage that every executor
reaches on a cluster. The driver then commits the shards into the database with the local build's
code. A killed job resumes at the shard (hence partition) level: committed shards are never redone.

A corrupt image is a failure recorded with its reason, as in a local run. A task that raises is retried
by Spark (``spark.task.maxFailures``; in local mode the master ``local[N,F]`` allows ``F`` attempts). Its
last attempt reports the error instead of raising, so that a partition failing for good never cancels
the others: they finish and stay committed, and :class:`~similar_images.errors.PartitionFailedError`
names the failed shards.

Index building (:meth:`SparkEngine.build_index`, called by
:meth:`~similar_images.store.Database.build_index` with ``engine=``): the coarse quantizer and the product
quantizer are trained on a sample at the driver; executors add their partitions' vectors to copies of the
trained empty index; the driver merges them, in memory or into on-disk inverted lists
(:mod:`similar_images.index.distributed`). The store holds the database's write lock and installs the index.

Fault injection, for tests: the environment variable ``SIMILAR_IMAGES_SPARK_FAULT`` read by the
executor code makes a task raise before it commits a shard: ``shard=3`` fails every attempt at shard 3,
``shard=3,once=/path/marker`` only the first (the marker file records that it fired). In local mode pass it
with ``conf={"spark.executorEnv.SIMILAR_IMAGES_SPARK_FAULT": ...}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import resource
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..embed.tf_import import import_tensorflow
from ..errors import ConfigError, PartitionFailedError
from ..index import IndexConfig, finish_index, train_index, write_index
from ..index.distributed import add_to_copy, estimate_index_bytes, is_ivf_factory, merge_in_memory, merge_on_disk
from ..sources.images import normalize_path
from .local import BuildJob, IndexBuild, IndexFiles, LocalEngine
from .shards import shard_done
from .spark_context import max_failures, spark_context

__all__ = [
    "SparkEngine",
    "SparkRunReport",
    "ShardReport",
    "PartitionFailure",
    "IndexPartReport",
    "FAULT_ENV",
]

logger = logging.getLogger(__name__)

#: Environment variable read by the executor code to inject a fault (tests only; see the module docstring).
FAULT_ENV = "SIMILAR_IMAGES_SPARK_FAULT"


# ------------------------------------------------------------------ reports
@dataclass
class ShardReport:
    """What a Spark task did with one shard (sent back to the driver)."""

    shard: int
    partition: int
    attempt: int
    pid: int
    items: int
    failed: int
    seconds: float
    cpu_seconds: float
    model_seconds: float = 0.0
    skipped: bool = False
    peak_rss_mb: float = 0.0
    #: The commit marker the task wrote, as an absolute path on its executor, and that executor's host name:
    #: the driver checks that it sees the shard there too (storage every executor reaches).
    path: str = ""
    host: str = ""
    #: The precision the executor's model runs (its own CPU's: a precision it cannot run falls back to fp32).
    precision: str = ""


@dataclass
class PartitionFailure:
    """A partition whose last attempt failed: the shards it left uncommitted and the error."""

    partition: int
    shards: list[int]
    attempt: int
    error: str


@dataclass
class SparkRunReport:
    """One :meth:`SparkEngine.run`: what Spark did, for progress, benchmarks and tests.

    Attributes:
        startup_seconds: Time to start the Spark context (0 when an active one was reused).
        job_seconds: Time of the Spark job (tasks, their scheduling, model loads).
        shards: One report per shard a task handled (``skipped``: committed by an earlier attempt).
        failures: Partitions that failed for good.
    """

    master: str
    partitions: int
    startup_seconds: float
    job_seconds: float
    shards: list[ShardReport] = field(default_factory=list)
    failures: list[PartitionFailure] = field(default_factory=list)

    @property
    def embedded_shards(self) -> list[int]:
        """Shards embedded (not skipped) in this run, sorted."""
        return sorted(r.shard for r in self.shards if not r.skipped)


@dataclass
class IndexPartReport:
    """What a Spark task did for the distributed index build: one partition's vectors added to a copy."""

    partition: int
    path: str
    ntotal: int
    seconds: float
    pid: int


# ------------------------------------------------------------------ executor side
#: Embedders built in this (executor) process, by their info: one model load per process.
_EXECUTOR_EMBEDDERS: dict[str, Any] = {}
_THREADS_SET = False


def _limit_threads(threads: int) -> None:
    """Give TensorFlow ``threads`` threads in this process (once, before its runtime starts)."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    _THREADS_SET = True
    try:
        tf = import_tensorflow()
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except (ImportError, RuntimeError) as exc:  # no TensorFlow, or its runtime already started
        logger.debug("Could not set TensorFlow threads: %s", exc)


def _executor_embedder(job: BuildJob, threads: int) -> tuple[Any, float]:
    """The job's embedder, built once per process; returns it and the seconds its build took now."""
    key = json.dumps([job.kind, job.embedder_info], sort_keys=True)
    emb = _EXECUTOR_EMBEDDERS.get(key)
    if emb is not None:
        return emb, 0.0
    t0 = time.perf_counter()
    _limit_threads(threads)
    emb = job.make_embedder(batch_size=job.batch_size)
    warm = getattr(emb, "warm_up", None)
    if warm is not None:
        warm()  # load it now: the shard timings are then the pipeline's
    _EXECUTOR_EMBEDDERS[key] = emb
    return emb, time.perf_counter() - t0


class _Window(Sequence[str]):
    """The items of a build as a partition sees them: its own shards' items at their global positions."""

    def __init__(self, n_items: int, shards: Iterable[tuple[int, int, list[str]]]) -> None:
        self._n = n_items
        self._items: dict[int, str] = {}
        for _, start, paths in shards:
            self._items.update(zip(range(start, start + len(paths)), paths))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, pos: int) -> str:  # type: ignore[override]
        return self._items[pos]


def _peak_rss_mb() -> float:
    """Peak resident memory of this (executor) process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _maybe_inject_fault(shard: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    opts = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    if int(opts.get("shard", -1)) != shard:
        return
    marker = opts.get("once")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
    raise RuntimeError(f"injected fault at shard {shard} ({FAULT_ENV}={spec})")


def _extract_partition(job: BuildJob, attempts: int, threads: int | None, partition: int,
                       elements: Iterable[list[tuple[int, int, list[str]]]]) -> Iterator[Any]:
    """The Spark task: embed and commit the shards of one partition with the local pipeline; a report a shard."""
    from pyspark import TaskContext  # noqa: PLC0415  (heavy: executor only)

    ctx = TaskContext.get()
    attempt = ctx.attemptNumber() if ctx is not None else 0
    cpus = threads or (ctx.cpus() if ctx is not None else 1) or 1
    for group in elements:
        done: set[int] = set()
        local = dataclasses.replace(job, items=_Window(job.size, group), workers=max(1, min(job.workers, cpus)))
        try:
            emb, model_seconds = _executor_embedder(job, cpus)
            for shard, _start, _paths in group:
                if shard_done(job.partial, shard):  # an earlier attempt of this task committed it
                    done.add(shard)
                    yield ShardReport(shard, partition, attempt, os.getpid(), 0, 0, 0.0, 0.0, skipped=True)
                    continue
                t0, c0 = time.perf_counter(), time.process_time()
                _maybe_inject_fault(shard)
                LocalEngine().run(local, [shard], emb, lambda _n: None)
                marker = job.partial / f"shard-{shard:06d}.json"
                meta = json.loads(marker.read_text(encoding="utf-8"))
                done.add(shard)
                yield ShardReport(shard, partition, attempt, os.getpid(), len(meta["ok"]), len(meta["failures"]),
                                  time.perf_counter() - t0, time.process_time() - c0, model_seconds,
                                  peak_rss_mb=_peak_rss_mb(), path=os.path.abspath(marker),
                                  host=socket.gethostname(), precision=str(getattr(emb, "precision", "")))
                model_seconds = 0.0
        except Exception as exc:
            if attempt + 1 < attempts:
                raise
            left = [s for s, _, _ in group if s not in done]
            yield PartitionFailure(partition, left, attempt, f"{exc.__class__.__name__}: {exc}")


def _add_partition(trained: Any, vectors_path: str, n_rows: int, dim: int, out_dir: str, batch_size: int,
                   partition: int, elements: Iterable[tuple[int, int, np.ndarray | None]]) -> Iterator[IndexPartReport]:
    """The Spark task of the index build: add one partition's rows to a copy of the trained empty index."""
    from pyspark import TaskContext  # noqa: PLC0415  (heavy: executor only)

    ctx = TaskContext.get()
    faiss.omp_set_num_threads(max(1, ctx.cpus() if ctx is not None else 1))  # N tasks use N cores
    vectors = np.memmap(vectors_path, dtype=np.float32, mode="r", shape=(n_rows, dim))
    for start, stop, ids in elements:
        t0 = time.perf_counter()
        if ids is None:
            ids = np.arange(start, stop, dtype=np.int64)
            rows = vectors[start:stop]
        else:
            rows = vectors[ids]
        index = add_to_copy(trained.value, rows, ids, batch_size=batch_size)
        path = Path(out_dir) / f"part-{partition:06d}.faiss"
        write_index(index, path)
        yield IndexPartReport(partition, str(path), int(index.ntotal), time.perf_counter() - t0, os.getpid())


# ------------------------------------------------------------------ driver side
#: Items per Spark partition of an extraction by default (measured: see :func:`default_extract_partitions`).
ITEMS_PER_PARTITION = 4096


def default_extract_partitions(slots: int, n_items: int) -> int:
    """Partitions of an extraction by default: one per task slot, and at least one per
    :data:`ITEMS_PER_PARTITION` items (whole shards each, so never more than the shards).

    A partition costs a fixed 0.1 to 0.6 s (scheduling, the task's round trip, the commit poll), so more partitions
    than slots only slow a job down, unless each holds enough work (docs/spark.md, "Measured": on a 2-worker
    cluster, 2 partitions ran 1.4x faster than one per shard of 32 photos). Committed shards are never redone
    when a task is retried, so a large partition loses at most one shard; :data:`ITEMS_PER_PARTITION` items
    (a minute of MobileNetV2 on one core) keep the fixed cost under 1% while leaving enough partitions to
    balance a large job (2,442 for 10 million images).
    """
    return max(1, slots, math.ceil(n_items / ITEMS_PER_PARTITION))


def _split(seq: Sequence[Any], parts: int) -> list[list[Any]]:
    """``seq`` cut into ``parts`` contiguous groups of nearly equal size (no empty group)."""
    parts = max(1, min(parts, len(seq)))
    bounds = [round(i * len(seq) / parts) for i in range(parts + 1)]
    return [list(seq[bounds[i]:bounds[i + 1]]) for i in range(parts)]


class SparkEngine:
    """Runs the shards of a build, and the index build, on Apache Spark.

    Args:
        master: The Spark master: ``local[*]``, ``local[N]``, ``local[N,F]`` (``F`` attempts per task),
            ``spark://host:7077``, ``yarn``, ... ``None``: the one ``spark-submit`` was given, else ``local[*]``.
        partitions: Spark partitions (tasks) per job; ``None``: :func:`default_extract_partitions` (extraction:
            one per task slot, at least one per 4,096 items), or :meth:`default_index_partitions` (index build).
            Each partition of an extraction holds whole shards.
        conf: More Spark settings (``spark.executor.memory``, ``spark.executorEnv.NAME``,
            ``spark.pyspark.python``, ...), over those of ``spark-defaults.conf``.
        threads_per_task: Model threads in each task; ``None``: ``spark.task.cpus`` (1 by default), so that
            ``N`` tasks use ``N`` cores.
        app_name: The application name shown by the cluster manager.
        on_disk: Merge a built index into on-disk inverted lists (beside the index); ``None``: when the
            estimated index does not fit in half the free memory.

    A Spark context that is already active (e.g. in a ``spark-submit`` script that made one) is used as
    it is and left running; otherwise each call starts one and stops it, with Spark's logging at WARN
    and its scratch folders in a temporary folder. Executors get absolute paths (links kept), since they
    resolve relative ones in their own working folders, and run the driver's Python unless
    ``spark.pyspark.python`` or ``PYSPARK_PYTHON`` names another.


    The driver never loads the model for extraction (``embeds_in_this_process`` is false): executors do, once
    per Python worker. On a master other than ``local``, ``precision="auto"`` is refused
    (:meth:`remote_master`): it would be measured on the driver's CPU, not on the executors'.
    """

    #: Builds skip warming the model up in the driver: the executors' Python workers load it.
    embeds_in_this_process = False

    def __init__(self, master: str | None = None, partitions: int | None = None, *,
                 conf: dict[str, str] | None = None, threads_per_task: int | None = None,
                 app_name: str = "similar-images", on_disk: bool | None = None) -> None:
        if partitions is not None and partitions < 1:
            raise ConfigError(f"partitions must be at least 1, got {partitions}")
        if threads_per_task is not None and threads_per_task < 1:
            raise ConfigError(f"threads_per_task must be at least 1, got {threads_per_task}")
        self.master = master
        self.partitions = partitions
        self.conf = dict(conf or {})
        self.threads_per_task = threads_per_task
        self.app_name = app_name
        self.on_disk = on_disk
        self.last_run: SparkRunReport | None = None
        self.last_startup_seconds = 0.0
        self.last_master: str | None = None

    @contextlib.contextmanager
    def context(self) -> Iterator[Any]:
        """The Spark context of a run (see :func:`~.spark_context.spark_context`)."""
        started: list[float] = []
        with spark_context(self.master, self.conf, app_name=self.app_name, started=started) as sc:
            self.last_startup_seconds = started[0] if started else 0.0
            self.last_master = sc.master
            yield sc

    def remote_master(self) -> str | None:
        """The master when its executors may run on other machines than this one (not ``local``), else ``None``.

        With no master given: the one ``spark-submit`` was given (read from its JVM), else ``local[*]``.
        """
        master = self.master or self.last_master
        if master is None and "PYSPARK_GATEWAY_PORT" in os.environ:  # started by spark-submit
            from pyspark import SparkConf, SparkContext  # noqa: PLC0415  (heavy: the Spark engine only)

            SparkContext._ensure_initialized()
            master = SparkConf().get("spark.master", None)
        if master is None or master == "local" or master.startswith("local["):
            return None
        return master

    def describe(self) -> dict[str, Any]:
        """The engine's settings, for manifests (the master is the one the last context used), and what the last
        run's executors ran: their precisions (one, unless executors with other CPUs fell back) and partitions."""
        out: dict[str, Any] = {"name": "spark", "master": self.last_master or self.master or "local[*]",
                               "partitions": self.partitions}
        if self.last_run is not None:
            out["run"] = {"partitions": self.last_run.partitions,
                          "precisions": sorted({r.precision for r in self.last_run.shards if r.precision})}
        return out

    # -------------------------------------------------------------- extraction
    def run(self, job: BuildJob, shards: Sequence[int], embedder: Any | None,
            progress: Callable[[int], None]) -> None:
        """Embed every shard in ``shards`` on Spark and commit each with ``job.write_shard``.

        Args:
            job: The build (its ``partial`` folder must be reachable by every executor).
            shards: The shards to do (those not committed yet).
            embedder: Unused: executors rebuild the embedder from ``job.embedder_info``.
            progress: Called with the number of items of each shard as it is committed.

        Raises:
            PartitionFailedError: If partitions failed for good (all the others are committed).
        """
        del embedder
        shards = list(shards)
        if not shards:
            return
        # Executors resolve paths in their own working folders: hand them absolute ones (links kept).
        item = _absolute_item if job.kind == "image" else str
        work = [(s, job.shard_items(s).start, [item(job.items[i]) for i in job.shard_items(s)]) for s in shards]
        job = dataclasses.replace(job, partial=normalize_path(job.partial))
        light = dataclasses.replace(job, items=[], n_items=len(job.items))  # items travel with their partitions
        with self.context() as sc:
            groups = _split(work, self.partitions or default_extract_partitions(
                sc.defaultParallelism, sum(len(paths) for _, _, paths in work)))
            attempts = max_failures(sc.master, sc.getConf())
            report = SparkRunReport(master=sc.master, partitions=len(groups),
                                    startup_seconds=self.last_startup_seconds, job_seconds=0.0)
            self.last_run = report
            task = _partial_task(_extract_partition, light, attempts, self.threads_per_task)
            rdd = sc.parallelize(groups, len(groups)).mapPartitionsWithIndex(task)
            logger.info("Spark: %d shards in %d partitions on %s (%d attempts per task)", len(shards), len(groups),
                        sc.master, attempts)
            stop = threading.Event()
            watcher = threading.Thread(target=_watch_shards, args=(job, shards, progress, stop), daemon=True)
            watcher.start()
            t0 = time.perf_counter()
            try:
                results = rdd.collect()
            except Exception as exc:
                if exc.__class__.__name__ != "Py4JJavaError":
                    raise
                raise PartitionFailedError(
                    f"{_job_failure('job', exc, sc)} Committed shards are kept in {job.partial}",
                    hint="Fix the cause and build again with the same settings to resume.", path=job.partial,
                ) from exc
            finally:
                stop.set()
                watcher.join()
                report.job_seconds = time.perf_counter() - t0
        report.shards = [r for r in results if isinstance(r, ShardReport)]
        report.failures = [r for r in results if isinstance(r, PartitionFailure)]
        _check_landed(job, report.shards)
        planned = str(job.embedder_info.get("precision", "fp32"))
        ran = sorted({r.precision for r in report.shards if r.precision and r.precision != planned})
        if ran and job.kind == "image":
            logger.warning("Executors ran precision %s instead of %s (their CPUs lack it natively); the run's "
                           "precisions are recorded in the manifest", ", ".join(ran), planned)
        if report.failures:
            failed = sorted(s for f in report.failures for s in f.shards)
            raise PartitionFailedError(
                f"{len(report.failures)} of {len(groups)} Spark partitions failed for good (shards {failed[:20]}"
                f"{' ...' if len(failed) > 20 else ''}): {report.failures[0].error}. The {len(shards) - len(failed)} "
                f"other shards are committed in {job.partial}",
                hint="Fix the cause and build again with the same settings to resume.", path=job.partial,
            )

    # -------------------------------------------------------------- index
    def default_index_partitions(self, sc: Any, n: int) -> int:
        """Partitions of the index build: ``partitions``, else one per core and at least one per 10^6 vectors."""
        return self.partitions or max(sc.defaultParallelism, math.ceil(n / 1_000_000))

    def build_index(self, vectors: np.ndarray, config: IndexConfig, *, ids: np.ndarray | None = None,
                    files: IndexFiles | None = None) -> IndexBuild:
        """Train at the driver, add on executors, merge at the driver, measure (``build-index`` on Spark).

        A factory without inverted lists (e.g. ``Flat``, ``HNSW``) is built in this process instead.

        Args:
            vectors: The ``(n, d)`` vectors to index (a memmap is fine), trained on at the driver.
            config: Index settings, with its ``factory`` set.
            ids: Their ids, which are their rows in ``files.vectors`` (``None``: every row, in order).
            files: The vectors file every executor reads, and the folders every executor reaches.

        Returns:
            The merged, measured index, its report, and the figures of the manifest's ``engine`` entry.

        Raises:
            ConfigError: If ``files`` is not given (executors read the vectors from a file).
            IndexTrainingError: If there are too few vectors for the index.
        """
        factory = str(config.factory)
        n, d = vectors.shape
        if not is_ivf_factory(factory, d):
            logger.warning("%s has no inverted lists to build in parts; building it in this process", factory)
            return LocalEngine().build_index(vectors, config, ids=ids)
        if files is None:
            raise ConfigError("The Spark index build reads the vectors from a file every executor reaches; "
                              "none was given")
        live = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        t_start = time.perf_counter()
        trained, n_train, train_seconds = train_index(vectors, factory, train_size=config.train_size,
                                                      seed=config.seed)
        on_disk = self.on_disk
        if on_disk is None:
            need = estimate_index_bytes(n, d, factory)["total"]
            on_disk = need > 0.5 * _available_memory()
            logger.info("Index estimate %.1f GB: merging %s", need / 1e9, "on disk" if on_disk else "in memory")
        ivfdata = files.ivfdata if on_disk else None
        t0 = time.perf_counter()
        index, parts = self.add_and_merge(trained, files.vectors, files.n_rows, d, ids, files.work_dir,
                                          on_disk=ivfdata, batch_size=config.add_batch_size)
        add_seconds = time.perf_counter() - t0
        report = finish_index(index, vectors, live, config, factory=factory, n_train=n_train,
                              train_seconds=train_seconds, add_seconds=add_seconds, t_start=t_start)
        described = {k: v for k, v in self.describe().items() if k != "run"}  # "run": an extraction's
        figures = {"engine": {**described, "partitions": len(parts), "on_disk": bool(on_disk),
                              "ivfdata": ivfdata.name if ivfdata else None}}
        return IndexBuild(index, report, figures)

    def add_and_merge(self, trained: Any, vectors_path: str | os.PathLike[str], n_rows: int, dim: int,
                      ids: np.ndarray | None, work_dir: str | os.PathLike[str], *,
                      on_disk: str | os.PathLike[str] | None = None,
                      batch_size: int = 65_536) -> tuple[Any, list[IndexPartReport]]:
        """Add vectors to copies of ``trained`` on Spark and merge them at the driver.

        Args:
            trained: A trained, empty IVF index.
            vectors_path: A float32 ``(n_rows, dim)`` file every executor reaches (e.g. ``vectors.f32``).
            n_rows: Rows in the file.
            dim: Vector dimension.
            ids: The rows to add, which are also their ids (``None``: all rows, ids ``0 .. n_rows-1``).
            work_dir: Folder every executor reaches, for the partitions' indexes (created, then emptied).
            on_disk: An ``.ivfdata`` path: merge into on-disk inverted lists there; ``None``: in memory.
            batch_size: Vectors per ``add`` call in a task.

        Returns:
            ``(the merged index, one report per partition)``.
        """
        work = Path(work_dir)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        n = n_rows if ids is None else len(ids)
        try:
            with self.context() as sc:
                parts = self.default_index_partitions(sc, n)
                bounds = [round(i * n / parts) for i in range(parts + 1)]
                elements = [(bounds[i], bounds[i + 1], None if ids is None else ids[bounds[i]:bounds[i + 1]])
                            for i in range(parts) if bounds[i + 1] > bounds[i]]
                bc = sc.broadcast(faiss.serialize_index(trained))
                task = _partial_task(_add_partition, bc, str(normalize_path(vectors_path)), n_rows, dim,
                                     str(normalize_path(work)), batch_size)
                try:
                    reports = sc.parallelize(elements, len(elements)).mapPartitionsWithIndex(task).collect()
                except Exception as exc:
                    if exc.__class__.__name__ != "Py4JJavaError":
                        raise
                    raise PartitionFailedError(_job_failure("index build", exc, sc)) from exc
                bc.destroy(blocking=True)  # a removal still in flight at stop() logs an error stack
            reports.sort(key=lambda r: r.partition)
            files = [r.path for r in reports]
            if on_disk is not None:
                merged = merge_on_disk(trained, files, Path(on_disk))
            else:
                merged = merge_in_memory(trained, (faiss.read_index(f) for f in files))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return merged, reports


def _partial_task(fn: Callable[..., Any], *args: Any) -> Callable[[int, Iterable[Any]], Iterator[Any]]:
    """``fn`` with its leading arguments bound (a picklable closure for ``mapPartitionsWithIndex``)."""
    def task(partition: int, elements: Iterable[Any]) -> Iterator[Any]:
        return fn(*args, partition, elements)

    return task


def _watch_shards(job: BuildJob, shards: Sequence[int], progress: Callable[[int], None], stop: threading.Event,
                  interval: float = 0.5) -> None:
    """Report shards as their commit markers appear (the driver sees what the executors commit)."""
    left = set(shards)
    while left:
        finished = stop.wait(interval)
        for s in sorted(left):
            if (job.partial / f"shard-{s:06d}.json").exists():
                left.discard(s)
                progress(len(job.shard_items(s)))
        if finished:
            return


def _absolute_item(path: str) -> str:
    """An image path as executors must get it: absolute (``~`` expanded, links kept); URLs as they are."""
    return path if "://" in path else str(normalize_path(path))


def _check_landed(job: BuildJob, reports: Sequence[ShardReport], grace: float = 10.0) -> None:
    """Raise if shards that executors committed are not where the driver reads them.

    A network file system may show another machine's new files a little late: the driver looks again for
    ``grace`` seconds before it concludes.

    Raises:
        PartitionFailedError: Naming where the executors wrote and where the driver looked: the database
            folder is not on storage the driver and every executor reach at the same path.
    """
    deadline = time.monotonic() + grace
    while True:
        lost = [r for r in reports if not r.skipped and not shard_done(job.partial, r.shard)]
        if not lost:
            return
        if time.monotonic() >= deadline:
            break
        with contextlib.suppress(OSError):
            os.listdir(job.partial)  # refreshes a network file system's view of the folder
        time.sleep(0.5)
    first = lost[0]
    hosts = sorted({r.host for r in lost if r.host})
    raise PartitionFailedError(
        f"Spark executors committed {len(lost)} shard(s) (the first, {first.shard}, as {first.path or '?'} on "
        f"{', '.join(hosts) or 'an executor'}), but this driver ({socket.gethostname()}) does not see them in "
        f"{job.partial}: the database folder must be on storage that the driver and every executor reach at "
        "the same path (a shared file system); building again as it is would fail the same way.",
        resumable=False,
    )


def _job_failure(what: str, exc: BaseException, sc: Any) -> str:
    """``The Spark <what> failed (<the cause's line>).``, with advice when an executor's Python misses a module."""
    cause = _java_error_line(exc)
    message = f"The Spark {what} failed ({cause})."
    if cause.startswith(("ModuleNotFoundError", "ImportError")):
        message += (f" The executors run {getattr(sc, 'pythonExec', 'python3')}: install similar-images there, "
                    "or name a Python that has it with the setting spark.pyspark.python.")
    return message


def _java_error_line(exc: BaseException) -> str:
    """The line of a failed Spark job's error that names the cause.

    For an error raised in an executor's Python, its exception line (``ModuleNotFoundError: No module named
    ...``), found at the end of the Python traceback the Java error quotes; otherwise the first line.
    """
    text = str(getattr(exc, "java_exception", exc))
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Traceback (most recent call last):" not in line:
            continue
        cause = None
        for follow in lines[i + 1:]:
            if follow.startswith("\tat ") or follow.lstrip().startswith("at org.apache."):
                break  # the Java stack
            if follow.strip() and not follow[0].isspace():
                cause = follow.strip()  # the last unindented line of the traceback: its exception
        if cause:
            return cause[:300]
    stripped = [ln.strip() for ln in lines if ln.strip()]
    return (stripped[0] if stripped else exc.__class__.__name__)[:300]


def _available_memory() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30

