"""Similarity explanations: exact decompositions, gradient maps, overlays, cache and errors.

Fast tests use small Keras models with random weights on synthetic images; the
slow ones use the real ImageNet weights on real COCO photos (``../shared/assets``).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from similar_images import Database, ExtractConfig
from similar_images.embed import ImageEmbedder, ModelSpec, get_model_spec, l2_normalize, register_model
from similar_images.embed.feature_maps import (
    FeatureMapModel,
    FeatureMapSpec,
    available_feature_maps,
    feature_map_spec,
    register_feature_map,
)
from similar_images.errors import ExplainError, FeatureMapError, QueryError, SimilarImagesError
from similar_images.methods.explain import (
    EXACT_AVG,
    EXACT_MAX,
    GRADIENT,
    ExplainCache,
    Explainer,
    exact_avg_maps,
    exact_max_maps,
    explain,
    explain_pair,
    explanation_png,
    gradcam_map,
    render_explanation,
)
from similar_images.store import extract_features, write_database


# --------------------------------------------------------------------------- small test models
def _build_tiny_gap(weights: str | None) -> Any:
    """Two convolutions and global average pooling: a 16-d model with an exact decomposition (7x7 grid)."""
    import keras

    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
        ],
        name="tiny_gap",
    )


def _preprocess(batch: np.ndarray) -> np.ndarray:
    return batch.astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def tiny_models(tiny_model: str) -> dict[str, str]:
    """``tiny-gap`` (exact average pooling) and ``tiny`` (a dense layer after the pooling: gradient only)."""
    try:
        get_model_spec("tiny-gap")
    except ValueError:
        register_model(ModelSpec("tiny-gap", 16, "gap", (32, 32), _build_tiny_gap, _preprocess, "tiny, pooled"))
    register_feature_map(FeatureMapSpec("tiny-gap", 1, "avg"), replace=True)
    register_feature_map(FeatureMapSpec("tiny", 1, None), replace=True)
    return {"exact": "tiny-gap", "gradient": tiny_model}


@pytest.fixture()
def tiny_db(tmp_path: Path, synthetic_images: Path, tiny_models: dict[str, str]) -> Database:
    db = tmp_path / "db"
    extract_features(synthetic_images, db, ExtractConfig(model=tiny_models["exact"], weights="random",
                                                         verbose=False))
    return Database.open(db)


def _in_box_share(grid_map: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> float:
    """Share of a map's positive mass inside a pixel box, each grid cell weighted by its overlap with the box."""
    gh, gw = grid_map.shape
    width, height = size
    xs, ys = np.linspace(0, width, gw + 1), np.linspace(0, height, gh + 1)
    ox = np.clip(np.minimum(xs[1:], box[2]) - np.maximum(xs[:-1], box[0]), 0, None) / (xs[1] - xs[0])
    oy = np.clip(np.minimum(ys[1:], box[3]) - np.maximum(ys[:-1], box[1]), 0, None) / (ys[1] - ys[0])
    pos = np.maximum(grid_map.astype(np.float64), 0)
    return float((pos * np.outer(oy, ox)).sum() / pos.sum())


# --------------------------------------------------------------------------- the decompositions (numpy)
def test_average_pooling_decomposition_is_exact() -> None:
    rng = np.random.default_rng(0)
    fq = np.maximum(rng.standard_normal((7, 7, 64)), 0)
    fr = np.maximum(rng.standard_normal((5, 6, 64)), 0)  # grids may differ
    qmap, rmap, score = exact_avg_maps(fq, fr)
    q, r = fq.mean(axis=(0, 1)), fr.mean(axis=(0, 1))
    cosine = q @ r / np.linalg.norm(q) / np.linalg.norm(r)
    assert score == pytest.approx(cosine, abs=1e-12)
    assert rmap.shape == (5, 6) and qmap.shape == (7, 7)
    assert rmap.sum() == pytest.approx(cosine, abs=1e-12)
    assert qmap.sum() == pytest.approx(cosine, abs=1e-12)
    # The formula cell by cell: (1/HW) q_hat . F(h, w) / ||mean F||.
    q_hat = q / np.linalg.norm(q)
    assert rmap[2, 3] == pytest.approx(q_hat @ fr[2, 3] / 30 / np.linalg.norm(r), rel=1e-12)


