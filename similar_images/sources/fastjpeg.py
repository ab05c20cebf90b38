"""Faster JPEG decoding of model inputs (optional: needs the ``simplejpeg`` package).

A model input is small (224 x 224), so the decoder only needs a fraction of
a photo's pixels. Pillow's ``draft`` lets libjpeg-turbo scale by 1/2, 1/4 or
1/8 during decoding; libjpeg-turbo also scales in eighths (5/8, 3/4, ...),
which ``simplejpeg`` exposes: a 640 x 427 COCO photo decodes at 400 x 267
instead of in full, because 1/2 would make it shorter than 224. At the same
scale both produce the same pixels.

:func:`load_scaled` takes the fast path only for a plain baseline or
progressive JPEG (YCbCr or grayscale) read from a path or bytes; it returns
``None`` for anything else (other formats, CMYK, MPO, a caller's PIL image,
a file object, an image over the pixel limit, a decoding error), and the
caller then decodes with Pillow as before, which also produces the error
messages. EXIF orientation is applied like :func:`PIL.ImageOps.exif_transpose`.

The fast path is opt-in (``prepare_array(..., fast_jpeg=True)``; an image
model's ``decoder="fast"``, recorded in the database manifest): its pixels
differ slightly from Pillow's (a mean of about 1 grey level on COCO photos),
so a database and its queries must be decoded the same way.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["available", "load_scaled"]

_SIMPLEJPEG: Any = None
_CHECKED = False

# EXIF orientation -> the transposition that undoes it (as in PIL.ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def available() -> bool:
    """Whether ``simplejpeg`` is installed."""
    global _SIMPLEJPEG, _CHECKED
    if not _CHECKED:
        try:
            import simplejpeg  # noqa: PLC0415  (optional dependency)
        except ImportError:
            simplejpeg = None
        _SIMPLEJPEG, _CHECKED = simplejpeg, True
    return _SIMPLEJPEG is not None


def load_scaled(source: object, min_size: tuple[int, int], max_pixels: int) -> Image.Image | None:
    """Decode a JPEG at the smallest libjpeg-turbo scale that keeps ``min_size`` (width, height).

    Returns:
        An RGB image with EXIF orientation applied, or ``None`` when the fast path does not apply.
    """
    if not available():
        return None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            data = Path(source).read_bytes()
        except OSError:
            return None
    else:
        return None
    try:
        header = Image.open(io.BytesIO(data))
        if header.format != "JPEG" or header.mode not in ("RGB", "L"):
            return None
        w, h = header.size
        if w <= 0 or h <= 0 or w * h > max_pixels:
            return None
        orientation = header.getexif().get(0x0112, 1)
        transpose = _TRANSPOSE.get(orientation)
        mw, mh = min_size
        if orientation in (5, 6, 7, 8):  # the axes swap after decoding
            mw, mh = mh, mw
        side = max(mw, mh)  # like Pillow's draft in sources.images.load_image: enough pixels on both axes
        arr = _SIMPLEJPEG.decode_jpeg(data, colorspace="RGB", min_width=side, min_height=side)
    except Exception:  # noqa: BLE001  (any problem: Pillow decodes it, and reports errors its way)
        return None
    img = Image.frombuffer("RGB", (arr.shape[1], arr.shape[0]), arr, "raw", "RGB", 0, 1)  # shares arr's memory
    return img.transpose(transpose) if transpose is not None else img
