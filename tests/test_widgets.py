"""The image-search app (similar_images.apps.image_app) driven through its front end's events.

Real parts only: the small real database (48 COCO photos, MobileNetV2 with
real ImageNet weights), the real widget (its traits are what the page draws),
real HTTP servers on 127.0.0.1. Page events (clicks, keys, uploads in pieces)
are sent to :meth:`GalleryWidget.receive` exactly as the page sends them.
"""

from __future__ import annotations

import html
import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import HOSTED_ITEM, make_image
from helpers import closed_port
from PIL import Image

from similar_images import Database
from similar_images.apps import AppConfig, DatabaseMessage, SimilarImagesApp, find_database, open_app
from similar_images.apps.gallery import UPLOAD_CHUNK, ActionResult, GalleryWidget
from similar_images.errors import ImageLoadError, QueryError
from similar_images.index import BAND_NAMES
from similar_images.presentation.thumbnails import (
    ThumbnailCache,
    ThumbnailConfig,
    make_thumbnail,
    placeholder_thumbnail,
)
from similar_images.store import write_database

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture()
def app(db: Database) -> Iterator[SimilarImagesApp]:
    a = SimilarImagesApp(db, AppConfig(k=8, seed=1))
    yield a
    a.close()


class Sent:
    """What the widget sends to the page (custom messages), recorded."""

    def __init__(self, widget: GalleryWidget) -> None:
        self.messages: list[tuple[dict, list[bytes]]] = []
        original = widget.send

        def send(content: dict, buffers: Any = None) -> None:
            self.messages.append((content, [bytes(b) for b in buffers or []]))
            original(content, buffers)

        widget.send = send  # type: ignore[method-assign]


def upload(app: SimilarImagesApp, data: bytes, name: str, *, chunk: int = UPLOAD_CHUNK,
           skip: int | None = None) -> None:
    """Send a file the way the page does: start, pieces of ``chunk`` bytes, end."""
    g = app.gallery
    g.receive({"event": "upload_start", "token": "t1", "name": name, "size": len(data), "type": "image/jpeg"})
    for n, off in enumerate(range(0, len(data), chunk)):
        if n != skip:
            g.receive({"event": "upload_chunk", "token": "t1", "offset": off}, [memoryview(data[off:off + chunk])])
    g.receive({"event": "upload_end", "token": "t1"})


def _check_grid(app: SimilarImagesApp, k: int) -> None:
    """The page shows k tiles, best first, each with its thumbnail, rank, score, band and file name."""
    results = app.results
    assert results is not None and len(results) == k
    tiles = app.gallery.results
    assert len(tiles) == k == len(app.shown)
    scores = [t["score"] for t in tiles]
    assert scores == sorted(scores, reverse=True)
    for rank, (tile, match) in enumerate(zip(tiles, results), start=1):
        assert tile["id"] == match.id and tile["rank"] == match.rank == rank
        assert tile["score"] == pytest.approx(match.score, abs=1e-4)
        assert tile["band"] == app.bands.band(match.score) and tile["band"] in BAND_NAMES
        assert tile["name"] == tile["title"] == Path(match.path).name  # no server paths by default
        assert tile["words"] and tile["words_title"]
        thumb = Image.open(io.BytesIO(tile["thumb"]))
        assert thumb.format == "JPEG" and max(thumb.size) <= app.config.thumb_size
        assert len(tile["thumb"]) < Path(match.path).stat().st_size  # never the full-size photo
    assert app.gallery.query["thumb"][:2] == b"\xff\xd8"
    assert app.gallery.state == "idle" and app.gallery.message == {}


# ----------------------------------------------------------------------------- database queries


