"""The walkthrough's figures and sliders (similar_images.apps.walkthrough) and the collection map widget
(similar_images.apps.map_view) on a small database of synthetic photos and vectors: fast tier (no model runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_image

from similar_images import Database
from similar_images.apps import walkthrough as wt
from similar_images.apps.map_view import MapView
from similar_images.measure import walkthrough as w
from similar_images.measure.synthetic import clustered_vectors
from similar_images.measure.tune import TuneConfig, tune_vectors
from similar_images.measure.tune_report import human_bytes
from similar_images.store import write_database

N, D = 300, 32


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Database:
    root = tmp_path_factory.mktemp("walk")
    paths = [str(make_image(root / "images" / f"p{i:03d}.png", seed=i)) for i in range(N)]
    vectors = clustered_vectors(N, D, n_clusters=5, seed=2)
    write_database(root / "db", kind="image", model={"name": "synthetic", "dim": D}, items=paths,
                   vector_chunks=[vectors])
    return Database.open(root / "db", load_index=False)


def _texts(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
    return "\n".join(parts)


def test_nearest_and_farthest_are_the_extremes_of_the_cosine(db: Database) -> None:
    near, far = w.nearest_and_farthest(db, 7)
    sims = np.asarray(db.vectors) @ db.vector(7)
    sims[7] = np.nan
    assert near == int(np.nanargmax(sims)) and far == int(np.nanargmin(sims)) and 7 not in (near, far)
    assert near == db.search(7, k=1, exact=True, exclude_query=True)[0].id


def test_tradeoff_factories_name_the_database_index_once() -> None:
    names = w.tradeoff_factories(800, 1280, "Flat")
    assert names[0] == "Flat" and names.count("Flat") == 1
    assert "IVF28,Flat" in names and "IVF28,PQ16" in names and "HNSW32" in names
    assert w.tradeoff_factories(800, 1280, "IVF10,PQ8")[-1] == "IVF10,PQ8"
    assert "IVF28,PQ12" in w.tradeoff_factories(800, 24)  # 16 does not divide 24: the largest divisor below it


def test_vector_anatomy_of_a_model_without_pooling_keeps_the_stored_vector() -> None:
    fmap = np.ones((14, 14, 8), dtype=np.float32)
    fmap[:, :, 3] = 5
    stored = np.arange(40, dtype=np.float32)
    a = w.vector_anatomy(fmap, None, vector=stored)
    assert a.dim == 40 and a.channels[0] == 3 and np.array_equal(a.vector, stored)
    fig = wt.vector_figure(__file__, a)  # an unreadable "photo" is drawn as a placeholder
    assert "40 numbers" in _texts(fig) and "made from the 8 maps" in _texts(fig)
    with pytest.raises(w.ConfigError, match="stored vector"):
        w.vector_anatomy(fmap, None)


def test_figures_show_the_measured_numbers(db: Database) -> None:
    x = np.asarray(db.vectors)
    fmap = np.random.default_rng(0).random((7, 7, D)).astype(np.float32)
    fig = wt.vector_figure(db.item(0), w.vector_anatomy(fmap, "avg"), model="synthetic")
    assert f"A photo becomes {D} numbers (synthetic)" in _texts(fig) and len(fig.axes) == 7
    near, far = w.nearest_and_farthest(db, 0)
    text = _texts(wt.pair_figure(db, 0, near, far))
    assert f"cos(A, B) = {float(db.vector(0) @ db.vector(near)):.3f}" in text
    assert f"cos(A, C) = {float(db.vector(0) @ db.vector(far)):.3f}" in text
    results = db.search(0, k=9, exact=True, exclude_query=True)
    text = _texts(wt.results_figure(db, results))
    assert f"#1  {results[0].score:.3f}" in text and "query" in text and f"of {N:,} photos" in text
    cost = w.brute_force_cost(x, steps=3, n_queries=5)
    text = _texts(wt.brute_force_figure(cost))
    assert "1,000,000,000 photos" in text and human_bytes(cost.memory_bytes(10**9)) in text
    assert f"{cost.predict_ms(10**6):.3g} ms per query" in text
    points = w.project_2d(x, method="pca")
    fig = wt.map_figure(db, points, highlight=[0, *results.ids])
    assert len(fig.axes[0].collections) == 2  # all photos, and the circled ones
    assert len(fig.axes[0].collections[1].get_offsets()) == 10
    pq = w.pq_anatomy(x, 8, row=0)
    assert f"{pq.bytes_per_vector:g} bytes instead of {D * 4:,}" in _texts(wt.pq_anatomy_figure(pq))
    clusters = w.ivf_clusters(x, 6)
    text = _texts(wt.ivf_figure(db, clusters, count=4))
    biggest = clusters.largest(1)[0]
    assert f"cluster {biggest}: {clusters.sizes[biggest]} photos" in text and "6 clusters" in text


def test_sliders_redraw_the_figure_with_the_chosen_value_marked(db: Database) -> None:
    x = np.asarray(db.vectors)
    points = w.pq_sweep(x, [4, 8, 16], n_queries=50)
    box = wt.pq_slider(points)
    assert list(box.slider.options) == [4, 8, 16] and box.slider.value == 8
    before = box.image.value
    box.slider.value = 16
    assert bytes(box.image.value) != bytes(before) and bytes(box.image.value).startswith(b"\x89PNG")
    assert f"{points[2].recall:.3f}" in _texts(wt.pq_sweep_figure(points, 16))
    nps = w.nprobe_sweep(x, 8, n_queries=50, latency_queries=5)
    box = wt.nprobe_slider(nps)
    assert list(box.slider.options) == [p.nprobe for p in nps]
    box.slider.value = nps[0].nprobe
    assert f"{nps[0].recall:.3g}" in _texts(wt.nprobe_figure(nps, nps[0].nprobe))


def test_tradeoff_figure_marks_the_database_index(db: Database) -> None:
    report = tune_vectors(np.asarray(db.vectors), TuneConfig(factories=["Flat", "IVF8,Flat"], n_queries=50,
                                                             latency_queries=5, rerank=0))
    text = _texts(wt.tradeoff_figure(report, "IVF8,Flat", {"nprobe": 2}))
    assert "this database's index: IVF8,Flat nprobe=2" in text
    assert "this database's index: Flat" in _texts(wt.tradeoff_figure(report, None))


def test_map_view_searches_with_the_photo_chosen(db: Database) -> None:
    chosen: list[int] = []
    view = MapView(db, w.project_2d(np.asarray(db.vectors), method="pca"), k=5, on_select=chosen.append, thumb=24)
    assert len(view.points) == N and {"id", "x", "y", "src"} <= set(view.points[0])
    assert view.points[0]["src"].startswith("data:image/jpeg;base64,")
    view.selected = 12  # what a click on the map sets
    assert [r["id"] for r in view.results] == db.search(12, k=5, exclude_query=True).ids and chosen == [12]
    assert "Photo 12 (p012.png)" in view.note
    view.select(12)  # the same photo again searches again
    assert chosen == [12, 12]
    view.select(N + 50)
    assert view.results == [] and str(N + 50) in view.note and "Traceback" not in view.note
    with pytest.raises(ValueError, match=r"points must be \(300, 2\)"):
        MapView(db, np.zeros((3, 2)))


def test_committed_walkthrough_notebook_is_clean_short_and_has_slides() -> None:
    import nbformat

    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "how_it_works.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []) and "SIMILAR_IMAGES_DB" in code[0].source
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "clear the outputs"
    assert all(len(c.source.splitlines()) <= 12 for c in code)  # cells stay short: the work is in the package
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert len(headings) >= 6
    assert all(c.metadata["slideshow"]["slide_type"] == "slide" for c in nb.cells
               if c.cell_type == "markdown" and c.source.startswith("#"))
    assert code[0].metadata["slideshow"]["slide_type"] == "skip"


def test_map_view_drives_the_image_app(db: Database) -> None:
    """The Map view in the app: a click on the map searches in the image app (its grid shows the results)."""
    from similar_images.apps import AppConfig, SimilarImagesApp

    app = SimilarImagesApp(db, AppConfig(k=5))
    try:
        view = MapView(db, w.project_2d(np.asarray(db.vectors), method="pca"), k=5, on_select=app.search_id,
                       thumb=24)
        view.selected = 21
        assert app.results.query_id == 21 and app.results.ids == [r["id"] for r in view.results]
        assert [r["id"] for r in app.gallery.results] == app.results.ids
    finally:
        app.close()


def test_open_database_outside_a_notebook_raises_one_clear_error(tmp_path: Path, db: Database) -> None:
    from similar_images.errors import DatabaseNotFoundError

    with pytest.raises(wt.NoDatabaseError, match=f"No image database at {tmp_path / 'none'}; build one") as info:
        wt.open_database(tmp_path / "none")
    assert isinstance(info.value.__cause__, DatabaseNotFoundError) and not (tmp_path / "none").exists()
    opened = wt.open_database(db.path)
    assert len(opened) == N
    summary = wt.database_summary(opened).data
    assert f"{N} photos" in summary and f"{D}-d vectors" in summary and "exact search" in summary
    assert bytes(wt.show(wt.nprobe_figure(w.nprobe_sweep(np.asarray(db.vectors), 4, n_queries=20,
                                                          latency_queries=2))).data).startswith(b"\x89PNG")
