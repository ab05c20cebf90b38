"""Shared fixtures.

The offline assets (real photos, real ImageNet weights, tweets) live outside
the repository, in ``../shared/assets`` from the project root, or wherever
``SIMILAR_IMAGES_ASSETS`` points. Under CI (``CI=true``) a missing assets
folder is an error, never a skip.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"  # test-only models, e.g. ``tiny_model`` (16-d)
sys.path.insert(0, str(PLUGINS))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _assets_dir() -> Path:
    return Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets")).resolve()


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CI") and not (_assets_dir() / "README.md").exists():
        pytest.exit(f"CI needs the offline assets at {_assets_dir()} (set SIMILAR_IMAGES_ASSETS)", returncode=3)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """Register the tiny 16-d test model and return its name."""
    import tiny_model  # noqa: F401

    return "tiny"


@pytest.fixture(scope="session")
def assets() -> Path:
    path = _assets_dir()
    if not (path / "README.md").exists():
        pytest.skip(f"offline assets not found at {path} (set SIMILAR_IMAGES_ASSETS)")
    return path


@pytest.fixture(scope="session")
def coco_dir(assets: Path) -> Path:
    return assets / "images" / "coco"


@pytest.fixture(scope="session")
def vgg_weights(assets: Path) -> Path:
    return assets / "weights" / "vgg16_imagenet_notop.weights.h5"


@pytest.fixture(scope="session")
def mobilenet_weights(assets: Path) -> Path:
    return assets / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


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


@pytest.fixture()
def synthetic_images(tmp_path: Path) -> Path:
    """A folder of 12 small distinct images in several formats and sub-folders."""
    root = tmp_path / "images"
    exts = [".jpg", ".png", ".JPEG", ".bmp", ".webp", ".gif"]
    for i in range(12):
        make_image(root / ("sub" if i % 3 == 0 else "") / f"img{i:02d}{exts[i % len(exts)]}", seed=i)
    return root


@pytest.fixture(scope="session")
def coco_subset(coco_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file list of 48 real COCO photos (a deterministic sample)."""
    photos = sorted(coco_dir.rglob("*.jpg"))
    random.Random(0).shuffle(photos)
    listing = tmp_path_factory.mktemp("lists") / "coco48.txt"
    listing.write_text("\n".join(str(p) for p in sorted(photos[:48])) + "\n")
    return listing


@pytest.fixture(scope="session")
def small_db(coco_subset: Path, mobilenet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real database: 48 COCO photos, MobileNetV2 with real ImageNet weights, exact (Flat) index.

    Session-scoped and read-only: tests that modify a database must copy it first.
    """
    from similar_images import Database, ExtractConfig, IndexConfig, extract_features

    db = tmp_path_factory.mktemp("dbs") / "coco48"
    extract_features(coco_subset, db, ExtractConfig(model="mobilenetv2", weights=str(mobilenet_weights),
                                                    verbose=False))
    Database.open(db, load_index=False).build_index(IndexConfig(factory="Flat", eval_queries=48))
    return db
