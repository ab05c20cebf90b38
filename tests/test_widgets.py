"""The notebook app (similar_images.widgets) driven through its widget callbacks.

Real parts only: the small real database (48 COCO photos, MobileNetV2 with
real ImageNet weights), real ipywidgets, real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from helpers import Route, closed_port, http_server
from PIL import Image

from similar_images import Database, QueryError, write_database
from similar_images.apps import AppConfig, DatabaseMessage, SimilarImagesApp, find_database, open_app
from similar_images.errors import ImageLoadError
from similar_images.sources.thumbnails import ThumbnailCache, ThumbnailConfig, make_thumbnail, placeholder_thumbnail

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def db(small_db: Path) -> Database:
    """One opened database for the module (the query model is loaded at most once)."""
    return Database.open(small_db)


@pytest.fixture()
def app(db: Database) -> Iterator[SimilarImagesApp]:
    a = SimilarImagesApp(db, AppConfig(k=8, seed=1))
    yield a
    a.close()


@pytest.fixture()
def image_host(db: Database) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving a database photo, an HTML page and garbage."""
    photo = Path(db.items[3]).read_bytes()
    with http_server({
        "/photo.jpg": Route(photo, "image/jpeg"),
        "/page.html": Route(b"<html>not an image</html>", "text/html"),
        "/broken.jpg": Route(b"\xff\xd8\xff garbage, not a jpeg", "image/jpeg"),
    }) as url:
        yield url


def _upload_value(data: bytes, name: str, ctype: str = "image/jpeg") -> tuple[dict, ...]:
    """What ipywidgets 8 puts in FileUpload.value after the browser sends a file."""
    return ({"name": name, "type": ctype, "size": len(data), "content": memoryview(data),
             "last_modified": dt.datetime.now(dt.timezone.utc)},)


def _check_grid(app: SimilarImagesApp, k: int) -> None:
    """The grid shows k tiles, best first, each with its thumbnail, rank, score and file name."""
    results = app.results
    assert results is not None and len(results) == k
    assert len(app.grid.children) == k
    assert [c.widget for c in app.result_cards] == list(app.grid.children)
    scores = results.scores
    assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:])), scores
    for rank, (card, match) in enumerate(zip(app.result_cards, results), start=1):
        assert card.match == match and match.rank == rank
        caption = html.unescape(card.caption.value)
        assert f"#{rank}" in caption and f"{match.score:.3f}" in caption and Path(match.path).name in caption
        thumb = Image.open(io.BytesIO(card.image.value))
        assert thumb.format == "JPEG" and max(thumb.size) <= app.config.thumb_size
        assert len(card.image.value) < Path(match.path).stat().st_size  # never the full-size photo
    assert app.query_image.value[:2] == b"\xff\xd8"


# ----------------------------------------------------------------------------- clicks


def test_random_button_shows_k_results_with_the_query_first(app: SimilarImagesApp) -> None:
    assert app.results is None and app.grid.children == ()
    app.random_button.click()
    _check_grid(app, 8)
    r = app.results
    assert r is not None and r.query_id is not None
    assert r[0].id == r.query_id and r[0].score == pytest.approx(1.0, abs=1e-4)
    assert app.query_label == Path(app.db.items[r.query_id]).name
    assert app.message == ""
    assert f"{r.search_ms:.2f} ms" in app.status.value
    seen = {r.query_id}
    for _ in range(4):
        app.random_button.click()
        assert app.results is not None and app.results.query_id not in seen  # never the same twice in a row
        seen = {app.results.query_id}


def test_search_similar_button_makes_a_result_the_query(app: SimilarImagesApp) -> None:
    first = app.search_id(0)
    target = first[3]
    app.result_cards[3].button.click()
    r = app.results
    assert r is not None and r is not first
    assert r.query_id == target.id and r[0].id == target.id
    assert app.query_label == Path(target.path).name
    _check_grid(app, 8)
    assert "si-self" in app.result_cards[0].widget._dom_classes
    assert "si-self" not in app.result_cards[1].widget._dom_classes


def test_every_database_image_finds_itself_first(app: SimilarImagesApp) -> None:
    for i in range(0, len(app.db), 7):
        r = app.search_id(i)
        assert r[0].id == i and r.query_id == i


def test_k_slider_and_exact_checkbox_search_again(app: SimilarImagesApp) -> None:
    app.search_id(5)
    app.k_slider.value = 20
    _check_grid(app, 20)
    assert app.results is not None and app.results.query_id == 5
    app.k_slider.value = 3
    _check_grid(app, 3)
    by_index = app.results.ids if app.results else []
    app.exact_checkbox.value = True
    assert app.results is not None and app.results.params["exact"] is True
    assert app.results.ids == by_index  # the small database's Flat index is exact too
    assert "exact" in app.status.value
    assert app.k_slider.max == 50 and app.k_slider.min == 1


