"""The public API, name by name: every name in ``similar_images.__all__`` is called for real, on a database built
through the front door (``Database.create``) from real photos with the tiny test model, and the list is short and
documented in the README's Python section."""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from helpers import trigram_encoder

import similar_images
from similar_images import (
    Database,
    DuplicateConfig,
    EvalConfig,
    Explanation,
    ExtractConfig,
    IndexConfig,
    Match,
    Results,
    SimilarImagesError,
    TextBuildConfig,
    __version__,
    evaluate_database,
    explain,
    explanation_png,
    find_duplicates,
    open_app,
)
from similar_images.errors import ConfigError, DatabaseExistsError, QueryError, UnknownIdError

#: Real photos in the database: a few COCO photos, and one of them again under another name (a duplicate pair).
N_PHOTOS = 10


@pytest.fixture(scope="module")
def photos(coco_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of ``N_PHOTOS`` real COCO photos plus a copy of the first (links to the assets, one real copy)."""
    folder = tmp_path_factory.mktemp("photos")
    chosen = sorted(coco_dir.rglob("*.jpg"))[:N_PHOTOS]
    for photo in chosen:
        (folder / photo.name).symlink_to(photo.resolve())
    shutil.copyfile(chosen[0], folder / f"copy-of-{chosen[0].name}")
    return folder


@pytest.fixture(scope="module")
def db(photos: Path, tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Database:
    """The five lines of the README, with the tiny model: create, build_index (search comes in the tests)."""
    config = ExtractConfig(model=tiny_model, weights="random", precision="fp32", verbose=False)
    database = Database.create(photos, tmp_path_factory.mktemp("dbs") / "photos-db", config)
    database.build_index(IndexConfig(factory="Flat", eval_queries=N_PHOTOS + 1))
    return database


def test_the_api_is_short_and_each_name_is_documented_in_the_python_section() -> None:
    names = similar_images.__all__
    assert len(names) <= 16 and len(set(names) - {"SimilarImagesError"}) <= 15, names
    assert len(set(names)) == len(names)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Python API\n"):]
    section = section[:section.index("\n## ", 1)]
    undocumented = [n for n in names if not re.search(rf"`{re.escape(n)}`", section)]
    assert not undocumented, f"not in the README's Python section: {undocumented}"
    assert "Database.create(" in section and "db.build_index(" in section and "db.search(" in section


def test_version_and_the_base_error() -> None:
    assert isinstance(__version__, str) and re.match(r"^\d+\.\d+", __version__), __version__
    assert issubclass(ConfigError, SimilarImagesError) and issubclass(UnknownIdError, SimilarImagesError)


def test_create_returns_the_opened_database_of_real_photos(db: Database, photos: Path) -> None:
    assert isinstance(db, Database)
    assert db.kind == "image" and db.model_name == "tiny" and db.dim == 16
    assert len(db) == N_PHOTOS + 1 and db.has_index and not db.failures
    assert sorted(Path(p).name for p in db.items) == sorted(p.name for p in photos.iterdir())
    # the manifest says how it was built, as the CLI's build does
    assert db.manifest.extra["extraction"]["model"] == "tiny"


def test_search_returns_results_of_matches_with_explicit_keywords(db: Database, photos: Path) -> None:
    first = next(p for p in sorted(photos.iterdir()) if not p.name.startswith("copy-of-"))
    results = db.search(str(first), k=3)
    assert isinstance(results, Results) and isinstance(results, list) and len(results) == 3
    top = results[0]
    assert isinstance(top, Match)
    assert top.rank == 1 and Path(top.path).name in (first.name, f"copy-of-{first.name}")
    assert top.score == pytest.approx(1.0, abs=1e-4) and top.item == top.path
    assert results.ids == [m.id for m in results] and results.scores == sorted(results.scores, reverse=True)
    assert results.search_ms >= 0 and results.total_ms >= results.search_ms
    assert results.to_dict()["results"][0]["path"] == top.path

    others = db.search(top.id, k=3, exclude_query=True, exact=True, rerank=1)
    assert top.id not in others.ids and len(others) == 3 and others.params["exact"] is True
    batch = db.search_batch([0, 1], k=2, exact=True)
    assert [r.query_id for r in batch] == [0, 1] and all(isinstance(r, Results) for r in batch)

    # explicit keywords, visible to editors and checked by Python: no **kwargs left
    for method in (Database.search, Database.search_batch):
        params = inspect.signature(method).parameters
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), method
        assert {"exact", "nprobe", "ef_search", "k_factor", "rerank", "fetch_config"} <= set(params)
    assert "exclude_query" in inspect.signature(Database.search).parameters
    with pytest.raises(TypeError):
        db.search(0, k=3, nprob=4)  # type: ignore[call-arg]  # a misspelt keyword is refused
    with pytest.raises(SimilarImagesError):
        db.search(10_000, k=3)

    made = Match(rank=1, id=0, score=0.5, item="a.jpg")
    wrapped = Results([made], search_ms=1.0, total_ms=2.0, query_id=None, params={})
    assert made.path == "a.jpg" and wrapped.ids == [0] and wrapped.to_dict()["results"][0]["score"] == 0.5


def test_create_refuses_a_wrong_config_and_an_existing_database_unless_forced(db: Database, photos: Path,
                                                                           tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ExtractConfig .images. or a TextBuildConfig .texts."):
        Database.create(photos, tmp_path / "x", IndexConfig())  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="calibration applies to images"):
        Database.create(["a text"], tmp_path / "y", TextBuildConfig(verbose=False), calibration=[photos])
    with pytest.raises(ConfigError, match="embedder embeds images"):
        Database.create(["a text"], tmp_path / "z", TextBuildConfig(verbose=False), embedder=db.embedder)
    with pytest.raises(DatabaseExistsError):
        Database.create(photos, db.path, ExtractConfig(model="tiny", weights="random", precision="fp32",
                                                       verbose=False))
    # force replaces it, reusing a loaded embedder (which then embeds the queries too)
    copy = tmp_path / "copy"
    shutil.copytree(db.path, copy)
    again = Database.create(photos, copy, ExtractConfig(model="tiny", weights="random", precision="fp32",
                                                        verbose=False), force=True, embedder=db.embedder)
    assert len(again) == len(db) and not again.has_index and again.embedder is db.embedder
    np.testing.assert_allclose(np.asarray(again.vectors), np.asarray(db.vectors), atol=1e-6)


def test_create_builds_a_text_database_from_a_text_build_config(tmp_path: Path) -> None:
    from similar_images.embed import TextEncoderSpec, register_text_encoder

    register_text_encoder(TextEncoderSpec(name="test-trigrams", dim=64, loader=trigram_encoder(64),
                                          description="hashed character trigrams (tests)"), replace=True)
    texts = ["the cat sat on the mat", "a dog in the rain", "rainy days are lovely", "the cat sat on a hat", ""]
    tdb = Database.create(texts, tmp_path / "texts", TextBuildConfig(encoder="test-trigrams", verbose=False))
    assert isinstance(tdb, Database) and tdb.kind == "text" and len(tdb) == 4
    assert tdb.failures and tdb.failures[0][1]  # the empty text, with its reason
    tdb.build_index(IndexConfig(factory="Flat", eval_queries=4))
    results = tdb.search("the cat sat on the mat", k=2)
    assert results[0].text == "the cat sat on the mat" and results[1].text == "the cat sat on a hat"

    from similar_images.apps.text_app import TextSearchApp

    app = open_app(tdb.path, k=3)  # the apps' one entry point opens the text app for texts
    assert isinstance(app, TextSearchApp) and app.db.kind == "text"
    with pytest.raises(ConfigError, match="holds texts"):
        open_app(tdb.path, weights="w.h5")


def test_find_duplicates_finds_the_copied_photo(db: Database) -> None:
    report = find_duplicates(db, DuplicateConfig(threshold=0.999))
    pairs = {frozenset((Path(db.items[a]).name, Path(db.items[b]).name)) for a, b in zip(report.id_a, report.id_b)}
    copies = [Path(p).name for p in db.items if Path(p).name.startswith("copy-of-")]
    assert len(copies) == 1
    assert frozenset((copies[0], copies[0].removeprefix("copy-of-"))) in pairs
    with pytest.raises(ConfigError):
        DuplicateConfig(threshold=2.0)


def test_evaluate_database_measures_the_index(db: Database) -> None:
    report = evaluate_database(db, EvalConfig(ks=(1, 5), n_queries=8, latency_queries=4), labels=None)
    assert report.n_items == len(db) and report.n_queries == 8
    assert report.recall[5] == pytest.approx(1.0)  # a Flat index finds the exact neighbours
    with pytest.raises(ConfigError):
        EvalConfig(rerank=-1)


def test_explain_gives_an_explanation_and_its_png(db: Database) -> None:
    from similar_images.embed.feature_maps import FeatureMapSpec, register_feature_map

    register_feature_map(FeatureMapSpec("tiny", 1, None), replace=True)  # the tiny model's last convolution
    e = explain(db, 0, 1)
    assert isinstance(e, Explanation)
    assert e.query_map.shape == e.result_map.shape and e.query_map.ndim == 2
    assert e.score == pytest.approx(float(db.vector(0) @ db.vector(1)), abs=1e-4)
    png = explanation_png(e, height=64)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 200
    with pytest.raises(QueryError):
        explain(db, 0, 10_000)


def test_open_app_builds_the_image_app_without_displaying_it(db: Database, tmp_path: Path) -> None:
    from similar_images.apps import DatabaseMessage, SimilarImagesApp

    app = open_app(db.path, k=4, preload_model=False)
    assert isinstance(app, SimilarImagesApp)
    try:
        results = app.search_random()
        assert len(results) == 4 and all(isinstance(m, Match) for m in results)
    finally:
        app.close()
    message = open_app(tmp_path / "no-db", preload_model=False)
    assert isinstance(message, DatabaseMessage) and "similar-images extract" in message.text


def test_index_config_is_validated() -> None:
    assert IndexConfig(factory="HNSW32", ef_search=64).ef_search == 64
    with pytest.raises(ConfigError, match="nprobe must be a positive integer"):
        IndexConfig(nprobe=0)