def test_max_pooling_decomposition_places_each_channel_at_its_argmax() -> None:
    rng = np.random.default_rng(1)
    fq = rng.random((7, 7, 32))
    fr = rng.random((7, 7, 32))
    qmap, rmap, score = exact_max_maps(fq, fr)
    q, r = fq.max(axis=(0, 1)), fr.max(axis=(0, 1))
    cosine = q @ r / np.linalg.norm(q) / np.linalg.norm(r)
    assert score == pytest.approx(cosine, abs=1e-12)
    assert rmap.sum() == pytest.approx(cosine, abs=1e-12) and qmap.sum() == pytest.approx(cosine, abs=1e-12)
    # One channel alone, with its maximum at (2, 5) in the result and (6, 0) in the query: all mass there.
    fq1, fr1 = np.zeros((7, 7, 1)), np.zeros((7, 7, 1))
    fq1[6, 0, 0], fr1[2, 5, 0] = 3.0, 2.0
    fr1[4, 4, 0] = 1.0
    qmap, rmap, score = exact_max_maps(fq1, fr1)
    assert score == pytest.approx(1.0) and rmap[2, 5] == pytest.approx(1.0) and qmap[6, 0] == pytest.approx(1.0)
    assert np.count_nonzero(rmap) == 1 and np.count_nonzero(qmap) == 1


def test_gradcam_weights_channels_by_mean_gradient() -> None:
    fmap = np.zeros((2, 2, 2))
    fmap[0, 0] = [1.0, 0.0]
    fmap[1, 1] = [0.0, 2.0]
    grad = np.zeros((2, 2, 2))
    grad[..., 0], grad[..., 1] = 4.0, -1.0
    cam = gradcam_map(fmap, grad)
    assert cam.tolist() == [[4.0, 0.0], [0.0, -2.0]]


def test_a_zero_vector_has_nothing_to_explain() -> None:
    with pytest.raises(ExplainError, match="zero"):
        exact_avg_maps(np.zeros((7, 7, 4)), np.ones((7, 7, 4)))


# --------------------------------------------------------------------------- feature maps of models
def test_feature_maps_are_registered_for_the_builtin_models() -> None:
    assert {"vgg16-avg", "vgg16-max", "mobilenetv2", "vgg16-fc2"} <= set(available_feature_maps())
    assert feature_map_spec("vgg16-avg").pooling == "avg" and feature_map_spec("vgg16-max").pooling == "max"
    assert feature_map_spec("mobilenetv2").layer == "out_relu" and not feature_map_spec("vgg16-fc2").exact


def test_a_model_without_a_feature_map_is_a_clear_error() -> None:
    with pytest.raises(FeatureMapError, match="register_feature_map") as info:
        feature_map_spec("no-such-model")
    assert "vgg16-avg" in str(info.value)
    assert isinstance(info.value, SimilarImagesError)


def test_a_wrong_layer_is_a_clear_error(tiny_models: dict[str, str]) -> None:
    emb = ImageEmbedder(tiny_models["gradient"], "random")
    with pytest.raises(FeatureMapError, match="no layer 'nope'"):
        FeatureMapModel(emb.model, FeatureMapSpec("tiny", "nope"), _preprocess)
    with pytest.raises(FeatureMapError, match="not a spatial"):
        FeatureMapModel(emb.model, FeatureMapSpec("tiny", -1), _preprocess)  # the dense layer


def test_a_wrong_pooling_registration_fails_instead_of_drawing_a_wrong_map(tiny_models: dict[str, str]) -> None:
    emb = ImageEmbedder(tiny_models["gradient"], "random")  # a dense layer follows the pooling
    fm = FeatureMapModel(emb.model, FeatureMapSpec("tiny", 1, "avg"), _preprocess)
    batch = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(FeatureMapError, match="pooling=None"):
        fm.maps(batch)


