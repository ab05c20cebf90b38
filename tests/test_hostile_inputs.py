"""Inputs a hostile but fair user gives: bad index descriptions, mismatched weights, retries after failures,
huge photos, one file named three ways, broken links (issue 12, points 5 to 9)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT, make_image
from helpers import plugin_env
from PIL import Image

from similar_images import Database, ExtractConfig
from similar_images.cli import main
from similar_images.embed import ImageEmbedder, embedder_from_info
from similar_images.errors import ImageLoadError
from similar_images.sources.images import collect_inputs, find_images, load_image, read_file_list
from similar_images.store import extract_features

# ----------------------------------------------------------------------------- point 5: index descriptions
BAD_FACTORIES = ["HNSW0", "HNSW1", "IVF4_HNSW1,Flat", "Flat,Refine(HNSW1)", "PQ4x0", "IVF4,PQ4x0", "RQ0x8", "LSQ0x8",
                 "OPQ4_0,PQ4", "PCAR0,Flat", "HNSW32_SQ0", "NSG2", "IVF0,Flat", "", "   "]


def test_index_descriptions_that_crash_or_hang_faiss_are_refused(tmp_path: Path) -> None:
    """Point 5: '--index HNSW0' aborted the process (exit 134) and '--index ""' built Flat. Faiss accepts many
    sizes it then crashes on (segfaults, a floating-point exception, a build that never ends): each is refused
    in one line. Run in a child process, so that a crash fails this test instead of killing the test run."""
    from similar_images.embed import l2_normalize
    from similar_images.store import write_database

    db = tmp_path / "db"
    write_database(db, kind="image", model={"name": "synthetic", "dim": 16}, items=[str(i) for i in range(300)],
                   vector_chunks=[l2_normalize(np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32))])
    code = textwrap.dedent("""
        import json, sys
        from click.testing import CliRunner
        from similar_images.cli import main
        out = {}
        for factory in json.loads(sys.argv[2]):
            r = CliRunner().invoke(main, ["build-index", sys.argv[1], "--index", factory, "--eval-queries", "0"])
            out[factory] = [r.exit_code, type(r.exception).__name__, r.output.strip()]
        print(json.dumps(out))
    """)
    run = subprocess.run([sys.executable, "-c", code, str(db), json.dumps(BAD_FACTORIES)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, f"the process died ({run.returncode}): {run.stderr[-2000:]}"
    outcomes = json.loads(run.stdout.strip().splitlines()[-1])
    for factory, (code_, exc, output) in outcomes.items():
        assert code_ == 1 and exc == "SystemExit", (factory, output)
        assert output.startswith("Error: ") and len(output.splitlines()) == 1, (factory, output)
        assert ("at least 1" in output or "neighbours" in output or "is empty" in output), (factory, output)
    assert not (db / "index-0001.faiss").exists() and Database.open(db).manifest.index is None
    ok = CliRunner().invoke(main, ["build-index", str(db), "--index", "HNSW2", "--eval-queries", "0"])
    assert ok.exit_code == 0, ok.output


# ----------------------------------------------------------------------------- points 6 and 7: weights, retries
@pytest.mark.slow
def test_mismatched_weights_say_so_in_one_line_and_the_retry_with_the_right_file_works(
        tmp_path: Path, vgg_weights: Path, mobilenet_weights: Path) -> None:
    """Point 6: MobileNetV2 given the VGG16 weights file printed 218 lines (48 KB). Point 7: that failure at the
    start left .partial/plan.json, and the retry with another weights file was refused ("other settings")."""
    for i in range(3):
        make_image(tmp_path / "images" / f"{i}.png", seed=i)
    cli = [sys.executable, "-c", "from similar_images.cli import main; main()"]
    db = tmp_path / "db"
    args = ["extract", str(tmp_path / "images"), str(db), "--model", "mobilenetv2", "-q"]
    bad = subprocess.run([*cli, *args, "--weights", str(vgg_weights)], capture_output=True, text=True, timeout=600,
                         env=plugin_env())
    assert bad.returncode == 1
    shown = (bad.stdout + bad.stderr).strip()
    assert len(shown.splitlines()) == 1 and len(shown) < 1000, shown
    assert shown.startswith("Error: Could not load weights for MobileNetV2") and "does not match" in shown
    assert (db / ".partial" / "plan.json").exists()  # what the failed start left
    good = subprocess.run([*cli, *args, "--weights", str(mobilenet_weights)], capture_output=True, text=True,
                          timeout=600, env=plugin_env())
    assert good.returncode == 0, good.stderr
    assert "Extracted 3 of 3 images" in good.stdout and not (db / ".partial").exists()


def test_a_build_killed_after_its_manifest_is_recognised_as_finished(tmp_path: Path, synthetic_images: Path,
                                                                    tiny_model: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Point 7: a kill after the manifest was written but before .partial/ was removed made the same command
    fail with "A database already exists", although the database was complete."""
    import shutil

    from similar_images.store import build as build_mod

    real_rmtree = shutil.rmtree

    class Killed(BaseException):
        """The process dies here (a SIGKILL cannot be caught; this stops the command at the same point)."""

    def killed(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path).name == ".partial":
            raise Killed
        return real_rmtree(path, *args, **kwargs)

    db = tmp_path / "db"
    args = ["extract", str(synthetic_images), str(db), "--model", tiny_model, "--weights", "random", "-q"]
    monkeypatch.setattr(build_mod.shutil, "rmtree", killed)
    with pytest.raises(Killed):
        CliRunner().invoke(main, args)
    assert (db / "manifest.json").exists() and (db / ".partial" / "plan.json").exists()
    monkeypatch.setattr(build_mod.shutil, "rmtree", real_rmtree)
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "Extracted 12 of 12 images" in again.output and not (db / ".partial").exists()
    assert len(Database.open(db)) == 12
    other = CliRunner().invoke(main, [*args[:-1], "--shard-size", "5", "-q"])  # another command: still refused
    assert other.exit_code == 1 and "already exists" in other.output


