"""Shared fixtures.

The offline assets (real photos, real ImageNet weights, tweets) live outside
the repository, in ``../shared/assets`` from the project root, or wherever
``SIMILAR_IMAGES_ASSETS`` points. Under CI (``CI=true``) a missing assets
folder is an error, never a skip.

Without the assets folder (a user's own machine), the tests use what
``data_scripts/quickstart.sh`` left there instead: a sample of the MS-COCO
photos it downloaded (``data/coco``, or ``SIMILAR_IMAGES_COCO``) and the
ImageNet weights Keras cached (``~/.keras/models``, or ``$KERAS_HOME/models``).
A test that needs what is missing is skipped, and ``pytest -ra`` lists it
with the reason; everything else runs.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from helpers import PLUGINS, ROOT, Route, assets_dir, http_server, redirect
from PIL import Image

if TYPE_CHECKING:
    from similar_images import Database

sys.path.insert(0, str(PLUGINS))  # test-only models, e.g. ``tiny_model`` (16-d)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


#: File names of the weights in the assets folder, and of the same weights in Keras' download cache.
MOBILENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
VGG_ASSET_FILE = "vgg16_imagenet_notop.weights.h5"
VGG_KERAS_NOTOP = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG_KERAS_FULL = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"  # what the quickstart's default vgg16-fc2 caches
#: Real photos sampled from a COCO download when the assets folder is absent (as many as the assets hold).
COCO_SAMPLE = 256


def _have_assets() -> bool:
    return (assets_dir() / "README.md").exists()


def _downloaded_coco() -> Path:
    """Where the quickstart downloads the COCO photos (``SIMILAR_IMAGES_COCO`` overrides it)."""
    return Path(os.environ.get("SIMILAR_IMAGES_COCO", ROOT / "data" / "coco")).expanduser()


def _keras_models() -> Path:
    """Keras' download cache (``$KERAS_HOME/models``, by default ``~/.keras/models``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def _no_assets(what: str) -> str:
    return (f"needs {what}: neither the offline assets ({assets_dir()}, or SIMILAR_IMAGES_ASSETS) nor what "
            "data_scripts/quickstart.sh leaves are here")


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CI") and not _have_assets():
        pytest.exit(f"CI needs the offline assets at {assets_dir()} (set SIMILAR_IMAGES_ASSETS)", returncode=3)


def pytest_report_header(config: pytest.Config) -> str:
    if _have_assets():
        return f"offline assets: {assets_dir()}"
    return (f"offline assets: not found at {assets_dir()}; real photos from {_downloaded_coco()} and weights from "
            f"{_keras_models()} where present (tests needing what is missing are skipped: see -ra)")


#: The two CPU paths every precision test runs under (``$SIMILAR_IMAGES_CPU``): without and with native bf16/VNNI.
CPU_PATHS = ("avx2", "bf16,vnni")


@pytest.fixture(params=CPU_PATHS)
def cpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The CPU capabilities as ``$SIMILAR_IMAGES_CPU`` sets them: each test using it runs once without native
    bf16 and VNNI (``avx2``) and once with them (``bf16,vnni``), whatever this machine has. A claimed bf16 the
    machine lacks runs emulated (Keras) or in fp32 (OpenVINO): the decisions are what is tested."""
    from similar_images.embed.backends import CPU_ENV, cpu_capabilities

    monkeypatch.setenv(CPU_ENV, request.param)
    return cpu_capabilities()


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """Register the tiny 16-d test model and return its name."""
    import tiny_model  # noqa: F401

    return "tiny"


@pytest.fixture(scope="session")
def assets() -> Path:
    """The offline assets folder (only for what nothing else provides, e.g. the 20,000 tweets)."""
    path = assets_dir()
    if not (path / "README.md").exists():
        pytest.skip(f"needs the offline assets (tweets) at {path} (set SIMILAR_IMAGES_ASSETS)")
    return path


@pytest.fixture(scope="session")
def coco_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real COCO photos: the assets' 256, or a fixed sample of 256 from the quickstart's download (links)."""
    if _have_assets():
        return assets_dir() / "images" / "coco"
    downloaded = _downloaded_coco()
    photos = sorted(downloaded.rglob("*.jpg")) if downloaded.is_dir() else []
    if len(photos) < 64:
        pytest.skip(_no_assets(f"real photos (at least 64 COCO photos in {downloaded}, or SIMILAR_IMAGES_COCO)"))
    sample = tmp_path_factory.mktemp("coco")
    for photo in sorted(random.Random(0).sample(photos, min(COCO_SAMPLE, len(photos)))):
        (sample / photo.name).symlink_to(photo.resolve())
    return sample