def test_feature_map_model_reproduces_the_embedder(tiny_models: dict[str, str]) -> None:
    emb = ImageEmbedder(tiny_models["exact"], "random")
    fm = FeatureMapModel.from_embedder(emb)
    batch = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    maps, vectors = fm.maps(batch)
    assert maps.shape == (3, 7, 7, 16) and vectors.shape == (3, 16) and fm.grid == (7, 7)
    assert fm.forward_passes == 1
    np.testing.assert_allclose(l2_normalize(maps.mean(axis=(1, 2))), emb.embed_arrays(batch), atol=1e-6)


# --------------------------------------------------------------------------- explanations with small models
def test_exact_pair_sums_to_the_cosine_and_is_cached(tmp_path: Path, tiny_models: dict[str, str]) -> None:
    a, b = make_image(tmp_path / "a.png", 1), make_image(tmp_path / "b.png", 2)
    emb = ImageEmbedder(tiny_models["exact"], "random")
    ex = Explainer(emb, cache=ExplainCache())
    e = ex.explain_pair(str(a), str(b))
    v = emb.embed([a, b])
    assert e.method == EXACT_AVG and not e.approximate and e.grid == (7, 7)
    assert e.score == pytest.approx(float(v[0] @ v[1]), abs=1e-5)
    assert float(e.result_map.sum()) == pytest.approx(e.score, abs=1e-5)
    assert float(e.query_map.sum()) == pytest.approx(e.score, abs=1e-5)
    assert e.forward_passes == 1 and e.backward_passes == 0
    again = ex.explain_pair(str(a), str(b))
    assert again.forward_passes == 0 and again.cached
    np.testing.assert_array_equal(again.result_map, e.result_map)
    # A new result for a cached query runs the model on the new image alone.
    c = make_image(tmp_path / "c.png", 3)
    third = ex.explain_pair(str(a), str(c))
    assert third.forward_passes == 1 and ex.feature_model.forward_passes == 2
    assert ex.cache.stats()["maps"]["items"] == 3


def test_a_changed_file_is_not_served_from_the_cache(tmp_path: Path, tiny_models: dict[str, str]) -> None:
    a, b = make_image(tmp_path / "a.png", 1), make_image(tmp_path / "b.png", 2)
    ex = Explainer(ImageEmbedder(tiny_models["exact"], "random"), cache=ExplainCache())
    first = ex.explain_pair(str(a), str(b))
    make_image(b, 7)
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))
    second = ex.explain_pair(str(a), str(b))
    assert second.forward_passes == 1
    assert not np.allclose(first.result_map, second.result_map)


def test_the_same_image_twice_is_similar_everywhere_it_is_itself(tmp_path: Path,
                                                                   tiny_models: dict[str, str]) -> None:
    a = make_image(tmp_path / "a.png", 1)
    ex = Explainer(ImageEmbedder(tiny_models["exact"], "random"), cache=ExplainCache())
    e = ex.explain_pair(str(a), a.read_bytes())  # a path and bytes of the same picture
    assert e.score == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(e.query_map, e.result_map, atol=1e-6)


def test_gradient_path_is_labelled_approximate(tmp_path: Path, tiny_models: dict[str, str]) -> None:
    a, b = make_image(tmp_path / "a.png", 1), make_image(tmp_path / "b.png", 2)
    emb = ImageEmbedder(tiny_models["gradient"], "random")
    e = explain_pair(emb, str(a), Image.open(b), cache=ExplainCache())
    assert e.method == GRADIENT and e.approximate and "approximate" in e.units
    assert e.forward_passes == 1 and e.backward_passes == 1
    v = emb.embed([a, b])
    assert e.score == pytest.approx(float(v[0] @ v[1]), abs=1e-5)
    for m in (e.query_map, e.result_map):
        assert np.isfinite(m).all() and np.ptp(m) > 0
    d = json.loads(e.to_json())
    assert d["approximate"] is True and d["method"] == "gradient (approximate)"
    with pytest.raises(ExplainError, match="no exact spatial decomposition"):
        explain_pair(emb, str(a), str(b), method="exact")


def test_exact_models_can_also_give_the_gradient_map(tmp_path: Path, tiny_models: dict[str, str]) -> None:
    a, b = make_image(tmp_path / "a.png", 1), make_image(tmp_path / "b.png", 2)
    e = explain_pair(ImageEmbedder(tiny_models["exact"], "random"), str(a), str(b), method="gradient",
                     cache=ExplainCache())
    assert e.method == GRADIENT and e.approximate
    with pytest.raises(ExplainError, match="method must be"):
        explain_pair(ImageEmbedder(tiny_models["exact"], "random"), str(a), str(b), method="best")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- explain(db, ...)