def test_random_shows_k_other_images_with_bands(app: SimilarImagesApp) -> None:
    assert app.results is None and app.gallery.results == []
    assert app.gallery.empty["text"].startswith("Click a photo below, or Random image")
    app.gallery.receive({"event": "random"})
    _check_grid(app, 8)
    r = app.results
    assert r is not None and r.query_id is not None
    assert r.query_id not in r.ids  # the k most similar OTHER images; the query is in the query panel
    assert app.gallery.query["name"] == Path(app.db.items[r.query_id]).name
    assert app.gallery.query["title"] == Path(app.db.items[r.query_id]).name  # no server path by default
    assert app.gallery.results_title["text"] == "8 most similar other images"
    assert app.message == ""
    assert f"Found in {r.search_ms:.1f} ms" in app.gallery.status["timing"]
    # The legend: the four bands, thresholds from the database (its manifest), best first.
    assert [b["name"] for b in app.gallery.bands] == list(BAND_NAMES)
    assert app.gallery.bands[0]["min"] == pytest.approx(app.db.manifest.index.get("score_bands")["near_duplicate"])
    seen = {r.query_id}
    for _ in range(4):
        app.gallery.receive({"event": "random"})
        assert app.results is not None and app.results.query_id not in seen  # never the same twice in a row
        seen = {app.results.query_id}


def test_the_first_screen_offers_sample_photos_to_click(app: SimilarImagesApp, db: Database) -> None:
    samples = app.gallery.empty["samples"]
    assert len(samples) == app.config.samples == 12 and len({s["id"] for s in samples}) == 12
    for s in samples:
        assert s["name"] == Path(db.items[s["id"]]).name and Image.open(io.BytesIO(s["thumb"])).format == "JPEG"
    app.gallery.receive({"event": "sample", "id": samples[2]["id"]})  # a click on the third photo
    assert app.query is not None and app.query.id == samples[2]["id"] and len(app.gallery.results) == 8
    none = SimilarImagesApp(db, AppConfig(samples=0))
    assert "samples" not in none.gallery.empty and none.gallery.empty["text"].startswith("Click Random image")
    none.close()


def test_a_new_query_clears_the_selection_frame(app: SimilarImagesApp) -> None:
    app.search_random()
    app.gallery.selected = 3  # the keyboard frame on #4
    app.gallery.min_band = "similar"  # the same query, filtered: the frame stays where it was (if still shown)
    assert app.gallery.selected == min(3, len(app.shown) - 1)
    app.gallery.min_band = ""
    app.gallery.selected = 3
    app.search_random()  # a new query: no frame until the keys move it
    assert app.gallery.selected == -1
    app.gallery.selected = 2
    app.gallery.receive({"event": "search", "index": 2})
    assert app.gallery.selected == -1


def test_server_paths_stay_on_the_server_unless_asked(db: Database, tmp_path: Path) -> None:
    app = SimilarImagesApp(db, AppConfig(k=4, seed=1))
    copy = tmp_path / "secret-folder" / "mine.jpg"
    copy.parent.mkdir()
    copy.write_bytes(Path(db.items[5]).read_bytes())
    app.search_path(copy)
    app.search_id(3)
    for tile in app.gallery.results:
        assert os.sep not in tile["title"] and str(Path(db.items[0]).parent) not in str(tile)
    assert os.sep not in app.gallery.query["title"] and os.sep not in app.gallery.query["detail"]
    app.search_path(copy)
    assert "secret-folder" not in str(app.gallery.query) and app.gallery.query["name"] == "mine.jpg"
    app.close()
    shown = SimilarImagesApp(db, AppConfig(k=4, seed=1, show_paths=True))  # the owner's choice: paths on hover
    shown.search_id(3)
    assert shown.gallery.results[0]["title"] == shown.shown[0].path
    shown.close()


def test_presenter_mode_is_a_setting_and_a_trait(db: Database) -> None:
    app = SimilarImagesApp(db, AppConfig(k=4))
    assert app.gallery.present is False
    app.gallery.present = True  # what the page's Present button and key P set
    assert app.gallery.get_state()["present"] is True
    app.close()
    on = SimilarImagesApp(db, AppConfig(k=4, present=True))
    assert on.gallery.present is True
    on.close()


