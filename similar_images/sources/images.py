"""Finding and decoding images robustly.

:func:`load_image` accepts a path, raw bytes, a file object or a PIL image and
returns an 8-bit RGB :class:`PIL.Image.Image` with EXIF orientation applied.
Grayscale, 16-bit, CMYK, palette and alpha images are converted (alpha is
composited onto white), and images larger than ``max_pixels`` are refused
before they are decoded (a guard against decompression bombs). Any failure
raises :class:`~similar_images.errors.ImageLoadError` with the reason.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .._util import io as _io
from ..errors import ConfigError, ImageLoadError, InputFileError, NoInputsError, SourceNotFoundError
from . import fastjpeg

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "find_images",
    "read_file_list",
    "MAX_FILE_LIST_BYTES",
    "collect_inputs",
    "file_signature",
    "normalize_path",
    "load_image",
    "prepare_array",
]

logger = logging.getLogger(__name__)

#: File name endings recognised as images (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: Images with more pixels than this are refused (about 12,000 x 8,000).
DEFAULT_MAX_PIXELS = 100_000_000

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image

# Truncated files must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def find_images(root: str | os.PathLike[str], *, follow_symlinks: bool = False) -> list[Path]:
    """List image files below ``root`` recursively, in a stable sorted order.

    Args:
        root: A folder.
        follow_symlinks: Whether to descend into symlinked folders.

    Returns:
        Absolute paths of files whose extension is in :data:`IMAGE_EXTENSIONS`,
        sorted by their path relative to ``root``; symbolic links are listed
        under their own names (see :func:`normalize_path`).

    Raises:
        SourceNotFoundError: If ``root`` does not exist or is not a folder.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise SourceNotFoundError(f"Image folder not found: {root}")
    if not root.is_dir():
        raise SourceNotFoundError(f"Expected a folder of images, got a file: {root} (use a file list instead)")
    root = normalize_path(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name))  # under the folder's own name: links are not resolved
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return found


#: The largest file list read (about a million paths).
MAX_FILE_LIST_BYTES = 256 * 2**20


def _file_list_error(path: Path, reason: str) -> InputFileError:
    return InputFileError(f"{path} is {reason}; expected a folder of images, or a text file (UTF-8) listing one "
                          "image path per line", path=path, reason=reason)


