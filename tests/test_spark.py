"""The Spark engine (issue 16), in Spark local mode on real photos and a real model.

Extraction on Spark equals the single-process extraction (ids, order, failures, vectors within 1e-4);
a killed driver resumes without redoing committed shards; a task failing once is retried; a partition
failing for good is reported and the others are kept; the index built in parts on Spark and merged
(in memory or on disk) returns the same top-10 as one index filled in one process from the same
trained quantizer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT

from similar_images import Database, ExtractConfig, IndexConfig
from similar_images.engines.local import BuildJob
from similar_images.engines.shards import write_shard
from similar_images.engines.spark import FAULT_ENV, ShardReport, SparkEngine, _check_landed, _java_error_line
from similar_images.engines.spark_context import check_spark, executor_python, spark_defaults
from similar_images.errors import PartitionFailedError, SparkUnavailableError
from similar_images.store import extract_features, write_database

N_PHOTOS = 40
SHARD = 8  # 42 inputs -> 6 shards
CORRUPT_AT = {10: "truncated.jpg", 25: "empty.jpg"}  # positions in the input list (shards 1 and 3)


def _config(weights: Path, **kw: Any) -> ExtractConfig:
    settings: dict[str, Any] = {"shard_size": SHARD, "batch_size": 4, "verbose": False, **kw}
    return ExtractConfig(model="mobilenetv2", weights=str(weights), **settings)


@pytest.fixture(scope="module")
def photo_list(coco_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real COCO photos with a truncated JPEG and an empty file among them."""
    root = tmp_path_factory.mktemp("spark-photos")
    photos = [str(p) for p in sorted((coco_dir / "val2014").glob("*.jpg"))[:N_PHOTOS]]
    (root / "truncated.jpg").write_bytes(Path(photos[0]).read_bytes()[:2000])
    (root / "empty.jpg").write_bytes(b"")
    for pos, name in sorted(CORRUPT_AT.items()):
        photos.insert(pos, str(root / name))
    listing = root / "photos.txt"
    listing.write_text("\n".join(photos) + "\n")
    return listing


@pytest.fixture(scope="module")
def local_db(photo_list: Path, mobilenet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process extraction of the same inputs: the reference."""
    db = tmp_path_factory.mktemp("spark-ref") / "local"
    extract_features(photo_list, db, _config(mobilenet_weights))
    return db


def _assert_same_database(got: Path, want: Path) -> None:
    a, b = Database.open(got, load_index=False), Database.open(want, load_index=False)
    assert a.items == b.items  # ids and order
    assert a.failures == b.failures
    assert len(a.failures) == len(CORRUPT_AT)
    assert a.manifest.counts == b.manifest.counts
    assert a.manifest.model == b.manifest.model
    diff = np.max(np.abs(np.asarray(a.vectors) - np.asarray(b.vectors)))
    assert diff <= 1e-4, f"max abs difference {diff}"


def _partial_shards(db: Path) -> dict[int, tuple[int, int]]:
    """Committed shards in ``db/.partial``: shard -> (mtime_ns, inode) of its vectors file."""
    out = {}
    for meta in sorted((db / ".partial").glob("shard-*.json")):
        shard = int(meta.stem.split("-")[1])
        st = (db / ".partial" / f"shard-{shard:06d}.npy").stat()
        out[shard] = (st.st_mtime_ns, st.st_ino)
    return out


class _Recording:
    """Runs a SparkEngine and records the shard files before the driver's commit removes them."""

    def __init__(self, engine: SparkEngine) -> None:
        self.engine = engine
        self.shards_after: dict[int, tuple[int, int]] = {}

    def run(self, job: BuildJob, shards: Any, embedder: Any, progress: Any) -> None:
        self.engine.run(job, shards, embedder, progress)
        self.shards_after = _partial_shards(job.partial.parent)


# ------------------------------------------------------------------ missing Java / pyspark (fast)
def test_missing_pyspark_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(SparkUnavailableError, match="pip install pyspark"):
        check_spark()


def test_missing_java_names_the_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SparkUnavailableError, match="openjdk-17-jre-headless") as info:
        job = BuildJob(tmp_path, ["x"], 1, 1, 1, {"name": "x", "dim": 1}, "image", 1)
        SparkEngine("local[1]").run(job, [0], None, lambda n: None)
    assert "`java` is not on PATH" in str(info.value)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    with pytest.raises(SparkUnavailableError, match="JAVA_HOME"):
        check_spark()


