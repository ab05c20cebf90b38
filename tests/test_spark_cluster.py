"""The Spark engine on a real standalone cluster (issue 25): a master and 2 workers on 127.0.0.1.

The command line runs ``extract`` and ``build-index`` with ``--master spark://127.0.0.1:PORT`` from the
folder of the database, named by a relative path, and the result equals the local engine's: the same ids
in the same order, vectors equal within 1e-6, the same failures, the same top-10. A worker killed while the
job runs (when its first shard is committed) leaves the job to the other worker, with equal results.

Slow: a cluster starts (about 15 s), and real MobileNetV2 embeds 150 real photos.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from spark_cluster import leftover_processes, standalone_cluster

from similar_images import Database

pytestmark = pytest.mark.slow

PER_CLASS = 30  # 5 classes: 150 photos, and 2 broken files
SHARD = 16  # 152 inputs -> 10 shards, one Spark task each
TIMEOUT = 420


@pytest.fixture(scope="module")
def photos(coco_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A list of 150 real flower photos (absolute paths) with a truncated JPEG and an empty file among them."""
    flowers = coco_dir.parent / "flowers5"
    if not flowers.is_dir():
        pytest.skip(f"needs the offline assets' flower photos ({flowers})")
    root = tmp_path_factory.mktemp("cluster-photos")
    paths = [str(p) for c in sorted(flowers.iterdir()) for p in sorted(c.glob("*.jpg"))[:PER_CLASS]]
    (root / "truncated.jpg").write_bytes(Path(paths[0]).read_bytes()[:1500])
    (root / "empty.jpg").write_bytes(b"")
    paths.insert(20, str(root / "truncated.jpg"))
    paths.insert(100, str(root / "empty.jpg"))
    listing = root / "photos.txt"
    listing.write_text("\n".join(paths) + "\n")
    return listing


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
               SPARK_LOCAL_IP="127.0.0.1", TF_CPP_MIN_LOG_LEVEL="2")
    return env


def _cli(cwd: Path, *args: str, wait: bool = True) -> subprocess.Popen[str] | subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "similar_images", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def _db(cwd: Path) -> str:
    """The database path given to ``extract`` on the cluster, run from ``cwd``: the relative ``db`` (the executors
    work in their own folders: the path is made absolute before Spark gets it)."""
    del cwd
    return "db"


def _extract(cwd: Path, photos: Path, db: str, weights: Path, *engine: str) -> list[str]:
    return ["extract", str(photos), db, "--model", "mobilenetv2", "--weights", str(weights), "--precision", "fp32",
            "--shard-size", str(SHARD), "-b", "8", "-q", *engine]


@pytest.fixture(scope="module")
def reference(photos: Path, mobilenet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local engine's database of the same photos, with an IVF index: what the cluster must equal."""
    cwd = tmp_path_factory.mktemp("cluster-ref")
    r = _cli(cwd, *_extract(cwd, photos, "ref", mobilenet_weights))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _cli(cwd, "build-index", "ref", "--index", "IVF4,Flat", "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    return cwd / "ref"


def _assert_same_database(got: Path, want: Path) -> None:
    a, b = Database.open(got, load_index=False), Database.open(want, load_index=False)
    assert a.items == b.items and len(a.items) == 150
    np.testing.assert_allclose(np.asarray(a.vectors), np.asarray(b.vectors), rtol=0, atol=1e-6)
    assert a.failures == b.failures and len(a.failures) == 2


def _top10(db: Path) -> list[list[int]]:
    d = Database.open(db)
    return [[m.id for m in d.search(d.vector(q), k=10)] for q in range(0, 150, 15)]


def test_cluster_extract_and_build_index_equal_the_local_engine(
        spark_cluster: object, photos: Path, mobilenet_weights: Path, reference: Path, tmp_path: Path) -> None:
    """extract and build-index on the cluster, with a relative database path, equal the local engine's."""
    spark = ["--engine", "spark", "--master", spark_cluster.url]  # type: ignore[attr-defined]
    r = _cli(tmp_path, *_extract(tmp_path, photos, _db(tmp_path), mobilenet_weights, *spark))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Extracted 150 of 152 images into {tmp_path / 'db'} " in r.stdout  # the path Spark was given: absolute
    assert not list(tmp_path.glob("db/.partial*")), "the build's shards stayed uncommitted"
    _assert_same_database(tmp_path / "db", reference)
    manifest = Database.open(tmp_path / "db", load_index=False).manifest
    engine = manifest.extra["extraction"]["engine"]
    assert engine["master"] == spark_cluster.url  # type: ignore[attr-defined]
    assert engine["run"] == {"partitions": 2, "precisions": ["fp32"]}  # one per core; what the executors ran
    r = _cli(tmp_path, "build-index", "db", "--index", "IVF4,Flat", "-q", *spark)
    assert r.returncode == 0, r.stdout + r.stderr
    # success stays quiet: no "ERROR TransportResponseHandler ..." and no Java stack (the broadcast index is
    # removed before Spark stops)
    assert " ERROR " not in r.stderr and "Exception" not in r.stderr, r.stderr
    built = Database.open(tmp_path / "db")
    assert built.manifest.index.get("engine")["name"] == "spark" and built.index.ntotal == 150
    assert _top10(tmp_path / "db") == _top10(reference)


def test_worker_killed_mid_job_the_other_finishes_it(photos: Path, mobilenet_weights: Path, reference: Path,
                                                     tmp_path: Path) -> None:
    """One worker's JVM (and its executor) killed when the first shard is committed: the job ends on the other."""
    folder = tmp_path / "cluster"
    try:
        with standalone_cluster(folder, workers=2) as cluster:
            proc = _cli(tmp_path, *_extract(tmp_path, photos, _db(tmp_path), mobilenet_weights, "--engine", "spark",
                                            "--master", cluster.url), wait=False)
            assert isinstance(proc, subprocess.Popen)
            try:
                deadline = time.monotonic() + TIMEOUT
                while not list(tmp_path.glob("db/.partial/shard-*.json")):
                    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                    assert time.monotonic() < deadline, "no shard was committed in time"
                    time.sleep(0.2)
                committed = len(list(tmp_path.glob("db/.partial/shard-*.json")))
                cluster.kill_worker(0)
                out, _ = proc.communicate(timeout=TIMEOUT)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert cluster.alive_workers() == 1
        assert proc.returncode == 0, out
        assert committed < 10, "the job had ended before the worker was killed"
        assert "Extracted 150 of 152 images" in out
        _assert_same_database(tmp_path / "db", reference)
    finally:
        assert not leftover_processes(folder)