def read_file_list(path: str | os.PathLike[str]) -> list[Path]:
    """Read a file list: one image path per line (UTF-8); blank lines and ``#`` comments ignored.

    Relative paths are taken from the list's own folder.

    Raises:
        SourceNotFoundError: If there is no such file.
        InputFileError: If it is an image, not UTF-8 text, or not a regular readable file (a FIFO, a device, a
            link loop), or larger than :data:`MAX_FILE_LIST_BYTES`.
    """
    path = Path(path).expanduser()
    base = normalize_path(path).parent
    try:
        with _io.open_regular(path, max_bytes=MAX_FILE_LIST_BYTES, error=InputFileError) as fh:
            data = fh.read(MAX_FILE_LIST_BYTES + 1)
    except FileNotFoundError:
        raise SourceNotFoundError(f"No such folder or file list: {path}") from None
    except InputFileError as exc:
        raise _file_list_error(path, exc.reason) from None
    if path.suffix.lower() in IMAGE_EXTENSIONS or _looks_like_image(data):
        raise _file_list_error(path, "an image, not a folder or a file list (to use one image, list it in a file "
                                     "list)")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise _file_list_error(path, f"binary data, not text (a NUL byte at offset {nul:,})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise _file_list_error(path, f"not UTF-8 text (byte {exc.start:,}, line {line:,})") from None
    out: list[Path] = []
    for raw in text.splitlines():
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        out.append(p if p.is_absolute() else (base / p))
    return out


def _looks_like_image(data: bytes) -> bool:
    """Whether ``data`` starts like an image file Pillow reads (JPEG, PNG, GIF, BMP, TIFF, WebP)."""
    return data.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")) \
        or (data[:2] == b"BM" and data[6:10] == b"\x00" * 4) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


_PILLOW_GUARD_LOCK = threading.Lock()


def _widen_pillow_guard(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, 89.5 MP) at least ``max_pixels``.

    Pillow refuses images over its limit before :func:`load_image` can apply ``max_pixels``; the limit is
    process-wide, so it is only ever raised (to the largest ``max_pixels`` asked for), never lowered, and a
    limit switched off (``None``) stays off. :func:`load_image` applies ``max_pixels`` itself.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is None or current >= max_pixels:
        return
    with _PILLOW_GUARD_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


def _too_large(w: int, h: int, max_pixels: int) -> ImageLoadError:
    return ImageLoadError(
        f"image too large: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
        "(a guard against decompression bombs; raise max_pixels if the image is trusted)"
    )


def _open(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError("empty data (0 bytes)")
        fp: BinaryIO | str | os.PathLike = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.exists():
            raise ImageLoadError(f"file not found: {p}")
        if p.is_dir():
            raise ImageLoadError(f"is a folder, not an image: {p}")
        if p.stat().st_size == 0:
            raise ImageLoadError(f"empty file (0 bytes): {p}")
        fp = p
    elif hasattr(source, "read"):
        fp = source
    else:
        raise ImageLoadError(
            f"unsupported image source of type {type(source).__name__}; "
            "pass a path, bytes, a file object or a PIL image"
        )
    _widen_pillow_guard(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # load_image checks max_pixels
            return Image.open(fp)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"image too large: {exc} (the limit is {max_pixels:,} pixels, a guard against "
                             "decompression bombs; raise max_pixels if the image is trusted)") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"not a readable image ({exc.__class__.__name__}: {exc})") from exc
    except PermissionError as exc:
        raise ImageLoadError(f"permission denied: {exc.filename or str(source)}") from exc
    except OSError as exc:
        raise ImageLoadError(f"cannot open image: {exc}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max(initial=0.0)), 1.0)
        if mode == "I" and arr.max(initial=0) <= 255:
            hi = 255.0
        arr8 = np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode an image into 8-bit RGB with EXIF orientation applied.

    Args:
        source: A path, raw bytes, a binary file object, or a PIL image.
        max_pixels: Refuse images with more pixels than this (decompression-bomb guard).
        draft_size: If given, let the JPEG decoder downscale by a power of two
            while keeping at least this size (much faster for thumbnails and
            model inputs).

    Returns:
        A fully loaded RGB image.

    Raises:
        ImageLoadError: If the source is missing, empty, truncated, corrupt,
            not an image, or too large.
    """
    if max_pixels < 1:
        raise ConfigError(f"max_pixels must be at least 1, got {max_pixels}")
    img = _open(source, max_pixels)
    try:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageLoadError(f"invalid image size {w}x{h}")
        if w * h > max_pixels:
            raise _too_large(w, h, max_pixels)
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WebP/TIFF: first frame
        owned = not isinstance(source, Image.Image)  # never change a caller's image in place
        if draft_size is not None and owned and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
            # Orientation may swap axes; ask for enough pixels on both.
            side = max(draft_size)
            img.draft(img.mode, (side, side))
        img.load()
        if owned:
            ImageOps.exif_transpose(img, in_place=True)  # no copy of an image nobody else holds
        else:
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:  # a frame or tile larger than the image says
        raise ImageLoadError(f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"corrupt or truncated image ({exc})") from exc


def prepare_array(
    source: ImageSource,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fast_jpeg: bool = False,
) -> np.ndarray:
    """Decode and resize an image to ``size`` (width, height) as a uint8 HxWx3 array.

    Args:
        source: The image.
        size: ``(width, height)`` of the result.
        max_pixels: Decompression-bomb guard.
        fast_jpeg: Decode JPEG files and bytes at a reduced scale with libjpeg-turbo (``simplejpeg``, see
            :mod:`similar_images.sources.fastjpeg`); every other image, and every error, goes through
            :func:`load_image`. Slightly different pixels: decode a database and its queries the same way.
    """
    img = fastjpeg.load_scaled(source, size, max_pixels) if fast_jpeg else None
    if img is None:
        img = load_image(source, max_pixels=max_pixels, draft_size=size)
    if img.size != tuple(size):
        img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def normalize_path(path: str | os.PathLike[str]) -> Path:
    """An absolute path with ``~``, ``.`` and ``..`` taken out, **without resolving symbolic links**.

    The same file named relatively, absolutely or through ``..`` gets one name (so one id in a database),
    and a link keeps its own name (so it is reported under the name the user gave, not its target's).
    """
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _unique(paths: list[Path], where: str) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(p)
    if len(out) < len(paths):
        logger.info("%d paths in %s name a file already listed; each file is used once", len(paths) - len(out),
                    where)
    return out


def collect_inputs(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Resolve an image input: a folder (searched recursively), a file list (one path a line), or paths.

    Every path is normalised with :func:`normalize_path` (absolute, links kept) and listed once.

    Raises:
        SourceNotFoundError: If a folder or file list does not exist.
        InputFileError: If what should be a file list is an image, not UTF-8 text, or not a regular file.
        NoInputsError: If no image is found.
    """
    if isinstance(inputs, (str, os.PathLike)):
        p = Path(inputs).expanduser()
        if p.is_dir():
            paths = find_images(p)
        elif p.exists() or p.is_symlink():  # a file list, or something read_file_list names (a FIFO, a loop)
            paths = read_file_list(p)
        else:
            raise SourceNotFoundError(f"No such folder or file list: {p}")
        where = str(p)
    else:
        paths = [Path(x).expanduser() for x in inputs]
        where = "the given paths"
    paths = _unique([normalize_path(x) for x in paths], where)
    if not paths:
        raise NoInputsError(
            f"No images found in {where}. Expected files ending in .jpg, .jpeg, .png, .bmp, .gif, .webp or .tiff "
            "(any case), or a text file listing one image path per line."
        )
    return paths


def file_signature(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """``(resolved path, mtime_ns, size)`` of a file: a cache key that changes when the file does.

    Raises:
        ImageLoadError: If the file is missing or cannot be read.
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageLoadError(f"file not found: {p}") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot read {p}: {exc.strerror or exc}") from exc
    return (str(p.resolve()), st.st_mtime_ns, st.st_size)