def test_score_words_on_an_unlabeled_collection_compare_with_the_collection(app: SimilarImagesApp) -> None:
    # 48 COCO photos in one folder: no labels, so no promise of likeness, only how the score compares.
    assert app.words is not None and app.words.kind == "collection"
    app.search_id(3)
    for tile, m in zip(app.gallery.results, app.shown):
        share = app.words.closer_than(m.score)
        assert 0.0 <= share <= 1.0
        if tile["band"] != "near-duplicate":
            assert tile["words"] == f"closer than {app.words.percent(share)} of the collection"
            assert "no labels" in tile["words_title"]
    assert [b["label"] for b in app.gallery.bands][1:3] == ["closer than 99%", "closer than 90%"]
    assert "no labels" in app.gallery.bands_note
    # The random pairs' reference: the first result is closer than most pairs, the last result less so.
    assert app.words.closer_than(app.shown[0].score) >= app.words.closer_than(app.shown[-1].score) > 0.5


def test_include_query_brings_the_query_back_as_first_result(app: SimilarImagesApp) -> None:
    app.search_id(5)
    assert 5 not in app.results.ids
    app.gallery.include_query = True  # the page's checkbox
    r = app.results
    assert r is not None and r[0].id == 5 and r[0].score == pytest.approx(1.0, abs=1e-4)
    assert app.gallery.results[0]["is_query"] and not app.gallery.results[1]["is_query"]
    assert app.gallery.results[0]["band"] == "near-duplicate"
    assert app.gallery.results_title["text"] == "8 most similar images"
    for i in range(0, len(app.db), 7):
        r = app.search_id(i)
        assert r[0].id == i and r.query_id == i


def test_search_similar_makes_a_result_the_query(app: SimilarImagesApp) -> None:
    first = app.search_id(0)
    target = first[3]
    app.gallery.receive({"event": "search", "index": 3})  # "Search similar" on the 4th tile, or Enter in the lightbox
    r = app.results
    assert r is not None and r is not first
    assert r.query_id == target.id and target.id not in r.ids
    assert app.query_label == Path(target.path).name
    _check_grid(app, 8)
    app.gallery.receive({"event": "search", "index": 99})
    assert "no result #100" in app.message and app.results is r


def test_k_exact_and_minimum_score_from_the_page(app: SimilarImagesApp) -> None:
    app.search_id(5)
    app.gallery.k = 20  # the page's "Results" slider
    _check_grid(app, 20)
    assert app.results is not None and app.results.query_id == 5
    app.k = 3
    _check_grid(app, 3)
    by_index = app.results.ids
    app.gallery.exact = True
    assert app.results is not None and app.results.params["exact"] is True
    assert app.results.ids == by_index  # the small database's Flat index is exact too
    assert "exact search" in app.gallery.status["timing"]
    with pytest.raises(ValueError, match="k must be"):
        app.k = 51
    # The minimum-score filter: only "very similar or better" tiles stay, the title says how many are hidden.
    app.k = 20
    bands = app.bands
    app.gallery.min_band = "very similar"
    shown = [m.score for m in app.shown]
    assert all(s >= bands.very_similar for s in shown)
    hidden = sum(s < bands.very_similar for s in app.results.scores)
    assert len(app.gallery.results) == 20 - hidden
    if hidden:
        assert f"({hidden} below {bands.very_similar:.2f} hidden)" == app.gallery.results_title["note"]
    app.gallery.min_band = "near-duplicate"
    assert app.gallery.results == [] and "lower the minimum" in app.gallery.empty["text"]
    app.gallery.min_band = ""
    assert len(app.gallery.results) == 20


def test_app_displays_as_one_widget(app: SimilarImagesApp) -> None:
    data, _metadata = app._repr_mimebundle_()
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == app.widget.model_id
    # A plain header: how many, how they are compared (model and index on hover), the collection's name, no path.
    parts = app.gallery.header["parts"]
    assert [p["text"] for p in parts] == ["48 images", "compared by what they show", app.db.path.name]
    assert parts[1]["title"] == "model mobilenetv2 (1280-d), exact index (Flat)"
    assert str(app.db.path.parent) not in str(app.gallery.header)