@pytest.fixture(scope="session")
def vgg_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VGG16's ImageNet convolution weights: the assets' file, Keras' cached no-top file, or the no-top part of
    Keras' cached full file (written once per session)."""
    if _have_assets():
        return assets_dir() / "weights" / VGG_ASSET_FILE
    cache = _keras_models()
    if (cache / VGG_KERAS_NOTOP).is_file():
        return cache / VGG_KERAS_NOTOP
    if (cache / VGG_KERAS_FULL).is_file():
        import keras

        full = keras.applications.VGG16(include_top=True, weights=str(cache / VGG_KERAS_FULL))
        base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
        for layer in base.layers:
            if layer.weights:
                layer.set_weights(full.get_layer(layer.name).get_weights())
        path = tmp_path_factory.mktemp("weights") / "vgg16_notop.weights.h5"
        base.save_weights(path)
        return path
    pytest.skip(_no_assets(f"VGG16 ImageNet weights ({VGG_KERAS_NOTOP} or {VGG_KERAS_FULL} in {cache})"))


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """MobileNetV2 (alpha 0.35) ImageNet weights: the assets' file or Keras' cached one (the same file)."""
    for path in (assets_dir() / "weights" / MOBILENET_FILE, _keras_models() / MOBILENET_FILE):
        if path.is_file():
            return path
    pytest.skip(_no_assets(f"MobileNetV2 ImageNet weights ({MOBILENET_FILE} in {_keras_models()})"))