def test_app_displays_as_a_widget(app: SimilarImagesApp) -> None:
    bundle = app._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == app.widget.model_id


# ----------------------------------------------------------------------------- uploads


def test_upload_of_a_real_photo_finds_it(app: SimilarImagesApp, db: Database) -> None:
    data = Path(db.items[11]).read_bytes()
    app.upload.value = _upload_value(data, "holiday.jpg")
    assert app.message == ""
    r = app.results
    assert r is not None and r.query_id is None
    assert r[0].id == 11 and r[0].score > 0.99
    assert app.query_label == "holiday.jpg"
    assert app.upload.value == ()  # cleared for the next file
    assert app.timing.embed_ms > 0
    _check_grid(app, 8)
    # A new k re-searches with the stored query vector: no model run.
    app.k_slider.value = 5
    assert app.results is not None and app.results.ids == r.ids[:5] and app.timing.embed_ms == 0


def test_upload_of_a_png_and_the_python_api(app: SimilarImagesApp, db: Database) -> None:
    buf = io.BytesIO()
    Image.open(db.items[2]).convert("RGBA").save(buf, format="PNG")
    r = app.search_upload(buf.getvalue(), name="copy.png")
    assert r[0].id == 2 and r[0].score > 0.95


def test_garbage_upload_shows_a_message_and_the_app_keeps_working(app: SimilarImagesApp, db: Database) -> None:
    app.search_id(4)
    before = app.results
    app.upload.value = _upload_value(b"this is not an image at all" * 10, "notes.jpg")
    assert "notes.jpg" in app.message and "not a readable image" in app.message
    assert "Traceback" not in app.message and "0x" not in app.message
    assert app.message_box.layout.display == "block" and "notes.jpg" in app.message_box.value
    assert app.results is before and len(app.grid.children) == 8  # the previous results stay
    assert app.upload.value == () and not app.random_button.disabled

    truncated = Path(db.items[0]).read_bytes()
    app.upload.value = _upload_value(truncated[: len(truncated) // 3], "cut.jpg")
    assert "cut.jpg" in app.message and "truncated" in app.message

    app.random_button.click()
    assert app.message == "" and app.message_box.layout.display == "none"
    _check_grid(app, 8)


def test_upload_over_the_size_limit_is_refused(db: Database) -> None:
    app = SimilarImagesApp(db, AppConfig(max_upload_bytes=10_000))
    data = Path(db.items[0]).read_bytes()
    assert len(data) > 10_000
    app.upload.value = _upload_value(data, "big.jpg")
    assert "big.jpg" in app.message and "limit" in app.message
    assert app.results is None
    with pytest.raises(QueryError, match="limit"):
        app.search_upload(data, "big.jpg")
    app.close()


# ----------------------------------------------------------------------------- URLs


def test_url_box_searches_on_change_and_button(app: SimilarImagesApp, db: Database, image_host: str) -> None:
    base = image_host
    app.url_text.value = f"{base}/photo.jpg"  # what Enter (continuous_update=False) sends
    assert app.message == ""
    r = app.results
    assert r is not None and r[0].id == 3 and r[0].score > 0.99
    assert app.query_label == "photo.jpg"
    _check_grid(app, 8)
    # The button right after the box's own change event does not search twice ...
    app.url_button.click()
    assert app.results is r
    # ... but a later click searches again.
    app._last_url_done -= 5
    app.url_button.click()
    assert app.results is not r and app.results is not None and app.results[0].id == 3


@pytest.mark.parametrize("path,expected", [
    ("/page.html", "did not return an image"),
    ("/missing.jpg", "HTTP 404"),
    ("/broken.jpg", "not a readable image"),
])
def test_bad_urls_show_a_message(app: SimilarImagesApp, image_host: str, path: str, expected: str) -> None:
    base = image_host
    app.search_id(1)
    app.url_text.value = base + path
    assert expected in app.message
    assert app.results is not None and app.results.query_id == 1
    app.random_button.click()
    assert app.message == ""


def test_unreachable_url_and_bad_schemes(app: SimilarImagesApp) -> None:
    port = closed_port()
    t0 = time.perf_counter()
    app.url_text.value = f"http://127.0.0.1:{port}/photo.jpg"
    assert "Could not reach" in app.message and time.perf_counter() - t0 < 10
    app.url_text.value = "file:///etc/passwd"
    assert "Only http:// and https://" in app.message
    app.url_text.value = ""
    app.url_button.click()
    assert "Paste an image URL" in app.message
    with pytest.raises(QueryError):
        app.search_url(f"http://127.0.0.1:{port}/x.jpg")
    assert app.results is None
    app.random_button.click()
    assert app.message == "" and app.results is not None


def test_api_errors_are_raised_and_shown(app: SimilarImagesApp) -> None:
    with pytest.raises(QueryError, match="Unknown id"):
        app.search_id(10_000)
    assert "Unknown id" in app.message
    with pytest.raises(QueryError, match="No such image file"):
        app.search_path("/nonexistent/photo.jpg")
    with pytest.raises(ImageLoadError):
        app.search_upload(b"\x89PNG\r\n\x1a\n garbage", "x.png")
    assert app.search_id(2)[0].id == 2 and app.message == ""


# ----------------------------------------------------------------------------- opening


def test_open_app_without_a_database_explains_how_to_build_one(tmp_path: Path) -> None:
    missing = tmp_path / "no-db"
    msg = open_app(missing)
    assert isinstance(msg, DatabaseMessage)
    for text in (msg.text, msg._repr_html_()):
        assert f"similar-images extract IMAGES {missing}" in html.unescape(text)
        assert f"similar-images build-index {missing}" in html.unescape(text)
    assert "similar-images extract" in repr(msg)


def test_open_app_with_a_damaged_database_shows_why(tmp_path: Path, small_db: Path) -> None:
    broken = tmp_path / "db"
    shutil.copytree(small_db, broken)
    (broken / "vectors.f32").write_bytes(b"")
    msg = open_app(broken, preload_model=False)
    assert isinstance(msg, DatabaseMessage) and "damaged" in msg.text


def test_open_app_finds_a_project_relative_database(tmp_path: Path, small_db: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(small_db, tmp_path / "data" / "db")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert find_database("data/db") == tmp_path / "data" / "db"
    app = open_app("data/db", k=4, preload_model=False)
    assert isinstance(app, SimilarImagesApp)
    assert len(app.search_random()) == 4
    with pytest.raises(ValueError, match="k must be"):
        open_app("data/db", k=51)


def test_missing_photo_gets_a_placeholder_tile(tmp_path: Path) -> None:
    paths = [make_image(tmp_path / "imgs" / f"{i}.png", seed=i, size=(320, 240)) for i in range(6)]
    rng = np.random.default_rng(0)
    write_database(tmp_path / "db", kind="image", model={"name": "synthetic-16d", "dim": 16},
                   items=[str(p) for p in paths], vector_chunks=[rng.normal(size=(6, 16)).astype(np.float32)])
    db = Database.open(tmp_path / "db")
    app = SimilarImagesApp(db, AppConfig(k=6))
    assert app.speed_param is None and app.speed_slider.layout.display == "none"
    paths[2].unlink()
    r = app.search_id(0)
    assert len(r) == 6 and app.message == ""
    card = next(c for c in app.result_cards if c.match is not None and c.match.id == 2)
    assert card.image.value == placeholder_thumbnail(app.config.thumb_size, "image missing")
    with pytest.raises(QueryError):
        app.search_id(6)
    app.close()


# ----------------------------------------------------------------------------- thumbnails


def test_thumbnail_cache_is_lru_keyed_by_file_state(tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.jpg", seed=1, size=(640, 480))
    b = make_image(tmp_path / "b.png", seed=2, size=(100, 300))
    c = make_image(tmp_path / "c.jpg", seed=3, size=(50, 40))
    cache = ThumbnailCache(ThumbnailConfig(size=160, max_items=2))
    ta = cache.get(a)
    assert Image.open(io.BytesIO(ta)).size == (160, 120)
    assert Image.open(io.BytesIO(cache.get(b))).size == (53, 160)
    assert Image.open(io.BytesIO(cache.get(c))).size == (50, 40)  # never enlarged
    assert len(cache) == 2 and not cache.cached(a)  # a was least recently used
    old_c = cache.get(c)
    assert cache.get(c) is old_c and cache.hits == 2
    misses = cache.misses
    make_image(c, seed=4, size=(60, 40))  # the file changes: a fresh thumbnail
    os.utime(c, ns=(time.time_ns(), time.time_ns() + 10**9))
    new_c = cache.get(c)
    assert Image.open(io.BytesIO(new_c)).size == (60, 40) and cache.misses == misses + 1
    # b, the least recently used, made room; the stale entry of c is never served again
    assert not cache.cached(b) and cache.nbytes == len(old_c) + len(new_c) == cache.stats()["bytes"]
    with pytest.raises(ImageLoadError, match="not found"):
        cache.get(tmp_path / "gone.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ImageLoadError):
        cache.get(tmp_path / "bad.jpg")
    with pytest.raises(ValueError):
        ThumbnailConfig(size=4)


def test_make_thumbnail_from_bytes_and_pil(db: Database) -> None:
    data = Path(db.items[0]).read_bytes()
    t1 = make_thumbnail(data, 96)
    img = Image.open(db.items[0])
    t2 = make_thumbnail(img, 96)
    assert img.size == Image.open(db.items[0]).size  # the source image is not modified
    assert max(Image.open(io.BytesIO(t1)).size) == 96 == max(Image.open(io.BytesIO(t2)).size)