def test_engine_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="partitions"):
        SparkEngine(partitions=0)


def test_spark_defaults_file_is_read_as_spark_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spark-defaults.conf").write_text(
        "# a comment\n! another\n\nspark.master   spark://10.0.0.1:7077\nspark.executor.memory=4g\n"
        "spark.executorEnv.A : x y\nspark.driver.extraJavaOptions -Da=1 \\\n    -Db=2\nnot.spark.key 1\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    settings, path = spark_defaults()
    assert path == tmp_path / "spark-defaults.conf"
    assert settings == {"spark.master": "spark://10.0.0.1:7077", "spark.executor.memory": "4g",
                        "spark.executorEnv.A": "x y", "spark.driver.extraJavaOptions": "-Da=1 -Db=2"}
    monkeypatch.delenv("SPARK_CONF_DIR")
    monkeypatch.setenv("SPARK_HOME", str(tmp_path / "home"))
    assert spark_defaults() == ({}, None)  # no conf/spark-defaults.conf there


def test_executors_run_the_drivers_python_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    assert executor_python({}) == sys.executable  # for every master, not only local ones
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/env/bin/python")
    assert executor_python({}) == "/opt/env/bin/python"
    assert executor_python({"spark.pyspark.python": "/cluster/python"}) == "/cluster/python"


# The text of a real Py4JJavaError (its Java stack cut short): an executor whose Python lacks the package
# (PYSPARK_PYTHON running `python -S -P`), captured from `SparkContext.parallelize(...).collect()`.
_PY4J_MISSING_MODULE = """\
An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.
: org.apache.spark.api.python.PythonException: [PYTHON_EXCEPTION] An exception was thrown from the Python \
worker: Traceback (most recent call last):
  File "/usr/lib/python3.11/site-packages/pyspark/worker.py", line 4197, in invoke_udf
    func, profiler, deserializer, serializer = read_command(pickleSer, init_info.udf_info)
                                               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/usr/lib/python3.11/site-packages/pyspark/worker_util.py", line 75, in read_command
    command = serializer.loads(file)
              ^^^^^^^^^^^^^^^^^^^^^^
  File "/usr/lib/python3.11/site-packages/pyspark/serializers.py", line 483, in loads
    return cloudpickle.loads(obj, encoding=encoding)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
ModuleNotFoundError: No module named 'similar_images'
 SQLSTATE: 38000
\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:1097)
\tat org.apache.spark.api.python.PythonRunner$$anon$5.read(PythonRunner.scala:1642)
\tat java.base/java.lang.Thread.run(Thread.java:840)
"""


class _JavaError(Exception):
    """Shaped as py4j's Py4JJavaError: the Java exception's text is in ``java_exception``."""

    def __init__(self, text: str) -> None:
        super().__init__("An error occurred while calling o42.collectAndServe")
        self.java_exception = text


def test_an_executors_python_error_is_named_by_its_exception_line() -> None:
    line = _java_error_line(_JavaError(_PY4J_MISSING_MODULE.split("\n", 1)[1]))
    assert line == "ModuleNotFoundError: No module named 'similar_images'"
    stage = ("org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 0.0 failed 4 times, "
             "most recent failure: Lost task 0.3 (TID 3) (10.0.0.2 executor 1): " + _PY4J_MISSING_MODULE)
    assert _java_error_line(_JavaError(stage)) == "ModuleNotFoundError: No module named 'similar_images'"
    lost = "org.apache.spark.SparkException: Job aborted: executor lost\n\tat org.apache.spark.X(X.scala:1)"
    assert _java_error_line(_JavaError(lost)) == "org.apache.spark.SparkException: Job aborted: executor lost"