def test_explain_a_database_result(tiny_db: Database, tmp_path: Path) -> None:
    results = tiny_db.search(0, k=4, exact=True)
    match = results[2]
    e = explain(tiny_db, 0, match.id)
    assert (e.query_id, e.result_id, e.result_path) == (0, match.id, match.path)
    assert e.stored_score == pytest.approx(match.score, abs=1e-6)
    assert float(e.result_map.sum()) == pytest.approx(match.score, abs=1e-4)
    assert float(e.query_map.sum()) == pytest.approx(match.score, abs=1e-4)
    assert e.forward_passes <= 1
    assert explain(tiny_db, 0, match.id).forward_passes == 0

    # A path, bytes or a PIL image as the query, like in search.
    path = tiny_db.items[5]
    for query in (path, Path(path).read_bytes(), Image.open(path)):
        e2 = explain(tiny_db, query, match.id)
        assert e2.query_id is None and e2.stored_score is None
        assert e2.score == pytest.approx(float(tiny_db.vectors[5] @ tiny_db.vectors[match.id]), abs=1e-5)

    # The picture: both photos side by side, at the requested height, with header and colour bar.
    png = explanation_png(e, height=120)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGB" and 120 < img.height < 260 and img.width >= 240
    data = json.loads(e.to_json())
    assert data["grid"] == [7, 7] and len(data["result"]["map"]) == 7 and len(data["result"]["map"][0]) == 7
    assert data["result"]["sum"] == pytest.approx(match.score, abs=1e-4) and data["method"] == "exact-avg"


