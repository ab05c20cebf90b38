"""A live database: searched from the first committed shard of its extraction, followed as it changes.

Real parts throughout: the tiny Keras model (tests/plugins), real Faiss indexes, real shard files written by
the real build. The build runs in a thread of the test with an engine that commits one shard per permit, so
the test decides when each shard lands; other writers (add, remove, build-index) are other processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_image
from helpers import plugin_env

from similar_images.cli import main
from similar_images.engines.local import BuildJob
from similar_images.engines.shards import shard_done
from similar_images.errors import DatabaseError
from similar_images.store import Database, ExtractConfig, LocalEngine, extract_features
from similar_images.store.folder import PARTIAL_DIR

CLI = [sys.executable, "-c", "from similar_images.cli import main; main()"]
SHARD = 4
N_IMAGES = 14  # shards of 4, 4, 4, 2


class GatedEngine:
    """Embeds one shard per :meth:`allow` (with the real :class:`LocalEngine`), so a test sees each land."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)

    def allow(self, shards: int = 1) -> None:
        for _ in range(shards):
            self.permits.release()

    def run(self, job: BuildJob, shards: Sequence[int], embedder: Any, progress: Callable[[int], None]) -> None:
        for s in shards:
            if not self.permits.acquire(timeout=120):
                raise RuntimeError("the test never allowed the next shard")
            LocalEngine().run(job, [s], embedder, progress)


class Extraction:
    """An extraction of ``N_IMAGES`` tiny-model images running in a thread, one shard per permit."""

    def __init__(self, images: Path, db: Path) -> None:
        self.db = db
        self.engine = GatedEngine()
        self.error: BaseException | None = None
        config = ExtractConfig(model="tiny", weights="random", shard_size=SHARD, batch_size=2, workers=1,
                               precision="fp32", verbose=False)

        def run() -> None:
            try:
                extract_features(images, db, config, engine=self.engine)
            except BaseException as exc:  # noqa: BLE001 - reported by finish()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        wait_for(lambda: (db / PARTIAL_DIR / "plan.json").exists(), "the build's plan")

    def land(self, shard: int) -> None:
        """Let shard ``shard`` be embedded and wait until it is committed."""
        self.engine.allow()
        wait_for(lambda: shard_done(self.db / PARTIAL_DIR, shard), f"shard {shard}")

    def finish(self) -> None:
        self.engine.allow(100)
        self.thread.join(120)
        assert not self.thread.is_alive() and self.error is None, self.error


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for i in range(N_IMAGES):
        make_image(root / f"img{i:02d}.png", seed=100 + i)
    return root


@pytest.fixture()
def extraction(images: Path, tmp_path: Path, tiny_model: str) -> Iterator[Extraction]:
    ex = Extraction(images, tmp_path / "db")
    yield ex
    ex.engine.allow(100)  # never leave the thread waiting
    ex.thread.join(60)