def test_shards_committed_where_the_driver_does_not_look_are_named(tmp_path: Path) -> None:
    job = BuildJob(tmp_path / "db" / ".partial", ["a.jpg", "b.jpg"], 1, 1, 1, {"name": "x", "dim": 1}, "image", 1)
    job.partial.mkdir(parents=True)
    elsewhere = "/var/lib/spark/work/app-1/0/db/.partial/shard-000001.json"
    reports = [ShardReport(0, 0, 0, 1, 1, 0, 0.1, 0.1, skipped=True),
               ShardReport(1, 0, 0, 1, 1, 0, 0.1, 0.1, path=elsewhere, host="worker-7")]
    with pytest.raises(PartitionFailedError) as info:
        _check_landed(job, reports, grace=0.2)
    message = str(info.value)
    assert elsewhere in message and "worker-7" in message and str(job.partial) in message
    assert "storage that the driver and every executor reach" in message
    assert "run the same command again to" not in message  # running it again would fail the same way
    from similar_images.cli._common import cli_message

    assert info.value.resumable is False and "same command again" not in cli_message(info.value)  # nor the CLI
    write_shard(job.partial, 1, [1], np.zeros((1, 1), np.float32), [], 1)
    _check_landed(job, reports)  # seen by the driver: nothing to say


# ------------------------------------------------------------------ mixed clusters, driver (fast: no Spark)
def test_auto_precision_is_refused_on_a_cluster_master(synthetic_images: Path, tiny_model: str,
                                                       tmp_path: Path) -> None:
    """auto measures the driver's CPU: with executors on other machines an explicit precision is asked for,
    before anything is written (local masters keep auto: their executors share this CPU)."""
    from click.testing import CliRunner

    from similar_images.cli import main
    from similar_images.errors import AutoPrecisionOnClusterError

    master = "spark://127.0.0.1:7077"
    with pytest.raises(AutoPrecisionOnClusterError, match="set the precision explicitly") as info:
        extract_features(synthetic_images, tmp_path / "db", ExtractConfig(model=tiny_model, weights="random"),
                         engine=SparkEngine(master))
    assert info.value.master == master and not (tmp_path / "db").exists()
    assert SparkEngine("local[2]").remote_master() is None and SparkEngine().remote_master() is None
    r = CliRunner().invoke(main, ["extract", str(synthetic_images), str(tmp_path / "db"), "--model", tiny_model,
                                  "--weights", "random", "--engine", "spark", "--master", master])
    assert r.exit_code == 1 and not (tmp_path / "db").exists()
    assert r.output.strip().splitlines() == [
        f"Error: --precision auto measures this machine's CPU, but the executors of {master} run on other machines; "
        "pass --precision fp32 (or bf16/int8 if every executor's CPU runs it natively)"]


class _OtherProcesses:
    """An engine whose model runs in other processes (as Spark's executors): here a fresh embedder per run."""

    embeds_in_this_process = False

    def run(self, job: BuildJob, shards: Any, embedder: Any, progress: Any) -> None:
        from similar_images.engines.local import LocalEngine

        LocalEngine().run(job, shards, None, progress)


def test_driver_does_not_load_the_model_for_an_engine_that_embeds_elsewhere(synthetic_images: Path,
                                                                             tiny_model: str, tmp_path: Path) -> None:
    """The build's warm-up runs only where the model computes: the driver's embedder stays unloaded."""
    from similar_images.embed import ImageEmbedder

    assert SparkEngine.embeds_in_this_process is False
    emb = ImageEmbedder(tiny_model, "random")
    s = extract_features(synthetic_images, tmp_path / "db", ExtractConfig(model=tiny_model, weights="random",
                                                                         precision="fp32", verbose=False),
                         embedder=emb, engine=_OtherProcesses())  # type: ignore[arg-type]
    assert s.extracted == 12 and emb._runner is None
    extract_features(synthetic_images, tmp_path / "db2", ExtractConfig(model=tiny_model, weights="random",
                                                                      precision="fp32", verbose=False), embedder=emb)
    assert emb._runner is not None  # the local engine loads it, once, before its clock starts


# ------------------------------------------------------------------ contexts (slow: Spark)
def _env_in_task(name: str) -> Any:
    def task(_: Any) -> Any:
        yield os.environ.get(name)

    return task