def execute_notebook(nb: Any, env: dict[str, str], cwd: Path, *, timeout: int = 300) -> Any:
    """Execute ``nb`` (an nbformat notebook, changed in place and returned) in a real Jupyter kernel.

    ``env`` is set in this process's environment while it runs (the kernel inherits it, which is how the
    notebooks get their parameters), then restored.
    """
    from nbclient import NotebookClient

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def make_image(path: Path, seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Path:
    """Write a small synthetic image with random blocks (distinct per seed)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


#: The 16-d test model of ``tests/plugins/tiny_model.py``, as a manifest names it.
TINY = {"name": "tiny", "dim": 16, "layer": "dense", "weights": "random", "seed": 0}


def tiny_database(root: Path, index: Any) -> dict[str, Path]:
    """A 40-image tiny-model database at ``root/base`` with the index ``index`` (an ``IndexConfig``) and a failure,
    its images in ``root/images`` and three new images in ``root/new``."""
    from similar_images import Database
    from similar_images.embed import l2_normalize
    from similar_images.store import write_database

    images = [make_image(root / "images" / f"{i}.png", seed=i) for i in range(40)]
    for i in range(3):
        make_image(root / "new" / f"{i}.png", seed=100 + i)
    vectors = l2_normalize(np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32))
    write_database(root / "base", kind="image", model=TINY, items=[str(p) for p in images], vector_chunks=[vectors],
                   failures=[("/elsewhere/bad.jpg", "corrupt")])
    Database.open(root / "base").build_index(index)
    return {"root": root, "base": root / "base", "new": root / "new", "images": root / "images"}


@pytest.fixture
def temporary_model_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Converted models and measured figures go to a temporary cache, never the user's."""
    folder = tmp_path_factory.mktemp("model-cache")
    monkeypatch.setenv("SIMILAR_IMAGES_CACHE", str(folder))
    return folder


@pytest.fixture()
def synthetic_images(tmp_path: Path) -> Path:
    """A folder of 12 small distinct images in several formats and sub-folders."""
    root = tmp_path / "images"
    exts = [".jpg", ".png", ".JPEG", ".bmp", ".webp", ".gif"]
    for i in range(12):
        make_image(root / ("sub" if i % 3 == 0 else "") / f"img{i:02d}{exts[i % len(exts)]}", seed=i)
    return root


def photo_sample(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` of the ``.jpg`` photos below ``folder`` (all of them if fewer), chosen by ``seed``, sorted: the same
    photos on every run."""
    photos = sorted(folder.rglob("*.jpg"))
    random.Random(seed).shuffle(photos)
    return sorted(photos[:n])


@pytest.fixture(scope="session")
def coco_subset(coco_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file list of 48 real COCO photos (a deterministic sample)."""
    listing = tmp_path_factory.mktemp("lists") / "coco48.txt"
    listing.write_text("\n".join(str(p) for p in photo_sample(coco_dir, 48, seed=0)) + "\n")
    return listing


@pytest.fixture(scope="session")
def small_db(coco_subset: Path, mobilenet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real database: 48 COCO photos, MobileNetV2 with real ImageNet weights, exact (Flat) index.

    Session-scoped and read-only: tests that modify a database must copy it first.
    """
    from similar_images import Database, ExtractConfig, IndexConfig
    from similar_images.store import extract_features

    db = tmp_path_factory.mktemp("dbs") / "coco48"
    extract_features(coco_subset, db, ExtractConfig(model="mobilenetv2", weights=str(mobilenet_weights),
                                                    verbose=False))
    Database.open(db, load_index=False).build_index(IndexConfig(factory="Flat", eval_queries=48))
    return db


@pytest.fixture(scope="module")
def db(small_db: Path) -> Database:
    """:func:`small_db`, opened once per module (its query model is loaded at most once)."""
    from similar_images import Database

    return Database.open(small_db)


#: The item of :func:`db` that :func:`image_host` serves as ``/photo.jpg``.
HOSTED_ITEM = 3
#: How long ``/slow.jpg`` waits before it answers: longer than the fetch timeouts the tests set.
SLOW_ANSWER_S = 5.0


@pytest.fixture(scope="module")
def image_host(db: Database) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1, for queries by URL; yields its base URL. It serves item :data:`HOSTED_ITEM`
    of :func:`db` as ``/photo.jpg`` (``/to-photo`` redirects there), an HTML page (``/page.html``), bytes that
    claim to be a JPEG (``/broken.jpg``), the photo after :data:`SLOW_ANSWER_S` (``/slow.jpg``) and a redirect to
    a ``file://`` URL (``/to-file``); any other path is a 404."""
    photo = Path(db.items[HOSTED_ITEM]).read_bytes()
    with http_server({
        "/photo.jpg": Route(photo, "image/jpeg"),
        "/to-photo": redirect("/photo.jpg"),
        "/page.html": Route(b"<html>not an image</html>", "text/html"),
        "/broken.jpg": Route(b"\xff\xd8\xff garbage, not a jpeg", "image/jpeg"),
        "/slow.jpg": Route(photo, "image/jpeg", delay=SLOW_ANSWER_S),
        "/to-file": redirect("file:///etc/passwd"),
    }) as url:
        yield url


#: Photos of the walkthrough's database (issue 24: it needs 500 or more): the 256 COCO photos, then flowers.
WALKTHROUGH_PHOTOS = 800


def walkthrough_photos(coco: Path, flowers: Path, n: int = WALKTHROUGH_PHOTOS) -> list[Path]:
    """``n`` real photos: every COCO photo, then a fixed sample of the flower photos (all five classes)."""
    photos = sorted(coco.rglob("*.jpg"))
    return photos + photo_sample(flowers, max(0, n - len(photos)), seed=0)


@pytest.fixture(scope="session")
def walkthrough_db(coco_dir: Path, mobilenet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 800-photo database (256 COCO + 544 flower photos), MobileNetV2 with real ImageNet weights, built as
    the quick start does (``build-index``'s default: exact below its PQ threshold). Read-only."""
    flowers = assets_dir() / "images" / "flowers5"
    if not flowers.is_dir():
        pytest.skip(_no_assets(f"the flower photos ({flowers})"))
    from similar_images import Database, ExtractConfig
    from similar_images.store import extract_features

    root = tmp_path_factory.mktemp("walkthrough")
    listing = root / "photos.txt"
    listing.write_text("\n".join(map(str, walkthrough_photos(coco_dir, flowers))) + "\n")
    db = root / "db800"
    extract_features(listing, db, ExtractConfig(model="mobilenetv2", weights=str(mobilenet_weights), verbose=False))
    Database.open(db, load_index=False).build_index()
    return db


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Spark standalone cluster on 127.0.0.1: a master and 2 one-core workers (``tests/spark_cluster.py``),
    shared by the session's tests and stopped at its end, with no process left behind."""
    from spark_cluster import leftover_processes, standalone_cluster

    from similar_images.engines.spark_context import check_spark

    try:
        check_spark()
    except Exception as exc:  # noqa: BLE001  (SparkUnavailableError: no pyspark or no Java here)
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("spark-cluster")
    with standalone_cluster(folder, workers=2) as cluster:
        yield cluster
    left = leftover_processes(folder)
    assert not left, f"Spark processes left after the cluster stopped: {left}"