# ----------------------------------------------------------------------------- point 8: large photos
def _png_claiming(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose header claims ``width`` x ``height`` (its data is then too short to decode)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # IHDR's width and height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture()
def pillow_limit():  # type: ignore[no-untyped-def]
    """Restore Pillow's process-wide limit after a test that may raise it."""
    saved = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = saved


def test_pillow_does_not_refuse_images_below_our_limit(pillow_limit: None) -> None:
    """Point 8: a 95 MP photo was refused by Pillow's own 89.5 MP check, and max_pixels=200_000_000 did not lift it.
    The images here claim their size in their header: getting past the size checks, they fail as truncated."""
    Image.MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)  # Pillow's default, 89.5 MP
    with pytest.raises(ImageLoadError, match="truncated"):  # 95 MP, under our 100 MP
        load_image(_png_claiming(10_000, 9_500))
    with pytest.raises(ImageLoadError, match="truncated"):  # 200 MP: over twice Pillow's limit, under ours
        load_image(_png_claiming(20_000, 10_000), max_pixels=250_000_000)
    with pytest.raises(ImageLoadError, match=r"image too large: 10000x10100 = 101,000,000 pixels exceeds the "
                                             r"limit of 100,000,000"):
        load_image(_png_claiming(10_000, 10_100))
    with pytest.raises(ImageLoadError, match="exceeds the limit of 5,000"):
        load_image(_png_claiming(100, 100), max_pixels=5_000)
    Image.MAX_IMAGE_PIXELS = None  # switched off by the application: stays off, ours still applies
    with pytest.raises(ImageLoadError, match="exceeds the limit of 100,000,000"):
        load_image(_png_claiming(20_000, 10_000))
    assert Image.MAX_IMAGE_PIXELS is None