def test_a_database_being_extracted_is_searched_from_its_first_shard(extraction: Extraction) -> None:
    """Before: 'search' and Database.open said "No database at DB yet: a build was interrupted there" until the
    whole extraction ended. Now the committed shards are searched, with the ids the finished database gives."""
    from similar_images.errors import DatabaseNotReadyError
    from similar_images.store.live import build_progress, open_readable

    db = extraction.db
    with pytest.raises(DatabaseNotReadyError, match="not committed its first shard"):
        open_readable(db)
    assert build_progress(db).ready == 0 and build_progress(db).total == N_IMAGES
    extraction.land(0)
    first = open_readable(db)
    assert len(first) == SHARD and first.partial and first.index is None
    hits = first.search(1, k=3)
    assert hits.ids[0] == 1 and len(hits) == 3 and all(i < SHARD for i in hits.ids)
    with pytest.raises(DatabaseError, match="still being built"):
        first.remove([0])  # a view of an unfinished build is read-only

    result = CliRunner().invoke(main, ["search", str(db), "2", "--id", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in json.loads(result.output)["results"]][0] == 2
    info = CliRunner().invoke(main, ["info", str(db)])
    assert info.exit_code == 0 and f"{SHARD} of {N_IMAGES} items ready" in info.output, info.output
    assert "search works now" in info.output

    extraction.land(1)
    extraction.finish()
    final = Database.open(db)
    assert len(final) == N_IMAGES and final.items[:SHARD] == first.items
    np.testing.assert_array_equal(final.vectors[:SHARD], first.vectors)


def test_a_followed_database_grows_shard_by_shard_and_switches_to_the_finished_one(extraction: Extraction) -> None:
    """A LiveDatabase (what the service and the app hold) follows the build without being reopened."""
    from similar_images.errors import DatabaseNotReadyError
    from similar_images.store.live import LiveDatabase, build_progress

    db = extraction.db
    live = LiveDatabase(db, interval=0.0)
    with pytest.raises(DatabaseNotReadyError):
        live.get()
    sizes = []
    for shard in range(3):
        extraction.land(shard)
        want = SHARD * (shard + 1)
        wait_for(lambda want=want: (d := live.current()) is not None and len(d) == want, f"shard {shard}")
        sizes.append(len(live.get()))
    assert sizes == [4, 8, 12]
    progress = build_progress(db)
    assert progress.phase == "extracting" and progress.ready == 12 and progress.done == 12
    assert progress.total == N_IMAGES and progress.building
    extraction.finish()
    wait_for(lambda: not live.get().partial, "the finished database")
    assert len(live.get()) == N_IMAGES and build_progress(db).phase == "ready"
    assert live.get().search(13, k=1).ids == [13]


def test_progress_reports_rate_and_eta_while_extracting(extraction: Extraction) -> None:
    from similar_images.store.live import build_progress

    extraction.land(0)
    time.sleep(0.05)
    extraction.land(1)
    p = build_progress(extraction.db)
    assert p.rate is not None and p.rate > 0
    assert p.eta_s is not None and p.eta_s == pytest.approx((N_IMAGES - 8) / p.rate)
    d = p.to_dict()
    assert d["building"] is True and d["ready"] == 8 and d["total"] == N_IMAGES


def _vector_db(tmp_path: Path, tiny_model: str, n: int = 12) -> Path:
    root = tmp_path / "base"
    for i in range(n):
        make_image(root / f"b{i:02d}.png", seed=300 + i)
    db = tmp_path / "db"
    extract_features(root, db, ExtractConfig(model="tiny", weights="random", precision="fp32", verbose=False))
    return db


@pytest.mark.slow
def test_changes_by_other_processes_show_in_a_followed_database_within_10_s(tmp_path: Path,
                                                                             tiny_model: str) -> None:
    """Before: a process that had opened the database never saw another process's add or remove (a removed id
    was served until it restarted)."""
    from similar_images.store.live import LiveDatabase

    db = _vector_db(tmp_path, tiny_model)
    live = LiveDatabase(db, interval=0.2)
    assert len(live.get()) == 12 and live.get().index is None
    env = plugin_env()

    subprocess.run([*CLI, "remove", str(db), "3"], env=env, check=True, capture_output=True, timeout=120)
    took = wait_for(lambda: live.get().removed[3] if len(live.get().removed) > 3 else False, "the remove", 10)
    assert 3 not in live.get().search(3 + 1, k=12).ids, took

    for i in range(3):
        make_image(tmp_path / "new" / f"n{i}.png", seed=900 + i)
    subprocess.run([*CLI, "add", str(db), str(tmp_path / "new"), "-q"], env=env, check=True, capture_output=True,
                   timeout=300)
    wait_for(lambda: live.get().ntotal == 15, "the add", 10)

    subprocess.run([*CLI, "build-index", str(db), "--index", "Flat", "-q"], env=env, check=True,
                   capture_output=True, timeout=300)
    wait_for(lambda: live.get().index is not None, "the new index", 10)
    assert live.get().search(14, k=1).ids == [14] and live.get().search(14, k=1).params["exact"] is False


@pytest.mark.slow
def test_serve_answers_from_the_first_shard_follows_the_build_and_swaps_indexes_without_a_failed_request(
        extraction: Extraction, tmp_path: Path) -> None:
    """Before: 'serve DB' on a database being extracted refused to start (no manifest yet), and a running
    service never saw another process's remove or new index."""
    import httpx
    from helpers import free_port, running_process

    db = extraction.db
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [*CLI, "serve", str(db), "--port", str(port), "--no-access-log"]
    with running_process(cmd, env=plugin_env(), log=tmp_path / "serve.log", timeout=300,
                         ready=lambda: httpx.get(url + "/health", timeout=5).status_code == 200):
        health = httpx.get(url + "/health", timeout=30).json()
        assert health["items"] == 0 and health["build"]["phase"] == "extracting"
        r = httpx.get(url + "/search", params={"id": 0}, timeout=30)
        assert r.status_code == 503 and r.json()["error"] == "not_ready" and "no photos ready yet" in r.text.lower()

        def items() -> int:
            return int(httpx.get(url + "/health", timeout=30).json()["items"])

        extraction.land(0)
        wait_for(lambda: items() == SHARD, "the first shard", 10)
        r = httpx.get(url + "/search", params={"id": 1, "k": 2}, timeout=30)
        assert r.status_code == 200 and r.json()["results"][0]["id"] == 1
        extraction.land(1)
        wait_for(lambda: items() == 2 * SHARD, "the second shard", 10)
        extraction.finish()
        wait_for(lambda: items() == N_IMAGES, "the finished database", 10)

        failures: list[str] = []
        answered = 0
        stop = threading.Event()

        def client() -> None:
            nonlocal answered
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    resp = c.get(url + "/search", params={"id": 5, "k": 3})
                    if resp.status_code != 200:
                        failures.append(f"{resp.status_code} {resp.text[:200]}")
                    answered += 1

        loop = threading.Thread(target=client, daemon=True)
        loop.start()
        try:
            env = plugin_env()
            subprocess.run([*CLI, "build-index", str(db), "--index", "Flat", "-q"], env=env, check=True,
                           capture_output=True, timeout=300)
            wait_for(lambda: httpx.get(url + "/health", timeout=30).json()["index"] == "Flat", "the new index", 10)
            subprocess.run([*CLI, "remove", str(db), "7"], env=env, check=True, capture_output=True, timeout=120)
            wait_for(lambda: httpx.get(url + "/search", params={"id": 7}, timeout=30).status_code == 404,
                     "the removal", 10)
            ids = [m["id"] for m in httpx.get(url + "/search", params={"id": 6, "k": N_IMAGES},
                                                timeout=30).json()["results"]]
            assert 7 not in ids and len(ids) == N_IMAGES - 1
        finally:
            stop.set()
            loop.join(30)
        assert answered > 0 and not failures, failures[:3]
        health = httpx.get(url + "/health", timeout=30).json()
        assert health["build"]["phase"] == "ready" and health["items"] == N_IMAGES - 1


def test_progress_in_plain_words() -> None:
    from similar_images.apps.common import progress_sentence
    from similar_images.store.live import BuildProgress

    p = BuildProgress(ready=12_345, total=40_504, done=12_400, phase="extracting", rate=12.0, eta_s=38 * 60 + 5)
    assert progress_sentence(p) == "12,345 of 40,504 photos ready; the rest in about 38 minutes; search works now."
    assert "No photos ready yet" in str(progress_sentence(BuildProgress(0, 40_504, 0, "extracting")))
    assert "run it again to resume" in str(progress_sentence(BuildProgress(8, 14, 8, "interrupted")))
    assert "index is being built" in str(progress_sentence(BuildProgress(14, 14, 14, "indexing")))
    assert progress_sentence(BuildProgress(14, 14, 14, "ready")) is None


def test_the_app_follows_a_database_being_extracted(extraction: Extraction) -> None:
    """Before: the app on a database being extracted showed "no database" until the extraction ended."""
    from similar_images.apps.image_app import SimilarImagesApp

    extraction.land(0)
    app = SimilarImagesApp.from_path(extraction.db, k=3, preload_model=False)
    assert len(app.db) == SHARD
    assert f"{SHARD} of {N_IMAGES} photos ready" in app.gallery.status["timing"]
    extraction.land(1)
    wait_for(lambda: len(app.db) == 2 * SHARD, "the second shard in the app", 10)
    app._show_status()
    assert f"{2 * SHARD} of {N_IMAGES} photos ready" in app.gallery.status["timing"]
    assert "search works now" in app.gallery.status["timing"]
    extraction.finish()
    wait_for(lambda: len(app.db) == N_IMAGES and not app.db.partial, "the finished database in the app", 10)
    app._show_status()
    assert "photos ready" not in app.gallery.status.get("timing", "")


def test_extract_builds_the_index_when_asked_as_soon_as_the_extraction_ends(images: Path, tmp_path: Path,
                                                                            tiny_model: str) -> None:
    """The quick start's background job: one command extracts, then builds the index readers switch to."""
    db = tmp_path / "db"
    args = ["extract", str(images), str(db), "--model", "tiny", "--weights", "random", "--precision", "fp32",
            "--shard-size", str(SHARD), "--index", "auto", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    database = Database.open(db)
    assert database.index is not None and database.manifest.index is not None
    assert database.manifest.index.factory == database.default_factory() and len(database) == N_IMAGES
    assert "Next: similar-images build-index" not in result.output


def test_following_a_build_reads_each_shard_once(extraction: Extraction) -> None:
    """A new view of the same build shares the previous view's buffer: no copy of the rows read already, and the
    rows an older view holds never change."""
    from similar_images.store.live import open_readable

    extraction.land(0)
    first = open_readable(extraction.db)
    before = np.array(first.vectors)
    extraction.land(1)
    second = open_readable(extraction.db, previous=first)
    assert len(second) == 2 * SHARD and np.shares_memory(first.vectors, second.vectors)
    np.testing.assert_array_equal(first.vectors, before)
    np.testing.assert_array_equal(second.vectors, open_readable(extraction.db).vectors)  # as read from scratch


@pytest.mark.slow
def test_a_running_service_sees_another_process_remove_and_add_within_10_s(tmp_path: Path, tiny_model: str) -> None:
    """Before: a removed id was served until the service restarted, and added images never showed."""
    import httpx
    from helpers import free_port, running_process

    db = _vector_db(tmp_path, tiny_model)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = plugin_env()
    with running_process([*CLI, "serve", str(db), "--port", str(port), "--no-access-log"], env=env,
                         log=tmp_path / "serve.log", timeout=300,
                         ready=lambda: httpx.get(url + "/health", timeout=5).status_code == 200):
        assert httpx.get(url + "/search", params={"id": 3}, timeout=30).status_code == 200
        subprocess.run([*CLI, "remove", str(db), "3"], env=env, check=True, capture_output=True, timeout=120)
        wait_for(lambda: httpx.get(url + "/search", params={"id": 3}, timeout=30).status_code == 404,
                 "the removal in the service", 10)
        for i in range(2):
            make_image(tmp_path / "new" / f"n{i}.png", seed=700 + i)
        subprocess.run([*CLI, "add", str(db), str(tmp_path / "new"), "-q"], env=env, check=True,
                       capture_output=True, timeout=300)
        wait_for(lambda: httpx.get(url + "/health", timeout=30).json()["items"] == 13, "the add in the service", 10)
        r = httpx.get(url + "/search", params={"id": 13, "k": 1}, timeout=30)
        assert r.status_code == 200 and r.json()["results"][0]["id"] == 13


def test_a_damaged_new_version_keeps_the_one_in_use_and_is_tried_again_when_the_folder_changes(
        tmp_path: Path, tiny_model: str) -> None:
    """A reader never loses the version it serves to a damaged change; it says so once, not on every request."""
    from similar_images.store.live import LiveDatabase

    db = _vector_db(tmp_path, tiny_model)
    live = LiveDatabase(db, interval=0.0)
    good = live.get()
    manifest = db / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"items": 12', '"items": 13', 1))  # the items file has 12 lines
    assert live.get() is good  # the new version is opened in the background; this request is not held
    live.wait_reloaded(30)
    assert live.get() is good and live._failed is not None
    opened = live.reloads
    for _ in range(5):
        assert live.get() is good
        live.wait_reloaded(30)
    assert live.reloads == opened and live._reloading is not None
    manifest.write_text(text)  # repaired: a new stamp
    wait_for(lambda: live.get() is not good and len(live.get()) == 12, "the repaired database", 10)


# --------------------------------------------------------------------------- an interim index while a build runs
SYN_DIM = 16
SYN_SHARD = 16
#: "IVF4,Flat" probing all 4 lists is exact: the merged search must give exact search's top k.
EXACT_IVF = {"factory": "IVF4,Flat", "nprobe": 4, "eval_queries": 0}


class SyntheticBuild:
    """An unfinished build of clustered synthetic vectors (no model): the real plan and shard files, each shard
    committed when the test says so."""

    def __init__(self, db: Path, n: int = 8 * SYN_SHARD) -> None:
        from similar_images._util import io as _io
        from similar_images.store.plan import PLAN, PLAN_ITEMS

        rng = np.random.default_rng(7)
        centres = rng.normal(size=(6, SYN_DIM))
        vectors = centres[rng.integers(0, 6, n)] + 0.4 * rng.normal(size=(n, SYN_DIM))
        self.vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        self.db, self.partial = db, db / PARTIAL_DIR
        self.partial.mkdir(parents=True)
        items = [f"/photos/{i:04d}.jpg" for i in range(n)]
        (self.partial / PLAN_ITEMS).write_text("".join(json.dumps(x) + "\n" for x in items))
        model = {"name": "synthetic", "dim": SYN_DIM, "weights": "random"}
        _io.write_json(self.partial / PLAN, {"settings": {"kind": "image", "model": model,
                                                         "shard_size": SYN_SHARD}, "n": n, "digest": "synthetic"})

    def land(self, *shards: int) -> None:
        from similar_images.engines.shards import write_shard

        for s in shards:
            lo, hi = s * SYN_SHARD, (s + 1) * SYN_SHARD
            write_shard(self.partial, s, list(range(lo, hi)), self.vectors[lo:hi], [], SYN_DIM)

    def open(self, previous: Any = None, **options: Any) -> Any:
        from similar_images.index import IndexConfig
        from similar_images.store.live import open_readable

        options.setdefault("interim_index_at", 2 * SYN_SHARD)
        options.setdefault("interim_config", IndexConfig(**EXACT_IVF))
        return open_readable(self.db, previous=previous, **options)


class GatedIndexEngine:
    """The real LocalEngine's build_index, held until the test releases it (so a test sees a training run)."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def describe(self) -> dict[str, Any]:
        return {"name": "gated"}

    def build_index(self, vectors: np.ndarray, config: Any, **kw: Any) -> Any:
        self.started.set()
        self.release.wait(60)
        return LocalEngine().build_index(vectors, config, **kw)


def _assert_same_as_exact(view: Any, queries: np.ndarray, k: int = 10) -> list[int]:
    """Each query's merged top k equals exact search's; returns every id found."""
    found = []
    for q in queries:
        merged, exact = view.search(q, k=k), view.search(q, k=k, exact=True)
        assert merged.params["exact"] is False and merged.params["indexed_rows"] == view.indexed_part.rows
        assert merged.ids == exact.ids
        np.testing.assert_allclose(merged.scores, exact.scores, rtol=1e-5, atol=1e-6)
        found += merged.ids
    return found


def test_a_partial_build_with_an_interim_index_is_searched_as_index_plus_exact_merged(tmp_path: Path) -> None:
    """Before: a view of an unfinished build had no index and searched every committed row exactly, whatever
    its size. Now an index trained over the first rows answers for them, the newer rows are searched exactly,
    and the merge gives the same top k as exact search over all committed rows (IVF probing every list)."""
    build = SyntheticBuild(tmp_path / "db")
    build.land(0, 1)
    first = build.open()
    assert first._interim.wait(60) and first.indexed_part is not None and first.indexed_part.rows == 32
    build.land(2)  # 16 new rows: fewer than interim_index_at, so the index is not extended
    view = build.open(previous=first)
    assert view._interim is first._interim and view._interim.wait(60)
    assert view.indexed_part.rows == 32 and len(view) == 48 and view.index is None
    rng = np.random.default_rng(1)
    queries = np.concatenate([build.vectors[:48:3], rng.normal(size=(8, SYN_DIM)).astype(np.float32)])
    found = set(_assert_same_as_exact(view, queries))
    assert any(i < 32 for i in found) and any(32 <= i < 48 for i in found)  # ids from both parts, global
    from similar_images.errors import QueryError

    with pytest.raises(QueryError, match="efSearch"):
        view.search(0, k=3, ef_search=8)  # an HNSW setting on an IVF index: refused, the defaults stay
    assert view.search(0, k=3).params["nprobe"] == 4


def test_health_reports_the_rows_an_interim_index_answers_for(tmp_path: Path) -> None:
    """/health says how many of the searchable rows an index answers for (the rest are searched exactly)."""
    from similar_images.index import IndexConfig
    from similar_images.service.config import ServeConfig
    from similar_images.service.logic import ServiceState
    from similar_images.store.live import LiveDatabase

    build = SyntheticBuild(tmp_path / "db")
    build.land(0, 1, 2)
    state = ServiceState(config=ServeConfig(db=build.db))
    state.live = LiveDatabase(build.db, interval=0.0, interim_index_at=2 * SYN_SHARD,
                              interim_config=IndexConfig(**EXACT_IVF))
    state.live.get()._interim.wait(60)
    health = state.health()
    assert health["items"] == 48 and health["indexed_rows"] == 48 and health["index"] is None


def test_a_new_shard_is_found_before_the_interim_index_is_extended(tmp_path: Path) -> None:
    """The rows of a shard committed after the training are searched exactly until the index takes them."""
    build = SyntheticBuild(tmp_path / "db")
    build.land(0, 1)
    first = build.open()
    first._interim.wait(60)
    build.land(2)
    view = build.open(previous=first)
    view._interim.wait(60)
    assert view.indexed_part.rows == 32 and view._interim.extensions == 0
    for i in range(32, 48):
        hits = view.search(i, k=3)
        assert hits.ids[0] == i and hits.params["exact"] is False and hits.params["indexed_rows"] == 32


def test_the_interim_index_grows_by_adding_and_is_retrained_when_the_rows_grew_4x(tmp_path: Path) -> None:
    """New rows are added to a copy of the trained index (the same centroids; a view searching the old one never
    sees it change); after 4x the rows it was trained on, a new one is trained."""
    import faiss

    build = SyntheticBuild(tmp_path / "db")
    build.land(0, 1)
    first = build.open()
    first._interim.wait(60)
    trained = first.indexed_part
    build.land(2, 3)  # 32 new rows: interim_index_at of them
    grown = build.open(previous=first)
    interim = grown._interim
    assert interim.wait(60) and interim.trainings == 1 and interim.extensions == 1
    part = grown.indexed_part
    assert part.rows == 64 and part.trained_rows == 32 and part.index.ntotal == 64
    centroids = [faiss.extract_index_ivf(p.index).quantizer.reconstruct_n(0, 4) for p in (trained, part)]
    np.testing.assert_array_equal(centroids[0], centroids[1])  # added to, not retrained
    assert trained.index.ntotal == 32 and first.indexed_part is None  # the older view: exact, never a wrong id
    _assert_same_as_exact(grown, build.vectors[::5])
    build.land(4, 5, 6, 7)  # 128 rows: 4x the 32 it was trained on
    latest = build.open(previous=grown)
    assert interim.wait(60) and interim.trainings == 2 and latest.indexed_part.trained_rows == 128
    assert latest.indexed_part.rows == 128 and latest.search(100, k=1).ids == [100]


def test_a_reader_never_waits_for_the_interim_index_and_answers_exactly_while_it_trains(tmp_path: Path) -> None:
    """Training runs in a background thread: opening a view and searching it do not wait for it; a request
    during the training is answered exactly, and the same view uses the index once it is trained."""
    build = SyntheticBuild(tmp_path / "db")
    build.land(0, 1)
    engine = GatedIndexEngine()
    view = build.open(interim_engine=engine)
    assert engine.started.wait(30)
    during = view.search(5, k=5)
    assert view._interim.busy and not engine.release.is_set()  # answered while the training was held
    assert during.params == {"exact": True} and during.ids == view.search(5, k=5, exact=True).ids
    engine.release.set()
    assert view._interim.wait(60)
    after = view.search(5, k=5)
    assert after.params["exact"] is False and after.ids == during.ids


def test_the_interim_index_follows_a_real_build_and_gives_way_to_the_finished_database(
        extraction: Extraction) -> None:
    """What the service and the app hold (a LiveDatabase) trains the interim index, searches it merged with the
    newest shards, and switches to the finished database when the build ends."""
    from similar_images.index import IndexConfig
    from similar_images.store.live import LiveDatabase

    live = LiveDatabase(extraction.db, interval=0.0, interim_index_at=2 * SHARD,
                        interim_config=IndexConfig(factory="IVF2,Flat", nprobe=2, eval_queries=0))
    extraction.land(0)
    extraction.land(1)
    wait_for(lambda: (d := live.current()) is not None and len(d) == 2 * SHARD, "two shards")
    live.get()._interim.wait(60)
    extraction.land(2)
    wait_for(lambda: len(live.get()) == 3 * SHARD, "the third shard")
    view = live.get()
    assert view.indexed_part is not None and view.indexed_part.rows == 2 * SHARD
    hits = view.search(10, k=3 * SHARD)
    assert hits.ids[0] == 10 and hits.ids == view.search(10, k=3 * SHARD, exact=True).ids
    interim = view._interim
    extraction.finish()
    wait_for(lambda: not live.get().partial, "the finished database")
    assert live.get().indexed_part is None and interim._closed
