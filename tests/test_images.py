"""Image discovery and robust decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from similar_images.errors import ImageLoadError, SourceNotFoundError
from similar_images.sources.images import find_images, load_image, prepare_array, read_file_list


def test_find_images_recursive_any_case_sorted(tmp_path: Path) -> None:
    for name in ["b/x.JPG", "a.jpeg", "c.PnG", "d.bmp", "e.gif", "f.WEBP", "g.tif", "h.TIFF", "z/y/q.jpg"]:
        make_image(tmp_path / name, seed=1)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    make_image(tmp_path / ".hidden" / "skip.jpg", seed=2)
    found = find_images(tmp_path)
    rel = [p.relative_to(tmp_path.resolve()).as_posix() for p in found]
    assert rel == ["a.jpeg", "b/x.JPG", "c.PnG", "d.bmp", "e.gif", "f.WEBP", "g.tif", "h.TIFF", "z/y/q.jpg"]
    assert all(p.is_absolute() for p in found)


def test_find_images_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        find_images(tmp_path / "missing")
    f = make_image(tmp_path / "one.jpg", seed=0)
    with pytest.raises(SourceNotFoundError, match="file list"):
        find_images(f)


def test_read_file_list_relative_comments(tmp_path: Path) -> None:
    make_image(tmp_path / "imgs" / "a.jpg", seed=0)
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\n\nimgs/a.jpg\n/abs/b.png\n")
    assert read_file_list(listing) == [tmp_path.resolve() / "imgs" / "a.jpg", Path("/abs/b.png")]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    top = np.asarray(out)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "RGBA", "LA", "I", "F"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    src = make_image(tmp_path / "src.png", seed=3).resolve()
    img = Image.open(src).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode in ("CMYK", "I", "F") else "PNG")
    out = load_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (64, 48)


def test_alpha_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert np.asarray(load_image(buf.getvalue())).min() == 255


def test_palette_with_transparency() -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.info["transparency"] = 0
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    arr = np.asarray(load_image(buf.getvalue()))
    assert arr.shape == (8, 8, 3) and arr.min() == 255


def test_16bit_scaled_not_clipped() -> None:
    arr16 = np.full((4, 4), 32768, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr16).save(buf, format="PNG")
    out = np.asarray(load_image(buf.getvalue()))
    assert 120 <= out.mean() <= 135  # half of full scale, not clipped to 255


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    px = np.asarray(load_image(buf.getvalue()))[5, 5]
    assert px[0] > 200 and px[1] < 50


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(path, max_pixels=1_000_000)
    assert load_image(path, max_pixels=10_000_000).size == (3000, 3000)


@pytest.mark.parametrize(
    "kind, pattern",
    [
        ("missing", "not found"),
        ("empty", "0 bytes"),
        ("text", "not a readable image"),
        ("truncated", "truncated|corrupt"),
        ("folder", "folder"),
        ("dangling", "not found"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path: Path, kind: str, pattern: str) -> None:
    good = make_image(tmp_path / "good.jpg", seed=4, size=(256, 256))
    path = tmp_path / f"bad-{kind}.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, I am not a JPEG")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "folder":
        path.mkdir()
    elif kind == "dangling":
        path.symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(ImageLoadError, match=pattern):
        load_image(path)


def test_bad_bytes_and_types() -> None:
    with pytest.raises(ImageLoadError, match="0 bytes"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(b"\x00garbage" * 10)
    with pytest.raises(ImageLoadError, match="unsupported image source"):
        load_image(12345)  # type: ignore[arg-type]


def test_prepare_array_resizes_with_jpeg_draft(tmp_path: Path) -> None:
    path = make_image(tmp_path / "large.jpg", seed=5, size=(1600, 1200))
    arr = prepare_array(path, (224, 224))
    assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8
    # Same image content as the full decode, up to resampling differences.
    full = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), dtype=float)
    assert np.abs(arr.astype(float) - full).mean() < 12


def test_pil_input_is_not_modified(tmp_path: Path) -> None:
    path = make_image(tmp_path / "big.jpg", seed=6, size=(1600, 1200))
    img = Image.open(path)
    prepare_array(img, (224, 224))
    assert img.size == (1600, 1200)
    assert np.asarray(img).shape == (1200, 1600, 3)