@pytest.mark.slow
def test_settings_of_one_context_do_not_leak_into_the_next() -> None:
    with SparkEngine("local[1]", conf={"spark.executorEnv.SI_TEST_VAR": "first"}).context() as sc:
        assert sc.parallelize([0], 1).mapPartitions(_env_in_task("SI_TEST_VAR")).collect() == ["first"]
    with SparkEngine("local[2]").context() as sc:
        assert sc.master == "local[2]"
        assert sc.parallelize([0], 1).mapPartitions(_env_in_task("SI_TEST_VAR")).collect() == [None]


_SUBMITTED = """
from similar_images.engines.spark import SparkEngine
with SparkEngine().context() as sc:
    print("MASTER", sc.master, sc.getConf().get("spark.executorEnv.SI_TEST_VAR"))
"""


@pytest.mark.slow
def test_under_spark_submit_its_master_and_settings_are_used(tmp_path: Path) -> None:
    import pyspark

    script = tmp_path / "job.py"
    script.write_text(_SUBMITTED)
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYSPARK_PYTHON": sys.executable}
    out = subprocess.run([str(submit), "--master", "local[3]", "--conf", "spark.executorEnv.SI_TEST_VAR=x",
                          str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MASTER local[3] x" in out.stdout


# ------------------------------------------------------------------ extraction (slow: Spark + a real model)
@pytest.mark.slow
def test_spark_extraction_equals_single_process(photo_list: Path, local_db: Path, mobilenet_weights: Path,
                                                tmp_path: Path) -> None:
    engine = SparkEngine("local[2]", partitions=3)
    summary = extract_features(photo_list, tmp_path / "spark", _config(mobilenet_weights), engine=engine)
    assert (summary.total, summary.extracted, summary.failed) == (N_PHOTOS + 2, N_PHOTOS, 2)
    _assert_same_database(tmp_path / "spark", local_db)
    run = engine.last_run
    assert run is not None and run.partitions == 3 and not run.failures
    assert run.embedded_shards == list(range(6))  # every shard once
    # the model is built once per executor process, not once per task
    loads = [r.pid for r in run.shards if r.model_seconds > 0]
    assert sorted(loads) == sorted({r.pid for r in run.shards})
    manifest = Database.open(tmp_path / "spark", load_index=False).manifest
    assert manifest.extra["extraction"]["engine"]["name"] == "spark"
    assert not (tmp_path / "spark" / ".partial").exists()


_KILLED_JOB = """
import sys
from similar_images import ExtractConfig
from similar_images.store import extract_features
from similar_images.engines.spark import SparkEngine
cfg = ExtractConfig(model="mobilenetv2", weights=sys.argv[3], shard_size=2, batch_size=4, verbose=False)
extract_features(sys.argv[1], sys.argv[2], cfg, engine=SparkEngine("local[1]"))
"""


@pytest.mark.slow
def test_killed_driver_resumes_without_redoing_committed_shards(photo_list: Path, local_db: Path,
                                                                mobilenet_weights: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    (tmp_path / "tmp").mkdir()  # the killed driver cannot remove its scratch folder: keep it in tmp_path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_JOB, str(photo_list), str(db), str(mobilenet_weights)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not (db / ".partial").exists() or len(_partial_shards(db)) < 3:
            assert proc.poll() is None, f"the job ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
            assert time.monotonic() < deadline, "no 3 shards committed in 10 minutes"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and its Python workers: one process group
        proc.wait()
        proc.stderr.close()
    time.sleep(1)
    before = _partial_shards(db)
    n_shards = (N_PHOTOS + 2 + 1) // 2
    assert 3 <= len(before) < n_shards, f"{len(before)} of {n_shards} shards committed when killed"
    assert not (db / "manifest.json").exists()

    # The same command again: it resumes, and the committed shards are neither redone nor rewritten.
    engine = _Recording(SparkEngine("local[1]"))
    summary = extract_features(photo_list, db, _config(mobilenet_weights, shard_size=2), engine=engine)
    done_items = sum(min(2, N_PHOTOS + 2 - 2 * s) for s in before)
    assert summary.resumed_from == done_items
    assert engine.engine.last_run is not None
    assert engine.engine.last_run.embedded_shards == sorted(set(range(n_shards)) - set(before))
    assert {s: engine.shards_after[s] for s in before} == before  # same files, same mtimes
    _assert_same_database(db, local_db)


@pytest.mark.slow
def test_task_failing_once_is_retried(photo_list: Path, local_db: Path, mobilenet_weights: Path,
                                      tmp_path: Path) -> None:
    marker = tmp_path / "fault-fired"
    engine = SparkEngine("local[2,2]", partitions=3,
                         conf={f"spark.executorEnv.{FAULT_ENV}": f"shard=4,once={marker}"})
    summary = extract_features(photo_list, tmp_path / "db", _config(mobilenet_weights), engine=engine)
    assert marker.exists()  # the fault fired
    assert summary.extracted == N_PHOTOS
    run = engine.last_run
    assert run is not None and not run.failures
    retried = [r for r in run.shards if r.shard == 4]
    assert len(retried) == 1 and retried[0].attempt == 1 and not retried[0].skipped
    _assert_same_database(tmp_path / "db", local_db)


@pytest.mark.slow
def test_partition_failing_for_good_keeps_the_others(photo_list: Path, local_db: Path, mobilenet_weights: Path,
                                                     tmp_path: Path) -> None:
    db = tmp_path / "db"
    engine = SparkEngine("local[2,2]", partitions=3, conf={f"spark.executorEnv.{FAULT_ENV}": "shard=4"})
    with pytest.raises(PartitionFailedError, match=r"1 of 3 Spark partitions failed for good \(shards \[4, 5\]\)"
                       r".*injected fault.*build again with the same settings to resume"):
        extract_features(photo_list, db, _config(mobilenet_weights), engine=engine)
    assert engine.last_run is not None and engine.last_run.failures[0].attempt == 1  # retried once, then reported
    committed = _partial_shards(db)
    assert sorted(committed) == [0, 1, 2, 3]  # the other partitions finished
    engine = SparkEngine("local[2]")
    extract_features(photo_list, db, _config(mobilenet_weights), engine=engine)
    assert engine.last_run is not None and engine.last_run.embedded_shards == [4, 5]
    _assert_same_database(db, local_db)


# ------------------------------------------------------------------ index (slow: Spark)
def _synthetic_db(path: Path, n: int = 6000, d: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, d)).astype(np.float32)
    x = centers[rng.integers(0, 40, n)] + 0.4 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_database(path, kind="image", model={"name": "synthetic", "dim": d}, items=[f"v{i}.jpg" for i in range(n)],
                   vector_chunks=[x])
    return path


@pytest.mark.slow
def test_distributed_index_equals_single_process_index(tmp_path: Path) -> None:
    import faiss

    from similar_images.index import train_index
    from similar_images.index.distributed import add_to_copy

    db_path = _synthetic_db(tmp_path / "db")
    db = Database.open(db_path, load_index=False)
    vectors = np.asarray(db.vectors)
    n, d = vectors.shape
    trained, _, _ = train_index(vectors, "IVF64,PQ8")
    single = add_to_copy(trained, vectors, np.arange(n))
    queries = vectors[::30]
    engine = SparkEngine("local[2]", partitions=4)
    with engine.context():  # one Spark context for the three builds below
        merged, parts = engine.add_and_merge(trained, db_path / "vectors.f32", n, d, None, tmp_path / "work")
        on_disk, _ = engine.add_and_merge(trained, db_path / "vectors.f32", n, d, None, tmp_path / "work",
                                          on_disk=tmp_path / "merged.ivfdata")
        report = Database.open(db_path, load_index=False).build_index(
            IndexConfig(factory="IVF64,PQ8", eval_queries=200), engine=engine)
    assert [p.ntotal for p in parts] == [1500] * 4 and len({p.pid for p in parts}) <= 2
    assert trained.ntotal == 0
    for index in (single, merged, on_disk):
        faiss.extract_index_ivf(index).nprobe = 8
    want_d, want_i = single.search(queries, 10)
    for index in (merged, on_disk):
        got_d, got_i = index.search(queries, 10)
        np.testing.assert_array_equal(got_i, want_i)  # the same top-10, in the same order
        np.testing.assert_array_equal(got_d, want_d)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(on_disk).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)

    # The database-level build: committed like build-index, and as good as the single-process build.
    opened = Database.open(db_path)
    assert opened.index.ntotal == n and opened.manifest.index.get("engine")["name"] == "spark"
    local = Database.open(shutil.copytree(db_path, tmp_path / "local"), load_index=False)
    local_report = local.build_index(IndexConfig(factory="IVF64,PQ8", eval_queries=200), force=True)
    assert report.recall_at_10 is not None and local_report.recall_at_10 is not None
    assert abs(report.recall_at_10 - local_report.recall_at_10) <= 0.02
    assert not (db_path / ".partial-index").exists()


@pytest.mark.slow
def test_spark_index_on_disk_database(tmp_path: Path) -> None:
    db_path = _synthetic_db(tmp_path / "db", n=3000)
    Database.open(db_path, load_index=False).remove([5, 17])
    engine = SparkEngine("local[2]", partitions=3, on_disk=True)
    Database.open(db_path, load_index=False).build_index(IndexConfig(factory="IVF32,PQ8", eval_queries=100),
                                                         engine=engine)
    db = Database.open(db_path)
    assert db.manifest.index.get("engine")["on_disk"] is True
    assert (db_path / db.manifest.index.get("engine")["ivfdata"]).exists()
    assert db.index.ntotal == 2998
    results = db.search(db.vector(0), k=5)
    assert results[0].id == 0 and all(m.id not in (5, 17) for m in results)


@pytest.mark.slow
def test_cli_extract_add_and_build_index_on_spark(photo_list: Path, local_db: Path, mobilenet_weights: Path,
                                                  tmp_path: Path) -> None:
    """The command line's --engine spark: the same database as a local extraction, then add and build-index."""
    from click.testing import CliRunner

    from similar_images.cli import main

    runner = CliRunner()
    db = tmp_path / "db"
    spark = ["--engine", "spark", "--master", "local[2]"]
    r = runner.invoke(main, ["extract", str(photo_list), str(db), "--model", "mobilenetv2", "--weights",
                             str(mobilenet_weights), "--shard-size", str(SHARD), "-b", "4", "-q", *spark])
    assert r.exit_code == 0, r.output
    assert f"Extracted {N_PHOTOS} of {N_PHOTOS + 2} images" in r.output
    _assert_same_database(db, local_db)
    more = tmp_path / "more"
    more.mkdir()
    for p in sorted((Path(mobilenet_weights).parents[1] / "images" / "coco" / "train2017").glob("*.jpg"))[:3]:
        shutil.copy(p, more / p.name)
    r = runner.invoke(main, ["add", str(db), str(more), "-q", *spark])
    assert r.exit_code == 0, r.output
    assert "Added 3 images" in r.output and Database.open(db, load_index=False).manifest.counts.items == N_PHOTOS + 3
    r = runner.invoke(main, ["build-index", str(db), "--index", "IVF4,Flat", "--eval-queries", "20", "-q", *spark])
    assert r.exit_code == 0, r.output
    opened = Database.open(db)
    assert opened.manifest.index.get("engine")["name"] == "spark" and opened.index.ntotal == len(opened)
    r = runner.invoke(main, ["extract", str(photo_list), str(tmp_path / "x"), "--master", "local[1]", "-q"])
    assert r.exit_code == 2 and "--master, --partitions and --conf go with --engine spark" in r.output


# ------------------------------------------------------------------ cluster readiness (issue 25; slow: Spark)
def _python_wrapper(path: Path, body: str) -> Path:
    """An executable script for spark.pyspark.python / PYSPARK_PYTHON."""
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _few_photos(coco_dir: Path, folder: Path, n: int) -> Path:
    folder.mkdir()
    for p in sorted((coco_dir / "val2014").glob("*.jpg"))[:n]:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.mark.slow
def test_relative_database_path_with_executors_working_elsewhere(coco_dir: Path, mobilenet_weights: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Executors run in their own working folders (as on a cluster): a relative DB reaches them absolute.

    Before, they committed the shards into ``elsewhere/db/.partial`` and the driver said "run the same
    command again", which failed the same way."""
    from click.testing import CliRunner

    from similar_images.cli import main

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = _python_wrapper(tmp_path / "python", f'cd "{elsewhere}" && exec "{sys.executable}" "$@"')
    monkeypatch.setenv("PYSPARK_PYTHON", str(python))
    _few_photos(coco_dir, tmp_path / "imgs", 4)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["extract", "imgs", "db", "-m", "mobilenetv2", "-w", str(mobilenet_weights),
                                  "--precision", "fp32", "--shard-size", "2", "-q", "--engine", "spark",
                                  "--master", "local[1]"])
    assert r.exit_code == 0, r.output
    assert len(Database.open(tmp_path / "db", load_index=False)) == 4
    assert not list(elsewhere.iterdir())


@pytest.mark.slow
def test_executor_python_without_the_package_is_named(coco_dir: Path, mobilenet_weights: Path,
                                                      tmp_path: Path) -> None:
    """--conf spark.pyspark.python names the executors' Python; one that lacks the package is reported by its
    exception line, not by the first line of the Java stack ("...PythonException: ... Traceback ...")."""
    from click.testing import CliRunner

    from similar_images.cli import main

    site = Path(np.__file__).parents[1]  # numpy's and pyspark's site-packages, without its .pth files (-S)
    bare = _python_wrapper(tmp_path / "bare-python", f'PYTHONPATH="{site}" exec "{sys.executable}" -S -P "$@"')
    assert subprocess.run([str(bare), "-c", "import similar_images"], capture_output=True).returncode == 1
    imgs = _few_photos(coco_dir, tmp_path / "imgs", 2)
    r = CliRunner().invoke(main, ["extract", str(imgs), str(tmp_path / "db"), "-m", "mobilenetv2", "-w",
                                  str(mobilenet_weights), "--precision", "fp32", "-q", "--engine", "spark",
                                  "--master", "local[1]", "--conf", f"spark.pyspark.python={bare}"])
    assert r.exit_code == 1, r.output
    message = r.output.strip().splitlines()[-1]
    assert "(ModuleNotFoundError: No module named 'similar_images')" in message, r.output
    assert f"The executors run {bare}" in message and "Traceback" not in message


@pytest.mark.slow
def test_spark_defaults_conf_is_honoured_and_given_settings_win(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spark-defaults.conf").write_text("spark.executorEnv.SI_A  from-file\n"
                                                  "spark.executorEnv.SI_B  from-file\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    with SparkEngine("local[1]", conf={"spark.executorEnv.SI_B": "given"}).context() as sc:
        assert sc.parallelize([0], 1).mapPartitions(_env_in_task("SI_A")).collect() == ["from-file"]
        assert sc.parallelize([0], 1).mapPartitions(_env_in_task("SI_B")).collect() == ["given"]
        assert sc.pythonExec == sys.executable


@pytest.mark.slow
def test_the_command_runs_under_spark_submit(coco_dir: Path, mobilenet_weights: Path, tmp_path: Path) -> None:
    """The command docs/spark.md gives: spark-submit runs similar_images/__main__.py, whose master is used."""
    import pyspark

    import similar_images

    imgs = _few_photos(coco_dir, tmp_path / "imgs", 2)
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    entry = Path(similar_images.__file__).parent / "__main__.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([str(submit), "--master", "local[1]", str(entry), "extract", str(imgs), "db", "-m",
                          "mobilenetv2", "-w", str(mobilenet_weights), "--precision", "fp32", "-q", "--engine",
                          "spark"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Extracted 2 of 2 images" in out.stdout
    db = Database.open(tmp_path / "db", load_index=False)
    assert len(db) == 2 and db.manifest.extra["extraction"]["engine"]["master"] == "local[1]"


@pytest.mark.slow
def test_json_output_stays_json_with_an_on_disk_index(tmp_path: Path) -> None:
    """Faiss prints "resizing ... .ivfdata" and "IO_FLAG_ONDISK_SAME_DIR ..." on file descriptor 1: they go to
    the log, and build-index --json and search --json print valid JSON."""
    db = _synthetic_db(tmp_path / "db", n=3000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cli = [sys.executable, "-m", "similar_images"]
    built = subprocess.run([*cli, "build-index", str(db), "--index", "IVF32,PQ8", "--eval-queries", "20", "--json",
                            "--engine", "spark", "--master", "local[2]", "--on-disk"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    assert json.loads(built.stdout)["n_vectors"] == 3000
    assert list(db.glob("*.ivfdata"))
    found = subprocess.run([*cli, "search", str(db), "0", "--id", "--json", "-k", "3"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-3000:]
    assert json.loads(found.stdout)["results"][0]["id"] == 0