# ----------------------------------------------------------------------------- uploads


def test_upload_in_pieces_finds_the_photo(app: SimilarImagesApp, db: Database) -> None:
    data = Path(db.items[11]).read_bytes()
    upload(app, data, "holiday.jpg", chunk=4096)  # many pieces
    assert app.message == ""
    r = app.results
    assert r is not None and r.query_id is None
    assert r[0].id == 11 and r[0].score > 0.99 and app.gallery.results[0]["band"] == "near-duplicate"
    assert app.query_label == "holiday.jpg" and app.gallery.query["detail"].startswith("uploaded")
    assert app.timing.embed_ms > 0
    _check_grid(app, 8)
    # A new k re-searches with the stored query vector: no model run.
    app.k = 5
    assert app.results is not None and app.results.ids == r.ids[:5] and app.timing.embed_ms == 0


def test_large_upload_arrives_in_several_pieces(app: SimilarImagesApp, db: Database) -> None:
    big = Image.open(db.items[2]).convert("RGB").resize((3000, 2250))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) > UPLOAD_CHUNK  # two pieces or more
    upload(app, data, "big.png")
    assert app.message == "" and app.results is not None and app.results[0].id == 2
    upload(app, data, "big.png", skip=1)  # a piece lost on the way
    assert "arrived incomplete" in app.message and app.gallery.state == "stale"


def test_upload_over_the_limit_is_refused_with_a_message(db: Database) -> None:
    app = SimilarImagesApp(db, AppConfig(max_upload_bytes=10_000))
    assert app.gallery.upload["limit"] == 10_000  # the page refuses larger files before sending them ...
    app.gallery.receive({"event": "upload_refused", "name": "big.jpg", "size": 15 * 1024 * 1024})
    assert app.message == ("'big.jpg' is 15.0 MB; the upload limit is 10 KB. Use a smaller image (or a copy saved "
                           "at a lower resolution).")
    data = Path(db.items[0]).read_bytes()
    upload(app, data, "big.jpg")  # ... and the kernel refuses them too
    assert "big.jpg" in app.message and "limit" in app.message and app.results is None
    with pytest.raises(QueryError, match="limit"):
        app.search_upload(data, "big.jpg")
    app.close()


