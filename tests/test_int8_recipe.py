"""int8 that keeps quality (issue 21): the accuracy-aware recipe, its cache key, and databases of the old recipe.

Tests use the 16-d ``tiny`` test model (random weights, random images: plain post-training quantization agrees
at 0.76-0.89 there). The recipe on VGG16 with real weights is measured by ``benchmarks/bench_int8.py`` (about
4 minutes a model on 2 cores: too long for the test suite).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from similar_images.embed import ImageEmbedder, embedder_from_info, get_model_spec
from similar_images.embed.backends import (
    RECIPE_VERSION,
    Calibration,
    ModelCache,
    OpenVINORunner,
    QuantizationSettings,
    RunnerFactory,
    topk_agreement,
)
from similar_images.embed.backends.openvino import quantize_int8

OLD = QuantizationSettings()  # the default, recipe 1: plain post-training quantization
NEW = QuantizationSettings(accuracy_control=True)  # recipe 2: accuracy-aware, opt-in


pytestmark = pytest.mark.usefixtures("temporary_model_cache")


@pytest.fixture(scope="module")
def arrays() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(32, 32, 32, 3), dtype=np.uint8)


def test_the_accuracy_aware_recipe_is_keyed_apart_from_the_plain_one(tiny_model: str,
                                                                               arrays: np.ndarray,
                                                                               tmp_path: Path) -> None:
    new, old = Calibration(arrays, quantization=NEW), Calibration(arrays)
    key = new.quantization_key()
    assert key["recipe"] == RECIPE_VERSION == 2 and key["accuracy_control"] is True
    assert key["target_agreement"] == pytest.approx(0.993)  # auto's threshold 0.99 plus a margin
    assert "recipe" not in old.quantization_key()  # recipe 1's key is the one its cache entries already have
    # auto's threshold does not move the target: another --agreement re-decides from the cached figures
    assert Calibration(arrays, threshold=0.95, quantization=NEW).quantization_key() == key

    first = RunnerFactory(tiny_model, "random", cache_dir=tmp_path)
    first.runner("openvino", "int8", old)
    assert first.cache_hits["int8"] is False
    second = RunnerFactory(tiny_model, "random", cache_dir=tmp_path)
    second.runner("openvino", "int8", new)
    assert second.cache_hits["int8"] is False  # the old recipe's model is not reused
    third = RunnerFactory(tiny_model, "random", cache_dir=tmp_path)
    third.runner("openvino", "int8", Calibration(arrays, quantization=NEW))
    assert third.cache_hits["int8"] is True
    entries = [e for e in ModelCache(tmp_path).models_dir.iterdir() if "int8" in e.name]
    assert len(entries) == 2


def test_accuracy_control_reaches_the_target_where_plain_quantization_does_not(tiny_model: str,
                                                                               arrays: np.ndarray) -> None:
    spec = get_model_spec(tiny_model)
    x = spec.preprocess(arrays)
    fp32 = RunnerFactory(tiny_model, "random", use_cache=False).ov_fp32()
    ref = OpenVINORunner(fp32, "fp32")(x)
    plain = topk_agreement(ref, OpenVINORunner(quantize_int8(fp32, x, OLD), "int8")(x))
    aware = topk_agreement(ref, OpenVINORunner(quantize_int8(fp32, x, NEW), "int8")(x))
    assert plain < 0.99 <= aware


def test_the_manifest_records_the_recipe_and_old_databases_keep_theirs(tiny_model: str, arrays: np.ndarray,
                                                                      tmp_path: Path) -> None:
    photos = []
    for i, a in enumerate(arrays[:16]):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(a).save(path)
        photos.append(str(path))
    emb = ImageEmbedder(tiny_model, "random", backend="openvino", precision="int8", calibration=photos,
                        quantization=NEW)
    info = emb.info()
    assert info["int8_recipe"] == RECIPE_VERSION
    again = embedder_from_info(info)
    assert isinstance(again, ImageEmbedder) and again.quantization.accuracy_control
    np.testing.assert_allclose(again.embed(photos[:4]), emb.embed(photos[:4]), rtol=1e-5, atol=1e-6)
    # a database built before the accuracy-aware recipe (no int8_recipe): its queries quantize the old way
    old = {k: v for k, v in info.items() if k != "int8_recipe"}
    legacy = embedder_from_info(old)
    assert isinstance(legacy, ImageEmbedder) and not legacy.quantization.accuracy_control
    assert legacy.info()["int8_recipe"] == 1