@pytest.mark.slow
def test_a_real_95_megapixel_photo_is_embedded(tmp_path: Path, tiny_model: str, pillow_limit: None) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (10_000, 9_500), 90).save(path, compress_level=1)
    vector = ImageEmbedder(tiny_model, None).embed([path])
    assert vector.shape == (1, 16) and np.isfinite(vector).all()


def test_max_pixels_is_configurable_and_recorded(tmp_path: Path, synthetic_images: Path, tiny_model: str) -> None:
    """--max-pixels reaches the decoder, is recorded in the manifest, and applies to later adds and queries."""
    db = tmp_path / "db"
    small = tmp_path / "small"
    make_image(small / "tiny.png", seed=1, size=(40, 30))  # 1,200 pixels
    make_image(small / "big.png", seed=2, size=(64, 48))  # 3,072 pixels
    result = CliRunner().invoke(main, ["extract", str(small), str(db), "--model", tiny_model, "--weights", "random",
                                       "--max-pixels", "2000", "-q"])
    assert result.exit_code == 0, result.output
    database = Database.open(db)
    assert [Path(p).name for p in database.items] == ["tiny.png"]
    assert database.failures[0][0].endswith("big.png") and "exceeds the limit of 2,000" in database.failures[0][1]
    assert database.manifest.model["max_pixels"] == 2000
    assert embedder_from_info(database.manifest.model).max_pixels == 2000  # later adds and queries
    summary = database.add([synthetic_images / "img01.png"])
    assert not summary.ids and "exceeds the limit of 2,000" in summary.failures[0][1]
    default = ImageEmbedder(tiny_model, None).info()
    assert "max_pixels" not in default  # manifests of the default limit do not change
    with pytest.raises(Exception, match="max_pixels must be at least 1"):
        ExtractConfig(model=tiny_model, max_pixels=0).build_config() and ImageEmbedder(tiny_model, None, max_pixels=0)