def test_garbage_upload_shows_a_message_and_dims_the_old_results(app: SimilarImagesApp, db: Database) -> None:
    app.search_id(4)
    before = app.results
    upload(app, b"this is not an image at all" * 10, "notes.jpg")
    assert app.message == ("'notes.jpg' is not an image the app can read (unknown or unsupported format). Use a JPEG, "
                           "PNG, GIF, BMP, WebP or TIFF file.")
    assert "Traceback" not in app.message and "0x" not in app.message
    assert app.gallery.message == {"text": app.message, "kind": "error"}
    assert app.results is before and len(app.gallery.results) == 8  # the previous results stay, dimmed
    assert app.gallery.state == "stale" and app.gallery.query["key"] == "db:4"  # with their own query

    truncated = Path(db.items[0]).read_bytes()
    upload(app, truncated[: len(truncated) // 3], "cut.jpg")
    assert app.message == "'cut.jpg' is damaged or incomplete (the image data is cut short). Use the whole file."

    app.gallery.receive({"event": "random"})
    assert app.message == "" and app.gallery.message == {} and app.gallery.state == "idle"
    _check_grid(app, 8)


def test_upload_of_a_png_and_the_python_api(app: SimilarImagesApp, db: Database) -> None:
    buf = io.BytesIO()
    Image.open(db.items[2]).convert("RGBA").save(buf, format="PNG")
    r = app.search_upload(buf.getvalue(), name="copy.png")
    assert r[0].id == 2 and r[0].score > 0.95


# ----------------------------------------------------------------------------- URLs


def test_url_from_the_page(app: SimilarImagesApp, image_host: str) -> None:
    app.gallery.receive({"event": "url", "url": f"{image_host}/photo.jpg"})
    assert app.message == ""
    r = app.results
    assert r is not None and r[0].id == HOSTED_ITEM and r[0].score > 0.99
    assert app.query_label == "photo.jpg" and app.gallery.query["title"] == f"{image_host}/photo.jpg"
    _check_grid(app, 8)


@pytest.mark.parametrize("path,expected", [
    ("/page.html", "did not return an image"),
    ("/missing.jpg", "HTTP 404"),
    ("/broken.jpg", "'broken.jpg' is not an image the app can read"),
])
def test_bad_urls_show_a_message(app: SimilarImagesApp, image_host: str, path: str, expected: str) -> None:
    app.search_id(1)
    app.gallery.receive({"event": "url", "url": image_host + path})
    assert expected in app.message
    assert app.results is not None and app.results.query_id == 1 and app.gallery.state == "stale"
    app.gallery.receive({"event": "random"})
    assert app.message == ""


def test_plain_words_for_unreachable_urls_and_addresses_without_scheme(app: SimilarImagesApp) -> None:
    port = closed_port()
    t0 = time.perf_counter()
    app.gallery.receive({"event": "url", "url": f"http://127.0.0.1:{port}/photo.jpg"})
    assert app.message == "Could not reach 127.0.0.1 (connection refused)" and time.perf_counter() - t0 < 10
    app.gallery.receive({"event": "url", "url": f"127.0.0.1:{port}/photo.jpg"})  # tried as https
    assert app.message == "Could not reach 127.0.0.1 (connection refused)"
    app.gallery.receive({"event": "url", "url": "www.example.invalid/cat.jpg"})
    assert app.message == "Could not reach www.example.invalid (the host name could not be resolved)"
    app.gallery.receive({"event": "url", "url": "file:///etc/passwd"})
    assert "Only http:// and https://" in app.message
    app.gallery.receive({"event": "url", "url": "  "})
    assert "Paste the address of an image" in app.message
    with pytest.raises(QueryError):
        app.search_url(f"http://127.0.0.1:{port}/x.jpg")
    assert app.results is None and app.gallery.state == "idle"
    app.gallery.receive({"event": "random"})
    assert app.message == "" and app.results is not None


def test_api_errors_are_raised_and_shown(app: SimilarImagesApp) -> None:
    with pytest.raises(QueryError, match="Unknown id"):
        app.search_id(10_000)
    assert "Unknown id" in app.message
    with pytest.raises(QueryError, match="No such image file"):
        app.search_path("/nonexistent/photo.jpg")
    with pytest.raises(ImageLoadError):
        app.search_upload(b"\x89PNG\r\n\x1a\n garbage", "x.png")
    assert app.search_id(2)[0].id != 2 and app.message == ""


# ----------------------------------------------------------------------------- lightbox


def test_lightbox_images_are_downscaled_on_the_server(app: SimilarImagesApp, db: Database) -> None:
    sent = Sent(app.gallery)
    app.search_id(0)
    key = app.gallery.results[2]["key"]
    app.gallery.receive({"event": "preview", "key": key})
    content, buffers = sent.messages[-1]
    assert content == {"event": "preview", "key": key, "ok": True, "mime": "image/jpeg"}
    img = Image.open(io.BytesIO(buffers[0]))
    source = Image.open(app.shown[2].path)
    assert img.format == "JPEG" and max(img.size) == min(max(source.size), app.config.preview_size)
    # The query's large image (an upload is kept in memory for it); unknown keys answer "no image".
    big = Image.open(db.items[7]).convert("RGB").resize((2400, 1800))
    buf = io.BytesIO()
    big.save(buf, format="JPEG")
    app.search_upload(buf.getvalue(), "large.jpg")
    app.gallery.receive({"event": "preview", "key": app.gallery.query["key"]})
    assert max(Image.open(io.BytesIO(sent.messages[-1][1][0])).size) == 1600
    app.gallery.receive({"event": "preview", "key": "q:unknown"})
    assert sent.messages[-1][0]["ok"] is False and sent.messages[-1][1] == []


def test_lightbox_actions_show_what_the_callback_returns(app: SimilarImagesApp) -> None:
    sent = Sent(app.gallery)
    seen = []

    def explain(target: Any) -> bytes:
        seen.append((target.index, target.match.id if target.match else None, target.query.key))
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), "red").save(buf, format="PNG")
        return buf.getvalue()

    app.add_lightbox_action("explain", "Explain", explain, tooltip="Why these two are similar")
    assert app.gallery.actions == [{"name": "explain", "label": "Explain", "tooltip": "Why these two are similar",
                                    "query": False}]
    app.search_id(3)
    app.gallery.receive({"event": "action", "name": "explain", "index": 1})
    content, buffers = sent.messages[-1]
    assert content["event"] == "action_result" and content["kind"] == "png" and content["title"] == "Explain"
    assert Image.open(io.BytesIO(buffers[0])).size == (40, 30)
    assert seen == [(1, app.shown[1].id, "db:3")]

    def broken(target: Any) -> str:
        raise QueryError("nothing to explain here")

    app.add_lightbox_action("broken", "Broken", broken)
    app.gallery.receive({"event": "action", "name": "broken", "index": 0})
    assert sent.messages[-1][0]["kind"] == "error" and sent.messages[-1][0]["text"] == "nothing to explain here"
    app.add_lightbox_action("html", "Details", lambda t: ActionResult("html", title="Details", html="<b>x</b>"))
    assert app.gallery.run_action("html", 0).html == "<b>x</b>"