@pytest.mark.parametrize(("backend", "precision"), [("keras", "fp32"), ("keras", "bf16"), ("openvino", "int8")])
def test_explain_reports_the_score_search_shows(backend: str, precision: str, synthetic_images: Path,
                                                tmp_path: Path, tiny_models: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: a bf16 database gave 0.7179 in explain against 0.7185 in search (the maps run in fp32)."""
    monkeypatch.setenv("SIMILAR_IMAGES_CPU", "bf16,vnni")  # Keras bf16 runs (emulated where the CPU lacks it)
    monkeypatch.setenv("SIMILAR_IMAGES_CACHE", str(tmp_path / "model-cache"))
    extract_features(synthetic_images, tmp_path / "db", ExtractConfig(
        model=tiny_models["exact"], weights="random", backend=backend, precision=precision, verbose=False))
    db = Database.open(tmp_path / "db")
    assert (db.embedder.backend, db.embedder.precision) == (backend, precision)
    moved = 0.0
    for match in db.search(0, k=4, exact=True)[1:]:
        e = explain(db, 0, match.id)
        assert e.score == pytest.approx(match.score, abs=1e-6)
        assert float(e.result_map.sum(dtype=np.float64)) == pytest.approx(match.score, abs=1e-5)
        assert float(e.query_map.sum(dtype=np.float64)) == pytest.approx(match.score, abs=1e-5)
        moved = max(moved, abs(e.score - e.model_score))
        g = explain(db, 0, match.id, method="gradient")  # approximate maps: the score shown, the map as it is
        assert g.approximate and g.score == pytest.approx(match.score, abs=1e-6)
    # a query from outside the database: embedded as a search embeds it
    query = str(tmp_path / "query.png")
    make_image(Path(query), seed=77)
    for match in db.search(query, k=3, exact=True):
        e = explain(db, query, match.id)
        assert e.query_id is None and e.score == pytest.approx(match.score, abs=1e-5)
        assert float(e.result_map.sum(dtype=np.float64)) == pytest.approx(match.score, abs=1e-5)
        moved = max(moved, abs(e.score - e.model_score))
    if precision != "fp32":
        assert moved > 1e-5  # the stored vectors do differ from the fp32 maps' model: the score followed them
    assert json.loads(e.to_json())["model_score"] == pytest.approx(e.model_score, abs=1e-7)


def test_explain_bad_inputs_are_clear_errors(tiny_db: Database, tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="Unknown id 999"):
        explain(tiny_db, 0, 999)
    with pytest.raises(QueryError, match="Unknown id"):
        explain(tiny_db, 999, 1)
    with pytest.raises(QueryError, match="integer"):
        explain(tiny_db, 0, "3")  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="No such image file"):
        explain(tiny_db, str(tmp_path / "missing.jpg"), 1)
    with pytest.raises(ExplainError, match="vector"):
        explain(tiny_db, tiny_db.vector(0), 1)
    tiny_db.remove([3])
    with pytest.raises(QueryError, match="removed"):
        explain(tiny_db, 0, 3)


def test_explain_a_text_database_is_a_clear_error(tmp_path: Path) -> None:
    write_database(tmp_path / "t", kind="text", model={"name": "minilm", "dim": 4}, items=["a", "b"],
                   vector_chunks=[l2_normalize(np.ones((2, 4)))])
    db = Database.open(tmp_path / "t", load_index=False)
    with pytest.raises(ExplainError, match="text database"):
        explain(db, 0, 1)


def test_explain_a_model_without_a_feature_map_is_a_clear_error(tmp_path: Path) -> None:
    write_database(tmp_path / "i", kind="image", model={"name": "custom-net", "dim": 4, "weights": "random"},
                   items=[str(make_image(tmp_path / f"{i}.png", i)) for i in range(2)],
                   vector_chunks=[l2_normalize(np.ones((2, 4)))])
    db = Database.open(tmp_path / "i", load_index=False)
    with pytest.raises(FeatureMapError, match="'custom-net' cannot be reached"):
        explain(db, 0, 1)


def test_render_checks_its_arguments(tmp_path: Path, tiny_models: dict[str, str]) -> None:
    a, b = make_image(tmp_path / "a.png", 1), make_image(tmp_path / "b.png", 2)
    e = explain_pair(ImageEmbedder(tiny_models["exact"], "random"), str(a), str(b), cache=ExplainCache())
    assert render_explanation(e, height=64).height > 64
    with pytest.raises(ValueError, match="alpha"):
        render_explanation(e, alpha=2.0)


# --------------------------------------------------------------------------- real weights, real photos
_WEIGHTS = {"vgg16": "vgg16_imagenet_notop.weights.h5",
            "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"}


@pytest.fixture(scope="module")
def embedders(assets: Path) -> Any:
    """Real-weight (and random-weight) embedders, built once per module."""
    made: dict[tuple[str, str], ImageEmbedder] = {}

    def get(model: str, weights: str = "real") -> ImageEmbedder:
        if (model, weights) not in made:
            path = assets / "weights" / _WEIGHTS["mobilenetv2" if model == "mobilenetv2" else "vgg16"]
            made[model, weights] = ImageEmbedder(model, str(path) if weights == "real" else "random")
        return made[model, weights]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vgg16-avg", "vgg16-max", "mobilenetv2"])
def test_pooled_vector_is_the_pooling_of_the_feature_map(model: str, embedders: Any, coco_dir: Path) -> None:
    emb = embedders(model)
    photos = sorted((coco_dir / "val2014").glob("*.jpg"))[:3]
    batch = np.stack([emb.prepare(p) for p in photos])
    maps, vectors = FeatureMapModel.from_embedder(emb).maps(batch)
    assert maps.shape[1:3] == (7, 7)
    if model == "vgg16-max":
        np.testing.assert_array_equal(maps.max(axis=(1, 2)), vectors)  # bit for bit
    else:
        np.testing.assert_allclose(maps.mean(axis=(1, 2)), vectors, rtol=1e-5, atol=1e-6 * np.abs(vectors).max())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vgg16-avg", "mobilenetv2"])
def test_average_pooling_maps_sum_to_the_search_score(model: str, assets: Path, coco_dir: Path,
                                                        tmp_path: Path) -> None:
    photos = sorted((coco_dir / "val2014").glob("*.jpg"))[:10]
    weights = assets / "weights" / _WEIGHTS["mobilenetv2" if model == "mobilenetv2" else "vgg16"]
    extract_features(photos, tmp_path / "db", ExtractConfig(model=model, weights=str(weights), verbose=False))
    db = Database.open(tmp_path / "db")
    worst = 0.0
    for query in (0, 7):
        for match in db.search(query, k=4, exact=True)[1:]:
            e = explain(db, query, match.id)
            assert e.method == EXACT_AVG and not e.approximate
            for m in (e.result_map, e.query_map):
                worst = max(worst, abs(float(m.sum(dtype=np.float64)) - match.score))
            assert e.forward_passes <= 1
    print(f"\n{model}: largest |map sum - search score| = {worst:.2e}")
    assert worst < 1e-4


def _planted_pair(coco_dir: Path, area: float) -> tuple[list[bytes], list[tuple[int, int, int, int]],
                                                         list[tuple[int, int]]]:
    """A red London bus cut from one COCO photo and pasted, covering ``area`` of the picture, top-left on a
    snowy mountain and bottom-right on a beach (two unrelated COCO backgrounds)."""
    val = coco_dir / "val2014"
    bus = Image.open(val / "COCO_val2014_000000001584.jpg").convert("RGB").crop((130, 90, 520, 530))
    out, boxes, sizes = [], [], []
    for name, corner in (("COCO_val2014_000000003255.jpg", "top-left"),
                         ("COCO_val2014_000000007511.jpg", "bottom-right")):
        bg = Image.open(val / name).convert("RGB")
        scale = (area * bg.width * bg.height / (bus.width * bus.height)) ** 0.5
        w, h = round(bus.width * scale), round(bus.height * scale)
        x, y = int(0.04 * bg.width), int(0.04 * bg.height)
        if corner == "bottom-right":
            x, y = bg.width - w - x, bg.height - h - y
        bg.paste(bus.resize((w, h), Image.Resampling.BILINEAR), (x, y))
        buf = io.BytesIO()
        bg.save(buf, format="PNG")
        out.append(buf.getvalue())
        boxes.append((x, y, x + w, y + h))
        sizes.append(bg.size)
    return out, boxes, sizes


# Measured on this pair (query / result share of the positive mass inside the box):
#   box share of the image   0.25        0.30        0.36        0.40        0.45
#   vgg16-avg                0.50/0.50   0.59/0.56   0.64/0.63   0.68/0.68   0.72/0.69
#   vgg16-max                0.60/0.60   0.66/0.67   0.69/0.67   0.72/0.72   0.73/0.76
#   mobilenetv2              0.48/0.45   0.53/0.49   0.62/0.56   0.63/0.59   0.70/0.63
# (a flat map would put "box share" of the mass inside the box).
@pytest.mark.slow
@pytest.mark.parametrize(("model", "area"), [("vgg16-avg", 0.36), ("vgg16-max", 0.36), ("mobilenetv2", 0.45)])
def test_planted_object_holds_most_of_the_map(model: str, area: float, embedders: Any, coco_dir: Path,
                                              record_property: Any) -> None:
    (qa, rb), (box_q, box_r), (size_q, size_r) = _planted_pair(coco_dir, area)
    e = explain_pair(embedders(model), qa, rb, cache=ExplainCache())
    q_share, r_share = _in_box_share(e.query_map, box_q, size_q), _in_box_share(e.result_map, box_r, size_r)
    print(f"\n{model} ({e.method}): positive mass inside the pasted box (box {area:.0%} of each image): "
          f"query {q_share:.3f}, result {r_share:.3f}")
    record_property("in_box_share", [round(q_share, 4), round(r_share, 4)])
    assert q_share >= 0.6 and r_share >= 0.6
    assert min(q_share, r_share) >= 1.3 * area  # well above the share a flat map would give


@pytest.mark.slow
@pytest.mark.parametrize(("model", "weights", "method", "expected"), [
    ("vgg16-max", "real", "auto", EXACT_MAX),
    ("vgg16-max", "random", "auto", EXACT_MAX),
    ("vgg16-fc2", "random", "auto", GRADIENT),
    ("vgg16-avg", "real", "gradient", GRADIENT),
    ("mobilenetv2", "real", "gradient", GRADIENT),
    ("mobilenetv2", "random", "gradient", GRADIENT),
])
def test_max_pooling_and_gradient_maps_are_finite_and_not_constant(model: str, weights: str, method: str,
                                                                   expected: str, embedders: Any,
                                                                   coco_dir: Path) -> None:
    photos = sorted((coco_dir / "val2014").glob("*.jpg"))
    e = explain_pair(embedders(model, weights), str(photos[17]), str(photos[48]), method=method,  # type: ignore[arg-type]
                     cache=ExplainCache())
    assert e.method == expected and e.approximate == (expected == GRADIENT)
    for m in (e.query_map, e.result_map):
        assert np.isfinite(m).all() and np.ptp(m) > 0
    if expected == EXACT_MAX:
        assert float(e.result_map.sum()) == pytest.approx(e.score, abs=1e-5)
        assert float(e.query_map.sum()) == pytest.approx(e.score, abs=1e-5)
    assert e.grid == ((14, 14) if model == "vgg16-fc2" else (7, 7))


@pytest.mark.slow
def test_gradient_of_an_average_pooled_model_matches_the_closed_form(embedders: Any, coco_dir: Path) -> None:
    """For average pooling, d cos / d F(h, w) = (q_hat - s r_hat) / (HW ||mean F||) at every position:
    the TensorFlow gradient behind the Grad-CAM path must give exactly the map this predicts."""
    emb = embedders("mobilenetv2")
    photos = sorted((coco_dir / "val2014").glob("*.jpg"))
    batch = np.stack([emb.prepare(photos[17]), emb.prepare(photos[48])])
    maps, grads, score = FeatureMapModel.from_embedder(emb).similarity_gradients(batch)
    fr = maps[1].astype(np.float64)
    q = maps[0].mean(axis=(0, 1)).astype(np.float64)
    r = fr.mean(axis=(0, 1))
    q_hat, r_hat = q / np.linalg.norm(q), r / np.linalg.norm(r)
    expected = (q_hat - (q_hat @ r_hat) * r_hat) / (49 * np.linalg.norm(r))
    np.testing.assert_allclose(grads[1], np.broadcast_to(expected, grads[1].shape), rtol=2e-3,
                               atol=2e-3 * np.abs(expected).max())
    assert score == pytest.approx(float(q_hat @ r_hat), abs=1e-5)


# --------------------------------------------------------------------------- the CLI and the service
@pytest.mark.slow
def test_cli_writes_the_png_and_refuses_bad_ids(small_db: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from similar_images.cli import main

    out = tmp_path / "why.png"
    result = CliRunner().invoke(main, ["explain", str(small_db), "3", "5", "-o", str(out), "--height", "200"])
    assert result.exit_code == 0, result.output
    assert "score" in result.output and "exact-avg" in result.output
    db = Database.open(small_db)
    expected = render_explanation(explain(db, 3, 5), height=200).size
    assert Image.open(out).format == "PNG" and Image.open(out).size == expected
    as_json = CliRunner().invoke(main, ["explain", str(small_db), "3", "5", "--json"])
    data = json.loads(as_json.output)
    assert abs(np.sum(data["result"]["map"]) - data["score"]) < 1e-4 and data["result"]["id"] == 5
    bad = CliRunner().invoke(main, ["explain", str(small_db), "3", "9999", "-o", str(tmp_path / "x.png")])
    assert bad.exit_code == 1 and "Unknown id 9999" in bad.output and "Traceback" not in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_service_answers_a_png_or_the_maps_and_404_for_bad_ids(small_db: Path) -> None:
    from fastapi.testclient import TestClient

    from similar_images.service import ServeConfig, create_app

    with TestClient(create_app(ServeConfig(db=small_db, warmup=False))) as client:
        r = client.get("/explain", params={"query_id": 3, "id": 5, "height": 200})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        db = Database.open(small_db)
        assert Image.open(io.BytesIO(r.content)).size == render_explanation(explain(db, 3, 5), height=200).size
        j = client.get("/explain", params={"query_id": 3, "id": 5, "format": "json"}).json()
        assert j["method"] == "exact-avg" and abs(np.sum(j["query"]["map"]) - j["score"]) < 1e-4
        for params in ({"query_id": 3, "id": 9999}, {"query_id": 9999, "id": 5}):
            bad = client.get("/explain", params=params)
            assert bad.status_code == 404 and bad.json()["error"] == "unknown_id"
        assert client.get("/explain", params={"id": 5}).status_code == 422