# ----------------------------------------------------------------------------- point 9: paths
def test_a_file_named_three_ways_gets_one_id(tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point 9: a file given three ways in a file list (relative, absolute, with '..') got three ids."""
    photo = make_image(tmp_path / "photos" / "cat.png", seed=3)
    other = make_image(tmp_path / "photos" / "dog.png", seed=4)
    listing = tmp_path / "list.txt"
    listing.write_text(f"photos/cat.png\n{photo}\n{tmp_path}/photos/../photos/./cat.png\nphotos/dog.png\n")
    assert collect_inputs(listing) == [photo, other]
    db = tmp_path / "db"
    extract_features(listing, db, ExtractConfig(model=tiny_model, weights="random", verbose=False))
    database = Database.open(db)
    assert database.items == [str(photo), str(other)]
    monkeypatch.chdir(tmp_path)
    assert database.id_of("photos/cat.png") == database.id_of(f"{tmp_path}/photos/../photos/cat.png") == 0
    assert database.add(["photos/./cat.png", str(other)]).ids == []  # already there, however named


def test_links_keep_their_own_names_and_a_broken_link_is_reported_as_given(tmp_path: Path, tiny_model: str) -> None:
    """Point 9: a broken link was reported under its target's path, not under its own name in the user's folder;
    a working link was stored under its target's name."""
    target = make_image(tmp_path / "elsewhere" / "real.png", seed=5)
    folder = tmp_path / "mine"
    make_image(folder / "a.png", seed=6)
    (folder / "link.png").symlink_to(target)
    (folder / "broken.png").symlink_to(tmp_path / "elsewhere" / "gone.png")
    assert find_images(folder) == [folder / "a.png", folder / "broken.png", folder / "link.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("mine/link.png\n")
    assert read_file_list(listing) == [folder / "link.png"]
    db = tmp_path / "db"
    result = CliRunner().invoke(main, ["extract", str(folder), str(db), "--model", tiny_model, "--weights", "random",
                                       "-q"])
    assert result.exit_code == 0, result.output
    database = Database.open(db)
    assert database.items == [str(folder / "a.png"), str(folder / "link.png")]
    assert [path for path, _ in database.failures] == [str(folder / "broken.png")]
    assert "gone.png" in database.failures[0][1] or "not found" in database.failures[0][1]
    removed = CliRunner().invoke(main, ["remove", str(db), str(folder / "link.png")])
    assert removed.exit_code == 0 and "ids 1" in removed.output


# ----------------------------------------------------------------------------- points 13 to 15: texts
def _csv(path: Path, texts: list[str]) -> Path:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    return path


@pytest.mark.slow
def test_texts_longer_than_the_window_are_counted_and_shortened_in_displays(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Point 13: a 1 MB text was stored whole but embedded from its start only, silently, and 'text search -k 3'
    then printed 1,000,212 bytes."""
    from similar_images.embed import TextEmbedder

    huge = "rain " * 40_000  # 200 KB (the report had 1 MB: the same path, five times slower to tokenize)
    texts = ["I love the rain today", "sunny and warm at the beach", huge.strip(), "the train was late again"]
    embedder = TextEmbedder()
    assert embedder.overlong(texts) == [2]
    assert embedder.overlong(["word " * 250, "word " * 260]) == [1]  # counted in tokens, with [CLS] and [SEP]
    with caplog.at_level("WARNING"):  # a long query is used too, with a warning
        embedder.coerce_query("rain " * 1000)
    assert "longer than the 256-token window" in caplog.text
    source = _csv(tmp_path / "texts.csv", texts)
    db = tmp_path / "db"
    runner = CliRunner()
    built = runner.invoke(main, ["text", "build", str(source), str(db), "--no-index", "-q"])
    assert built.exit_code == 0, built.output
    assert "1 texts are longer than the model's 256-token window" in built.output
    database = Database.open(db)
    assert database.manifest.extra["text_build"]["texts_over_window"] == 1
    assert database.manifest.extra["text_build"]["window_tokens"] == 256
    assert len(database.items[2]) == len(huge.strip())  # stored whole
    shown = runner.invoke(main, ["text", "search", str(db), "rain", "-k", "3", "--exact"])
    assert shown.exit_code == 0 and len(shown.output) < 3000, len(shown.output)
    assert "more characters]" in shown.output
    as_json = runner.invoke(main, ["text", "search", str(db), "rain", "-k", "3", "--exact", "--json"])
    assert max(len(r["text"]) for r in json.loads(as_json.output)["results"]) == len(huge.strip())  # data: whole


def test_an_unterminated_quote_is_reported_not_merged(tmp_path: Path) -> None:
    """Point 14: an unterminated quote silently merged the following lines ("Encoded 1 texts from 1 rows")."""
    from similar_images.errors import TextInputError
    from similar_images.sources.texts import read_texts

    bad = tmp_path / "bad.csv"
    bad.write_text('text\nfirst tweet\n"an unterminated quote\nthird line\nfourth line\n', encoding="utf-8")
    with pytest.raises(TextInputError, match=r"bad\.csv line 3: a quote .* never closed, so the 3 lines"):
        read_texts(bad)
    result = CliRunner().invoke(main, ["text", "build", str(bad), str(tmp_path / "db")])
    assert result.exit_code == 1 and "line 3: a quote" in result.output and "Traceback" not in result.output
    mid = tmp_path / "mid.csv"
    mid.write_text('text,id\n"opens here,1\nsecond,2\n"closed" too early,3\n', encoding="utf-8")
    with pytest.raises(TextInputError, match=r"mid\.csv line 4: .* starts on line 2"):
        read_texts(mid)
    good = _csv(tmp_path / "good.csv", ['she said "hi"', "two\nlines", "plain"])  # quoted properly: kept as they are
    table = read_texts(good)
    assert table.texts == ['she said "hi"', "two\nlines", "plain"] and table.rows_read == 3


def test_a_text_database_refuses_an_image_path_as_a_query(tmp_path: Path) -> None:
    """Point 15: an image path was accepted as a text query (exit 0, 8 "results")."""
    from similar_images.embed import DEFAULT_TEXT_ENCODER, TextEmbedder, l2_normalize
    from similar_images.errors import QueryError
    from similar_images.store import write_database

    photo = make_image(tmp_path / "cat.jpg", seed=1)
    db = tmp_path / "texts-db"
    write_database(db, kind="text", model={"name": DEFAULT_TEXT_ENCODER, "dim": 384, "kind": "text"},
                   items=[f"text {i}" for i in range(10)],
                   vector_chunks=[l2_normalize(np.random.default_rng(0).normal(size=(10, 384)).astype(np.float32))])
    result = CliRunner().invoke(main, ["text", "search", str(db), str(photo)])
    assert result.exit_code == 1 and "is an image file, and this database holds texts" in result.output
    with pytest.raises(QueryError, match="is an image file"):
        TextEmbedder().coerce_query(str(photo))
    assert TextEmbedder().coerce_query("cat.jpg") == "cat.jpg"  # no such file: a text like any other


# ----------------------------------------------------------------------------- issue 20: malformed URLs, bad bytes
def test_a_malformed_url_query_is_a_one_line_cli_error(tmp_path: Path, tiny_model: str) -> None:
    """Issue 20: ``search DB 'http://[::1'`` printed a ValueError traceback (urlsplit's "Invalid IPv6 URL"), and
    ``remove DB ²`` another (``"²".isdigit()`` but not ``int()``)."""
    from similar_images.embed import l2_normalize
    from similar_images.store import write_database

    db = tmp_path / "db"
    write_database(db, kind="image", model={"name": tiny_model, "dim": 16}, items=[f"{i}.png" for i in range(10)],
                   vector_chunks=[l2_normalize(np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32))])
    for url in ("http://[::1", "http://[::1]x/cat.jpg", "http://999.1.1.1/cat.jpg"):
        result = CliRunner().invoke(main, ["search", str(db), url])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (url, result.output)
        assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output
        assert "malformed" in result.output or "not a valid IPv4 address" in result.output, result.output
    # the same kind of check elsewhere: "²".isdigit() is true, and int("²") raised a ValueError traceback
    removed = CliRunner().invoke(main, ["remove", str(db), "²"])
    assert removed.exit_code == 1 and removed.output.strip() == "Error: ² is not in the database", removed.output


def test_a_text_query_that_is_not_utf8_is_a_one_line_error(tmp_path: Path) -> None:
    """Issue 20: a text query with bytes that are not UTF-8 (``$'caf\\xe9'`` in a Latin-1 terminal) reached the
    tokenizer as lone surrogates, which printed a TypeError traceback. The command line hands undecodable bytes
    over as such surrogates: given as bytes in a real process, and as the same str to the library."""
    from similar_images.embed import DEFAULT_TEXT_ENCODER, TextEmbedder, l2_normalize
    from similar_images.errors import QueryError
    from similar_images.store import write_database

    db = tmp_path / "texts-db"
    write_database(db, kind="text", model={"name": DEFAULT_TEXT_ENCODER, "dim": 384, "kind": "text"},
                   items=[f"text {i}" for i in range(10)],
                   vector_chunks=[l2_normalize(np.random.default_rng(0).normal(size=(10, 384)).astype(np.float32))])
    run = subprocess.run([sys.executable, "-c", "from similar_images.cli import main; main()", "text", "search",
                          os.fsencode(db), b"caf\xe9 au lait"], capture_output=True, text=True, timeout=300,
                         env=plugin_env())
    shown = (run.stdout + run.stderr).strip()
    assert run.returncode == 1 and len(shown.splitlines()) == 1, shown
    assert shown == "Error: The query is not valid UTF-8 text (an undecodable byte at character 4): type it in UTF-8"
    with pytest.raises(QueryError, match="not valid UTF-8"):
        TextEmbedder().coerce_query("caf\udce9")
    assert TextEmbedder().coerce_query("café") == "café"