def test_the_lightbox_explains_a_result_with_the_real_maps(db: Database) -> None:
    from similar_images.methods.explain import explain

    app = SimilarImagesApp(db, AppConfig(k=4, seed=1))
    try:
        assert [a["name"] for a in app.gallery.actions] == ["explain"]  # offered by default: mobilenetv2 has a map
        sent = Sent(app.gallery)
        app.search_id(3)
        shown = app.shown[1]
        app.gallery.receive({"event": "action", "name": "explain", "index": 1})
        content, buffers = sent.messages[-1]
        assert content["event"] == "action_result" and content["kind"] == "explain", content
        assert buffers == []  # drawn by the page: no picture with text baked in
        expected = explain(db, 3, shown.id)  # what the library says about this pair
        assert abs(expected.score - shown.score) < 1e-3  # the map explains the score the grid shows
        # "#" is the rank, as everywhere in the app (the second result: #2, whatever its database id).
        assert content["title"] == "Why #2 is similar" and content["data"]["rank"] == 2 == shown.rank
        data = content["data"]
        assert data["query_key"] == "db:3" and data["result_key"] == f"db:{shown.id}"
        qmap, rmap = np.asarray(data["query_map"]), np.asarray(data["result_map"])
        assert qmap.shape == expected.query_map.shape and rmap.shape == expected.result_map.shape
        assert 0 <= qmap.min() and max(qmap.max(), rmap.max()) == pytest.approx(1.0)  # one colour scale
        # One plain sentence, its figure recomputed from the library's map: the highlighted cells' share.
        m = np.clip(expected.result_map, 0, None)
        lit = m >= 0.5 * m.max()
        share, area = m[lit].sum() / m.sum(), lit.mean()
        assert content["text"] == (f"{share:.0%} of this match comes from the highlighted area "
                                   f"({area:.0%} of the picture).")
        for jargon in ("exact-avg", "of the score per cell", ".h5"):
            assert jargon not in content["title"] + content["text"]
        # The exact figures: behind the "details" toggle.
        assert data["details"][0] == f"score {expected.score:.4f} (cosine similarity of the two photos' features)"
        assert any(expected.method in line for line in data["details"])
        # The query itself has nothing to be compared with: a plain sentence, not a crash.
        assert "Open a result" in app.gallery.run_action("explain", -1).text
        # An uploaded query is explained from its bytes.
        app.search_upload(Path(db.items[5]).read_bytes(), "mine.jpg")
        result = app.gallery.run_action("explain", 0)
        assert result.kind == "explain" and result.title == "Why #1 is similar"
        assert result.data["query_key"] == app.query.key
    finally:
        app.close()


def test_no_explain_button_without_a_feature_map_or_when_turned_off(tmp_path: Path, db: Database) -> None:
    off = SimilarImagesApp(db, AppConfig(explain=False))
    assert off.gallery.actions == []
    off.close()
    rng = np.random.default_rng(0)
    paths = [make_image(tmp_path / f"{i}.png", seed=i) for i in range(4)]
    write_database(tmp_path / "db", kind="image", model={"name": "synthetic-16d", "dim": 16},
                   items=[str(p) for p in paths], vector_chunks=[rng.normal(size=(4, 16)).astype(np.float32)])
    app = SimilarImagesApp(Database.open(tmp_path / "db"), AppConfig(k=3))
    assert app.gallery.actions == []  # no model to explain with: no button that can only fail
    app.close()


def test_the_model_status_names_a_backend_other_than_keras_fp32(tmp_path: Path, db: Database) -> None:
    plain = SimilarImagesApp(db, AppConfig(explain=False))
    assert plain.loader.what == "the image model (mobilenetv2)"
    plain.close()
    paths = [make_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    write_database(tmp_path / "ov", kind="image",
                   model={"name": "mobilenetv2", "dim": 1280, "backend": "openvino", "precision": "int8"},
                   items=[str(p) for p in paths],
                   vector_chunks=[np.random.default_rng(0).normal(size=(3, 1280)).astype(np.float32)])
    app = SimilarImagesApp(Database.open(tmp_path / "ov"), AppConfig(explain=False))
    assert app.loader.what == "the image model (mobilenetv2, openvino int8)"
    app.close()


# ----------------------------------------------------------------------------- the model in the background


def test_model_loads_in_the_background_when_the_page_shows_the_app(db: Database) -> None:
    fresh = Database.open(db.path)  # its own embedder: nothing loaded yet
    app = SimilarImagesApp(fresh, AppConfig(k=4))
    assert app.loader.state == "idle" and app.gallery.status["model"]["state"] == "idle"
    app.gallery.receive({"event": "ready"})  # the page has drawn the app
    assert app.loader.state in ("loading", "ready")
    assert app.gallery.status["model"]["state"] in ("loading", "ready")
    r = app.search_path(db.items[6])  # waits for the model, then runs it
    assert r[0].id == 6 and app.loader.state == "ready"
    assert app.gallery.status["model"]["label"].startswith("Model ready (")
    assert app.gallery.status["model"]["state"] == "ready"
    app.close()


# ----------------------------------------------------------------------------- opening


def test_open_app_loads_the_model_before_the_first_visitor(small_db: Path) -> None:
    # Voilà runs the notebook in a pre-heated kernel before anyone opens the page: open_app starts the model then,
    # without waiting for the page's "ready".
    app = open_app(str(small_db), k=4)
    assert isinstance(app, SimilarImagesApp)
    assert app.loader.state in ("loading", "ready")
    app.loader.wait()
    assert app.loader.ready
    app.close()


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


def test_missing_photo_gets_a_placeholder_tile_and_bands_are_measured(tmp_path: Path) -> None:
    paths = [make_image(tmp_path / "imgs" / f"{i}.png", seed=i, size=(320, 240)) for i in range(6)]
    rng = np.random.default_rng(0)
    write_database(tmp_path / "db", kind="image", model={"name": "mobilenetv2", "dim": 1280},
                   items=[str(p) for p in paths], vector_chunks=[rng.normal(size=(6, 1280)).astype(np.float32)])
    db = Database.open(tmp_path / "db")
    app = SimilarImagesApp(db, AppConfig(k=5))
    assert app.gallery.speed_spec == {}
    assert app.bands is not None and len(app.gallery.bands) == 4  # no index: measured when the app opened
    paths[2].unlink()
    r = app.search_id(0)
    assert len(r) == 5 and app.message == ""
    tile = next(t for t in app.gallery.results if t["id"] == 2)
    assert tile["thumb"] == placeholder_thumbnail(app.config.thumb_size, "image missing")
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
